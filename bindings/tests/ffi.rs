//! The FFI surface driven from Rust the way the generated Kotlin and Swift drive it: async calls awaited on a
//! foreign executor (here a separate current-thread runtime, not the store's), callbacks as trait objects.

use shoaldb_ffi::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config(dir: &std::path::Path, name: &str) -> StoreConfig {
    StoreConfig {
        path: dir.join(format!("{name}.db")).to_string_lossy().into_owned(),
        device_name: name.into(),
        app_secret: Some("ffi test secret".into()),
        sync: SyncConfig { listen: Some("127.0.0.1:0".into()), mdns: false, ..SyncConfig::default() },
        key: None,
        key_vault: None,
    }
}

/// The caller's executor: not the store's runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<ChangeEvent>>);

impl CollectionObserver for Events {
    fn on_change(&self, event: ChangeEvent) -> Result<(), CallbackError> {
        self.0.lock().expect("lock").push(event);
        Ok(())
    }
}

#[derive(Default)]
struct Progress(Mutex<Vec<(u64, u64)>>);

impl AttachmentProgress for Progress {
    fn on_progress(&self, done: u64, total: u64) -> Result<(), CallbackError> {
        self.0.lock().expect("lock").push((done, total));
        Ok(())
    }
}

struct Failing;

impl CollectionObserver for Failing {
    fn on_change(&self, _: ChangeEvent) -> Result<(), CallbackError> {
        Err(CallbackError::Failed { reason: "app bug".into() })
    }
}

#[test]
fn every_field_type_through_the_ffi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_blocking(config(dir.path(), "a")).expect("open");
    let tasks = store.clone().collection("tasks".into()).expect("collection");
    let token = store
        .put_attachment_blocking(b"hello".to_vec(), HashMap::from([("name".into(), "a.txt".into())]))
        .expect("put");
    let id = tasks
        .put_blocking(
            None,
            HashMap::from([
                ("title".into(), FieldValue::String { value: "Buy milk".into() }),
                ("n".into(), FieldValue::Counter { initial: 2 }),
                ("notes".into(), FieldValue::Text { initial: "ab".into() }),
                ("meta".into(), FieldValue::Map { json: r#"{"a":{"b":1}}"#.into() }),
                ("items".into(), FieldValue::Array { json: r#"[{"done":false}]"#.into() }),
                ("file".into(), FieldValue::Attachment { token: token.clone() }),
            ]),
        )
        .expect("put fields");
    tasks
        .update_blocking(
            id.clone(),
            vec![
                Edit::Increment { path: "n".into(), by: 3 },
                Edit::TextSplice { path: "notes".into(), index: 1, length: 1, text: "XY".into() },
                Edit::Set { path: "meta.a.c".into(), value: FieldValue::Bool { value: true } },
                Edit::Set { path: "items[0].done".into(), value: FieldValue::Bool { value: true } },
                Edit::ArrayPush { path: "items".into(), items: vec![FieldValue::Int { value: 7 }] },
            ],
        )
        .expect("update");
    let doc: serde_json::Value =
        serde_json::from_str(&tasks.get_blocking(id.clone()).expect("get").expect("exists")).expect("json");
    assert_eq!(doc["n"], 5);
    assert_eq!(doc["notes"], "aXY");
    assert_eq!(doc["meta"], serde_json::json!({"a": {"b": 1, "c": true}}));
    assert_eq!(doc["items"], serde_json::json!([{"done": true}, 7]));
    assert_eq!(tasks.attachment_blocking(id.clone(), "file".into()).expect("token"), Some(token.clone()));
    assert_eq!(store.attachment_bytes_blocking(token).expect("bytes"), b"hello");
    assert_eq!(tasks.get_field_blocking(id.clone(), "meta.a.b".into()).expect("field").as_deref(), Some("1"));

    // A type mismatch is refused and changes nothing.
    let before = tasks.get_blocking(id.clone()).expect("get");
    let err = tasks.update_blocking(id.clone(), vec![Edit::Increment { path: "notes".into(), by: 1 }]);
    assert!(matches!(err, Err(ShoalError::InvalidArgument(_))), "{err:?}");
    assert_eq!(tasks.get_blocking(id).expect("get"), before);
    assert!(matches!(tasks.update_blocking("nope".into(), vec![]), Err(ShoalError::NotFound(_))));
    store.shutdown();
}

#[test]
fn an_atomic_write_commits_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_blocking(config(dir.path(), "a")).expect("open");
    let ids = block_on(store.write(
        vec![
            WriteOp::Upsert { collection: "a".into(), json: r#"{"_id":"x","v":1}"#.into() },
            WriteOp::Put {
                collection: "b".into(),
                id: Some("y".into()),
                fields: HashMap::from([("c".into(), FieldValue::Counter { initial: 1 })]),
            },
            WriteOp::Update {
                collection: "b".into(),
                id: "y".into(),
                edits: vec![Edit::Increment { path: "c".into(), by: 1 }],
            },
        ],
        None,
    ))
    .expect("write");
    assert_eq!(ids, ["x", "y", "y"]);
    let failed = block_on(store.write(
        vec![
            WriteOp::Upsert { collection: "a".into(), json: r#"{"_id":"z"}"#.into() },
            WriteOp::Update { collection: "b".into(), id: "missing".into(), edits: vec![] },
        ],
        None,
    ));
    assert!(matches!(failed, Err(ShoalError::NotFound(_))), "{failed:?}");
    let a = store.clone().collection("a".into()).expect("collection");
    assert_eq!(a.get_blocking("z".into()).expect("get"), None, "nothing of a failed write is kept");
    assert_eq!(
        store
            .clone()
            .collection("b".into())
            .expect("b")
            .get_field_blocking("y".into(), "c".into())
            .expect("c")
            .as_deref(),
        Some("2")
    );
    store.shutdown();
}

#[test]
fn observers_see_the_current_result_first_then_changes_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_blocking(config(dir.path(), "a")).expect("open");
    let tasks = store.clone().collection("tasks".into()).expect("collection");
    tasks.upsert_blocking(r#"{"_id":"1","done":false}"#.into()).expect("upsert");
    let events = Arc::new(Events::default());
    let handle = tasks
        .observe_blocking(Query { filter: Some("done == false".into()), ..Query::default() }, events.clone())
        .expect("observe");
    let _failing =
        tasks.observe_blocking(Query::default(), Arc::new(Failing)).expect("a failing observer is only logged");
    tasks.upsert_blocking(r#"{"_id":"2","done":false}"#.into()).expect("upsert");
    tasks.upsert_blocking(r#"{"_id":"1","done":true}"#.into()).expect("upsert");
    handle.cancel();
    tasks.upsert_blocking(r#"{"_id":"3","done":false}"#.into()).expect("upsert");
    let events = events.0.lock().expect("lock").clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].results.len(), 1);
    assert_eq!(events[0].inserted, events[0].results);
    assert!(events[1].inserted[0].contains("\"_id\":\"2\""));
    assert_eq!(events[2].removed, ["1"]);
    store.shutdown();
}

#[test]
fn a_store_syncs_with_the_cloud_over_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The "relay": a node of the core accepting WebSocket links only, on a runtime of its own.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let relay_store = shoaldb::Store::open(dir.path().join("relay.db")).expect("relay store");
    let secret = shoaldb::security::AppSecret::from_bytes(b"ffi test secret").expect("secret");
    let relay = runtime
        .block_on(shoaldb::Node::start(
            relay_store.clone(),
            shoaldb::NodeConfig::new("relay", secret)
                .with_mdns(false)
                .listen_websocket_on("127.0.0.1:0".parse().expect("addr")),
        ))
        .expect("relay starts");
    let url = format!("ws://{}/sync", relay.websocket_addr().expect("websocket address"));
    let mut phone_config = config(dir.path(), "phone");
    phone_config.sync = SyncConfig { mdns: false, cloud: vec![url], ..SyncConfig::default() };
    let phone = Store::open_blocking(phone_config).expect("open");
    block_on(phone.start_sync()).expect("start");
    let notes = phone.clone().collection("notes".into()).expect("notes");
    notes.upsert_blocking(r#"{"_id":"up","from":"phone"}"#.into()).expect("upsert");
    relay_store.upsert("notes", serde_json::json!({"_id": "down", "from": "cloud"})).expect("relay upsert");
    wait_until("both notes on both sides", || {
        notes.all_blocking().map(|d| d.len() == 2).unwrap_or(false)
            && relay_store.get("notes", "up").ok().flatten().is_some()
    });
    block_on(phone.stop_sync()).expect("stop");
    phone.shutdown();
    runtime.block_on(relay.shutdown());
}

#[test]
fn two_stores_sync_over_loopback_and_fetch_an_attachment_with_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Store::open_blocking(config(dir.path(), "a")).expect("open a");
    let b = Store::open_blocking(config(dir.path(), "b")).expect("open b");
    block_on(a.start_sync()).expect("start a");
    let addr = a.listen_address().expect("a listens");
    b.connect(addr).expect("connect");
    block_on(b.start_sync()).expect("start b");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let token = a.put_attachment_blocking(big.clone(), HashMap::new()).expect("attachment");
    let ta = a.clone().collection("t".into()).expect("t");
    let tb = b.clone().collection("t".into()).expect("t");
    ta.put_blocking(
        Some("doc".into()),
        HashMap::from([("file".into(), FieldValue::Attachment { token: token.clone() })]),
    )
    .expect("put");
    tb.upsert_blocking(r#"{"_id":"other","by":"b"}"#.into()).expect("upsert");
    wait_until("both documents on both stores", || {
        ta.all_blocking().map(|d| d.len() == 2).unwrap_or(false)
            && tb.all_blocking().map(|d| d.len() == 2).unwrap_or(false)
    });
    assert_eq!(ta.all_blocking().expect("all"), tb.all_blocking().expect("all"));
    wait_until("presence", || {
        b.peers()
            .iter()
            .any(|p| p.name == "a" && p.transport == Transport::Lan && p.hops == 1 && p.direct == [Transport::Lan])
    });
    assert!(!b.has_attachment_blocking(token.clone()).expect("has"), "attachment bytes travel only on request");
    let progress = Arc::new(Progress::default());
    block_on(b.fetch_attachment(token.clone(), Some(progress.clone()), None)).expect("fetch");
    assert_eq!(b.attachment_bytes_blocking(token.clone()).expect("bytes"), big);
    let seen = progress.0.lock().expect("lock").clone();
    assert_eq!(seen.last(), Some(&(big.len() as u64, big.len() as u64)), "{seen:?}");
    let out = dir.path().join("out.bin");
    block_on(b.save_attachment(token, out.to_string_lossy().into_owned(), None)).expect("save");
    assert_eq!(std::fs::read(out).expect("read"), big);
    block_on(b.stop_sync()).expect("stop");
    assert!(!b.is_syncing());
    a.shutdown();
    b.shutdown();
}

#[test]
fn fetching_without_sync_or_after_shutdown_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Store::open_blocking(config(dir.path(), "a")).expect("open");
    let token = AttachmentToken { hash: "00".repeat(32), length: 3, meta: HashMap::new() };
    assert!(matches!(block_on(a.fetch_attachment(token.clone(), None, None)), Err(ShoalError::Sync(_))));
    a.shutdown();
    assert!(matches!(block_on(a.fetch_attachment(token, None, None)), Err(ShoalError::Closed)));
    assert!(matches!(block_on(a.start_sync()), Err(ShoalError::Closed)));
}

#[test]
fn collections_stop_working_when_their_store_is_freed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_blocking(config(dir.path(), "a")).expect("open");
    let tasks = store.clone().collection("tasks".into()).expect("collection");
    tasks.upsert_blocking(r#"{"_id":"1"}"#.into()).expect("upsert");
    drop(store);
    assert!(matches!(tasks.get_blocking("1".into()), Err(ShoalError::Closed)));
    let again = Store::open_blocking(config(dir.path(), "a")).expect("reopen");
    assert!(
        again.clone().collection("tasks".into()).expect("collection").get_blocking("1".into()).expect("get").is_some(),
        "the write was kept"
    );
}

/// A platform radio as the foreign side implements it, here over the core's in-memory air.
struct AirRadio {
    radio: Arc<shoaldb::sim::memory_air::MemoryRadio>,
}

impl BluetoothRadio for AirRadio {
    fn start(&self, events: Arc<BluetoothEvents>) -> Result<(), CallbackError> {
        use shoaldb::transport::ble::radio::Radio;
        self.radio.attach(events.radio_events());
        Ok(())
    }
    fn start_advertising(&self, service_data: Vec<u8>) -> Result<(), CallbackError> {
        self.run(RadioCommand::StartAdvertising { service_data })
    }
    fn start_scanning(&self) -> Result<(), CallbackError> {
        self.run(RadioCommand::StartScanning)
    }
    fn connect(&self, address: String) -> Result<(), CallbackError> {
        self.run(RadioCommand::Connect { address })
    }
    fn cancel_connect(&self, address: String) -> Result<(), CallbackError> {
        self.run(RadioCommand::CancelConnect { address })
    }
    fn disconnect(&self, connection: u64) -> Result<(), CallbackError> {
        self.run(RadioCommand::Disconnect { conn: connection })
    }
    fn send(&self, connection: u64, packet: Vec<u8>) -> Result<(), CallbackError> {
        self.run(RadioCommand::Send { conn: connection, packet })
    }
    fn stop(&self) -> Result<(), CallbackError> {
        use shoaldb::transport::ble::radio::Radio;
        self.radio.detach();
        Ok(())
    }
}

use shoaldb::transport::ble::links::RadioCommand;

impl AirRadio {
    fn run(&self, c: RadioCommand) -> Result<(), CallbackError> {
        use shoaldb::transport::ble::radio::Radio;
        self.radio.execute(c);
        Ok(())
    }
}

#[test]
fn two_stores_sync_over_a_bluetooth_radio_implemented_outside_the_core() {
    let dir = tempfile::tempdir().expect("tempdir");
    let air = shoaldb::sim::memory_air::MemoryAir::new(185);
    let mut stores = Vec::new();
    for name in ["a", "b"] {
        let mut c = config(dir.path(), name);
        c.sync.listen = None;
        c.sync.mdns = false;
        let s = Store::open_blocking(c).expect("open");
        s.set_bluetooth(Some(Arc::new(AirRadio { radio: air.radio(name) }))).expect("radio");
        block_on(s.start_sync()).expect("start");
        stores.push(s);
    }
    let (a, b) = (&stores[0], &stores[1]);
    assert_eq!(bluetooth_uuids().service, shoaldb::transport::ble::SERVICE_UUID);
    a.clone().collection("t".into()).expect("t").upsert_blocking(r#"{"_id":"x","over":"ble"}"#.into()).expect("upsert");
    let tb = b.clone().collection("t".into()).expect("t");
    wait_until("the document over BLE", || tb.get_blocking("x".into()).ok().flatten().is_some());
    wait_until("presence over Bluetooth", || {
        b.peers().iter().any(|p| p.name == "a" && p.transport == Transport::Bluetooth)
    });
    a.shutdown();
    b.shutdown();
}

/// Keeps every log message (the logger is per process: other tests' messages mix in).
#[derive(Default)]
struct Messages(Mutex<Vec<String>>);

impl ShoalLogger for Messages {
    fn log(&self, _level: LogLevel, _target: String, message: String) {
        self.0.lock().expect("lock").push(message);
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64
}

/// A store in certificate mode: no app secret.
fn enrolled(dir: &std::path::Path, name: &str, authority: &Authority, serial: u64) -> Arc<Store> {
    let store = Store::open_blocking(StoreConfig { app_secret: None, ..config(dir, name) }).expect("open");
    let request = store.enrolment_request(name.into()).expect("request");
    let day = 86_400_000;
    let cert = authority
        .issue(request, serial, vec!["read *".into(), "write *".into()], now_ms() - day, now_ms() + 365 * day)
        .expect("issue");
    let info = block_on(store.install_certificate(authority.public_key(), vec![cert])).expect("install");
    assert_eq!((info.name.as_str(), info.serial), (name, serial));
    assert_eq!(info.device_id, store.device_id().expect("id"));
    assert_eq!(info.grants, ["read *", "write *"]);
    assert_eq!(store.certificate().expect("certificate"), Some(info));
    store
}

#[test]
fn enrolled_stores_sync_with_certificates_and_strangers_or_the_revoked_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let messages = Arc::new(Messages::default());
    set_logger(messages.clone(), LogLevel::Warn);
    let authority = Authority::generate().expect("authority");
    let again = Authority::from_private_key(authority.private_key()).expect("from key");
    assert_eq!(again.public_key(), authority.public_key());
    let a = enrolled(dir.path(), "a", &authority, 1);
    let b = enrolled(dir.path(), "b", &again, 2);
    let c = enrolled(dir.path(), "c", &authority, 3);
    let other = Authority::generate().expect("other authority");
    let d = enrolled(dir.path(), "d", &other, 1);

    // c is revoked before a starts syncing.
    let c_key = c.certificate().expect("c").expect("c enrolled").signing_key;
    let list = authority.revoke(1, vec![Revocation::Device { signing_key: c_key }]).expect("revoke");
    assert!(block_on(a.install_revocations(list.clone())).expect("revocations"));
    assert!(!block_on(a.install_revocations(list)).expect("again"), "the same list is no news");
    let forged = other.revoke(2, vec![]).expect("other's list");
    assert!(matches!(block_on(a.install_revocations(forged)), Err(ShoalError::Certificate(_))));

    block_on(a.start_sync()).expect("start a");
    let addr = a.listen_address().expect("a listens");
    let ta = a.clone().collection("t".into()).expect("t");
    ta.upsert_blocking(r#"{"_id":"x","by":"a"}"#.into()).expect("upsert");
    b.connect(addr.clone()).expect("connect");
    block_on(b.start_sync()).expect("start b");
    let tb = b.clone().collection("t".into()).expect("t");
    wait_until("a's document on b over a certified link", || tb.get_blocking("x".into()).ok().flatten().is_some());

    for store in [&c, &d] {
        store.connect(addr.clone()).expect("connect");
        block_on(store.start_sync()).expect("start");
    }
    wait_until("a refusing the revoked c", || {
        messages.0.lock().expect("lock").iter().any(|m| m.contains("revoked: device key"))
    });
    std::thread::sleep(Duration::from_secs(2));
    for store in [&c, &d] {
        assert!(store.peers().is_empty(), "no link came up: {:?}", store.peers());
        let t = store.clone().collection("t".into()).expect("t");
        assert_eq!(t.get_blocking("x".into()).expect("get"), None);
    }
    assert!(a.peers().iter().all(|p| p.name == "b"), "{:?}", a.peers());
    // Revoking b while a syncs closes their link at once (sync restarts with the new list); b stays out.
    let b_key = b.certificate().expect("b").expect("b enrolled").signing_key;
    let c_key = c.certificate().expect("c").expect("c enrolled").signing_key;
    let list = authority
        .revoke(2, vec![Revocation::Device { signing_key: c_key }, Revocation::Device { signing_key: b_key }])
        .expect("revoke b");
    assert!(block_on(a.install_revocations(list)).expect("news"));
    assert!(a.is_syncing(), "still syncing after the restart");
    tb.upsert_blocking(r#"{"_id":"late","by":"b"}"#.into()).expect("upsert");
    wait_until("a revoking b's link", || a.peers().is_empty() && b.peers().is_empty());
    std::thread::sleep(Duration::from_secs(1));
    assert!(a.peers().is_empty() && b.peers().is_empty(), "{:?} {:?}", a.peers(), b.peers());
    assert_eq!(ta.get_blocking("late".into()).expect("get"), None);
    for store in [a, b, c, d] {
        store.shutdown();
    }
}

#[test]
fn enrolment_mistakes_are_certificate_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let authority = Authority::generate().expect("authority");
    let bare = Store::open_blocking(StoreConfig { app_secret: None, ..config(dir.path(), "bare") }).expect("open");
    assert_eq!(bare.certificate().expect("none"), None);
    assert!(matches!(block_on(bare.start_sync()), Err(ShoalError::Certificate(m)) if m.contains("development mode")));
    let request = bare.enrolment_request("bare".into()).expect("request");
    assert!(request.starts_with("shoal-enrol-1 "), "{request}");
    let cert = |grants: Vec<String>| authority.issue(request.clone(), 1, grants, 0, u64::MAX);
    assert!(matches!(cert(vec!["delete *".into()]), Err(ShoalError::Certificate(_))));
    assert!(matches!(
        authority.issue("hello".into(), 1, vec![], 0, 1),
        Err(ShoalError::Certificate(m)) if m.contains("enrolment request")
    ));
    assert!(matches!(authority.issue(request.clone(), 1, vec![], 2, 1), Err(ShoalError::Certificate(_))));
    let good = cert(vec!["read *".into()]).expect("issue");
    // Another device's certificate, another authority, garbage, a bad key: refused, nothing installed.
    let other = Store::open_blocking(config(dir.path(), "other")).expect("open");
    assert!(matches!(
        block_on(other.install_certificate(authority.public_key(), vec![good.clone()])),
        Err(ShoalError::Certificate(_))
    ));
    let stranger = Authority::generate().expect("stranger").public_key();
    assert!(matches!(
        block_on(bare.install_certificate(stranger, vec![good.clone()])),
        Err(ShoalError::Certificate(_))
    ));
    assert!(matches!(
        block_on(bare.install_certificate(authority.public_key(), vec![vec![1, 2, 3]])),
        Err(ShoalError::Certificate(_))
    ));
    assert!(matches!(
        block_on(bare.install_certificate(authority.public_key(), vec![])),
        Err(ShoalError::Certificate(_))
    ));
    assert!(matches!(
        block_on(bare.install_certificate("xyz".into(), vec![good.clone()])),
        Err(ShoalError::InvalidArgument(_))
    ));
    assert!(matches!(
        block_on(bare.install_revocations(authority.revoke(1, vec![]).expect("list"))),
        Err(ShoalError::Certificate(_))
    ));
    assert!(matches!(Authority::from_private_key(vec![0; 5]), Err(ShoalError::InvalidArgument(_))));
    assert!(matches!(
        authority.revoke(1, vec![Revocation::Author { author: "zz".into(), accept_until: None }]),
        Err(ShoalError::InvalidArgument(_))
    ));
    assert_eq!(bare.certificate().expect("still none"), None);
    let info = block_on(bare.install_certificate(authority.public_key(), vec![good])).expect("install");
    assert_eq!(info.grant_device_id.len(), 16);
    block_on(bare.start_sync()).expect("starts with its certificate");
    bare.shutdown();
    other.shutdown();
}

/// A vault as a platform implements it (here a map; Android's wraps the keys with a Keystore key, iOS's uses the
/// Keychain), counting what it is asked.
#[derive(Default)]
struct PlatformVault {
    entries: Mutex<HashMap<String, Vec<u8>>>,
    locked: bool,
}

impl KeyVault for PlatformVault {
    fn load(&self, name: String) -> Result<Option<Vec<u8>>, CallbackError> {
        if self.locked {
            return Err(CallbackError::Failed { reason: "the keystore is locked".into() });
        }
        Ok(self.entries.lock().expect("lock").get(&name).cloned())
    }

    fn create(&self, name: String, secret: Vec<u8>) -> Result<bool, CallbackError> {
        let mut entries = self.entries.lock().expect("lock");
        if entries.contains_key(&name) {
            return Ok(false);
        }
        entries.insert(name, secret);
        Ok(true)
    }
}

#[test]
fn the_platform_vault_keeps_the_private_keys_and_the_database_holds_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vault = Arc::new(PlatformVault::default());
    let with_vault = || StoreConfig { app_secret: None, key_vault: Some(vault.clone()), ..config(dir.path(), "v") };
    let store = Store::open_blocking(with_vault()).expect("open");
    let request = store.enrolment_request("v".into()).expect("request");
    let entries = vault.entries.lock().expect("lock").clone();
    let mut names: Vec<_> = entries.keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["noise-key", "signing-key"]);
    // The request shows the public halves of the keys the vault holds.
    let public_noise = shoaldb::util::hex(&entries["noise-key"][32..]);
    assert!(request.contains(&public_noise), "{request}");
    let device_id = store.device_id().expect("id");
    drop(store);
    let again = Store::open_blocking(with_vault()).expect("reopen");
    assert_eq!(again.device_id().expect("id"), device_id, "the same keys after a restart");
    drop(again);
    let mut file = std::fs::read(dir.path().join("v.db")).expect("read");
    file.extend(std::fs::read(dir.path().join("v.db-wal")).unwrap_or_default());
    for secret in [&entries["noise-key"][..32], &entries["signing-key"][..]] {
        assert!(!file.windows(secret.len()).any(|w| w == secret), "a private key is in the database");
    }
    assert!(!dir.path().join("v.db-keys").exists(), "nothing beside the database");

    // A vault that cannot be read fails the open, typed, rather than making a second identity.
    let locked = Arc::new(PlatformVault { locked: true, ..PlatformVault::default() });
    let refused = Store::open_blocking(StoreConfig { key_vault: Some(locked), ..with_vault() });
    assert!(matches!(&refused, Err(ShoalError::Storage(m)) if m.contains("locked")), "{:?}", refused.err());
}

/// A platform discovery as an app implements it (here in Rust): it records what it was asked to advertise and
/// keeps the events object to report with.
#[derive(Default)]
struct Bonjour {
    advertised: Mutex<Vec<Option<ServiceAdvertisement>>>,
    events: Mutex<Option<Arc<LocalNetworkEvents>>>,
    stops: Mutex<u32>,
}

impl LocalNetworkDiscovery for Bonjour {
    fn start(
        &self,
        advertisement: Option<ServiceAdvertisement>,
        events: Arc<LocalNetworkEvents>,
    ) -> Result<(), CallbackError> {
        self.advertised.lock().expect("lock").push(advertisement);
        *self.events.lock().expect("lock") = Some(events);
        Ok(())
    }

    fn stop(&self) -> Result<(), CallbackError> {
        *self.stops.lock().expect("lock") += 1;
        Ok(())
    }
}

#[test]
fn a_platform_discovery_advertises_the_listening_port_and_replaces_mdns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path(), "phone");
    // Every interface, as a phone listens (a loopback listener is never advertised).
    c.sync = SyncConfig { listen: Some("0.0.0.0:0".into()), mdns: true, ..SyncConfig::default() };
    let store = Store::open_blocking(c).expect("open");
    let bonjour = Arc::new(Bonjour::default());
    store.set_local_network_discovery(Some(bonjour.clone())).expect("set discovery");
    block_on(store.start_sync()).expect("start sync");
    let port: u16 =
        store.listen_address().expect("listening").rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let advertised = bonjour.advertised.lock().expect("lock").clone();
    let [Some(ad)] = advertised.as_slice() else { panic!("advertised once: {advertised:?}") };
    assert_eq!((ad.service_type.as_str(), ad.port), ("_shoal._tcp", port));
    assert_eq!(ad.txt.get("dk"), Some(&store.device_id().expect("device id")));
    assert!(ad.txt.contains_key("app"));
    // Whatever the platform reports is checked before it is used: none of this is dialled or fails anything.
    let events = bonjour.events.lock().expect("lock").clone().expect("events");
    events.found("junk".into(), HashMap::new(), vec!["not an ip".into(), "127.0.0.1".into()], 1);
    events.found("x".repeat(10_000), HashMap::new(), vec![], 0);
    events.lost("nobody".into());
    block_on(store.stop_sync()).expect("stop sync");
    assert_eq!(*bonjour.stops.lock().expect("lock"), 1, "stopping sync stops the platform's discovery");
    store.shutdown();
    // With mDNS off, the platform's discovery is not used either.
    let quiet = Store::open_blocking(config(dir.path(), "quiet")).expect("open");
    let unused = Arc::new(Bonjour::default());
    quiet.set_local_network_discovery(Some(unused.clone())).expect("set discovery");
    block_on(quiet.start_sync()).expect("start sync");
    block_on(quiet.stop_sync()).expect("stop sync");
    assert!(unused.advertised.lock().expect("lock").is_empty());
    quiet.shutdown();
}

#[test]
fn a_write_batch_can_hold_a_write_back_of_what_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_blocking(config(dir.path(), "a")).expect("open");
    let tasks = store.clone().collection("tasks".into()).expect("collection");
    tasks.upsert_blocking(r#"{"_id": "t", "title": "a", "done": false}"#.into()).expect("create");
    let ids = block_on(store.write(
        vec![WriteOp::UpsertChanged {
            collection: "tasks".into(),
            json: r#"{"_id": "t", "title": "b", "done": false}"#.into(),
        }],
        None,
    ))
    .expect("write");
    assert_eq!(ids, vec!["t".to_string()]);
    let doc: serde_json::Value =
        serde_json::from_str(&tasks.get_blocking("t".into()).expect("get").expect("exists")).expect("json");
    assert_eq!(doc, serde_json::json!({"_id": "t", "title": "b", "done": false}));
    store.shutdown();
}
