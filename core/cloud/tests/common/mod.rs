//! What the cloud tests share: a fresh PostgreSQL database each, on the server `with-postgres.sh` started.

#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The server's URL (`SHOAL_TEST_POSTGRES`, set by `core/cloud/tests/with-postgres.sh`, which the test command runs
/// the tests under). Without it the test is skipped with a note — except in CI, where it fails.
pub fn server() -> Option<String> {
    match std::env::var("SHOAL_TEST_POSTGRES") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!("SHOAL_TEST_POSTGRES is not set: run the tests under core/cloud/tests/with-postgres.sh")
        }
        Err(_) => {
            eprintln!("skipped: no PostgreSQL (run under core/cloud/tests/with-postgres.sh)");
            None
        }
    }
}

/// A new, empty database on the test server; its URL.
pub fn fresh_database() -> Option<String> {
    let admin = server()?;
    let mut id = [0u8; 6];
    getrandom::fill(&mut id).expect("randomness");
    let name = format!("shoal_test_{}", id.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to the test server");
    client.batch_execute(&format!("CREATE DATABASE {name}")).expect("create a test database");
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
    Some(format!("{base}/{name}"))
}

/// Wait until `f` holds, checking every few milliseconds, up to 90 s (a slow, shared machine); panics with `what`
/// if it never does.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A PostgreSQL program of the test server's installation (`pg_ctl`, `pg_basebackup`, …), run as the user that
/// owns the cluster.
pub fn pg_program(name: &str) -> std::process::Command {
    let bin = std::env::var("SHOAL_TEST_PG_BIN").expect("SHOAL_TEST_PG_BIN (set by with-postgres.sh)");
    let program = format!("{bin}/{name}");
    let user = std::env::var("SHOAL_TEST_PG_USER").unwrap_or_default();
    if user.is_empty() {
        std::process::Command::new(&program)
    } else {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", &user, "--", &program]);
        c
    }
}

/// Run `pg_ctl` with `args` on the test server's cluster, as the user that owns it.
pub fn pg_ctl(args: &[&str]) {
    let data = std::env::var("SHOAL_TEST_PG_DATA").expect("SHOAL_TEST_PG_DATA (set by with-postgres.sh)");
    let log = std::path::Path::new(&data).with_file_name("server.log");
    let log = log.to_string_lossy().into_owned();
    let status = pg_program("pg_ctl")
        .args(["-D", &data, "-l", &log, "-w", "-t", "60"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run pg_ctl");
    assert!(status.success(), "pg_ctl {args:?} failed");
}

/// The number of documents of `collection` the database at `url` holds.
pub fn docs_in(url: &str, collection: &str) -> Option<i64> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).ok()?;
    client.query_one("SELECT count(*) FROM docs WHERE collection = $1", &[&collection]).ok().map(|r| r.get(0))
}

/// A `shoal-cloud` process, killed when dropped (a failing test leaves none behind).
pub struct RelayProcess(pub std::process::Child);

impl RelayProcess {
    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// SIGTERM, and whether it then exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let pid = self.0.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
        sent && self.0.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `shoal-cloud` (the binary `exe`) on the database `url`, listening on a free loopback port, with `args`;
/// returns it and the address it listens on.
pub fn spawn_relay(exe: &str, url: &str, args: &[&std::ffi::OsStr]) -> (RelayProcess, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(exe)
        .args(["--postgres", url, "--listen", "127.0.0.1:0"])
        .args(args)
        .env("SHOAL_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start shoal-cloud");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let relay = RelayProcess(child);
    std::io::BufReader::new(stdout).read_line(&mut line).expect("read the relay's address");
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected: {line:?}"));
    (relay, addr.parse().expect("an address"))
}

/// The app authority's certificate for a device whose keys are in `store`, with `grants`; returns its enrolment
/// (and installs it there).
pub fn enrol(
    store: &shoaldb::Store,
    authority: &shoaldb::security::SigningKey,
    serial: u64,
    grants: &[&str],
) -> shoaldb::security::Enrolment {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let request = shoaldb::enrolment::request(store, &format!("device {serial}")).unwrap();
    let grants: Vec<shoaldb::security::Grant> =
        grants.iter().map(|g| shoaldb::security::Grant::parse(g).unwrap()).collect();
    let c = shoaldb::enrolment::issue(
        authority,
        &request,
        serial,
        grants,
        shoaldb::enrolment::Validity::days_from(now - 86_400_000, 30),
    )
    .unwrap();
    shoaldb::enrolment::install(store, &[c], &[authority.verifying_key()]).unwrap()
}

/// An HTTP/1.1 response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a connection of its own (blocking; call from a blocking context): `method` `target`
/// (path and query, already percent-encoded), with a bearer `token` and a JSON `body` when given.
pub fn http(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the back office");
    stream.set_read_timeout(Some(Duration::from_secs(90))).expect("timeout");
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).expect("send the request");
    // A refused oversized body may be answered (and the connection closed) before it is all sent.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| {
        panic!("no HTTP response header in {:?}", String::from_utf8_lossy(&raw));
    });
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 2 + size + 2..];
        }
        body = out;
    }
    Response { status, body }
}

/// `s` percent-encoded for a URL's query or path segment.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A hot standby of the test server, streaming from it (`pg_basebackup -R`), on a port of its own; stopped and
/// removed when dropped.
pub struct Standby {
    data: std::path::PathBuf,
    /// The standby's URL for the database `database`.
    pub url: String,
}

impl Standby {
    /// Start a standby of the test server; its URL names `database`.
    pub fn start(database: &str) -> Standby {
        let admin = server().expect("a test server");
        let port = admin.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()).expect("a port").to_string();
        let primary = std::env::var("SHOAL_TEST_PG_DATA").expect("SHOAL_TEST_PG_DATA (set by with-postgres.sh)");
        let dir = std::path::Path::new(&primary).parent().expect("the server's directory").to_path_buf();
        let mut id = [0u8; 4];
        getrandom::fill(&mut id).expect("randomness");
        let data = dir.join(format!("standby-{}", id.iter().map(|b| format!("{b:02x}")).collect::<String>()));
        let data_s = data.to_string_lossy().into_owned();
        let out = pg_program("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data_s,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ])
            .output()
            .expect("run pg_basebackup");
        assert!(out.status.success(), "pg_basebackup: {}", String::from_utf8_lossy(&out.stderr));
        let (dir_s, log) = (dir.to_string_lossy().into_owned(), format!("{data_s}.log"));
        for _ in 0..5 {
            let mut p = [0u8; 2];
            getrandom::fill(&mut p).expect("randomness");
            let candidate = 10_000 + u16::from_le_bytes(p) % 20_000;
            if std::net::TcpStream::connect(("127.0.0.1", candidate)).is_ok() {
                continue;
            }
            // (A standby needs at least the primary's max_connections: with-postgres.sh sets 300.)
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {candidate} -k {dir_s} -c hot_standby=on -c max_connections=300"
            );
            let started = pg_program("pg_ctl")
                .args(["-D", &data_s, "-l", &log, "-w", "-t", "60", "-o", &options, "start"])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if started {
                return Standby { data, url: format!("postgres://postgres@127.0.0.1:{candidate}/{database}") };
            }
        }
        panic!("the standby did not start on any port (see {log})");
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        let _ = pg_program("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Wait (a minute at most) until the standby at `standby` has replayed everything the primary at `primary` had
/// written when this was called (the relay's migrations, say).
pub fn wait_for_replay(primary: &str, standby: &str) {
    let mut p = postgres::Client::connect(primary, postgres::NoTls).expect("the primary");
    let target: String = p.query_one("SELECT pg_current_wal_lsn()::text", &[]).expect("its WAL position").get(0);
    let mut s = postgres::Client::connect(standby, postgres::NoTls).expect("the standby");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let replayed: bool = s
            .query_one("SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)", &[&target])
            .expect("the standby's replay position")
            .get(0);
        if replayed {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the standby did not replay the primary's WAL");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
