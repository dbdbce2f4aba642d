//! Sync costs, as JSON lines (DESIGN.md §8), each beside its reference in the same run.
//!
//! `cargo run --release -p shoaldb-bench --bin sync_bench [-- --quick] [--only reconcile|bulk|line16]`
//!
//! - `reconcile`: two stores holding the same 100,000 documents, then differing by d ∈ {0, 1, 100, 10,000}
//!   documents (half new on each side). Two sync engines meet over an in-memory link moved in lockstep flights;
//!   row `{"bench":"reconcile","d","bytes_a_to_b","bytes_b_to_a","round_trips","payload_bytes",...}` where bytes
//!   count everything on the link (handshake, framing, encryption), `payload_bytes` is the encoded size of the
//!   differing changes themselves, and `round_trips` counts the flights after the secure handshake (which takes
//!   1.5 round trips of its own, reported as `handshake_round_trips`). Goals: d=0 under 2 KB in one round trip;
//!   total bytes ≤ 1.1 × payload + 4 KB.
//! - `bulk`: two nodes over loopback TCP (the real LAN transport, Noise, SQLite with `Durability::Normal`): one
//!   holds ~50 MB — 20,000 documents of ~1 KB and 30 attachments of 1 MB — and the other syncs the documents and
//!   then fetches every attachment. Beside it, in the same run, a raw TCP copy of the same number of bytes on the
//!   same loopback (memory to memory). Row `{"bench":"bulk","bytes","shoal_mb_s","raw_tcp_mb_s","ratio",...}`;
//!   goal ≥ 50% of the raw rate. `local_write_mb_s` is the rate of writing the same data into the sending store
//!   through the public API, without any network: an upper bound for syncing it into a store.
//! - `line16`: 16 simulated devices in a line (the deterministic simulator, LAN-like and BLE-like links); once
//!   settled, one edit at one end; virtual time until the other end has it, beside the ideal — the sum over the 15
//!   hops of the link latency and the time to transmit the change's encoded bytes. Row
//!   `{"bench":"line16","link","ms","ideal_ms","ratio"}`; goal ≤ 1.5 × ideal.
//!
//! Every row says how the devices authenticate: `"identity": "shared-secret"` (the development mode) or
//! `"certificates"` (each store enrolled by an app authority; certificates exchanged and checked in every
//! handshake, read grants checked per document sent). `reconcile` and `bulk` run in both modes in the same run, and
//! the certificate rows carry `ratio_to_shared_secret` (goal for bulk: ≥ 0.8). `line16` runs on the simulator's
//! devices, which use the shared secret.

use serde_json::json;
use shoaldb::enrolment::{self, Validity};
use shoaldb::security::{Access, AppSecret, Grant, SigningKey};
use shoaldb::store::Replica;
use shoaldb::sync::{Engine, LinkId, Subscription, TransportKind};
use shoaldb::Store;
use shoaldb_bench::{emit, fill, open_fast as open, BoxErr};

/// How the devices of a run authenticate.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    SharedSecret,
    Certificates,
}

impl Mode {
    const BOTH: [Mode; 2] = [Mode::SharedSecret, Mode::Certificates];

    fn name(self) -> &'static str {
        match self {
            Mode::SharedSecret => "shared-secret",
            Mode::Certificates => "certificates",
        }
    }

    /// The access of `store` in this mode: the bench secret, or a certificate from `authority` (everything
    /// granted, so both modes move the same data) installed through the enrolment API.
    fn access(self, store: &Store, authority: &SigningKey, serial: u64) -> Result<Access, BoxErr> {
        Ok(match self {
            Mode::SharedSecret => AppSecret::from_bytes(b"bench secret")?.into(),
            Mode::Certificates => {
                let request = enrolment::request(store, &format!("bench {serial}"))?;
                let grants = vec![Grant::read("*"), Grant::write("*")];
                let now = shoaldb::util::sources::Sources::system().now_ms();
                let cert = enrolment::issue(authority, &request, serial, grants, Validity::days_from(now - 60_000, 1))?;
                enrolment::install(store, &[cert], &[authority.verifying_key()])?.into()
            }
        })
    }
}

fn engine(store: Store, name: &str, access: Access) -> Result<Engine, BoxErr> {
    let identity = shoaldb::node::device_identity(&store)?;
    Ok(Engine::new(store.replica(), identity, access, name, vec![Subscription::everything()], 0))
}

/// Copy every change of `from` into `to`.
fn copy(from: &Store, to: &Store) -> Result<(), BoxErr> {
    let changes = from.replica().changes_since(&to.replica().summary()?)?;
    for chunk in changes.chunks(2000) {
        to.replica().apply_changes(chunk)?;
    }
    Ok(())
}

/// Bytes of the changes `from` holds that `to` lacks, as they travel: each change's encoding and its signature
/// (when its author signed it).
fn payload(from: &Store, to: &Store) -> Result<usize, BoxErr> {
    use shoaldb::sync::wire::{Message, WireChange};
    let empty = Message::Changes { changes: Vec::new() }.encode().len();
    let on_wire = |c: &shoaldb::DocChange| {
        let one = WireChange::signed(c.encode(), c.signature.clone());
        Message::Changes { changes: vec![one] }.encode().len() - empty
    };
    Ok(from.replica().changes_since(&to.replica().summary()?)?.iter().map(on_wire).sum())
}

struct Flights {
    a_to_b: usize,
    b_to_a: usize,
    flights: usize,
    handshake_flights: usize,
}

/// Move frames in alternating flights (everything one side has, then everything the other has) until quiet.
/// Flights until both sides have finished the handshake count as handshake flights.
fn run(a: &mut Engine, la: LinkId, b: &mut Engine, lb: LinkId) -> Flights {
    let mut f = Flights { a_to_b: 0, b_to_a: 0, flights: 0, handshake_flights: 0 };
    let mut a_turn = true;
    let mut idle = 0;
    while idle < 2 {
        let mut frames = Vec::new();
        {
            let (from, lf) = if a_turn { (&mut *a, la) } else { (&mut *b, lb) };
            while let Some(fr) = from.poll_frame(lf) {
                frames.push(fr);
            }
        }
        if frames.is_empty() {
            idle += 1;
        } else {
            idle = 0;
            // A flight is part of the handshake until both sides had a session before it left.
            let handshaking = a.links().is_empty() || b.links().is_empty();
            // Frames travel with a 4-byte length prefix on a stream transport.
            let n: usize = frames.iter().map(|fr| fr.len() + 4).sum();
            if a_turn {
                f.a_to_b += n;
            } else {
                f.b_to_a += n;
            }
            let (to, lt) = if a_turn { (&mut *b, lb) } else { (&mut *a, la) };
            for fr in frames {
                to.on_frame(lt, &fr);
            }
            if handshaking {
                f.handshake_flights += 1;
            } else {
                f.flights += 1;
            }
        }
        a_turn = !a_turn;
    }
    f
}

fn reconcile(quick: bool) -> Result<(), BoxErr> {
    let n = if quick { 10_000 } else { 100_000 };
    let dir = tempfile::tempdir()?;
    let base = open(&dir.path().join("base.db"))?;
    eprintln!("reconcile: writing {n} documents…");
    fill(&base, "doc", 0..n)?;
    let authority = SigningKey::generate()?;
    for d in [0usize, 1, 100, 10_000] {
        if d > n / 2 {
            continue;
        }
        let mut shared_bytes = None;
        for mode in Mode::BOTH {
            let a = open(&dir.path().join(format!("a{d}-{}.db", mode.name())))?;
            let b = open(&dir.path().join(format!("b{d}-{}.db", mode.name())))?;
            eprintln!("reconcile d={d} ({}): copying the shared documents…", mode.name());
            copy(&base, &a)?;
            copy(&base, &b)?;
            // Enrolled before they write what differs, so that (with certificates) those changes are signed.
            let (access_a, access_b) = (mode.access(&a, &authority, 1)?, mode.access(&b, &authority, 2)?);
            fill(&a, "a-only", 0..d / 2)?;
            fill(&b, "b-only", 0..d - d / 2)?;
            let payload_bytes = payload(&a, &b)? + payload(&b, &a)?;
            let mut ea = engine(a.clone(), "a", access_a)?;
            let mut eb = engine(b.clone(), "b", access_b)?;
            let la = ea.add_link(TransportKind::Lan, true)?;
            let lb = eb.add_link(TransportKind::Lan, false)?;
            let f = run(&mut ea, la, &mut eb, lb);
            let converged = a.replica().summary()? == b.replica().summary()?;
            if std::env::var_os("SHOAL_BENCH_DEBUG").is_some() {
                eprintln!("a stats {:?}\nb stats {:?}", ea.link_stats(la), eb.link_stats(lb));
            }
            let total = f.a_to_b + f.b_to_a;
            let shared = *shared_bytes.get_or_insert(total);
            emit(&json!({
                "bench": "reconcile", "identity": mode.name(), "d": d, "docs": n,
                "bytes_a_to_b": f.a_to_b, "bytes_b_to_a": f.b_to_a,
                "round_trips": f.flights.div_ceil(2), "handshake_round_trips": f.handshake_flights as f64 / 2.0,
                "payload_bytes": payload_bytes,
                "goal_bytes": (payload_bytes as f64 * 1.1) as usize + 4096,
                "ratio_to_shared_secret": (total as f64 / shared as f64 * 1000.0).round() / 1000.0,
                "ok": converged && total <= (payload_bytes as f64 * 1.1) as usize + 4096,
            }));
        }
    }
    Ok(())
}

fn bulk(quick: bool) -> Result<(), BoxErr> {
    let authority = SigningKey::generate()?;
    let mut shared_rate = None;
    for mode in Mode::BOTH {
        let rate = bulk_in(quick, mode, &authority, shared_rate)?;
        shared_rate.get_or_insert(rate);
    }
    Ok(())
}

/// One bulk run in `mode`; returns its rate (MB/s).
fn bulk_in(quick: bool, mode: Mode, authority: &SigningKey, shared_rate: Option<f64>) -> Result<f64, BoxErr> {
    use shoaldb::{Node, NodeConfig};
    let (docs, attachments) = if quick { (2_000, 3) } else { (20_000, 30) };
    let dir = tempfile::tempdir()?;
    let a = open(&dir.path().join("bulk-a.db"))?;
    let b = open(&dir.path().join("bulk-b.db"))?;
    let (access_a, access_b) = (mode.access(&a, authority, 1)?, mode.access(&b, authority, 2)?);
    eprintln!("bulk: writing {docs} documents and {attachments} attachments…");
    let t_write = std::time::Instant::now();
    let body = "x".repeat(1000);
    for chunk in (0..docs).collect::<Vec<_>>().chunks(1000) {
        a.write(|t| {
            for i in chunk {
                t.upsert("bulk", json!({"_id": format!("d{i:06}"), "body": body, "n": i}))?;
            }
            Ok(())
        })?;
    }
    let mut tokens = Vec::new();
    for k in 0..attachments {
        let bytes: Vec<u8> =
            (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2654435761).wrapping_add(k) >> 13) as u8).collect();
        let t = a.put_attachment_bytes(&bytes, Default::default())?;
        a.upsert("files", json!({"_id": format!("f{k}"), "file": t.to_json()}))?;
        tokens.push(t);
    }
    let write_s = t_write.elapsed().as_secs_f64();
    let doc_bytes: usize = a.replica().changes_since(&Default::default())?.iter().map(|c| c.encode().len()).sum();
    let total_bytes = doc_bytes + tokens.iter().map(|t| t.len as usize).sum::<usize>();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (shoal_s, ok) = rt.block_on(async {
        let na =
            Node::start(a.clone(), NodeConfig::new("a", access_a).with_mdns(false).listen_on("127.0.0.1:0".parse()?))
                .await?;
        let addr = na.listen_addr().ok_or("not listening")?;
        let t0 = std::time::Instant::now();
        let nb = Node::start(b.clone(), NodeConfig::new("b", access_b).with_mdns(false).connect_to(addr)).await?;
        let want = a.replica().summary()?;
        while b.replica().summary()? != want {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        eprintln!("bulk: documents synced after {:.2} s", t0.elapsed().as_secs_f64());
        let mut fetches = Vec::new();
        for t in tokens.clone() {
            let nb = nb.clone();
            fetches.push(tokio::spawn(async move { nb.fetch_attachment(&t, |_, _| {}).await }));
        }
        for f in fetches {
            f.await??;
        }
        let secs = t0.elapsed().as_secs_f64();
        let mut ok = true;
        for t in &tokens {
            ok &= b.has_attachment(t)?;
        }
        nb.shutdown().await;
        na.shutdown().await;
        Ok::<_, BoxErr>((secs, ok))
    })?;
    let raw_s = rt.block_on(raw_tcp_copy(total_bytes))?;
    let mb = total_bytes as f64 / 1e6;
    let (shoal_mb_s, raw_mb_s) = (mb / shoal_s, mb / raw_s);
    let ratio_to_shared = shoal_mb_s / shared_rate.unwrap_or(shoal_mb_s);
    emit(&json!({
        "bench": "bulk", "identity": mode.name(), "bytes": total_bytes, "documents": docs, "attachments": attachments,
        "ratio_to_shared_secret": (ratio_to_shared * 1000.0).round() / 1000.0,
        "identity_goal_met": ratio_to_shared >= 0.8,
        "shoal_mb_s": (shoal_mb_s * 10.0).round() / 10.0, "raw_tcp_mb_s": (raw_mb_s * 10.0).round() / 10.0,
        "ratio": (shoal_mb_s / raw_mb_s * 1000.0).round() / 1000.0, "goal_met": shoal_mb_s >= raw_mb_s / 2.0,
        // The same data written into a local store, no network: an upper bound for any sync into a store.
        "local_write_mb_s": (mb / write_s * 10.0).round() / 10.0,
        "ok": ok,
    }));
    Ok(shoal_mb_s)
}

/// Seconds to copy `bytes` from one socket to another on loopback, 64 KiB writes.
async fn raw_tcp_copy(bytes: usize) -> Result<f64, BoxErr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0usize;
        while got < bytes {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok::<usize, std::io::Error>(got)
    });
    let chunk = vec![7u8; 64 << 10];
    let t0 = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        s.write_all(&chunk[..n]).await?;
        sent += n;
    }
    s.flush().await?;
    let got = reader.await??;
    if got != bytes {
        return Err(format!("raw copy moved {got} of {bytes} bytes").into());
    }
    Ok(t0.elapsed().as_secs_f64())
}

fn line16() -> Result<(), BoxErr> {
    use shoaldb::sim::{LinkParams, SimWorld, World, MILLISECOND, SECOND};
    for (name, params) in [("lan", LinkParams::LAN), ("ble", LinkParams::BLE)] {
        let mut world = SimWorld::new(16);
        let devices: Vec<_> =
            (0..16).map(|i| world.add_device(&format!("d{i}"), vec![Subscription::everything()])).collect();
        for w in devices.windows(2) {
            world.link(w[0], w[1], params);
        }
        world.run_until_quiet(600 * SECOND).map_err(|e| format!("line did not settle: {e:?}"))?;
        let (first, last) = (devices[0], devices[15]);
        world
            .edit(first, |s| s.upsert("line", json!({"_id": "edit", "text": "a short edit at one end of the line"})))?;
        let change: usize = world
            .store(first)
            .replica()
            .changes_since(&world.store(last).replica().summary()?)?
            .iter()
            .map(|c| c.encode().len())
            .sum();
        let start = world.now();
        let arrived = world
            .run_until(|w| w.store(last).get("line", "edit").ok().flatten().is_some(), 600 * SECOND)
            .ok_or("the edit never reached the other end")?;
        let ms = (arrived - start) as f64 / MILLISECOND as f64;
        let ideal_ms = 15.0 * (params.latency_us + params.transmit_us(change)) as f64 / MILLISECOND as f64;
        emit(&json!({
            "bench": "line16", "identity": "shared-secret", "link": name, "change_bytes": change,
            "ms": (ms * 100.0).round() / 100.0, "ideal_ms": (ideal_ms * 100.0).round() / 100.0,
            "ratio": (ms / ideal_ms * 1000.0).round() / 1000.0, "ok": ms <= 1.5 * ideal_ms,
        }));
    }
    Ok(())
}

fn main() -> Result<(), BoxErr> {
    let args = shoaldb_bench::Args::parse();
    let (quick, wants) = (args.quick, |name: &str| args.wants(name));
    if wants("reconcile") {
        reconcile(quick)?;
    }
    if wants("bulk") {
        bulk(quick)?;
    }
    if wants("line16") {
        line16()?;
    }
    Ok(())
}
