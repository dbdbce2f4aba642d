//! The cloud peer's costs, as JSON lines (DESIGN.md §8), beside plain PostgreSQL in the same run.
//!
//! `cargo run --release -p shoaldb-bench --bin cloud_bench [-- --postgres URL] [--quick] [--only ingest|catchup|compact]`
//!
//! Needs a PostgreSQL server in which it may create databases: `--postgres URL`, or `SHOAL_TEST_POSTGRES`, which
//! `core/cloud/tests/with-postgres.sh` sets (`core/cloud/tests/with-postgres.sh cargo run --release -p
//! shoaldb-bench --bin cloud_bench`: a temporary server on loopback, as the tests use). Each case runs in a new
//! database.
//!
//! - `ingest`: 1,000 devices (50 with `--quick`), each a node with its own store, subscribed to nothing, link to 1
//!   and then 2 relays of one database (real TCP on loopback, Noise, the development mode); once every device is
//!   linked (the time that took is the row's `link_s`), each writes 20 new documents (one change each, one
//!   transaction) and pushes them; time from the first write until PostgreSQL holds every change. Row
//!   `{"bench":"cloud_ingest","impl":"shoal","relays","devices","changes","changes_per_s","ratio_to_raw","link_s"}`;
//!   beside it `{"impl":"postgres-raw",…}`: the same change encodings inserted by one client with batched
//!   multi-row INSERTs (500 rows, one transaction each) into a table of the same shape; `{"impl":"replica-direct",…}`:
//!   each device's changes applied to the PostgreSQL replica as one batch, without relays or links; and
//!   `{"impl":"replica-grouped",…}`: the same batches 25 at a time in one transaction (`Replica::apply_batches`,
//!   as a busy relay applies the batches of many links); and `{"impl":"postgres-same-rows",…}`: the very rows the
//!   replica wrote (documents' states and JSON views under the GIN index, changes, authors' ranges) written again
//!   into a new database of the same schema by plain multi-row SQL, 500 changes per transaction: PostgreSQL's own
//!   cost for what the cloud stores, with none of Shoal's work. Goals: ingest ≥ 1/3 of raw; 2 relays ≥ 1.6 × one when
//!   PostgreSQL is not the bottleneck (on a 2-core machine, relays, PostgreSQL and the devices share the cores: the
//!   second relay cannot add capacity there).
//! - `catchup`: a fresh device pulls 100,000 documents of 10 fields (5,000 with `--quick`) from one relay. Row
//!   `{"bench":"cloud_catchup","docs","ms","bytes","payload_bytes","ratio"}`: `bytes` counts everything on the
//!   TCP connection both ways (handshake, framing, encryption; measured by a counting proxy between device and
//!   relay), `payload_bytes` the documents' change encodings. Goal: bytes ≤ 1.1 × payload.
//!
//! - `compact`: 20,000 documents written 5 times each (100,000 changes; 2,000 documents with `--quick`), 1,000
//!   devices (100) that said they hold everything, every change received 8 days ago; then the cloud's compaction
//!   (`PgReplica::compact`, default policy: the frontier, a 7-day feed retention). Row `{"bench":"cloud_compact",
//!   "impl":"shoal","docs","changes","devices","ack_us","frontier_ms","ms","changes_per_s","log_bytes_before",
//!   "log_bytes_after"}`: `ack_us` is a device's summary kept (`keep_peer_summary`), `frontier_ms` the fleet's
//!   frontier read, `ms` the compaction (frontier included), the log's size (`changes`, after `VACUUM FULL`, not
//!   timed) before and after; beside it `{"impl":"postgres-delete",…}`: the same rows deleted from a copy of the
//!   database by one plain `DELETE`, PostgreSQL's own cost of dropping them.
//!
//! Every row has `"ok"`: whether every change arrived intact (the device's documents equal the database's).

use serde_json::json;
use shoaldb::security::AppSecret;
use shoaldb::store::Replica;
use shoaldb::{Node, NodeConfig, Store, Summary};
use shoaldb_bench::{emit, fill, BoxErr};
use shoaldb_cloud::{PgReplica, Relay, RelayConfig};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DOCS_PER_DEVICE: usize = 20;

fn secret() -> AppSecret {
    AppSecret::from_bytes(b"cloud bench").unwrap_or_else(|_| unreachable!("a valid secret"))
}

/// A new database on the server at `admin`; its URL.
fn fresh_database(admin: &str, name: &str) -> Result<String, BoxErr> {
    let mut client = postgres::Client::connect(admin, postgres::NoTls)?;
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))?;
    client.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
    Ok(format!("{base}/{name}"))
}

/// Wait until the database `client` is connected to holds `want` changes (polling on that one connection, so
/// that watching costs PostgreSQL little); returns when it did.
fn wait_for_changes(mut client: postgres::Client, want: i64, deadline: Instant) -> Result<Instant, String> {
    loop {
        let held: i64 = client.query_one("SELECT count(*) FROM changes", &[]).map_err(|e| e.to_string())?.get(0);
        if held >= want {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err("ingest did not finish in 30 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn relay(url: &str) -> Result<Relay, BoxErr> {
    let mut config = RelayConfig::new(url, "127.0.0.1:0".parse()?, secret());
    config.connections = 4;
    Ok(Relay::start(config).await?)
}

/// Device `d`'s store, holding its [`DOCS_PER_DEVICE`] new documents, one change each.
fn device_store(d: usize) -> Result<Store, BoxErr> {
    let store = Store::open(":memory:")?;
    write_readings(&store, d)?;
    Ok(store)
}

/// Writes device `d`'s [`DOCS_PER_DEVICE`] new documents (one change each) to `store`, in one transaction.
fn write_readings(store: &Store, d: usize) -> Result<(), BoxErr> {
    store.write(|t| {
        for i in 0..DOCS_PER_DEVICE {
            t.upsert("readings", json!({"_id": format!("d{d}-{i}"), "device": d, "value": i, "unit": "kPa"}))?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Ingest through `relays` relays; returns changes per second.
fn ingest(admin: &str, relays: usize, devices: usize, raw_rate: f64, one_relay: Option<f64>) -> Result<f64, BoxErr> {
    let url = fresh_database(admin, &format!("shoal_bench_ingest_{relays}"))?;
    let stores: Vec<Store> = (0..devices).map(|_| Store::open(":memory:")).collect::<Result<_, _>>()?;
    let want = (devices * DOCS_PER_DEVICE) as i64;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (link_s, secs) = rt.block_on(async {
        let mut started = Vec::new();
        for _ in 0..relays {
            started.push(relay(&url).await?);
        }
        let addrs: Vec<SocketAddr> = started.iter().filter_map(Relay::listen_addr).collect();
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(1800);
        let mut nodes = Vec::with_capacity(devices);
        for (d, store) in stores.iter().enumerate() {
            let config = NodeConfig::new(format!("device {d}"), secret())
                .with_mdns(false)
                .connect_to(addrs[d % relays])
                // Subscribed to nothing: the devices push, and receive nothing back (ingest alone).
                .with_subscriptions(Vec::new());
            nodes.push(Node::start(store.clone(), config).await?);
        }
        // (Counting the links locks each relay's engine: not too often.)
        while started.iter().map(|r| r.node().link_count()).sum::<usize>() < devices {
            if Instant::now() > deadline {
                return Err::<(f64, f64), BoxErr>("the devices did not all link in 30 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let link_s = t0.elapsed().as_secs_f64();
        eprintln!("ingest, {relays} relay(s): {devices} devices linked in {link_s:.2} s");
        // Every device linked: each writes its documents now, and pushes them.
        let u = url.clone();
        let watching = tokio::task::spawn_blocking(move || postgres::Client::connect(&u, postgres::NoTls)).await??;
        let t1 = Instant::now();
        let done =
            tokio::task::spawn_blocking(move || wait_for_changes(watching, want, t1 + Duration::from_secs(1800)));
        let writers = stores.clone();
        tokio::task::spawn_blocking(move || {
            writers.iter().enumerate().try_for_each(|(d, store)| write_readings(store, d).map_err(|e| e.to_string()))
        })
        .await??;
        let secs = done.await??.duration_since(t1).as_secs_f64();
        for n in &nodes {
            n.shutdown().await;
        }
        for r in started {
            r.shutdown().await;
        }
        Ok((link_s, secs))
    })?;
    // Every document arrived whole: the database's state of a sample equals its device's.
    let cloud = PgReplica::connect(&url, 1)?;
    let mut ok = cloud.summary()?.range_count() >= devices;
    for (d, store) in stores.iter().enumerate().step_by((devices / 20).max(1)) {
        let id = format!("d{d}-{}", DOCS_PER_DEVICE - 1);
        ok &= cloud.document("readings", &id)?.map(|doc| doc.encode())
            == store.document("readings", &id)?.map(|doc| doc.encode());
    }
    let rate = want as f64 / secs;
    let mut row = json!({
        "bench": "cloud_ingest", "impl": "shoal", "relays": relays, "devices": devices, "changes": want,
        "changes_per_s": rate.round(), "ratio_to_raw": (rate / raw_rate * 1000.0).round() / 1000.0,
        "link_s": (link_s * 100.0).round() / 100.0, "ok": ok,
    });
    if let Some(one) = one_relay {
        row["ratio_to_one_relay"] = json!((rate / one * 1000.0).round() / 1000.0);
    }
    emit(&row);
    Ok(rate)
}

/// The same change encodings as `ingest` pushes, inserted with plain batched INSERTs; returns changes per second.
fn raw_ingest(admin: &str, devices: usize) -> Result<f64, BoxErr> {
    let url = fresh_database(admin, "shoal_bench_raw")?;
    let mut changes: Vec<(i64, i64, Vec<u8>)> = Vec::new();
    for d in 0..devices {
        for c in device_store(d)?.replica().changes_since(&Summary::new())? {
            changes.push((c.change.peer.0 as i64, c.change.start as i64, c.encode()));
        }
    }
    // The replica alone, without relays or links: each device's changes applied as one batch, as a relay does.
    let direct = PgReplica::connect(&fresh_database(admin, "shoal_bench_direct")?, 1)?;
    let by_device: Vec<Vec<shoaldb::DocChange>> = changes
        .chunks(DOCS_PER_DEVICE)
        .map(|c| c.iter().map(|(_, _, body)| shoaldb::DocChange::decode(body)).collect::<Result<_, _>>())
        .collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    for batch in &by_device {
        direct.apply_changes(batch)?;
    }
    let direct_rate = changes.len() as f64 / t0.elapsed().as_secs_f64();
    // The same, 25 devices' batches applied together (one transaction), as a busy relay applies them.
    let grouped_database = fresh_database(admin, "shoal_bench_grouped")?;
    let grouped = PgReplica::connect(&grouped_database, 1)?;
    let slices: Vec<&[shoaldb::DocChange]> = by_device.iter().map(Vec::as_slice).collect();
    let t0 = Instant::now();
    for group in slices.chunks(25) {
        for report in grouped.apply_batches(group, None) {
            report?;
        }
    }
    let grouped_rate = changes.len() as f64 / t0.elapsed().as_secs_f64();
    let (same_rows_rate, same_rows_ok) = same_rows_ingest(admin, &grouped_database)?;
    let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
    client.batch_execute(
        "CREATE TABLE raw_changes (seq bigserial PRIMARY KEY, author bigint NOT NULL, start_ctr bigint NOT NULL, \
         body bytea NOT NULL, UNIQUE (author, start_ctr))",
    )?;
    let t0 = Instant::now();
    for batch in changes.chunks(500) {
        let authors: Vec<i64> = batch.iter().map(|c| c.0).collect();
        let starts: Vec<i64> = batch.iter().map(|c| c.1).collect();
        let bodies: Vec<&[u8]> = batch.iter().map(|c| c.2.as_slice()).collect();
        let mut tx = client.transaction()?;
        tx.execute(
            "INSERT INTO raw_changes (author, start_ctr, body) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])",
            &[&authors, &starts, &bodies],
        )?;
        tx.commit()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let n: i64 = client.query_one("SELECT count(*) FROM raw_changes", &[])?.get(0);
    let rate = changes.len() as f64 / secs;
    emit(&json!({
        "bench": "cloud_ingest", "impl": "postgres-raw", "devices": devices, "changes": changes.len(),
        "changes_per_s": rate.round(), "ok": n as usize == changes.len(),
    }));
    emit(&json!({
        "bench": "cloud_ingest", "impl": "replica-direct", "devices": devices, "changes": changes.len(),
        "changes_per_s": direct_rate.round(), "ratio_to_raw": (direct_rate / rate * 1000.0).round() / 1000.0,
        "ok": direct.summary()?.range_count() >= devices,
    }));
    emit(&json!({
        "bench": "cloud_ingest", "impl": "replica-grouped", "devices": devices, "changes": changes.len(),
        "changes_per_s": grouped_rate.round(), "ratio_to_raw": (grouped_rate / rate * 1000.0).round() / 1000.0,
        "ok": grouped.summary()?.range_count() >= devices,
    }));
    emit(&json!({
        "bench": "cloud_ingest", "impl": "postgres-same-rows", "devices": devices, "changes": changes.len(),
        "changes_per_s": same_rows_rate.round(), "ratio_to_raw": (same_rows_rate / rate * 1000.0).round() / 1000.0,
        "ok": same_rows_ok,
    }));
    Ok(rate)
}

/// The rows the replica wrote into `from` (each document's state and JSON view, each change with its document,
/// each author's ranges), written again into a new database of the same schema (its tables, indexes and the GIN
/// index on the views) by plain SQL: one transaction per 500 changes, one multi-row statement per table, as the
/// replica writes them — without any of Shoal's work (no decoding, merging, judging or reading before writing).
/// What PostgreSQL itself costs for the storage the cloud keeps; returns changes per second and whether every row
/// arrived.
fn same_rows_ingest(admin: &str, from: &str) -> Result<(f64, bool), BoxErr> {
    let mut source = postgres::Client::connect(from, postgres::NoTls)?;
    type Doc = (String, String, Vec<u8>, Option<String>);
    let docs: Vec<Doc> = source
        .query("SELECT collection, doc_id, state, view::text FROM docs ORDER BY num", &[])?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let num_of: std::collections::HashMap<i64, usize> = source
        .query("SELECT num FROM docs ORDER BY num", &[])?
        .iter()
        .enumerate()
        .map(|(i, r)| (r.get(0), i))
        .collect();
    type Change = (i64, i64, i64, usize, Vec<u8>, Vec<u8>);
    let changes: Vec<Change> = source
        .query("SELECT author, start_ctr, end_ctr, doc, hash, body FROM changes ORDER BY seq", &[])?
        .iter()
        .map(|r| {
            (r.get(0), r.get(1), r.get(2), num_of.get(&r.get::<_, i64>(3)).copied().unwrap_or(0), r.get(4), r.get(5))
        })
        .collect();
    let held: std::collections::HashMap<i64, Vec<u8>> =
        source.query("SELECT author, ranges FROM held", &[])?.iter().map(|r| (r.get(0), r.get(1))).collect();
    let url = fresh_database(admin, "shoal_bench_same_rows")?;
    drop(PgReplica::connect(&url, 1)?); // the schema
    let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
    let t0 = Instant::now();
    for batch in changes.chunks(500) {
        let mut tx = client.transaction()?;
        let mut doc_rows: Vec<usize> = batch.iter().map(|c| c.3).collect();
        doc_rows.sort_unstable();
        doc_rows.dedup();
        let rows = tx.query(
            "INSERT INTO docs (collection, doc_id, state, view) \
             SELECT c, i, s, v::jsonb FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) AS t(c, i, s, v) \
             ON CONFLICT (collection, doc_id) DO UPDATE SET state = excluded.state, view = excluded.view \
             RETURNING doc_id, num",
            &[
                &doc_rows.iter().map(|&d| docs[d].0.as_str()).collect::<Vec<_>>(),
                &doc_rows.iter().map(|&d| docs[d].1.as_str()).collect::<Vec<_>>(),
                &doc_rows.iter().map(|&d| docs[d].2.as_slice()).collect::<Vec<_>>(),
                &doc_rows.iter().map(|&d| docs[d].3.as_deref()).collect::<Vec<_>>(),
            ],
        )?;
        // (The bench's documents all have one collection: the id names the row.)
        let by_id: std::collections::HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let nums: std::collections::HashMap<usize, i64> =
            doc_rows.iter().filter_map(|&d| Some((d, *by_id.get(&docs[d].1)?))).collect();
        let mut authors: Vec<i64> = batch.iter().map(|c| c.0).collect();
        tx.execute(
            "INSERT INTO changes (author, start_ctr, end_ctr, doc, hash, body) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bytea[], $6::bytea[]) \
             ON CONFLICT DO NOTHING",
            &[
                &authors,
                &batch.iter().map(|c| c.1).collect::<Vec<_>>(),
                &batch.iter().map(|c| c.2).collect::<Vec<_>>(),
                &batch.iter().map(|c| nums.get(&c.3).copied().unwrap_or(0)).collect::<Vec<_>>(),
                &batch.iter().map(|c| c.4.as_slice()).collect::<Vec<_>>(),
                &batch.iter().map(|c| c.5.as_slice()).collect::<Vec<_>>(),
            ],
        )?;
        authors.sort_unstable();
        authors.dedup();
        let ranges: Vec<&[u8]> = authors.iter().map(|a| held.get(a).map_or(&[][..], Vec::as_slice)).collect();
        tx.execute(
            "INSERT INTO held (author, ranges) SELECT * FROM unnest($1::bigint[], $2::bytea[]) \
             ON CONFLICT (author) DO UPDATE SET ranges = excluded.ranges",
            &[&authors, &ranges],
        )?;
        tx.commit()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let held_changes: i64 = client.query_one("SELECT count(*) FROM changes", &[])?.get(0);
    let held_docs: i64 = client.query_one("SELECT count(*) FROM docs", &[])?.get(0);
    let ok = held_changes as usize == changes.len() && held_docs as usize == docs.len();
    Ok((changes.len() as f64 / secs, ok))
}

/// Forward one connection from `listen` to `to`, counting the bytes both ways into `counted`.
async fn counting_proxy(listener: tokio::net::TcpListener, to: SocketAddr, counted: Arc<AtomicU64>) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let counted = counted.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                if let Ok((a, b)) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                    counted.fetch_add(a + b, Ordering::Relaxed);
                }
            }
        });
    }
}

fn catchup(admin: &str, docs: usize) -> Result<(), BoxErr> {
    let url = fresh_database(admin, "shoal_bench_catchup")?;
    let source = Store::open(":memory:")?;
    fill(&source, "doc", 0..docs)?;
    let changes = source.replica().changes_since(&Summary::new())?;
    let payload: usize = changes.iter().map(|c| c.encode().len()).sum();
    let cloud = PgReplica::connect(&url, 2)?;
    for chunk in changes.chunks(2000) {
        cloud.apply_changes(chunk)?;
    }
    let dir = tempfile::tempdir()?;
    let fresh = shoaldb_bench::open_fast(&dir.path().join("fresh.db"))?;
    let want = cloud.summary()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let counted = Arc::new(AtomicU64::new(0));
    let secs = rt.block_on(async {
        let relay = relay(&url).await?;
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let via = proxy.local_addr()?;
        tokio::spawn(counting_proxy(proxy, relay.listen_addr().ok_or("not listening")?, counted.clone()));
        let t0 = Instant::now();
        let node =
            Node::start(fresh.clone(), NodeConfig::new("fresh", secret()).with_mdns(false).connect_to(via)).await?;
        while fresh.replica().summary()? != want {
            if t0.elapsed() > Duration::from_secs(1800) {
                return Err::<f64, BoxErr>("catch-up did not finish in 30 minutes".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        // Closing the link ends the proxied connection, which then adds up its bytes.
        node.shutdown().await;
        relay.shutdown().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(secs)
    })?;
    let bytes = counted.load(Ordering::Relaxed);
    let mut ok = true;
    for i in (0..docs).step_by((docs / 50).max(1)) {
        let id = format!("doc{i:06}");
        ok &= fresh.document("items", &id)?.map(|d| d.encode()) == cloud.document("items", &id)?.map(|d| d.encode());
    }
    emit(&json!({
        "bench": "cloud_catchup", "docs": docs, "ms": (secs * 1000.0).round(), "bytes": bytes,
        "payload_bytes": payload, "ratio": (bytes as f64 / payload as f64 * 1000.0).round() / 1000.0, "ok": ok,
    }));
    Ok(())
}

/// The size of the change log's table with its indexes, compacted by `VACUUM FULL` (not timed).
fn log_bytes(client: &mut postgres::Client) -> Result<i64, BoxErr> {
    client.batch_execute("VACUUM FULL changes")?;
    Ok(client.query_one("SELECT pg_total_relation_size('changes')", &[])?.get(0))
}

fn compact(admin: &str, docs: usize, devices: usize) -> Result<(), BoxErr> {
    const ROUNDS: usize = 5;
    let name = "shoal_bench_compact";
    let url = fresh_database(admin, name)?;
    let source = Store::open(":memory:")?;
    let ids: Vec<usize> = (0..docs).collect();
    for round in 0..ROUNDS {
        for chunk in ids.chunks(1000) {
            source.write(|t| {
                for i in chunk {
                    t.upsert(
                        "items",
                        json!({"_id": format!("doc{i:06}"), "round": round, "v": format!("{i}.{round}")}),
                    )?;
                }
                Ok(())
            })?;
        }
    }
    let changes = source.replica().changes_since(&Summary::new())?;
    let held = source.replica().summary()?;
    let cloud = PgReplica::connect(&url, 2)?;
    for chunk in changes.chunks(2000) {
        cloud.apply_changes(chunk)?;
    }
    let t0 = Instant::now();
    for d in 0..devices {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(d as u64).to_le_bytes());
        cloud.keep_peer_summary(&shoaldb::security::DeviceKey(key), false, &held)?;
    }
    let ack_us = t0.elapsed().as_secs_f64() * 1e6 / devices as f64;
    let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
    client.batch_execute("UPDATE changes SET received = received - interval '8 days'")?;
    let before = log_bytes(&mut client)?;
    drop((client, cloud));
    // A copy, for PostgreSQL's own cost of dropping the same rows.
    let raw_url = {
        let mut admin_client = postgres::Client::connect(admin, postgres::NoTls)?;
        admin_client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}_raw"))?;
        admin_client.batch_execute(&format!("CREATE DATABASE {name}_raw TEMPLATE {name}"))?;
        format!("{}/{name}_raw", admin.rsplit_once('/').map_or(admin, |(base, _)| base))
    };
    let cloud = PgReplica::connect(&url, 2)?;
    let policy = shoaldb::CompactionPolicy::default();
    let t0 = Instant::now();
    let frontier = cloud.fleet_frontier(policy.horizon_ms)?;
    let frontier_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let t0 = Instant::now();
    let report = cloud.compact(&policy, 7 * 24 * 3600 * 1000)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
    let after = log_bytes(&mut client)?;
    let mut ok = frontier.as_ref() == Some(&held) && report.changes as usize == changes.len();
    ok &= cloud.summary()? == held;
    for i in (0..docs).step_by((docs / 50).max(1)) {
        let id = format!("doc{i:06}");
        ok &= source.document("items", &id)?.map(|d| d.encode()) == cloud.document("items", &id)?.map(|d| d.encode());
    }
    emit(&json!({
        "bench": "cloud_compact", "impl": "shoal", "docs": docs, "changes": changes.len(), "devices": devices,
        "ack_us": ack_us.round(), "frontier_ms": frontier_ms.round(), "ms": (secs * 1000.0).round(),
        "changes_per_s": (report.changes as f64 / secs).round(), "log_bytes_before": before,
        "log_bytes_after": after, "ok": ok,
    }));
    let mut raw = postgres::Client::connect(&raw_url, postgres::NoTls)?;
    let t0 = Instant::now();
    let deleted = raw.execute("DELETE FROM changes WHERE received < now() - interval '7 days' AND sig IS NULL", &[])?;
    let secs = t0.elapsed().as_secs_f64();
    let raw_after = log_bytes(&mut raw)?;
    emit(&json!({
        "bench": "cloud_compact", "impl": "postgres-delete", "docs": docs, "changes": changes.len(),
        "ms": (secs * 1000.0).round(), "changes_per_s": (deleted as f64 / secs).round(),
        "log_bytes_before": before, "log_bytes_after": raw_after, "ok": deleted as usize == changes.len(),
    }));
    Ok(())
}

fn main() -> Result<(), BoxErr> {
    if std::env::var_os("SHOAL_LOG").is_some() {
        shoaldb_cloud::logging::init();
    }
    let args = shoaldb_bench::Args::parse();
    let argv: Vec<String> = std::env::args().collect();
    let admin = argv
        .iter()
        .position(|a| a == "--postgres")
        .and_then(|i| argv.get(i + 1).cloned())
        .or_else(|| std::env::var("SHOAL_TEST_POSTGRES").ok())
        .ok_or("needs a PostgreSQL server: --postgres URL, or run under core/cloud/tests/with-postgres.sh")?;
    if args.wants("ingest") {
        let devices = if args.quick { 50 } else { 1000 };
        let raw = raw_ingest(&admin, devices)?;
        let one = ingest(&admin, 1, devices, raw, None)?;
        ingest(&admin, 2, devices, raw, Some(one))?;
    }
    if args.wants("catchup") {
        catchup(&admin, if args.quick { 5_000 } else { 100_000 })?;
    }
    if args.wants("compact") {
        let (docs, devices) = if args.quick { (2_000, 100) } else { (20_000, 1_000) };
        compact(&admin, docs, devices)?;
    }
    Ok(())
}
