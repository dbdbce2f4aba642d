//! `shoal`: the command-line tool of Shoal — read and write a store, run it as a peer on the LAN, or watch three
//! devices converge (`shoal demo`). Output is JSON for scripts; errors go to stderr with a non-zero exit code.

#[path = "shoal/authority.rs"]
mod authority;
#[path = "shoal/demo.rs"]
mod demo;
#[path = "shoal/logger.rs"]
mod logger;
#[path = "shoal/peer.rs"]
mod peer;

use serde_json::Value as Json;
use shoaldb::{Options, Query, SortOrder, Store, StoreKey, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  shoal --db PATH put COLLECTION JSON                    upsert a JSON object (given fields set, others kept); prints the id
  shoal --db PATH get COLLECTION ID                      print the document (exit 1 when absent)
  shoal --db PATH query COLLECTION [FILTER] [--sort PATH[:desc]]... [--limit N]
                                                         print matching documents, one JSON per line
  shoal --db PATH explain COLLECTION [FILTER] [--sort PATH[:desc]]... [--limit N]
                                                         how the query runs: indexes used, SQL, SQLite's plan (JSON)
  shoal --db PATH index COLLECTION PATH...               declare an index on fields of COLLECTION (most significant
                                                         first); prints true when new
  shoal --db PATH drop-index COLLECTION PATH...          drop that index (exit 1 when there was none)
  shoal --db PATH indexes                                the declared indexes, one JSON per line
  shoal --db PATH remove COLLECTION ID                   remove a document (exit 1 when absent)
  shoal --db PATH attach COLLECTION ID FIELD FILE        store FILE as an attachment in FIELD
  shoal --db PATH fetch-attachment COLLECTION ID FIELD OUT
                                                         write FIELD's attachment to OUT, fetched by a running peer when not stored here (exit 2 when unavailable)
  shoal --db PATH peer [--secret-file F] [--name NAME] [--listen HOST:PORT] [--connect HOST:PORT]...
                       [--cloud ws[s]://HOST[:PORT]/PATH]... [--cloud-ca PEM-FILE]... [--no-mdns]
                       [--subscribe COLLECTION[:FILTER]]...
                       [--ble ADAPTER [--ble-allow AA:BB:CC:DD:EE:FF]... [--ble-l2cap|--ble-gatt]]
                                                         sync with the LAN (and over Bluetooth LE on a BlueZ adapter,
                                                         e.g. hci0, in builds with feature bluetooth-linux; --ble-allow:
                                                         only these peers; --ble-gatt: never open L2CAP channels;
                                                         --cloud: a relay of the cloud, over WebSocket; --cloud-ca:
                                                         a certificate authority trusted for wss://)
                                                         until SIGINT/SIGTERM
  shoal demo                                             three devices edit a task board and converge

device identity (certificates; without one, `peer` runs in development mode with --secret-file):
  shoal authority init DIR                               make the app authority's key in DIR; prints its public key
  shoal authority issue DIR REQUEST [--grant G]... [--days N] [--name NAME]
                                                         certificate (hex) for an enrolment request; grants such as
                                                         'read *', 'write tasks fields status, notes where owner == $device'
  shoal authority revoke DIR [--serial N] [--device KEY] [--author ID [--until N]]...
                                                         the next revocation list (hex), with everything revoked before
  shoal authority roster DIR [--member KEY]... [--complete]
                                                         the next list, its roster (every device certified here and
                                                         each --member) closing membership now: the rest is revoked
  shoal authority show TEXT|FILE                         what a request, certificate or revocation list says (JSON)
  shoal --db PATH enrol request NAME                     this device's enrolment request (its keys are made here)
  shoal --db PATH enrol install AUTHORITY CERT [CERT]... install this device's certificate (then intermediates')
  shoal --db PATH enrol revocations LIST                 take in a revocation list
  (REQUEST, CERT, LIST, AUTHORITY: the text itself or a file holding it)

options: --key-file F   the store is encrypted with the key in F: 32 bytes, raw or as 64 hex digits (needs a build
                        with feature encryption; a new store is created encrypted)

exit codes: 0 ok, 1 failure or not found, 2 attachment not available locally, 64 bad usage.
logging: SHOAL_LOG=off|error|warn|info|debug|trace (stderr).";

/// Why a command failed, and so its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong (exit 64).
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    /// What was asked for does not exist (exit 1).
    #[error("{0}")]
    NotFound(String),
    /// The attachment's bytes are not in the local store (exit 2).
    #[error("attachment not available locally: {0}")]
    Unavailable(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 64,
            CliError::NotFound(_) | CliError::Failed(_) => 1,
            CliError::Unavailable(_) => 2,
        }
    }
}

impl From<shoaldb::Error> for CliError {
    fn from(e: shoaldb::Error) -> CliError {
        CliError::Failed(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::Failed(e.to_string())
    }
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "shoal: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(args: Vec<String>) -> Result<(), CliError> {
    let mut db: Option<PathBuf> = None;
    let mut key_file: Option<PathBuf> = None;
    let mut rest = args.into_iter();
    let command = loop {
        let Some(arg) = rest.next() else { return Err(usage("no command given")) };
        match arg.as_str() {
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "-V" | "--version" => {
                println!("shoal {}", shoaldb::VERSION);
                return Ok(());
            }
            "--db" => db = Some(rest.next().ok_or_else(|| usage("--db needs a path"))?.into()),
            a if a.starts_with("--db=") => db = a.strip_prefix("--db=").map(PathBuf::from),
            "--key-file" => key_file = Some(rest.next().ok_or_else(|| usage("--key-file needs a path"))?.into()),
            a if a.starts_with("--key-file=") => key_file = a.strip_prefix("--key-file=").map(PathBuf::from),
            a if a.starts_with('-') => return Err(usage(format!("unknown option {a}"))),
            _ => break arg,
        }
    };
    let args: Vec<String> = rest.collect();
    if command == "demo" {
        if !args.is_empty() {
            return Err(arity(&command, 0, 0, &args));
        }
        logger::init(log::LevelFilter::Warn);
        return demo::run();
    }
    if command == "authority" {
        logger::init(log::LevelFilter::Warn);
        return authority::authority(&args);
    }
    const COMMANDS: &[&str] = &[
        "put",
        "get",
        "query",
        "explain",
        "index",
        "drop-index",
        "indexes",
        "remove",
        "attach",
        "fetch-attachment",
        "peer",
        "enrol",
    ];
    if !COMMANDS.contains(&command.as_str()) {
        return Err(usage(format!("unknown command {command:?}")));
    }
    let db = db.ok_or_else(|| usage(format!("{command} needs --db PATH")))?;
    let key = key_file.as_deref().map(read_key).transpose()?;
    if command == "peer" {
        logger::init(log::LevelFilter::Info);
        return peer::run(&db, key, &args);
    }
    logger::init(log::LevelFilter::Warn);
    let store = || open(&db, key.clone());
    match (command.as_str(), args.as_slice()) {
        ("enrol", _) => authority::enrol(&store()?, &args),
        ("put", [collection, json]) => put(&store()?, collection, json),
        ("get", [collection, id]) => get(&store()?, collection, id),
        ("query", [collection, rest @ ..]) => query(&store()?, collection, &parse_query(rest)?),
        ("explain", [collection, rest @ ..]) => explain(&store()?, collection, &parse_query(rest)?),
        ("index", [collection, paths @ ..]) if !paths.is_empty() => {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            print_line(&store()?.create_index(collection, &paths)?.to_string())
        }
        ("drop-index", [collection, paths @ ..]) if !paths.is_empty() => {
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            match store()?.drop_index(collection, &paths)? {
                true => Ok(()),
                false => Err(CliError::NotFound(format!("no index on {collection} ({})", paths.join(", ")))),
            }
        }
        ("indexes", []) => indexes(&store()?),
        ("remove", [collection, id]) => remove(&store()?, collection, id),
        ("attach", [collection, id, field, file]) => attach(&store()?, collection, id, field, Path::new(file)),
        ("fetch-attachment", [collection, id, field, out]) => {
            fetch_attachment(&store()?, collection, id, field, Path::new(out))
        }
        ("put" | "get" | "remove", _) => Err(arity(&command, 2, 2, &args)),
        ("query" | "explain", _) => Err(usage(format!("{command} needs a collection"))),
        ("index" | "drop-index", _) => Err(usage(format!("{command} needs a collection and at least one path"))),
        ("indexes", _) => Err(arity(&command, 0, 0, &args)),
        ("attach" | "fetch-attachment", _) => Err(arity(&command, 4, 4, &args)),
        (other, _) => Err(usage(format!("unknown command {other:?}"))),
    }
}

fn arity(command: &str, min: usize, max: usize, args: &[String]) -> CliError {
    let n = if min == max { min.to_string() } else { format!("{min} to {max}") };
    usage(format!("{command} takes {n} arguments, got {}", args.len()))
}

/// The store key in `path`: 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
fn read_key(path: &Path) -> Result<StoreKey, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::Failed(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() == StoreKey::LEN {
        return Ok(StoreKey::from_slice(&bytes)?);
    }
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| shoaldb::util::parse_hex::<32>(text.trim()))
        .map(StoreKey::from_bytes)
        .ok_or_else(|| CliError::Failed(format!("{}: a store key is 32 bytes or 64 hex digits", path.display())))
}

/// Opens the store at `db`, encrypted with `key` when given.
pub fn open(db: &Path, key: Option<StoreKey>) -> Result<Store, CliError> {
    Store::open_with(db, Options { key, ..Options::default() })
        .map_err(|e| CliError::Failed(format!("cannot open {}: {e}", db.display())))
}

fn print_line(line: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn put(store: &Store, collection: &str, json: &str) -> Result<(), CliError> {
    let value: Json = serde_json::from_str(json).map_err(|e| CliError::Failed(format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(CliError::Failed("the document must be a JSON object".into()));
    }
    let id = store.upsert(collection, value)?;
    print_line(&id)
}

fn get(store: &Store, collection: &str, id: &str) -> Result<(), CliError> {
    match store.get(collection, id)? {
        Some(doc) => print_line(&doc.to_string()),
        None => Err(CliError::NotFound(format!("no document {collection}/{id}"))),
    }
}

/// `[FILTER] [--sort PATH[:desc]]... [--limit N]`.
fn parse_query(args: &[String]) -> Result<Query, CliError> {
    let mut query = Query::all();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--sort" => {
                let key = rest.next().ok_or_else(|| usage("--sort needs a path"))?;
                let (path, order) = match key.strip_suffix(":desc") {
                    Some(path) => (path, SortOrder::Descending),
                    None => (key.strip_suffix(":asc").unwrap_or(key), SortOrder::Ascending),
                };
                query = query.sort_by(path, order).map_err(|e| usage(format!("bad sort path: {e}")))?;
            }
            "--limit" => {
                let n = rest.next().and_then(|n| n.parse().ok()).ok_or_else(|| usage("--limit needs a number"))?;
                query = query.limit(n);
            }
            a if a.starts_with("--") => return Err(usage(format!("unknown option {a}"))),
            filter if query.filter.is_none() => {
                query.filter = Some(
                    shoaldb::query::Filter::parse(filter).map_err(|e| CliError::Failed(format!("bad filter: {e}")))?,
                );
            }
            extra => return Err(usage(format!("unexpected argument {extra:?}"))),
        }
    }
    Ok(query)
}

fn query(store: &Store, collection: &str, query: &Query) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for doc in store.find(collection, query)? {
        writeln!(out, "{doc}")?;
    }
    out.flush()?;
    Ok(())
}

fn explain(store: &Store, collection: &str, query: &Query) -> Result<(), CliError> {
    let plan = store.explain(collection, query)?;
    let json = serde_json::json!({
        "indexes": plan.indexes, "exact_filter": plan.exact_filter, "sorted_in_sql": plan.sorted_in_sql,
        "steps": plan.steps, "sql": plan.sql,
    });
    print_line(&json.to_string())
}

fn indexes(store: &Store) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for index in store.indexes()? {
        let paths: Vec<String> = index.paths.iter().map(ToString::to_string).collect();
        writeln!(out, "{}", serde_json::json!({"collection": index.collection, "paths": paths, "name": index.name}))?;
    }
    out.flush()?;
    Ok(())
}

fn remove(store: &Store, collection: &str, id: &str) -> Result<(), CliError> {
    if store.remove(collection, id)? {
        Ok(())
    } else {
        Err(CliError::NotFound(format!("no document {collection}/{id}")))
    }
}

fn attach(store: &Store, collection: &str, id: &str, field: &str, file: &Path) -> Result<(), CliError> {
    let reader =
        std::fs::File::open(file).map_err(|e| CliError::Failed(format!("cannot read {}: {e}", file.display())))?;
    let mut meta = BTreeMap::new();
    if let Some(name) = file.file_name().and_then(|n| n.to_str()) {
        meta.insert("name".to_string(), name.to_string());
    }
    let token = store.put_attachment(std::io::BufReader::new(reader), meta)?;
    let set = token.clone();
    store.write(move |t| {
        if t.get(collection, id)?.is_none() {
            t.upsert_value(collection, Some(id), Value::Map(BTreeMap::new()))?;
        }
        t.update(collection, id, |d| Ok(d.set(field, set)?))
    })?;
    print_line(&token.to_json().to_string())
}

/// Ask a `shoal peer` running on the same store to fetch the bytes from the devices it is connected to, and wait
/// (up to `SHOAL_FETCH_WAIT` seconds, default 30) while it does, showing progress on stderr.
fn wait_for_running_peer(store: &Store, token: &shoaldb::AttachmentToken) -> Result<(), CliError> {
    use shoaldb::store::AttachmentRequest;
    let wait: u64 = std::env::var("SHOAL_FETCH_WAIT").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    store.request_attachment(&token.hash, token.len)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut last = None;
    loop {
        match store.attachment_request(&token.hash)? {
            AttachmentRequest::Stored => return Ok(()),
            AttachmentRequest::Failed(reason) => {
                return Err(CliError::Unavailable(format!("{} ({} bytes): {reason}", token.hash_hex(), token.len)));
            }
            AttachmentRequest::Pending { done, total: Some(total) } if last != Some(done) => {
                eprintln!("fetching: {done} / {total} bytes");
                last = Some(done);
            }
            _ => {}
        }
        if std::time::Instant::now() >= deadline {
            let _ = store.end_attachment_request(&token.hash, None);
            return Err(CliError::Unavailable(format!(
                "{} ({} bytes); no running `shoal peer` on this store fetched it within {wait} s",
                token.hash_hex(),
                token.len
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn fetch_attachment(store: &Store, collection: &str, id: &str, field: &str, out: &Path) -> Result<(), CliError> {
    let doc =
        store.document(collection, id)?.ok_or_else(|| CliError::NotFound(format!("no document {collection}/{id}")))?;
    let token = doc
        .attachment(field)
        .map_err(|e| CliError::Failed(e.to_string()))?
        .ok_or_else(|| CliError::NotFound(format!("{collection}/{id} has no attachment in {field}")))?;
    if !store.has_attachment(&token)? {
        wait_for_running_peer(store, &token)?;
    }
    let mut reader = store.open_attachment(&token)?;
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| CliError::Failed(format!("cannot write {}: {e}", tmp.display())))?;
    let copied = std::io::copy(&mut reader, &mut file).and_then(|n| file.sync_all().map(|()| n));
    match copied {
        Ok(_) => {
            std::fs::rename(&tmp, out).map_err(|e| CliError::Failed(format!("cannot write {}: {e}", out.display())))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(CliError::Failed(format!("reading the attachment: {e}")))
        }
    }
}
