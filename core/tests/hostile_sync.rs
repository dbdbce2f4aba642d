//! A device holding the app secret, attacking through the sync engine: after a genuine handshake it sends crafted
//! messages ([`Engine::send_raw`]) and reads — or does not read — what it is sent. Each test asserts the safe
//! outcome by counting (rows of the log read, frames queued, records kept, links up), never by timing.

#[path = "common/wires.rs"]
mod wires;
use serde_json::json;
use shoaldb::security::{AppSecret, Identity};
use shoaldb::store::{ApplyReport, DocChange, LogEntry, Replica, StoreReplica, Summary};
use shoaldb::sync::attachments::{MAX_RELAYED_ATTACHMENT_BYTES, MAX_SERVES_PER_LINK, PARTIAL_TTL_MS};
use shoaldb::sync::engine::{
    HANDSHAKE_TIMEOUT_MS, KEEPALIVE_MS, MAX_PRESENCE_RECORDS, PRESENCE_REFRESH_MS, PRESENCE_TTL_MS,
    REASSEMBLY_FREE_BYTES, REASSEMBLY_SHARED_BYTES,
};
use shoaldb::sync::session::{MAX_OUTBOX_MESSAGES, PUMP_SCAN_BYTES};
use shoaldb::sync::wire::{PresenceLink, MAX_CONTROL_MESSAGE_BYTES, MAX_FILTERS_PER_COLLECTION, MAX_SUBSCRIPTIONS};
use shoaldb::sync::{Engine, EngineEvent, LinkId, Message, Subscription, TransportKind};
use shoaldb::{PeerId, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn secret() -> AppSecret {
    AppSecret::from_bytes(b"hostile sync test secret").expect("secret")
}

/// A replica that counts the bytes of change log it hands to the engine (what the engine's work grows with).
#[derive(Clone)]
struct Counting {
    inner: StoreReplica,
    log_bytes: Arc<AtomicUsize>,
    /// Attachment lookups (one per attachment request taken on).
    lookups: Arc<AtomicUsize>,
}

impl Counting {
    fn count(&self, entries: &[LogEntry]) {
        self.log_bytes.fetch_add(entries.iter().map(LogEntry::wire_len).sum(), Ordering::Relaxed);
    }
}

impl Replica for Counting {
    fn peer_id(&self) -> PeerId {
        self.inner.peer_id()
    }
    fn summary(&self) -> shoaldb::Result<Summary> {
        self.inner.summary()
    }
    fn changes_since(&self, summary: &Summary) -> shoaldb::Result<Vec<DocChange>> {
        self.inner.changes_since(summary)
    }
    fn apply_changes(&self, changes: &[DocChange]) -> shoaldb::Result<ApplyReport> {
        self.inner.apply_changes(changes)
    }
    fn log_missing(&self, have: &Summary, skip: &Summary, max_bytes: usize) -> shoaldb::Result<Vec<LogEntry>> {
        let out = self.inner.log_missing(have, skip, max_bytes)?;
        self.count(&out);
        Ok(out)
    }
    fn log_of_doc(&self, doc: i64) -> shoaldb::Result<Vec<LogEntry>> {
        let out = self.inner.log_of_doc(doc)?;
        self.count(&out);
        Ok(out)
    }
    fn view_of_doc(&self, doc: i64) -> shoaldb::Result<Option<serde_json::Value>> {
        self.inner.view_of_doc(doc)
    }
    fn doc_number(&self, collection: &str, id: &str) -> shoaldb::Result<Option<i64>> {
        self.inner.doc_number(collection, id)
    }
    fn attachment_len(&self, hash: &[u8; 32]) -> shoaldb::Result<Option<u64>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.inner.attachment_len(hash)
    }
    fn read_attachment_chunk(&self, hash: &[u8; 32], idx: u64) -> shoaldb::Result<Vec<u8>> {
        self.inner.read_attachment_chunk(hash, idx)
    }
    fn attachment_received(&self, hash: &[u8; 32]) -> shoaldb::Result<u64> {
        self.inner.attachment_received(hash)
    }
    fn read_attachment_received(&self, hash: &[u8; 32], offset: u64) -> shoaldb::Result<Option<Vec<u8>>> {
        self.inner.read_attachment_received(hash, offset)
    }
    fn attachments_received(&self, max: usize) -> shoaldb::Result<Vec<[u8; 32]>> {
        self.inner.attachments_received(max)
    }
    fn forget_attachment_received_from(&self, hash: &[u8; 32], offset: u64) -> shoaldb::Result<()> {
        self.inner.forget_attachment_received_from(hash, offset)
    }
    fn receive_attachment_part(&self, hash: &[u8; 32], offset: u64, data: &[u8]) -> shoaldb::Result<u64> {
        self.inner.receive_attachment_part(hash, offset, data)
    }
    fn finish_attachment(&self, hash: &[u8; 32], total: u64) -> shoaldb::Result<()> {
        self.inner.finish_attachment(hash, total)
    }
}

/// Devices (engines on stores) and the wires between them; every engine reads the same virtual time.
struct Net {
    _dir: tempfile::TempDir,
    stores: Vec<Store>,
    engines: Vec<Engine>,
    log_bytes: Vec<Arc<AtomicUsize>>,
    lookups: Vec<Arc<AtomicUsize>>,
    /// (a, link at a, b, link at b)
    wires: Vec<(usize, LinkId, usize, LinkId)>,
    now: u64,
}

impl Net {
    fn new(subs: Vec<Vec<Subscription>>) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut net = Net {
            _dir: dir,
            stores: Vec::new(),
            engines: Vec::new(),
            log_bytes: Vec::new(),
            lookups: Vec::new(),
            wires: Vec::new(),
            now: 0,
        };
        for (i, s) in subs.into_iter().enumerate() {
            let store = Store::open(net._dir.path().join(format!("{i}.db"))).expect("store");
            let counter = Arc::new(AtomicUsize::new(0));
            let lookups = Arc::new(AtomicUsize::new(0));
            let replica = Counting { inner: store.replica(), log_bytes: counter.clone(), lookups: lookups.clone() };
            let id = Identity::generate().expect("identity");
            let engine = Engine::new(replica, id, secret(), &format!("dev{i}"), s, 0);
            net.stores.push(store);
            net.engines.push(engine);
            net.log_bytes.push(counter);
            net.lookups.push(lookups);
        }
        net
    }

    /// A link from `a` (dialling) to `b`; returns the wire's index.
    fn connect(&mut self, a: usize, b: usize) -> usize {
        let la = self.engines[a].add_link(TransportKind::Lan, true).expect("link");
        let lb = self.engines[b].add_link(TransportKind::Lan, false).expect("link");
        self.wires.push((a, la, b, lb));
        self.wires.len() - 1
    }

    /// Move frames until nothing moves, except from `deaf`'s peers to `deaf` on wire `w` (it stops reading).
    fn settle_except(&mut self, deaf: Option<(usize, usize)>) {
        wires::settle(&mut self.engines, &self.wires, deaf);
    }

    fn settle(&mut self) {
        self.settle_except(None);
    }

    /// Let `ms` of virtual time pass, a second at a time, moving frames in between.
    fn pass(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 1000).min(end);
            for e in &mut self.engines {
                e.tick(self.now);
            }
            self.settle();
        }
    }

    /// The link of wire `w` at device `d`.
    fn link(&self, w: usize, d: usize) -> LinkId {
        let (a, la, b, lb) = self.wires[w];
        if d == a {
            la
        } else {
            assert_eq!(d, b);
            lb
        }
    }

    /// Device `from` sends `msg` (any bytes) over wire `w`, as a hostile device would.
    fn send_raw(&mut self, w: usize, from: usize, bytes: &[u8]) {
        let link = self.link(w, from);
        self.engines[from].send_raw(link, bytes).expect("send_raw");
    }

    /// Deliver the frames `from` has queued on wire `w` (only those: nothing is produced on the way back).
    fn deliver(&mut self, w: usize, from: usize) -> usize {
        let (a, la, b, lb) = self.wires[w];
        let (lf, to, lt) = if from == a { (la, b, lb) } else { (lb, a, la) };
        let mut n = 0;
        while let Some(f) = self.engines[from].poll_frame(lf) {
            self.engines[to].on_frame(lt, &f);
            n += 1;
        }
        n
    }

    fn is_up(&self, w: usize) -> bool {
        let (a, la, b, lb) = self.wires[w];
        !self.engines[a].is_closed(la) && !self.engines[b].is_closed(lb)
    }

    fn link_down_reasons(&mut self, d: usize) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(e) = self.engines[d].poll_event() {
            if let EngineEvent::LinkDown { reason, .. } = e {
                out.push(reason);
            }
        }
        out
    }
}

fn write_docs(store: &Store, n: usize, body: usize) {
    store
        .write(|t| {
            for i in 0..n {
                t.upsert("tasks", json!({"_id": format!("t{i}"), "done": i % 2 == 0, "body": "x".repeat(body)}))?;
            }
            Ok(())
        })
        .expect("write");
}

/// A second `Summary` claiming every counter of every author makes the victim look again at the documents it
/// skipped — but only at what it holds, and a bounded slice of the log at a time: handling the message itself reads
/// no log at all, and no single poll reads much more than [`PUMP_SCAN_BYTES`].
#[test]
fn a_summary_claiming_everything_costs_bounded_slices() {
    // Victim 0 holds 3000 documents; attacker 1 asks for those with `done == false`, so half are skipped.
    let mut net = Net::new(vec![vec![], vec![Subscription::filtered("tasks", "done == false")]]);
    write_docs(&net.stores[0], 3000, 1000);
    let w = net.connect(0, 1);
    net.settle();
    assert_eq!(net.stores[1].find("tasks", &shoaldb::Query::all()).expect("find").len(), 1500);
    let log_total: usize = net.stores[0]
        .replica()
        .log_missing(&Summary::new(), &Summary::new(), usize::MAX)
        .unwrap()
        .iter()
        .map(LogEntry::wire_len)
        .sum();
    assert!(log_total > 2 * PUMP_SCAN_BYTES, "the log is large enough to matter ({log_total} bytes)");

    // The claim: every counter of the victim's author, and of a thousand authors that do not exist.
    let mut claim = Summary::new();
    claim.insert(net.stores[0].peer_id(), 1, u64::MAX);
    for p in 0..1000u64 {
        claim.insert(PeerId(p * 7 + 3), 1, u64::MAX);
    }
    net.send_raw(w, 1, &Message::Summary { summary: claim }.encode());
    net.log_bytes[0].store(0, Ordering::Relaxed);
    net.deliver(w, 1);
    assert_eq!(net.log_bytes[0].load(Ordering::Relaxed), 0, "handling the summary read the log");
    // Every poll does a bounded slice of the work.
    let link = net.link(w, 0);
    let mut polls = 0;
    loop {
        net.log_bytes[0].store(0, Ordering::Relaxed);
        let frame = net.engines[0].poll_frame(link);
        let read = net.log_bytes[0].load(Ordering::Relaxed);
        assert!(read <= PUMP_SCAN_BYTES + 256 * 1024, "one poll read {read} bytes of log");
        let Some(f) = frame else { break };
        let peer = net.link(w, 1);
        net.engines[1].on_frame(peer, &f);
        while let Some(back) = net.engines[1].poll_frame(peer) {
            net.engines[0].on_frame(link, &back);
        }
        polls += 1;
        assert!(polls < 10_000);
    }
    assert!(polls > 0);
    assert!(net.is_up(w));
}

/// Summaries of many interleaved ranges merge linearly (a range-by-range insert would take the product of their
/// lengths: minutes), and what the victim believes the peer holds stays bounded.
#[test]
fn summaries_of_many_interleaved_ranges_merge_linearly() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![Subscription::everything()]]);
    write_docs(&net.stores[0], 10, 10);
    let w = net.connect(0, 1);
    net.settle();
    for round in 0..2u64 {
        let mut claim = Summary::new();
        for i in 0..200_000u64 {
            claim.insert(PeerId(42), 10 + i * 4 + round * 2, 10 + i * 4 + round * 2);
        }
        net.send_raw(w, 1, &Message::Summary { summary: claim }.encode());
        net.deliver(w, 1);
    }
    assert!(net.is_up(w));
    net.stores[0].upsert("tasks", json!({"_id": "after", "done": true})).unwrap();
    net.settle();
    assert!(net.stores[1].get("tasks", "after").unwrap().is_some(), "the victim still syncs");
}

/// `Resync` answers are coalesced: ten thousand of them from a peer that does not read queue one summary.
#[test]
fn resyncs_from_a_peer_that_does_not_read_queue_one_summary() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![Subscription::everything()]]);
    write_docs(&net.stores[0], 10, 10);
    let w = net.connect(0, 1);
    net.settle();
    let resync = Message::Resync.encode();
    for _ in 0..10_000 {
        net.send_raw(w, 1, &resync);
    }
    net.deliver(w, 1);
    assert!(net.is_up(w), "a peer asking again is not an error");
    let frames = net.deliver(w, 0);
    assert!(frames <= 4, "{frames} frames queued for 10000 resyncs");
}

/// A peer that keeps asking (attachment requests: each is answered) and never reads is disconnected once
/// [`MAX_OUTBOX_MESSAGES`] answers wait for it; the victim's other links stay up.
#[test]
fn a_peer_that_stops_reading_is_disconnected() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![], vec![Subscription::everything()]]);
    let w = net.connect(0, 1);
    let honest = net.connect(0, 2);
    net.settle();
    for request in 0..(MAX_OUTBOX_MESSAGES as u64 + 10) {
        let ask = Message::FetchAttachment { request, hash: [7; 32], offset: 0, hops: 0 };
        net.send_raw(w, 1, &ask.encode());
    }
    net.deliver(w, 1);
    assert!(net.engines[0].is_closed(net.link(w, 0)), "the victim kept buffering for a peer that does not read");
    let reasons = net.link_down_reasons(0);
    assert!(reasons.iter().any(|r| r.contains("stopped reading")), "{reasons:?}");
    assert!(net.is_up(honest));
    net.stores[2].upsert("tasks", json!({"_id": "still", "done": true})).unwrap();
    net.settle();
    assert!(net.stores[0].get("tasks", "still").unwrap().is_some());
}

/// Messages in reassembly share a node-wide budget: two peers each holding a partial message larger than
/// [`REASSEMBLY_FREE_BYTES`] cannot together exceed [`REASSEMBLY_SHARED_BYTES`]; the one that would is closed.
#[test]
fn partial_messages_share_a_node_wide_budget() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![], vec![]]);
    let w1 = net.connect(1, 0);
    let w2 = net.connect(2, 0);
    net.settle();
    // Each attacker sends 3/4 of the shared budget (a message that never ends: the last frame is withheld).
    // Messages of changes (the kind allowed to be that large) that never end.
    let mut big = Message::Changes { changes: vec![] }.encode();
    big.resize(REASSEMBLY_FREE_BYTES + REASSEMBLY_SHARED_BYTES * 3 / 4, 0);
    for (w, from) in [(w1, 1), (w2, 2)] {
        net.send_raw(w, from, &big);
        let link = net.link(w, from);
        let mut frames = Vec::new();
        while let Some(f) = net.engines[from].poll_frame(link) {
            frames.push(f);
        }
        frames.pop();
        let to = net.link(w, 0);
        for f in frames {
            net.engines[0].on_frame(to, &f);
        }
    }
    assert!(!net.engines[0].is_closed(net.link(w1, 0)), "the first partial message fits");
    assert!(net.engines[0].is_closed(net.link(w2, 0)), "the second one went over the node's budget");
}

/// An unauthenticated link is closed after [`HANDSHAKE_TIMEOUT_MS`], not after the link timeout.
#[test]
fn handshakes_that_do_not_finish_time_out_fast() {
    let mut net = Net::new(vec![vec![]]);
    let silent = net.engines[0].add_link(TransportKind::Lan, false).expect("link");
    net.engines[0].tick(HANDSHAKE_TIMEOUT_MS - 1);
    assert!(!net.engines[0].is_closed(silent));
    net.engines[0].tick(HANDSHAKE_TIMEOUT_MS);
    assert!(net.engines[0].is_closed(silent));
    let reasons = net.link_down_reasons(0);
    assert!(reasons.iter().any(|r| r.contains("handshake")), "{reasons:?}");
}

/// Too many filters for one collection are refused (every document of it would be checked against each).
#[test]
fn an_interest_with_too_many_filters_for_one_collection_is_refused() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![]]);
    write_docs(&net.stores[0], 10, 10);
    let w = net.connect(0, 1);
    net.settle();
    let subs: Vec<Subscription> =
        (0..=MAX_FILTERS_PER_COLLECTION).map(|i| Subscription::filtered("tasks", &format!("n == {i}"))).collect();
    net.send_raw(w, 1, &Message::Interest { subscriptions: subs }.encode());
    net.log_bytes[0].store(0, Ordering::Relaxed);
    net.deliver(w, 1);
    assert!(net.engines[0].is_closed(net.link(w, 0)));
    assert_eq!(net.log_bytes[0].load(Ordering::Relaxed), 0);
}

/// A relay whose neighbour subscribes to [`MAX_SUBSCRIPTIONS`] collections asks its other neighbours for a merged
/// interest they accept: every link stays up and both ends converge through it.
#[test]
fn a_relay_with_a_neighbour_of_many_subscriptions_keeps_its_other_links() {
    let many: Vec<Subscription> = (0..MAX_SUBSCRIPTIONS).map(|i| Subscription::collection(&format!("c{i}"))).collect();
    let many_filtered: Vec<Subscription> =
        (0..40).map(|i| Subscription::filtered("tasks", &format!("n == {i}"))).collect();
    // 0: the neighbour with many subscriptions; 1: the relay (its own "tasks"); 2 and 3: other neighbours.
    let mut net = Net::new(vec![
        many,
        vec![Subscription::collection("tasks")],
        vec![Subscription::collection("c5")],
        many_filtered,
    ]);
    let a = net.connect(0, 1);
    let b = net.connect(1, 2);
    let c = net.connect(1, 3);
    net.settle();
    net.stores[2].upsert("c5", json!({"_id": "x", "v": 1})).unwrap();
    net.stores[0].upsert("c5", json!({"_id": "y", "v": 2})).unwrap();
    net.stores[3].upsert("tasks", json!({"_id": "z", "n": 3})).unwrap();
    net.settle();
    assert!(net.is_up(a) && net.is_up(b) && net.is_up(c));
    assert!(
        net.stores[0].get("c5", "x").unwrap().is_some(),
        "the many-subscription neighbour got c5 through the relay"
    );
    assert!(net.stores[2].get("c5", "y").unwrap().is_some());
    assert!(net.stores[1].get("tasks", "z").unwrap().is_some());
}

fn presence_of(from: [u8; 32], seq: u64, name: &str, links: Vec<PresenceLink>) -> Vec<u8> {
    Message::Presence { origin: from, seq, name: name.into(), links, signature: None }.encode()
}

/// A forged presence record with `seq = u64::MAX` does not freeze or rename a device: it is refused, and a forged
/// record within the clock bound lasts only until the device's own refresh.
#[test]
fn presence_cannot_be_frozen_by_a_huge_sequence_number() {
    // 0 (victim device X) — 1 (relay) — 2 (observer); 3 (attacker) linked to 1.
    let mut net = Net::new(vec![vec![], vec![], vec![], vec![]]);
    net.connect(0, 1);
    net.connect(1, 2);
    let m = net.connect(3, 1);
    net.settle();
    let x = net.engines[0].device_key();
    let name_at_2 = |net: &Net| net.engines[2].peers().into_iter().find(|p| p.device == x).map(|p| p.name);
    assert_eq!(name_at_2(&net).as_deref(), Some("dev0"));

    net.send_raw(m, 3, &presence_of(x.0, u64::MAX, "evil", vec![]));
    net.settle();
    assert_eq!(name_at_2(&net).as_deref(), Some("dev0"), "a record numbered u64::MAX was taken");

    // Within the clock bound, a forged record is taken for a while — until the device's own refresh.
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    net.send_raw(m, 3, &presence_of(x.0, wall + 60_000, "evil", vec![]));
    net.settle();
    net.pass(PRESENCE_REFRESH_MS + PRESENCE_TTL_MS + KEEPALIVE_MS);
    assert_eq!(name_at_2(&net).as_deref(), Some("dev0"), "the forged record outlived the device's refresh");
}

/// Records of devices that are gone expire, and the number kept is bounded.
#[test]
fn presence_records_expire_and_are_bounded() {
    let mut net = Net::new(vec![vec![], vec![]]);
    let m = net.connect(1, 0);
    net.settle();
    let before = net.engines[0].presence_records();
    for i in 0..(MAX_PRESENCE_RECORDS as u32 + 100) {
        let mut origin = [0u8; 32];
        origin[..4].copy_from_slice(&i.to_le_bytes());
        origin[31] = 0xee;
        net.send_raw(m, 1, &presence_of(origin, 1, "ghost", vec![]));
    }
    net.deliver(m, 1);
    let with_ghosts = net.engines[0].presence_records();
    assert!(with_ghosts <= MAX_PRESENCE_RECORDS, "{with_ghosts} records kept");
    assert!(with_ghosts > before);
    net.pass(PRESENCE_TTL_MS + 2000);
    assert!(net.is_up(m));
    assert_eq!(net.engines[0].presence_records(), before, "the ghosts did not expire (the neighbour's record stays)");
}

/// An attachment server cannot make the fetching device store more than the token's length: a `total` other than
/// the token's closes its link before a byte is stored.
#[test]
fn an_attachment_server_cannot_claim_another_length() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![]]);
    let w = net.connect(0, 1);
    net.settle();
    let hash = [9u8; 32];
    let len = 1000;
    net.engines[0].fetch_attachment(hash, len).expect("fetch");
    // The first request of the victim's engine is number 1; the attacker answers it at once with a larger total.
    let chunk = Message::AttachmentChunk { request: 1, offset: 0, total: 1 << 40, data: vec![1; 100_000] };
    net.send_raw(w, 1, &chunk.encode());
    net.deliver(w, 1);
    assert!(net.engines[0].is_closed(net.link(w, 0)), "a chunk claiming another length was taken");
    assert_eq!(net.stores[0].replica().attachment_received(&hash).unwrap(), 0, "bytes were stored");
}

/// The parts of an attachment whose fetch ended without it are dropped after [`PARTIAL_TTL_MS`].
#[test]
fn partial_attachment_parts_expire() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![], vec![]]);
    let w1 = net.connect(0, 1);
    net.connect(0, 2);
    net.settle();
    let hash = [5u8; 32];
    net.engines[0].fetch_attachment(hash, 1000).expect("fetch");
    // Device 1 is asked first (request 1): it sends part of the bytes, then goes.
    let chunk = Message::AttachmentChunk { request: 1, offset: 0, total: 1000, data: vec![1; 400] };
    net.send_raw(w1, 1, &chunk.encode());
    net.deliver(w1, 1);
    assert_eq!(net.stores[0].replica().attachment_received(&hash).unwrap(), 400);
    let l = net.link(w1, 0);
    net.engines[0].remove_link(l, "gone");
    net.wires.remove(w1);
    // Device 2 does not have it: the fetch fails, the parts are kept for a while (a new fetch would resume)...
    net.settle();
    assert_eq!(net.stores[0].replica().attachment_received(&hash).unwrap(), 400);
    // ... and dropped after the TTL.
    net.pass(PARTIAL_TTL_MS + 1000);
    assert_eq!(net.stores[0].replica().attachment_received(&hash).unwrap(), 0);
}

/// Parts an earlier run left (a fetch interrupted by a restart, never asked for again) expire too; a fetch asked
/// for again keeps them.
#[test]
fn partial_attachment_parts_left_by_an_earlier_run_expire() {
    let mut net = Net::new(vec![vec![Subscription::everything()], vec![]]);
    let (left, again) = ([6u8; 32], [7u8; 32]);
    for hash in [left, again] {
        net.stores[0].replica().receive_attachment_part(&hash, 0, &[1; 300]).expect("part");
    }
    net.connect(0, 1);
    net.settle();
    net.pass(1000);
    net.pass(PARTIAL_TTL_MS / 2);
    assert_eq!(net.stores[0].replica().attachment_received(&left).unwrap(), 300, "kept for a while");
    // Half an hour on, the app asks for one of them again; nobody has it, so that fetch ends at once — now.
    net.engines[0].fetch_attachment(again, 1000).expect("fetch");
    net.pass(PARTIAL_TTL_MS / 2 + 1000);
    assert_eq!(net.stores[0].replica().attachment_received(&left).unwrap(), 0, "expired");
    assert_eq!(net.stores[0].replica().attachment_received(&again).unwrap(), 300, "its TTL counts from its fetch");
    net.pass(PARTIAL_TTL_MS / 2);
    assert_eq!(net.stores[0].replica().attachment_received(&again).unwrap(), 0, "expired in turn");
}

/// Handling any message reads none of the change log: what a message makes the engine look at is looked at by the
/// pumps, a bounded slice per poll (see [`a_summary_claiming_everything_costs_bounded_slices`]).
#[test]
fn handling_any_message_reads_no_log() {
    let mut net =
        Net::new(vec![vec![Subscription::everything()], vec![Subscription::filtered("tasks", "done == false")]]);
    write_docs(&net.stores[0], 2000, 200);
    let w = net.connect(0, 1);
    net.settle();
    let mut everything = Summary::new();
    everything.insert(net.stores[0].peer_id(), 1, u64::MAX);
    let filters: Vec<Subscription> =
        (0..MAX_FILTERS_PER_COLLECTION).map(|i| Subscription::filtered("tasks", &format!("n == {i}"))).collect();
    let messages = vec![
        Message::Hello { name: "x".repeat(200), store_peer: 1 },
        Message::Interest { subscriptions: filters },
        Message::Summary { summary: everything },
        Message::Resync,
        Message::Credit { bytes: u64::MAX },
        Message::Presence { origin: [3; 32], seq: 1, name: "p".into(), links: vec![], signature: None },
        Message::FetchAttachment { request: 99, hash: [4; 32], offset: 0, hops: 8 },
        Message::AttachmentChunk { request: 12345, offset: 0, total: 10, data: vec![0; 10] },
        Message::AttachmentUnavailable { request: 12345 },
        Message::Interest { subscriptions: vec![Subscription::everything()] },
    ];
    for m in messages {
        net.log_bytes[0].store(0, Ordering::Relaxed);
        for _ in 0..50 {
            net.send_raw(w, 1, &m.encode());
        }
        net.deliver(w, 1);
        assert_eq!(net.log_bytes[0].load(Ordering::Relaxed), 0, "handling {m:?} read the log");
        assert!(net.is_up(w), "{m:?} closed the link");
    }
    // Fifty more hellos did not make fifty more events.
    let link = net.link(w, 0);
    let mut ups = 0;
    while let Some(e) = net.engines[0].poll_event() {
        ups += usize::from(matches!(e, EngineEvent::LinkUp { link: l, .. } if l == link));
    }
    assert_eq!(ups, 1);
}

/// A relay does not store more than [`MAX_RELAYED_ATTACHMENT_BYTES`] for a neighbour, whatever length the device
/// it asks claims.
#[test]
fn a_relay_bounds_what_it_fetches_for_others() {
    // 0 asks relay 1, which asks 2 (the hostile server).
    let mut net = Net::new(vec![vec![], vec![], vec![]]);
    let w01 = net.connect(0, 1);
    let w12 = net.connect(1, 2);
    net.settle();
    let hash = [6u8; 32];
    let ask = Message::FetchAttachment { request: 1, hash, offset: 0, hops: 2 };
    net.send_raw(w01, 0, &ask.encode());
    net.deliver(w01, 0);
    // The relay's first request (number 1) goes to 2, which answers with a huge length.
    let chunk = Message::AttachmentChunk {
        request: 1,
        offset: 0,
        total: MAX_RELAYED_ATTACHMENT_BYTES + 1,
        data: vec![1; 1000],
    };
    net.send_raw(w12, 2, &chunk.encode());
    net.deliver(w12, 2);
    assert!(net.engines[1].is_closed(net.link(w12, 1)), "the relay took a length over its bound");
    assert_eq!(net.stores[1].replica().attachment_received(&hash).unwrap(), 0);
    assert!(net.is_up(w01));
}

/// A message's kind bounds its size from its first frame: a presence record (or any message but changes and
/// summaries) larger than [`MAX_CONTROL_MESSAGE_BYTES`] is refused before the rest is reassembled.
#[test]
fn a_message_too_large_for_its_kind_is_refused_early() {
    let mut net = Net::new(vec![vec![], vec![]]);
    let w = net.connect(1, 0);
    net.settle();
    let mut huge =
        Message::Presence { origin: [1; 32], seq: 1, name: String::new(), links: vec![], signature: None }.encode();
    huge.resize(3 * MAX_CONTROL_MESSAGE_BYTES, 0);
    net.send_raw(w, 1, &huge);
    let (from, to) = (net.link(w, 1), net.link(w, 0));
    let mut frames = Vec::new();
    while let Some(f) = net.engines[1].poll_frame(from) {
        frames.push(f);
    }
    let total = frames.len();
    let mut delivered = 0;
    for f in frames {
        if net.engines[0].is_closed(to) {
            break;
        }
        net.engines[0].on_frame(to, &f);
        delivered += 1;
    }
    assert!(net.engines[0].is_closed(to));
    assert!(delivered * 3 <= total + 3, "{delivered} of {total} frames were taken in");
}

/// One neighbour has this device serve at most [`MAX_SERVES_PER_LINK`] transfers at once: further requests are
/// answered unavailable without being taken on.
#[test]
fn one_neighbour_has_a_bounded_number_of_transfers_served() {
    let mut net = Net::new(vec![vec![], vec![]]);
    let w = net.connect(1, 0);
    net.settle();
    let token = net.stores[0].put_attachment_bytes(&vec![7u8; 300_000], Default::default()).unwrap();
    net.lookups[0].store(0, Ordering::Relaxed);
    for request in 0..(4 * MAX_SERVES_PER_LINK as u64) {
        let ask = Message::FetchAttachment { request, hash: token.hash, offset: 0, hops: 0 };
        net.send_raw(w, 1, &ask.encode());
    }
    net.deliver(w, 1);
    let taken = net.lookups[0].load(Ordering::Relaxed);
    assert_eq!(taken, MAX_SERVES_PER_LINK, "{taken} transfers taken on at once");
    assert!(net.is_up(w));
}

/// The other side of that bound: a device fetching many attachments at once asks each neighbour for at most
/// `MAX_SERVES_PER_LINK` at a time, the rest waiting for a slot, so none is refused for being one too many.
#[test]
fn many_fetches_at_once_wait_for_a_slot_rather_than_fail() {
    use shoaldb::sync::FetchEvent;
    let mut net = Net::new(vec![vec![], vec![]]);
    net.connect(1, 0);
    net.settle();
    let tokens: Vec<_> = (0..3 * MAX_SERVES_PER_LINK as u8)
        .map(|i| net.stores[0].put_attachment_bytes(&vec![i; 70_000], Default::default()).unwrap())
        .collect();
    for t in &tokens {
        net.engines[1].fetch_attachment(t.hash, t.len).unwrap();
    }
    net.settle();
    let mut done = 0;
    while let Some(e) = net.engines[1].poll_event() {
        match e {
            EngineEvent::Fetch(FetchEvent::Done { .. }) => done += 1,
            EngineEvent::Fetch(FetchEvent::Failed { reason, .. }) => panic!("a fetch failed: {reason}"),
            _ => {}
        }
    }
    assert_eq!(done, tokens.len());
    for t in &tokens {
        assert!(net.stores[1].has_attachment(t).unwrap());
    }
}
