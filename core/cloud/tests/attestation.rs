//! Attested states at the cloud peer (issue 17, certificate mode): a relay with an `attest` grant signs documents'
//! states, phones fold their signed changes under them and the cloud folds its own; a phone that folded under its
//! own attestation leaves the cloud complete; a change kept aside that an attested state makes ready goes through
//! the write check. Real relays on PostgreSQL, phones over loopback TCP.

mod common;

use serde_json::json;
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::{ChangeCheck, Enrolment, Identity, RefusalReason, SigningKey};
use shoaldb::store::Replica as _;
use shoaldb::{CompactionPolicy, DocChange, PeerId, Query, Store, Summary};
use shoaldb_cloud::{PgReplica, Relay, RelayConfig};
use std::net::SocketAddr;

const TASKS: &str = "tasks";

/// A relay in certificate mode whose certificate has `grants`; its enrolment too.
async fn relay(url: &str, dir: &tempfile::TempDir, authority: &SigningKey, grants: &[&str]) -> (Relay, Enrolment) {
    let keys = Store::open(dir.path().join("relay-keys.db")).unwrap();
    let enrolment = common::enrol(&keys, authority, 1, grants);
    let identity: Identity = shoaldb::node::device_identity(&keys).unwrap();
    let mut config = RelayConfig::new(url, "127.0.0.1:0".parse().unwrap(), enrolment.clone());
    config.identity = Some(identity);
    (Relay::start(config).await.unwrap(), enrolment)
}

/// An enrolled phone's store (serial `serial`, `grants`).
fn phone(dir: &tempfile::TempDir, authority: &SigningKey, name: &str, serial: u64, grants: &[&str]) -> Store {
    let store = Store::open(dir.path().join(format!("{name}.db"))).unwrap();
    common::enrol(&store, authority, serial, grants);
    store
}

/// Start syncing `store` with the relay at `via`.
async fn link(store: &Store, name: &str, via: SocketAddr) -> Node {
    let enrolment = shoaldb::enrolment::load(store).unwrap().expect("enrolled");
    Node::start(store.clone(), NodeConfig::new(name, enrolment).with_mdns(false).connect_to(via)).await.unwrap()
}

/// Four tasks, one removed, one counted: the same edits on every run.
fn edits(store: &Store) {
    for d in 0..4 {
        store.upsert(TASKS, json!({"_id": format!("t{d}"), "title": format!("task {d}")})).unwrap();
    }
    store.write(|t| t.update(TASKS, "t0", |ed| Ok(ed.increment("visits", 3)?))).unwrap();
    store.remove(TASKS, "t1").unwrap();
}

fn everything() -> CompactionPolicy {
    CompactionPolicy::everything()
}

/// The number of rows in the cloud's change log.
fn cloud_log_rows(url: &str) -> i64 {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    db.query_one("SELECT count(*) FROM changes", &[]).unwrap().get(0)
}

/// The number of attested states the cloud keeps.
fn cloud_attested(url: &str) -> i64 {
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    db.query_one("SELECT count(*) FROM attested", &[]).unwrap().get(0)
}

fn all_tasks(store: &Store) -> Vec<serde_json::Value> {
    store.find(TASKS, &Query::all()).unwrap()
}

/// Fold what the policy allows, and whether the log is then empty.
fn folds_everything(store: &Store) -> bool {
    store.compact(&everything()).is_ok() && store.storage_stats().is_ok_and(|s| s.log_changes == 0)
}

/// A relay that may attest everything, and two phones linked to it: `a` made [`edits`], `b` one of its own.
struct Fleet {
    dir: tempfile::TempDir,
    authority: SigningKey,
    relay: Relay,
    relay_enrolment: Enrolment,
    via: SocketAddr,
    a: Store,
    b: Store,
    a_node: Node,
    b_node: Node,
}

async fn attesting_relay_and_two_phones(url: &str) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let (relay, relay_enrolment) = relay(url, &dir, &authority, &["read *", "write *", "attest *"]).await;
    let via = relay.listen_addr().unwrap();
    let rw = ["read *", "write *"];
    let (a, b) = (phone(&dir, &authority, "a", 2, &rw), phone(&dir, &authority, "b", 3, &rw));
    edits(&a);
    b.upsert(TASKS, json!({"_id": "t2", "owner": "b"})).unwrap();
    let (a_node, b_node) = (link(&a, "a", via).await, link(&b, "b", via).await);
    Fleet { dir, authority, relay, relay_enrolment, via, a, b, a_node, b_node }
}

/// The relay signs documents' states: a phone linked then takes them live, a phone away meanwhile asks for them as
/// its session starts, and both fold every signed change; the cloud folds its own log under them, and a new phone
/// with offline edits catches up from attested states alone, a removed document staying removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cloud_attests_and_every_device_folds_its_signed_changes() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let Fleet { dir, authority, relay, relay_enrolment, via, a, b, a_node, b_node } =
        attesting_relay_and_two_phones(&url).await;
    let rw = ["read *", "write *"];
    let cloud = relay.replica().clone();
    let same =
        |x: &Store, y: &Store| x.replica().summary().ok() == y.replica().summary().ok() && all_tasks(x) == all_tasks(y);
    common::eventually("both phones hold the same", || same(&a, &b)).await;
    let held = a.replica().summary().unwrap();
    common::eventually("the cloud holds it all", || {
        tokio::task::block_in_place(|| cloud.summary()).is_ok_and(|s| held.difference(&s).is_empty())
    })
    .await;
    // Signed changes: nobody folds any before an attester signed their documents' states.
    assert_eq!(a.compact(&everything()).unwrap().changes, 0, "a folded signed changes with no attested state");
    let c = cloud.clone();
    let folded = tokio::task::spawn_blocking(move || c.compact(&everything(), 0)).await.unwrap().unwrap();
    assert_eq!(folded.changes, 0, "the cloud folded signed changes with no attested state");
    // Phone b is away while the relay attests.
    b_node.shutdown().await;
    let (c, e) = (cloud.clone(), relay_enrolment.clone());
    let report = tokio::task::spawn_blocking(move || c.attest(&e)).await.unwrap().unwrap();
    assert_eq!(report.documents, 4, "{report:?}");
    let (c, e) = (cloud.clone(), relay_enrolment.clone());
    let again = tokio::task::spawn_blocking(move || c.attest(&e)).await.unwrap().unwrap();
    assert_eq!(again.documents, 0, "nothing new to sign: {again:?}");
    let u = url.clone();
    assert_eq!(tokio::task::spawn_blocking(move || cloud_attested(&u)).await.unwrap(), 4);
    // a, linked, takes them live; b asks as it comes back.
    common::eventually("a folds every change", || folds_everything(&a)).await;
    let b_node = link(&b, "b", via).await;
    common::eventually("b folds every change", || folds_everything(&b)).await;
    for phone in [&a, &b] {
        let stats = phone.storage_stats().unwrap();
        assert!(stats.attested_bytes > 0 && stats.compacted_documents == 4, "{stats:?}");
    }
    // The cloud folds its own log under the states it signed.
    let rows = tokio::task::spawn_blocking({
        let u = url.clone();
        move || cloud_log_rows(&u)
    });
    let rows = rows.await.unwrap();
    assert_eq!(rows, 7, "a's six changes and b's one");
    let c = cloud.clone();
    let folded = tokio::task::spawn_blocking(move || c.compact(&everything(), 0)).await.unwrap().unwrap();
    assert_eq!((folded.changes as i64, folded.documents), (rows, 4), "{folded:?}");
    let u = url.clone();
    assert_eq!(tokio::task::spawn_blocking(move || cloud_log_rows(&u)).await.unwrap(), 0);
    // A new phone, with edits of its own made offline, catches up from the cloud's attested states alone.
    let late = phone(&dir, &authority, "late", 4, &rw);
    late.write(|t| {
        t.upsert(TASKS, json!({"_id": "t0"}))?;
        t.update(TASKS, "t0", |ed| Ok(ed.increment("visits", 1)?))
    })
    .unwrap();
    let own = late.replica().summary().unwrap();
    let late_node = link(&late, "late", via).await;
    common::eventually("the late phone and a hold the same", || same(&late, &a)).await;
    assert_eq!(late.get(TASKS, "t0").unwrap().unwrap()["visits"], 4);
    assert_eq!(late.get(TASKS, "t2").unwrap().unwrap()["owner"], "b");
    assert_eq!(late.get(TASKS, "t1").unwrap(), None, "removed before the compaction, and stays removed");
    let stats = late.storage_stats().unwrap();
    assert!(stats.attested_bytes > 0, "the late phone got attested states: {stats:?}");
    let logged = late.replica().log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap();
    assert!(!logged.is_empty() && logged.iter().all(|e| own.contains(e.peer, e.start, e.end)), "{logged:?}");
    for n in [late_node, b_node, a_node] {
        n.shutdown().await;
    }
    relay.shutdown().await;
}

/// A phone with an `attest` grant (a supervisor's) signs its documents' states and folds every change before it
/// ever reaches the cloud, whose relay may not attest: it sends the attested states, which the cloud merges and
/// keeps, and serves to a phone that reaches it later — whose own edits merge, a removed document staying removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_phone_that_folded_under_its_own_attestation_leaves_the_cloud_complete() {
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let (relay, relay_enrolment) = relay(&url, &dir, &authority, &["read *", "write *"]).await;
    let cloud = relay.replica().clone();
    let c = cloud.clone();
    let refused = tokio::task::spawn_blocking(move || c.attest(&relay_enrolment)).await.unwrap();
    assert!(matches!(refused, Err(shoaldb::Error::NotPermitted { .. })), "{refused:?}");
    let supervisor = phone(&dir, &authority, "supervisor", 2, &["read *", "write *", "attest *"]);
    edits(&supervisor);
    assert_eq!(supervisor.attest().unwrap().documents, 4);
    assert_eq!(supervisor.compact(&everything()).unwrap().changes, 6);
    assert_eq!(supervisor.storage_stats().unwrap().log_changes, 0);
    let held = supervisor.replica().summary().unwrap();
    let via = relay.listen_addr().unwrap();
    let supervisor_node = link(&supervisor, "supervisor", via).await;
    common::eventually("the cloud holds what the supervisor folded", || {
        tokio::task::block_in_place(|| cloud.summary()).is_ok_and(|s| held.difference(&s).is_empty())
    })
    .await;
    let u = url.clone();
    assert_eq!(tokio::task::spawn_blocking(move || (cloud_attested(&u), cloud_log_rows(&u))).await.unwrap(), (4, 0));
    for id in ["t0", "t1", "t2", "t3"] {
        let c = cloud.clone();
        let in_cloud = tokio::task::spawn_blocking(move || c.document(TASKS, id)).await.unwrap().unwrap();
        assert_eq!(in_cloud.map(|d| d.encode()), supervisor.document(TASKS, id).unwrap().map(|d| d.encode()), "{id}");
    }
    supervisor_node.shutdown().await;
    // A phone that reaches the cloud later, with an edit of its own, gets the states from it alone.
    let late = phone(&dir, &authority, "late", 3, &["read *", "write *"]);
    late.upsert(TASKS, json!({"_id": "t2", "owner": "late"})).unwrap();
    let late_node = link(&late, "late", via).await;
    common::eventually("the late phone holds what the supervisor folded", || {
        late.replica().summary().is_ok_and(|s| held.difference(&s).is_empty())
    })
    .await;
    assert_eq!(late.get(TASKS, "t2").unwrap().unwrap(), json!({"_id": "t2", "title": "task 2", "owner": "late"}));
    assert_eq!(late.get(TASKS, "t0").unwrap().unwrap()["visits"], 3);
    assert_eq!(late.get(TASKS, "t1").unwrap(), None, "removed before the compaction, and stays removed");
    assert_eq!(all_tasks(&late).len(), 3);
    // It holds the attested states, so it may fold its own change once one holds it: none does yet.
    assert!(late.storage_stats().unwrap().attested_bytes > 0);
    assert_eq!(late.compact(&everything()).unwrap().changes, 0);
    late_node.shutdown().await;
    relay.shutdown().await;
}

/// Refuses every change of one author.
struct Refuse(PeerId);

impl ChangeCheck for Refuse {
    fn may_write(
        &self,
        change: &DocChange,
        _as_seen: &mut dyn FnMut() -> shoaldb::Result<Option<serde_json::Value>>,
    ) -> Result<(), RefusalReason> {
        if change.change.peer == self.0 {
            return Err(RefusalReason::NotPermitted("refused by the test".into()));
        }
        Ok(())
    }
}

/// A change the cloud kept aside, waiting for a change it lacks, becomes ready when an attested state brings that
/// change: it is applied only if the write check lets its author write it.
#[test]
fn a_change_an_attested_state_makes_ready_goes_through_the_write_check() {
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let supervisor = phone(&dir, &authority, "supervisor", 2, &["read *", "write *", "attest *"]);
    supervisor.upsert(TASKS, json!({"_id": "t0", "title": "first"})).unwrap();
    supervisor.attest().unwrap();
    let first = supervisor.replica().changes_since(&Summary::new()).unwrap();
    let states = supervisor.replica().attested_states_wanted(&supervisor.replica().summary().unwrap(), 0, usize::MAX);
    let (_, attested) = states.unwrap().pop().expect("t0 attested");
    // Another phone edits the document after it: its change depends on the supervisor's.
    let writer = phone(&dir, &authority, "writer", 3, &["read *", "write *"]);
    writer.replica().apply_changes(&first).unwrap();
    writer.write(|t| t.update(TASKS, "t0", |ed| Ok(ed.set("owner", "writer")?))).unwrap();
    let theirs = writer.replica().changes_since(&supervisor.replica().summary().unwrap()).unwrap();
    assert_eq!(theirs.len(), 1);
    let author = theirs[0].change.peer;
    for (check, applied) in [(Refuse(author), false), (Refuse(PeerId(0)), true)] {
        let Some(url) = common::fresh_database() else { return };
        let cloud = PgReplica::connect(&url, 2).unwrap();
        let kept = cloud.apply_checked(&theirs, &check).unwrap();
        assert_eq!(kept.pending, 1, "{kept:?}");
        let report = cloud.apply_attested_states(std::slice::from_ref(&attested), &check).unwrap();
        assert_eq!(report.refusals.iter().any(|r| r.author == author), !applied, "{report:?}");
        let doc = cloud.document(TASKS, "t0").unwrap().expect("merged").view("t0").unwrap();
        assert_eq!(doc.get("owner").is_some(), applied, "{doc}");
        assert_eq!(doc["title"], "first");
        assert_eq!(cloud.summary().unwrap().overlaps(author, theirs[0].change.start, theirs[0].change.start), applied);
        // The state is kept, and served to a device asking for the supervisor's change.
        let first_changes = supervisor.replica().summary().unwrap();
        let served = cloud.attested_states_wanted(&first_changes, 0, usize::MAX).unwrap();
        assert_eq!(served.into_iter().map(|(_, s)| s).collect::<Vec<_>>(), vec![attested.clone()]);
    }
}

/// A relay with an `attest` grant signs the newest roster's stable frontier (issue 17): what every member had
/// acknowledged by the end of a day before the roster's time, found through the members' certificates, cut to what
/// the cloud holds, for stores that hold what the cloud held as it signed; the relays themselves count with the
/// cloud's holdings. A member the cloud never heard from holds it back, and so does a change a member held that
/// the cloud lacks. A phone's checks take it, and refuse it altered or signed without the grant. The cloud and a
/// phone then fold their counters' increments under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_signs_the_stable_frontier_of_the_newest_roster() {
    use shoaldb::security::{Signers, StableFrontier};
    let Some(url) = tokio::task::spawn_blocking(common::fresh_database).await.unwrap() else { return };
    let Fleet { dir: _dir, authority, relay, relay_enrolment, via, a, b, a_node, b_node } =
        attesting_relay_and_two_phones(&url).await;
    // Both phones count on one task, each increment a change.
    for (phone, times) in [(&a, 12), (&b, 9)] {
        for _ in 0..times {
            phone.update(TASKS, "t2", |ed| Ok(ed.increment("likes", 1)?)).unwrap();
        }
    }
    let same = |x: &Store, y: &Store| x.replica().summary().ok() == y.replica().summary().ok();
    common::eventually("both phones hold the same", || same(&a, &b)).await;
    // New sessions: each phone says it holds everything.
    a_node.shutdown().await;
    b_node.shutdown().await;
    let held = a.replica().summary().unwrap();
    let (a_node, b_node) = (link(&a, "a", via).await, link(&b, "b", via).await);
    let (u, all) = (url.clone(), held.clone());
    let acks_of_all = move || {
        let mut db = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        let rows = db.query("SELECT summary FROM device_ack_days", &[]).unwrap();
        rows.len() == 2 && rows.iter().all(|r| all.difference(&Summary::decode_dense(r.get(0)).unwrap()).is_empty())
    };
    common::eventually("the cloud holds both phones' acknowledgements of it all", || {
        tokio::task::block_in_place(&acks_of_all)
    })
    .await;
    // As if they were said yesterday.
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        let mut db = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        db.execute("UPDATE device_ack_days SET day = day - interval '1 day'", &[]).unwrap();
    })
    .await
    .unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let key = |s: &Store| shoaldb::enrolment::load(s).unwrap().unwrap().signing_key().verifying_key();
    let relay_key = relay_enrolment.signing_key().verifying_key();
    let roster = |members: Vec<shoaldb::security::VerifyingKey>, number: u64| {
        let list = shoaldb::enrolment::revoke(&authority, number, now, vec![shoaldb::enrolment::roster(members, now)]);
        list.unwrap().encode()
    };
    let cloud = relay.replica().clone();
    // No roster yet: nothing to sign.
    let (c, e) = (cloud.clone(), relay_enrolment.clone());
    assert_eq!(tokio::task::spawn_blocking(move || c.sign_frontier(&e)).await.unwrap().unwrap(), None);
    // A roster listing a device the cloud never heard from: held back.
    let stranger = SigningKey::generate().unwrap().verifying_key();
    let lists = vec![roster(vec![key(&a), key(&b), relay_key, stranger], 1)];
    let (c, e) = (cloud.clone(), relay_enrolment.clone());
    let signed = tokio::task::spawn_blocking(move || {
        c.keep_revocation_lists(&lists)?;
        c.sign_frontier(&e)
    });
    assert_eq!(signed.await.unwrap().unwrap(), None, "a member never heard from holds the frontier back");
    // The next roster lists the phones and the relay. Had phone a held a change of its own it had not sent yet
    // (it may not have seen the frontier), the cloud would wait for it.
    let lists = vec![roster(vec![key(&a), key(&b), relay_key], 2)];
    let mut unsent = held.clone();
    let next = unsent.ranges_of(a.peer_id()).and_then(|r| r.ranges().last()).map_or(1, |r| r.1 + 1);
    unsent.insert(a.peer_id(), next, next);
    let (c, e, u) = (cloud.clone(), relay_enrolment.clone(), url.clone());
    let a_noise = shoaldb::enrolment::load(&a).unwrap().unwrap().chain().leaf().body().noise_key.unwrap();
    let (a_key, claimed) = (a_noise.to_vec(), unsent.encode_dense());
    let signed = tokio::task::spawn_blocking(move || {
        let mut db = postgres::Client::connect(&u, postgres::NoTls).unwrap();
        let old: Vec<u8> =
            db.query_one("SELECT summary FROM device_ack_days WHERE device = $1", &[&a_key]).unwrap().get(0);
        db.execute("UPDATE device_ack_days SET summary = $2 WHERE device = $1", &[&a_key, &claimed]).unwrap();
        c.keep_revocation_lists(&lists)?;
        let waiting = c.sign_frontier(&e)?;
        db.execute("UPDATE device_ack_days SET summary = $2 WHERE device = $1", &[&a_key, &old]).unwrap();
        Ok::<_, shoaldb::Error>((waiting, c.sign_frontier(&e)?))
    });
    let (waiting, frontier) = signed.await.unwrap().unwrap();
    assert_eq!(waiting, None, "the cloud lacks a change a member held");
    // Without it: everything both phones said they held, for stores that hold what the cloud does.
    let frontier = frontier.expect("a frontier");
    assert_eq!(frontier.until_ms, now);
    assert_eq!(frontier.stable, a.replica().summary().unwrap());
    assert_eq!(frontier.required, frontier.stable);
    let c = cloud.clone();
    assert_eq!(
        tokio::task::spawn_blocking(move || c.stable_frontier()).await.unwrap().unwrap(),
        Some(frontier.clone())
    );
    // A phone linking now gets it from the relay, with the relay's chain ahead of it, and keeps it.
    a_node.shutdown().await;
    let a_node = link(&a, "a", via).await;
    common::eventually("a keeps the frontier", || {
        a.replica().stable_frontier().ok().flatten().as_ref() == Some(&frontier)
    })
    .await;
    // A phone checks it against the relay's chain.
    let a_enrolment = shoaldb::enrolment::load(&a).unwrap().unwrap();
    let signers = Signers::default();
    let chain = relay_enrolment.chain().encode();
    signers.learn(&a_enrolment, &a.replica(), &chain, false).unwrap();
    assert_eq!(signers.check_frontier(&a_enrolment, &a.replica(), &frontier), Ok(()));
    let mut altered = frontier.clone();
    altered.stable.insert(PeerId(1), 1, 1);
    assert_eq!(signers.check_frontier(&a_enrolment, &a.replica(), &altered), Err(RefusalReason::BadSignature));
    let mut altered = frontier.clone();
    altered.required = Summary::new();
    assert_eq!(signers.check_frontier(&a_enrolment, &a.replica(), &altered), Err(RefusalReason::BadSignature));
    // Signed by a phone, whose certificate has no attest grant.
    let b_enrolment = shoaldb::enrolment::load(&b).unwrap().unwrap();
    signers.learn(&a_enrolment, &a.replica(), &b_enrolment.chain().encode(), false).unwrap();
    let by_b = StableFrontier::sign(b_enrolment.signing_key(), now, frontier.stable.clone(), frontier.required.clone());
    assert!(matches!(signers.check_frontier(&a_enrolment, &a.replica(), &by_b), Err(RefusalReason::NotPermitted(_))));
    // The cloud folds each phone's increments into one run as it compacts (under its attested states), and so does
    // phone a once it has them; the count is unchanged.
    let (c, e) = (cloud.clone(), relay_enrolment.clone());
    let entries = tokio::task::spawn_blocking(move || {
        c.attest(&e)?;
        c.compact(&everything(), 0)?;
        Ok::<_, shoaldb::Error>(
            c.document(TASKS, "t2")?.map(|d| (d.counter_entries(), d.to_json().unwrap()["likes"].clone())),
        )
    });
    assert_eq!(entries.await.unwrap().unwrap(), Some((2, json!(21))));
    a_node.shutdown().await;
    let a_node = link(&a, "a", via).await;
    let folded = |s: &Store| s.document(TASKS, "t2").ok().flatten().map(|d| d.counter_entries());
    common::eventually("a folds the increments", || folds_everything(&a) && folded(&a) == Some(2)).await;
    assert_eq!(a.get(TASKS, "t2").unwrap().unwrap()["likes"], 21);
    a_node.shutdown().await;
    b_node.shutdown().await;
    relay.shutdown().await;
}
