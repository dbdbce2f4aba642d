//! Serialization: a flat list of runs in document order, compactly written (see the format below), validated when
//! read.

use super::leaf::{Leaf, LeafId};
use super::run::Run;
use super::{SeqContent, SeqError, Sequence, LEAF_CAP};
use crate::crdt::clock::{Dot, PeerId};
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

impl<C: SeqContent> Sequence<C> {
    /// Builds a sequence from runs in document order (deserialization), validating them.
    pub(super) fn from_runs(src: Vec<SerRun<C>>, cap: usize) -> Result<Self, SeqError> {
        let mut seq = Self::with_leaf_capacity(cap);
        if src.is_empty() {
            return Ok(seq);
        }
        let fill = (seq.cap * 3 / 4).max(1);
        let mut leaves: Vec<Leaf<C>> = Vec::new();
        let mut cur: Vec<Run<C>> = Vec::new();
        for r in src {
            let n = r.content.len();
            if n == 0 {
                return Err(SeqError::EmptyContent);
            }
            let end = seq.check_new_ids(r.id, n)?;
            if let Some(d) = [r.origin_left, r.origin_right].into_iter().flatten().find(|d| d.counter == 0) {
                return Err(SeqError::UnknownId(d));
            }
            let run = Run {
                id: r.id,
                left: r.origin_left.into(),
                right: r.origin_right.into(),
                deleted: r.deleted,
                content: r.content,
            };
            match cur.last_mut() {
                Some(last) if last.can_merge(&run) => last.content.append(run.content),
                _ => {
                    if cur.len() >= fill {
                        let o = leaves.len() as u32;
                        leaves.push(Leaf::new(std::mem::take(&mut cur), o));
                    }
                    cur.push(run);
                }
            }
            seq.ids.insert_new(r.id.peer, r.id.counter, end, leaves.len() as LeafId);
        }
        let o = leaves.len() as u32;
        leaves.push(Leaf::new(cur, o));
        seq.order = (0..leaves.len() as LeafId).collect();
        seq.vis_len = leaves.iter().map(|l| l.vis).sum();
        seq.total_len = leaves.iter().map(|l| l.total).sum();
        seq.leaves = leaves;
        seq.rebuild_fenwick();
        // Every origin must exist, origin_left before the run and origin_right after it.
        let mut pos = 0;
        for r in seq.all_runs() {
            if let Some(d) = r.origin_left() {
                if seq.total_pos(d)? >= pos {
                    return Err(SeqError::InvalidOrigins { left: r.origin_left(), right: r.origin_right() });
                }
            }
            pos += r.len();
            if let Some(d) = r.origin_right() {
                if seq.total_pos(d)? < pos {
                    return Err(SeqError::InvalidOrigins { left: r.origin_left(), right: r.origin_right() });
                }
            }
        }
        Ok(seq)
    }
}

#[derive(Deserialize)]
pub(super) struct SerRun<C> {
    pub(super) id: Dot,
    pub(super) origin_left: Option<Dot>,
    pub(super) origin_right: Option<Dot>,
    pub(super) deleted: bool,
    pub(super) content: C,
}

// The format (snapshot format 2): one serde sequence of `[peers, peer ids.., runs, run..]`, each run
// `[flags, numbers.., content]`. Ids are (index into the peer table, counter) and only written when they do not
// follow from the previous run: a run's id is usually the previous run's next id, its left origin the previous
// run's last item, its right origin the previous run's. Deleted text keeps no characters, only their count.
// Snapshot format 1 wrote each run as a `SerRun` with full 64-bit peer ids; it is still read.

/// The run's items are deleted.
const DELETED: u8 = 1;
/// Its id is written (otherwise: the previous run's next id).
const ID_WRITTEN: u8 = 1 << 1;
/// Shift of its left origin's 2 bits, and of its right origin's: [`NONE`], [`AS_BEFORE`] or [`WRITTEN`].
const LEFT: u8 = 2;
const RIGHT: u8 = 4;
/// Its deleted items are written as a count ([`SeqContent::placeholder`]).
const COUNT_ONLY: u8 = 1 << 6;
const NONE: u8 = 0;
/// Left origin: the previous run's last item; right origin: the previous run's right origin.
const AS_BEFORE: u8 = 1;
const WRITTEN: u8 = 2;
const ALL_FLAGS: u8 = DELETED | ID_WRITTEN | (3 << LEFT) | (3 << RIGHT) | COUNT_ONLY;

std::thread_local! {
    /// The snapshot format being decoded, and how many more deleted items placeholders may stand for in it.
    static DECODING: std::cell::Cell<(u8, u64)> = const {
        std::cell::Cell::new((crate::crdt::document::SNAPSHOT_FORMAT_VERSION, crate::crdt::document::MAX_DOC_ITEMS))
    };
}

/// The snapshot format being decoded on this thread (see [`decoding`]; the current one outside it).
pub(crate) fn decoding_format() -> u8 {
    DECODING.with(|d| d.get().0)
}

/// Run `decode` (of a document state of snapshot format `format`) with sequences read in that format and at most
/// [`MAX_DOC_ITEMS`](crate::crdt::document::MAX_DOC_ITEMS) deleted items written as a count: a few bytes of input
/// cannot make a decoder allocate more than a document may hold.
pub(crate) fn decoding<R>(format: u8, decode: impl FnOnce() -> R) -> R {
    struct Reset((u8, u64));
    impl Drop for Reset {
        fn drop(&mut self) {
            DECODING.with(|d| d.set(self.0));
        }
    }
    let _reset = Reset(DECODING.with(|d| d.replace((format, crate::crdt::document::MAX_DOC_ITEMS))));
    decode()
}

/// The peers a snapshot names, each numbered by where it first appears. Looked up once or more per run written:
/// a scan while there are few (the usual document), a hash map beyond.
#[derive(Default)]
struct PeerTable {
    peers: Vec<PeerId>,
    index: HashMap<PeerId, u64>,
}

impl PeerTable {
    /// Up to this many peers, a scan finds a peer's number faster than hashing it.
    const SCAN: usize = 16;

    fn index_of(&mut self, peer: PeerId) -> u64 {
        if self.peers.len() <= Self::SCAN {
            if let Some(i) = self.peers.iter().position(|&p| p == peer) {
                return i as u64;
            }
        } else if let Some(&i) = self.index.get(&peer) {
            return i;
        }
        self.peers.push(peer);
        let n = self.peers.len();
        if n == Self::SCAN + 1 {
            self.index = self.peers.iter().enumerate().map(|(i, &p)| (p, i as u64)).collect();
        } else if n > Self::SCAN + 1 {
            self.index.insert(peer, n as u64 - 1);
        }
        n as u64 - 1
    }
}

/// What a run says of the one after it: its next id, its last item, its right origin.
type Before = (Dot, Dot, Option<Dot>);

impl<C: SeqContent + Serialize> Serialize for Sequence<C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut peers = PeerTable::default();
        let count_only = C::placeholder(0).is_some();
        // (flags, numbers) of each run; at most 2 per dot written and a count.
        let mut heads: Vec<(u8, [u64; 7], usize)> = Vec::with_capacity(self.run_count());
        let mut before: Option<Before> = None;
        for r in self.all_runs() {
            let mut flags = if r.deleted { DELETED } else { 0 };
            let mut nums = [0u64; 7];
            let mut n = 0;
            let mut write = |d: Dot, nums: &mut [u64; 7], n: &mut usize| {
                nums[*n] = peers.index_of(d.peer);
                nums[*n + 1] = d.counter;
                *n += 2;
            };
            if before.is_none_or(|b| b.0 != r.id) {
                flags |= ID_WRITTEN;
                write(r.id, &mut nums, &mut n);
            }
            let left = match r.origin_left() {
                None => NONE,
                Some(d) if before.is_some_and(|b| b.1 == d) => AS_BEFORE,
                Some(d) => {
                    write(d, &mut nums, &mut n);
                    WRITTEN
                }
            };
            let right = match r.origin_right() {
                None => NONE,
                Some(d) if before.is_some_and(|b| b.2 == Some(d)) => AS_BEFORE,
                Some(d) => {
                    write(d, &mut nums, &mut n);
                    WRITTEN
                }
            };
            flags |= (left << LEFT) | (right << RIGHT);
            if r.deleted && count_only {
                flags |= COUNT_ONLY;
                nums[n] = r.len() as u64;
                n += 1;
            }
            heads.push((flags, nums, n));
            before = Some((r.id.offset(r.len() as u64), r.last_id(), r.origin_right()));
        }
        let peers = peers.peers;
        let elements = 2
            + peers.len()
            + heads.iter().map(|(flags, _, n)| 1 + n + usize::from(flags & COUNT_ONLY == 0)).sum::<usize>();
        let mut seq = serializer.serialize_seq(Some(elements))?;
        seq.serialize_element(&(peers.len() as u64))?;
        for p in &peers {
            seq.serialize_element(&p.0)?;
        }
        seq.serialize_element(&(heads.len() as u64))?;
        for ((flags, nums, n), r) in heads.iter().zip(self.all_runs()) {
            seq.serialize_element(flags)?;
            for v in &nums[..*n] {
                seq.serialize_element(v)?;
            }
            if flags & COUNT_ONLY == 0 {
                seq.serialize_element(&r.content)?;
            }
        }
        seq.end()
    }
}

/// Reads the runs of snapshot format 2 (see above).
struct Runs<C>(PhantomData<C>);

impl<'de, C: SeqContent + Deserialize<'de>> Visitor<'de> for Runs<C> {
    type Value = Vec<SerRun<C>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence's runs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<SerRun<C>>, A::Error> {
        let declared = seq.size_hint();
        let mut read = 0usize;
        let next = |seq: &mut A, read: &mut usize| -> Result<u64, A::Error> {
            *read += 1;
            seq.next_element::<u64>()?.ok_or_else(|| A::Error::custom("a sequence's runs end early"))
        };
        let too_many = |n: u64| declared.is_some_and(|d| n > d as u64);
        let n_peers = next(&mut seq, &mut read)?;
        if too_many(n_peers) {
            return Err(A::Error::custom("more peers than the sequence holds"));
        }
        let mut peers = Vec::with_capacity(n_peers.min(1024) as usize);
        for _ in 0..n_peers {
            peers.push(PeerId(next(&mut seq, &mut read)?));
        }
        let n_runs = next(&mut seq, &mut read)?;
        if too_many(n_runs) {
            return Err(A::Error::custom("more runs than the sequence holds"));
        }
        let dot = |seq: &mut A, read: &mut usize| -> Result<Dot, A::Error> {
            let i = next(seq, read)?;
            let peer =
                usize::try_from(i).ok().and_then(|i| peers.get(i)).ok_or_else(|| A::Error::custom("no such peer"))?;
            Ok(Dot::new(*peer, next(seq, read)?))
        };
        let mut runs = Vec::with_capacity(n_runs.min(4096) as usize);
        let mut before: Option<Before> = None;
        for _ in 0..n_runs {
            read += 1;
            let flags: u8 = seq.next_element()?.ok_or_else(|| A::Error::custom("a sequence's runs end early"))?;
            let as_before = || before.ok_or_else(|| A::Error::custom("the first run refers to the one before it"));
            if flags & !ALL_FLAGS != 0 {
                return Err(A::Error::custom("unknown run flags"));
            }
            let id = if flags & ID_WRITTEN != 0 { dot(&mut seq, &mut read)? } else { as_before()?.0 };
            let left = match (flags >> LEFT) & 3 {
                NONE => None,
                AS_BEFORE => Some(as_before()?.1),
                WRITTEN => Some(dot(&mut seq, &mut read)?),
                _ => return Err(A::Error::custom("unknown origin kind")),
            };
            let right = match (flags >> RIGHT) & 3 {
                NONE => None,
                AS_BEFORE => as_before()?.2,
                WRITTEN => Some(dot(&mut seq, &mut read)?),
                _ => return Err(A::Error::custom("unknown origin kind")),
            };
            let deleted = flags & DELETED != 0;
            let content = if flags & COUNT_ONLY != 0 {
                let len = next(&mut seq, &mut read)?;
                let room = DECODING.with(|d| d.get().1);
                if !deleted || len > room {
                    return Err(A::Error::custom("deleted items written as a count: not deleted, or too many"));
                }
                DECODING.with(|d| d.set((d.get().0, room - len)));
                C::placeholder(len as usize).ok_or_else(|| A::Error::custom("this sequence keeps deleted items"))?
            } else {
                read += 1;
                seq.next_element::<C>()?.ok_or_else(|| A::Error::custom("a sequence's runs end early"))?
            };
            let n = content.len() as u64;
            let next_id = id.counter.checked_add(n).ok_or_else(|| A::Error::custom("ids out of range"))?;
            before = Some((Dot::new(id.peer, next_id), Dot::new(id.peer, next_id.saturating_sub(1)), right));
            runs.push(SerRun { id, origin_left: left, origin_right: right, deleted, content });
        }
        if declared.is_some_and(|d| d != read) {
            return Err(A::Error::custom("a sequence's runs do not fill it"));
        }
        Ok(runs)
    }
}

impl<'de, C: SeqContent + Deserialize<'de>> Deserialize<'de> for Sequence<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let runs: Vec<SerRun<C>> = match decoding_format() {
            1 => Vec::deserialize(deserializer)?,
            _ => deserializer.deserialize_seq(Runs(PhantomData))?,
        };
        Sequence::from_runs(runs, LEAF_CAP).map_err(D::Error::custom)
    }
}
