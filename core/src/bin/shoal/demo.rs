//! `shoal demo`: three devices (alice, bob, carol) in this process, each with its own fresh store, linked in a line
//! alice – bob – carol over real TCP on loopback. Alice creates a team task board (the embedded dataset); carol goes
//! offline; all three edit — the same field concurrently, a counter on two devices, a text on two devices — then
//! carol comes back, and the three converge. Prints what happened and the final state of each device.

use crate::CliError;
use serde_json::Value as Json;
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::store::Replica;
use shoaldb::{Durability, Options, Store, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The board every demo starts from.
const DATASET: &str = include_str!("demo_data.json");

/// How long the devices have to converge.
const PATIENCE: Duration = Duration::from_secs(30);

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, CliError> {
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let name = format!("shoal-demo-{}-{}", std::process::id(), u64::from_le_bytes(random));
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Run the demo.
pub fn run() -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    let dir = TempDir::new()?;
    let result = runtime.block_on(demo(&dir.0));
    drop(runtime);
    result
}

fn open(dir: &Path, name: &str) -> Result<Store, CliError> {
    Ok(Store::open_with(
        dir.join(format!("{name}.db")),
        Options { durability: Durability::Normal, ..Options::default() },
    )?)
}

async fn start(
    store: &Store,
    name: &str,
    listen: Option<SocketAddr>,
    connect: Option<SocketAddr>,
) -> Result<Node, CliError> {
    let secret = AppSecret::from_bytes(b"shoal demo").map_err(failed)?;
    let mut config = NodeConfig::new(name, secret).with_mdns(false);
    config.listen = listen;
    config.connect = connect.into_iter().collect();
    Node::start(store.clone(), config).await.map_err(failed)
}

async fn demo(dir: &Path) -> Result<(), CliError> {
    let names = ["alice", "bob", "carol"];
    let (alice, bob, carol) = (open(dir, "alice")?, open(dir, "bob")?, open(dir, "carol")?);
    let stores = [&alice, &bob, &carol];
    let bob_node = start(&bob, "bob", Some(SocketAddr::from(([127, 0, 0, 1], 0))), None).await?;
    let hub = bob_node.listen_addr().ok_or_else(|| failed("bob is not listening"))?;
    let alice_node = start(&alice, "alice", None, Some(hub)).await?;
    let carol_node = start(&carol, "carol", None, Some(hub)).await?;

    println!("Shoal demo: three devices share a team task board, synced over TCP on this machine.");
    println!("Network: alice <-> bob <-> carol (bob listens on {hub}; alice and carol never connect directly).");
    println!();

    let started = Instant::now();
    let (collection, count) = seed(&alice)?;
    converge(&stores).await?;
    println!(
        "1. alice creates the board ({count} tasks); bob and carol receive it (carol through bob) in {:.1} s.",
        started.elapsed().as_secs_f64()
    );

    carol_node.shutdown().await;
    println!("2. carol goes offline. Meanwhile:");
    let c = collection.as_str();
    alice.update(c, "t4", |d| Ok(d.set("owner", "alice")?))?;
    println!("   alice  sets t4 owner to \"alice\"");
    let end = text_len(&alice, c, "t1", "notes")?;
    alice.update(c, "t1", |d| Ok(d.text_insert("notes", end, " Mention the new sync.")?))?;
    println!("   alice  appends \" Mention the new sync.\" to t1 notes");
    bob.update(c, "t2", |d| Ok(d.set("done", true)?))?;
    bob.update(c, "t5", |d| Ok(d.increment("votes", 1)?))?;
    println!("   bob    marks t2 done, and votes +1 on t5");
    carol.update(c, "t4", |d| Ok(d.set("owner", "carol")?))?;
    println!("   carol  sets t4 owner to \"carol\"    (offline: the same field as alice, concurrently)");
    carol.update(c, "t5", |d| Ok(d.increment("votes", 2)?))?;
    println!("   carol  votes +2 on t5              (offline)");
    carol.update(c, "t1", |d| Ok(d.text_insert("notes", 0, "Draft: ")?))?;
    println!("   carol  inserts \"Draft: \" at the start of t1 notes (offline)");

    let back = Instant::now();
    let carol_node = start(&carol, "carol", None, Some(hub)).await?;
    let converged = converge(&stores).await;
    match &converged {
        Ok(()) => println!("3. carol comes back online; all three converge in {:.1} s.", back.elapsed().as_secs_f64()),
        Err(_) => println!("3. carol comes back online; the devices did NOT converge within {PATIENCE:?}."),
    }
    println!();

    let state = snapshot(&alice)?;
    println!("Final state (the same on all three devices, see the fingerprints below):");
    for ((_, id), doc) in &state {
        println!("  {id}  {}", describe(doc));
    }
    println!();
    println!("How the concurrent edits merged:");
    let owner = field(&state, c, "t4", "owner");
    let others: Vec<String> = alice
        .document(c, "t4")?
        .map(|d| d.conflicts("owner").unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .map(Json::to_string)
        .collect();
    let kept = if others.is_empty() { String::new() } else { format!("; {} is kept as a conflict", others.join(", ")) };
    println!("  t4 owner  set by alice and carol concurrently -> all keep {owner} (later write wins{kept})");
    println!("  t5 votes  +1 from bob and +2 from carol both count -> {}", field(&state, c, "t5", "votes"));
    println!("  t1 notes  both text edits are kept -> {}", field(&state, c, "t1", "notes"));
    println!();

    for (name, store) in names.iter().zip(stores) {
        let s = snapshot(store)?;
        println!("  {name:<6} {} documents  fingerprint {}", s.len(), fingerprint(&s));
    }
    for node in [alice_node, bob_node, carol_node] {
        node.shutdown().await;
    }
    converged?;
    println!("converged: all {} devices hold the same {} documents", names.len(), state.len());
    Ok(())
}

/// Load the embedded dataset into `store`; returns its collection and how many documents it holds.
fn seed(store: &Store) -> Result<(String, usize), CliError> {
    let data: Json = serde_json::from_str(DATASET).map_err(|e| failed(format!("demo dataset: {e}")))?;
    let collection = data["collection"].as_str().ok_or_else(|| failed("demo dataset: no collection"))?.to_string();
    let docs = data["documents"].as_array().ok_or_else(|| failed("demo dataset: no documents"))?;
    store.write(|t| {
        for doc in docs {
            let Json::Object(fields) = doc else { continue };
            let id = fields.get("_id").and_then(Json::as_str);
            let typed = fields.iter().filter(|(k, _)| *k != "_id").map(|(k, v)| (k.clone(), typed_value(v))).collect();
            t.upsert_value(&collection, id, Value::Map(typed))?;
        }
        Ok(())
    })?;
    Ok((collection, docs.len()))
}

/// `{"$text": s}` → text, `{"$counter": n}` → counter, anything else as `upsert` maps it.
fn typed_value(v: &Json) -> Value {
    if let Some(s) = v.get("$text").and_then(Json::as_str) {
        return Value::Text(s.to_string());
    }
    if let Some(n) = v.get("$counter").and_then(Json::as_i64) {
        return Value::Counter(n);
    }
    Value::from_json(v)
}

/// The length in characters of a text field.
fn text_len(store: &Store, collection: &str, id: &str, field: &str) -> Result<usize, CliError> {
    let doc = store.get(collection, id)?.ok_or_else(|| failed(format!("no {collection}/{id}")))?;
    Ok(doc[field].as_str().map(|s| s.chars().count()).unwrap_or(0))
}

/// Every document of a store, by collection and id.
fn snapshot(store: &Store) -> Result<BTreeMap<(String, String), Json>, CliError> {
    let mut out = BTreeMap::new();
    for collection in store.collections()? {
        for doc in store.list(&collection)? {
            let id = doc["_id"].as_str().unwrap_or_default().to_string();
            out.insert((collection.clone(), id), canonical(&doc));
        }
    }
    Ok(out)
}

/// `v` with every object's keys in sorted order (so equal states print and hash alike).
fn canonical(v: &Json) -> Json {
    match v {
        Json::Object(m) => {
            let sorted: BTreeMap<&String, Json> = m.iter().map(|(k, v)| (k, canonical(v))).collect();
            Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Json::Array(a) => Json::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn field(state: &BTreeMap<(String, String), Json>, collection: &str, id: &str, f: &str) -> Json {
    state.get(&(collection.to_string(), id.to_string())).map(|d| d[f].clone()).unwrap_or(Json::Null)
}

/// One line for a document: its title, then its other fields.
fn describe(doc: &Json) -> String {
    let title = doc["title"].as_str().unwrap_or_default();
    let mut line = format!("{title:<25}");
    if let Json::Object(m) = doc {
        for (k, v) in m.iter().filter(|(k, _)| *k != "_id" && *k != "title") {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    line
}

/// A short hash of a store's state.
fn fingerprint(state: &BTreeMap<(String, String), Json>) -> String {
    let text: String = state.iter().map(|((c, id), doc)| format!("{c}/{id}={doc}\n")).collect();
    blake3::hash(text.as_bytes()).to_hex().chars().take(12).collect()
}

/// Wait until every store holds the same changes and shows the same documents.
async fn converge(stores: &[&Store]) -> Result<(), CliError> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if same(stores)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(failed(format!("the devices did not converge within {PATIENCE:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same(stores: &[&Store]) -> Result<bool, CliError> {
    let Some((first, rest)) = stores.split_first() else { return Ok(true) };
    let (summary, state) = (first.replica().summary()?, snapshot(first)?);
    for s in rest {
        if s.replica().summary()? != summary || snapshot(s)? != state {
            return Ok(false);
        }
    }
    Ok(true)
}
