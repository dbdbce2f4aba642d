//! Inserts: local ones at a visible position, remote ones placed by the YjsMod integration.

use super::run::Run;
use super::{SeqContent, SeqError, SeqInsert, Sequence};
use crate::crdt::clock::{Dot, PeerId};

impl<C: SeqContent> Sequence<C> {
    /// Checks that `n` new ids starting at `id` can be added.
    pub(super) fn check_new_ids(&self, id: Dot, n: usize) -> Result<u64, SeqError> {
        if id.counter == 0 {
            // Counters start at 1; 0 is the "no origin" mark inside runs.
            return Err(SeqError::UnknownId(id));
        }
        let end = id.counter.checked_add(n as u64).ok_or(SeqError::CounterOverflow(id))?;
        if let Some(c) = self.ids.first_overlap(id.peer, id.counter, end) {
            return Err(SeqError::DuplicateId(Dot::new(id.peer, c)));
        }
        Ok(end)
    }

    /// Inserts `run` (visible, new ids) before offset `o` of run `j` of leaf `k` (`j` may be the leaf's run count).
    fn insert_run(&mut self, k: usize, j: usize, o: usize, run: Run<C>) {
        let n = run.len();
        let peer = run.id.peer;
        let s = run.id.counter;
        let leaf_id = self.order[k] as usize;
        let mut target_k = k;
        if o > 0 {
            let runs = &mut self.leaves[leaf_id].runs;
            let right = runs[j].split_off(o);
            runs.splice(j + 1..j + 1, [run, right]);
        } else if j > 0 && self.leaves[leaf_id].runs[j - 1].can_merge(&run) {
            self.leaves[leaf_id].runs[j - 1].content.append(run.content);
        } else if j == 0
            && k > 0
            && self.leaves[self.order[k - 1] as usize].runs.last().is_some_and(|l| l.can_merge(&run))
        {
            let prev = self.order[k - 1] as usize;
            if let Some(last) = self.leaves[prev].runs.last_mut() {
                last.content.append(run.content);
            }
            target_k = k - 1;
        } else {
            self.leaves[leaf_id].runs.insert(j, run);
        }
        let tl = self.order[target_k];
        let leaf = &mut self.leaves[tl as usize];
        leaf.vis += n;
        leaf.total += n;
        self.fw.add(target_k, n as isize, n as isize);
        self.vis_len += n;
        self.total_len += n;
        self.ids.insert_new(peer, s, s + n as u64, tl);
        self.split_leaf_if_needed(target_k);
    }

    /// The YjsMod integration: the position (among all items) where a new item with the given origin positions
    /// goes.
    fn integrate(&self, left: Option<usize>, right: usize, peer: PeerId) -> Result<usize, SeqError> {
        let len = self.total_len;
        let left_i: i64 = left.map_or(-1, |l| l as i64);
        let right_i = right as i64;
        let mut i = left.map_or(0, |l| l + 1);
        if i >= len || i == right {
            return Ok(i);
        }
        let (mut k, mut j, mut o) = self.find_total(i).ok_or(SeqError::Internal("integrate start"))?;
        let mut dest = i;
        let mut scanning = false;
        loop {
            if !scanning {
                dest = i;
            }
            if i >= len || i == right {
                break;
            }
            let run = &self.leaf_at(k).runs[j];
            // Items after the first one considered in a run have the previous item (> left) as origin_left, so
            // they change nothing: only the first item of each run (or of the scan) needs looking at.
            let oleft: i64 = if o > 0 {
                i as i64 - 1
            } else {
                match run.origin_left() {
                    None => -1,
                    Some(d) => self.total_pos(d)? as i64,
                }
            };
            let oright: i64 = match run.origin_right() {
                None => len as i64,
                Some(d) => self.total_pos(d)? as i64,
            };
            if oleft < left_i || (oleft == left_i && oright == right_i && peer < run.id.peer) {
                break;
            }
            if oleft == left_i {
                scanning = oright < right_i;
            }
            let rest = run.len() - o;
            if right > i && right < i + rest {
                if !scanning {
                    dest = right;
                }
                break;
            }
            i += rest;
            o = 0;
            j += 1;
            while k < self.order.len() && j >= self.leaf_at(k).runs.len() {
                k += 1;
                j = 0;
            }
        }
        Ok(dest)
    }

    /// Inserts `content` so that it starts at visible position `pos`, with new ids `id, id.offset(1), ...`.
    /// Returns the operation to send to other replicas.
    pub fn local_insert(&mut self, pos: usize, id: Dot, content: C) -> Result<SeqInsert<C>, SeqError> {
        let n = content.len();
        if n == 0 {
            return Err(SeqError::EmptyContent);
        }
        if pos > self.vis_len {
            return Err(SeqError::IndexOutOfBounds { index: pos, len: self.vis_len });
        }
        self.check_new_ids(id, n)?;
        // The new items go right after the visible item at `pos - 1` (before any tombstones that follow it), as
        // yrs, loro and diamond-types do: concurrent inserts typed at different places never share a location.
        let (k, j, o, origin_left, origin_right) = if pos == 0 {
            (0, 0, 0, None, self.id_after(0, 0))
        } else {
            let (k, j, o) = self.find_visible(pos - 1).ok_or(SeqError::Internal("visible lookup"))?;
            let run = &self.leaf_at(k).runs[j];
            let left = Some(run.id.offset(o as u64));
            if o + 1 < run.len() {
                (k, j, o + 1, left, Some(run.id.offset(o as u64 + 1)))
            } else {
                (k, j + 1, 0, left, self.id_after(k, j + 1))
            }
        };
        let op = SeqInsert { id, origin_left, origin_right, content: content.clone() };
        self.insert_run(
            k,
            j,
            o,
            Run { id, left: origin_left.into(), right: origin_right.into(), deleted: false, content },
        );
        Ok(op)
    }

    /// Applies an insert made by another replica. Its origins must exist. On error nothing changes.
    pub fn apply_insert(&mut self, op: &SeqInsert<C>) -> Result<(), SeqError> {
        self.apply_insert_owned(op.clone())
    }

    /// [`Sequence::apply_insert`], moving the content into the sequence rather than copying it (a large insert is
    /// then held once, not twice, while it is applied).
    pub fn apply_insert_owned(&mut self, op: SeqInsert<C>) -> Result<(), SeqError> {
        let n = op.content.len();
        if n == 0 {
            return Err(SeqError::EmptyContent);
        }
        self.check_new_ids(op.id, n)?;
        let left = match op.origin_left {
            None => None,
            Some(d) => Some(self.total_pos(d)?),
        };
        let right = match op.origin_right {
            None => self.total_len,
            Some(d) => self.total_pos(d)?,
        };
        if left.is_some_and(|l| l >= right) {
            return Err(SeqError::InvalidOrigins { left: op.origin_left, right: op.origin_right });
        }
        let dest = self.integrate(left, right, op.id.peer)?;
        let (k, j, o) = if dest >= self.total_len {
            self.end_place()
        } else {
            self.find_total(dest).ok_or(SeqError::Internal("total lookup"))?
        };
        let run = Run {
            id: op.id,
            left: op.origin_left.into(),
            right: op.origin_right.into(),
            deleted: false,
            content: op.content,
        };
        self.insert_run(k, j, o, run);
        Ok(())
    }
}
