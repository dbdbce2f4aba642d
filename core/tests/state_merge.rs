//! Property test of the state-based merge ([`Document::join`]), the ground under log compaction: a replica that
//! merges another replica's snapshot — current or taken long ago, with changes of its own made meanwhile — must end
//! exactly as if it had applied, one by one, every change either of them held. Several replicas edit one document
//! with every field type, nesting (maps in arrays in maps), removals of fields and of the whole document; they
//! exchange changes (in random order, with duplicates) and snapshots (in either direction, old or new), in any
//! interleaving. After each merge the result is compared, byte for byte in its canonical encoding, with a
//! document built from the change log alone; so a removed field or document coming back, an offline edit lost, or
//! an order of text or array items that differs, each fails the test.
//!
//! Replicas also collect garbage ([`Document::collect_stable`]) as attested states make it safe (issue 17), in a
//! model of the membership protocol: some replicas start, others join later, each taking its first copy of the
//! document whole from one already there; a roster lists the replicas there at its time; each replica acknowledges
//! what it holds from time to time; an attester takes every change the roster's members acknowledged *before the
//! roster's time*, folds what all of them acknowledged then (the stable frontier) and sends that state around; a
//! replica holding all it attests may fold its own state likewise. Where folded states are compared with the change
//! log, both are first folded under the same frontier — folding leaves what a document shows unchanged, and a fold
//! that took in an increment a removal had taken away, or lost one, differs in the counter's sum. (A joining replica
//! that took its first copy change by change, and stopped halfway, breaks this: a removal it makes has seen part of a
//! folded run. Hence the rule that a first copy is taken whole.)

#[path = "common/edits.rs"]
mod edits;

use edits::{apply_edit, edit, Edit};
use proptest::prelude::*;
use shoaldb::crdt::clock::Dot;
use shoaldb::{Applied, Change, Document, PeerId, Timestamp, Value, VersionVector};

const REPLICAS: usize = 5;
/// The replicas there from the start; the others join later.
const FIRST: usize = 3;

#[derive(Clone, Debug)]
enum Action {
    Edit {
        replica: usize,
        edit: Edit,
    },
    /// Queue for `to` the changes `from` holds (applied later, shuffled, some twice).
    Send {
        from: usize,
        to: usize,
    },
    Deliver {
        to: usize,
        seed: u64,
    },
    /// `to` merges `from`'s current state.
    Merge {
        from: usize,
        to: usize,
    },
    /// Keep `replica`'s current state, to be merged much later (a device that was away).
    Keep {
        replica: usize,
    },
    /// `to` merges a state kept earlier.
    MergeKept {
        which: usize,
        to: usize,
    },
    /// `replica` tells the attester what it holds.
    Ack {
        replica: usize,
    },
    /// Once every member of the latest roster acknowledged something before its time: the attester's state of every
    /// change they acknowledged then, folded under what all of them acknowledged then.
    Attest,
    /// The authority lists the replicas there now, as of now.
    Roster,
    /// `replica`, not there yet, joins: its first copy of the document is `from`'s state, whole.
    Join {
        replica: usize,
        from: usize,
    },
    /// Every replica there merges every other's state (a round of the whole mesh).
    Gossip,
    /// `to` merges an attested state.
    MergeAttested {
        which: usize,
        to: usize,
    },
    /// `replica` folds its own state under the latest attested frontier it may (see [`frontier`]).
    Collect {
        replica: usize,
    },
}

/// An attested state: every change acknowledged (`version`), folded under what every replica acknowledged.
struct Statement {
    stable: VersionVector,
    version: VersionVector,
    state: Document,
}

/// The frontier a document at `version` may be folded under: that of the latest statement whose changes it holds
/// all of (statements only grow, as acknowledgements do). Empty when there is none.
fn frontier(statements: &[Statement], version: &VersionVector) -> VersionVector {
    statements.iter().rev().find(|s| s.version.le(version)).map(|s| s.stable.clone()).unwrap_or_default()
}

/// Each replica's highest counters that every one of `acks` covers.
fn meet(acks: &[VersionVector]) -> VersionVector {
    let first = acks.first().cloned().unwrap_or_default();
    first.iter().map(|(p, c)| (p, acks.iter().map(|a| a.get(p)).min().unwrap_or(0).min(c))).collect()
}

/// Actions drawn with these weights: edits, sends, deliveries, merges, keeps, merges of kept states,
/// acknowledgements, attestations, merges of attested states, collections, rosters, joins, rounds of the mesh.
fn weighted_action(w: [u32; 13], edits: BoxedStrategy<Edit>) -> impl Strategy<Value = Action> {
    prop_oneof![
        w[0] => (0..REPLICAS, edits).prop_map(|(replica, edit)| Action::Edit { replica, edit }),
        w[1] => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Action::Send { from, to }),
        w[2] => (0..REPLICAS, any::<u64>()).prop_map(|(to, seed)| Action::Deliver { to, seed }),
        w[3] => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Action::Merge { from, to }),
        w[4] => (0..REPLICAS).prop_map(|replica| Action::Keep { replica }),
        w[5] => (any::<usize>(), 0..REPLICAS).prop_map(|(which, to)| Action::MergeKept { which, to }),
        w[6] => (0..REPLICAS).prop_map(|replica| Action::Ack { replica }),
        w[7] => Just(Action::Attest),
        w[8] => (any::<usize>(), 0..REPLICAS).prop_map(|(which, to)| Action::MergeAttested { which, to }),
        w[9] => (0..REPLICAS).prop_map(|replica| Action::Collect { replica }),
        w[10] => Just(Action::Roster),
        w[11] => (0..REPLICAS, 0..REPLICAS).prop_map(|(replica, from)| Action::Join { replica, from }),
        w[12] => Just(Action::Gossip),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    weighted_action([8, 2, 2, 3, 1, 2, 2, 1, 2, 2, 1, 1, 1], edit().boxed())
}

/// Actions weighted for garbage collection: replicas meet, acknowledge, list and attest often enough, and increment
/// counters often enough (half the edits), that many attested states fold some.
fn collecting_action() -> impl Strategy<Value = Action> {
    let increments = prop_oneof![
        (any::<u8>(), -5i8..5).prop_map(|(which, by)| Edit::Increment { which, by }),
        (any::<u16>(), -3i8..4).prop_map(|(idx, by)| Edit::NestedIncrement { idx, by }),
    ];
    weighted_action([12, 2, 2, 5, 1, 2, 8, 2, 3, 3, 2, 1, 2], prop_oneof![1 => edit(), 3 => increments].boxed())
}

fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn peer(replica: usize) -> PeerId {
    PeerId(replica as u64 * 7 + 3)
}

/// The document built by applying, in causal order, the changes of `log` that `version` covers.
fn replay(log: &[Change], version: &VersionVector) -> Document {
    let mut doc = Document::new();
    let mut queue: Vec<&Change> = log.iter().filter(|c| version.contains(Dot::new(c.peer, c.end()))).collect();
    while !queue.is_empty() {
        let before = queue.len();
        queue.retain(|c| doc.apply(c).expect("a logged change applies") == Applied::NotReady);
        assert!(queue.len() < before, "the log's changes do not apply");
    }
    doc
}

/// The canonical encoding: sequence runs split in memory are merged again when decoded.
fn canonical(doc: &Document) -> Vec<u8> {
    Document::decode(&doc.encode()).expect("a state decodes").encode()
}

/// The canonical encoding of `doc` folded under `stable`.
fn folded(doc: &Document, stable: &VersionVector) -> Vec<u8> {
    let mut doc = doc.clone();
    doc.collect_stable(stable);
    canonical(&doc)
}

/// What a replica holds, for the failure message.
fn show(doc: &Document) -> String {
    format!("{:?} at {:?}", doc.to_json(), doc.version())
}

/// `to` merges `state` (sent encoded, as a snapshot travels); the result must equal the replay of every change
/// either held (both folded under the frontier the result may be folded under), and not depend on which side merges
/// into which.
fn merge_checked(to: &mut Document, state: &Document, log: &[Change], statements: &[Statement]) {
    let received = Document::decode(&state.encode()).expect("a state decodes");
    let mut union = to.version().clone();
    union.join(state.version());
    let expected = replay(log, &union);
    let mut reverse = state.clone();
    reverse.join(to).expect("merging an honest state succeeds");
    let before = show(to);
    to.join(&received).expect("merging an honest state succeeds");
    assert_eq!(to.version(), &union);
    let stable = frontier(statements, &union);
    assert_eq!(
        folded(to, &stable),
        folded(&expected, &stable),
        "merge differs from replay:\n  merged {}\n  replay {}\n  was {before}\n  with {}",
        show(to),
        show(&expected),
        show(state)
    );
    // A side that has seen all the other holds keeps its own state as it is (singles where the other holds a
    // folded run for them: the same contributions), so the two orders are compared folded.
    assert_eq!(folded(&reverse, &stable), folded(to, &stable), "merge is not commutative");
    // Idempotent: merging again changes nothing.
    let again = canonical(to);
    to.join(&received).expect("merging twice succeeds");
    assert_eq!(canonical(to), again, "merge is not idempotent");
}

struct Replica {
    doc: Document,
    next: u64,
    inbox: Vec<Change>,
}

/// Every replica `there` merges every other's state, each merge checked.
fn gossip(replicas: &mut [Replica], there: &[bool], log: &[Change], statements: &[Statement]) {
    for to in 0..replicas.len() {
        for from in 0..replicas.len() {
            if to != from && there[to] && there[from] {
                let state = replicas[from].doc.clone();
                merge_checked(&mut replicas[to].doc, &state, log, statements);
            }
        }
    }
}

fn run(actions: &[Action]) {
    let mut replicas: Vec<Replica> =
        (0..REPLICAS).map(|_| Replica { doc: Document::new(), next: 1, inbox: Vec::new() }).collect();
    let mut log: Vec<Change> = Vec::new();
    let mut kept: Vec<Document> = Vec::new();
    let mut there: Vec<bool> = (0..REPLICAS).map(|r| r < FIRST).collect();
    // Each replica's acknowledgements, with when it made them (the action's index).
    let mut acks: Vec<Vec<(usize, VersionVector)>> = vec![Vec::new(); REPLICAS];
    // Each roster's time and members.
    let mut rosters: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut statements: Vec<Statement> = Vec::new();
    let mut clock = 0u64;
    for (now, a) in actions.iter().enumerate() {
        // A replica not there yet does nothing and is sent nothing.
        let absent = match a {
            Action::Edit { replica, .. } | Action::Ack { replica } | Action::Collect { replica } => !there[*replica],
            Action::Keep { replica } => !there[*replica],
            Action::Send { from, to } | Action::Merge { from, to } => !there[*from] || !there[*to],
            Action::Deliver { to, .. } | Action::MergeKept { to, .. } | Action::MergeAttested { to, .. } => !there[*to],
            Action::Join { replica, from } => there[*replica] || !there[*from],
            Action::Attest | Action::Roster | Action::Gossip => false,
        };
        if absent {
            continue;
        }
        match a {
            Action::Edit { replica, edit } => {
                clock += 1;
                let r = &mut replicas[*replica];
                let mut ed = r.doc.edit(peer(*replica), r.next, Timestamp::new(1_000 + clock % 7, 0));
                if !ed.document().exists() {
                    ed.merge(shoaldb::Path::root(), Value::Map(Default::default())).unwrap();
                }
                let _ = apply_edit(&mut ed, edit);
                r.next = ed.next_counter();
                if let Some(c) = ed.finish() {
                    log.push(c);
                }
            }
            Action::Send { from, to } => {
                let version = replicas[*from].doc.version().clone();
                let held = log.iter().filter(|c| version.contains(Dot::new(c.peer, c.end()))).cloned();
                replicas[*to].inbox.extend(held);
            }
            Action::Deliver { to, seed } => {
                let mut seed = *seed | 1;
                let r = &mut replicas[*to];
                let mut batch = std::mem::take(&mut r.inbox);
                for i in (1..batch.len()).rev() {
                    batch.swap(i, (next(&mut seed) % (i as u64 + 1)) as usize);
                }
                for c in batch {
                    match r.doc.apply(&c).unwrap() {
                        Applied::NotReady => r.inbox.push(c),
                        _ if next(&mut seed) % 5 == 0 => r.inbox.push(c),
                        _ => {}
                    }
                }
            }
            Action::Merge { from, to } => {
                let state = replicas[*from].doc.clone();
                merge_checked(&mut replicas[*to].doc, &state, &log, &statements);
            }
            Action::Keep { replica } => kept.push(replicas[*replica].doc.clone()),
            Action::MergeKept { which, to } => {
                if !kept.is_empty() {
                    let state = kept[which % kept.len()].clone();
                    merge_checked(&mut replicas[*to].doc, &state, &log, &statements);
                }
            }
            Action::Ack { replica } => acks[*replica].push((now, replicas[*replica].doc.version().clone())),
            Action::Roster => rosters.push((now, (0..REPLICAS).filter(|r| there[*r]).collect())),
            Action::Gossip => gossip(&mut replicas, &there, &log, &statements),
            Action::Join { replica, from } => {
                replicas[*replica].doc = replicas[*from].doc.clone();
                there[*replica] = true;
            }
            Action::Attest => {
                let Some((time, members)) = rosters.last() else { continue };
                // Each member's latest acknowledgement from before the roster's time.
                let acks: Option<Vec<VersionVector>> = members
                    .iter()
                    .map(|m| acks[*m].iter().rev().find(|(t, _)| t < time).map(|(_, v)| v.clone()))
                    .collect();
                let Some(acks) = acks else { continue };
                let mut version = VersionVector::new();
                acks.iter().for_each(|a| version.join(a));
                let stable = meet(&acks);
                let mut state = replay(&log, &version);
                state.collect_stable(&stable);
                statements.push(Statement { stable, version, state });
            }
            Action::MergeAttested { which, to } => {
                if !statements.is_empty() {
                    let state = statements[which % statements.len()].state.clone();
                    merge_checked(&mut replicas[*to].doc, &state, &log, &statements);
                }
            }
            Action::Collect { replica } => {
                let doc = &mut replicas[*replica].doc;
                let stable = frontier(&statements, doc.version());
                let shown = doc.to_json();
                doc.collect_stable(&stable);
                assert_eq!(doc.to_json(), shown, "folding changed what the document shows");
            }
        }
    }
    // Everyone meets everyone; all end the same.
    gossip(&mut replicas, &[true; REPLICAS], &log, &statements);
    let all = replay(&log, replicas[0].doc.version());
    let stable = frontier(&statements, all.version());
    for r in &replicas {
        assert_eq!(folded(&r.doc, &stable), folded(&replicas[0].doc, &stable), "replicas diverged");
        assert_eq!(folded(&r.doc, &stable), folded(&all, &stable), "replicas differ from the change log");
        assert_eq!(r.doc.to_json(), all.to_json(), "replicas show other than the change log");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn merging_states_equals_applying_their_changes(actions in proptest::collection::vec(action(), 1..80)) {
        run(&actions);
    }

    #[test]
    fn folding_stable_counters_equals_never_folding(actions in proptest::collection::vec(collecting_action(), 1..300)) {
        run(&actions);
    }
}

/// A device that was away merges the state of one that removed the whole document meanwhile, and keeps only what
/// it wrote while away: the document does not come back with its old fields.
#[test]
fn a_returning_device_keeps_its_offline_edits_and_nothing_removed() {
    let (a, b) = (PeerId(1), PeerId(2));
    let mut da = Document::new();
    let mut ed = da.edit(a, 1, Timestamp::new(1, 0));
    ed.merge(shoaldb::Path::root(), Value::from_json(&serde_json::json!({"title": "t", "n": 1, "body": "hello"})))
        .unwrap();
    let created = ed.finish().unwrap();
    let mut db = Document::new();
    db.apply(&created).unwrap();
    // A removes the document; B, away, edits one field.
    let mut ed = da.edit(a, created.end() + 1, Timestamp::new(2, 0));
    ed.remove_document().unwrap();
    ed.finish().unwrap();
    let mut ed = db.edit(b, 1, Timestamp::new(3, 0));
    ed.set("n", 2i64).unwrap();
    ed.finish().unwrap();
    // Either way round: only B's offline edit remains.
    let mut at_b = db.clone();
    at_b.join(&Document::decode(&da.encode()).unwrap()).unwrap();
    let mut at_a = da.clone();
    at_a.join(&Document::decode(&db.encode()).unwrap()).unwrap();
    let expected = serde_json::json!({"n": 2});
    assert_eq!(at_b.to_json().map(serde_json::Value::Object), Some(expected.clone()));
    assert_eq!(at_a.to_json().map(serde_json::Value::Object), Some(expected));
}

/// Why a device's first copy of a document must be taken whole: a device that joins after the roster's time (so its
/// acknowledgements count in no frontier) and took only part of the document change by change, removes a counter
/// that had been folded meanwhile. Its removal saw one of the three increments folded into one run: a replica
/// holding the run keeps all three, a replica that never folded keeps two — they disagree. Taken whole, its removal
/// sees all three and every replica agrees.
#[test]
fn a_first_copy_taken_change_by_change_would_break_folding() {
    let (a, joiner) = (PeerId(1), PeerId(9));
    let mut doc = Document::new();
    let mut log = Vec::new();
    let mut next = 1;
    for (i, by) in [0i64, 1, 10, 100].into_iter().enumerate() {
        let mut ed = doc.edit(a, next, Timestamp::new(1_000 + i as u64, 0));
        if i == 0 {
            ed.merge(shoaldb::Path::root(), Value::Map(Default::default())).unwrap();
        } else {
            ed.increment("likes", by).unwrap();
        }
        next = ed.next_counter();
        log.push(ed.finish().unwrap());
    }
    // Every member acknowledged it all before the roster's time: the attester folds the three increments.
    let mut attested = doc.clone();
    attested.collect_stable(&doc.version().clone());
    let removed_by = |first_copy: Document| {
        let mut j = first_copy;
        let mut ed = j.edit(joiner, 1, Timestamp::new(2_000, 0));
        ed.remove("likes").unwrap();
        ed.finish().unwrap()
    };
    let likes = |d: &Document| d.get("likes").unwrap();
    // Change by change, stopped after the first increment.
    let mut partial = Document::new();
    for c in &log[..2] {
        partial.apply(c).unwrap();
    }
    let removal = removed_by(partial);
    let (mut never_folded, mut folded) = (doc.clone(), attested.clone());
    never_folded.apply(&removal).unwrap();
    folded.apply(&removal).unwrap();
    assert_eq!(likes(&never_folded), Some(serde_json::json!(110)), "the increments the removal did not see");
    assert_eq!(likes(&folded), Some(serde_json::json!(111)), "the run it saw part of stays whole");
    // Whole: the removal saw all three, and both agree.
    let removal = removed_by(doc.clone());
    let (mut never_folded, mut folded) = (doc.clone(), attested.clone());
    never_folded.apply(&removal).unwrap();
    folded.apply(&removal).unwrap();
    assert_eq!((likes(&never_folded), likes(&folded)), (None, None));
}

/// Found by the property test: a replica collects a removed element's content under an attested frontier, then
/// another that kept it (and edited on) merges its state. The side that has seen everything keeps its own state as it
/// is, the other drops what it collected; folded under the same frontier, both must be equal. (They were not when a
/// removed element's content went only once the whole document was stable: the side that edited on never collected
/// it.)
#[test]
fn a_removed_elements_content_collected_on_one_side_merges_alike_either_way() {
    use Action::*;
    let actions = vec![
        Edit { replica: 0, edit: edits::Edit::ArrayInsert { pos: 0, shape: 0, value: 0 } },
        Merge { from: 0, to: 1 },
        Edit { replica: 0, edit: edits::Edit::ArrayDelete { pos: 0 } },
        Gossip,
        Ack { replica: 0 },
        Ack { replica: 2 },
        Ack { replica: 1 },
        Roster,
        Edit { replica: 0, edit: edits::Edit::ArrayInsert { pos: 0, shape: 0, value: 0 } },
        Attest,
        Collect { replica: 1 },
        Edit { replica: 0, edit: edits::Edit::SetRegister { path: 0, value: 0 } },
    ];
    run(&actions);
}
