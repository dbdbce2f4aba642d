//! Nodes syncing over real TCP on loopback (manual addresses, no mDNS): both ways and live, a line of three, a
//! wrong app secret, a node restarted on the same store (reconnection with backoff and catch-up), and writes by
//! another process on the same file. Every wait polls a condition for up to 30 s: nothing here asserts on timing.

use serde_json::json;
use shoaldb::node::{device_identity, Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::store::Replica;
use shoaldb::Store;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const PATIENCE: Duration = Duration::from_secs(30);

fn secret() -> AppSecret {
    AppSecret::from_bytes(b"lan test secret").expect("secret")
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn open(dir: &Path, name: &str) -> Store {
    Store::open(dir.join(format!("{name}.db"))).expect("store")
}

async fn start(store: &Store, name: &str, listen: Option<SocketAddr>, connect: &[SocketAddr]) -> Node {
    start_with(store, name, secret(), listen, connect).await
}

async fn start_with(
    store: &Store,
    name: &str,
    secret: AppSecret,
    listen: Option<SocketAddr>,
    connect: &[SocketAddr],
) -> Node {
    let mut config = NodeConfig::new(name, secret).with_mdns(false);
    config.listen = listen;
    config.connect = connect.to_vec();
    Node::start(store.clone(), config).await.expect("node starts")
}

/// Poll `cond` until it holds, for up to [`PATIENCE`].
async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(PATIENCE, what, cond).await;
}

/// Poll `cond` until it holds, for up to `patience`.
async fn eventually_within(patience: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + patience;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has(store: &Store, collection: &str, id: &str) -> bool {
    store.get(collection, id).expect("get").is_some()
}

fn field(store: &Store, collection: &str, id: &str, f: &str) -> serde_json::Value {
    store.get(collection, id).expect("get").map(|d| d[f].clone()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_sync_both_ways_and_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (open(dir.path(), "a"), open(dir.path(), "b"));
    sa.upsert("tasks", json!({"_id": "a1", "title": "from a"})).expect("write");
    sb.upsert("notes", json!({"_id": "b1", "text": "from b"})).expect("write");
    let a = start(&sa, "alice", Some(loopback()), &[]).await;
    let addr = a.listen_addr().expect("a listens");
    let b = start(&sb, "bob", None, &[addr]).await;
    assert_eq!(b.listen_addr(), None);

    eventually("catch-up both ways", || has(&sb, "tasks", "a1") && has(&sa, "notes", "b1")).await;
    // Live, both ways.
    sa.update("tasks", "a1", |d| Ok(d.set("title", "edited on a")?)).expect("write");
    sb.upsert("notes", json!({"_id": "b2", "text": "later"})).expect("write");
    eventually("live edits arrive", || field(&sb, "tasks", "a1", "title") == "edited on a" && has(&sa, "notes", "b2"))
        .await;
    eventually("summaries agree", || sa.replica().summary().ok() == sb.replica().summary().ok()).await;

    // Presence: each sees the other, directly, by name.
    eventually("presence", || {
        let (pa, pb) = (a.peers(), b.peers());
        pa.len() == 1
            && pa[0].name == "bob"
            && pa[0].hops == 1
            && pa[0].device == b.device_key()
            && pb.len() == 1
            && pb[0].name == "alice"
            && pb[0].device == a.device_key()
    })
    .await;
    b.shutdown().await;
    eventually("a sees b leave", || a.peers().is_empty()).await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_line_of_three_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb, sc) = (open(dir.path(), "a"), open(dir.path(), "b"), open(dir.path(), "c"));
    let b = start(&sb, "b", Some(loopback()), &[]).await;
    let hub = b.listen_addr().expect("b listens");
    let a = start(&sa, "a", None, &[hub]).await;
    let c = start(&sc, "c", None, &[hub]).await;
    sa.upsert("chat", json!({"_id": "from-a", "n": 1})).expect("write");
    sc.upsert("chat", json!({"_id": "from-c", "n": 3})).expect("write");
    sb.upsert("chat", json!({"_id": "from-b", "n": 2})).expect("write");
    for s in [&sa, &sb, &sc] {
        eventually("every store holds every message", || {
            ["from-a", "from-b", "from-c"].iter().all(|id| has(s, "chat", id))
        })
        .await;
    }
    // A and C never meet, but see each other through B.
    eventually("a sees c two hops away", || a.peers().iter().any(|p| p.device == c.device_key() && p.hops == 2)).await;
    eventually("summaries agree", || {
        let s = sa.replica().summary().ok();
        s == sb.replica().summary().ok() && s == sc.replica().summary().ok()
    })
    .await;
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_the_wrong_secret_gets_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sgood, sbad) = (open(dir.path(), "a"), open(dir.path(), "good"), open(dir.path(), "bad"));
    sa.upsert("secrets", json!({"_id": "s", "v": 42})).expect("write");
    let a = start(&sa, "a", Some(loopback()), &[]).await;
    let addr = a.listen_addr().expect("listens");
    let other = AppSecret::from_bytes(b"another app").expect("secret");
    let bad = start_with(&sbad, "intruder", other, None, &[addr]).await;
    let good = start(&sgood, "friend", None, &[addr]).await;
    // The node with the right secret syncs (so the intruder had every chance to)...
    eventually("the friend syncs", || has(&sgood, "secrets", "s")).await;
    // ...and by then the intruder has tried (and failed) at least once; let it retry a little longer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!has(&sbad, "secrets", "s"), "the intruder got a document");
    assert!(bad.peers().is_empty(), "the intruder sees peers: {:?}", bad.peers());
    assert!(a.peers().iter().all(|p| p.device != bad.device_key()), "a lists the intruder");
    assert_eq!(sbad.replica().summary().expect("summary"), shoaldb::Summary::new());
    for n in [a, bad, good] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_is_redialled_and_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (open(dir.path(), "a"), open(dir.path(), "b"));
    let a = start(&sa, "a", Some(loopback()), &[]).await;
    let addr = a.listen_addr().expect("listens");
    let key = a.device_key();
    // B dials A and keeps redialling with backoff when A goes away.
    let b = start(&sb, "b", None, &[addr]).await;
    sa.upsert("log", json!({"_id": "before", "v": 1})).expect("write");
    eventually("first sync", || has(&sb, "log", "before")).await;

    a.shutdown().await;
    eventually("b notices a left", || b.peers().is_empty()).await;
    // Both sides write while apart.
    sb.upsert("log", json!({"_id": "while-apart-b", "v": 2})).expect("write");
    sa.upsert("log", json!({"_id": "while-apart-a", "v": 3})).expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await; // let b's dialer fail once or twice

    // A new node on the same store and address: same device, and b's dialer finds it.
    let a2 = start(&sa, "a", Some(addr), &[]).await;
    assert_eq!(a2.device_key(), key, "the device key survives a restart");
    eventually("catch-up after reconnecting", || has(&sa, "log", "while-apart-b") && has(&sb, "log", "while-apart-a"))
        .await;
    eventually("presence after reconnecting", || b.peers().iter().any(|p| p.device == key)).await;
    b.shutdown().await;
    a2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_by_another_process_reach_the_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (open(dir.path(), "a"), open(dir.path(), "b"));
    let a = start(&sa, "a", Some(loopback()), &[]).await;
    let b = start(&sb, "b", None, &[a.listen_addr().expect("listens")]).await;
    eventually("linked", || !b.peers().is_empty()).await;
    // A second handle on a's file, as another process would have: no commit listener of the node sees its writes.
    let other = Store::open(sa.path()).expect("second handle");
    other.upsert("inbox", json!({"_id": "m1", "text": "written elsewhere"})).expect("write");
    eventually("the other process's write reaches b", || has(&sb, "inbox", "m1")).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_can_change_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (open(dir.path(), "a"), open(dir.path(), "b"));
    sa.upsert("public", json!({"_id": "p", "v": 1})).expect("write");
    sa.upsert("private", json!({"_id": "q", "v": 2})).expect("write");
    let a = start(&sa, "a", Some(loopback()), &[]).await;
    let mut config = NodeConfig::new("b", secret())
        .with_mdns(false)
        .with_subscriptions(vec![shoaldb::sync::Subscription::collection("public")]);
    config.connect = vec![a.listen_addr().expect("listens")];
    let b = Node::start(sb.clone(), config).await.expect("start");
    eventually("the subscribed collection arrives", || has(&sb, "public", "p")).await;
    assert!(!has(&sb, "private", "q"));
    b.set_subscriptions(vec![shoaldb::sync::Subscription::everything()]);
    eventually("the newly subscribed collection arrives", || has(&sb, "private", "q")).await;
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn the_device_identity_is_kept_across_restarts_and_settings_are_device_local() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "a");
    let first = device_identity(&store).expect("identity");
    let again = device_identity(&Store::open(store.path()).expect("reopen")).expect("identity");
    assert_eq!(first.device_key(), again.device_key());
    // Device-local settings are not replicated.
    store.set_local_value("theme", b"dark").expect("write");
    assert_eq!(store.local_value("theme").expect("read").as_deref(), Some(&b"dark"[..]));
    assert_eq!(store.replica().summary().expect("summary"), shoaldb::Summary::new());
    assert!(store.local_value("").is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn a_node_also_runs_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (open(dir.path(), "a"), open(dir.path(), "b"));
    let a = start(&sa, "a", Some(loopback()), &[]).await;
    let b = start(&sb, "b", None, &[a.listen_addr().expect("listens")]).await;
    sa.upsert("x", json!({"_id": "1"})).expect("write");
    eventually("sync on one thread", || has(&sb, "x", "1")).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A TCP relay to `target` that can be frozen: it then stops moving bytes without closing anything, as when a
/// peer goes out of range.
async fn freezable_relay(target: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let frozen = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let f = frozen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { continue };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, f.clone()));
            tokio::spawn(pump(or, iw, f.clone()));
        }
    });
    (addr, frozen)
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if frozen.load(Ordering::SeqCst) {
            // Hold both sockets open and move nothing, ever.
            std::future::pending::<()>().await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_links_stay_up_and_silent_ones_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb) = (open(dir.path(), "a"), open(dir.path(), "b"));
    let a = start(&sa, "a", Some(loopback()), &[]).await;
    let (relay, frozen) = freezable_relay(a.listen_addr().expect("listens")).await;
    let b = start(&sb, "b", None, &[relay]).await;
    eventually("linked through the relay", || a.peers().len() == 1 && b.peers().len() == 1).await;
    // Longer than the engine's link timeout with nothing to sync: keepalives keep the link up.
    let link_timeout = Duration::from_millis(shoaldb::sync::engine::LINK_TIMEOUT_MS);
    tokio::time::sleep(link_timeout + Duration::from_secs(3)).await;
    assert_eq!((a.peers().len(), b.peers().len()), (1, 1), "an idle link was closed");
    sa.upsert("x", json!({"_id": "after-idle"})).expect("write");
    eventually("sync after a long idle time", || has(&sb, "x", "after-idle")).await;
    // The relay goes silent without closing: both sides notice by themselves.
    frozen.store(true, Ordering::SeqCst);
    eventually_within(link_timeout + PATIENCE, "both sides drop the silent link", || {
        a.peers().is_empty() && b.peers().is_empty()
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn attachments_are_fetched_through_a_relay_with_progress() {
    // a – b – c over TCP: c has a 600 KB attachment, a fetches it through b.
    let dir = tempfile::tempdir().expect("tempdir");
    let (sa, sb, sc) = (open(dir.path(), "a"), open(dir.path(), "b"), open(dir.path(), "c"));
    let b = start(&sb, "b", Some(loopback()), &[]).await;
    let b_addr = b.listen_addr().expect("listening");
    let a = start(&sa, "a", None, &[b_addr]).await;
    let c = start(&sc, "c", None, &[b_addr]).await;
    let bytes: Vec<u8> = (0..600_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let token = sc.put_attachment_bytes(&bytes, Default::default()).expect("attachment");
    sc.upsert("files", json!({"_id": "f", "file": token.to_json()})).expect("upsert");
    eventually("the token reaches a", || has(&sa, "files", "f")).await;
    assert!(!sa.has_attachment(&token).expect("store"));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let fetched = tokio::time::timeout(
        PATIENCE,
        a.fetch_attachment(&token, move |done, total| {
            log.lock().expect("lock").push((done, total));
        }),
    )
    .await
    .expect("fetched in time");
    fetched.expect("fetched");
    assert_eq!(sa.attachment_bytes(&token).expect("bytes"), bytes);
    let seen = seen.lock().expect("lock").clone();
    assert!(seen.len() > 2 && seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    assert_eq!(seen.last(), Some(&(600_000, 600_000)));
    // Nobody has this one: a clear error.
    let ghost = shoaldb::AttachmentToken { hash: [9; 32], len: 10, meta: Default::default() };
    let err = tokio::time::timeout(PATIENCE, a.fetch_attachment(&ghost, |_, _| {})).await.expect("answered in time");
    assert!(matches!(err, Err(shoaldb::NodeError::AttachmentUnavailable { .. })), "{err:?}");
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_truncated_and_garbage_frames_close_the_link_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), "target");
    store.upsert("notes", json!({"_id": "n", "v": 1})).expect("upsert");
    let node = start(&store, "target", Some(loopback()), &[]).await;
    let addr = node.listen_addr().expect("listening");
    let before = store.replica().summary().expect("summary");
    // Each attack on its own connection: the node must close it (EOF or reset), not hang, not crash.
    let oversized = (100u32 << 20).to_be_bytes().to_vec();
    let mut garbage = 40u32.to_be_bytes().to_vec();
    garbage.extend((0..40u8).map(|i| i.wrapping_mul(37)));
    let zero = 0u32.to_be_bytes().to_vec();
    for (what, bytes) in [("oversized", oversized), ("garbage", garbage), ("zero-length", zero)] {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(&bytes).await.expect("write");
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(PATIENCE, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // the node's own handshake frame
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the {what} frame did not close the link");
    }
    // A truncated frame, then the connection drops.
    {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut t = 1000u32.to_be_bytes().to_vec();
        t.extend([1u8; 10]);
        s.write_all(&t).await.expect("write");
    }
    assert_eq!(store.replica().summary().expect("summary"), before, "bad frames changed the store");
    // The node still serves genuine peers.
    let other = open(dir.path(), "other");
    let peer = start(&other, "other", None, &[addr]).await;
    eventually("a genuine peer still syncs", || has(&other, "notes", "n")).await;
    peer.shutdown().await;
    node.shutdown().await;
}
