use super::run::Run;
use super::text::Buf;
use super::*;
use crate::crdt::version::VersionVector;
use proptest::prelude::*;

fn d(peer: u64, counter: u64) -> Dot {
    Dot::new(PeerId(peer), counter)
}

// -------------------------------------------------------------------------------------------------------------
// Helpers: flattening and invariants
// -------------------------------------------------------------------------------------------------------------

/// One item, as the reference model stores it.
#[derive(Clone, Debug, PartialEq)]
struct RItem<T> {
    id: Dot,
    ol: Option<Dot>,
    or: Option<Dot>,
    deleted: bool,
    v: T,
}

/// Items of a text sequence, one per char.
fn items(seq: &Sequence<Chars>) -> Vec<RItem<char>> {
    let mut out = Vec::new();
    for r in seq.all_runs() {
        for (k, ch) in r.content.as_str().chars().enumerate() {
            out.push(RItem {
                id: r.id.offset(k as u64),
                ol: if k == 0 { r.origin_left() } else { Some(r.id.offset(k as u64 - 1)) },
                or: r.origin_right(),
                deleted: r.deleted,
                // A state keeps no content of deleted text (placeholders stand in for it when decoded).
                v: if r.deleted { '\0' } else { ch },
            });
        }
    }
    out
}

/// Checks every internal invariant.
fn check_invariants<C: SeqContent>(seq: &Sequence<C>) {
    assert!(!seq.order.is_empty());
    assert_eq!(seq.order.len(), seq.leaves.len());
    let mut seen = vec![false; seq.leaves.len()];
    let (mut vis, mut tot) = (0, 0);
    for (k, &l) in seq.order.iter().enumerate() {
        let leaf = &seq.leaves[l as usize];
        assert!(!seen[l as usize]);
        seen[l as usize] = true;
        assert_eq!(leaf.order as usize, k);
        assert!(leaf.runs.len() <= seq.cap, "leaf too big");
        if seq.order.len() > 1 {
            assert!(!leaf.runs.is_empty(), "empty leaf");
        }
        let lv: usize = leaf.runs.iter().map(|r| r.vis_len()).sum();
        let lt: usize = leaf.runs.iter().map(|r| r.len()).sum();
        assert_eq!(leaf.vis, lv);
        assert_eq!(leaf.total, lt);
        assert_eq!(seq.fw.prefix(k), [vis, tot], "fenwick prefix {k}");
        vis += lv;
        tot += lt;
        for r in &leaf.runs {
            assert!(r.len() > 0);
            for o in 0..r.len() as u64 {
                let (_, _, li) = seq.ids.find(r.id.offset(o)).expect("id indexed");
                assert_eq!(li, l, "id in wrong leaf");
            }
        }
    }
    assert_eq!(seq.vis_len, vis);
    assert_eq!(seq.total_len, tot);
    let indexed: u64 = seq
        .ids
        .peers
        .iter()
        .flat_map(|(_, m)| m.map.iter().map(|(a, (b, _))| b - a).chain(m.top.map(|t| t.1 - t.0)))
        .sum();
    assert_eq!(indexed, tot as u64, "index covers exactly the ids");
    for (_, m) in &seq.ids.peers {
        if let (Some((_, (b, _))), Some(t)) = (m.map.last_key_value(), m.top) {
            assert!(*b <= t.0, "top is highest");
        }
        assert!(m.top.is_some() || m.map.is_empty());
        let v: Vec<_> = m.map.iter().collect();
        for w in v.windows(2) {
            assert!(w[0].1 .0 <= *w[1].0, "overlapping ranges");
        }
    }
}

/// A snapshot for "nothing changed" assertions.
fn snapshot(seq: &Sequence<Chars>) -> (Vec<RItem<char>>, usize, usize) {
    (items(seq), seq.len(), seq.total_len())
}

// -------------------------------------------------------------------------------------------------------------
// Reference model: one item per element, linear scans, literal integrateYjsMod
// -------------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct RefSeq {
    items: Vec<RItem<char>>,
}

impl RefSeq {
    fn idx(&self, id: Dot) -> usize {
        self.items.iter().position(|x| x.id == id).expect("origin exists")
    }

    fn integrate(&mut self, item: RItem<char>) {
        let len = self.items.len() as i64;
        let left = item.ol.map_or(-1, |o| self.idx(o) as i64);
        let right = item.or.map_or(len, |o| self.idx(o) as i64);
        let mut dest = left + 1;
        let mut scanning = false;
        let mut i = dest;
        loop {
            if !scanning {
                dest = i;
            }
            if i == len || i == right {
                break;
            }
            let other = &self.items[i as usize];
            let oleft = other.ol.map_or(-1, |o| self.idx(o) as i64);
            let oright = other.or.map_or(len, |o| self.idx(o) as i64);
            if oleft < left || (oleft == left && oright == right && item.id.peer < other.id.peer) {
                break;
            }
            if oleft == left {
                scanning = oright < right;
            }
            i += 1;
        }
        self.items.insert(dest as usize, item);
    }

    fn apply_insert(&mut self, op: &SeqInsert<Chars>) {
        for (k, ch) in op.content.as_str().chars().enumerate() {
            let ol = if k == 0 { op.origin_left } else { Some(op.id.offset(k as u64 - 1)) };
            self.integrate(RItem { id: op.id.offset(k as u64), ol, or: op.origin_right, deleted: false, v: ch });
        }
    }

    fn local_insert(&mut self, pos: usize, id: Dot, s: &str) -> SeqInsert<Chars> {
        // Right after the visible item at pos - 1 (before the tombstones that follow it).
        let mut i = 0;
        if pos > 0 {
            let mut seen = 0;
            for (j, it) in self.items.iter().enumerate() {
                if !it.deleted {
                    seen += 1;
                    if seen == pos {
                        i = j + 1;
                        break;
                    }
                }
            }
        }
        let ol = if i > 0 { Some(self.items[i - 1].id) } else { None };
        let or = self.items.get(i).map(|x| x.id);
        let op = SeqInsert { id, origin_left: ol, origin_right: or, content: Chars::from(s) };
        self.apply_insert(&op);
        op
    }

    fn local_delete(&mut self, pos: usize, len: usize) -> Vec<Dot> {
        let mut out = Vec::new();
        let mut seen = 0;
        for it in self.items.iter_mut() {
            if !it.deleted {
                if seen >= pos && seen < pos + len {
                    it.deleted = true;
                    out.push(it.id);
                }
                seen += 1;
            }
        }
        out
    }

    fn apply_delete(&mut self, spans: &[IdSpan]) {
        for sp in spans {
            for c in sp.start..sp.start + sp.len {
                let i = self.idx(Dot::new(sp.peer, c));
                self.items[i].deleted = true;
            }
        }
    }

    fn text(&self) -> String {
        self.items.iter().filter(|x| !x.deleted).map(|x| x.v).collect()
    }
}

fn span_ids(spans: &[IdSpan]) -> Vec<Dot> {
    spans.iter().flat_map(|s| (s.start..s.start + s.len).map(move |c| Dot::new(s.peer, c))).collect()
}

// -------------------------------------------------------------------------------------------------------------
// Unit tests
// -------------------------------------------------------------------------------------------------------------

#[test]
fn insert_start_middle_end() {
    let mut s: Sequence<Chars> = Sequence::new();
    assert!(s.is_empty());
    let op = s.local_insert(0, d(1, 1), "hello".into()).unwrap();
    assert_eq!(op, SeqInsert { id: d(1, 1), origin_left: None, origin_right: None, content: "hello".into() });
    s.local_insert(5, d(1, 6), " world".into()).unwrap();
    assert_eq!(s.text(), "hello world");
    let op = s.local_insert(0, d(1, 12), ">".into()).unwrap();
    assert_eq!(op.origin_left, None);
    assert_eq!(op.origin_right, Some(d(1, 1)));
    let op = s.local_insert(3, d(1, 13), "XY".into()).unwrap();
    assert_eq!(op.origin_left, Some(d(1, 2)));
    assert_eq!(op.origin_right, Some(d(1, 3)));
    assert_eq!(s.to_string(), ">heXYllo world");
    assert_eq!(s.len(), 14);
    assert_eq!(s.total_len(), 14);
    // Typing forward at the end extends one run.
    let mut t: Sequence<Chars> = Sequence::new();
    for (i, c) in "abcdef".chars().enumerate() {
        t.local_insert(i, d(2, i as u64 + 1), c.into()).unwrap();
    }
    assert_eq!(t.run_count(), 1);
    assert_eq!(t.text(), "abcdef");
    check_invariants(&s);
    check_invariants(&t);
}

#[test]
fn delete_start_middle_end_and_spans() {
    let mut s: Sequence<Chars> = Sequence::new();
    s.local_insert(0, d(1, 1), "abcdefgh".into()).unwrap();
    let sp = s.local_delete(0, 1).unwrap();
    assert_eq!(sp, vec![IdSpan { peer: PeerId(1), start: 1, len: 1 }]);
    let sp = s.local_delete(2, 3).unwrap(); // "bcdefgh" -> delete d,e,f
    assert_eq!(sp, vec![IdSpan { peer: PeerId(1), start: 4, len: 3 }]);
    assert_eq!(s.text(), "bcgh");
    let sp = s.local_delete(3, 1).unwrap();
    assert_eq!(sp, vec![IdSpan { peer: PeerId(1), start: 8, len: 1 }]);
    assert_eq!(s.text(), "bcg");
    assert_eq!(s.total_len(), 8);
    // Deleting across tombstones coalesces ids that are contiguous.
    let sp = s.local_delete(0, 3).unwrap();
    assert_eq!(sp, vec![IdSpan { peer: PeerId(1), start: 2, len: 2 }, IdSpan { peer: PeerId(1), start: 7, len: 1 }]);
    assert_eq!(s.text(), "");
    // All deleted again: one run.
    assert_eq!(s.run_count(), 1);
    assert_eq!(s.local_delete(0, 0).unwrap(), vec![]);
    // Insert at the start of an all-deleted sequence: it goes before the tombstones.
    let op = s.local_insert(0, d(1, 20), "z".into()).unwrap();
    assert_eq!(op.origin_left, None);
    assert_eq!(op.origin_right, Some(d(1, 1)));
    // After a visible item followed by tombstones: anchored to the visible item, before the tombstones.
    let op = s.local_insert(1, d(1, 30), "y".into()).unwrap();
    assert_eq!(op.origin_left, Some(d(1, 20)));
    assert_eq!(op.origin_right, Some(d(1, 1)));
    assert_eq!(s.text(), "zy");
    check_invariants(&s);
}

#[test]
fn unicode_positions_are_code_points() {
    let mut s: Sequence<Chars> = Sequence::new();
    s.local_insert(0, d(1, 1), "héllo😀wörld".into()).unwrap();
    assert_eq!(s.len(), 11);
    s.local_insert(6, d(1, 100), "✓".into()).unwrap();
    assert_eq!(s.text(), "héllo😀✓wörld");
    s.local_delete(5, 1).unwrap();
    assert_eq!(s.text(), "héllo✓wörld");
    s.local_insert(1, d(1, 200), "🎉🎉".into()).unwrap();
    assert_eq!(s.text(), "h🎉🎉éllo✓wörld");
    assert_eq!(s.id_at(1), Some(d(1, 200)));
    assert_eq!(s.id_at(3), Some(d(1, 2)));
    assert_eq!(s.position_of(d(1, 6)), Some((7, false)));
    assert_eq!(s.position_of(d(1, 100)), Some((7, true)));
    let mut c = Chars::from("a😀b");
    let r = c.split_off(1);
    assert_eq!((c.as_str(), r.as_str(), c.len(), r.len()), ("a", "😀b", 1, 2));
    check_invariants(&s);
}

#[test]
fn errors_leave_sequence_unchanged() {
    let mut s: Sequence<Chars> = Sequence::new();
    s.local_insert(0, d(1, 1), "abc".into()).unwrap();
    s.local_delete(1, 1).unwrap();
    let before = snapshot(&s);
    assert_eq!(s.local_insert(3, d(1, 10), "x".into()), Err(SeqError::IndexOutOfBounds { index: 3, len: 2 }));
    assert_eq!(s.local_insert(0, d(1, 2), "x".into()), Err(SeqError::DuplicateId(d(1, 2))));
    assert_eq!(snapshot(&s), before, "failed inserts changed nothing");
    assert_eq!(s.local_insert(0, d(9, 1), "xy".into()).map(|_| ()), Ok(()));
    s.local_delete(0, 2).unwrap();
    let before = snapshot(&s);
    assert_eq!(s.local_insert(0, d(1, 0), "xy".into()), Err(SeqError::UnknownId(d(1, 0))), "counter 0 is never an id");
    assert_eq!(s.local_insert(0, d(1, 9), Chars::new()), Err(SeqError::EmptyContent));
    assert_eq!(s.local_insert(0, d(1, u64::MAX), "xy".into()), Err(SeqError::CounterOverflow(d(1, u64::MAX))));
    assert!(matches!(s.local_delete(1, 2), Err(SeqError::IndexOutOfBounds { .. })));
    assert!(matches!(s.local_delete(usize::MAX, 2), Err(SeqError::IndexOutOfBounds { .. })));
    let op = |id, l, r| SeqInsert { id, origin_left: l, origin_right: r, content: Chars::from("q") };
    assert_eq!(s.apply_insert(&op(d(2, 1), Some(d(9, 9)), None)), Err(SeqError::UnknownId(d(9, 9))));
    assert_eq!(s.apply_insert(&op(d(2, 1), None, Some(d(2, 5)))), Err(SeqError::UnknownId(d(2, 5))));
    assert_eq!(s.apply_insert(&op(d(1, 3), None, None)), Err(SeqError::DuplicateId(d(1, 3))));
    assert!(matches!(s.apply_insert(&op(d(2, 1), Some(d(1, 3)), Some(d(1, 1)))), Err(SeqError::InvalidOrigins { .. })));
    let sp = |p, st, l| IdSpan { peer: PeerId(p), start: st, len: l };
    // One good span, one bad: nothing happens.
    assert_eq!(s.apply_delete(&[sp(1, 1, 1), sp(1, 3, 2)]), Err(SeqError::UnknownId(d(1, 4))));
    assert_eq!(s.apply_delete(&[sp(1, 1, 1), sp(7, 3, 2)]), Err(SeqError::UnknownId(d(7, 3))));
    assert_eq!(s.apply_delete(&[sp(1, u64::MAX, 2)]), Err(SeqError::InvalidSpan(sp(1, u64::MAX, 2))));
    assert_eq!(snapshot(&s), before);
    // Idempotent delete.
    s.apply_delete(&[sp(1, 2, 1), sp(1, 1, 0)]).unwrap();
    assert_eq!(snapshot(&s), before);
    check_invariants(&s);
}

#[test]
fn delete_covered_tombstones_covered_ids() {
    let mut s: Sequence<Chars> = Sequence::with_leaf_capacity(4);
    s.local_insert(0, d(1, 1), "aaaa".into()).unwrap();
    let mut r: Sequence<Chars> = Sequence::new();
    let op = r.local_insert(0, d(2, 1), "bbbb".into()).unwrap();
    s.apply_insert(&op).unwrap();
    s.local_insert(8, d(1, 5), "cc".into()).unwrap();
    let t = s.text();
    let mut vv = VersionVector::new();
    vv.raise(PeerId(1), 2);
    vv.raise(PeerId(2), 10);
    assert_eq!(s.delete_covered(&vv), 6);
    let expected: String = items(&s).iter().filter(|i| !vv.contains(i.id)).map(|i| i.v).collect();
    assert_eq!(s.text(), expected);
    assert_eq!(t.len() - 6, s.len());
    assert_eq!(s.delete_covered(&vv), 0);
    assert_eq!(s.delete_covered(&VersionVector::new()), 0);
    check_invariants(&s);
}

#[test]
fn list_accessors() {
    #[derive(Clone, Debug, PartialEq)]
    struct Big {
        n: u32,
        pad: [u64; 8],
    }
    let big = |n| Big { n, pad: [0; 8] };
    let mut s: Sequence<Vec<Big>> = Sequence::with_leaf_capacity(4);
    s.local_insert(0, d(1, 1), vec![big(1), big(2), big(3)]).unwrap();
    s.local_insert(1, d(1, 10), vec![big(10)]).unwrap();
    s.local_delete(2, 1).unwrap(); // deletes big(2)
    assert_eq!(s.len(), 3);
    assert_eq!(s.get(0).map(|(id, b)| (id, b.n)), Some((d(1, 1), 1)));
    assert_eq!(s.get(1).map(|(id, b)| (id, b.n)), Some((d(1, 10), 10)));
    assert_eq!(s.get(2).map(|(id, b)| (id, b.n)), Some((d(1, 3), 3)));
    assert!(s.get(3).is_none());
    if let Some((_, b)) = s.get_mut(2) {
        b.n = 33;
    }
    assert_eq!(s.get_by_id(d(1, 3)).map(|(b, del)| (b.n, del)), Some((33, false)));
    assert_eq!(s.get_by_id(d(1, 2)).map(|(b, del)| (b.n, del)), Some((2, true)));
    assert!(s.get_by_id(d(1, 4)).is_none());
    if let Some((b, _)) = s.get_by_id_mut(d(1, 2)) {
        b.n = 22;
    }
    let mut seen = Vec::new();
    s.for_each_mut(|id, b, del| {
        seen.push((id, b.n, del));
        b.n += 1000;
    });
    assert_eq!(seen, vec![(d(1, 1), 1, false), (d(1, 10), 10, false), (d(1, 2), 22, true), (d(1, 3), 33, false)]);
    assert_eq!(s.get(0).map(|(_, b)| b.n), Some(1001));
    let vis: Vec<u32> = s.visible_runs().flat_map(|(_, c)| c.iter().map(|b| b.n)).collect();
    assert_eq!(vis, vec![1001, 1010, 1033]);
    let all: Vec<(Dot, usize, bool)> = s.runs().map(|(id, c, del)| (id, c.len(), del)).collect();
    assert_eq!(all, vec![(d(1, 1), 1, false), (d(1, 10), 1, false), (d(1, 2), 1, true), (d(1, 3), 1, false)]);
    assert!(s.contains_id(d(1, 2)) && !s.contains_id(d(1, 5)));
    check_invariants(&s);
}

fn build_fragmented(cap: usize) -> Sequence<Chars> {
    let mut s: Sequence<Chars> = Sequence::with_leaf_capacity(cap);
    let mut c = 1;
    for i in 0..200u64 {
        let pos = ((i * 7919) % (s.len() as u64 + 1)) as usize;
        let txt = if i % 3 == 0 { "é😀x" } else { "ab" };
        s.local_insert(pos, d(1 + i % 3, c), txt.into()).unwrap();
        c += 3;
        if i % 4 == 0 && s.len() > 3 {
            s.local_delete(pos.min(s.len() - 2), 2).unwrap();
        }
    }
    s
}

#[test]
fn serde_round_trip_postcard_and_json() {
    let s = build_fragmented(4);
    check_invariants(&s);
    assert!(s.leaf_count() > 10);
    let bytes = postcard::to_allocvec(&s).unwrap();
    let back: Sequence<Chars> = postcard::from_bytes(&bytes).unwrap();
    check_invariants(&back);
    assert_eq!(items(&back), items(&s));
    assert_eq!(back.text(), s.text());
    let json = serde_json::to_string(&s).unwrap();
    let back2: Sequence<Chars> = serde_json::from_str(&json).unwrap();
    assert_eq!(items(&back2), items(&s));
    // Lists too.
    let mut l: Sequence<Vec<(u32, String)>> = Sequence::new();
    l.local_insert(0, d(1, 1), vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]).unwrap();
    l.local_delete(1, 1).unwrap();
    let back3: Sequence<Vec<(u32, String)>> = postcard::from_bytes(&postcard::to_allocvec(&l).unwrap()).unwrap();
    assert_eq!(
        back3.runs().map(|(i, c, del)| (i, c.clone(), del)).collect::<Vec<_>>(),
        l.runs().map(|(i, c, del)| (i, c.clone(), del)).collect::<Vec<_>>()
    );
    // An empty one.
    let e: Sequence<Chars> = postcard::from_bytes(&postcard::to_allocvec(&Sequence::<Chars>::new()).unwrap()).unwrap();
    assert!(e.is_empty());
    check_invariants(&e);
    // The deserialized sequence keeps working.
    let mut back = back;
    let mut s = s;
    let op = s.local_insert(3, d(9, 1), "new".into()).unwrap();
    back.apply_insert(&op).unwrap();
    assert_eq!(items(&back), items(&s));
}

#[test]
fn a_sequence_written_by_many_peers_round_trips() {
    // The encoder numbers peers by a scan while there are few and by a hash map beyond 16: cross that, with
    // peers coming back before and after it.
    let mut s: Sequence<Chars> = Sequence::new();
    for i in 0..400u64 {
        let pos = ((i * 7919) % (s.len() as u64 + 1)) as usize;
        s.local_insert(pos, d(1 + (i * 13) % 40, 1 + i * 5), "xy".into()).unwrap();
        if i % 5 == 0 && s.len() > 3 {
            s.local_delete(pos.min(s.len() - 2), 1).unwrap();
        }
    }
    let bytes = postcard::to_allocvec(&s).unwrap();
    let back: Sequence<Chars> = postcard::from_bytes(&bytes).unwrap();
    check_invariants(&back);
    assert_eq!(items(&back), items(&s));
    // Each peer is written once: 40 peers' ids take at least 40 bytes, and the whole stays well under a write
    // of every dot's peer id in full (400 runs of three 8-byte ids at least).
    assert!(bytes.len() < 400 * 3 * 8, "{} bytes", bytes.len());
}

#[test]
fn deserialize_rejects_invalid_structure() {
    let run = |id: Dot, l: Option<Dot>, r: Option<Dot>, s: &str| SerRunRefOwned {
        id,
        origin_left: l,
        origin_right: r,
        deleted: false,
        content: s.to_string(),
    };
    let enc = |runs: &Vec<SerRunRefOwned>| postcard::to_allocvec(runs).unwrap();
    // Runs as snapshot format 1 wrote them: the checks on decoded runs are the same in every format.
    let dec = |b: &[u8]| super::decoding(1, || postcard::from_bytes::<Sequence<Chars>>(b));
    // Valid.
    assert!(dec(&enc(&vec![run(d(1, 1), None, None, "ab"), run(d(1, 5), Some(d(1, 2)), None, "c")])).is_ok());
    // Duplicate ids.
    assert!(dec(&enc(&vec![run(d(1, 1), None, None, "ab"), run(d(1, 2), Some(d(1, 2)), None, "c")])).is_err());
    // Unknown origin.
    assert!(dec(&enc(&vec![run(d(1, 1), Some(d(3, 3)), None, "ab")])).is_err());
    // Origin on the wrong side.
    assert!(dec(&enc(&vec![run(d(1, 1), None, None, "ab"), run(d(2, 1), None, Some(d(1, 1)), "c")])).is_err());
    assert!(dec(&enc(&vec![run(d(1, 1), Some(d(2, 1)), None, "ab"), run(d(2, 1), None, None, "c")])).is_err());
    // Empty content, counter overflow.
    assert!(dec(&enc(&vec![run(d(1, 1), None, None, "")])).is_err());
    assert!(dec(&enc(&vec![run(d(1, u64::MAX), None, None, "ab")])).is_err());
    // Garbage never panics.
    let good = postcard::to_allocvec(&build_fragmented(8)).unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..2000 {
        let mut b = good.clone();
        for _ in 0..(1 + i % 4) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let at = (x as usize) % b.len();
            b[at] = (x >> 32) as u8;
        }
        b.truncate(b.len() - (i % 3));
        if let Ok(s) = dec(&b) {
            check_invariants(&s);
        }
    }
    let _ = dec(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
}

#[derive(Serialize)]
struct SerRunRefOwned {
    id: Dot,
    origin_left: Option<Dot>,
    origin_right: Option<Dot>,
    deleted: bool,
    content: String,
}

#[test]
fn remote_ops_and_splits_across_leaves() {
    // A sequence with many leaves receiving ops at all places.
    let mut a = build_fragmented(4);
    let mut b: Sequence<Chars> = postcard::from_bytes(&postcard::to_allocvec(&a).unwrap()).unwrap();
    let mut ops = Vec::new();
    for i in 0..50u64 {
        let pos = ((i * 31) % (a.len() as u64 + 1)) as usize;
        ops.push(a.local_insert(pos, d(5, 1 + i * 2), "Zz".into()).unwrap());
    }
    for op in &ops {
        b.apply_insert(op).unwrap();
    }
    let del = a.local_delete(10, 40).unwrap();
    b.apply_delete(&del).unwrap();
    b.apply_delete(&del).unwrap();
    assert_eq!(items(&a), items(&b));
    check_invariants(&a);
    check_invariants(&b);
}

// -------------------------------------------------------------------------------------------------------------
// Non-interleaving
// -------------------------------------------------------------------------------------------------------------

fn exchange(a: &mut Sequence<Chars>, b: &mut Sequence<Chars>, ops_a: &[SeqInsert<Chars>], ops_b: &[SeqInsert<Chars>]) {
    for op in ops_b {
        a.apply_insert(op).unwrap();
    }
    for op in ops_a {
        b.apply_insert(op).unwrap();
    }
}

#[test]
fn concurrent_forward_runs_do_not_interleave() {
    for (pa, pb) in [(1, 2), (2, 1)] {
        let mut a: Sequence<Chars> = Sequence::new();
        let base = a.local_insert(0, d(9, 1), "xy".into()).unwrap();
        let mut b: Sequence<Chars> = Sequence::new();
        b.apply_insert(&base).unwrap();
        let mut c = b.clone();
        let ops_a: Vec<_> = (0..4).map(|k| a.local_insert(1 + k, d(pa, 1 + k as u64), "a".into()).unwrap()).collect();
        let ops_b: Vec<_> = (0..4).map(|k| b.local_insert(1 + k, d(pb, 1 + k as u64), "b".into()).unwrap()).collect();
        exchange(&mut a, &mut b, &ops_a, &ops_b);
        // Third replica receives them interleaved.
        for k in 0..4 {
            c.apply_insert(&ops_b[k]).unwrap();
            c.apply_insert(&ops_a[k]).unwrap();
        }
        assert_eq!(a.text(), b.text());
        assert_eq!(a.text(), c.text());
        assert!(a.text() == "xaaaabbbby" || a.text() == "xbbbbaaaay", "{}", a.text());
        assert_eq!(items(&a), items(&c));
    }
}

#[test]
fn concurrent_backward_runs_do_not_interleave() {
    let mut a: Sequence<Chars> = Sequence::new();
    let base = a.local_insert(0, d(9, 1), "xy".into()).unwrap();
    let mut b: Sequence<Chars> = Sequence::new();
    b.apply_insert(&base).unwrap();
    let mut c = b.clone();
    let ops_a: Vec<_> =
        "4321".chars().enumerate().map(|(k, ch)| a.local_insert(1, d(1, 1 + k as u64), ch.into()).unwrap()).collect();
    let ops_b: Vec<_> =
        "dcba".chars().enumerate().map(|(k, ch)| b.local_insert(1, d(2, 1 + k as u64), ch.into()).unwrap()).collect();
    exchange(&mut a, &mut b, &ops_a, &ops_b);
    for k in 0..4 {
        c.apply_insert(&ops_a[k]).unwrap();
        c.apply_insert(&ops_b[k]).unwrap();
    }
    assert_eq!(a.text(), b.text());
    assert_eq!(a.text(), c.text());
    assert!(a.text() == "x1234abcdy" || a.text() == "xabcd1234y", "{}", a.text());
}

#[test]
fn concurrent_insert_into_deleted_text() {
    let mut a: Sequence<Chars> = Sequence::new();
    let base = a.local_insert(0, d(1, 1), "hello world".into()).unwrap();
    let mut b: Sequence<Chars> = Sequence::new();
    b.apply_insert(&base).unwrap();
    let del = a.local_delete(2, 6).unwrap(); // "he" + "rld"
    let ins = b.local_insert(5, d(2, 1), "XX".into()).unwrap(); // "helloXX world"
    a.apply_insert(&ins).unwrap();
    b.apply_delete(&del).unwrap();
    assert_eq!(a.text(), b.text());
    assert_eq!(a.text(), "heXXrld");
    assert_eq!(items(&a), items(&b));
}

// -------------------------------------------------------------------------------------------------------------
// Differential property test against the reference model
// -------------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Action {
    Insert { r: usize, pos: usize, text: String, gap: bool },
    Delete { r: usize, pos: usize, len: usize },
    Deliver { r: usize, pick: usize },
}

#[derive(Clone, Debug)]
enum Op {
    Ins(SeqInsert<Chars>),
    Del(Vec<IdSpan>),
}

const R: usize = 3;
const PEERS: [u64; R] = [7, 3, 5];

struct Replica {
    seq: Sequence<Chars>,
    rf: RefSeq,
    applied: [usize; R],
    counter: u64,
}

fn action() -> impl Strategy<Value = Action> {
    let text = prop_oneof![4 => "[ab]{1,3}", 1 => "[é😀x]{1,3}", 1 => "a{4,9}"];
    prop_oneof![
        4 => (0..R, any::<usize>(), text, any::<bool>()).prop_map(|(r, pos, text, gap)| Action::Insert { r, pos, text, gap }),
        2 => (0..R, any::<usize>(), 1..5usize).prop_map(|(r, pos, len)| Action::Delete { r, pos, len }),
        3 => (0..R, any::<usize>()).prop_map(|(r, pick)| Action::Deliver { r, pick }),
    ]
}

fn deliverable(log: &[Vec<(Op, [usize; R])>], rep: &Replica) -> Vec<usize> {
    (0..R)
        .filter(|&o| {
            let n = rep.applied[o];
            n < log[o].len() && log[o][n].1.iter().zip(rep.applied.iter()).all(|(need, have)| need <= have)
        })
        .collect()
}

fn deliver(log: &[Vec<(Op, [usize; R])>], rep: &mut Replica, origin: usize) {
    let (op, _) = &log[origin][rep.applied[origin]];
    match op {
        Op::Ins(i) => {
            rep.seq.apply_insert(i).unwrap();
            rep.rf.apply_insert(i);
        }
        Op::Del(spans) => {
            rep.seq.apply_delete(spans).unwrap();
            rep.rf.apply_delete(spans);
        }
    }
    rep.applied[origin] += 1;
}

fn compare(rep: &Replica) {
    // `items` leaves out what deleted items held (see there).
    let reference: Vec<RItem<char>> =
        rep.rf.items.iter().map(|i| RItem { v: if i.deleted { '\0' } else { i.v }, ..i.clone() }).collect();
    assert_eq!(items(&rep.seq), reference);
    assert_eq!(rep.seq.text(), rep.rf.text());
    check_invariants(&rep.seq);
}

/// Delivers what each replica still lacks in a random causal order, different per replica, one to three operations
/// at a turn; `check` after each turn.
fn deliver_rest(log: &[Vec<(Op, [usize; R])>], reps: &mut [Replica], seed: u64, check: fn(&Replica)) {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    loop {
        let mut progress = false;
        for rep in reps.iter_mut() {
            if deliverable(log, rep).is_empty() {
                continue;
            }
            for _ in 0..1 + rnd() % 3 {
                let cands = deliverable(log, rep);
                if cands.is_empty() {
                    break;
                }
                deliver(log, rep, cands[rnd() % cands.len()]);
            }
            check(rep);
            progress = true;
        }
        if !progress {
            break;
        }
    }
}

/// Applies `a` — an edit at one replica (its operation checked against the reference model's, and logged) or a
/// delivery to it — and returns which replica changed.
fn step(log: &mut [Vec<(Op, [usize; R])>], reps: &mut [Replica], a: &Action) -> Option<usize> {
    match a {
        Action::Insert { r, pos, text, gap } => {
            let (r, rep) = (*r, &mut reps[*r]);
            let pos = pos % (rep.seq.len() + 1);
            let id = Dot::new(PeerId(PEERS[r]), rep.counter + *gap as u64);
            let op = rep.seq.local_insert(pos, id, Chars::from(text.as_str())).unwrap();
            let rop = rep.rf.local_insert(pos, id, text);
            assert_eq!(op, rop);
            rep.counter = id.counter + text.chars().count() as u64;
            let deps = rep.applied;
            rep.applied[r] += 1;
            log[r].push((Op::Ins(op), deps));
            Some(r)
        }
        Action::Delete { r, pos, len } => {
            let (r, rep) = (*r, &mut reps[*r]);
            if rep.seq.is_empty() {
                return None;
            }
            let pos = pos % rep.seq.len();
            let len = (*len).min(rep.seq.len() - pos);
            let spans = rep.seq.local_delete(pos, len).unwrap();
            assert_eq!(span_ids(&spans), rep.rf.local_delete(pos, len));
            let deps = rep.applied;
            rep.applied[r] += 1;
            log[r].push((Op::Del(spans), deps));
            Some(r)
        }
        Action::Deliver { r, pick } => {
            let cands = deliverable(log, &reps[*r]);
            if cands.is_empty() {
                return None;
            }
            deliver(log, &mut reps[*r], cands[pick % cands.len()]);
            Some(*r)
        }
    }
}

fn run_differential(actions: Vec<Action>, seed: u64, cap: usize) {
    let mut reps: Vec<Replica> = (0..R)
        .map(|_| Replica { seq: Sequence::with_leaf_capacity(cap), rf: RefSeq::default(), applied: [0; R], counter: 1 })
        .collect();
    let mut log: Vec<Vec<(Op, [usize; R])>> = vec![Vec::new(); R];
    for a in actions {
        if let Some(r) = step(&mut log, &mut reps, &a) {
            compare(&reps[r]);
        }
    }
    deliver_rest(&log, &mut reps, seed, compare);
    for rep in &reps {
        assert_eq!(rep.applied, [log[0].len(), log[1].len(), log[2].len()]);
    }
    let first = items(&reps[0].seq);
    for rep in &reps[1..] {
        assert_eq!(items(&rep.seq), first);
        assert_eq!(rep.seq.text(), reps[0].seq.text());
    }
    // Serialization round trip of the converged state.
    let back: Sequence<Chars> = postcard::from_bytes(&postcard::to_allocvec(&reps[0].seq).unwrap()).unwrap();
    assert_eq!(items(&back), first);
    check_invariants(&back);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn differential_small_leaves(actions in proptest::collection::vec(action(), 1..80), seed in any::<u64>()) {
        run_differential(actions, seed, 4);
    }

    #[test]
    fn differential_default_leaves(actions in proptest::collection::vec(action(), 1..120), seed in any::<u64>()) {
        run_differential(actions, seed, LEAF_CAP);
    }
}

// -------------------------------------------------------------------------------------------------------------
// Editing trace
// -------------------------------------------------------------------------------------------------------------

#[test]
fn automerge_paper_trace() {
    use std::io::Read;
    // shared/ sits beside the repository checkout.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/traces/automerge-paper.json.gz");
    let Ok(file) =
        std::fs::File::open(path).or_else(|_| std::fs::File::open("/work/shared/traces/automerge-paper.json.gz"))
    else {
        eprintln!("trace {path} not found, skipping");
        return;
    };
    let mut json = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut json).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let start = v["startContent"].as_str().unwrap();
    let end = v["endContent"].as_str().unwrap();
    let mut patches: Vec<(usize, usize, String)> = Vec::new();
    for txn in v["txns"].as_array().unwrap() {
        for p in txn["patches"].as_array().unwrap() {
            patches.push((
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
                p[2].as_str().unwrap().to_string(),
            ));
        }
    }
    let peer = PeerId(1);
    let t0 = std::time::Instant::now();
    let mut s: Sequence<Chars> = Sequence::new();
    let mut counter = 1;
    if !start.is_empty() {
        let n = start.chars().count() as u64;
        s.local_insert(0, Dot::new(peer, counter), start.into()).unwrap();
        counter += n;
    }
    for (pos, del, ins) in &patches {
        if *del > 0 {
            s.local_delete(*pos, *del).unwrap();
        }
        if !ins.is_empty() {
            let c = Chars::from(ins.as_str());
            let n = c.len() as u64;
            s.local_insert(*pos, Dot::new(peer, counter), c).unwrap();
            counter += n;
        }
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "automerge-paper: {} patches in {:?}; {} runs in {} leaves, {} items ({} visible)",
        patches.len(),
        elapsed,
        s.run_count(),
        s.leaf_count(),
        s.total_len(),
        s.len()
    );
    assert_eq!(s.text(), end);
    check_invariants(&s);
    let t1 = std::time::Instant::now();
    let bytes = postcard::to_allocvec(&s).unwrap();
    let back: Sequence<Chars> = postcard::from_bytes(&bytes).unwrap();
    eprintln!("postcard round trip: {} bytes in {:?}", bytes.len(), t1.elapsed());
    assert_eq!(back.text(), end);
    // Every insertion and deletion stable: the tombstones no later insert can name go, the text stays, and typing
    // goes on.
    let mut stable = VersionVector::new();
    stable.raise(peer, counter - 1);
    let tombstones = s.total_len() - s.len();
    let dropped = s.collect_tombstones(&stable, |_| Vec::new()).unwrap();
    let collected = postcard::to_allocvec(&s).unwrap();
    eprintln!(
        "collected: {dropped} of {tombstones} tombstones dropped, {} runs left; {} bytes (from {})",
        s.run_count(),
        collected.len(),
        bytes.len()
    );
    assert!(dropped > tombstones / 2 && collected.len() < bytes.len());
    assert_eq!(s.text(), end);
    check_invariants(&s);
    s.local_insert(end.chars().count() / 2, Dot::new(peer, counter), "typed on".into()).unwrap();
    let back: Sequence<Chars> = postcard::from_bytes(&postcard::to_allocvec(&s).unwrap()).unwrap();
    assert_eq!(back.text(), s.text());
}

#[test]
fn chars_inline_and_heap_transitions() {
    let mut c = Chars::from("héllo");
    assert!(matches!(c.buf, Buf::Inline { .. }));
    for _ in 0..5 {
        c.append(Chars::from("😀ab"));
    }
    assert!(matches!(c.buf, Buf::Heap(_)));
    assert_eq!(c.len(), 5 + 15);
    assert_eq!(c.as_str(), "héllo😀ab😀ab😀ab😀ab😀ab");
    let r = c.split_off(6);
    assert_eq!((c.as_str(), c.len()), ("héllo😀", 6));
    assert!(matches!(c.buf, Buf::Inline { .. }));
    assert_eq!((r.as_str(), r.len()), ("ab😀ab😀ab😀ab😀ab", 14));
    let mut r = r;
    let r2 = r.split_off(14);
    assert_eq!((r2.as_str(), r2.len()), ("", 0));
    let r3 = r.split_off(0);
    assert_eq!((r.as_str(), r3.as_str()), ("", "ab😀ab😀ab😀ab😀ab"));
    let mut e = Chars::new();
    e.append(Chars::from("x".repeat(40)));
    e.push('ü');
    e.push_str("ß€");
    assert_eq!(e.len(), 43);
    assert_eq!(e, Chars::from(format!("{}üß€", "x".repeat(40))));
    assert_eq!(String::from(e.clone()).len(), e.as_str().len());
    let j: Chars = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
    assert_eq!(j, e);
}

#[test]
fn print_sizes() {
    eprintln!(
        "sizes: Buf {} Chars {} Run<Chars> {} Run<Vec<u8>> {}",
        std::mem::size_of::<Buf>(),
        std::mem::size_of::<Chars>(),
        std::mem::size_of::<Run<Chars>>(),
        std::mem::size_of::<Run<Vec<u8>>>()
    );
}

/// Bytes of one sequence in snapshot format 2 holding a single deleted run of `count` characters written as a count.
fn deleted_run_as_count(count: u64) -> Vec<u8> {
    use crate::util::write_varint as varint;
    let mut out = Vec::new();
    // Elements: peers count, one peer, runs count, then the run: flags, peer index, counter, count.
    varint(7, &mut out);
    for v in [1, 9, 1] {
        varint(v, &mut out);
    }
    out.push(1 | (1 << 1) | (1 << 6)); // deleted, id written, count only
    for v in [0, 1, count] {
        varint(v.into(), &mut out);
    }
    out
}

#[test]
fn deleted_text_written_as_a_count_is_bounded_per_document_before_anything_is_allocated() {
    let dec = |b: &[u8]| postcard::from_bytes::<Sequence<Chars>>(b);
    // A few bytes may not stand for more deleted items than a document holds.
    let huge = decoding(2, || dec(&deleted_run_as_count(1 << 40)));
    assert!(huge.is_err());
    // Nor may several sequences of one document together.
    let half = crate::crdt::document::MAX_DOC_ITEMS / 2 + 1;
    let (first, second) = decoding(2, || (dec(&deleted_run_as_count(half)), dec(&deleted_run_as_count(half))));
    let first = first.unwrap();
    assert_eq!((first.len(), first.total_len()), (0, half as usize));
    assert!(second.is_err(), "the second sequence goes over what the document may hold");
    // Each document starts afresh.
    assert!(decoding(2, || dec(&deleted_run_as_count(half))).is_ok());
    // Visible items are never written as a count, and array elements keep their content.
    let mut visible = deleted_run_as_count(3);
    visible[4] &= !1;
    assert!(decoding(2, || dec(&visible)).is_err());
    assert!(decoding(2, || postcard::from_bytes::<Sequence<Vec<u32>>>(&deleted_run_as_count(3))).is_err());
}

// -------------------------------------------------------------------------------------------------------------
// Collecting tombstones under a stable frontier, against the reference model that keeps everything
// -------------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Collecting {
    Edit(Action),
    /// Replica `r` receives everything made so far, then drops what the frontier of the moment allows.
    Collect {
        r: usize,
    },
    /// Replica `r` merges the state of replica `from` (collected or not: both hold what the frontier covers).
    Join {
        r: usize,
        from: usize,
    },
}

fn collecting_action() -> impl Strategy<Value = Collecting> {
    prop_oneof![
        9 => action().prop_map(Collecting::Edit),
        1 => (0..R).prop_map(|r| Collecting::Collect { r }),
        1 => (0..R, 0..R).prop_map(|(r, from)| Collecting::Join { r, from }),
    ]
}

/// The ids the first `applied[o]` operations of each origin inserted.
fn version_of(log: &[Vec<(Op, [usize; R])>], applied: &[usize; R]) -> VersionVector {
    let mut v = VersionVector::new();
    for (o, ops) in log.iter().enumerate() {
        for (op, _) in &ops[..applied[o]] {
            if let Op::Ins(i) = op {
                v.raise(PeerId(PEERS[o]), i.id.counter + i.content.len() as u64 - 1);
            }
        }
    }
    v
}

/// The stable frontier: what every replica applied. Returns the insertions it covers and the ids a deletion in it
/// covers.
fn frontier(log: &[Vec<(Op, [usize; R])>], reps: &[Replica]) -> (VersionVector, std::collections::HashSet<Dot>) {
    let mut every = [0usize; R];
    for (o, e) in every.iter_mut().enumerate() {
        *e = reps.iter().map(|r| r.applied[o]).min().unwrap_or(0);
    }
    let mut deleted = std::collections::HashSet::new();
    for (o, ops) in log.iter().enumerate() {
        for (op, _) in &ops[..every[o]] {
            if let Op::Del(spans) = op {
                deleted.extend(span_ids(spans));
            }
        }
    }
    (version_of(log, &every), deleted)
}

/// The ranges of a span's ids no stable deletion covers (one range per id).
fn unsettled_in(deleted: &std::collections::HashSet<Dot>) -> impl Fn(IdSpan) -> Vec<(u64, u64)> + '_ {
    |s: IdSpan| {
        (s.start..s.start + s.len).filter(|&c| !deleted.contains(&Dot::new(s.peer, c))).map(|c| (c, c + 1)).collect()
    }
}

/// Delivers to the reference model alone what replica `rep` now holds through a merged state.
fn deliver_reference(log: &[Vec<(Op, [usize; R])>], rep: &mut Replica, target: [usize; R]) {
    let mut have = rep.applied;
    loop {
        let next = (0..R).find(|&o| {
            let n = have[o];
            n < target[o] && log[o][n].1.iter().zip(have.iter()).all(|(need, h)| need <= h)
        });
        let Some(o) = next else { break };
        match &log[o][have[o]].0 {
            Op::Ins(i) => rep.rf.apply_insert(i),
            Op::Del(spans) => rep.rf.apply_delete(spans),
        }
        have[o] += 1;
    }
    assert_eq!(have, target, "a merged state is causally closed");
    rep.applied = target;
}

/// What the replica shows equals the reference's, and the items it kept are in the reference's order.
fn compare_collected(rep: &Replica) {
    assert_eq!(rep.seq.text(), rep.rf.text());
    let kept: Vec<(Dot, bool)> = items(&rep.seq).iter().map(|i| (i.id, i.deleted)).collect();
    let ids: std::collections::HashSet<Dot> = kept.iter().map(|k| k.0).collect();
    let reference: Vec<(Dot, bool)> =
        rep.rf.items.iter().filter(|i| ids.contains(&i.id)).map(|i| (i.id, i.deleted)).collect();
    assert_eq!(kept, reference);
    assert_eq!(kept.len(), rep.seq.total_len());
    check_invariants(&rep.seq);
}

/// Runs the edits with collections and state merges at random replicas; returns how many items were dropped.
fn run_collecting(actions: Vec<Collecting>, seed: u64, cap: usize) -> usize {
    let mut reps: Vec<Replica> = (0..R)
        .map(|_| Replica { seq: Sequence::with_leaf_capacity(cap), rf: RefSeq::default(), applied: [0; R], counter: 1 })
        .collect();
    let mut log: Vec<Vec<(Op, [usize; R])>> = vec![Vec::new(); R];
    let mut dropped = 0;
    let catch_up = |log: &[Vec<(Op, [usize; R])>], rep: &mut Replica| loop {
        let cands = deliverable(log, rep);
        let Some(&o) = cands.first() else { break };
        deliver(log, rep, o);
    };
    for a in actions {
        match a {
            Collecting::Edit(a) => {
                // A replica that dropped tombstones names the same origins as one that kept them (`step` checks).
                step(&mut log, &mut reps, &a);
            }
            Collecting::Collect { r } => {
                // Holding everything made so far, the replica holds whatever has not seen the frontier.
                catch_up(&log, &mut reps[r]);
                let (stable, deleted) = frontier(&log, &reps);
                dropped += reps[r].seq.collect_tombstones(&stable, unsettled_in(&deleted)).unwrap();
            }
            Collecting::Join { r, from } => {
                if r == from {
                    continue;
                }
                let other = reps[from].seq.clone();
                let mine = version_of(&log, &reps[r].applied);
                reps[r].seq.join(&other, &mine).unwrap();
                let mut target = reps[r].applied;
                for (t, f) in target.iter_mut().zip(reps[from].applied) {
                    *t = (*t).max(f);
                }
                deliver_reference(&log, &mut reps[r], target);
            }
        }
        reps.iter().for_each(compare_collected);
    }
    deliver_rest(&log, &mut reps, seed, compare_collected);
    // Everything is stable now: every replica drops all it can, and all end with the same items, origins included,
    // however much each dropped before.
    let (stable, deleted) = frontier(&log, &reps);
    for rep in &mut reps {
        dropped += rep.seq.collect_tombstones(&stable, unsettled_in(&deleted)).unwrap();
        compare_collected(rep);
    }
    let first = items(&reps[0].seq);
    for rep in &reps[1..] {
        assert_eq!(items(&rep.seq), first);
    }
    // A collected state stays well formed: it round-trips.
    let back: Sequence<Chars> = postcard::from_bytes(&postcard::to_allocvec(&reps[0].seq).unwrap()).unwrap();
    assert_eq!(items(&back), first);
    check_invariants(&back);
    dropped
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn collecting_tombstones_changes_nothing_replicas_show(
        actions in proptest::collection::vec(collecting_action(), 1..120),
        seed in any::<u64>(),
        small in any::<bool>(),
    ) {
        run_collecting(actions, seed, if small { 4 } else { LEAF_CAP });
    }
}

#[test]
fn collecting_tombstones_drops_some() {
    // The property above is not vacuous: deterministic runs drop items.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (proptest::collection::vec(collecting_action(), 60..120), any::<u64>());
    let mut dropped = 0;
    for _ in 0..20 {
        let (actions, seed) = proptest::strategy::ValueTree::current(&strategy.new_tree(&mut runner).unwrap());
        dropped += run_collecting(actions, seed, 4);
    }
    assert!(dropped > 0);
}
