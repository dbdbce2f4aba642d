//! Deletes: local ones by visible position, remote ones by id spans, and everything a version vector covers.

use super::run::{merge_range, Run};
use super::{IdSpan, SeqContent, SeqError, Sequence};
use crate::crdt::clock::{Dot, PeerId};
use crate::crdt::version::VersionVector;

impl<C: SeqContent> Sequence<C> {
    /// Deletes up to `max` visible items of leaf `k`, starting at its visible item `rem`. Returns how many.
    fn delete_visible_in_leaf(&mut self, k: usize, mut rem: usize, max: usize, spans: &mut Vec<IdSpan>) -> usize {
        let leaf_id = self.order[k] as usize;
        let leaf = &mut self.leaves[leaf_id];
        let runs = &mut leaf.runs;
        let mut j = 0;
        while j < runs.len() {
            let r = &runs[j];
            if !r.deleted {
                if rem < r.len() {
                    break;
                }
                rem -= r.len();
            }
            j += 1;
        }
        let first = j;
        let mut done = 0;
        while j < runs.len() && done < max {
            if runs[j].deleted {
                j += 1;
                continue;
            }
            if rem > 0 {
                let right = runs[j].split_off(rem);
                runs.insert(j + 1, right);
                j += 1;
                rem = 0;
                continue;
            }
            let len = runs[j].len();
            let take = len.min(max - done);
            if take < len {
                let right = runs[j].split_off(take);
                runs.insert(j + 1, right);
            }
            runs[j].deleted = true;
            push_span(spans, runs[j].id, take as u64);
            done += take;
            j += 1;
        }
        merge_range(runs, first.saturating_sub(1), j + 1);
        leaf.vis -= done;
        done
    }

    /// Deletes the visible items `pos .. pos + len`. Returns their ids, coalesced into spans, in document order.
    pub fn local_delete(&mut self, pos: usize, len: usize) -> Result<Vec<IdSpan>, SeqError> {
        let end = pos.checked_add(len);
        match end {
            Some(e) if e <= self.vis_len => {}
            _ => {
                let index = if pos > self.vis_len { pos } else { end.unwrap_or(usize::MAX) };
                return Err(SeqError::IndexOutOfBounds { index, len: self.vis_len });
            }
        }
        let mut spans = Vec::new();
        if len == 0 {
            return Ok(spans);
        }
        let (mut k, acc) = self.fw.search(0, pos);
        let mut rem = pos - acc[0];
        let mut left = len;
        while left > 0 && k < self.order.len() {
            let n = self.delete_visible_in_leaf(k, rem, left, &mut spans);
            rem = 0;
            left -= n;
            self.fw.add(k, -(n as isize), 0);
            self.vis_len -= n;
            k += 1 + self.split_leaf_if_needed(k);
        }
        Ok(spans)
    }

    /// Marks the ids `[s, e)` of `peer` held by leaf `leaf_id` deleted; returns how many became deleted.
    fn delete_ids_in_leaf(&mut self, leaf_id: usize, peer: PeerId, s: u64, e: u64) -> usize {
        let leaf = &mut self.leaves[leaf_id];
        let runs = &mut leaf.runs;
        let mut j = 0;
        let mut n = 0;
        let mut lo = usize::MAX;
        let mut hi = 0;
        while j < runs.len() {
            let r = &runs[j];
            if r.id.peer != peer || r.deleted {
                j += 1;
                continue;
            }
            let rs = r.id.counter;
            let re = rs + r.len() as u64;
            if re <= s || rs >= e {
                j += 1;
                continue;
            }
            if rs < s {
                let right = runs[j].split_off((s - rs) as usize);
                runs.insert(j + 1, right);
                j += 1;
                continue;
            }
            let take = (re.min(e) - rs) as usize;
            if take < runs[j].len() {
                let right = runs[j].split_off(take);
                runs.insert(j + 1, right);
            }
            runs[j].deleted = true;
            n += take;
            lo = lo.min(j);
            hi = j + 1;
            j += 1;
        }
        if n > 0 {
            merge_range(runs, lo.saturating_sub(1), hi + 1);
            leaf.vis -= n;
        }
        n
    }

    /// Applies a delete made by another replica. Deleting an already deleted item is fine; an unknown id is an
    /// error (checked for all spans before anything changes).
    pub fn apply_delete(&mut self, spans: &[IdSpan]) -> Result<(), SeqError> {
        for sp in spans {
            if sp.len == 0 {
                continue;
            }
            let end = sp.start.checked_add(sp.len).ok_or(SeqError::InvalidSpan(*sp))?;
            if let Some(c) = self.ids.first_missing(sp.peer, sp.start, end) {
                return Err(SeqError::UnknownId(Dot::new(sp.peer, c)));
            }
        }
        for sp in spans {
            let end = sp.start.saturating_add(sp.len);
            let mut cur = sp.start;
            while cur < end {
                let (_, b, leaf_id) =
                    self.ids.find(Dot::new(sp.peer, cur)).ok_or(SeqError::Internal("span vanished"))?;
                let e = b.min(end);
                let k = self.leaves[leaf_id as usize].order as usize;
                let n = self.delete_ids_in_leaf(leaf_id as usize, sp.peer, cur, e);
                if n > 0 {
                    self.fw.add(k, -(n as isize), 0);
                    self.vis_len -= n;
                    self.split_leaf_if_needed(k);
                }
                cur = e;
            }
        }
        Ok(())
    }

    /// Deletes every item whose id is covered by `vv`. Returns how many items became deleted.
    pub fn delete_covered(&mut self, vv: &VersionVector) -> usize {
        if vv.is_empty() {
            return 0;
        }
        let mut count = 0;
        for leaf in &mut self.leaves {
            let old = std::mem::take(&mut leaf.runs);
            let mut runs: Vec<Run<C>> = Vec::with_capacity(old.len());
            let mut changed = false;
            for mut r in old {
                if !r.deleted {
                    let max = vv.get(r.id.peer);
                    if max >= r.id.counter {
                        let covered = (max - r.id.counter).saturating_add(1).min(r.len() as u64) as usize;
                        count += covered;
                        changed = true;
                        if covered < r.len() {
                            let right = r.split_off(covered);
                            r.deleted = true;
                            runs.push(r);
                            runs.push(right);
                        } else {
                            r.deleted = true;
                            runs.push(r);
                        }
                        continue;
                    }
                }
                runs.push(r);
            }
            if changed {
                let l = runs.len();
                merge_range(&mut runs, 0, l);
                leaf.runs = runs;
                leaf.recount();
            } else {
                leaf.runs = runs;
            }
        }
        if count > 0 {
            self.vis_len -= count;
            self.rebuild_fenwick();
            let mut k = 0;
            while k < self.order.len() {
                k += 1 + self.split_leaf_if_needed(k);
            }
        }
        count
    }
}

/// Appends `n` ids starting at `id` to `spans`, coalescing with the last span when contiguous.
fn push_span(spans: &mut Vec<IdSpan>, id: Dot, n: u64) {
    if let Some(last) = spans.last_mut() {
        if last.peer == id.peer && last.start.checked_add(last.len) == Some(id.counter) {
            last.len += n;
            return;
        }
    }
    spans.push(IdSpan { peer: id.peer, start: id.counter, len: n });
}
