//! The cloud schema's migrations: relays starting at once migrate exactly once; a newer schema is refused.

mod common;

use shoaldb_cloud::schema::SCHEMA_VERSION;
use shoaldb_cloud::{CloudError, PgReplica};

#[test]
fn relays_starting_at_once_migrate_exactly_once() {
    let Some(url) = common::fresh_database() else { return };
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgReplica::connect(&url, 1).map(|_| ()))
        })
        .collect();
    for s in starts {
        s.join().expect("no panic").expect("every relay starts");
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let row = client.query_one("SELECT count(*), max(version) FROM shoal_schema", &[]).unwrap();
    assert_eq!(row.get::<_, i64>(0), i64::from(SCHEMA_VERSION), "one row per migration");
    assert_eq!(row.get::<_, i32>(1), SCHEMA_VERSION);
    // The tables are there once each (a second run of a migration would have failed on CREATE TABLE).
    let tables: i64 = client
        .query_one("SELECT count(*) FROM information_schema.tables WHERE table_name = 'changes'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
}

#[test]
fn a_database_migrated_by_a_newer_relay_is_refused_and_left_alone() {
    let Some(url) = common::fresh_database() else { return };
    PgReplica::connect(&url, 1).unwrap();
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client.execute("INSERT INTO shoal_schema (version) VALUES ($1)", &[&(SCHEMA_VERSION + 1)]).unwrap();
    match PgReplica::connect(&url, 1) {
        Err(CloudError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let n: i64 = client.query_one("SELECT count(*) FROM shoal_schema", &[]).unwrap().get(0);
    assert_eq!(n, i64::from(SCHEMA_VERSION) + 1, "nothing was changed");
}
