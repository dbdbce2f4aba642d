//! Property test: several replicas edit the same documents concurrently — every field type, nested maps in arrays
//! in maps, removals of fields and whole documents — and exchange their changes in random order, with duplicates
//! and delays, sometimes re-decoding from their encoded state mid-run. After a final full exchange, every replica
//! must hold exactly the same document. This runs on in-memory documents (many cases, the CRDT layer alone);
//! `store_convergence.rs` runs the same kind of test through the stores' public API.

#[path = "common/edits.rs"]
mod edits;

use proptest::prelude::*;
use serde_json::json;
use shoaldb::store::Replica;
use shoaldb::{Applied, Change, Document, PeerId, Store, Timestamp, Value};

const REPLICAS: usize = 3;
const COLLECTION: &str = "c";
const DOCS: [&str; 2] = ["d0", "d1"];

use edits::{apply_edit, edit, Edit};

#[derive(Clone, Debug)]
enum Action {
    Edit {
        replica: usize,
        doc: usize,
        edit: Edit,
    },
    /// Queue for `to` what `from` has that `to` lacks (delivered later, in pieces, shuffled).
    Send {
        from: usize,
        to: usize,
    },
    /// Apply some queued changes in a random order; some stay queued (to be delivered again: duplicates).
    Deliver {
        to: usize,
        seed: u64,
    },
    Reopen {
        replica: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..REPLICAS, 0..DOCS.len(), edit()).prop_map(|(replica, doc, edit)| Action::Edit { replica, doc, edit }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Action::Send { from, to }),
        2 => (0..REPLICAS, any::<u64>()).prop_map(|(to, seed)| Action::Deliver { to, seed }),
        1 => (0..REPLICAS).prop_map(|replica| Action::Reopen { replica }),
    ]
}

/// A tiny deterministic RNG for shuffling deliveries.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// The same edits on in-memory documents (no SQLite): many more cases. Changes travel in random orders with
/// duplicates; a change that arrives before its dependencies waits and is retried; documents are re-decoded from
/// their encoded state mid-run.
fn run_documents(actions: &[Action]) {
    struct Doc {
        doc: Document,
        next: u64,
        inbox: Vec<Change>,
    }
    let n_docs = DOCS.len();
    // replicas[r][d]
    let mut replicas: Vec<Vec<Doc>> = (0..REPLICAS)
        .map(|_| (0..n_docs).map(|_| Doc { doc: Document::new(), next: 1, inbox: Vec::new() }).collect())
        .collect();
    let mut log: Vec<Vec<Change>> = vec![Vec::new(); n_docs];
    let mut clock = 0u64;
    for a in actions {
        match a {
            Action::Edit { replica, doc, edit } => {
                clock += 1;
                let d = &mut replicas[*replica][*doc];
                let before = d.doc.to_json();
                let mut ed = d.doc.edit(PeerId(*replica as u64 * 7 + 3), d.next, Timestamp::new(1_000 + clock % 5, 0));
                if !ed.document().exists() {
                    ed.merge(shoaldb::Path::root(), Value::Map(Default::default())).unwrap();
                }
                let r = apply_edit(&mut ed, edit);
                d.next = ed.next_counter();
                if let Some(c) = ed.finish() {
                    log[*doc].push(c);
                }
                if r.is_err() && before.is_some() {
                    // A failed edit applied nothing of itself; the document may only differ by the creation above.
                    assert!(d.doc.to_json().is_some());
                }
            }
            Action::Send { from, to } => {
                for d in 0..n_docs {
                    let have: Vec<Change> = log[d]
                        .iter()
                        .filter(|c| {
                            c.peer == PeerId(*from as u64 * 7 + 3)
                                || replicas[*from][d]
                                    .doc
                                    .version()
                                    .contains(shoaldb::crdt::clock::Dot::new(c.peer, c.end()))
                        })
                        .cloned()
                        .collect();
                    replicas[*to][d].inbox.extend(have);
                }
            }
            Action::Deliver { to, seed } => {
                let mut seed = *seed | 1;
                for d in &mut replicas[*to] {
                    let mut batch = std::mem::take(&mut d.inbox);
                    for i in (1..batch.len()).rev() {
                        let j = (next(&mut seed) % (i as u64 + 1)) as usize;
                        batch.swap(i, j);
                    }
                    for c in batch {
                        match d.doc.apply(&c).unwrap() {
                            Applied::NotReady => d.inbox.push(c),
                            Applied::Applied | Applied::Duplicate => {
                                if next(&mut seed) % 5 == 0 {
                                    d.inbox.push(c); // deliver again later: a duplicate
                                }
                            }
                        }
                    }
                }
            }
            Action::Reopen { replica } => {
                for d in &mut replicas[*replica] {
                    d.doc = Document::decode(&d.doc.encode()).unwrap();
                }
            }
        }
    }
    for (d, changes) in log.iter().enumerate() {
        let mut views = Vec::new();
        for r in &mut replicas {
            let doc = &mut r[d].doc;
            let mut queue: Vec<&Change> = changes.iter().rev().collect();
            while !queue.is_empty() {
                let before = queue.len();
                queue.retain(|c| doc.apply(c).unwrap() == Applied::NotReady);
                assert!(queue.len() < before, "no progress");
            }
            let conflicts: Vec<_> =
                ["title", "m.a", "m", "likes", "m.items"].iter().map(|p| doc.conflicts(*p).unwrap()).collect();
            views.push((doc.to_json(), conflicts, doc.version().clone()));
        }
        for v in &views[1..] {
            assert_eq!(v, &views[0], "documents diverged");
        }
        if std::env::var_os("SHOAL_SHOW_FINAL").is_some() {
            eprintln!("doc {d}: {} changes, final {}", changes.len(), serde_json::to_string(&views[0].0).unwrap());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, max_shrink_iters: 4000, ..ProptestConfig::default() })]

    #[test]
    fn documents_converge(actions in proptest::collection::vec(action(), 1..80)) {
        run_documents(&actions);
    }
}

/// A concurrent removal of a document and an update of one of its fields: the update survives, and the document
/// reappears holding only what was written concurrently with the removal.
#[test]
fn concurrent_remove_and_update_keeps_the_update() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = Store::open(dirs[0].path().join("db")).unwrap();
    let b = Store::open(dirs[1].path().join("db")).unwrap();
    a.upsert(COLLECTION, json!({"_id": "x", "title": "t", "n": 1})).unwrap();
    b.replica().apply_changes(&a.replica().changes_since(&b.replica().summary().unwrap()).unwrap()).unwrap();
    a.remove(COLLECTION, "x").unwrap();
    b.update(COLLECTION, "x", |d| Ok(d.set("n", 2i64)?)).unwrap();
    b.replica().apply_changes(&a.replica().changes_since(&b.replica().summary().unwrap()).unwrap()).unwrap();
    a.replica().apply_changes(&b.replica().changes_since(&a.replica().summary().unwrap()).unwrap()).unwrap();
    let expected = json!({"_id": "x", "n": 2});
    assert_eq!(a.get(COLLECTION, "x").unwrap(), Some(expected.clone()));
    assert_eq!(b.get(COLLECTION, "x").unwrap(), Some(expected));
}
