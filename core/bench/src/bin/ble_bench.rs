//! Bluetooth LE sync costs in the simulated radio world (`shoaldb::sim::radio`), as JSON lines
//! (DESIGN.md §8). Everything runs on the simulator's virtual clock, so the numbers are the model's, not this
//! machine's: ratios to the model's own capacity are what matter.
//!
//! `cargo run --release -p shoaldb-bench --bin ble_bench [-- --quick] [--only link|attachment]` (`attachment` also runs
//! `ble_docs_3hops`)
//!
//! - `ble_link`: one phone holds N KB of documents (~1 KB each; 1 MB, or 200 KB with `--quick`), a second phone
//!   comes into range; one BLE connection with a fixed ATT MTU, connection interval and packet budget (6 packets
//!   per direction per event), no loss. Row `{"bench":"ble_link","mtu","interval_ms","payload_bytes","air_bytes",
//!   "capacity_bytes_per_s","goodput_bytes_per_s","goodput_ratio","goal":0.85,"goal_met","ok"}` (`ok`: the data arrived intact; the program fails otherwise) where payload is the change
//!   bytes the receiving session processed, goodput is payload ÷ the time from the radio connection to the last
//!   change applied, and capacity is packets per event × (MTU − 3) ÷ interval. The row also breaks the gap down,
//!   layer by layer, each as a fraction of the one below: `sync_share` (change bytes ÷ engine frame bytes: message
//!   encoding, Noise, presence/keepalives), `frame_share` (frame bytes ÷ Data payload bytes: 4-byte frame
//!   prefixes), `packet_share` (Data payload ÷ all packet bytes sent: 3-byte Data headers, Hello, credits,
//!   pings), `utilisation` (packet bytes sent ÷ capacity × time: idle slots — connection start-up, MTU exchange,
//!   handshakes, waiting for credit or for the engine), and `first_batch_ms`, the time from the connection to the
//!   first batch of changes applied (a batch is up to 48 KB, so this is mostly its transmission time).
//! - `ble_docs_3hops` (context for the next row): the same line of four phones syncing ~1 MB of documents
//!   from one end to the other; relays forward each batch as it arrives. Same ideal and
//!   goal as below; `relay_airtime_share` is the fraction of the time a relay's single radio was busy.
//! - `ble_attachment_3hops`: a line of four phones with identical links; the last holds a 1 MB attachment, the
//!   first fetches it across three hops. Row `{"bench":"ble_attachment_3hops","ms","ideal_ms","ratio","goal":1.5,"goal_met",
//!   "ok"}` where ideal is 1 MB at one link's capacity plus three one-hop latencies (one connection interval each),
//!   relays forwarding bytes as they arrive (which they do); the row also gives when each relay held the whole
//!   attachment (`hop_done_ms`) and `store_and_forward_ideal_ms`, the ideal if each relay held it all before serving.

use serde_json::json;
use shoaldb::sim::radio::{capacity_bytes_per_s, RadioParams};
use shoaldb::sim::{RadioWorld, World, MILLISECOND, SECOND};
use shoaldb::store::Replica;
use shoaldb::sync::{EngineEvent, FetchEvent, Subscription, TransportKind};
use shoaldb_bench::emit;

type BoxErr = Box<dyn std::error::Error>;

fn params(mtu: u16, interval_ms: u64, packets: usize) -> RadioParams {
    RadioParams {
        att_mtus: vec![mtu],
        interval_us: (interval_ms * MILLISECOND, interval_ms * MILLISECOND),
        packets_per_event: (packets, packets),
        loss: 0.0,
        ..RadioParams::default()
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

fn ble_link(mtu: u16, interval_ms: u64, kb: usize) -> Result<(), BoxErr> {
    const PACKETS: usize = 6;
    let mut w = RadioWorld::with_params(0xb1e + u64::from(mtu) + interval_ms, params(mtu, interval_ms, PACKETS));
    let a = w.add_phone("a", 0.0, 0.0, vec![Subscription::everything()]);
    w.edit(a, |s| -> Result<(), shoaldb::Error> {
        s.write(|t| {
            for i in 0..kb {
                t.upsert("bulk", json!({"_id": format!("doc{i:05}"), "body": format!("{i:05}").repeat(200)}))?;
            }
            Ok(())
        })
    })?;
    let b = w.add_phone("b", 10.0, 0.0, vec![Subscription::everything()]);
    let target = w.store(a).replica().summary()?;
    w.run_until(|w| w.connections().len() == 1, 60 * SECOND).ok_or("no connection")?;
    let conn = w.connections()[0].clone();
    let t0 = conn.established_at;
    let first = w
        .run_until(
            |w| {
                w.engine(b)
                    .links()
                    .first()
                    .and_then(|l| w.engine(b).link_stats(l.0))
                    .is_some_and(|s| s.change_bytes_received > 0)
            },
            600 * SECOND,
        )
        .ok_or("no change arrived")?;
    let done = w
        .run_until(|w| w.store(b).replica().summary().ok().as_ref() == Some(&target), 3600 * SECOND)
        .ok_or("sync did not finish")?;
    let secs = (done - t0) as f64 / SECOND as f64;
    let (link_b, _, _, transport) = w.engine(b).links().first().cloned().ok_or("no engine link")?;
    assert_eq!(transport, TransportKind::Ble);
    let session = w.engine(b).link_stats(link_b).ok_or("no session")?;
    let payload = session.change_bytes_received;
    let ble_in = *w.links(b).link(conn.id).ok_or("no link")?.stats();
    let ble_out = *w.links(a).link(conn.id).ok_or("no link")?.stats();
    let (sa, sb) = (w.stats(a).clone(), w.stats(b).clone());
    let capacity = capacity_bytes_per_s(mtu, conn.interval_us, conn.packets_per_event);
    let goodput = payload as f64 / secs;
    let ratio = goodput / capacity;
    let share = |x: u64, y: u64| if y == 0 { 0.0 } else { round(x as f64 / y as f64, 4) };
    emit(&json!({
        "bench": "ble_link", "mtu": mtu, "interval_ms": interval_ms, "packets_per_event": conn.packets_per_event,
        "documents": kb, "payload_bytes": payload, "air_bytes": sa.air_bytes_sent + sb.air_bytes_sent,
        "seconds": round(secs, 3), "first_batch_ms": round((first - t0) as f64 / MILLISECOND as f64, 1),
        "capacity_bytes_per_s": round(capacity, 0), "goodput_bytes_per_s": round(goodput, 0),
        "goodput_ratio": round(ratio, 4),
        "sync_share": share(payload, ble_in.frame_bytes_in),
        "frame_share": share(ble_in.frame_bytes_in, ble_in.data_bytes_in),
        "packet_share": share(ble_out.data_bytes_out, sa.packet_bytes_sent),
        "utilisation": round(sa.packet_bytes_sent as f64 / (capacity * secs), 4),
        "packets_a_to_b": sa.packets_sent, "packets_b_to_a": sb.packets_sent,
        "goal": 0.85, "goal_met": ratio >= 0.85, "ok": true,
    }));
    Ok(())
}

fn attachment_3hops(mtu: u16, interval_ms: u64) -> Result<(), BoxErr> {
    const PACKETS: usize = 6;
    const SIZE: usize = 1 << 20;
    let mut w = RadioWorld::with_params(0xa77, params(mtu, interval_ms, PACKETS));
    let phones: Vec<_> =
        (0..4).map(|i| w.add_phone(&format!("p{i}"), 20.0 * i as f64, 0.0, vec![Subscription::everything()])).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let token = w.store(phones[3]).put_attachment_bytes(&bytes, Default::default())?;
    w.edit(phones[3], |s| s.upsert("files", json!({"_id": "f", "file": token.to_json()})))?;
    w.run_until_quiet(600 * SECOND).map_err(|e| format!("the line did not settle: {e}"))?;
    w.take_events(phones[0]);
    let t0 = w.now();
    let fetch = w.fetch_attachment(phones[0], token.hash, token.len)?;
    let mut hop_done = Vec::new();
    for relay in [2, 1, 0] {
        let t = w
            .run_until(|w| w.store(phones[relay]).has_attachment(&token).unwrap_or(false), 3600 * SECOND)
            .ok_or("the attachment never arrived")?;
        hop_done.push(round((t - t0) as f64 / MILLISECOND as f64, 1));
    }
    let done = w.now();
    let events = w.take_events(phones[0]);
    if !events.iter().any(|(_, e)| *e == EngineEvent::Fetch(FetchEvent::Done { fetch, hash: token.hash })) {
        return Err("no Done event".into());
    }
    if w.store(phones[0]).attachment_bytes(&token)? != bytes {
        return Err("the bytes differ".into());
    }
    let conn = w.connection_between(phones[0], phones[1]).ok_or("not linked")?;
    let capacity = capacity_bytes_per_s(mtu, conn.interval_us, conn.packets_per_event);
    let one_hop_ms = conn.interval_us as f64 / MILLISECOND as f64;
    let transfer_ms = SIZE as f64 / capacity * 1000.0;
    let ideal_ms = transfer_ms + 3.0 * one_hop_ms;
    let ms = (done - t0) as f64 / MILLISECOND as f64;
    let ratio = ms / ideal_ms;
    emit(&json!({
        "bench": "ble_attachment_3hops", "bytes": SIZE, "mtu": mtu, "interval_ms": interval_ms, "packets_per_event": conn.packets_per_event,
        "capacity_bytes_per_s": round(capacity, 0), "ms": round(ms, 1), "ideal_ms": round(ideal_ms, 1),
        "hop_done_ms": hop_done, "store_and_forward_ideal_ms": round(3.0 * (transfer_ms + one_hop_ms), 1),
        "ratio": round(ratio, 3), "goal": 1.5, "goal_met": ratio <= 1.5, "ok": true,
    }));
    Ok(())
}

/// The same line of four phones with ~1 MB of documents instead of an attachment: documents are forwarded by the
/// relays batch by batch (≤ 48 KB) as they arrive, which shows what the radio model allows when relays pipeline.
fn docs_3hops(mtu: u16, interval_ms: u64, kb: usize) -> Result<(), BoxErr> {
    const PACKETS: usize = 6;
    let mut w = RadioWorld::with_params(0xd0c5, params(mtu, interval_ms, PACKETS));
    let phones: Vec<_> =
        (0..4).map(|i| w.add_phone(&format!("p{i}"), 20.0 * i as f64, 0.0, vec![Subscription::everything()])).collect();
    w.run_until_quiet(600 * SECOND).map_err(|e| format!("the line did not settle: {e}"))?;
    let t0 = w.now();
    w.edit(phones[3], |s| -> Result<(), shoaldb::Error> {
        s.write(|t| {
            for i in 0..kb {
                t.upsert("bulk", json!({"_id": format!("doc{i:05}"), "body": format!("{i:05}").repeat(200)}))?;
            }
            Ok(())
        })
    })?;
    let target = w.store(phones[3]).replica().summary()?;
    let payload: usize = w
        .store(phones[3])
        .replica()
        .changes_since(&w.store(phones[0]).replica().summary()?)?
        .iter()
        .map(|c| c.encode().len())
        .sum();
    let done = w
        .run_until(|w| w.store(phones[0]).replica().summary().ok().as_ref() == Some(&target), 3600 * SECOND)
        .ok_or("sync did not finish")?;
    let conn = w.connection_between(phones[0], phones[1]).ok_or("not linked")?;
    let capacity = capacity_bytes_per_s(mtu, conn.interval_us, conn.packets_per_event);
    let one_hop_ms = conn.interval_us as f64 / MILLISECOND as f64;
    let ideal_ms = payload as f64 / capacity * 1000.0 + 3.0 * one_hop_ms;
    let ms = (done - t0) as f64 / MILLISECOND as f64;
    let relay = w.stats(phones[1]);
    emit(&json!({
        "bench": "ble_docs_3hops", "payload_bytes": payload, "mtu": mtu, "interval_ms": interval_ms, "packets_per_event": conn.packets_per_event,
        "capacity_bytes_per_s": round(capacity, 0), "ms": round(ms, 1), "ideal_ms": round(ideal_ms, 1),
        "relay_airtime_share": round(relay.airtime_us as f64 / (done - t0) as f64, 3),
        "ratio": round(ms / ideal_ms, 3), "goal": 1.5, "goal_met": ms <= 1.5 * ideal_ms, "ok": true,
    }));
    Ok(())
}

fn main() -> Result<(), BoxErr> {
    let args = shoaldb_bench::Args::parse();
    let (quick, wants) = (args.quick, |name: &str| args.wants(name));
    if wants("link") {
        let kb = if quick { 200 } else { 1000 };
        let configs: &[(u16, u64)] =
            if quick { &[(185, 30), (247, 15)] } else { &[(185, 30), (185, 15), (247, 30), (247, 15)] };
        for &(mtu, interval_ms) in configs {
            ble_link(mtu, interval_ms, kb)?;
        }
    }
    if wants("attachment") {
        docs_3hops(247, 15, 1000)?;
        attachment_3hops(247, 15)?;
        if !quick {
            attachment_3hops(185, 30)?;
        }
    }
    Ok(())
}
