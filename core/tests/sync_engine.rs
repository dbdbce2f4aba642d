//! Sync engines connected back to back in memory (no transport): catch-up, live pushes, filtered subscriptions,
//! multi-hop through devices that subscribe to nothing, one link per pair, presence, and garbage closing a link.

use serde_json::json;
use shoaldb::security::{AppSecret, Identity};
use shoaldb::store::Replica;
use shoaldb::sync::{Engine, EngineEvent, LinkId, Subscription, TransportKind};
use shoaldb::Store;
use std::collections::BTreeMap;

struct Net {
    dir: tempfile::TempDir,
    stores: Vec<Store>,
    engines: Vec<Engine>,
    /// (a, link at a, b, link at b)
    wires: Vec<(usize, LinkId, usize, LinkId)>,
    bytes: BTreeMap<(usize, usize), usize>,
    /// Bytes sent by (engine, link).
    link_bytes: BTreeMap<(usize, LinkId), usize>,
}

fn secret() -> AppSecret {
    AppSecret::from_bytes(b"test app secret").expect("secret")
}

impl Net {
    fn new(subs: Vec<Vec<Subscription>>) -> Net {
        let dir = tempfile::tempdir().expect("tempdir");
        let (stores, engines) = subs
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let store = Store::open(dir.path().join(format!("{i}.db"))).expect("store");
                let id = Identity::generate().expect("identity");
                let engine = Engine::new(store.replica(), id, secret(), &format!("dev{i}"), s, 0);
                (store, engine)
            })
            .unzip();
        Net { dir, stores, engines, wires: Vec::new(), bytes: BTreeMap::new(), link_bytes: BTreeMap::new() }
    }

    fn connect(&mut self, a: usize, b: usize) -> usize {
        self.connect_over(a, b, TransportKind::Lan).0
    }

    /// A link over `transport`: (wire index, link id at a).
    fn connect_over(&mut self, a: usize, b: usize, transport: TransportKind) -> (usize, LinkId) {
        let la = self.engines[a].add_link(transport, true).expect("link");
        let lb = self.engines[b].add_link(transport, false).expect("link");
        self.wires.push((a, la, b, lb));
        (self.wires.len() - 1, la)
    }

    fn disconnect(&mut self, w: usize) {
        let (a, la, b, lb) = self.wires.remove(w);
        self.engines[a].remove_link(la, "cut");
        self.engines[b].remove_link(lb, "cut");
    }

    /// Move frames until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.round(usize::MAX) {
                return;
            }
        }
        panic!("the network did not settle");
    }

    /// Move up to `frames` frames each way over every wire; whether any moved.
    fn round(&mut self, frames: usize) -> bool {
        let mut moved = false;
        for &(a, la, b, lb) in &self.wires.clone() {
            for (from, lf, to, lt) in [(a, la, b, lb), (b, lb, a, la)] {
                for _ in 0..frames {
                    let Some(f) = self.engines[from].poll_frame(lf) else { break };
                    *self.bytes.entry((from, to)).or_default() += f.len();
                    *self.link_bytes.entry((from, lf)).or_default() += f.len();
                    self.engines[to].on_frame(lt, &f);
                    moved = true;
                }
            }
        }
        moved
    }

    fn store(&self, i: usize) -> &Store {
        &self.stores[i]
    }
}

fn all() -> Vec<Subscription> {
    vec![Subscription::everything()]
}

#[test]
fn two_devices_catch_up_then_stay_live() {
    let mut net = Net::new(vec![all(), all()]);
    net.store(0).upsert("tasks", json!({"_id": "t1", "title": "milk"})).unwrap();
    net.store(1).upsert("notes", json!({"_id": "n1", "text": "hi"})).unwrap();
    net.connect(0, 1);
    net.settle();
    assert_eq!(net.store(1).get("tasks", "t1").unwrap().unwrap()["title"], "milk");
    assert_eq!(net.store(0).get("notes", "n1").unwrap().unwrap()["text"], "hi");
    // Live: a new write is pushed.
    net.store(0).update("tasks", "t1", |d| Ok(d.set("title", "oat milk")?)).unwrap();
    net.settle();
    assert_eq!(net.store(1).get("tasks", "t1").unwrap().unwrap()["title"], "oat milk");
    assert_eq!(net.store(0).replica().summary().unwrap(), net.store(1).replica().summary().unwrap());
}

/// A document's version goes with its first change to a peer that may lack the document, and not with live edits
/// of a document the peer has: neither with another writer's (the peer holds a change reaching a writer's counter in
/// the version) nor with a single writer's (the peer holds the change the edit depends on).
#[test]
fn only_a_documents_first_copy_carries_its_version() {
    let mut net = Net::new(vec![all(), all()]);
    let (_, link) = net.connect_over(0, 1, TransportKind::Lan);
    net.settle();
    let versions = |net: &Net| net.engines[0].link_stats(link).unwrap().versions_sent;
    net.store(0).upsert("docs", json!({"_id": "mine", "n": 0})).unwrap();
    net.settle();
    assert_eq!(versions(&net), 1, "the new document's first change");
    for i in 1..=20 {
        net.store(0).update("docs", "mine", |d| Ok(d.set("n", i)?)).unwrap();
        net.settle();
    }
    net.store(1).upsert("docs", json!({"_id": "theirs", "n": 0})).unwrap();
    net.settle();
    net.store(0).update("docs", "theirs", |d| Ok(d.set("n", 1)?)).unwrap();
    net.settle();
    assert_eq!(versions(&net), 1, "live edits of documents the peer has carry none");
    assert_eq!(net.store(1).get("docs", "mine").unwrap().unwrap()["n"], 20);
    assert_eq!(net.store(0).replica().summary().unwrap(), net.store(1).replica().summary().unwrap());
}

#[test]
fn reconnecting_sends_only_what_is_missing() {
    let mut net = Net::new(vec![all(), all()]);
    for i in 0..200 {
        net.store(0).upsert("docs", json!({"_id": format!("d{i}"), "body": "x".repeat(200)})).unwrap();
    }
    let w = net.connect(0, 1);
    net.settle();
    let first = net.bytes[&(0, 1)];
    assert!(first > 200 * 200, "the first sync carries the documents ({first} bytes)");
    net.disconnect(w);
    net.store(0).update("docs", "d7", |d| Ok(d.set("body", "changed")?)).unwrap();
    net.bytes.clear();
    net.connect(0, 1);
    net.settle();
    assert_eq!(net.store(1).get("docs", "d7").unwrap().unwrap()["body"], "changed");
    let again = net.bytes[&(0, 1)];
    assert!(again < 4000, "catch-up after one edit sent {again} bytes");
}

#[test]
fn a_document_arrives_whole_or_not_at_all_when_the_link_drops_halfway() {
    // Device 0 edits a document the other holds and writes a new one with device 2, interleaved: both spread over
    // every batch sent.
    let mut net = Net::new(vec![all(), all(), all()]);
    net.store(0).upsert("docs", json!({"_id": "known", "n": 0})).unwrap();
    let w = net.connect(0, 1);
    net.settle();
    net.disconnect(w);
    let w = net.connect(0, 2);
    for i in 0..150 {
        let text = format!("{i:03}{}", "x".repeat(500));
        net.store(0).update("docs", "known", |d| Ok(d.set(format!("k{i}"), text.as_str())?)).unwrap();
        // Device 0 creates it (its changes can then be applied without device 2's).
        let (writer, field) = if i % 3 == 1 { (2, format!("b{i}")) } else { (0, format!("a{i}")) };
        net.store(writer).upsert("docs", json!({"_id": "new", field: text})).unwrap();
        if i % 3 == 1 {
            net.settle();
        }
    }
    net.settle();
    net.disconnect(w);
    let whole = net.store(0).get("docs", "new").unwrap().unwrap();
    assert_eq!(whole.as_object().unwrap().len(), 151, "device 0 holds both writers' edits");
    // Device 1 catches up over a link cut once about two thirds of the changes went over (the documents' changes
    // are sent one document after the other, the new one over several batches).
    let w = net.connect(0, 1);
    let mut cut = false;
    for _ in 0..10_000 {
        if !net.round(1) {
            break;
        }
        if let Some(new) = net.store(1).get("docs", "new").unwrap() {
            let fields = new.as_object().map_or(0, |o| o.len());
            assert!(new == whole, "a first copy is never seen in part: {fields} of 151 fields");
        }
        if net.bytes.get(&(0, 1)).is_some_and(|&b| b > 100_000) {
            net.disconnect(w);
            cut = true;
            break;
        }
    }
    assert!(cut, "the link was cut while the catch-up was under way");
    let known = net.store(1).get("docs", "known").unwrap().unwrap();
    assert_eq!(known.as_object().unwrap().len(), 152, "the document device 1 held got every edit");
    assert_eq!(net.store(1).get("docs", "new").unwrap(), None, "nothing of the new document is applied yet");
    // Nor counted as held: all of it comes again.
    net.connect(0, 1);
    net.settle();
    assert!(net.store(1).get("docs", "new").unwrap().unwrap() == whole);
    assert_eq!(net.store(1).replica().summary().unwrap(), net.store(0).replica().summary().unwrap());
}

#[test]
fn filtered_subscription_gets_documents_that_start_to_match() {
    let mut net = Net::new(vec![all(), vec![Subscription::filtered("tasks", "done == false")]]);
    net.store(0).upsert("tasks", json!({"_id": "open", "done": false})).unwrap();
    net.store(0).upsert("tasks", json!({"_id": "closed", "done": true})).unwrap();
    net.store(0).upsert("notes", json!({"_id": "n", "x": 1})).unwrap();
    net.connect(0, 1);
    net.settle();
    assert!(net.store(1).get("tasks", "open").unwrap().is_some());
    assert!(net.store(1).get("tasks", "closed").unwrap().is_none());
    assert!(net.store(1).get("notes", "n").unwrap().is_none());
    // An edit elsewhere makes "closed" match: it arrives whole.
    net.store(0).update("tasks", "closed", |d| Ok(d.set("done", false)?)).unwrap();
    net.settle();
    assert_eq!(net.store(1).get("tasks", "closed").unwrap().unwrap()["done"], false);
    // And "open" leaving the filter still gets the edit that made it leave.
    net.store(0).update("tasks", "open", |d| Ok(d.set("done", true)?)).unwrap();
    net.settle();
    assert_eq!(net.store(1).get("tasks", "open").unwrap().unwrap()["done"], true);
}

#[test]
fn a_line_converges_through_devices_that_subscribe_to_nothing() {
    // A – B – C – D; only A and D subscribe.
    let mut net = Net::new(vec![all(), vec![], vec![], all()]);
    net.connect(0, 1);
    net.connect(1, 2);
    net.connect(2, 3);
    net.store(0).upsert("chat", json!({"_id": "a", "from": "A"})).unwrap();
    net.store(3).upsert("chat", json!({"_id": "d", "from": "D"})).unwrap();
    net.settle();
    for i in [0, 3] {
        assert!(net.store(i).get("chat", "a").unwrap().is_some(), "device {i} lacks A's message");
        assert!(net.store(i).get("chat", "d").unwrap().is_some(), "device {i} lacks D's message");
    }
    // Presence: A sees B directly and D three hops away.
    let peers = net.engines[0].peers();
    assert_eq!(peers.len(), 3, "{peers:?}");
    assert_eq!(peers.iter().map(|p| p.hops).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(peers[2].name, "dev3");
}

#[test]
fn one_link_per_pair_when_both_dial() {
    let mut net = Net::new(vec![all(), all()]);
    net.connect(0, 1);
    net.connect(1, 0);
    net.settle();
    let open: Vec<_> = net.wires.iter().filter(|(a, la, _, _)| !net.engines[*a].is_closed(*la)).collect();
    assert_eq!(open.len(), 1, "both links stayed open");
    net.store(0).upsert("x", json!({"_id": "1"})).unwrap();
    net.settle();
    assert!(net.store(1).get("x", "1").unwrap().is_some());
}

#[test]
fn wrong_secret_gets_nothing_and_garbage_closes_the_link() {
    let mut net = Net::new(vec![all(), all()]);
    net.store(0).upsert("secret", json!({"_id": "s", "v": 1})).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let intruder_store = Store::open(dir.path().join("x.db")).unwrap();
    let intruder = Engine::new(
        intruder_store.replica(),
        Identity::generate().unwrap(),
        AppSecret::from_bytes(b"wrong").unwrap(),
        "intruder",
        all(),
        0,
    );
    net.stores.push(intruder_store);
    net.engines.push(intruder);
    net.connect(2, 0);
    net.settle();
    assert!(net.store(2).get("secret", "s").unwrap().is_none());
    let mut downs = 0;
    while let Some(e) = net.engines[0].poll_event() {
        if matches!(e, EngineEvent::LinkDown { .. }) {
            downs += 1;
        }
    }
    assert_eq!(downs, 1, "the link with the intruder was closed");
    // Garbage after a good handshake closes the link and changes nothing.
    let w = net.connect(0, 1);
    net.settle();
    let (_, _, b, lb) = net.wires[w];
    let before = net.store(b).replica().summary().unwrap();
    net.engines[b].on_frame(lb, b"\x00\x01garbage");
    assert!(net.engines[b].is_closed(lb));
    assert_eq!(net.store(b).replica().summary().unwrap(), before);
}

fn fetch_events(e: &mut Engine) -> Vec<shoaldb::sync::FetchEvent> {
    let mut out = Vec::new();
    while let Some(ev) = e.poll_event() {
        if let EngineEvent::Fetch(f) = ev {
            out.push(f);
        }
    }
    out
}

#[test]
fn attachment_is_fetched_across_three_hops_with_progress() {
    use shoaldb::sync::FetchEvent;
    // A – B – C – D: D has a 300 KB attachment; A fetches it through B and C, which keep copies.
    let mut net = Net::new(vec![all(), vec![], vec![], all()]);
    net.connect(0, 1);
    net.connect(1, 2);
    net.connect(2, 3);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let token = net.store(3).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.store(3).upsert("files", json!({"_id": "f", "file": token.to_json()})).unwrap();
    net.settle();
    let at_a = net.store(0).document("files", "f").unwrap().unwrap().attachment("file").unwrap().expect("token synced");
    assert!(!net.store(0).has_attachment(&at_a).unwrap(), "bytes are fetched lazily");
    let fetch = net.engines[0].fetch_attachment(at_a.hash, at_a.len).unwrap();
    net.settle();
    let events = fetch_events(&mut net.engines[0]);
    assert_eq!(events.last(), Some(&FetchEvent::Done { fetch, hash: at_a.hash }), "{events:?}");
    let progress = progress(&events);
    assert!(
        progress.len() > 2 && progress.windows(2).all(|w| w[0] < w[1]) && progress.last() == Some(&300_000),
        "{progress:?}"
    );
    assert_eq!(net.store(0).attachment_bytes(&at_a).unwrap(), bytes);
    assert!(
        net.store(1).has_attachment(&at_a).unwrap() && net.store(2).has_attachment(&at_a).unwrap(),
        "relays keep a copy"
    );
}

fn progress(events: &[shoaldb::sync::FetchEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| if let shoaldb::sync::FetchEvent::Progress { done, .. } = e { Some(*done) } else { None })
        .collect()
}

#[test]
fn relays_pass_attachment_bytes_on_as_they_arrive() {
    use shoaldb::sync::FetchEvent;
    // A – B – C: C has 600 KB; A fetches through B, frame by frame: A's first bytes come long before B has them all.
    let mut net = Net::new(vec![all(), vec![], all()]);
    net.connect(0, 1);
    net.connect(1, 2);
    let bytes: Vec<u8> = (0..600_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let token = net.store(2).put_attachment_bytes(&bytes, Default::default()).unwrap();
    let empty = net.store(2).put_attachment_bytes(&[], Default::default()).unwrap();
    net.settle();
    let fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    let mut first_at_a = None;
    for _ in 0..100_000 {
        if !net.round(1) {
            break;
        }
        let events = fetch_events(&mut net.engines[0]);
        if first_at_a.is_none() && !progress(&events).is_empty() {
            first_at_a = Some(net.store(1).replica().attachment_received(&token.hash).unwrap());
            assert_eq!(
                net.store(1).replica().attachment_len(&token.hash).unwrap(),
                None,
                "the relay is still fetching"
            );
        }
        if let Some(FetchEvent::Done { fetch: f, .. }) = events.last() {
            assert_eq!(*f, fetch);
            break;
        }
    }
    let relay_had = first_at_a.expect("bytes reached A");
    assert!(relay_had < 600_000 / 4, "A's first bytes came when the relay had {relay_had} of 600000");
    assert_eq!(net.store(0).attachment_bytes(&token).unwrap(), bytes);
    assert!(net.store(1).has_attachment(&token).unwrap(), "the relay keeps a verified copy");
    assert_eq!(net.store(1).replica().attachment_received(&token.hash).unwrap(), 0, "and no loose parts");
    // An empty attachment crosses too.
    let fetch = net.engines[0].fetch_attachment(empty.hash, empty.len).unwrap();
    net.settle();
    assert_eq!(fetch_events(&mut net.engines[0]).last(), Some(&FetchEvent::Done { fetch, hash: empty.hash }));
    assert_eq!(net.store(0).attachment_bytes(&empty).unwrap(), Vec::<u8>::new());
}

#[test]
fn a_fetch_through_a_relay_resumes_where_it_broke_off() {
    use shoaldb::sync::FetchEvent;
    // A – B – C: the A–B link breaks mid-transfer while B is still fetching; A comes back at once and resumes.
    let mut net = Net::new(vec![all(), vec![], all()]);
    let ab = net.connect(0, 1);
    net.connect(1, 2);
    let bytes: Vec<u8> = (0..400_000u32).map(|i| (i * 31 % 239) as u8).collect();
    let token = net.store(2).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.settle();
    let fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    while net.store(0).replica().attachment_received(&token.hash).unwrap() == 0 {
        assert!(net.round(1), "the transfer stalled");
    }
    let partial = net.store(0).replica().attachment_received(&token.hash).unwrap();
    assert_eq!(net.store(1).replica().attachment_len(&token.hash).unwrap(), None, "the relay is still fetching");
    net.disconnect(ab);
    fetch_events(&mut net.engines[0]);
    net.connect(0, 1);
    net.settle();
    let events = fetch_events(&mut net.engines[0]);
    assert_eq!(events.last(), Some(&FetchEvent::Done { fetch, hash: token.hash }), "{events:?}");
    assert!(progress(&events).first().is_some_and(|d| *d > partial), "resumed from {partial}: {:?}", progress(&events));
    assert_eq!(net.store(0).attachment_bytes(&token).unwrap(), bytes);
}

#[test]
fn a_relayed_fetch_completes_over_links_that_keep_breaking() {
    use shoaldb::sync::FetchEvent;
    // A – B – C – D: D has 1 MB; every link breaks after a few frames each way and comes back a little later, as BLE
    // links do on a bad day; A's app asks again whenever its fetch ends without the bytes. Every device on the way
    // keeps what it received (a relay's fetch goes on while the device that asked is away), so each link's short
    // life moves the transfer on; a relay that started over at a break would need the whole prefix A already has
    // within one link's life.
    let mut net = Net::new(vec![all(), vec![], vec![], all()]);
    for (a, b) in [(0, 1), (1, 2), (2, 3)] {
        net.connect(a, b);
    }
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i * 29 % 233) as u8).collect();
    let token = net.store(3).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.settle();
    let mut fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    let mut rng = shoaldb::util::rng::SeededRng::new(11);
    // Rounds each link lives (a frame each way per round) before it breaks, and rounds it then stays down.
    let mut life: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let mut down: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    let (mut done, mut breaks, mut asks) = (false, 0, 1);
    // Times a relay's received bytes went down (they drop to 0 once, when its copy is complete and stored).
    let (mut last, mut resets) = ([0u64; 3], [0u32; 3]);
    for _ in 0..20_000 {
        net.round(1);
        for event in fetch_events(&mut net.engines[0]) {
            match event {
                FetchEvent::Done { fetch: f, .. } if f == fetch => done = true,
                FetchEvent::Failed { fetch: f, .. } if f == fetch => {
                    fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
                    asks += 1;
                }
                _ => {}
            }
        }
        if done {
            break;
        }
        for i in 1..3 {
            let now = net.store(i).replica().attachment_received(&token.hash).unwrap();
            if now < last[i] {
                resets[i] += 1;
            }
            last[i] = now;
        }
        for (a, b) in [(0, 1), (1, 2), (2, 3)] {
            if let Some(left) = down.get_mut(&(a, b)) {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    down.remove(&(a, b));
                    net.connect(a, b);
                }
                continue;
            }
            let left = life.entry((a, b)).or_insert_with(|| 4 + rng.below(8));
            *left -= 1;
            if *left == 0 {
                life.remove(&(a, b));
                let w = net.wires.iter().position(|&(x, _, y, _)| (x, y) == (a, b)).expect("wire");
                net.disconnect(w);
                down.insert((a, b), 1 + rng.below(12));
                breaks += 1;
            }
        }
    }
    assert!(done, "not fetched after {breaks} link breaks and {asks} asks");
    assert_eq!(net.store(0).attachment_bytes(&token).unwrap(), bytes);
    assert!(breaks > 100, "only {breaks} link breaks");
    assert!(resets[1] <= 1 && resets[2] <= 1, "a relay started over: {resets:?}");
}

#[test]
fn a_relay_whose_copy_fails_verification_stops_passing_it_on() {
    use shoaldb::sync::FetchEvent;
    // A – B – C, where C's stored bytes were damaged on disk: B relays them, finds they do not match the hash, and
    // tells A it cannot provide them; nobody keeps the damaged bytes as the attachment.
    let mut net = Net::new(vec![all(), vec![], all()]);
    net.connect(0, 1);
    net.connect(1, 2);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 211) as u8).collect();
    let token = net.store(2).put_attachment_bytes(&bytes, Default::default()).unwrap();
    {
        let db = rusqlite::Connection::open(net.dir.path().join("2.db")).unwrap();
        let changed = db
            .execute(
                "UPDATE blob_chunks SET data = zeroblob(length(data)) WHERE hash = ?1 AND idx = 0",
                [&token.hash[..]],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    net.settle();
    let fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    // A frame at a time, so that B passes bytes on while it fetches them.
    while net.round(1) {}
    let events = fetch_events(&mut net.engines[0]);
    assert!(matches!(events.last(), Some(FetchEvent::Failed { fetch: f, .. }) if *f == fetch), "{events:?}");
    assert!(
        progress(&events).last().is_some_and(|d| *d < 300_000),
        "A never got the last bytes: {:?}",
        progress(&events)
    );
    for i in [0, 1] {
        assert_eq!(net.store(i).replica().attachment_len(&token.hash).unwrap(), None);
    }
    assert_eq!(
        net.store(1).replica().attachment_received(&token.hash).unwrap(),
        0,
        "the relay dropped what it received"
    );
}

#[test]
fn bytes_from_a_relay_that_gave_up_are_dropped_and_another_device_provides_the_attachment() {
    use shoaldb::sync::FetchEvent;
    // D – A – B – C: C's copy is damaged on disk, D's is good. A asks B first; B relays C's bytes, finds they do not
    // match and gives up mid-transfer; A drops what B sent and gets the attachment from D.
    let mut net = Net::new(vec![all(), vec![], all(), all()]);
    net.connect(0, 1);
    net.connect(1, 2);
    net.connect(0, 3);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 17 % 251) as u8).collect();
    let token = net.store(2).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.store(3).put_attachment_bytes(&bytes, Default::default()).unwrap();
    {
        let db = rusqlite::Connection::open(net.dir.path().join("2.db")).unwrap();
        db.execute(
            "UPDATE blob_chunks SET data = zeroblob(length(data)) WHERE hash = ?1 AND idx = 0",
            [&token.hash[..]],
        )
        .unwrap();
    }
    net.settle();
    let fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    while net.round(1) {}
    let events = fetch_events(&mut net.engines[0]);
    assert_eq!(events.last(), Some(&FetchEvent::Done { fetch, hash: token.hash }), "{events:?}");
    let p = progress(&events);
    assert!(p.windows(2).any(|w| w[1] < w[0]), "started again after the relay gave up: {p:?}");
    assert_eq!(net.store(0).attachment_bytes(&token).unwrap(), bytes);
    assert_eq!(net.store(1).replica().attachment_len(&token.hash).unwrap(), None, "the relay kept nothing");
}

#[test]
fn attachments_are_asked_for_over_the_cloud_before_bluetooth() {
    use shoaldb::sync::FetchEvent;
    // Device 0 is linked to 1 over Bluetooth (the older link) and to 2, a relay of the cloud; both hold the bytes.
    let mut net = Net::new(vec![all(), all(), all()]);
    let (_, over_ble) = net.connect_over(0, 1, TransportKind::Ble);
    let (_, over_cloud) = net.connect_over(0, 2, TransportKind::Cloud);
    assert!(over_ble < over_cloud);
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let token = net.store(1).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.store(2).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.settle();
    let peers = net.engines[0].peers();
    let transport_of = |name: &str| peers.iter().find(|p| p.name == name).map(|p| p.transport);
    assert_eq!((transport_of("dev1"), transport_of("dev2")), (Some(TransportKind::Ble), Some(TransportKind::Cloud)));
    let before = |net: &Net, from: usize| net.bytes.get(&(from, 0)).copied().unwrap_or(0);
    let (ble_before, cloud_before) = (before(&net, 1), before(&net, 2));
    let fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    net.settle();
    let events = fetch_events(&mut net.engines[0]);
    assert_eq!(events.last(), Some(&FetchEvent::Done { fetch, hash: token.hash }), "{events:?}");
    assert_eq!(net.store(0).attachment_bytes(&token).unwrap(), bytes);
    // The bytes came from the cloud; Bluetooth carried none of them.
    assert!(before(&net, 2) - cloud_before > bytes.len(), "the cloud did not send the attachment");
    assert!(before(&net, 1) - ble_before < 10_000, "Bluetooth carried the attachment");
}

/// Moves only a few frames over wire `w` (everything one way, one frame back, four times): a transfer that has
/// begun and is far from done.
fn move_a_few_frames(net: &mut Net, w: usize) {
    let (a, la, b, lb) = net.wires[w];
    for _ in 0..4 {
        while let Some(f) = net.engines[a].poll_frame(la) {
            net.engines[b].on_frame(lb, &f);
        }
        if let Some(f) = net.engines[b].poll_frame(lb) {
            net.engines[a].on_frame(la, &f);
        }
    }
}

#[test]
fn attachment_fetch_resumes_after_a_broken_link_and_fails_clearly_when_nobody_has_it() {
    use shoaldb::sync::FetchEvent;
    let mut net = Net::new(vec![all(), all()]);
    let w = net.connect(0, 1);
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let token = net.store(1).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.settle();
    let fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    // Cut the link mid-transfer.
    move_a_few_frames(&mut net, w);
    let partial = net.store(0).replica().attachment_received(&token.hash).unwrap();
    assert!(partial > 0 && partial < 200_000, "cut mid-transfer ({partial} bytes in)");
    net.disconnect(w);
    assert!(
        !fetch_events(&mut net.engines[0]).iter().any(|e| matches!(e, FetchEvent::Failed { .. })),
        "a broken link is not a failure"
    );
    net.connect(0, 1);
    net.settle();
    let events = fetch_events(&mut net.engines[0]);
    assert_eq!(events.last(), Some(&FetchEvent::Done { fetch, hash: token.hash }), "{events:?}");
    assert!(progress(&events).first().is_some_and(|d| *d > partial), "resumed from {partial}, not from 0");
    assert_eq!(net.store(0).attachment_bytes(&token).unwrap(), bytes);
    // Nobody has this one.
    let missing = [7u8; 32];
    let f2 = net.engines[0].fetch_attachment(missing, 10).unwrap();
    net.settle();
    let events = fetch_events(&mut net.engines[0]);
    assert!(matches!(events.last(), Some(FetchEvent::Failed { fetch, .. }) if *fetch == f2), "{events:?}");
}

#[test]
fn a_cancelled_fetch_stops_and_a_later_fetch_resumes_from_its_bytes() {
    use shoaldb::sync::FetchEvent;
    let mut net = Net::new(vec![all(), all()]);
    let w = net.connect(0, 1);
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let token = net.store(1).put_attachment_bytes(&bytes, Default::default()).unwrap();
    net.settle();
    let fetch = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    move_a_few_frames(&mut net, w);
    let partial = net.store(0).replica().attachment_received(&token.hash).unwrap();
    assert!(partial > 0 && partial < 300_000, "cancelled mid-transfer ({partial} bytes in)");
    fetch_events(&mut net.engines[0]);
    assert!(net.engines[0].cancel_fetch(fetch), "the fetch was going on");
    assert!(!net.engines[0].cancel_fetch(fetch), "cancelling twice does nothing");
    let events = fetch_events(&mut net.engines[0]);
    assert!(
        matches!(events.as_slice(), [FetchEvent::Failed { fetch: f, reason, .. }] if *f == fetch && reason == "cancelled"),
        "{events:?}"
    );
    // The neighbour finishes the transfer it was serving; none of it is taken in any more.
    net.settle();
    let events = fetch_events(&mut net.engines[0]);
    assert!(events.is_empty(), "nothing more is reported: {events:?}");
    assert!(!net.store(0).has_attachment(&token).unwrap(), "the cancelled fetch did not complete");
    let kept = net.store(0).replica().attachment_received(&token.hash).unwrap();
    assert!(kept >= partial && kept < 300_000, "the parts received before stay ({kept})");
    // Fetching again resumes from them.
    let again = net.engines[0].fetch_attachment(token.hash, token.len).unwrap();
    net.settle();
    let events = fetch_events(&mut net.engines[0]);
    assert_eq!(events.last(), Some(&FetchEvent::Done { fetch: again, hash: token.hash }), "{events:?}");
    assert!(progress(&events).first().is_some_and(|d| *d > partial), "resumed from {kept}, not from 0");
    assert_eq!(net.store(0).attachment_bytes(&token).unwrap(), bytes);
}

#[test]
fn received_attachment_bytes_that_do_not_match_the_hash_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("s.db")).unwrap();
    let hash = *blake3::hash(b"the real content").as_bytes();
    store.replica().receive_attachment_part(&hash, 0, b"forged content!!").unwrap();
    assert!(store.replica().receive_attachment_part(&hash, 3, b"x").is_err(), "out-of-order part refused");
    assert!(store.replica().finish_attachment(&hash, 16).is_err());
    assert_eq!(store.replica().attachment_received(&hash).unwrap(), 0, "forged bytes dropped");
    assert_eq!(store.replica().attachment_len(&hash).unwrap(), None);
    store.replica().receive_attachment_part(&hash, 0, b"the real content").unwrap();
    store.replica().finish_attachment(&hash, 16).unwrap();
    assert_eq!(store.replica().attachment_len(&hash).unwrap(), Some(16));
}

#[test]
fn silent_links_time_out_and_live_ones_keep_alive() {
    use shoaldb::sync::engine::{KEEPALIVE_MS, LINK_TIMEOUT_MS};
    let mut net = Net::new(vec![all(), all()]);
    let w = net.connect(0, 1);
    net.settle();
    let (a, la, b, lb) = net.wires[w];
    // Time passes with both sides talking: keepalives flow, nothing is closed.
    let mut now = 0;
    for _ in 0..10 {
        now += KEEPALIVE_MS;
        net.engines[a].tick(now);
        net.engines[b].tick(now);
        net.settle();
    }
    assert!(!net.engines[a].is_closed(la) && !net.engines[b].is_closed(lb));
    // The other side vanishes without a word: the link is closed after the timeout.
    net.wires.clear();
    net.engines[a].tick(now + LINK_TIMEOUT_MS / 2);
    assert!(!net.engines[a].is_closed(la));
    net.engines[a].tick(now + LINK_TIMEOUT_MS);
    assert!(net.engines[a].is_closed(la));
    assert!(net.engines[a].peers().is_empty(), "presence forgets the vanished device");
}

#[test]
fn the_lan_carries_the_data_while_ble_stands_by_and_takes_over_when_the_lan_goes() {
    let mut net = Net::new(vec![all(), all()]);
    let (_, lan) = net.connect_over(0, 1, TransportKind::Lan);
    let (_, ble) = net.connect_over(0, 1, TransportKind::Ble);
    net.settle();
    let peers = net.engines[0].peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].transport, TransportKind::Lan, "the LAN carries the data");
    assert_eq!(peers[0].direct, vec![TransportKind::Lan, TransportKind::Ble], "both links are reported");
    net.link_bytes.clear();

    for i in 0..100 {
        net.store(0).upsert("docs", json!({"_id": format!("d{i}"), "body": "x".repeat(500)})).unwrap();
    }
    net.settle();
    assert_eq!(net.store(0).replica().summary().unwrap(), net.store(1).replica().summary().unwrap());
    let over_lan = net.link_bytes.get(&(0, lan)).copied().unwrap_or(0);
    let over_ble = net.link_bytes.get(&(0, ble)).copied().unwrap_or(0);
    assert!(over_lan > 50_000, "the documents went over the LAN ({over_lan} bytes)");
    assert!(over_ble < 2_000, "BLE only stood by ({over_ble} bytes)");

    // The LAN goes (both ends notice); edits on both sides now travel over BLE.
    let w = net.wires.iter().position(|w| w.1 == lan).expect("lan wire");
    net.disconnect(w);
    net.store(0).update("docs", "d1", |d| Ok(d.set("body", "from 0 over BLE")?)).unwrap();
    net.store(1).upsert("docs", json!({"_id": "new", "by": 1})).unwrap();
    net.link_bytes.clear();
    net.settle();
    assert_eq!(net.store(1).get("docs", "d1").unwrap().unwrap()["body"], "from 0 over BLE");
    assert!(net.store(0).get("docs", "new").unwrap().is_some());
    assert_eq!(net.store(0).replica().summary().unwrap(), net.store(1).replica().summary().unwrap());
    assert_eq!(net.engines[1].peers()[0].transport, TransportKind::Ble);
    let after = net.link_bytes.get(&(0, ble)).copied().unwrap_or(0);
    assert!(after < 10_000, "taking over resent nothing the peer had: {after} bytes");

    // The LAN comes back: it carries the data again.
    let (_, lan2) = net.connect_over(1, 0, TransportKind::Lan);
    net.settle();
    net.link_bytes.clear();
    for i in 0..20 {
        net.store(1).upsert("docs", json!({"_id": format!("back{i}"), "body": "y".repeat(500)})).unwrap();
    }
    net.settle();
    assert_eq!(net.store(0).replica().summary().unwrap(), net.store(1).replica().summary().unwrap());
    assert!(net.link_bytes.get(&(1, lan2)).copied().unwrap_or(0) > 10_000, "back on the LAN");
    let ble_at_1 = net.wires.iter().find(|w| w.1 == ble).map(|w| w.3).expect("ble wire");
    assert!(net.link_bytes.get(&(1, ble_at_1)).copied().unwrap_or(0) < 2_000, "BLE stands by again");
}
