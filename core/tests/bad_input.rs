//! Untrusted input: corrupted, truncated, oversized or inconsistent change data and far-future clocks give typed
//! errors, never panics, and change nothing.

use proptest::prelude::*;
use serde_json::json;
use shoaldb::crdt::change::Seg;
use shoaldb::crdt::clock::{wall_clock_ms, Dot, MAX_CLOCK_SKEW_MS};
use shoaldb::store::Replica;
use shoaldb::{Change, DocChange, Error, Op, PeerId, Scalar, Store, Timestamp, VersionVector};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path().join("db")).unwrap();
    (dir, s)
}

fn sample_changes() -> Vec<DocChange> {
    let (_d, s) = store();
    let id = s.upsert("c", json!({"_id": "d", "a": 1, "m": {"x": "y"}})).unwrap();
    s.update("c", &id, |d| {
        d.text_insert("t", 0, "héllo")?;
        d.text_delete("t", 1, 2)?;
        d.array_push("l", &[1i64.into(), shoaldb::Value::Text("x".into())])?;
        d.increment("n", -4)?;
        Ok(())
    })
    .unwrap();
    s.replica().changes_since(&Default::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DocChange::decode(&bytes);
        let _ = Change::decode(&bytes);
        let _ = shoaldb::Summary::decode(&bytes);
        let _ = shoaldb::Document::decode(&bytes);
    }

    #[test]
    fn truncated_or_flipped_changes_are_rejected_or_still_valid(cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let changes = sample_changes();
        for c in &changes {
            let bytes = c.encode();
            let n = cut.index(bytes.len());
            prop_assert!(DocChange::decode(&bytes[..n]).is_err(), "a truncated change must not decode");
            let mut flipped = bytes.clone();
            let i = flip.index(flipped.len());
            flipped[i] ^= 1 << bit;
            // Either rejected, or a structurally valid change; applying it to a fresh store must not panic and,
            // if it fails, must leave the store empty.
            if let Ok(dc) = DocChange::decode(&flipped) {
                let (_d, s) = store();
                if s.replica().apply_changes(&[dc]).is_err() {
                    prop_assert!(s.list("c").unwrap().is_empty());
                    prop_assert!(s.replica().summary().unwrap() == Default::default());
                }
            }
        }
    }
}

#[test]
fn unknown_format_version_is_refused() {
    let mut bytes = sample_changes()[0].change.encode();
    bytes[0] = 99;
    assert!(matches!(Change::decode(&bytes), Err(shoaldb::ChangeError::UnsupportedVersion(99))));
}

fn change(peer: u64, start: u64, deps: &[(u64, u64)], ops: Vec<Op>) -> Change {
    Change {
        peer: PeerId(peer),
        start,
        ts: Timestamp::new(wall_clock_ms(), 0),
        deps: deps.iter().map(|&(p, c)| (PeerId(p), c)).collect::<VersionVector>(),
        ops,
    }
}

#[test]
fn inconsistent_changes_fail_the_whole_batch_and_write_nothing() {
    let (_d, s) = store();
    s.upsert("c", json!({"_id": "keep", "v": 1})).unwrap();
    let before = (s.list("c").unwrap(), s.replica().summary().unwrap());
    let good = DocChange {
        collection: "c".into(),
        doc_id: "new".into(),
        change: change(
            7,
            1,
            &[],
            vec![
                Op::Make { path: vec![], kind: shoaldb::Kind::Map },
                Op::Set { path: vec![Seg::Key("a".into())], value: Scalar::Int(1) },
            ],
        ),
        signature: None,
    };
    let bad_cases = vec![
        // Insert after an element that does not exist.
        change(
            8,
            1,
            &[],
            vec![Op::InsertText {
                path: vec![Seg::Key("t".into())],
                origin_left: Some(Dot::new(PeerId(3), 3)),
                origin_right: None,
                text: "x".into(),
            }],
        ),
        // Delete of characters that do not exist.
        change(
            8,
            1,
            &[],
            vec![Op::DeleteText {
                path: vec![Seg::Key("t".into())],
                spans: vec![shoaldb::crdt::sequence::IdSpan { peer: PeerId(1), start: 1, len: 5 }],
            }],
        ),
        // A path through an array element that does not exist.
        change(
            8,
            1,
            &[],
            vec![Op::Set { path: vec![Seg::Key("l".into()), Seg::Elem(Dot::new(PeerId(2), 9))], value: Scalar::Null }],
        ),
        // A change that depends on its own future.
        change(8, 5, &[(8, 9)], vec![Op::Remove { path: vec![] }]),
        // Non-finite float.
        change(8, 1, &[], vec![Op::Set { path: vec![Seg::Key("f".into())], value: Scalar::Float(f64::INFINITY) }]),
        // Oversized value.
        change(8, 1, &[], vec![Op::Set { path: vec![Seg::Key("f".into())], value: Scalar::Str("x".repeat(2 << 20)) }]),
        // A document set to a scalar.
        change(8, 1, &[], vec![Op::Set { path: vec![], value: Scalar::Null }]),
        // No operations.
        change(8, 1, &[], vec![]),
    ];
    for bad in bad_cases {
        let batch = vec![
            good.clone(),
            DocChange { collection: "c".into(), doc_id: "new".into(), change: bad.clone(), signature: None },
        ];
        let err = s.replica().apply_changes(&batch).expect_err(&format!("{bad:?} must be rejected"));
        assert!(matches!(err, Error::Document(_) | Error::Change(_)), "typed error, got {err:?}");
        assert_eq!((s.list("c").unwrap(), s.replica().summary().unwrap()), before, "nothing written for {bad:?}");
    }
    // Bad names.
    let mut named = good.clone();
    named.collection = String::new();
    assert!(matches!(s.replica().apply_changes(&[named]), Err(Error::InvalidName { .. })));
    // The good change alone applies.
    assert_eq!(s.replica().apply_changes(&[good]).unwrap().applied, 1);
    assert_eq!(s.get("c", "new").unwrap().unwrap()["a"], 1);
}

#[test]
fn far_future_timestamps_do_not_poison_the_clock_and_later_writes_still_win() {
    let (_d, s) = store();
    let far = Timestamp::new(wall_clock_ms() + 10 * 365 * 24 * 3600 * 1000, 0);
    let mut c = change(
        42,
        1,
        &[],
        vec![
            Op::Make { path: vec![], kind: shoaldb::Kind::Map },
            Op::Set { path: vec![Seg::Key("v".into())], value: Scalar::Str("from the future".into()) },
        ],
    );
    c.ts = far;
    s.replica()
        .apply_changes(&[DocChange { collection: "c".into(), doc_id: "d".into(), change: c, signature: None }])
        .unwrap();
    assert_eq!(s.get("c", "d").unwrap().unwrap()["v"], "from the future");
    // A local write made after seeing it: causally later, so it wins although its clock is far behind.
    s.update("c", "d", |d| Ok(d.set("v", "local")?)).unwrap();
    assert_eq!(s.get("c", "d").unwrap().unwrap()["v"], "local");
    let local = s
        .replica()
        .changes_since(&Default::default())
        .unwrap()
        .into_iter()
        .find(|dc| dc.change.peer == s.peer_id())
        .unwrap();
    assert!(
        local.change.ts.wall_ms() <= wall_clock_ms() + MAX_CLOCK_SKEW_MS,
        "the local clock stayed within the skew bound"
    );
}

#[test]
fn clock_and_counters_are_monotonic_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let first = {
        let s = Store::open(&path).unwrap();
        s.upsert("c", json!({"_id": "a", "v": 1})).unwrap();
        s.replica().changes_since(&Default::default()).unwrap().pop().unwrap().change
    };
    let s = Store::open(&path).unwrap();
    s.upsert("c", json!({"_id": "b", "v": 2})).unwrap();
    let second =
        s.replica().changes_since(&Default::default()).unwrap().into_iter().find(|c| c.doc_id == "b").unwrap().change;
    assert!(second.ts > first.ts);
    assert!(second.start > first.end(), "counters never repeat");
}
