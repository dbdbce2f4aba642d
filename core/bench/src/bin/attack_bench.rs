//! What a hostile device costs its victim, as JSON lines (DESIGN.md §8), each figure beside its bound.
//!
//! `cargo run --release -p shoaldb-bench --bin attack_bench [-- --quick] [--only ATTACK]`
//!
//! The attacker holds the app secret (anyone who unpacks the app does): it completes a genuine Noise handshake with
//! the victim's sync engine, then sends crafted messages through the encrypted link (`Engine::send_raw`), so every
//! byte reaches the victim's message, session and store code exactly as from a real device. Each attack runs in its
//! own child process, so one that aborts the victim (a stack overflow cannot be caught) is reported as such instead
//! of ending the run. One row per attack:
//!
//! `{"bench":"attack","attack":…,"bytes_sent":…,"victim_ms":…,"victim_total_ms":…,"victim_peak_bytes":…,
//!   "time_bound_ms":…,"peak_bound_bytes":…,"bounded":…,"safe":…,"outcome":…}`
//!
//! - `victim_ms`: the longest single call into the victim's engine (`on_frame` or `poll_frame`) — how long every
//!   other link of that device waits; `victim_total_ms` the sum over the attack.
//! - `victim_peak_bytes`: the victim's peak extra heap during the attack (Rust allocations; SQLite's page cache is
//!   not counted).
//! - `bounded`: both figures are within their bounds (`time_bound_ms`: the 100 ms per message on this
//!   machine; `peak_bound_bytes`: the memory one hostile link may cost, 64 MiB — for the reassembly attack, the
//!   node's budget for partial messages plus each link's free share).
//! - `safe`: the victim's outcome is the safe one, checked on its state: a refused message changed nothing in its
//!   store, its honest data still syncs, and (where the attack targets a link) only the attacker's link closed.
//!
//! Attacks: `deep_value` (a ~2 MB change nesting a value 1,000,000 deep), `insert_elems` (a 38-byte op inserting
//! 4M array elements, four of them), `delete_spans` (a text delete naming the 100,000 characters of a text 1,000 times over),
//! `interest` (the costliest interest accepted — 16 filters of 1 KiB on one collection, none matching — against
//! 100k documents; 1,024 filters of 4 KiB are refused whole), `summary` (a second summary claiming
//! every counter of every author, against 100k documents), `resync_flood` (a victim holding changes of 10,000
//! authors, asked 20,000 times for its summary by a peer that never reads), `reassembly` (16 attackers each
//! sending a 60 MB message without its last frame), `pending_flood` (100,000 changes that can never apply, then an
//! honest change out of order). `--quick` divides the sizes by about ten.

use serde_json::json;
use shoaldb::crdt::change::Seg;
use shoaldb::crdt::sequence::IdSpan;
use shoaldb::security::{AppSecret, Identity};
use shoaldb::store::Replica;
use shoaldb::sync::engine::{REASSEMBLY_FREE_BYTES, REASSEMBLY_SHARED_BYTES};
use shoaldb::sync::wire::{WireChange, MAX_FILTERS_PER_COLLECTION, MAX_FILTER_BYTES_PER_COLLECTION};
use shoaldb::sync::{Engine, LinkId, Message, Subscription, TransportKind};
use shoaldb::{Change, DocChange, Op, PeerId, Scalar, Store, Summary, Timestamp, Value, VersionVector};
use shoaldb_bench::{alloc, emit, fill, open_fast, Args, BoxErr};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// The budget for the victim's work on any one message, on this machine.
const TIME_BOUND_MS: f64 = 100.0;
/// The most memory one hostile link may cost its victim (the reassembly attack, with many links, has the node's
/// budget for partial messages instead).
const PEAK_BOUND_BYTES: usize = 64 << 20;

const ATTACKS: &[&str] = &[
    "deep_value",
    "insert_elems",
    "delete_spans",
    "interest",
    "summary",
    "resync_flood",
    "reassembly",
    "pending_flood",
];

/// What an attack did to its victim.
struct Outcome {
    bytes_sent: usize,
    /// The victim's end of the attacker's link (one attacker).
    link: Option<LinkId>,
    /// The most memory the attack may cost the victim.
    peak_bound: usize,
    safe: bool,
    outcome: String,
}

/// The victim's engine, with the time spent in it and its peak memory measured.
struct Victim {
    engine: Engine,
    store: Store,
    longest: Duration,
    total: Duration,
}

impl Victim {
    fn timed<R>(&mut self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let t = Instant::now();
        let r = f(&mut self.engine);
        let d = t.elapsed();
        self.longest = self.longest.max(d);
        self.total += d;
        r
    }

    /// Deliver frames to the victim on `link`.
    fn feed(&mut self, link: LinkId, frames: &[Vec<u8>]) {
        for f in frames {
            self.timed(|e| e.on_frame(link, f));
        }
    }

    /// Let the victim produce what it would send on `link` (up to `max` frames), as if the peer read it.
    fn answer(&mut self, link: LinkId, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.timed(|e| e.poll_frame(link)) {
                Some(f) => out.push(f),
                None => break,
            }
        }
        out
    }
}

/// Why the victim closed `link`, if it did (from its events).
fn close_reason(v: &mut Victim, link: LinkId) -> Option<String> {
    let mut reason = None;
    while let Some(e) = v.engine.poll_event() {
        if let shoaldb::sync::EngineEvent::LinkDown { link: l, reason: r, .. } = e {
            if l == link {
                reason = Some(r);
            }
        }
    }
    reason
}

fn secret() -> Result<AppSecret, BoxErr> {
    Ok(AppSecret::from_bytes(b"attack bench secret")?)
}

fn engine(store: &Store, name: &str, subs: Vec<Subscription>) -> Result<Engine, BoxErr> {
    Ok(Engine::new(store.replica(), Identity::generate()?, secret()?, name, subs, 0))
}

/// Link `attacker` to the victim (the attacker dials) and move frames both ways until both are quiet: the
/// handshake and whatever honest sync follows. Returns (victim's link, attacker's link).
fn connect(v: &mut Victim, attacker: &mut Engine) -> Result<(LinkId, LinkId), BoxErr> {
    let la = attacker.add_link(TransportKind::Lan, true)?;
    let lv = v.engine.add_link(TransportKind::Lan, false)?;
    settle(v, lv, attacker, la);
    if v.engine.links().is_empty() || attacker.links().is_empty() {
        return Err("the handshake did not complete".into());
    }
    Ok((lv, la))
}

/// Move frames between the victim and the attacker until neither has any.
fn settle(v: &mut Victim, lv: LinkId, attacker: &mut Engine, la: LinkId) {
    loop {
        let mut moved = false;
        while let Some(f) = attacker.poll_frame(la) {
            v.feed(lv, &[f]);
            moved = true;
        }
        for f in v.answer(lv, usize::MAX) {
            attacker.on_frame(la, &f);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

/// The frames of `msg` (any bytes) sealed on the attacker's link.
fn seal(attacker: &mut Engine, la: LinkId, msg: &[u8]) -> Result<Vec<Vec<u8>>, BoxErr> {
    attacker.send_raw(la, msg)?;
    let mut frames = Vec::new();
    while let Some(f) = attacker.poll_frame(la) {
        frames.push(f);
    }
    Ok(frames)
}

fn victim(dir: &std::path::Path, docs: usize) -> Result<Victim, BoxErr> {
    let store = open_fast(&dir.join("victim.db"))?;
    if docs > 0 {
        eprintln!("writing {docs} documents into the victim…");
        fill(&store, "doc", 0..docs)?;
    }
    let engine = engine(&store, "victim", vec![Subscription::everything()])?;
    Ok(Victim { engine, store, longest: Duration::ZERO, total: Duration::ZERO })
}

/// An attacker with its own store, subscribed to `subs`.
fn attacker(dir: &std::path::Path, name: &str, subs: Vec<Subscription>) -> Result<(Store, Engine), BoxErr> {
    let store = open_fast(&dir.join(format!("{name}.db")))?;
    let e = engine(&store, name, subs)?;
    Ok((store, e))
}

/// Create a document honestly in the attacker's store; returns its change(s) and the attacker's author and next
/// counter, and the document's version (for crafting a change that follows it).
fn honest_doc(store: &Store, id: &str, fields: Value) -> Result<(PeerId, u64, VersionVector), BoxErr> {
    store.upsert_value("items", Some(id), fields)?;
    let doc = store.document("items", id)?.ok_or("document vanished")?;
    let author = store.author_id()?;
    let next = doc.version().get(author) + 1;
    Ok((author, next, doc.version().clone()))
}

fn change_msg(dcs: &[DocChange]) -> Vec<u8> {
    Message::Changes { changes: dcs.iter().map(|dc| WireChange::unsigned(dc.encode())).collect() }.encode()
}

fn now_ts() -> Timestamp {
    Timestamp::new(shoaldb::crdt::clock::wall_clock_ms(), 0)
}

fn summary_of(store: &Store) -> Result<Summary, BoxErr> {
    Ok(store.replica().summary()?)
}

/// Every attack: set up, measure the victim's work and memory on the attack's frames, check the outcome.
fn run(name: &str, quick: bool, dir: &std::path::Path) -> Result<(Outcome, Victim, usize), BoxErr> {
    let scale = |full: usize, q: usize| if quick { q } else { full };
    match name {
        "deep_value" => {
            let mut v = victim(dir, 0)?;
            let (_s, mut a) = attacker(dir, "attacker", vec![])?;
            let (lv, la) = connect(&mut v, &mut a)?;
            let depth = 1_000_000;
            let marker = "\u{1}deep value goes here\u{1}";
            let dc = DocChange {
                collection: "items".into(),
                doc_id: "deep".into(),
                change: Change {
                    peer: PeerId(0xa77a_c4e5),
                    start: 1,
                    ts: now_ts(),
                    deps: VersionVector::default(),
                    ops: vec![Op::Set { path: vec![Seg::Key("v".into())], value: Scalar::Str(marker.into()) }],
                },
                signature: None,
            };
            // Swap the marker string (postcard: variant 4, length, bytes) for a list nested `depth` deep (variant
            // 6, length 1, …, then null): what a hostile encoder writes, which no honest encoder could.
            let bytes = dc.encode();
            let at = bytes.windows(marker.len()).position(|w| w == marker.as_bytes()).ok_or("marker not found")?;
            let mut deep = bytes[..at - 2].to_vec();
            for _ in 0..depth {
                deep.extend_from_slice(&[6, 1]);
            }
            deep.push(0);
            deep.extend_from_slice(&bytes[at + marker.len()..]);
            let msg = Message::Changes { changes: vec![WireChange::unsigned(deep)] }.encode();
            let before = summary_of(&v.store)?;
            let frames = seal(&mut a, la, &msg)?;
            let base = alloc::reset_peak();
            v.feed(lv, &frames);
            let peak = alloc::peak() - base;
            let unchanged = summary_of(&v.store)? == before && v.store.get("items", "deep")?.is_none();
            Ok((
                Outcome {
                    bytes_sent: msg.len(),
                    link: Some(lv),
                    peak_bound: PEAK_BOUND_BYTES,
                    safe: unchanged && v.engine.is_closed(lv),
                    outcome: format!("store unchanged: {unchanged}, link closed: {}", v.engine.is_closed(lv)),
                },
                v,
                peak,
            ))
        }
        "insert_elems" | "delete_spans" => {
            let mut v = victim(dir, 0)?;
            let (s, mut a) = attacker(dir, "attacker", vec![])?;
            let text_len = scale(100_000, 10_000);
            let field = if name == "insert_elems" { Value::Array(vec![]) } else { Value::Text("x".repeat(text_len)) };
            let (author, next, deps) = honest_doc(&s, "target", Value::Map([("a".to_string(), field)].into()))?;
            // The ids of the text's characters: the counters of the honest change's text insert.
            let mut first_char = 0;
            for dc in s.replica().changes_since(&Summary::new())? {
                let mut counter = dc.change.start;
                for op in &dc.change.ops {
                    if matches!(op, Op::InsertText { .. }) {
                        first_char = counter;
                    }
                    counter += op.width();
                }
            }
            let (lv, la) = connect(&mut v, &mut a)?;
            let ops: Vec<Op> = if name == "insert_elems" {
                (0..scale(4, 1))
                    .map(|_| Op::InsertElems {
                        path: vec![Seg::Key("a".into())],
                        origin_left: None,
                        origin_right: None,
                        count: 1 << 22,
                    })
                    .collect()
            } else {
                // The same existing characters, named again and again.
                let spans = (0..scale(1000, 100))
                    .map(|_| IdSpan { peer: author, start: first_char, len: text_len as u64 })
                    .collect::<Vec<_>>();
                vec![Op::DeleteText { path: vec![Seg::Key("a".into())], spans }]
            };
            let dc = DocChange {
                collection: "items".into(),
                doc_id: "target".into(),
                change: Change { peer: author, start: next, ts: now_ts(), deps, ops },
                signature: None,
            };
            let msg = change_msg(&[dc]);
            let before = v.store.get("items", "target")?;
            if before.is_none() {
                return Err("the honest document did not sync".into());
            }
            let frames = seal(&mut a, la, &msg)?;
            let base = alloc::reset_peak();
            v.feed(lv, &frames);
            v.answer(lv, 64);
            let peak = alloc::peak() - base;
            let after = v.store.get("items", "target")?;
            // The safe outcomes: refused (link closed, document unchanged), or applied within the bounds.
            let refused = v.engine.is_closed(lv) && after == before;
            Ok((
                Outcome {
                    bytes_sent: msg.len(),
                    link: Some(lv),
                    peak_bound: PEAK_BOUND_BYTES,
                    safe: refused || (peak <= PEAK_BOUND_BYTES && !v.engine.is_closed(lv)),
                    outcome: if refused { "refused".into() } else { "applied".into() },
                },
                v,
                peak,
            ))
        }
        "interest" | "summary" => {
            let docs = scale(100_000, 10_000);
            let mut v = victim(dir, docs)?;
            let (_s, mut a) = attacker(dir, "attacker", vec![])?;
            // An honest bystander linked to the victim: it must still get the victim's next edit.
            let (bs, mut b) = attacker(dir, "bystander", vec![Subscription::everything()])?;
            let (lvb, lb) = connect(&mut v, &mut b)?;
            let (lv, la) = connect(&mut v, &mut a)?;
            let msg = if name == "interest" {
                // The costliest interest a victim accepts: as many filters of the collection as allowed, as long as
                // allowed, never matching, so every document is tested against all of them. (1,024 filters of 4 KiB,
                // ~4 MB, is refused whole: `MAX_FILTERS_PER_COLLECTION`.)
                let per_filter = MAX_FILTER_BYTES_PER_COLLECTION / MAX_FILTERS_PER_COLLECTION;
                let subs = (0..MAX_FILTERS_PER_COLLECTION)
                    .map(|i| {
                        let mut filter = String::new();
                        for k in 0.. {
                            let term = format!("f1 == -{}", i * 10_000 + k);
                            if filter.len() + term.len() + 4 > per_filter {
                                break;
                            }
                            if !filter.is_empty() {
                                filter.push_str(" or ");
                            }
                            filter.push_str(&term);
                        }
                        Subscription::filtered("items", &filter)
                    })
                    .collect();
                Message::Interest { subscriptions: subs }.encode()
            } else {
                let mut claim = Summary::new();
                claim.insert(v.store.author_id()?, 1, u64::MAX);
                for p in 1..=1000u64 {
                    claim.insert(PeerId(p), 1, u64::MAX);
                }
                Message::Summary { summary: claim }.encode()
            };
            let frames = seal(&mut a, la, &msg)?;
            let base = alloc::reset_peak();
            v.feed(lv, &frames);
            v.answer(lv, 1024);
            let peak = alloc::peak() - base;
            v.store.upsert("items", json!({"_id": "after-attack", "x": 1}))?;
            settle(&mut v, lvb, &mut b, lb);
            let bystander_ok = bs.get("items", "after-attack")?.is_some() && !v.engine.is_closed(lvb);
            Ok((
                Outcome {
                    bytes_sent: msg.len(),
                    link: Some(lv),
                    peak_bound: PEAK_BOUND_BYTES,
                    safe: bystander_ok,
                    outcome: format!("bystander still syncs: {bystander_ok}"),
                },
                v,
                peak,
            ))
        }
        "resync_flood" => {
            let mut v = victim(dir, 0)?;
            let (s, mut a) = attacker(dir, "attacker", vec![])?;
            let (lv, la) = connect(&mut v, &mut a)?;
            // The victim first holds one change of each of many authors (cheap for the attacker to make), so its
            // summary is large; then the attacker asks for it again and again and never reads.
            let authors = scale(10_000, 1_000) as u64;
            s.upsert("items", json!({"_id": "template", "x": 1}))?;
            let template = s.replica().changes_since(&Summary::new())?.pop().ok_or("no template change")?;
            let mut sent = 0;
            for chunk in (0..authors).collect::<Vec<_>>().chunks(500) {
                let dcs: Vec<DocChange> = chunk
                    .iter()
                    .map(|&i| DocChange {
                        collection: "items".into(),
                        doc_id: format!("r{i}"),
                        change: Change { peer: PeerId(0x1000_0000 + i), start: 1, ..template.change.clone() },
                        signature: None,
                    })
                    .collect();
                let msg = change_msg(&dcs);
                sent += msg.len();
                let frames = seal(&mut a, la, &msg)?;
                v.feed(lv, &frames);
                v.answer(lv, usize::MAX).iter().for_each(|f| a.on_frame(la, f));
            }
            let resyncs = scale(20_000, 5_000);
            let mut frames = Vec::with_capacity(resyncs);
            for _ in 0..resyncs {
                frames.extend(seal(&mut a, la, &Message::Resync.encode())?);
            }
            sent += frames.iter().map(Vec::len).sum::<usize>();
            let base = alloc::reset_peak();
            v.feed(lv, &frames);
            let peak = alloc::peak() - base;
            Ok((
                Outcome {
                    bytes_sent: sent,
                    link: Some(lv),
                    peak_bound: PEAK_BOUND_BYTES,
                    safe: peak <= PEAK_BOUND_BYTES,
                    outcome: format!("{resyncs} summaries asked for"),
                },
                v,
                peak,
            ))
        }
        "reassembly" => {
            let mut v = victim(dir, 0)?;
            let n = scale(16, 4);
            let mut attackers = Vec::new();
            for i in 0..n {
                let (s, mut a) = attacker(dir, &format!("attacker{i}"), vec![])?;
                let (lv, la) = connect(&mut v, &mut a)?;
                attackers.push((s, a, lv, la));
            }
            let msg = Message::Changes { changes: vec![WireChange::unsigned(vec![0u8; 60 << 20])] }.encode();
            let mut all = Vec::new();
            for (_, a, lv, la) in attackers.iter_mut() {
                let mut frames = seal(a, *la, &msg)?;
                frames.pop(); // the last piece never comes
                all.push((*lv, frames));
            }
            let sent = all.iter().map(|(_, f)| f.iter().map(Vec::len).sum::<usize>()).sum();
            let base = alloc::reset_peak();
            for (lv, frames) in &all {
                v.feed(*lv, frames);
            }
            let peak = alloc::peak() - base;
            drop(all);
            let closed = attackers.iter().filter(|(_, _, lv, _)| v.engine.is_closed(*lv)).count();
            // The node's budget for partial messages, plus each link's free share and the frames in flight.
            let reassembly_bound = REASSEMBLY_SHARED_BYTES + (n + 4) * REASSEMBLY_FREE_BYTES;
            Ok((
                Outcome {
                    bytes_sent: sent,
                    link: None,
                    peak_bound: reassembly_bound,
                    safe: peak <= reassembly_bound,
                    outcome: format!("{n} attackers, {closed} of their links closed"),
                },
                v,
                peak,
            ))
        }
        "pending_flood" => {
            let mut v = victim(dir, 0)?;
            let (_s, mut a) = attacker(dir, "attacker", vec![])?;
            let (lv, la) = connect(&mut v, &mut a)?;
            let n = scale(100_000, 10_000) as u64;
            // Changes that depend on a counter of an author nobody will ever send.
            let ghost: VersionVector = [(PeerId(0x6057), 1u64)].into_iter().collect();
            let mut frames = Vec::new();
            let mut sent = 0;
            for chunk in (0..n).collect::<Vec<_>>().chunks(400) {
                let dcs: Vec<DocChange> = chunk
                    .iter()
                    .map(|&i| DocChange {
                        collection: "items".into(),
                        doc_id: format!("p{}", i % 1000),
                        change: Change {
                            peer: PeerId(0xf100d),
                            start: i + 1,
                            ts: now_ts(),
                            deps: ghost.clone(),
                            ops: vec![Op::Set { path: vec![Seg::Key("x".into())], value: Scalar::Int(i as i64) }],
                        },
                        signature: None,
                    })
                    .collect();
                let msg = change_msg(&dcs);
                sent += msg.len();
                frames.push(seal(&mut a, la, &msg)?);
            }
            let base = alloc::reset_peak();
            for f in &frames {
                v.feed(lv, f);
                v.answer(lv, usize::MAX).iter().for_each(|f| a.on_frame(la, f));
            }
            let peak = alloc::peak() - base;
            // An honest author's two changes of one document arrive out of order (the second first).
            let honest = open_fast(&dir.join("honest.db"))?;
            honest.upsert("items", json!({"_id": "honest", "a": 1}))?;
            let first = honest.replica().changes_since(&Summary::new())?;
            let known = honest.replica().summary()?;
            honest.upsert("items", json!({"_id": "honest", "b": 2}))?;
            let second = honest.replica().changes_since(&known)?;
            v.store.replica().apply_changes(&second)?;
            v.store.replica().apply_changes(&first)?;
            let got = v.store.get("items", "honest")?;
            let applied = got.as_ref().is_some_and(|d| d["a"] == json!(1) && d["b"] == json!(2));
            Ok((
                Outcome {
                    bytes_sent: sent,
                    link: Some(lv),
                    peak_bound: PEAK_BOUND_BYTES,
                    safe: applied,
                    outcome: format!("honest out-of-order change applied: {applied}"),
                },
                v,
                peak,
            ))
        }
        other => Err(format!("unknown attack {other}").into()),
    }
}

fn child(name: &str, quick: bool) -> Result<(), BoxErr> {
    let dir = tempfile::tempdir()?;
    let (mut o, mut v, peak) = run(name, quick, dir.path())?;
    if let Some(link) = o.link {
        let state = match close_reason(&mut v, link) {
            Some(reason) => format!("attacker link closed: {reason}"),
            None => "attacker link open".to_string(),
        };
        o.outcome = format!("{}; {state}", o.outcome);
    }
    let victim_ms = v.longest.as_secs_f64() * 1000.0;
    emit(&json!({
        "bench": "attack",
        "attack": name,
        "bytes_sent": o.bytes_sent,
        "victim_ms": (victim_ms * 10.0).round() / 10.0,
        "victim_total_ms": (v.total.as_secs_f64() * 10_000.0).round() / 10.0,
        "victim_peak_bytes": peak,
        "time_bound_ms": TIME_BOUND_MS,
        "peak_bound_bytes": o.peak_bound,
        "bounded": victim_ms <= TIME_BOUND_MS && peak <= o.peak_bound,
        "safe": o.safe,
        "outcome": o.outcome,
        "quick": quick,
    }));
    Ok(())
}

fn main() -> Result<(), BoxErr> {
    let argv: Vec<String> = std::env::args().collect();
    let args = Args::parse();
    if let Some(i) = argv.iter().position(|a| a == "--attack") {
        let name = argv.get(i + 1).ok_or("--attack needs a name")?;
        return child(name, args.quick);
    }
    let exe = std::env::current_exe()?;
    for &name in ATTACKS.iter().filter(|n| args.wants(n)) {
        eprintln!("attack {name}…");
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["--attack", name]);
        if args.quick {
            cmd.arg("--quick");
        }
        let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
        let rows = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && !rows.trim().is_empty() {
            print!("{rows}");
        } else {
            // The victim died (a stack overflow, the allocator giving up) or the set-up failed.
            emit(&json!({
                "bench": "attack",
                "attack": name,
                "bounded": false,
                "safe": false,
                "outcome": format!("victim process ended: {}", out.status),
                "quick": args.quick,
            }));
        }
    }
    Ok(())
}
