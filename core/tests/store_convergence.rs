//! Property test of convergence through the public API, as apps use it: three stores (each with a second handle on
//! the same file) edit shared documents in transactions — some aborted, some with edits that fail half-way —
//! evict and unevict documents, reopen, write keys and values at every limit (empty and longest keys, floats of every
//! magnitude, extreme integers, values large enough to be kept beside the document's view, nesting at the depth
//! limit), and exchange changes (summary → `changes_since` → `apply_changes`) in random subsets, orders and
//! duplicates. Afterwards, everywhere:
//! - the same JSON, conflicts, version vectors and summaries;
//! - `get()` (and `find`) equal `document()` exactly;
//! - applying every change again changes nothing;
//! - a fresh store fed the whole log, shuffled, ends identical;
//! - reopening gives the same state.
//!
//! `PROPTEST_CASES` sets the number of cases (default 48).

#[path = "common/edits.rs"]
mod edits;

use proptest::prelude::*;
use serde_json::{json, Value as Json};
use shoaldb::crdt::path::{MAX_KEY_BYTES, MAX_PATH_DEPTH};
use shoaldb::store::Replica as _;
use shoaldb::{DocChange, DocEditor, DocError, Error, Path, Query, Scalar, Store, Value};
use std::collections::BTreeMap;

const REPLICAS: usize = 3;
const COLLECTION: &str = "c";
const DOCS: [&str; 2] = ["d0", "d1"];

/// Keys at the edges of what a map key may be.
fn edge_key(which: u8) -> String {
    match which % 6 {
        0 => "k".into(),
        1 => "k".repeat(MAX_KEY_BYTES),
        2 => "a.b [c] `d`".into(),
        3 => "é€😀".into(),
        4 => format!("{}é", "x".repeat(MAX_KEY_BYTES - 2)),
        _ => "_id".into(),
    }
}

/// Keys that can never name a field.
fn bad_key(which: u8) -> String {
    match which % 3 {
        0 => String::new(),
        1 => "k".repeat(MAX_KEY_BYTES + 1),
        _ => format!("{}é", "x".repeat(MAX_KEY_BYTES - 1)),
    }
}

/// Scalars at the edges: extreme integers, floats of every magnitude (from their bits), odd strings, bytes, values
/// large enough to be kept beside the view, nested JSON.
fn edge_scalar(which: u8, bits: u64) -> Scalar {
    match which % 10 {
        0 => Scalar::Int(if bits % 2 == 0 { i64::MIN } else { i64::MAX }),
        1 => {
            let f = f64::from_bits(bits);
            Scalar::Float(if f.is_finite() { f } else { (bits >> 12) as f64 * 1e-300 })
        }
        2 => Scalar::Float([0.1, -0.0, 5e-324, f64::MAX, f64::MIN_POSITIVE, 1e21][bits as usize % 6]),
        3 => Scalar::Str(["", "\0\u{1}\"\\", "line\nbreak", "😀é\u{FFFF}"][bits as usize % 4].into()),
        4 => Scalar::Bytes((0..(bits % 40) as u8).collect()),
        5 => Scalar::Str("s".repeat(20_000 + (bits % 100) as usize)),
        6 => Scalar::Bytes(vec![(bits % 251) as u8; 17_000]),
        7 => Scalar::from_json(&json!({"nested": [1, {"x": null, "y": [true, 2.5]}], "": "empty key in a JSON value"})),
        8 => Scalar::Null,
        _ => Scalar::Bool(bits % 2 == 0),
    }
}

/// A map nested `depth` levels deep under the field written.
fn nested_value(depth: usize, leaf: i64) -> Value {
    let mut v = Value::from(leaf);
    for _ in 0..depth {
        v = Value::Map([("n".to_string(), v)].into());
    }
    v
}

/// The shared edits, and edits at the limits.
#[derive(Clone, Debug)]
enum Edit {
    Basic(edits::Edit),
    ArrayInsertLarge {
        pos: u16,
        which: u8,
        bits: u64,
    },
    EdgeKey {
        key: u8,
        which: u8,
        bits: u64,
    },
    EdgeValue {
        path: u8,
        which: u8,
        bits: u64,
    },
    /// Nesting at the depth limit (`over`: one level beyond, which must fail and change nothing).
    Deep {
        over: bool,
    },
    /// Calls that fail (a bad key, a path through a missing array, a text position past the end); the
    /// transaction goes on without them.
    Failing {
        which: u8,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        12 => edits::edit().prop_map(Edit::Basic),
        1 => (any::<u16>(), any::<u8>(), any::<u64>()).prop_map(|(pos, which, bits)| Edit::ArrayInsertLarge { pos, which, bits }),
        2 => (any::<u8>(), any::<u8>(), any::<u64>()).prop_map(|(key, which, bits)| Edit::EdgeKey { key, which, bits }),
        2 => (any::<u8>(), any::<u8>(), any::<u64>()).prop_map(|(path, which, bits)| Edit::EdgeValue { path, which, bits }),
        1 => any::<bool>().prop_map(|over| Edit::Deep { over }),
        1 => any::<u8>().prop_map(|which| Edit::Failing { which }),
    ]
}

/// Apply one edit. Edits that do not fit the current state fail with an error, which is part of what is tested:
/// a failed call changes nothing at all (checked by the caller).
fn apply_edit(ed: &mut DocEditor<'_>, e: &Edit) -> Result<(), DocError> {
    match e {
        Edit::Basic(e) => edits::apply_edit(ed, e),
        Edit::ArrayInsertLarge { pos, which, bits } => {
            let n = edits::array_len(ed, edits::ARRAY);
            let item = Value::Register(edge_scalar(*which, *bits));
            ed.array_insert(edits::ARRAY, *pos as usize % (n + 1), &[item])
        }
        Edit::EdgeKey { key, which, bits } => {
            let path = Path::from_segments(vec![
                shoaldb::PathSegment::Key("edge".into()),
                shoaldb::PathSegment::Key(edge_key(*key)),
            ])
            .expect("a valid path");
            ed.set(path, Value::Register(edge_scalar(*which, *bits)))
        }
        Edit::EdgeValue { path, which, bits } => {
            let p = ["title", "m.a", "edge.v"][*path as usize % 3];
            ed.set(p, Value::Register(edge_scalar(*which, *bits)))
        }
        Edit::Deep { over } => {
            // "deep" is one level; the value adds the rest.
            let depth = if *over { MAX_PATH_DEPTH } else { MAX_PATH_DEPTH - 1 };
            ed.set("deep", nested_value(depth, depth as i64))
        }
        Edit::Failing { which } => match which % 6 {
            0 => ed.set(Path::key(&bad_key(*which / 6)), 1i64),
            1 => ed.set(format!("fresh{}.list[3].x", which / 6), 1i64),
            2 => ed.text_insert(format!("newtext{}", which / 6), 5, "x"),
            3 => ed.array_insert(format!("newarr{}", which / 6), 2, &[Value::from(1i64)]),
            4 => ed.set("m", Value::Map([(bad_key(*which / 6), Value::from(1i64))].into())),
            _ => ed.increment(format!("title.{}", bad_key(*which / 6)), 1),
        },
    }
}

#[derive(Clone, Debug)]
enum Action {
    /// One write transaction of several edits (across documents), through handle 0 or 1 of the replica; aborted
    /// at the end when `abort`.
    Write {
        replica: usize,
        handle: usize,
        edits: Vec<(usize, Edit)>,
        abort: bool,
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
    Evict {
        replica: usize,
        doc: usize,
    },
    Unevict {
        replica: usize,
        doc: usize,
    },
    Reopen {
        replica: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (0..REPLICAS, 0..2usize, proptest::collection::vec((0..DOCS.len(), edit()), 1..4), proptest::bool::weighted(0.1))
            .prop_map(|(replica, handle, edits, abort)| Action::Write { replica, handle, edits, abort }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Action::Send { from, to }),
        2 => (0..REPLICAS, any::<u64>()).prop_map(|(to, seed)| Action::Deliver { to, seed }),
        1 => (0..REPLICAS, 0..DOCS.len()).prop_map(|(replica, doc)| Action::Evict { replica, doc }),
        1 => (0..REPLICAS, 0..DOCS.len()).prop_map(|(replica, doc)| Action::Unevict { replica, doc }),
        1 => (0..REPLICAS).prop_map(|replica| Action::Reopen { replica }),
    ]
}

struct Replica {
    dir: tempfile::TempDir,
    /// Two handles on the same file.
    handles: Vec<Store>,
    inbox: Vec<DocChange>,
}

impl Replica {
    fn open(dir: tempfile::TempDir) -> Replica {
        let path = dir.path().join("db");
        let handles = vec![Store::open(&path).unwrap(), Store::open(&path).unwrap()];
        Replica { dir, handles, inbox: Vec::new() }
    }

    fn store(&self) -> &Store {
        &self.handles[0]
    }

    fn reopen(&mut self) {
        self.handles.clear();
        let path = self.dir.path().join("db");
        self.handles = vec![Store::open(&path).unwrap(), Store::open(&path).unwrap()];
    }
}

/// A tiny deterministic RNG for shuffling deliveries.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn shuffle<T>(v: &mut [T], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        let j = (next(seed) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Everything a replica shows of the collection, the way an app can observe it.
fn observable(s: &Store) -> Vec<Json> {
    s.list(COLLECTION).unwrap()
}

/// One edit inside a transaction: a failing call must leave the document exactly as it was.
fn edit_checked(ed: &mut DocEditor<'_>, e: &Edit) -> shoaldb::Result<()> {
    let before = (ed.document().encode(), ed.next_counter(), ed.is_empty());
    let r = apply_edit(ed, e);
    if let Err(err) = &r {
        let after = (ed.document().encode(), ed.next_counter(), ed.is_empty());
        assert!(before == after, "the failed call {e:?} ({err}) changed the document");
    }
    if matches!(e, Edit::Deep { over: true } | Edit::Failing { .. }) {
        assert!(r.is_err(), "{e:?} must fail");
    }
    Ok(())
}

fn write(s: &Store, edits: &[(usize, Edit)], abort: bool) -> shoaldb::Result<()> {
    s.write(|t| {
        for (doc, e) in edits {
            let id = DOCS[*doc];
            if t.get(COLLECTION, id)?.is_none() {
                t.upsert(COLLECTION, json!({"_id": id}))?;
            }
            t.update(COLLECTION, id, |ed| edit_checked(ed, e))?;
        }
        if abort {
            return Err(Error::InvalidJson("the app gave up".into()));
        }
        Ok(())
    })
}

/// A value for a failure message, cut short (documents may hold values of tens of kilobytes).
fn brief(v: &impl std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    match s.char_indices().nth(3000) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s,
    }
}

/// `get()` and every listed document equal the typed document exactly.
fn check_reads_agree(s: &Store) {
    let listed: BTreeMap<String, Json> =
        s.list(COLLECTION).unwrap().into_iter().map(|d| (d["_id"].as_str().unwrap().to_string(), d)).collect();
    let found = s.find(COLLECTION, &Query::all()).unwrap();
    assert_eq!(found.len(), listed.len());
    for d in DOCS {
        let got = s.get(COLLECTION, d).unwrap();
        let typed = s.document(COLLECTION, d).unwrap().and_then(|doc| doc.to_json()).map(|mut m| {
            m.insert("_id".into(), json!(d));
            Json::Object(m)
        });
        assert!(got == typed, "get() and document() differ for {d}: {} vs {}", brief(&got), brief(&typed));
        assert!(listed.get(d) == got.as_ref(), "list() and get() differ for {d}");
    }
}

const CONFLICT_PATHS: [&str; 7] = ["title", "m.a", "m", "likes", "m.items", "edge", "edge.v"];

/// Per document: its version vector and the conflicts at [`CONFLICT_PATHS`] (`None`: no such document).
type DocState = Option<(shoaldb::VersionVector, Vec<Vec<Json>>)>;

/// Everything that must be equal between converged replicas.
fn state(s: &Store) -> (Vec<Json>, Vec<DocState>, shoaldb::Summary) {
    let docs = DOCS
        .iter()
        .map(|d| {
            s.document(COLLECTION, d).unwrap().map(|doc| {
                let conflicts = CONFLICT_PATHS.iter().map(|p| doc.conflicts(*p).unwrap()).collect();
                (doc.version().clone(), conflicts)
            })
        })
        .collect();
    (observable(s), docs, s.replica().summary().unwrap())
}

fn run(actions: &[Action]) {
    let mut replicas: Vec<Replica> = (0..REPLICAS).map(|_| Replica::open(tempfile::tempdir().unwrap())).collect();
    for a in actions {
        match a {
            Action::Write { replica, handle, edits, abort } => {
                let r = &replicas[*replica];
                let before = (observable(r.store()), r.store().replica().summary().unwrap());
                let result = write(&r.handles[*handle], edits, *abort);
                if result.is_err() {
                    let after = (observable(r.store()), r.store().replica().summary().unwrap());
                    assert!(before == after, "a failed transaction changed the store");
                }
                // The other handle sees the same store.
                assert!(observable(&r.handles[1 - *handle]) == observable(&r.handles[*handle]), "the handles differ");
            }
            Action::Send { from, to } => {
                if from == to {
                    continue;
                }
                let summary = replicas[*to].store().replica().summary().unwrap();
                let changes = replicas[*from].handles[1].replica().changes_since(&summary).unwrap();
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
                shuffle(&mut batch, &mut seed);
                r.inbox = keep;
                let split = if batch.is_empty() { 0 } else { (next(&mut seed) % batch.len() as u64) as usize };
                let h = (seed % 2) as usize;
                r.handles[h].replica().apply_changes(&batch[..split]).unwrap();
                r.handles[1 - h].replica().apply_changes(&batch[split..]).unwrap();
            }
            Action::Evict { replica, doc } => {
                replicas[*replica].store().evict(COLLECTION, DOCS[*doc]).unwrap();
                assert_eq!(replicas[*replica].handles[1].get(COLLECTION, DOCS[*doc]).unwrap(), None);
            }
            Action::Unevict { replica, doc } => replicas[*replica].handles[1].unevict(COLLECTION, DOCS[*doc]).unwrap(),
            Action::Reopen { replica } => {
                let before = state(replicas[*replica].store());
                replicas[*replica].reopen();
                assert!(state(replicas[*replica].store()) == before, "reopening changed the store");
            }
        }
        for r in &replicas {
            check_reads_agree(r.store());
        }
    }

    // Every document accepted everywhere again, every inbox delivered, then full pairwise exchanges until quiet.
    for r in &mut replicas {
        for d in DOCS {
            r.store().unevict(COLLECTION, d).unwrap();
        }
        let inbox = std::mem::take(&mut r.inbox);
        r.store().replica().apply_changes(&inbox).unwrap();
    }
    for _round in 0..2 {
        for a in 0..REPLICAS {
            for b in 0..REPLICAS {
                if a != b {
                    let summary = replicas[b].store().replica().summary().unwrap();
                    let changes = replicas[a].store().replica().changes_since(&summary).unwrap();
                    let report = replicas[b].store().replica().apply_changes(&changes).unwrap();
                    assert_eq!(report.pending, 0, "a full exchange leaves nothing pending");
                }
            }
        }
    }

    let converged = state(replicas[0].store());
    for r in &replicas {
        assert!(
            state(r.store()) == converged,
            "replicas diverged:\n{}\nvs\n{}",
            brief(&state(r.store())),
            brief(&converged)
        );
        check_reads_agree(r.store());
    }

    // Applying every change again changes nothing.
    let mut log: Vec<DocChange> = Vec::new();
    for r in &replicas {
        log.extend(r.store().replica().changes_since(&Default::default()).unwrap());
    }
    for r in &replicas {
        let report = r.store().replica().apply_changes(&log).unwrap();
        assert_eq!(report.applied, 0, "changes applied twice");
        assert!(state(r.store()) == converged, "applying everything again changed a replica");
    }

    // A fresh store fed the whole log, shuffled and duplicated, in several calls, ends identical.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = Store::open(fresh_dir.path().join("db")).unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ log.len() as u64;
    shuffle(&mut log, &mut seed);
    for chunk in log.chunks(log.len() / 3 + 1) {
        fresh.replica().apply_changes(chunk).unwrap();
    }
    let fresh_state = state(&fresh);
    assert!(
        fresh_state == converged,
        "a store fed the whole log differs:\n{}\nvs\n{}",
        brief(&fresh_state),
        brief(&converged)
    );
    check_reads_agree(&fresh);

    // Reopening everything from disk gives the same state again.
    for r in &mut replicas {
        r.reopen();
        assert!(state(r.store()) == converged, "state after reopen differs");
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn stores_converge_through_the_public_api(actions in proptest::collection::vec(action(), 1..50)) {
        run(&actions);
    }
}

/// The defects of issue 11 as one scripted run of the model above (they must stay fixed however the random runs
/// go): evict, unevict and edit; an edit that fails half-way; a large value moving inside an array.
#[test]
fn scripted_run_of_the_known_defects() {
    let edit = |doc, e| (doc, e);
    run(&[
        Action::Write {
            replica: 0,
            handle: 0,
            edits: vec![edit(0, Edit::Basic(edits::Edit::SetRegister { path: 0, value: 1 }))],
            abort: false,
        },
        Action::Send { from: 0, to: 1 },
        Action::Deliver { to: 1, seed: 3 },
        Action::Evict { replica: 0, doc: 0 },
        Action::Unevict { replica: 0, doc: 0 },
        Action::Write {
            replica: 0,
            handle: 1,
            edits: vec![edit(0, Edit::Basic(edits::Edit::SetRegister { path: 1, value: 2 }))],
            abort: false,
        },
        Action::Write { replica: 0, handle: 0, edits: vec![edit(0, Edit::Failing { which: 1 })], abort: false },
        Action::Write {
            replica: 1,
            handle: 0,
            edits: vec![
                edit(0, Edit::ArrayInsertLarge { pos: 0, which: 6, bits: 9 }),
                edit(0, Edit::Basic(edits::Edit::ArrayInsert { pos: 0, shape: 0, value: 4 })),
            ],
            abort: false,
        },
        Action::Send { from: 1, to: 0 },
        Action::Send { from: 0, to: 1 },
        Action::Deliver { to: 0, seed: 5 },
        Action::Write {
            replica: 0,
            handle: 0,
            edits: vec![edit(0, Edit::Basic(edits::Edit::ArrayInsert { pos: 0, shape: 1, value: 7 }))],
            abort: false,
        },
        Action::Write { replica: 2, handle: 1, edits: vec![edit(1, Edit::Deep { over: false })], abort: true },
    ]);
}
