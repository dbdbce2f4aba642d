//! The `shoal-cloud` command: its usage errors, and a relay in certificate mode whose keys and certificate are in a
//! store enrolled like any device's.

mod common;

use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::SigningKey;
use shoaldb::Store;
use std::process::Command;

fn shoal_cloud() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal-cloud"))
}

#[test]
fn bad_usage_exits_64_and_an_unenrolled_keys_store_exits_1() {
    let out = shoal_cloud().output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--postgres is required"));
    let out = shoal_cloud().args(["--listen", "not an address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "s\n").unwrap();
    let out = shoal_cloud()
        .args(["--postgres", "x", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--secret-file"])
        .arg(dir.path().join("secret"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http needs --http-token-file"), "{out:?}");
    let short = dir.path().join("short-token");
    std::fs::write(&short, "abc\n").unwrap();
    let out = shoal_cloud().args(["--http-token-file"]).arg(&short).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"), "{out:?}");
    let out = shoal_cloud().args(["--no-compaction", "--horizon-days", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--horizon-days is for compaction"), "{out:?}");
    let out = shoal_cloud().args(["--feed-retention-days", "-1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64));

    let Some(url) = common::fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("relay.db");
    Store::open(&keys).unwrap();
    let out =
        shoal_cloud().args(["--postgres", &url, "--listen", "127.0.0.1:0", "--keys"]).arg(&keys).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no certificate"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_in_certificate_mode_serves_enrolled_phones() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let keys = dir.path().join("relay.db");
    common::enrol(&Store::open(&keys).unwrap(), &authority, 1, &["read *", "write *"]);
    let exe = env!("CARGO_BIN_EXE_shoal-cloud");
    let (mut relay, addr) = common::spawn_relay(exe, &url, &[std::ffi::OsStr::new("--keys"), keys.as_os_str()]);

    let phone = Store::open(dir.path().join("phone.db")).unwrap();
    let e = common::enrol(&phone, &authority, 2, &["read *", "write *"]);
    phone.upsert("tasks", serde_json::json!({"_id": "signed", "title": "through a certified relay"})).unwrap();
    let node = Node::start(phone.clone(), NodeConfig::new("phone", e).with_mdns(false).connect_to(addr)).await.unwrap();
    let url2 = url.clone();
    common::eventually("the phone's task reaches the database", move || {
        tokio::task::block_in_place(|| common::docs_in(&url2, "tasks")) == Some(1)
    })
    .await;
    node.shutdown().await;
    // SIGTERM: the relay closes its links and exits cleanly.
    assert!(relay.terminate(), "the relay did not exit cleanly on SIGTERM");
}

#[test]
fn a_relay_serves_its_back_office_where_asked() {
    use std::io::BufRead;
    let Some(url) = common::fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "cli back office\n").unwrap();
    std::fs::write(dir.path().join("token"), "a-token-of-the-back-office\n").unwrap();
    let mut child = shoal_cloud()
        .args(["--postgres", &url, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--secret-file")
        .arg(dir.path().join("secret"))
        .arg("--http-token-file")
        .arg(dir.path().join("token"))
        .env("SHOAL_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut relay = common::RelayProcess(child);
    assert!(lines.next().unwrap().unwrap().starts_with("listening on "));
    let http = lines.next().unwrap().unwrap();
    let addr = http.strip_prefix("back office on http://").unwrap_or_else(|| panic!("{http:?}")).parse().unwrap();
    let health = common::http(addr, "GET", "/health", None, None);
    assert_eq!(health.status, 200, "{}", health.text());
    let written = common::http(
        addr,
        "PUT",
        "/v1/collections/notes/documents/n1",
        Some("a-token-of-the-back-office"),
        Some(br#"{"text": "from the back office"}"#),
    );
    assert_eq!(written.status, 200, "{}", written.text());
    assert_eq!(common::docs_in(&url, "notes"), Some(1));
    assert!(relay.terminate(), "the relay did not exit cleanly on SIGTERM");
}
