//! Hostile authors: changes forged under another device's author id, restored database copies, equivocation (two
//! different changes for one (author, counter)), and pending changes that never become ready.

#[path = "common/wires.rs"]
mod wires;
use serde_json::json;
use shoaldb::store::{DocChange, Replica, Summary};
use shoaldb::util::sources::Sources;
use shoaldb::{Options, PeerId, Store};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn open(path: &Path) -> Store {
    Store::open(path).unwrap()
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("db"));
    (dir, s)
}

/// Everything `from` holds that `to` lacks, applied to `to`.
fn sync_into(from: &Store, to: &Store) -> shoaldb::store::ApplyReport {
    let changes = from.replica().changes_since(&to.replica().summary().unwrap()).unwrap();
    to.replica().apply_changes(&changes).unwrap()
}

fn sync_both(a: &Store, b: &Store) {
    sync_into(a, b);
    sync_into(b, a);
}

/// The highest counter of `author` in `summary` (0 when none).
fn max_counter(summary: &Summary, author: PeerId) -> u64 {
    summary.peers().find(|(p, _)| *p == author).map_or(0, |(_, r)| r.ranges().last().map_or(0, |&(_, e)| e))
}

/// A change made by `attacker` to a document of its own, re-labelled as `author`'s change starting at `start`.
fn forged(attacker: &Store, id: &str, author: PeerId, start: u64) -> DocChange {
    attacker.upsert("c", json!({"_id": id, "evil": true})).unwrap();
    let mut dc = attacker
        .replica()
        .changes_since(&Summary::new())
        .unwrap()
        .into_iter()
        .rev()
        .find(|dc| dc.doc_id == id)
        .unwrap();
    dc.change.peer = author;
    dc.change.start = start;
    dc
}

fn list(s: &Store) -> Vec<serde_json::Value> {
    s.list("c").unwrap()
}

#[test]
fn a_forged_change_under_the_victims_author_does_not_brick_its_writes() {
    let (_v, victim) = store();
    let (_a, attacker) = store();
    let (_o, other) = store();
    victim.upsert("c", json!({"_id": "mine", "n": 1})).unwrap();
    let author = victim.author_id().unwrap();
    let next = max_counter(&victim.replica().summary().unwrap(), author) + 1;
    let forgery = forged(&attacker, "evil", author, next);
    let report = victim.replica().apply_changes(&[forgery]).unwrap();
    assert_eq!(report.applied, 1);
    // The victim still writes, under a fresh author, losing nothing it wrote.
    victim.upsert("c", json!({"_id": "mine", "n": 2})).unwrap();
    victim.upsert("c", json!({"_id": "after", "n": 3})).unwrap();
    let fresh = victim.author_id().unwrap();
    assert_ne!(fresh, author, "the victim kept writing under the author id the forgery used");
    assert_eq!(victim.get("c", "mine").unwrap().unwrap()["n"], 2);
    // Still after reopening.
    let path = victim.path().to_path_buf();
    drop(victim);
    let victim = open(&path);
    victim.upsert("c", json!({"_id": "reopened", "n": 4})).unwrap();
    // And it keeps syncing: another store converges with it.
    sync_both(&victim, &other);
    assert_eq!(list(&victim), list(&other));
    assert_eq!(list(&other).len(), 4, "{:?}", list(&other));
}

#[test]
fn a_store_bricked_before_the_fix_writes_again_after_reopening() {
    // The forgery arrives while pending (its dependencies are missing): it must still move the victim off the author.
    let (_v, victim) = store();
    let (_a, attacker) = store();
    victim.upsert("c", json!({"_id": "mine", "n": 1})).unwrap();
    let author = victim.author_id().unwrap();
    let next = max_counter(&victim.replica().summary().unwrap(), author) + 1;
    attacker.upsert("c", json!({"_id": "base"})).unwrap();
    let mut forgery = forged(&attacker, "base", author, next);
    forgery.change.deps.set(PeerId(7), 3); // a dependency nobody has
    let report = victim.replica().apply_changes(&[forgery]).unwrap();
    assert_eq!(report.pending, 1);
    victim.upsert("c", json!({"_id": "mine", "n": 2})).unwrap();
    assert_ne!(victim.author_id().unwrap(), author);
    let path = victim.path().to_path_buf();
    drop(victim);
    let victim = open(&path);
    victim.upsert("c", json!({"_id": "mine", "n": 3})).unwrap();
    assert_eq!(victim.get("c", "mine").unwrap().unwrap()["n"], 3);
}

#[test]
fn a_restored_copy_of_the_database_writes_under_a_new_author_and_both_converge() {
    let dir = tempfile::tempdir().unwrap();
    let original_path = dir.path().join("db");
    let original = open(&original_path);
    original.upsert("c", json!({"_id": "before", "n": 1})).unwrap();
    let author = original.author_id().unwrap();
    original.checkpoint().unwrap();
    drop(original);
    // The backup: the database file alone (the epoch sidecar is kept out of backups).
    let restored_dir = tempfile::tempdir().unwrap();
    let restored_path = restored_dir.path().join("db");
    std::fs::copy(&original_path, &restored_path).unwrap();
    // The original device goes on writing.
    let original = open(&original_path);
    original.upsert("c", json!({"_id": "later-original", "n": 2})).unwrap();
    assert_eq!(original.author_id().unwrap(), author, "the original device keeps its author");
    // The copy is restored (on another phone, or on the same one later) and written to before any sync.
    let restored = open(&restored_path);
    restored.upsert("c", json!({"_id": "later-restored", "n": 3})).unwrap();
    assert_ne!(restored.author_id().unwrap(), author, "the restored copy reuses counters the original used");
    sync_both(&original, &restored);
    assert_eq!(list(&original), list(&restored));
    assert_eq!(list(&original).len(), 3, "{:?}", list(&original));
    assert!(original.equivocations().unwrap().is_empty());
}

#[test]
fn a_restored_copy_on_the_same_device_is_noticed_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = open(&path);
    s.upsert("c", json!({"_id": "a"})).unwrap();
    let author = s.author_id().unwrap();
    s.checkpoint().unwrap();
    drop(s);
    let backup = dir.path().join("backup");
    std::fs::copy(&path, &backup).unwrap();
    let s = open(&path);
    s.upsert("c", json!({"_id": "b"})).unwrap();
    drop(s);
    // Restore the older file over the database (the sidecar stays where it was).
    std::fs::copy(&backup, &path).unwrap();
    let _ = std::fs::remove_file(dir.path().join("db-wal"));
    let _ = std::fs::remove_file(dir.path().join("db-shm"));
    let s = open(&path);
    assert_ne!(s.author_id().unwrap(), author);
    // Reopening without a restore keeps the author.
    let now = s.author_id().unwrap();
    drop(s);
    assert_eq!(open(&path).author_id().unwrap(), now);
}

#[test]
fn a_peer_summary_showing_our_author_beyond_what_we_wrote_moves_us_to_a_fresh_author() {
    let (_v, victim) = store();
    victim.upsert("c", json!({"_id": "mine"})).unwrap();
    let author = victim.author_id().unwrap();
    let mut claim = Summary::new();
    claim.insert(author, 1, 1_000);
    victim.replica().notice_summary(&claim).unwrap();
    victim.upsert("c", json!({"_id": "mine", "n": 1})).unwrap();
    assert_ne!(victim.author_id().unwrap(), author);
    // A summary within what we wrote changes nothing.
    let now = victim.author_id().unwrap();
    victim.replica().notice_summary(&victim.replica().summary().unwrap()).unwrap();
    victim.upsert("c", json!({"_id": "mine", "n": 2})).unwrap();
    assert_eq!(victim.author_id().unwrap(), now);
}

/// The store's documents but `skip`.
fn docs_but(s: &Store, skip: &str) -> Vec<serde_json::Value> {
    let mut docs = list(s);
    docs.retain(|d| d["_id"] != skip);
    docs
}

#[test]
fn a_relay_applies_the_honest_changes_of_a_batch_holding_a_forgery() {
    let (_h, honest) = store();
    let (_a, attacker) = store();
    for i in 0..5 {
        honest.upsert("c", json!({"_id": format!("d{i}"), "n": i})).unwrap();
    }
    let author = honest.author_id().unwrap();
    let good = honest.replica().changes_since(&Summary::new()).unwrap();
    // A forgery of the honest author's last change: same start, another document, a longer range.
    let last = &good.last().unwrap().change;
    let mut forgery = forged(&attacker, "evil", author, last.start);
    forgery.change.ops.push(forgery.change.ops[0].clone());
    assert!(forgery.change.end() > last.end());

    // [honest..., forgery]: every honest change applies, the forgery is refused and recorded.
    let (_r0, relay0) = store();
    let mut batch = good.clone();
    batch.push(forgery.clone());
    let report = relay0.replica().apply_changes(&batch).unwrap();
    assert_eq!((report.applied, report.refused), (5, 1), "{report:?}");
    assert_eq!(list(&relay0), list(&honest));
    assert_eq!(relay0.equivocations().unwrap().len(), 1);

    // [forgery, honest...]: the forgery came first; the honest changes that do not collide with it apply.
    let (_r, relay) = store();
    let mut batch = vec![forgery.clone()];
    batch.extend(good.iter().cloned());
    let report = relay.replica().apply_changes(&batch).unwrap();
    assert_eq!((report.applied, report.refused), (5, 1), "{report:?}");
    assert_eq!(docs_but(&relay, "evil"), docs_but(&honest, "d4"));

    // A relay that stored the forgery first still applies honest batches, on every retry.
    let (_r2, relay2) = store();
    let r = relay2.replica().apply_changes(std::slice::from_ref(&forgery)).unwrap();
    assert_eq!(r.applied, 1);
    for _ in 0..2 {
        let report = relay2.replica().apply_changes(&good).unwrap();
        assert_eq!(report.refused, 1, "{report:?}");
    }
    assert_eq!(docs_but(&relay2, "evil"), docs_but(&honest, "d4"));
    // The conflict is on record, with both versions.
    let e = relay2.equivocations().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].author, e[0].start), (author, last.start));
    assert_eq!(DocChange::decode(&e[0].held).unwrap(), forgery);
    assert_eq!(&DocChange::decode(&e[0].refused).unwrap(), good.last().unwrap());
}

// ---- equivocation ----

/// Two different changes for one (author, counter) of document `c/d`: `v1` made by `x`, `v2` forged from another
/// store's change to the same document.
fn two_versions() -> (Vec<tempfile::TempDir>, DocChange, DocChange) {
    let (dx, x) = store();
    let (dy, y) = store();
    x.upsert("c", json!({"_id": "d", "v": 1})).unwrap();
    let v1 = x.replica().changes_since(&Summary::new()).unwrap().remove(0);
    y.upsert("c", json!({"_id": "d", "v": 2})).unwrap();
    let mut v2 = y.replica().changes_since(&Summary::new()).unwrap().remove(0);
    v2.change.peer = v1.change.peer;
    v2.change.start = v1.change.start;
    assert_eq!((v1.change.start, v1.change.end()), (v2.change.start, v2.change.end()));
    assert_ne!(v1, v2);
    (vec![dx, dy], v1, v2)
}

#[test]
fn an_equivocation_received_is_refused_and_recorded_in_any_order() {
    let (_d, v1, v2) = two_versions();
    for order in [[&v1, &v2], [&v2, &v1]] {
        // One batch, or two.
        let (_a, a) = store();
        let r = a.replica().apply_changes(&[order[0].clone(), order[1].clone()]).unwrap();
        assert_eq!((r.applied, r.refused), (1, 1), "{r:?}");
        let (_b, b) = store();
        b.replica().apply_changes(&[order[0].clone()]).unwrap();
        let r = b.replica().apply_changes(&[order[1].clone()]).unwrap();
        assert_eq!((r.applied, r.refused), (0, 1), "{r:?}");
        for s in [&a, &b] {
            let e = s.equivocations().unwrap();
            assert_eq!(e.len(), 1);
            assert_eq!(DocChange::decode(&e[0].held).unwrap(), *order[0]);
            assert_eq!(DocChange::decode(&e[0].refused).unwrap(), *order[1]);
            // Recorded durably.
            let path = s.path().to_path_buf();
            assert_eq!(open(&path).equivocations().unwrap(), e);
        }
        assert_eq!(list(&a), list(&b));
    }
}

#[test]
fn replicas_with_equal_summaries_and_different_versions_tell_by_their_digests() {
    let (_d, v1, v2) = two_versions();
    let (_a, a) = store();
    let (_b, b) = store();
    a.upsert("c", json!({"_id": "other"})).unwrap();
    a.replica().apply_changes(std::slice::from_ref(&v1)).unwrap();
    b.replica().apply_changes(std::slice::from_ref(&v2)).unwrap();
    sync_both(&a, &b);
    // Equal summaries, different documents: nothing travels by summary.
    assert_eq!(a.replica().summary().unwrap(), b.replica().summary().unwrap());
    assert_ne!(a.get("c", "d").unwrap(), b.get("c", "d").unwrap());
    let author = v1.change.peer;
    // The digests tell them apart, for that author only.
    assert_eq!(a.replica().differing_authors(&b.replica().author_digests(None).unwrap()).unwrap(), vec![author]);
    assert_eq!(b.replica().differing_authors(&a.replica().author_digests(None).unwrap()).unwrap(), vec![author]);
    // Digests of replicas holding the same changes agree (and are cached consistently after a write).
    let (_c, c) = store();
    sync_into(&a, &c);
    assert!(c.replica().differing_authors(&a.replica().author_digests(None).unwrap()).unwrap().is_empty());
    for i in 0..20 {
        a.upsert("c", json!({"_id": format!("more{i}"), "n": i})).unwrap();
        sync_into(&a, &c);
        assert!(c.replica().differing_authors(&a.replica().author_digests(None).unwrap()).unwrap().is_empty());
    }
    // Digests updated bucket by bucket equal digests computed afresh from the log.
    let cached = c.replica().author_digests(None).unwrap();
    let path = c.path().to_path_buf();
    drop(c);
    assert_eq!(open(&path).replica().author_digests(None).unwrap(), cached);
}

// ---- the same through sync engines ----

mod engines {
    use super::*;
    use shoaldb::security::{AppSecret, Identity};
    use shoaldb::sync::{Engine, LinkId, Subscription, TransportKind};

    pub struct Net {
        pub stores: Vec<Store>,
        engines: Vec<Engine>,
        wires: Vec<(usize, LinkId, usize, LinkId)>,
        _dir: tempfile::TempDir,
    }

    impl Net {
        pub fn new(n: usize) -> Net {
            let dir = tempfile::tempdir().unwrap();
            let secret = AppSecret::from_bytes(b"test app secret").unwrap();
            let (stores, engines) = (0..n)
                .map(|i| {
                    let store = Store::open(dir.path().join(format!("{i}.db"))).unwrap();
                    let id = Identity::generate().unwrap();
                    let subs = vec![Subscription::everything()];
                    let engine = Engine::new(store.replica(), id, secret.clone(), &format!("dev{i}"), subs, 0);
                    (store, engine)
                })
                .unzip();
            Net { stores, engines, wires: Vec::new(), _dir: dir }
        }

        pub fn connect(&mut self, a: usize, b: usize) {
            let la = self.engines[a].add_link(TransportKind::Lan, true).unwrap();
            let lb = self.engines[b].add_link(TransportKind::Lan, false).unwrap();
            self.wires.push((a, la, b, lb));
        }

        pub fn settle(&mut self) {
            super::wires::settle(&mut self.engines, &self.wires, None);
        }
    }
}

#[test]
fn through_sync_every_store_holding_a_version_finds_the_other() {
    // Three ways the two versions meet: already held on both sides when the link comes up, arriving by sync while
    // the other version is held, and arriving live on an established link.
    let (_d, v1, v2) = two_versions();
    let mut net = engines::Net::new(4);
    net.stores[0].upsert("c", json!({"_id": "a"})).unwrap();
    net.stores[0].replica().apply_changes(std::slice::from_ref(&v1)).unwrap();
    net.stores[1].replica().apply_changes(std::slice::from_ref(&v2)).unwrap();
    net.connect(0, 1);
    net.settle();
    for i in [0, 1] {
        let e = net.stores[i].equivocations().unwrap();
        assert_eq!(e.len(), 1, "store {i} did not find the equivocation");
    }
    assert_eq!(net.stores[0].replica().summary().unwrap(), net.stores[1].replica().summary().unwrap());
    // A store that got v1 by sync from 0, then meets 1 (which holds v2).
    net.connect(0, 2);
    net.settle();
    assert_eq!(net.stores[2].get("c", "d").unwrap(), net.stores[0].get("c", "d").unwrap());
    assert!(net.stores[2].equivocations().unwrap().is_empty());
    net.connect(2, 1);
    net.settle();
    assert_eq!(net.stores[2].equivocations().unwrap().len(), 1);
    // Live: store 3 joins holding nothing, gets v1 through 2; then v2 is offered to it directly.
    net.connect(3, 2);
    net.settle();
    let r = net.stores[3].replica().apply_changes(std::slice::from_ref(&v2)).unwrap();
    assert_eq!(r.refused, 1);
    // Nobody ended silently different: stores whose documents differ have both reported it.
    for i in 0..4 {
        for j in 0..4 {
            let (si, sj) = (&net.stores[i], &net.stores[j]);
            if list(si) != list(sj) {
                assert!(!si.equivocations().unwrap().is_empty() && !sj.equivocations().unwrap().is_empty());
            }
        }
    }
}

// ---- pending changes ----

/// `n` changes of `author` (counters 1..=n) to document `c/p` that depend on a change nobody has.
fn never_ready(template: &DocChange, author: PeerId, n: u64) -> Vec<DocChange> {
    (1..=n)
        .map(|start| {
            let mut dc = template.clone();
            dc.change.peer = author;
            dc.change.start = start;
            dc
        })
        .collect()
}

fn never_ready_template() -> (tempfile::TempDir, DocChange) {
    let (d, x) = store();
    x.upsert("c", json!({"_id": "p", "v": 1})).unwrap();
    let mut t = x.replica().changes_since(&Summary::new()).unwrap().remove(0);
    t.change.deps.set(PeerId(3), 3);
    (d, t)
}

/// An honest author's two changes to `c/h`, the second depending on the first.
fn honest_pair() -> (tempfile::TempDir, Vec<DocChange>) {
    let (d, h) = store();
    h.upsert("c", json!({"_id": "h", "v": 1})).unwrap();
    h.upsert("c", json!({"_id": "h", "v": 2})).unwrap();
    (d, h.replica().changes_since(&Summary::new()).unwrap())
}

#[test]
fn one_author_cannot_take_more_than_its_quota_of_pending_changes() {
    use shoaldb::store::MAX_PENDING_PER_AUTHOR;
    let (_t, template) = never_ready_template();
    let (_v, victim) = store();
    let flood = never_ready(&template, PeerId(99), MAX_PENDING_PER_AUTHOR as u64 + 50);
    let r = victim.replica().apply_changes(&flood).unwrap();
    assert_eq!(r.pending, flood.len());
    assert_eq!(victim.pending_changes().unwrap(), MAX_PENDING_PER_AUTHOR);
    // An honest change out of order is kept, and applies once its dependency arrives.
    let (_h, pair) = honest_pair();
    assert_eq!(victim.replica().apply_changes(&pair[1..]).unwrap().pending, 1);
    assert_eq!(victim.pending_changes().unwrap(), MAX_PENDING_PER_AUTHOR + 1);
    assert_eq!(victim.replica().apply_changes(&pair[..1]).unwrap().applied, 2);
    assert_eq!(victim.get("c", "h").unwrap().unwrap()["v"], 2);
}

#[test]
fn a_full_pending_table_still_takes_honest_out_of_order_changes() {
    use shoaldb::store::{MAX_PENDING_CHANGES, MAX_PENDING_PER_AUTHOR};
    let (_t, template) = never_ready_template();
    let (_v, victim) = store();
    let authors = MAX_PENDING_CHANGES / MAX_PENDING_PER_AUTHOR;
    for a in 0..authors {
        let flood = never_ready(&template, PeerId(1000 + a as u64), MAX_PENDING_PER_AUTHOR as u64);
        victim.replica().apply_changes(&flood).unwrap();
    }
    assert_eq!(victim.pending_changes().unwrap(), MAX_PENDING_CHANGES);
    let (_h, pair) = honest_pair();
    assert_eq!(victim.replica().apply_changes(&pair[1..]).unwrap().pending, 1);
    assert_eq!(victim.pending_changes().unwrap(), MAX_PENDING_CHANGES, "the cap holds");
    assert_eq!(victim.replica().apply_changes(&pair[..1]).unwrap().applied, 2);
    assert_eq!(victim.get("c", "h").unwrap().unwrap()["v"], 2);
}

#[test]
fn pending_changes_expire() {
    use shoaldb::store::PENDING_MAX_AGE_MS;
    let now = Arc::new(AtomicU64::new(1_700_000_000_000));
    let clock = now.clone();
    let dir = tempfile::tempdir().unwrap();
    let sources = Sources::seeded(7).with_clock(move || clock.load(Ordering::SeqCst));
    let victim = Store::open_with(dir.path().join("db"), Options { sources, ..Options::default() }).unwrap();
    let (_t, template) = never_ready_template();
    victim.replica().apply_changes(&never_ready(&template, PeerId(99), 3)).unwrap();
    assert_eq!(victim.pending_changes().unwrap(), 3);
    now.fetch_add(PENDING_MAX_AGE_MS / 2, Ordering::SeqCst);
    victim.replica().apply_changes(&never_ready(&template, PeerId(98), 2)).unwrap();
    assert_eq!(victim.pending_changes().unwrap(), 5, "nothing is old enough yet");
    now.fetch_add(PENDING_MAX_AGE_MS / 2 + 1, Ordering::SeqCst);
    victim.replica().apply_changes(&[]).unwrap();
    assert_eq!(victim.pending_changes().unwrap(), 2, "the oldest three expired");
    // Still so after reopening.
    drop(victim);
    let clock = now.clone();
    let sources = Sources::seeded(8).with_clock(move || clock.load(Ordering::SeqCst));
    let victim = Store::open_with(dir.path().join("db"), Options { sources, ..Options::default() }).unwrap();
    assert_eq!(victim.pending_changes().unwrap(), 2);
}

#[test]
fn a_log_written_before_content_hashes_gets_them_at_open() {
    let (_d, v1, v2) = two_versions();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = open(&path);
    s.replica().apply_changes(std::slice::from_ref(&v1)).unwrap();
    let digests = s.replica().author_digests(None).unwrap();
    drop(s);
    // As a store of schema 4 left it: no hashes.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("UPDATE changes SET hash = NULL; DELETE FROM meta WHERE key = 'hashes_filled';").unwrap();
    }
    let s = open(&path);
    assert_eq!(s.replica().author_digests(None).unwrap(), digests);
    let r = s.replica().apply_changes(&[v1.clone(), v2]).unwrap();
    assert_eq!((r.duplicates, r.refused), (1, 1), "{r:?}");
}

#[test]
fn the_epoch_file_can_live_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let keep = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let options = || Options { epoch_file: Some(keep.path().join("epoch")), ..Options::default() };
    let s = Store::open_with(&path, options()).unwrap();
    s.upsert("c", json!({"_id": "a"})).unwrap();
    let author = s.author_id().unwrap();
    drop(s);
    assert!(keep.path().join("epoch").exists());
    assert!(!dir.path().join("db-epoch").exists());
    assert_eq!(Store::open_with(&path, options()).unwrap().author_id().unwrap(), author);
    // A backup restores the directory of the database, not the excluded epoch file's.
    std::fs::remove_file(keep.path().join("epoch")).unwrap();
    assert_ne!(Store::open_with(&path, options()).unwrap().author_id().unwrap(), author);
}

#[test]
fn two_versions_waiting_for_their_dependencies_are_told_apart_too() {
    let (_d, mut v1, mut v2) = two_versions();
    for v in [&mut v1, &mut v2] {
        v.change.deps.set(PeerId(3), 3);
    }
    let (_a, a) = store();
    let r = a.replica().apply_changes(&[v1.clone(), v2.clone()]).unwrap();
    assert_eq!((r.pending, r.refused), (1, 1), "{r:?}");
    assert_eq!(a.pending_changes().unwrap(), 1);
    let e = a.equivocations().unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(DocChange::decode(&e[0].held).unwrap(), v1);
    assert_eq!(DocChange::decode(&e[0].refused).unwrap(), v2);
}

#[test]
fn digests_kept_bucket_by_bucket_equal_digests_computed_afresh() {
    let (_a, attacker) = store();
    let author = PeerId(4242);
    let changes: Vec<DocChange> = [1u64, 5_000, 9_000, 4_097, 100_000]
        .iter()
        .enumerate()
        .map(|(i, &start)| forged(&attacker, &format!("z{i}"), author, start))
        .collect();
    let (_c, c) = store();
    let (_d, d) = store();
    for dc in &changes {
        c.replica().apply_changes(std::slice::from_ref(dc)).unwrap();
        // Computed (and cached) after every change.
        c.replica().author_digests(Some(&[author])).unwrap();
    }
    d.replica().apply_changes(&changes).unwrap();
    let incremental = c.replica().author_digests(Some(&[author])).unwrap();
    assert_eq!(incremental.len(), 1);
    assert_eq!(incremental, d.replica().author_digests(Some(&[author])).unwrap());
    let path = c.path().to_path_buf();
    drop(c);
    assert_eq!(open(&path).replica().author_digests(Some(&[author])).unwrap(), incremental);
    // Evicting a document drops its change from the digest, bucket by bucket too.
    d.replica().author_digests(None).unwrap();
    d.evict("c", "z2").unwrap();
    let after = d.replica().author_digests(Some(&[author])).unwrap();
    assert_ne!(after, incremental);
    let path = d.path().to_path_buf();
    drop(d);
    assert_eq!(open(&path).replica().author_digests(Some(&[author])).unwrap(), after);
}
