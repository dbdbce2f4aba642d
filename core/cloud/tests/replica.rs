//! The PostgreSQL replica against a phone's SQLite store: the same changes, delivered in the same random chunks
//! (out of causal order, with duplicates), must give the same apply reports, the same summary and byte-identical
//! merged documents, for every field type and nesting; the log it serves rebuilds the same state elsewhere; and an
//! equivocation is refused alone and kept as evidence, as on a phone. Chunks applied several at once in one
//! transaction ([`Replica::apply_batches`], as a busy relay applies the batches of many links) give each the
//! report it gets alone, and the same state.
//!
//! `SHOAL_CLOUD_SEEDS` sets the number of seeds (default 4).

mod common;
#[path = "../../tests/common/edits.rs"]
mod edits;
#[path = "../../tests/common/random_edits.rs"]
mod random_edits;

use shoaldb::store::{AuthorDigest, Replica};
use shoaldb::util::rng::SeededRng;
use shoaldb::{DocChange, Op, Store, Summary};
use shoaldb_cloud::PgReplica;

const COLLECTIONS: &[&str] = &["tasks", "notes"];
const PHONES: usize = 3;

fn seeds() -> u64 {
    std::env::var("SHOAL_CLOUD_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(4)
}

/// Every document either replica could hold.
fn all_docs() -> impl Iterator<Item = (&'static str, String)> {
    COLLECTIONS.iter().flat_map(|c| (0..random_edits::DOC_IDS as u64).map(move |i| (*c, random_edits::doc_id(i))))
}

/// The changes of three phones that edit at random and sync among themselves at random, in the order each phone
/// logged them.
fn phone_changes(rng: &mut SeededRng) -> Vec<DocChange> {
    let phones: Vec<Store> = (0..PHONES).map(|_| Store::open(":memory:").unwrap()).collect();
    for _ in 0..12 {
        for phone in &phones {
            for _ in 0..rng.below(4) {
                let edit = random_edits::draw_edit(rng, COLLECTIONS);
                random_edits::apply_edit(phone, &edit);
            }
        }
        let (a, b) = (rng.below(PHONES as u64) as usize, rng.below(PHONES as u64) as usize);
        if a != b {
            let missing = phones[a].replica().changes_since(&phones[b].replica().summary().unwrap()).unwrap();
            phones[b].replica().apply_changes(&missing).unwrap();
        }
    }
    phones.iter().flat_map(|p| p.replica().changes_since(&Summary::new()).unwrap()).collect()
}

/// `changes`, shuffled, with some repeated, cut into chunks.
fn chunks(rng: &mut SeededRng, changes: &[DocChange]) -> Vec<Vec<DocChange>> {
    let mut all: Vec<DocChange> = changes.to_vec();
    for _ in 0..changes.len() / 4 {
        all.push(changes[rng.below(changes.len() as u64) as usize].clone());
    }
    rng.shuffle(&mut all);
    let mut out = Vec::new();
    while !all.is_empty() {
        let n = (1 + rng.below(12) as usize).min(all.len());
        out.push(all.drain(..n).collect());
    }
    out
}

/// The counts of changes kept aside that the database keeps (schema migration 4) are those of the rows; returns
/// the total.
fn pending_counted_exactly(url: &str) -> i64 {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let rows = |db: &mut postgres::Client, sql: &str| -> Vec<(i64, i64)> {
        db.query(sql, &[]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let counted = rows(&mut db, "SELECT author, n FROM pending_authors WHERE n > 0 ORDER BY author");
    let actual = rows(&mut db, "SELECT author, count(*) FROM pending GROUP BY author ORDER BY author");
    assert_eq!(counted, actual, "the per-author counts of changes kept aside");
    let total: i64 = db.query_one("SELECT n FROM pending_total", &[]).unwrap().get(0);
    let actual: i64 = db.query_one("SELECT count(*) FROM pending", &[]).unwrap().get(0);
    assert_eq!(total, actual, "the count of changes kept aside");
    total
}

/// `replica`'s per-author digests of every author, in author order.
fn digests(replica: &dyn Replica) -> Vec<AuthorDigest> {
    let mut d = replica.author_digests(None).unwrap();
    d.sort_by_key(|d| d.author);
    d
}

/// The reference store and the cloud replica hold the same thing, byte for byte.
fn assert_same(seed: u64, phone: &Store, cloud: &PgReplica) {
    assert_eq!(phone.replica().summary().unwrap(), cloud.summary().unwrap(), "seed {seed}: summaries");
    assert_eq!(digests(&phone.replica()), digests(cloud), "seed {seed}: per-author digests");
    for (c, id) in all_docs() {
        let mine = phone.document(c, &id).unwrap();
        let theirs = cloud.document(c, &id).unwrap();
        assert_eq!(
            mine.as_ref().map(|d| d.encode()),
            theirs.as_ref().map(|d| d.encode()),
            "seed {seed}: {c}/{id} state"
        );
        let view = theirs.as_ref().and_then(|d| d.view(&id));
        assert_eq!(phone.get(c, &id).unwrap(), view, "seed {seed}: {c}/{id} view");
    }
}

#[test]
fn the_cloud_merges_exactly_as_a_phone_does() {
    let Some(_) = common::server() else { return };
    for seed in 0..seeds() {
        let url = common::fresh_database().unwrap();
        let cloud = PgReplica::connect(&url, 2).unwrap();
        let grouped = PgReplica::connect(&common::fresh_database().unwrap(), 1).unwrap();
        let reference = Store::open(":memory:").unwrap();
        let mut rng = SeededRng::new(seed);
        let changes = phone_changes(&mut rng);
        assert!(!changes.is_empty());
        let mut pending_seen = false;
        let chunks = chunks(&mut rng, &changes);
        let mut wanted = Vec::new();
        for chunk in &chunks {
            let want = reference.replica().apply_changes(chunk).unwrap();
            let got = cloud.apply_changes(chunk).unwrap();
            pending_seen |= want.pending > 0;
            assert_eq!(got, want, "seed {seed}: the apply reports differ");
            wanted.push(want);
            pending_counted_exactly(&url);
        }
        assert!(pending_seen, "seed {seed}: the shuffle put no change before its dependencies");
        assert_same(seed, &reference, &cloud);
        // The same chunks, one to five at a time in one transaction.
        let mut at = 0;
        while at < chunks.len() {
            let n = (1 + rng.below(5) as usize).min(chunks.len() - at);
            let group: Vec<&[DocChange]> = chunks[at..at + n].iter().map(Vec::as_slice).collect();
            let got: Vec<_> = grouped.apply_batches(&group, None).into_iter().map(Result::unwrap).collect();
            assert_eq!(got, wanted[at..at + n], "seed {seed}: the reports of chunks {at}.. applied together");
            at += n;
        }
        assert_same(seed, &reference, &grouped);
        // The log the cloud serves rebuilds the same state in a fresh phone, and changes_since a full summary is
        // nothing.
        let fresh = Store::open(":memory:").unwrap();
        fresh.replica().apply_changes(&cloud.changes_since(&Summary::new()).unwrap()).unwrap();
        assert_same(seed, &fresh, &cloud);
        assert!(cloud.changes_since(&cloud.summary().unwrap()).unwrap().is_empty());
        // Part of the log: what a phone that holds half of it lacks.
        let half = Store::open(":memory:").unwrap();
        half.replica().apply_changes(&changes[..changes.len() / 2]).unwrap();
        let missing = cloud.changes_since(&half.replica().summary().unwrap()).unwrap();
        half.replica().apply_changes(&missing).unwrap();
        assert_same(seed, &half, &cloud);
    }
}

/// The log the cloud serves carries each document's version as the cloud holds it — a phone's, for the same
/// changes — which a device taking its first copy of the document waits for (`shoaldb::sync::first_copy`).
#[test]
fn the_log_carries_each_documents_version_as_a_phone_holds_it() {
    let Some(_) = common::server() else { return };
    let url = common::fresh_database().unwrap();
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let reference = Store::open(":memory:").unwrap();
    let changes = phone_changes(&mut SeededRng::new(7));
    cloud.apply_changes(&changes).unwrap();
    reference.replica().apply_changes(&changes).unwrap();
    let entries = cloud.log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap();
    let phone = reference.replica().log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap();
    assert_eq!(entries.len(), phone.len());
    for e in &entries {
        let version =
            e.version.as_deref().unwrap_or_else(|| panic!("{}/{} is served without a version", e.collection, e.doc_id));
        let held = reference.document(&e.collection, &e.doc_id).unwrap().unwrap();
        assert_eq!(version, held.version(), "{}/{}", e.collection, e.doc_id);
    }
    for (e, p) in entries.iter().zip(&phone) {
        assert_eq!((e.peer, e.start, &e.version), (p.peer, p.start, &p.version));
    }
    // Documents written before versions were kept get them at the next compaction.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    db.execute("UPDATE docs SET version = NULL", &[]).unwrap();
    let log = || cloud.log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap();
    assert!(log().iter().all(|e| e.version.is_none()));
    cloud.compact(&shoaldb::CompactionPolicy::default(), 3_600_000).unwrap();
    assert_eq!(log(), entries, "the versions are written down again");
}

#[test]
fn an_equivocation_is_refused_alone_and_kept_as_evidence() {
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 2).unwrap();
    let phone = Store::open(":memory:").unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "a", "title": "honest"})).unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "b", "title": "other"})).unwrap();
    let honest = phone.replica().changes_since(&Summary::new()).unwrap();
    // The same author and counters, other content: a forgery of the first change.
    let mut forged = honest[0].clone();
    for op in &mut forged.change.ops {
        if let Op::Set { value, .. } = op {
            *value = shoaldb::Scalar::Str("forged".into());
        }
    }
    assert_ne!(forged.change, honest[0].change);
    let report = cloud.apply_changes(&[honest[0].clone(), forged.clone(), honest[1].clone()]).unwrap();
    assert_eq!((report.applied, report.refused), (2, 1), "{report:?}");
    assert_eq!(cloud.equivocations(10).unwrap(), vec![(forged.change.peer, forged.change.start)]);
    let view = cloud.document("tasks", "a").unwrap().and_then(|d| d.view("a")).unwrap();
    assert_eq!(view["title"], "honest");
    // Sent again later: still refused, the honest change still a duplicate.
    let again = cloud.apply_changes(&[forged, honest[0].clone()]).unwrap();
    assert_eq!((again.refused, again.duplicates, again.applied), (1, 1, 0), "{again:?}");
}

#[test]
fn per_author_digests_find_an_equivocation_between_a_phone_and_the_cloud_and_follow_other_relays() {
    let Some(url) = common::fresh_database() else { return };
    let (relay1, relay2) = (PgReplica::connect(&url, 1).unwrap(), PgReplica::connect(&url, 1).unwrap());
    let author = Store::open(":memory:").unwrap();
    author.upsert("tasks", serde_json::json!({"_id": "a", "title": "honest"})).unwrap();
    let honest = author.replica().changes_since(&Summary::new()).unwrap();
    let mut forged = honest[0].clone();
    for op in &mut forged.change.ops {
        if let Op::Set { value, .. } = op {
            *value = shoaldb::Scalar::Str("forged".into());
        }
    }
    // The phone holds the honest change, the cloud the forged one: the same counters, other contents.
    let phone = Store::open(":memory:").unwrap();
    phone.replica().apply_changes(&honest).unwrap();
    relay1.apply_changes(std::slice::from_ref(&forged)).unwrap();
    let who = forged.change.peer;
    assert_eq!(relay1.differing_authors(&digests(&phone.replica())).unwrap(), vec![who]);
    assert_eq!(phone.replica().differing_authors(&digests(&relay1)).unwrap(), vec![who]);
    // A phone holding the cloud's version finds nothing.
    let same = Store::open(":memory:").unwrap();
    same.replica().apply_changes(std::slice::from_ref(&forged)).unwrap();
    assert!(relay2.differing_authors(&digests(&same.replica())).unwrap().is_empty());
    assert_eq!(digests(&relay2), digests(&same.replica()));
    // The author writes on; another relay takes it in. The first relay, told of the commit (its NOTIFY), digests
    // what the database holds now — as does a phone holding the same.
    author.upsert("tasks", serde_json::json!({"_id": "b", "title": "later"})).unwrap();
    let later = author.replica().changes_since(&phone.replica().summary().unwrap()).unwrap();
    relay2.apply_changes(&later).unwrap();
    same.replica().apply_changes(&later).unwrap();
    relay1.changed();
    assert_eq!(digests(&relay1), digests(&same.replica()));
    assert_eq!(digests(&relay2), digests(&same.replica()));
}

#[test]
fn one_author_gets_no_more_than_its_quota_of_changes_kept_aside_and_they_are_counted_exactly() {
    use shoaldb::store::MAX_PENDING_PER_AUTHOR;
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let reference = Store::open(":memory:").unwrap();
    // One document edited again and again: each change depends on the one before.
    let author = Store::open(":memory:").unwrap();
    for i in 0..MAX_PENDING_PER_AUTHOR + 51 {
        author.upsert("tasks", serde_json::json!({"_id": "a", "n": i})).unwrap();
    }
    let all = author.replica().changes_since(&Summary::new()).unwrap();
    assert_eq!(all.len(), MAX_PENDING_PER_AUTHOR + 51);
    // Without the first, none is ready: the author's quota is kept aside, the rest dropped (it will come again).
    let want = reference.replica().apply_changes(&all[1..]).unwrap();
    assert_eq!(cloud.apply_changes(&all[1..]).unwrap(), want);
    assert_eq!(pending_counted_exactly(&url), MAX_PENDING_PER_AUTHOR as i64);
    // The first arrives: what was kept aside applies, and is counted off.
    let want = reference.replica().apply_changes(&all[..1]).unwrap();
    assert_eq!(cloud.apply_changes(&all[..1]).unwrap(), want);
    assert_eq!(pending_counted_exactly(&url), 0);
    // The rest, sent again, applies too.
    let want = reference.replica().apply_changes(&all).unwrap();
    assert_eq!(cloud.apply_changes(&all).unwrap(), want);
    assert_eq!(
        cloud.document("tasks", "a").unwrap().map(|d| d.encode()),
        reference.document("tasks", "a").unwrap().map(|d| d.encode())
    );
}

#[test]
fn a_malformed_change_fails_the_batch_and_writes_nothing() {
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let phone = Store::open(":memory:").unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "a", "title": "x"})).unwrap();
    let mut changes = phone.replica().changes_since(&Summary::new()).unwrap();
    let mut bad = changes[0].clone();
    bad.collection = String::new();
    changes.push(bad);
    assert!(cloud.apply_changes(&changes).is_err());
    assert!(cloud.summary().unwrap().is_empty());
    assert!(cloud.document("tasks", "a").unwrap().is_none());
    // Applied together with other links' batches, it fails alone: theirs are applied.
    let other = Store::open(":memory:").unwrap();
    other.upsert("tasks", serde_json::json!({"_id": "b", "title": "y"})).unwrap();
    let good = other.replica().changes_since(&Summary::new()).unwrap();
    let results = cloud.apply_batches(&[&changes[..1], &changes, &good], None);
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().applied, 1, "{results:?}");
    assert!(results[1].is_err(), "{results:?}");
    assert_eq!(results[2].as_ref().unwrap().applied, 1, "{results:?}");
    assert!(cloud.document("tasks", "a").unwrap().is_some());
    assert!(cloud.document("tasks", "b").unwrap().is_some());
}

#[test]
fn the_attachment_read_check_finds_the_documents_naming_the_hash() {
    use shoaldb::security::certificate::Permissions;
    use shoaldb::security::Grant;
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let phone = Store::open(":memory:").unwrap();
    let plans = phone.put_attachment_bytes(b"the plans", Default::default()).unwrap();
    let minutes = phone.put_attachment_bytes(b"the minutes", Default::default()).unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "t", "file": plans.to_json()})).unwrap();
    // Deep in a note, and a note that only mentions the plans' hash in its text.
    phone.upsert("notes", serde_json::json!({"_id": "n", "a": {"b": [1, minutes.to_json()]}})).unwrap();
    let mention = format!("\"_attachment\":\"{}\"", plans.hash_hex());
    phone.upsert("notes", serde_json::json!({"_id": "q", "text": mention})).unwrap();
    cloud.apply_changes(&phone.replica().changes_since(&Summary::new()).unwrap()).unwrap();
    let notes = Permissions::new(vec![Grant::parse("read notes").unwrap()]).read_rules(phone.peer_id());
    let tasks = Permissions::new(vec![Grant::parse("read tasks").unwrap()]).read_rules(phone.peer_id());
    assert!(!cloud.attachment_readable(&plans.hash, &notes).unwrap(), "named by a task only");
    assert!(cloud.attachment_readable(&plans.hash, &tasks).unwrap());
    assert!(cloud.attachment_readable(&minutes.hash, &notes).unwrap(), "named deep in a note");
    assert!(!cloud.attachment_readable(&minutes.hash, &tasks).unwrap());
}

#[test]
fn a_string_holding_u0000_is_kept_exactly_and_does_not_fail_its_batch() {
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let phone = Store::open(":memory:").unwrap();
    phone.upsert("notes", serde_json::json!({"_id": "n", "text": "a\u{0}b", "k\u{0}": 1})).unwrap();
    let report = cloud.apply_changes(&phone.replica().changes_since(&Summary::new()).unwrap()).unwrap();
    assert_eq!(report.applied, 1);
    // The state is exact; the JSONB view (for SQL) holds U+FFFD where JSONB cannot hold U+0000.
    assert_eq!(cloud.document("notes", "n").unwrap().and_then(|d| d.view("n")), phone.get("notes", "n").unwrap());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let text: String = client.query_one("SELECT view->>'text' FROM docs WHERE doc_id = 'n'", &[]).unwrap().get(0);
    assert_eq!(text, "a\u{FFFD}b");
}

/// The states a phone that compacted sends to `to` (a peer holding `have`): every document's that `to` lacks
/// changes of, in one go.
fn states_for(from: &dyn Replica, have: &Summary) -> Vec<shoaldb::DocState> {
    from.states_missing(have, &Summary::new(), 0, usize::MAX).unwrap().into_iter().map(|(_, s)| s).collect()
}

/// Devices that compacted send documents' states in place of the changes they folded (issue 17): the cloud merges
/// them exactly as a phone does — the same reports, summary and bytes as a phone given the same changes and
/// states, and the same documents as a phone that applied every change — with changes it held already, and
/// with changes kept aside that a state makes ready. Then it serves what it holds only folded as states: a new
/// phone catching up from it, and another relay of the database, end with the same.
#[test]
fn the_cloud_merges_states_from_devices_that_compacted_as_a_phone_does() {
    let Some(_) = common::server() else { return };
    let mut pending_seen = false;
    for seed in 0..seeds() {
        let url = common::fresh_database().unwrap();
        let cloud = PgReplica::connect(&url, 2).unwrap();
        let other_relay = PgReplica::connect(&url, 1).unwrap();
        assert!(other_relay.summary().unwrap().is_empty(), "read before anything is written");
        let mut rng = SeededRng::new(seed);
        let changes = phone_changes(&mut rng);
        let everything = Store::open(":memory:").unwrap();
        everything.replica().apply_changes(&changes).unwrap();
        let compacted = Store::open(":memory:").unwrap();
        compacted.replica().apply_changes(&changes).unwrap();
        assert!(compacted.compact(&shoaldb::CompactionPolicy::everything()).unwrap().changes > 0);
        // The phone goes on editing after compacting (its states hold those edits); another phone edits a
        // document whose changes it folded (that change waits in the cloud for what the states bring).
        for _ in 0..3 {
            random_edits::apply_edit(&compacted, &random_edits::draw_edit(&mut rng, COLLECTIONS));
        }
        let mut later = compacted.replica().changes_since(&everything.replica().summary().unwrap()).unwrap();
        let (c, id) = all_docs().find(|(c, id)| everything.get(c, id).unwrap().is_some()).unwrap();
        everything.upsert(c, serde_json::json!({"_id": id, "title": "edited elsewhere"})).unwrap();
        later.extend(everything.replica().changes_since(&compacted.replica().summary().unwrap()).unwrap());
        everything.replica().apply_changes(&later).unwrap();
        // The cloud (and a phone beside it, as the reference) first gets some changes: a prefix, a random sample
        // of the rest, and those made after the compaction, of which some wait for their dependencies.
        let mirror = Store::open(":memory:").unwrap();
        let prefix = rng.below(changes.len() as u64 / 2 + 1) as usize;
        let mut early: Vec<DocChange> = changes[..prefix].to_vec();
        early.extend(changes[prefix..].iter().filter(|_| rng.chance(0.2)).cloned());
        // Never the last change (each phone's changes are there, so it may be there twice): the cloud lacks one.
        let last = changes.last().map(|dc| (dc.change.peer, dc.change.start));
        early.retain(|dc| Some((dc.change.peer, dc.change.start)) != last);
        early.extend(later);
        let report = cloud.apply_changes(&early).unwrap();
        assert_eq!(report, mirror.replica().apply_changes(&early).unwrap(), "seed {seed}");
        pending_seen |= report.pending > 0;
        let states = states_for(&compacted.replica(), &cloud.summary().unwrap());
        assert!(!states.is_empty(), "seed {seed}: the cloud lacks changes the phone folded");
        let got = cloud.apply_states(&states).unwrap();
        assert_eq!(got, mirror.replica().apply_states(&states).unwrap(), "seed {seed}: the reports of the states");
        assert!(got.applied > 0, "seed {seed}: {got:?}");
        assert_same(seed, &mirror, &cloud);
        assert_eq!(pending_counted_exactly(&url), 0, "seed {seed}: the states made every change kept aside ready");
        assert_eq!(cloud.summary().unwrap(), everything.replica().summary().unwrap(), "seed {seed}: all held");
        for (c, id) in all_docs() {
            let want = everything.document(c, &id).unwrap().map(|d| d.encode());
            assert_eq!(cloud.document(c, &id).unwrap().map(|d| d.encode()), want, "seed {seed}: {c}/{id}");
        }
        // Merged again, or received again as changes: nothing changes.
        let again = cloud.apply_states(&states).unwrap();
        assert_eq!((again.applied, again.duplicates), (0, states.len()), "seed {seed}: {again:?}");
        let again = cloud.apply_changes(&changes).unwrap();
        assert_eq!((again.applied, again.refused, again.pending), (0, 0, 0), "seed {seed}: {again:?}");
        assert_same(seed, &mirror, &cloud);
        // A new phone catches up from the cloud: states for what it holds only folded, changes for the rest.
        let newcomer = Store::open(":memory:").unwrap();
        let states = states_for(&cloud, &Summary::new());
        assert!(!states.is_empty(), "seed {seed}: the cloud serves what it holds only folded as states");
        for s in &states {
            let folded = cloud.folded_of_doc(cloud.doc_number(&s.collection, &s.doc_id).unwrap().unwrap()).unwrap();
            assert!(!folded.is_empty() && folded.difference(&s.changes).is_empty(), "seed {seed}: {}", s.doc_id);
        }
        newcomer.replica().apply_states(&states).unwrap();
        newcomer
            .replica()
            .apply_changes(&cloud.changes_since(&newcomer.replica().summary().unwrap()).unwrap())
            .unwrap();
        assert_eq!(newcomer.replica().summary().unwrap(), cloud.summary().unwrap(), "seed {seed}: newcomer");
        for (c, id) in all_docs() {
            assert_eq!(newcomer.get(c, &id).unwrap(), everything.get(c, &id).unwrap(), "seed {seed}: {c}/{id}");
        }
        assert!(states_for(&cloud, &newcomer.replica().summary().unwrap()).is_empty());
        // Another relay of the database brings its summary up to date from the journal of merges.
        other_relay.changed();
        assert_eq!(other_relay.summary().unwrap(), cloud.summary().unwrap(), "seed {seed}: the other relay");
        assert_eq!(digests(&other_relay), digests(&cloud), "seed {seed}: the other relay's digests");
        assert_eq!(states_for(&other_relay, &Summary::new()), states, "seed {seed}: the other relay's states");
    }
    assert!(pending_seen, "no change waited for what a state brings");
}

/// A malformed state — garbage, over the size limit, or listing changes that do not fit its version — fails the
/// call and the cloud writes nothing, also of the good states beside it.
#[test]
fn a_malformed_state_fails_the_call_and_writes_nothing() {
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let phone = Store::open(":memory:").unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "a", "title": "x"})).unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "b", "title": "y"})).unwrap();
    phone.compact(&shoaldb::CompactionPolicy::everything()).unwrap();
    let good = states_for(&phone.replica(), &Summary::new());
    assert_eq!(good.len(), 2);
    let mut garbage = good[1].clone();
    garbage.state = vec![0xff; 40];
    let mut too_large = good[1].clone();
    too_large.state.resize(shoaldb::store::MAX_STATE_BYTES + 1, 0);
    let mut unfit = good[1].clone();
    unfit.changes.insert(shoaldb::PeerId(7), 1, 1);
    let mut short = good[1].clone();
    short.changes = Summary::new();
    for bad in [garbage, too_large, unfit, short] {
        assert!(cloud.apply_states(&[good[0].clone(), bad.clone()]).is_err(), "{bad:?} was taken");
        assert!(cloud.summary().unwrap().is_empty());
        assert!(cloud.document("tasks", "a").unwrap().is_none());
        assert!(states_for(&cloud, &Summary::new()).is_empty());
    }
    let report = cloud.apply_states(&good).unwrap();
    assert_eq!(report.applied, 2, "{report:?}");
    assert_eq!(cloud.summary().unwrap(), phone.replica().summary().unwrap());
}

/// Changes kept aside for longer than phones keep theirs (7 days) are dropped, oldest first, with the counts kept
/// exact; the others stay, and a dropped change sent again once its dependencies are here is applied.
#[test]
fn changes_kept_aside_for_longer_than_a_week_are_dropped() {
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let phone = Store::open(":memory:").unwrap();
    for n in 0..4 {
        phone.upsert("tasks", serde_json::json!({"_id": format!("t{n}"), "n": 0})).unwrap();
    }
    let first = phone.replica().changes_since(&Summary::new()).unwrap();
    for n in 0..4 {
        phone.upsert("tasks", serde_json::json!({"_id": format!("t{n}"), "n": 1})).unwrap();
    }
    let second = phone.replica().changes_since(&phone_summary_of(&first)).unwrap();
    // The second round waits for the first.
    assert_eq!(cloud.apply_changes(&second).unwrap().pending, 4);
    assert_eq!(cloud.expire_pending().unwrap(), 0, "none is a week old");
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let aged = db
        .execute(
            "UPDATE pending SET received = now() - interval '8 days' WHERE collection = 'tasks' \
             AND doc_id IN ('t0', 't2')",
            &[],
        )
        .unwrap();
    assert_eq!(aged, 2);
    assert_eq!(cloud.expire_pending().unwrap(), 2);
    assert_eq!(pending_counted_exactly(&url), 2);
    // The dependencies arrive: the two kept are applied; the two dropped come again and are applied too.
    let report = cloud.apply_changes(&first).unwrap();
    assert_eq!((report.applied, report.pending), (6, 0), "{report:?}");
    assert_eq!(cloud.apply_changes(&second).unwrap().applied, 2);
    assert_eq!(pending_counted_exactly(&url), 0);
    assert_eq!(cloud.summary().unwrap(), phone.replica().summary().unwrap());
}

/// The summary of exactly `changes`.
fn phone_summary_of(changes: &[DocChange]) -> Summary {
    let mut s = Summary::new();
    for dc in changes {
        s.insert(dc.change.peer, dc.change.start, dc.change.end());
    }
    s
}

/// A batch naming very many documents and authors (a hostile device's, or many links' batches applied together)
/// is applied without taking a lock per document and author: PostgreSQL's lock table is shared by every relay and
/// sized for about 64 locks per connection, so a transaction taking tens of thousands would fail — and make the
/// other relays' transactions fail meanwhile.
#[test]
fn a_batch_of_many_documents_and_authors_does_not_exhaust_the_lock_table() {
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let phone = Store::open(":memory:").unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "x", "n": 1})).unwrap();
    let one = phone.replica().changes_since(&Summary::new()).unwrap().remove(0);
    let many: Vec<DocChange> = (0..20_000u64)
        .map(|i| {
            let mut dc = one.clone();
            dc.doc_id = format!("d{i}");
            dc.change.peer = shoaldb::PeerId(1_000_000 + i);
            dc
        })
        .collect();
    let report = cloud.apply_changes(&many).unwrap();
    assert_eq!(report.applied, many.len(), "{report:?}");
    assert_eq!(cloud.summary().unwrap().peers().count(), many.len());
}

/// Batches too large for a lock per document and author, and small ones, applied at once by two relays to the same
/// document: they still exclude each other, so the document loses none of their changes.
#[test]
fn large_and_small_batches_applied_at_once_lose_nothing() {
    let Some(url) = common::fresh_database() else { return };
    let relays = [PgReplica::connect(&url, 1).unwrap(), PgReplica::connect(&url, 1).unwrap()];
    let phone = Store::open(":memory:").unwrap();
    phone.upsert("tasks", serde_json::json!({"_id": "x", "n": 1})).unwrap();
    let one = phone.replica().changes_since(&Summary::new()).unwrap().remove(0);
    let mut author = 1_000_000u64;
    let mut change = |doc: String| {
        author += 1;
        let mut dc = one.clone();
        dc.doc_id = doc;
        dc.change.peer = shoaldb::PeerId(author);
        dc
    };
    // Large: 100 documents each and "x"; small: "x" alone.
    let mut large: Vec<Vec<DocChange>> = Vec::new();
    for b in 0..20 {
        let mut batch: Vec<DocChange> = (0..100).map(|d| change(format!("b{b}-{d}"))).collect();
        batch.push(change("x".into()));
        large.push(batch);
    }
    let small: Vec<Vec<DocChange>> = (0..100).map(|_| vec![change("x".into())]).collect();
    std::thread::scope(|s| {
        let [a, b] = &relays;
        s.spawn(|| large.iter().for_each(|batch| assert_eq!(a.apply_changes(batch).unwrap().applied, batch.len())));
        s.spawn(|| small.iter().for_each(|batch| assert_eq!(b.apply_changes(batch).unwrap().applied, 1)));
    });
    let reference = Store::open(":memory:").unwrap();
    reference.replica().apply_changes(&large.concat()).unwrap();
    reference.replica().apply_changes(&small.concat()).unwrap();
    let x = relays[0].document("tasks", "x").unwrap().unwrap();
    assert_eq!(x.encode(), reference.document("tasks", "x").unwrap().unwrap().encode(), "x lost changes");
}

/// The change log's rows: (author, start, end) of each, in order.
fn log_rows(db: &mut postgres::Client) -> Vec<(u64, u64, u64)> {
    let rows = db.query("SELECT author, start_ctr, end_ctr FROM changes ORDER BY author, start_ctr", &[]).unwrap();
    rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64, r.get::<_, i64>(2) as u64)).collect()
}

/// A phone that catches up from `cloud` as a session does (states for what it lacks only folded, then changes)
/// ends holding what the cloud does, with `reference`'s documents. Returns how many states it was sent.
fn catch_up(seed: u64, phone: &Store, cloud: &PgReplica, reference: &Store) -> usize {
    let states = states_for(cloud, &phone.replica().summary().unwrap());
    phone.replica().apply_states(&states).unwrap();
    phone.replica().apply_changes(&cloud.changes_since(&phone.replica().summary().unwrap()).unwrap()).unwrap();
    assert_eq!(phone.replica().summary().unwrap(), cloud.summary().unwrap(), "seed {seed}: caught up");
    for (c, id) in all_docs() {
        assert_eq!(phone.get(c, &id).unwrap(), reference.get(c, &id).unwrap(), "seed {seed}: {c}/{id}");
    }
    states.len()
}

/// A roster's frontier takes each member's acknowledgements from a day that ended before the roster's time; a
/// member not heard from by then holds it back; old days go, but each device's newest.
#[test]
fn a_rosters_frontier_is_what_every_member_acknowledged_before_its_time() {
    use shoaldb::security::DeviceKey;
    use shoaldb::PeerId;
    let Some(_) = common::server() else { return };
    let url = common::fresh_database().unwrap();
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let held = |ranges: &[(u64, u64, u64)]| {
        let mut s = Summary::new();
        for &(author, lo, hi) in ranges {
            s.insert(PeerId(author), lo, hi);
        }
        s
    };
    let (a, b, c) = (DeviceKey([1; 32]), DeviceKey([2; 32]), DeviceKey([3; 32]));
    let back = |db: &mut postgres::Client, device: &DeviceKey, days: i32| {
        db.execute(
            "UPDATE device_ack_days SET day = day - make_interval(days => $2) WHERE device = $1 AND day > now() - interval '1 day'",
            &[&&device.0[..], &days],
        )
        .unwrap();
    };
    // `a` said what it held three days ago, and more today; `b` two days ago; `c` only today.
    cloud.keep_peer_summary(&a, false, &held(&[(1, 1, 10), (2, 1, 5)])).unwrap();
    back(&mut db, &a, 3);
    cloud.keep_peer_summary(&a, false, &held(&[(1, 1, 20), (2, 1, 9)])).unwrap();
    cloud.keep_peer_summary(&b, false, &held(&[(1, 1, 15), (2, 1, 3), (3, 1, 4)])).unwrap();
    back(&mut db, &b, 2);
    cloud.keep_peer_summary(&c, false, &held(&[(1, 1, 20)])).unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    const DAY: u64 = 86_400_000;
    let every = |members: &[DeviceKey], until: u64| cloud.roster_frontier(members, until).unwrap().map(|r| r.every);
    assert_eq!(every(&[a, b], now_ms - DAY), Some(held(&[(1, 1, 10), (2, 1, 3)])));
    assert_eq!(
        cloud.roster_frontier(&[a, b], now_ms - DAY).unwrap().map(|r| r.some),
        Some(held(&[(1, 1, 15), (2, 1, 5), (3, 1, 4)])),
        "what some member held: its own changes not sent yet may be among them"
    );
    assert_eq!(every(&[a, b, c], now_ms - DAY), None, "c was not heard from by then");
    // Today is not over: what `a` said today does not count for a roster of now, and does for one of tomorrow.
    assert_eq!(every(&[a], now_ms), Some(held(&[(1, 1, 10), (2, 1, 5)])));
    assert_eq!(every(&[a, b, c], now_ms + 2 * DAY), Some(held(&[(1, 1, 15)])));
    // Days before twice the horizon go, but each device's newest of them.
    db.execute(
        "INSERT INTO device_ack_days (device, day, summary) SELECT device, day - interval '2 days', summary \
         FROM device_ack_days WHERE device = $1 AND day < now() - interval '1 day'",
        &[&&a.0[..]],
    )
    .unwrap();
    let days = |db: &mut postgres::Client, device: &DeviceKey| -> i64 {
        db.query_one("SELECT count(*) FROM device_ack_days WHERE device = $1", &[&&device.0[..]]).unwrap().get(0)
    };
    assert_eq!(days(&mut db, &a), 3);
    cloud.fleet_frontier(DAY).unwrap();
    assert_eq!(days(&mut db, &a), 2, "the oldest day went");
    assert_eq!(every(&[a, b], now_ms - DAY), Some(held(&[(1, 1, 10), (2, 1, 3)])));
}

/// The cloud keeps what each device says it holds, and folds out of its log what every device heard from within
/// the horizon holds (the fleet's frontier) — once the feed's retention is over, unsigned changes only — and,
/// after the horizon, what some device still lacks. What it folded stays held: summaries, documents and other
/// relays agree; a device that holds the frontier catches up with changes alone, one that lacks folded changes
/// with states, and nothing comes back or goes missing.
#[test]
fn the_cloud_folds_what_the_fleet_holds_out_of_its_log() {
    use shoaldb::security::DeviceKey;
    let Some(_) = common::server() else { return };
    let mut folded_some = false;
    for seed in 0..seeds() {
        let url = common::fresh_database().unwrap();
        let cloud = PgReplica::connect(&url, 2).unwrap();
        let other_relay = PgReplica::connect(&url, 1).unwrap();
        let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        let mut rng = SeededRng::new(seed);
        let changes = phone_changes(&mut rng);
        let everything = Store::open(":memory:").unwrap();
        everything.replica().apply_changes(&changes).unwrap();
        cloud.apply_changes(&changes).unwrap();
        let documents = |cloud: &PgReplica| -> Vec<Option<Vec<u8>>> {
            all_docs().map(|(c, id)| cloud.document(c, &id).unwrap().map(|d| d.encode())).collect()
        };
        let (summary, docs_before) = (cloud.summary().unwrap(), documents(&cloud));
        other_relay.summary().unwrap();
        // Two devices: one holds everything, one a part; and one that held nothing, heard from long ago.
        let behind = Store::open(":memory:").unwrap();
        behind.replica().apply_changes(&changes[..rng.below(changes.len() as u64) as usize]).unwrap();
        let (full, part, gone) = (DeviceKey([1; 32]), DeviceKey([2; 32]), DeviceKey([3; 32]));
        cloud.keep_peer_summary(&full, false, &everything.replica().summary().unwrap()).unwrap();
        cloud.keep_peer_summary(&part, false, &behind.replica().summary().unwrap()).unwrap();
        cloud.keep_peer_summary(&gone, false, &Summary::new()).unwrap();
        // A device claiming changes of very many authors does not make its row grow past what the cloud holds.
        let mut inflated = everything.replica().summary().unwrap();
        for a in 0..20_000u64 {
            inflated.insert(shoaldb::PeerId(a * 7 + 1), 1, 1 + a % 5);
        }
        let boaster = DeviceKey([4; 32]);
        cloud.keep_peer_summary(&boaster, false, &inflated).unwrap();
        let row = db.query_one("SELECT summary FROM device_acks WHERE device = $1", &[&&boaster.0[..]]).unwrap();
        assert_eq!(Summary::decode_dense(row.get(0)).unwrap(), summary, "seed {seed}: only what the cloud holds");
        // Nor does it count for a roster's frontier, cut: it would leave out the device's changes not sent yet.
        let days: i64 =
            db.query_one("SELECT count(*) FROM device_ack_days WHERE device = $1", &[&&boaster.0[..]]).unwrap().get(0);
        assert_eq!(days, 0, "seed {seed}: a cut acknowledgement is no day's");
        let policy = shoaldb::CompactionPolicy::default();
        // Received just now: the feed keeps them for its retention.
        assert_eq!(cloud.compact(&policy, 3_600_000).unwrap().changes, 0, "seed {seed}: within the retention");
        db.execute("UPDATE changes SET received = received - interval '2 hours'", &[]).unwrap();
        // The device that holds nothing holds everything back while it counts.
        assert_eq!(cloud.compact(&policy, 3_600_000).unwrap().changes, 0, "seed {seed}: a device holds nothing");
        db.execute("UPDATE device_acks SET heard = now() - interval '31 days' WHERE device = $1", &[&&gone.0[..]])
            .unwrap();
        let frontier = behind.replica().summary().unwrap();
        assert_eq!(cloud.fleet_frontier(policy.horizon_ms).unwrap(), Some(frontier.clone()), "seed {seed}");
        let before = log_rows(&mut db);
        let report = cloud.compact(&policy, 3_600_000).unwrap();
        let after = log_rows(&mut db);
        let (kept, went): (Vec<_>, Vec<_>) =
            before.iter().partition(|(a, s, e)| !frontier.contains(shoaldb::PeerId(*a), *s, *e));
        assert_eq!(after, kept.into_iter().copied().collect::<Vec<_>>(), "seed {seed}: exactly the frontier went");
        assert_eq!(report.changes as usize, went.len(), "seed {seed}: {report:?}");
        assert_eq!(went.is_empty(), frontier.is_empty(), "seed {seed}");
        folded_some |= !went.is_empty() && went.len() < before.len();
        // Still held, the same documents; received again, they are duplicates.
        assert_eq!(cloud.summary().unwrap(), summary, "seed {seed}");
        assert_eq!(documents(&cloud), docs_before, "seed {seed}");
        let again = cloud.apply_changes(&changes).unwrap();
        assert_eq!((again.applied, again.pending, again.refused), (0, 0, 0), "seed {seed}: {again:?}");
        assert_eq!(log_rows(&mut db), after, "seed {seed}: nothing logged again");
        // The device that held the frontier needs no state; a new one gets states for what went.
        assert_eq!(catch_up(seed, &behind, &cloud, &everything), 0, "seed {seed}: the part-holder got states");
        let newcomer = Store::open(":memory:").unwrap();
        assert_eq!(catch_up(seed, &newcomer, &cloud, &everything) > 0, !went.is_empty(), "seed {seed}");
        // Another relay learns which changes have no row any more.
        other_relay.changed();
        assert_eq!(other_relay.summary().unwrap(), summary, "seed {seed}: the other relay");
        assert_eq!(digests(&other_relay), digests(&cloud), "seed {seed}: the other relay's digests");
        assert_eq!(
            states_for(&other_relay, &Summary::new()),
            states_for(&cloud, &Summary::new()),
            "seed {seed}: the other relay's states"
        );
        // After the horizon, the rest goes too, whoever lacks it — but not a signed change.
        db.execute("UPDATE changes SET received = received - interval '31 days'", &[]).unwrap();
        let signed = after.first().map(|&(a, s, _)| {
            db.execute(
                "UPDATE changes SET sig = '\\x00' WHERE author = $1 AND start_ctr = $2",
                &[&(a as i64), &(s as i64)],
            )
            .unwrap();
            (a, s)
        });
        let report = cloud.compact(&policy, 3_600_000).unwrap();
        let left = log_rows(&mut db);
        assert_eq!(left.iter().map(|&(a, s, _)| (a, s)).collect::<Vec<_>>(), signed.into_iter().collect::<Vec<_>>());
        assert_eq!(report.changes as usize, after.len() - left.len(), "seed {seed}");
        assert_eq!(cloud.summary().unwrap(), summary, "seed {seed}");
        assert_eq!(documents(&cloud), docs_before, "seed {seed}");
        let late = Store::open(":memory:").unwrap();
        catch_up(seed, &late, &cloud, &everything);
    }
    assert!(folded_some, "no seed folded part of the log");
}

/// A change that makes another author's change kept aside ready applies both, and so writes what is held of that
/// other author too: it must wait for every transaction that may be writing it (here: one of another relay, under
/// way), not only for those of the authors the batch names — else the two write that author's ranges over each
/// other, and the summary loses a change the log holds.
#[test]
fn a_change_kept_aside_is_taken_only_under_its_authors_lock() {
    let Some(url) = common::fresh_database() else { return };
    let cloud = PgReplica::connect(&url, 1).unwrap();
    let (a, b) = (Store::open(":memory:").unwrap(), Store::open(":memory:").unwrap());
    a.upsert("tasks", serde_json::json!({"_id": "x", "n": 1})).unwrap();
    let from_a = a.replica().changes_since(&Summary::new()).unwrap();
    b.replica().apply_changes(&from_a).unwrap();
    b.upsert("tasks", serde_json::json!({"_id": "x", "m": 2})).unwrap();
    let from_b = b.replica().changes_since(&a.replica().summary().unwrap()).unwrap();
    assert_eq!(cloud.apply_changes(&from_b).unwrap().pending, 1, "b's change waits for a's");
    // Another relay's transaction under way (every one holds the database-wide lock shared).
    let mut other = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut under_way = other.transaction().unwrap();
    under_way.execute("SELECT pg_advisory_xact_lock_shared(0, 0)", &[]).unwrap();
    let mut watch = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    std::thread::scope(|s| {
        let applying = s.spawn(|| cloud.apply_changes(&from_a).unwrap());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            assert!(!applying.is_finished(), "b's change was taken while another transaction could write b's ranges");
            let waiting: i64 = watch
                .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted", &[])
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the batch neither finished nor waited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        under_way.commit().unwrap();
        let report = applying.join().unwrap();
        assert_eq!((report.applied, report.pending), (2, 0), "{report:?}");
    });
    assert_eq!(pending_counted_exactly(&url), 0);
    assert_eq!(cloud.summary().unwrap(), b.replica().summary().unwrap());
}
