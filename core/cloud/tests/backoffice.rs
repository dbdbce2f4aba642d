//! The back office's HTTP API on real relays and a real PostgreSQL: the change feed delivers every change exactly
//! once while transactions commit out of order and the consumer moves between relays; documents are read, queried
//! (the phones' filter semantics) and written as the cloud, signed, and reach phones that check them.

mod common;

use common::{encode, http};
use serde_json::{json, Value as Json};
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::{AppSecret, Identity, SigningKey};
use shoaldb::{Query, Replica, Store, Summary};
use shoaldb_cloud::{BackOfficeConfig, PgReplica, Relay, RelayConfig};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "back-office-test-token";

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn with_http(mut config: RelayConfig) -> RelayConfig {
    config.http = Some(BackOfficeConfig::new(any(), TOKEN));
    config
}

async fn get(addr: SocketAddr, target: String, token: Option<&'static str>) -> common::Response {
    tokio::task::spawn_blocking(move || http(addr, "GET", &target, token, None)).await.unwrap()
}

async fn send(addr: SocketAddr, method: &'static str, target: String, body: Json) -> common::Response {
    tokio::task::spawn_blocking(move || http(addr, method, &target, Some(TOKEN), Some(body.to_string().as_bytes())))
        .await
        .unwrap()
}

/// The cursor's (transaction, seq) pair, to check the order.
fn position(cursor: &str) -> (u64, i64) {
    let (x, s) = cursor.split_once('.').unwrap();
    (x.parse().unwrap(), s.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_delivers_every_change_exactly_once_across_relays_and_late_commits() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let secret = AppSecret::from_bytes(b"back office feed").unwrap();
    let relays = [
        Relay::start(with_http(RelayConfig::new(&url, any(), secret.clone()))).await.unwrap(),
        Relay::start(with_http(RelayConfig::new(&url, any(), secret.clone()))).await.unwrap(),
    ];
    let http_of: Vec<SocketAddr> = relays.iter().map(|r| r.http_addr().unwrap()).collect();

    // Writers: four devices' changes applied straight to the database in small batches, from four connections at
    // once (transactions interleave and commit out of the order their rows were numbered in), and the back office
    // of each relay writing as the cloud.
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let url = url.clone();
        writers.push(std::thread::spawn(move || {
            let device = Store::open(":memory:").unwrap();
            for i in 0..25 {
                device.upsert("items", json!({"_id": format!("w{w}-{}", i % 10), "n": i})).unwrap();
            }
            let changes = device.replica().changes_since(&Summary::new()).unwrap();
            let replica = PgReplica::connect(&url, 1).unwrap();
            let mut rest = changes.as_slice();
            let mut step = w as usize;
            while !rest.is_empty() {
                step = (step * 7 + 3) % 5;
                let (batch, after) = rest.split_at((step + 1).min(rest.len()));
                let report = replica.apply_changes(batch).unwrap();
                assert_eq!(report.applied, batch.len());
                std::thread::sleep(Duration::from_millis(step as u64));
                rest = after;
            }
        }));
    }
    // (Both through the second relay: the first one stops while the consumer reads.)
    for r in 0..2 {
        let addr = http_of[1];
        writers.push(std::thread::spawn(move || {
            for i in 0..10 {
                let body = json!({"from": "back office", "i": i}).to_string();
                let target = format!("/v1/collections/office/documents/w{r}-{i}");
                let response = http(addr, "PUT", &target, Some(TOKEN), Some(body.as_bytes()));
                assert_eq!(response.status, 200, "{}", response.text());
            }
        }));
    }
    let finishing = {
        let done = done.clone();
        std::thread::spawn(move || {
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Release);
        })
    };

    // The consumer: small pages, a new connection each time; on the first relay until that relay stops, then on
    // the second with the cursor it kept.
    let mut relays = Vec::from(relays);
    let mut seen: Vec<(String, i64)> = Vec::new();
    let mut cursor = String::new();
    let mut on = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the feed did not deliver everything in time ({} events)", seen.len());
        let finished = done.load(Ordering::Acquire);
        let target = format!("/v1/feed?after={}&limit=7&wait=1&documents=false", encode(&cursor));
        let response = get(http_of[on], target, Some(TOKEN)).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let body = response.json();
        let events = body["events"].as_array().unwrap().clone();
        for e in &events {
            let c = e["cursor"].as_str().unwrap();
            if !cursor.is_empty() {
                assert!(position(c) > position(&cursor), "the feed went back: {c} after {cursor}");
            }
            cursor = c.to_string();
            seen.push((e["author"].as_str().unwrap().to_string(), e["start"].as_i64().unwrap()));
        }
        assert_eq!(body["cursor"].as_str().unwrap(), cursor, "the response's cursor is its last event's");
        if on == 0 && seen.len() >= 40 {
            // The relay the consumer used goes away; it carries on with another.
            let first = relays.remove(0);
            first.shutdown().await;
            on = 1;
        }
        if finished && events.is_empty() {
            break;
        }
    }
    finishing.join().unwrap();
    assert_eq!(on, 1, "the consumer moved to the second relay");

    let url2 = url.clone();
    let held: BTreeSet<(String, i64)> = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url2, postgres::NoTls).unwrap();
        client
            .query("SELECT author, start_ctr FROM changes", &[])
            .unwrap()
            .iter()
            .map(|r| (shoaldb::PeerId(r.get::<_, i64>(0) as u64).to_string(), r.get(1)))
            .collect()
    })
    .await
    .unwrap();
    let distinct: BTreeSet<(String, i64)> = seen.iter().cloned().collect();
    assert_eq!(distinct.len(), seen.len(), "a change was delivered twice");
    assert_eq!(distinct, held, "the feed's changes are not the database's");
    assert_eq!(held.len(), 4 * 25 + 2 * 10);

    // `now` starts after everything there is; a poll waits for news and returns it.
    let response = get(http_of[1], "/v1/feed?after=now".into(), Some(TOKEN)).await;
    let now = response.json()["cursor"].as_str().unwrap().to_string();
    let waiting = get(http_of[1], format!("/v1/feed?after={}&wait=20", encode(&now)), Some(TOKEN));
    let writing = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        send(http_of[1], "PUT", "/v1/collections/office/documents/late".into(), json!({"late": true})).await
    };
    let (waited, written) = tokio::join!(waiting, writing);
    assert_eq!(written.status, 200);
    let events = waited.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["id"], "late");
    assert_eq!(events[0]["document"], json!({"_id": "late", "late": true}));
    for r in relays {
        r.shutdown().await;
    }
}

/// A transaction that began first and commits last: the feed holds back what committed after it began until it
/// ends, then delivers its change before the later ones — none skipped (reading by insertion order alone would
/// skip it), and the lag shows meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let secret = AppSecret::from_bytes(b"back office late commit").unwrap();
    let relay = Relay::start(with_http(RelayConfig::new(&url, any(), secret))).await.unwrap();
    let api = relay.http_addr().unwrap();
    assert_eq!(send(api, "PUT", "/v1/collections/c/documents/a".into(), json!({"v": 1})).await.status, 200);
    // (Waiting: a transaction of PostgreSQL's own, autovacuum's analyze, may hold the feed back for a moment.)
    let first = get(api, "/v1/feed?documents=false&wait=10".into(), Some(TOKEN)).await.json();
    assert_eq!(first["events"].as_array().unwrap().len(), 1);
    let cursor = first["cursor"].as_str().unwrap().to_string();

    // A transaction begins and writes a change row (as a relay's batch would), and stays open.
    let (open_tx, open_rx) = std::sync::mpsc::channel::<()>();
    let (began_tx, began_rx) = std::sync::mpsc::channel::<()>();
    let url2 = url.clone();
    let late = std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url2, postgres::NoTls).unwrap();
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "INSERT INTO changes (author, start_ctr, end_ctr, doc, hash, body) \
             SELECT 777, 1, 1, num, '\\x00', '\\x00' FROM docs WHERE doc_id = 'a'",
            &[],
        )
        .unwrap();
        began_tx.send(()).unwrap();
        open_rx.recv().unwrap();
        tx.commit().unwrap();
    });
    began_rx.recv().unwrap();
    // A later transaction commits first.
    assert_eq!(send(api, "PUT", "/v1/collections/c/documents/b".into(), json!({"v": 2})).await.status, 200);
    let held = get(api, format!("/v1/feed?after={}&documents=false", encode(&cursor)), Some(TOKEN)).await.json();
    assert_eq!(held["events"], json!([]), "delivered past a transaction still running");
    assert_eq!(held["cursor"], cursor.as_str());
    let metrics = get(api, "/metrics".into(), Some(TOKEN)).await.text();
    let lag: f64 = metrics.lines().find_map(|l| l.strip_prefix("shoal_feed_lag_seconds ")).unwrap().parse().unwrap();
    assert!(lag > 0.0, "{metrics}");

    open_tx.send(()).unwrap();
    late.join().unwrap();
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut at = cursor;
    for _ in 0..10 {
        let after =
            get(api, format!("/v1/feed?after={}&documents=false&wait=5", encode(&at)), Some(TOKEN)).await.json();
        for e in after["events"].as_array().unwrap() {
            ids.push((e["id"].as_str().unwrap().to_string(), e["author"].as_str().unwrap().to_string()));
        }
        at = after["cursor"].as_str().unwrap().to_string();
        if ids.len() >= 2 {
            break;
        }
    }
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], ("a".to_string(), shoaldb::PeerId(777).to_string()), "the late transaction's change first");
    assert_eq!(ids[1].0, "b");
    relay.shutdown().await;
}

/// The back office reads from a hot standby streaming from the relays' database; writes go to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_are_served_from_a_streaming_replica() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let database = url.rsplit('/').next().unwrap().to_string();
    let standby = tokio::task::spawn_blocking(move || common::Standby::start(&database)).await.unwrap();
    let secret = AppSecret::from_bytes(b"back office standby").unwrap();
    let mut config = with_http(RelayConfig::new(&url, any(), secret));
    config.http.as_mut().unwrap().read_replica = Some(standby.url.clone());
    let relay = Relay::start(config).await.unwrap();
    // The standby has the schema the relay migrated (it replays it a moment after the primary commits it).
    let (primary, replica) = (url.clone(), standby.url.clone());
    tokio::task::spawn_blocking(move || common::wait_for_replay(&primary, &replica)).await.unwrap();
    let api = relay.http_addr().unwrap();
    assert_eq!(send(api, "PUT", "/v1/collections/c/documents/x".into(), json!({"v": 1})).await.status, 200);
    // The standby replays the write, and the reads find it there.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = get(api, "/v1/collections/c/documents/x".into(), Some(TOKEN)).await;
        if found.status == 200 {
            assert_eq!(found.json(), json!({"_id": "x", "v": 1}));
            break;
        }
        assert_eq!(found.status, 404, "{}", found.text());
        assert!(Instant::now() < deadline, "the standby never had the write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let feed = get(api, "/v1/feed?wait=10".into(), Some(TOKEN)).await.json();
    assert_eq!(feed["events"][0]["id"], "x", "{feed}");
    let metrics = get(api, "/metrics".into(), Some(TOKEN)).await.text();
    assert!(metrics.lines().any(|l| l.starts_with("shoal_read_replica_lag_seconds ")), "{metrics}");
    // Without the standby the reads fail (they were its), while the primary takes writes.
    tokio::task::spawn_blocking(move || drop(standby)).await.unwrap();
    assert_eq!(get(api, "/v1/collections/c/documents/x".into(), Some(TOKEN)).await.status, 503);
    assert_eq!(send(api, "PUT", "/v1/collections/c/documents/y".into(), json!({"v": 2})).await.status, 200);
    relay.shutdown().await;
}

/// `n` events of the feed's event stream (after `last_id`, as `Last-Event-ID`), each as (event id, document id).
fn stream_events(addr: SocketAddr, last_id: Option<&str>, n: usize) -> Vec<(String, String)> {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut request =
        format!("GET /v1/feed/stream?documents=false HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n");
    if let Some(id) = last_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut lines = std::io::BufReader::new(stream).lines();
    let status = lines.next().unwrap().unwrap();
    assert!(status.contains(" 200 "), "{status}");
    let (mut events, mut id, mut doc) = (Vec::new(), None, None);
    // (The body is chunked: chunk sizes come on lines of their own; each event is written whole.)
    for line in lines {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            let event: Json = serde_json::from_str(v).unwrap();
            doc = Some(event["id"].as_str().unwrap().to_string());
        } else if line.is_empty() {
            if let (Some(i), Some(d)) = (id.take(), doc.take()) {
                events.push((i, d));
                if events.len() == n {
                    break;
                }
            }
        }
    }
    events
}

/// The feed as server-sent events: in order, and resumed after the last event seen with `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_stream_resumes_after_the_last_event_id() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let secret = AppSecret::from_bytes(b"back office stream").unwrap();
    let relay = Relay::start(with_http(RelayConfig::new(&url, any(), secret))).await.unwrap();
    let api = relay.http_addr().unwrap();
    for id in ["a", "b", "c"] {
        assert_eq!(send(api, "PUT", format!("/v1/collections/c/documents/{id}"), json!({"v": id})).await.status, 200);
    }
    let first = tokio::task::spawn_blocking(move || stream_events(api, None, 3)).await.unwrap();
    let docs: Vec<&str> = first.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(docs, ["a", "b", "c"]);
    // Later writes, while no one reads; the reader comes back with the last id it saw.
    let last = first[2].0.clone();
    let reader = tokio::task::spawn_blocking(move || stream_events(api, Some(&last), 2));
    for id in ["d", "e"] {
        assert_eq!(send(api, "PUT", format!("/v1/collections/c/documents/{id}"), json!({"v": id})).await.status, 200);
    }
    let second = reader.await.unwrap();
    let docs: Vec<&str> = second.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(docs, ["d", "e"], "resumed exactly after c");
    relay.shutdown().await;
}

/// A relay in certificate mode with its back office; its keys and certificate with `grants`.
async fn certified_relay(url: &str, dir: &tempfile::TempDir, authority: &SigningKey, grants: &[&str]) -> Relay {
    let keys = Store::open(dir.path().join("relay-keys.db")).unwrap();
    let enrolment = common::enrol(&keys, authority, 1, grants);
    let identity: Identity = shoaldb::node::device_identity(&keys).unwrap();
    let mut config = with_http(RelayConfig::new(url, any(), enrolment));
    config.identity = Some(identity);
    Relay::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_are_read_queried_and_written_as_the_cloud() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let relay = certified_relay(&url, &dir, &authority, &["read *", "write *"]).await;
    let api = relay.http_addr().unwrap();
    let phone = Store::open(dir.path().join("phone.db")).unwrap();
    let e = common::enrol(&phone, &authority, 2, &["read *", "write *"]);
    let node = Node::start(
        phone.clone(),
        NodeConfig::new("phone", e).with_mdns(false).connect_to(relay.listen_addr().unwrap()),
    )
    .await
    .unwrap();
    for i in 0..40 {
        let mut doc = json!({
            "_id": format!("t{i:02}"),
            "n": i,
            "team": if i % 2 == 0 { "north" } else { "south" },
            "tags": if i % 3 == 0 { json!(["x", "y"]) } else { json!(["y"]) },
            "nested": {"level": i % 4},
        });
        if i % 5 == 0 {
            doc["done"] = json!(true);
        }
        phone.upsert("tasks", doc).unwrap();
    }
    let url2 = url.clone();
    common::eventually("the phone's tasks reach the database", move || {
        tokio::task::block_in_place(|| common::docs_in(&url2, "tasks")) == Some(40)
    })
    .await;

    // A document, as the phone has it.
    let response = get(api, "/v1/collections/tasks/documents/t07".into(), Some(TOKEN)).await;
    assert_eq!(response.status, 200);
    assert_eq!(Some(response.json()), phone.get("tasks", "t07").unwrap());
    assert_eq!(get(api, "/v1/collections/tasks/documents/none".into(), Some(TOKEN)).await.status, 404);

    // Queries: the pages together are exactly what the phone's own evaluator finds.
    let filters: &[(&str, Json)] = &[
        ("team == 'north'", json!({})),
        ("team == 'north' && n > 10", json!({})),
        ("done", json!({})),
        ("tags contains 'x' && nested.level == 1", json!({})),
        ("n in [1, 2, 3, 39]", json!({})),
        ("done == null", json!({})),
        ("team == $t && !(n < 30)", json!({"t": "south"})),
    ];
    for (filter, params) in filters {
        let mut found = Vec::new();
        let mut after = String::new();
        loop {
            let target = format!(
                "/v1/collections/tasks/documents?filter={}&params={}&limit=4&after={}",
                encode(filter),
                encode(&params.to_string()),
                encode(&after)
            );
            let response = get(api, target, Some(TOKEN)).await;
            assert_eq!(response.status, 200, "{filter}: {}", response.text());
            let page = response.json();
            found.extend(page["documents"].as_array().unwrap().iter().cloned());
            match page["next"].as_str() {
                Some(next) => after = next.to_string(),
                None => break,
            }
        }
        let mut query = Query::filter(filter).unwrap();
        for (k, v) in params.as_object().unwrap() {
            query = query.param(k, v.clone());
        }
        let mut expected = phone.find("tasks", &query).unwrap();
        expected.sort_by(|a, b| a["_id"].as_str().cmp(&b["_id"].as_str()));
        assert!(!expected.is_empty(), "{filter} matches nothing");
        assert_eq!(found, expected, "{filter}");
    }

    // Writes as the cloud: signed, checked by the phone (certificate mode), merged like any change.
    let written =
        send(api, "PUT", "/v1/collections/tasks/documents/from%20office".into(), json!({"title": "hi"})).await;
    assert_eq!(written.status, 200, "{}", written.text());
    assert_eq!(written.json()["document"], json!({"_id": "from office", "title": "hi"}));
    let patched = send(api, "PATCH", "/v1/collections/tasks/documents/t03".into(), json!({"done": true})).await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.json()["document"]["done"], json!(true));
    assert_eq!(patched.json()["document"]["n"], json!(3), "an update keeps the other fields");
    let removed = send(api, "DELETE", "/v1/collections/tasks/documents/t04".into(), json!({})).await;
    assert_eq!(removed.status, 200, "{}", removed.text());
    common::eventually("the phone takes in the cloud's writes", || {
        phone.get("tasks", "from office").unwrap().is_some_and(|d| d["title"] == "hi")
            && phone.get("tasks", "t03").unwrap().is_some_and(|d| d["done"] == true)
            && phone.get("tasks", "t04").unwrap().is_none()
    })
    .await;
    assert_eq!(phone.equivocations().unwrap().len(), 0);

    // What is not found, not valid or too large changes nothing.
    let missing = send(api, "PATCH", "/v1/collections/tasks/documents/nobody".into(), json!({"x": 1})).await;
    assert_eq!(missing.status, 404);
    let not_object = send(api, "PUT", "/v1/collections/tasks/documents/x".into(), json!([1, 2])).await;
    assert_eq!(not_object.status, 400);
    let other_id = send(api, "PUT", "/v1/collections/tasks/documents/x".into(), json!({"_id": "y"})).await;
    assert_eq!(other_id.status, 400);
    let huge = json!({"blob": "x".repeat(1024 * 1024 + 100_000)});
    assert_eq!(send(api, "PUT", "/v1/collections/tasks/documents/x".into(), huge).await.status, 413);
    assert_eq!(get(api, "/v1/collections/tasks/documents/x".into(), Some(TOKEN)).await.status, 404);
    let bad_filter = get(api, format!("/v1/collections/tasks/documents?filter={}", encode("n >")), Some(TOKEN)).await;
    assert_eq!(bad_filter.status, 400);
    assert_eq!(bad_filter.json()["error"], "bad_request");
    assert_eq!(get(api, "/v1/collections/tasks/documents?limit=0".into(), Some(TOKEN)).await.status, 400);
    assert_eq!(get(api, "/v1/feed?after=nonsense".into(), Some(TOKEN)).await.status, 400);
    assert_eq!(get(api, "/v1/feed?wait=31".into(), Some(TOKEN)).await.status, 400);

    // Tokens: none or a wrong one is refused; health and the description are open.
    assert_eq!(get(api, "/v1/collections/tasks/documents/t07".into(), None).await.status, 401);
    assert_eq!(get(api, "/v1/collections/tasks/documents/t07".into(), Some("wrong-token-wrong")).await.status, 401);
    assert_eq!(get(api, "/metrics".into(), None).await.status, 401);
    let health = get(api, "/health".into(), None).await;
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(health.json()["links"], 1);
    let metrics = get(api, "/metrics".into(), Some(TOKEN)).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for line in ["shoal_links 1", "shoal_devices 1", "shoal_follower_connected 1"] {
        assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
    }
    let position: f64 =
        text.lines().find_map(|l| l.strip_prefix("shoal_change_log_position ")).and_then(|v| v.parse().ok()).unwrap();
    assert!(position >= 43.0, "{text}");
    // The description names every route, and every route it names is served.
    let described = get(api, "/openapi.json".into(), None).await.json();
    let paths: BTreeSet<&str> = described["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    let served: BTreeSet<&str> = [
        "/health",
        "/metrics",
        "/openapi.json",
        "/v1/collections/{collection}/documents",
        "/v1/collections/{collection}/documents/{id}",
        "/v1/feed",
        "/v1/feed/stream",
    ]
    .into();
    assert_eq!(paths, served);
    for path in served.iter().filter(|p| !p.ends_with("/stream")) {
        let concrete = path.replace("{collection}", "tasks").replace("{id}", "t07");
        assert_ne!(get(api, concrete, Some(TOKEN)).await.status, 404, "{path} is not served");
    }
    node.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_the_relays_certificate_does_not_permit_is_refused_and_stores_nothing() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let relay = certified_relay(&url, &dir, &authority, &["read *", "write tasks"]).await;
    let api = relay.http_addr().unwrap();
    let refused = send(api, "PUT", "/v1/collections/payroll/documents/p1".into(), json!({"salary": 1})).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"], "refused");
    let allowed = send(api, "PUT", "/v1/collections/tasks/documents/t1".into(), json!({"title": "ok"})).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    // The refused write left no change behind, and did not use up a counter: the next write follows on.
    let url2 = url.clone();
    let rows: Vec<(String, i64)> = tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&url2, postgres::NoTls).unwrap();
        client
            .query("SELECT d.collection, c.start_ctr FROM changes c JOIN docs d ON d.num = c.doc", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    })
    .await
    .unwrap();
    assert_eq!(rows, vec![("tasks".to_string(), 1)]);
    relay.shutdown().await;
}

/// A document's state merged from a phone that folded its changes (issue 17) is in the feed between the changes,
/// once: an event per author whose changes it brought, with exactly their counter ranges and the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_delivers_a_merged_state_between_the_changes() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let secret = AppSecret::from_bytes(b"back office merged states").unwrap();
    let relay = Relay::start(with_http(RelayConfig::new(&url, any(), secret))).await.unwrap();
    let api = relay.http_addr().unwrap();
    assert_eq!(send(api, "PUT", "/v1/collections/c/documents/a".into(), json!({"v": 1})).await.status, 200);
    let phone = Store::open(":memory:").unwrap();
    phone.upsert("c", json!({"_id": "s", "v": 1})).unwrap();
    phone.upsert("c", json!({"_id": "s", "v": 2})).unwrap();
    phone.upsert("c", json!({"_id": "elsewhere", "v": 3})).unwrap();
    phone.upsert("c", json!({"_id": "s", "w": 4})).unwrap();
    phone.compact(&shoaldb::CompactionPolicy::everything()).unwrap();
    let states: Vec<shoaldb::DocState> = phone
        .replica()
        .states_missing(&Summary::new(), &Summary::new(), 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.doc_id == "s")
        .collect();
    let ranges: Vec<(u64, u64)> = states[0].changes.ranges_of(phone.peer_id()).unwrap().ranges().to_vec();
    assert_eq!(ranges.len(), 2, "the other document's change between them: {ranges:?}");
    let cloud = relay.replica().clone();
    let report = tokio::task::spawn_blocking(move || cloud.apply_states(&states)).await.unwrap().unwrap();
    assert_eq!(report.applied, 1, "{report:?}");
    assert_eq!(send(api, "PUT", "/v1/collections/c/documents/b".into(), json!({"v": 5})).await.status, 200);
    // One event at a time, from the start.
    let (mut events, mut at) = (Vec::new(), String::new());
    for _ in 0..20 {
        let target = format!("/v1/feed?after={}&limit=1&wait=5", encode(&at));
        let page = get(api, target, Some(TOKEN)).await.json();
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        at = page["cursor"].as_str().unwrap().to_string();
        if events.len() >= 3 {
            break;
        }
    }
    let ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "s", "b"], "{events:?}");
    let merged = &events[1];
    let phone_id = phone.peer_id().to_string();
    assert_eq!(merged["author"], phone_id.as_str());
    assert_eq!(merged["merged"], json!(ranges), "{merged}");
    assert_eq!((merged["start"].clone(), merged["end"].clone()), (json!(ranges[0].0), json!(ranges[1].1)));
    assert_eq!(merged["document"], json!({"_id": "s", "v": 2, "w": 4}));
    assert!(events[0].get("merged").is_none() && events[2].get("merged").is_none());
    let last = get(api, format!("/v1/feed?after={}", encode(&at)), Some(TOKEN)).await.json();
    assert_eq!(last["events"], json!([]), "each once");
    relay.shutdown().await;
}

/// Changes the cloud folded out of its log (issue 17) are not delivered again, and a cursor from before them is
/// refused (`410`, the reader would miss changes): it reads the documents and goes on from `now`.
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_cursor_from_before_what_the_cloud_folded_is_refused() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let secret = AppSecret::from_bytes(b"back office compaction").unwrap();
    let mut config = with_http(RelayConfig::new(&url, any(), secret));
    config.compaction = None;
    let relay = Relay::start(config).await.unwrap();
    let api = relay.http_addr().unwrap();
    for (id, v) in [("a", 1), ("b", 2)] {
        assert_eq!(send(api, "PUT", format!("/v1/collections/c/documents/{id}"), json!({"v": v})).await.status, 200);
    }
    let first = get(api, "/v1/feed?limit=1&wait=5".into(), Some(TOKEN)).await.json();
    let after_a = first["cursor"].as_str().unwrap().to_string();
    let second = get(api, format!("/v1/feed?after={}&wait=5", encode(&after_a)), Some(TOKEN)).await.json();
    assert_eq!(second["events"].as_array().unwrap().len(), 1, "{second}");
    let after_b = second["cursor"].as_str().unwrap().to_string();
    // Every change is old enough, and no device holds any back: all are folded.
    let cloud = relay.replica().clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        db.execute("UPDATE changes SET received = received - interval '2 hours'", &[]).unwrap();
        let policy = shoaldb::CompactionPolicy { horizon_ms: 3_600_000, fold_acknowledged: true };
        cloud.compact(&policy, 3_600_000)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(report.changes, 2, "{report:?}");
    for after in ["", after_a.as_str()] {
        let r = get(api, format!("/v1/feed?after={}", encode(after)), Some(TOKEN)).await;
        assert_eq!(r.status, 410, "after {after:?}: {}", r.json());
        assert_eq!(r.json()["error"], "compacted");
    }
    // A reader that had read them all goes on, and is not sent them again (nor is one starting now).
    let caught_up = get(api, format!("/v1/feed?after={}", encode(&after_b)), Some(TOKEN)).await;
    assert_eq!((caught_up.status, caught_up.json()["events"].clone()), (200, json!([])), "{}", caught_up.json());
    let now = get(api, "/v1/feed?after=now".into(), Some(TOKEN)).await.json();
    assert_eq!(now["events"], json!([]));
    assert_eq!(send(api, "PUT", "/v1/collections/c/documents/c".into(), json!({"v": 3})).await.status, 200);
    let target = format!("/v1/feed?after={}&wait=5", encode(now["cursor"].as_str().unwrap()));
    let next = get(api, target, Some(TOKEN)).await.json();
    let ids: Vec<&str> = next["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["c"], "{next}");
    relay.shutdown().await;
}
