//! The `shoal` binary as scripts use it: one-shot commands and their exit codes, the demo, and two `shoal peer`
//! processes syncing over loopback while other `shoal` commands write to their stores.

use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

fn shoal(db: &Path, args: &[&str]) -> Output {
    Command::new(SHOAL).arg("--db").arg(db).args(args).env("SHOAL_LOG", "warn").output().expect("run shoal")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "shoal failed: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

fn json_line(s: &str) -> Json {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

#[test]
fn put_get_query_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("s.db");
    let id = ok(shoal(&db, &["put", "tasks", r#"{"title": "milk", "done": false}"#])).trim().to_string();
    assert_eq!(id.len(), 26, "generated id {id:?}");
    assert_eq!(ok(shoal(&db, &["put", "tasks", r#"{"_id": "t2", "title": "eggs", "done": true}"#])).trim(), "t2");
    // An upsert sets the fields given and keeps the others.
    ok(shoal(&db, &["put", "tasks", r#"{"_id": "t2", "qty": 12}"#]));
    assert_eq!(
        json_line(&ok(shoal(&db, &["get", "tasks", "t2"]))),
        json!({"_id": "t2", "title": "eggs", "done": true, "qty": 12})
    );

    let all: Vec<Json> = ok(shoal(&db, &["query", "tasks"])).lines().map(json_line).collect();
    assert_eq!(all.len(), 2);
    let open: Vec<Json> = ok(shoal(&db, &["query", "tasks", "done == false"])).lines().map(json_line).collect();
    assert_eq!(open, vec![json!({"_id": id, "title": "milk", "done": false})]);
    assert_eq!(ok(shoal(&db, &["query", "nothing-here"])), "");

    ok(shoal(&db, &["remove", "tasks", "t2"]));
    let absent = shoal(&db, &["get", "tasks", "t2"]);
    assert_eq!(absent.status.code(), Some(1));
    assert_eq!(stdout(&absent), "");
    assert_eq!(shoal(&db, &["remove", "tasks", "t2"]).status.code(), Some(1));
}

#[test]
fn indexes_sorted_queries_and_explain() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("s.db");
    for (id, kind, price) in [("a", "x", 3), ("b", "y", 9), ("c", "x", 7), ("d", "x", 1)] {
        ok(shoal(&db, &["put", "items", &json!({"_id": id, "kind": kind, "price": price}).to_string()]));
    }
    let top = ["items", "kind == 'x'", "--sort", "price:desc", "--limit", "2"];
    let before: Vec<Json> = ok(shoal(&db, &[&["query"][..], &top[..]].concat())).lines().map(json_line).collect();
    assert_eq!(before.iter().map(|d| d["_id"].clone()).collect::<Vec<_>>(), vec![json!("c"), json!("a")]);
    let plan = json_line(&ok(shoal(&db, &[&["explain"][..], &top[..]].concat())));
    assert_eq!(plan["indexes"], json!([]));

    assert_eq!(ok(shoal(&db, &["index", "items", "kind", "price"])).trim(), "true");
    assert_eq!(ok(shoal(&db, &["index", "items", "kind", "price"])).trim(), "false");
    let listed = json_line(&ok(shoal(&db, &["indexes"])));
    assert_eq!((listed["collection"].clone(), listed["paths"].clone()), (json!("items"), json!(["kind", "price"])));
    let plan = json_line(&ok(shoal(&db, &[&["explain"][..], &top[..]].concat())));
    assert_eq!(plan["indexes"], json!([listed["name"]]), "{plan}");
    let after: Vec<Json> = ok(shoal(&db, &[&["query"][..], &top[..]].concat())).lines().map(json_line).collect();
    assert_eq!(after, before);

    ok(shoal(&db, &["drop-index", "items", "kind", "price"]));
    assert_eq!(shoal(&db, &["drop-index", "items", "kind", "price"]).status.code(), Some(1));
    assert_eq!(ok(shoal(&db, &["indexes"])), "");
    for bad in [&["index", "items"][..], &["query", "items", "--limit"][..], &["query", "items", "a == 1", "b"][..]] {
        assert_eq!(shoal(&db, bad).status.code(), Some(64), "{bad:?}");
    }
}

#[test]
fn errors_exit_non_zero_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("s.db");
    for (args, code) in [
        (&["put", "tasks", "not json"][..], 1),
        (&["put", "tasks", "[1, 2]"][..], 1),
        (&["query", "tasks", "done =="][..], 1),
        (&["get", "tasks"][..], 64),
        (&["frobnicate"][..], 64),
        (&["peer"][..], 64),
    ] {
        let o = shoal(&db, args);
        assert_eq!(o.status.code(), Some(code), "{args:?}");
        assert!(!o.stderr.is_empty(), "{args:?} printed no error");
        assert_eq!(stdout(&o), "", "{args:?}");
    }
    let no_db = Command::new(SHOAL).args(["get", "tasks", "x"]).output().expect("run");
    assert_eq!(no_db.status.code(), Some(64));
}

#[test]
fn attach_and_fetch_attachment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("s.db");
    let file = dir.path().join("photo.bin");
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &bytes).expect("write");

    // Creates the document when needed.
    let token = json_line(&ok(shoal(&db, &["attach", "albums", "a1", "cover", file.to_str().expect("path")])));
    assert_eq!(token["len"], 700_000);
    let doc = json_line(&ok(shoal(&db, &["get", "albums", "a1"])));
    assert_eq!(doc["cover"]["_attachment"], token["_attachment"]);
    assert_eq!(doc["cover"]["meta"]["name"], "photo.bin");

    let out = dir.path().join("out.bin");
    ok(shoal(&db, &["fetch-attachment", "albums", "a1", "cover", out.to_str().expect("path")]));
    assert_eq!(std::fs::read(&out).expect("read"), bytes);

    // Another document, existing already; the field is set, the others kept.
    ok(shoal(&db, &["put", "albums", r#"{"_id": "a2", "title": "holidays"}"#]));
    ok(shoal(&db, &["attach", "albums", "a2", "cover", file.to_str().expect("path")]));
    let doc = json_line(&ok(shoal(&db, &["get", "albums", "a2"])));
    assert_eq!(doc["title"], "holidays");

    // A token whose bytes this store does not have (as after syncing the document but not the attachment).
    let other = dir.path().join("other.db");
    let mut copy = doc.clone();
    copy["_id"] = json!("a3");
    ok(shoal(&other, &["put", "albums", &copy.to_string()]));
    // No peer runs on that store to fetch it: after the wait, exit 2.
    let missing = Command::new(SHOAL)
        .arg("--db")
        .arg(&other)
        .args(["fetch-attachment", "albums", "a3", "cover", out.to_str().expect("path")])
        .env("SHOAL_FETCH_WAIT", "1")
        .output()
        .expect("run shoal");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("attachment not available locally"));

    let no_field = shoal(&db, &["fetch-attachment", "albums", "a2", "title", out.to_str().expect("path")]);
    assert_eq!(no_field.status.code(), Some(1));
    let no_doc = shoal(&db, &["fetch-attachment", "albums", "zz", "cover", out.to_str().expect("path")]);
    assert_eq!(no_doc.status.code(), Some(1));
}

#[test]
fn the_demo_converges() {
    let o = Command::new(SHOAL).arg("demo").output().expect("run demo");
    let text = ok(o);
    assert!(text.contains("converged: all 3 devices hold the same 5 documents"), "{text}");
    assert!(text.lines().count() <= 40, "the demo printed {} lines", text.lines().count());
}

/// A running `shoal peer`, killed if the test fails.
struct Peer {
    child: Child,
    line: String,
    /// Kept open so that the peer never writes to a closed pipe.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn start(db: &Path, secret: &Path, extra: &[&str]) -> Peer {
        let secret = secret.to_str().expect("path");
        Peer::spawn(db, &[&["--secret-file", secret], extra].concat(), Stdio::null())
    }

    /// `shoal --db DB peer --no-mdns ARGS…`, its log going to `stderr` (at the level `PEER_LOG` names, `info` by
    /// default: `PEER_LOG=debug` when chasing a failure).
    fn spawn(db: &Path, args: &[&str], stderr: Stdio) -> Peer {
        let mut child = Command::new(SHOAL)
            .arg("--db")
            .arg(db)
            .args(["peer", "--no-mdns"])
            .args(args)
            .env("SHOAL_LOG", std::env::var("PEER_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start peer");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        out.read_line(&mut line).expect("read the first line");
        Peer { child, line, _stdout: out }
    }

    /// The address from `listening on ADDR as DEVICE`.
    fn addr(&self) -> String {
        let words: Vec<&str> = self.line.split_whitespace().collect();
        assert_eq!(words.get(..2), Some(&["listening", "on"][..]), "{:?}", self.line);
        assert_eq!(words.get(3), Some(&"as"), "{:?}", self.line);
        words[2].to_string()
    }

    /// Send SIGTERM; the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the peer did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
#[test]
fn two_peers_sync_writes_made_by_other_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "team secret\n").expect("write");
    let pa = Peer::start(&a, &secret, &["--name", "a", "--listen", "127.0.0.1:0"]);
    let addr = pa.addr();
    let pb = Peer::start(&b, &secret, &["--name", "b", "--connect", &addr]);
    assert!(pb.line.contains("not listening"), "{:?}", pb.line);

    // A write by another `shoal` process on a's store reaches b's store.
    ok(shoal(&a, &["put", "tasks", r#"{"_id": "x", "title": "from a"}"#]));
    ok(shoal(&b, &["put", "tasks", r#"{"_id": "y", "title": "from b"}"#]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (on_b, on_a) = (shoal(&b, &["get", "tasks", "x"]), shoal(&a, &["get", "tasks", "y"]));
        if on_b.status.success() && on_a.status.success() {
            assert_eq!(json_line(&stdout(&on_b))["title"], "from a");
            assert_eq!(json_line(&stdout(&on_a))["title"], "from b");
            break;
        }
        assert!(Instant::now() < deadline, "the writes did not sync within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An attachment attached on a's store: b's document gets the token by sync, and `fetch-attachment` on b's
    // store has b's running peer fetch the bytes from a.
    let file = dir.path().join("photo.bin");
    let bytes: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&file, &bytes).expect("write");
    ok(shoal(&a, &["attach", "tasks", "x", "photo", file.to_str().expect("path")]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while json_line(&ok(shoal(&b, &["get", "tasks", "x"])))["photo"].is_null() {
        assert!(Instant::now() < deadline, "the attachment token did not sync");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = dir.path().join("fetched.bin");
    ok(shoal(&b, &["fetch-attachment", "tasks", "x", "photo", out.to_str().expect("path")]));
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
    assert!(pb.terminate().success(), "peer b did not exit cleanly");
    assert!(pa.terminate().success(), "peer a did not exit cleanly");
}

/// Waits (up to 20 s) until `check` holds.
fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_or_show(what, &[], check)
}

/// [`eventually`], showing the peers' `logs` when it fails.
fn eventually_or_show(what: &str, logs: &[&Path], mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        if Instant::now() >= deadline {
            for log in logs {
                eprintln!("--- {} ---\n{}", log.display(), std::fs::read_to_string(log).unwrap_or_default());
            }
            panic!("{what} did not happen within 20 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(unix)]
#[test]
fn enrolled_peers_sync_with_certificates_and_a_revoked_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("authority");
    let auth_s = auth.to_str().expect("path");
    let none = Path::new("/nonexistent");
    let authority =
        json_line(&ok(shoal(none, &["authority", "init", auth_s])))["authority"].as_str().unwrap().to_string();
    assert!(!shoal(none, &["authority", "init", auth_s]).status.success(), "init never overwrites a key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(auth.join("authority.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the authority's key is readable by its owner only");
    }
    let enrol = |name: &str, grants: &[&str]| {
        let db = dir.path().join(format!("{name}.db"));
        let request = ok(shoal(&db, &["enrol", "request", name]));
        let shown = json_line(&ok(shoal(none, &["authority", "show", request.trim()])));
        assert_eq!(shown["request"]["name"], name);
        let mut args = vec!["authority", "issue", auth_s, request.trim()];
        for g in grants {
            args.extend(["--grant", g]);
        }
        let cert = ok(shoal(none, &args));
        let shown = json_line(&ok(shoal(none, &["authority", "show", cert.trim()])));
        assert_eq!(shown["certificate"]["name"], name);
        assert_eq!(shown["certificate"]["grants"].as_array().unwrap().len(), grants.len());
        ok(shoal(&db, &["enrol", "install", &authority, cert.trim()]));
        (
            db,
            shown["certificate"]["serial"].as_u64().unwrap(),
            shown["certificate"]["signing_key"].as_str().unwrap().to_string(),
        )
    };
    let (a, serial_a, _) = enrol("a", &["read *", "write *"]);
    let (b, serial_b, _) = enrol("b", &["read *", "write tasks fields title"]);
    let (c, _, c_key) = enrol("c", &["read *", "write *"]);
    assert_eq!((serial_a, serial_b), (1, 2), "serials are never reused");

    // A certificate cannot be installed on another device's store.
    let stranger = dir.path().join("stranger.db");
    ok(shoal(&stranger, &["enrol", "request", "stranger"]));
    let request_b = ok(shoal(&b, &["enrol", "request", "b"]));
    let cert_b = ok(shoal(none, &["authority", "issue", auth_s, request_b.trim(), "--grant", "read *"]));
    assert!(!shoal(&stranger, &["enrol", "install", &authority, cert_b.trim()]).status.success());

    let log_a = dir.path().join("a.log");
    let pa = Peer::spawn(
        &a,
        &["--name", "a", "--listen", "127.0.0.1:0"],
        Stdio::from(std::fs::File::create(&log_a).unwrap()),
    );
    let addr = pa.addr();
    let log_b = dir.path().join("b.log");
    let pb = Peer::spawn(&b, &["--name", "b", "--connect", &addr], Stdio::from(std::fs::File::create(&log_b).unwrap()));
    ok(shoal(&a, &["put", "tasks", r#"{"_id": "x", "title": "from a"}"#]));
    eventually_or_show("a's write reaching b over a certified link", &[&log_a, &log_b], || {
        shoal(&b, &["get", "tasks", "x"]).status.success()
    });

    // c is revoked (by its device key) before it ever connects: a refuses it at the handshake.
    let list = ok(shoal(none, &["authority", "revoke", auth_s, "--device", &c_key]));
    let shown = json_line(&ok(shoal(none, &["authority", "show", list.trim()])));
    assert_eq!(shown["revocations"]["number"], 1);
    drop(pa);
    let news = json_line(&ok(shoal(&a, &["enrol", "revocations", list.trim()])));
    assert_eq!(news["new"], true);
    let pa = Peer::spawn(
        &a,
        &["--name", "a", "--listen", "127.0.0.1:0"],
        Stdio::from(std::fs::File::create(&log_a).unwrap()),
    );
    let addr = pa.addr();
    ok(shoal(&c, &["put", "tasks", r#"{"_id": "z", "title": "from c"}"#]));
    let pc = Peer::spawn(&c, &["--name", "c", "--connect", &addr], Stdio::null());
    eventually("a logging the refusal of c", || {
        std::fs::read_to_string(&log_a).unwrap_or_default().contains("revoked: device key")
    });
    assert!(!shoal(&a, &["get", "tasks", "z"]).status.success(), "nothing of c's reached a");
    drop((pb, pc));
    // Without a certificate or a secret file, `peer` says what it needs.
    let bare = shoal(&stranger, &["peer", "--no-mdns"]);
    assert_eq!(bare.status.code(), Some(64));
}

/// `shoal authority roster` lists every device the authority certified (and each `--member`), keeps the list's
/// other revocations, and replaces an earlier roster.
#[test]
fn the_authority_lists_the_devices_it_certified_in_a_roster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = dir.path().join("authority");
    let auth_s = auth.to_str().expect("path");
    let none = Path::new("/nonexistent");
    ok(shoal(none, &["authority", "init", auth_s]));
    let mut keys = Vec::new();
    for name in ["a", "b", "a"] {
        let db = dir.path().join(format!("{name}.db"));
        let request = ok(shoal(&db, &["enrol", "request", name]));
        keys.push(
            json_line(&ok(shoal(none, &["authority", "show", request.trim()])))["request"]["signing_key"].clone(),
        );
        ok(shoal(none, &["authority", "issue", auth_s, request.trim()]));
    }
    ok(shoal(none, &["authority", "revoke", auth_s, "--serial", "9"]));
    let elsewhere = "ab".repeat(32);
    // An authority that issued certificates before it kept their record must say its members are complete.
    std::fs::rename(auth.join("devices"), auth.join("devices.kept")).unwrap();
    assert!(!shoal(none, &["authority", "roster", auth_s]).status.success());
    std::fs::rename(auth.join("devices.kept"), auth.join("devices")).unwrap();
    let list = ok(shoal(none, &["authority", "roster", auth_s, "--member", &elsewhere]));
    let shown = json_line(&ok(shoal(none, &["authority", "show", list.trim()])));
    assert_eq!(shown["revocations"]["number"], 2);
    let entries = shown["revocations"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "the serial's revocation stays beside the roster: {entries:?}");
    let roster = entries.iter().filter_map(|e| e.as_str()).find(|e| e.starts_with("Roster")).unwrap();
    for key in keys.iter().filter_map(|k| k.as_str()).chain([elsewhere.as_str()]) {
        assert_eq!(roster.matches(key).count(), 1, "{key} once in {roster}");
    }
    // A later roster replaces it; a malformed member is refused and changes nothing.
    assert!(!shoal(none, &["authority", "roster", auth_s, "--member", "xyz"]).status.success());
    let list = ok(shoal(none, &["authority", "roster", auth_s]));
    let shown = json_line(&ok(shoal(none, &["authority", "show", list.trim()])));
    assert_eq!(shown["revocations"]["number"], 3);
    let entries = shown["revocations"]["entries"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e.as_str().is_some_and(|e| e.starts_with("Roster"))).count(), 1);
    assert!(!entries.iter().any(|e| e.as_str().is_some_and(|e| e.contains(&elsewhere))), "--member is not kept");
}
