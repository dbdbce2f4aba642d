//! Shared pieces of the Shoal benchmark programs (`trace_bench`, `write_bench`, `sync_bench`, `ble_bench`).

pub mod alloc;

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
