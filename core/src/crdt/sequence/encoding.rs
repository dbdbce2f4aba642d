//! Serialization: a flat list of runs in document order, validated when read.

use super::leaf::{Leaf, LeafId};
use super::run::Run;
use super::{SeqContent, SeqError, Sequence, LEAF_CAP};
use crate::crdt::clock::Dot;
use serde::de::Error as _;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

impl<C: SeqContent> Sequence<C> {
    /// Builds a sequence from runs in document order (deserialization), validating them.
    fn from_runs(src: Vec<SerRun<C>>, cap: usize) -> Result<Self, SeqError> {
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

#[derive(Serialize)]
struct SerRunRef<'a, C> {
    id: Dot,
    origin_left: Option<Dot>,
    origin_right: Option<Dot>,
    deleted: bool,
    content: &'a C,
}

#[derive(Deserialize)]
struct SerRun<C> {
    id: Dot,
    origin_left: Option<Dot>,
    origin_right: Option<Dot>,
    deleted: bool,
    content: C,
}

impl<C: SeqContent + Serialize> Serialize for Sequence<C> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.run_count()))?;
        for r in self.all_runs() {
            seq.serialize_element(&SerRunRef {
                id: r.id,
                origin_left: r.origin_left(),
                origin_right: r.origin_right(),
                deleted: r.deleted,
                content: &r.content,
            })?;
        }
        seq.end()
    }
}

impl<'de, C: SeqContent + Deserialize<'de>> Deserialize<'de> for Sequence<C> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let runs: Vec<SerRun<C>> = Vec::deserialize(deserializer)?;
        Sequence::from_runs(runs, LEAF_CAP).map_err(D::Error::custom)
    }
}
