//! Property test: several replicas (persisted stores) edit the same documents concurrently — every field type,
//! nested maps in arrays in maps, removals of fields and whole documents — and exchange their changes in random
//! order, with duplicates and delays, sometimes reopening from disk mid-run. After a final full exchange, every
//! replica must hold exactly the same documents.

#[path = "common/edits.rs"]
mod edits;

use proptest::prelude::*;
use serde_json::json;
use shoaldb::{Applied, Change, DocChange, DocEditor, Document, PeerId, Store, Timestamp, Value};

const REPLICAS: usize = 3;
const COLLECTION: &str = "c";
const DOCS: [&str; 2] = ["d0", "d1"];

#[derive(Clone, Debug)]
enum Edit {
    SetRegister { path: u8, value: i64 },
    SetJsonObject { path: u8, value: i64 },
    Increment { which: u8, by: i8 },
    TextInsert { which: u8, pos: u16, text: String },
    TextDelete { which: u8, pos: u16, len: u8 },
    ArrayInsert { pos: u16, shape: u8, value: i64 },
    ArrayDelete { pos: u16 },
    NestedSet { idx: u16, key: u8, value: i64 },
    NestedIncrement { idx: u16, by: i8 },
    RemoveField { path: u8 },
    RemoveDocument,
}

const REGISTER_PATHS: [&str; 4] = ["title", "m.a", "m.b", "m.sub.c"];
const REMOVABLE: [&str; 6] = ["title", "m", "m.a", "m.items", "likes", "notes"];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<u8>(), -3i64..100).prop_map(|(path, value)| Edit::SetRegister { path, value }),
        (any::<u8>(), -3i64..100).prop_map(|(path, value)| Edit::SetJsonObject { path, value }),
        (any::<u8>(), -5i8..5).prop_map(|(which, by)| Edit::Increment { which, by }),
        (any::<u8>(), any::<u16>(), "[ab€😀]{1,4}").prop_map(|(which, pos, text)| Edit::TextInsert { which, pos, text }),
        (any::<u8>(), any::<u16>(), 1u8..4).prop_map(|(which, pos, len)| Edit::TextDelete { which, pos, len }),
        (any::<u16>(), any::<u8>(), 0i64..100).prop_map(|(pos, shape, value)| Edit::ArrayInsert { pos, shape, value }),
        any::<u16>().prop_map(|pos| Edit::ArrayDelete { pos }),
        (any::<u16>(), any::<u8>(), 0i64..100).prop_map(|(idx, key, value)| Edit::NestedSet { idx, key, value }),
        (any::<u16>(), -3i8..4).prop_map(|(idx, by)| Edit::NestedIncrement { idx, by }),
        any::<u8>().prop_map(|path| Edit::RemoveField { path }),
        Just(Edit::RemoveDocument),
    ]
}

#[derive(Clone, Debug)]
enum Action {
    Edit { replica: usize, doc: usize, edit: Edit },
    /// Queue for `to` what `from` has that `to` lacks (delivered later, in pieces, shuffled).
    Send { from: usize, to: usize },
    /// Apply some queued changes in a random order; some stay queued (to be delivered again: duplicates).
    Deliver { to: usize, seed: u64 },
    Reopen { replica: usize },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..REPLICAS, 0..DOCS.len(), edit()).prop_map(|(replica, doc, edit)| Action::Edit { replica, doc, edit }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Action::Send { from, to }),
        2 => (0..REPLICAS, any::<u64>()).prop_map(|(to, seed)| Action::Deliver { to, seed }),
        1 => (0..REPLICAS).prop_map(|replica| Action::Reopen { replica }),
    ]
}



/// Apply one edit. Edits that do not fit the current state (type mismatches, out-of-range indexes) fail with an
/// error, which is part of what is tested: they must change nothing.
fn apply_edit(ed: &mut DocEditor<'_>, e: &Edit) -> Result<(), shoaldb::DocError> {
    match e {
        Edit::SetRegister { path, value } => ed.set(REGISTER_PATHS[*path as usize % REGISTER_PATHS.len()], *value),
        Edit::SetJsonObject { path, value } => {
            let p = ["m", "m.sub", "title"][*path as usize % 3];
            ed.merge(p, Value::from_json(&json!({"x": value, "sub": {"y": value}})))
        }
        Edit::Increment { which, by } => ed.increment(edits::COUNTERS[*which as usize % 2], *by as i64),
        Edit::TextInsert { which, pos, text } => edits::text_insert(ed, *which, *pos, text),
        Edit::TextDelete { which, pos, len } => edits::text_delete(ed, *which, *pos, *len),
        Edit::ArrayInsert { pos, shape, value } => edits::array_insert(ed, *pos, *shape, *value),
        Edit::ArrayDelete { pos } => edits::array_delete(ed, *pos),
        Edit::NestedSet { idx, key, value } => edits::nested_set(ed, *idx, *key, *value),
        Edit::NestedIncrement { idx, by } => edits::nested_increment(ed, *idx, *by as i64),
        Edit::RemoveField { path } => ed.remove(REMOVABLE[*path as usize % REMOVABLE.len()]),
        Edit::RemoveDocument => ed.remove_document(),
    }
}

struct Replica {
    dir: tempfile::TempDir,
    store: Option<Store>,
    inbox: Vec<DocChange>,
}

impl Replica {
    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }
}

/// A tiny deterministic RNG for shuffling deliveries.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn run(actions: &[Action]) {
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("db")).unwrap();
            Replica { dir, store: Some(store), inbox: Vec::new() }
        })
        .collect();
    for a in actions {
        match a {
            Action::Edit { replica, doc, edit } => {
                let s = replicas[*replica].store();
                let before = s.get(COLLECTION, DOCS[*doc]).unwrap();
                let r = s.write(|t| {
                    if t.get(COLLECTION, DOCS[*doc])?.is_none() {
                        t.upsert(COLLECTION, json!({"_id": DOCS[*doc]}))?;
                    }
                    t.update(COLLECTION, DOCS[*doc], |ed| Ok(apply_edit(ed, edit)?))
                });
                if r.is_err() {
                    assert_eq!(s.get(COLLECTION, DOCS[*doc]).unwrap(), before, "a failed edit changed nothing");
                }
            }
            Action::Send { from, to } => {
                if from == to {
                    continue;
                }
                let summary = replicas[*to].store().summary().unwrap();
                let changes = replicas[*from].store().changes_since(&summary).unwrap();
                replicas[*to].inbox.extend(changes);
            }
            Action::Deliver { to, seed } => {
                let mut seed = *seed | 1;
                let r = &mut replicas[*to];
                let mut batch = Vec::new();
                let mut keep = Vec::new();
                for c in r.inbox.drain(..) {
                    match next(&mut seed) % 4 {
                        0 => keep.push(c),
                        1 => {
                            batch.push(c.clone());
                            keep.push(c);
                        }
                        _ => batch.push(c),
                    }
                }
                for i in (1..batch.len()).rev() {
                    let j = (next(&mut seed) % (i as u64 + 1)) as usize;
                    batch.swap(i, j);
                }
                r.inbox = keep;
                // Apply in one or two calls.
                let split = if batch.is_empty() { 0 } else { (next(&mut seed) % batch.len() as u64) as usize };
                r.store().apply_changes(&batch[..split]).unwrap();
                r.store().apply_changes(&batch[split..]).unwrap();
            }
            Action::Reopen { replica } => {
                let r = &mut replicas[*replica];
                r.store = None;
                r.store = Some(Store::open(r.dir.path().join("db")).unwrap());
            }
        }
    }
    // Final exchange: everyone's inbox, then full pairwise syncs until nothing moves.
    for r in &mut replicas {
        let inbox = std::mem::take(&mut r.inbox);
        r.store().apply_changes(&inbox).unwrap();
    }
    for _round in 0..2 {
        for a in 0..REPLICAS {
            for b in 0..REPLICAS {
                if a != b {
                    let summary = replicas[b].store().summary().unwrap();
                    let changes = replicas[a].store().changes_since(&summary).unwrap();
                    let report = replicas[b].store().apply_changes(&changes).unwrap();
                    assert_eq!(report.pending, 0, "a full exchange leaves nothing pending");
                }
            }
        }
    }
    let views: Vec<_> = replicas.iter().map(|r| r.store().list(COLLECTION).unwrap()).collect();
    if std::env::var_os("SHOAL_SHOW_FINAL").is_some() {
        eprintln!("final state: {}", serde_json::to_string(&views[0]).unwrap());
    }
    for v in &views[1..] {
        assert_eq!(v, &views[0], "replicas diverged");
    }
    for d in DOCS {
        let docs: Vec<_> = replicas.iter().map(|r| r.store().document(COLLECTION, d).unwrap()).collect();
        for path in ["title", "m.a", "m", "likes", "m.items"] {
            let conflicts: Vec<_> =
                docs.iter().map(|doc| doc.as_ref().map(|x| x.conflicts(path).unwrap())).collect();
            for c in &conflicts[1..] {
                assert_eq!(c, &conflicts[0], "conflicts at {path} diverged");
            }
        }
        let versions: Vec<_> = docs.iter().map(|d| d.as_ref().map(|x| x.version().clone())).collect();
        for v in &versions[1..] {
            assert_eq!(v, &versions[0]);
        }
    }
    // Reopening everything from disk gives the same state again.
    for r in &mut replicas {
        r.store = None;
        r.store = Some(Store::open(r.dir.path().join("db")).unwrap());
    }
    for r in &replicas {
        assert_eq!(r.store().list(COLLECTION).unwrap(), views[0], "state after reopen differs");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn replicas_converge(actions in proptest::collection::vec(action(), 1..60)) {
        run(&actions);
    }
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
                    let have: Vec<Change> = log[d].iter().filter(|c| c.peer == PeerId(*from as u64 * 7 + 3) || replicas[*from][d].doc.version().contains(shoaldb::crdt::clock::Dot::new(c.peer, c.end()))).cloned().collect();
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
            let conflicts: Vec<_> = ["title", "m.a", "m", "likes", "m.items"].iter().map(|p| doc.conflicts(*p).unwrap()).collect();
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
    b.apply_changes(&a.changes_since(&b.summary().unwrap()).unwrap()).unwrap();
    a.remove(COLLECTION, "x").unwrap();
    b.update(COLLECTION, "x", |d| Ok(d.set("n", 2i64)?)).unwrap();
    b.apply_changes(&a.changes_since(&b.summary().unwrap()).unwrap()).unwrap();
    a.apply_changes(&b.changes_since(&a.summary().unwrap()).unwrap()).unwrap();
    let expected = json!({"_id": "x", "n": 2});
    assert_eq!(a.get(COLLECTION, "x").unwrap(), Some(expected.clone()));
    assert_eq!(b.get(COLLECTION, "x").unwrap(), Some(expected));
}
