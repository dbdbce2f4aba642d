//! Shared pieces of the Shoal benchmark programs (`trace_bench`, `write_bench`, `sync_bench`, `ble_bench`,
//! `attack_bench`, `storage_bench`).

pub mod alloc;
pub mod trace;

/// Print one JSON row on stdout and flush it at once.
pub fn emit(row: &serde_json::Value) {
    use std::io::Write;
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{row}");
    let _ = out.flush();
}

/// The command line most benchmark programs take: `--quick` (a smaller run, for CI) and `--only NAME` (one group
/// of rows).
pub struct Args {
    /// `--quick` was given.
    pub quick: bool,
    only: Option<String>,
}

impl Args {
    /// This process's arguments.
    pub fn parse() -> Args {
        let args: Vec<String> = std::env::args().collect();
        let quick = args.iter().any(|a| a == "--quick");
        let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
        Args { quick, only }
    }

    /// Whether the rows of group `name` are wanted (all are, without `--only`).
    pub fn wants(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == name)
    }
}

/// The size on disk of the store at `db`: its database file and write-ahead log.
pub fn store_files_size(db: &std::path::Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).ok()
        })
        .map(|m| m.len())
        .sum()
}

/// The error type of the benchmark programs.
pub type BoxErr = Box<dyn std::error::Error>;

/// Open a store that syncs to disk less often (`Durability::Normal`), as benchmarks of sync do.
pub fn open_fast(path: &std::path::Path) -> Result<shoaldb::Store, BoxErr> {
    Ok(shoaldb::Store::open_with(
        path,
        shoaldb::Options { durability: shoaldb::Durability::Normal, ..Default::default() },
    )?)
}

/// Insert documents `range` of collection `items` (10 fields each, ids `{prefix}{i:06}`) in transactions of 1,000.
pub fn fill(store: &shoaldb::Store, prefix: &str, range: std::ops::Range<usize>) -> Result<(), BoxErr> {
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(1000) {
        store.write(|t| {
            for i in chunk {
                let mut doc = serde_json::Map::new();
                doc.insert("_id".into(), serde_json::json!(format!("{prefix}{i:06}")));
                for k in 0..10 {
                    doc.insert(
                        format!("f{k}"),
                        if k % 2 == 0 {
                            serde_json::json!(format!("value {i}.{k}"))
                        } else {
                            serde_json::json!(i * 10 + k)
                        },
                    );
                }
                t.upsert("items", serde_json::Value::Object(doc))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
