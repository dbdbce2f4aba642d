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

/// Wait until `f` holds, up to a minute (a slow, shared machine); panics with `what` if it never does.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}
