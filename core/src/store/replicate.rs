//! What the store offers sync: a compact summary of the changes it holds, the changes another store lacks, and
//! applying changes received from elsewhere (idempotent, in any order).

use crate::crdt::change::{Change, ChangeError};
use crate::crdt::clock::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A set of counters as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Add `start..=end`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start > end {
            return;
        }
        // First range that could touch [start, end]: its end + 1 >= start.
        let i = self.0.partition_point(|&(_, e)| e.saturating_add(1) < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.0.len() && self.0[j].0 <= end.saturating_add(1) {
            s = s.min(self.0[j].0);
            e = e.max(self.0[j].1);
            j += 1;
        }
        self.0.splice(i..j, std::iter::once((s, e)));
    }

    /// Remove `start..=end`.
    pub fn remove(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(s, e) in &self.0 {
            if e < start || s > end {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start - 1));
            }
            if e > end {
                out.push((end + 1, e));
            }
        }
        self.0 = out;
    }

    /// Whether all of `start..=end` is in the set.
    pub fn contains_range(&self, start: u64, end: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e < start);
        self.0.get(i).is_some_and(|&(s, e)| s <= start && end <= e)
    }

    /// Whether any counter of `start..=end` is in the set.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e < start);
        self.0.get(i).is_some_and(|&(s, _)| s <= end)
    }

    /// Whether the set holds no counter.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ranges, in ascending order.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// The counters in `self` and not in `other`.
    pub fn difference(&self, other: &RangeSet) -> RangeSet {
        let mut out = Vec::new();
        let theirs = &other.0;
        let mut j = 0;
        for &(s, e) in &self.0 {
            let mut cur = s;
            while j < theirs.len() && theirs[j].1 < cur {
                j += 1;
            }
            let mut k = j;
            let mut done = false;
            while k < theirs.len() && theirs[k].0 <= e {
                let (ts, te) = theirs[k];
                if ts > cur {
                    out.push((cur, ts - 1));
                }
                if te >= e {
                    done = true;
                    break;
                }
                cur = te + 1;
                k += 1;
            }
            if !done && cur <= e {
                out.push((cur, e));
            }
        }
        RangeSet(out)
    }

    /// The counters in `self` or in `other`, by one linear merge of the two sorted lists (inserting range by range
    /// would cost the product of their lengths when they interleave: a hostile summary).
    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.0.len() + other.0.len());
        let (mut i, mut j) = (0, 0);
        while i < self.0.len() || j < other.0.len() {
            let next = match (self.0.get(i), other.0.get(j)) {
                (Some(&a), Some(&b)) if a.0 <= b.0 => {
                    i += 1;
                    a
                }
                (_, Some(&b)) => {
                    j += 1;
                    b
                }
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, None) => break,
            };
            match out.last_mut() {
                Some(last) if next.0 <= last.1.saturating_add(1) => last.1 = last.1.max(next.1),
                _ => out.push(next),
            }
        }
        RangeSet(out)
    }

    /// The number of counters in the set (saturating).
    pub fn count(&self) -> u64 {
        self.0.iter().fold(0u64, |n, &(s, e)| n.saturating_add(e - s).saturating_add(1))
    }

    /// Sorted, disjoint, non-adjacent, non-empty ranges (for decoded data).
    pub fn is_well_formed(&self) -> bool {
        self.0.iter().all(|&(s, e)| s <= e) && self.0.windows(2).all(|w| w[0].1.saturating_add(1) < w[1].0)
    }
}

/// What a store holds: for each author, the counters of the changes it has applied. Usually one range per author,
/// so it stays small however many changes there are.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    peers: BTreeMap<PeerId, RangeSet>,
}

/// The largest summary accepted from elsewhere, encoded.
pub const MAX_SUMMARY_BYTES: usize = 16 << 20;

/// The version byte of [`Summary::encode_dense`] (after its leading 0).
const DENSE_FORMAT: u8 = 1;

impl Summary {
    /// The summary of an empty store: no change held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that the change `peer:start..=end` is held.
    pub fn insert(&mut self, peer: PeerId, start: u64, end: u64) {
        self.peers.entry(peer).or_default().insert(start, end);
    }

    /// Forget `peer:start..=end` (an evicted document's changes).
    pub fn remove(&mut self, peer: PeerId, start: u64, end: u64) {
        if let Some(r) = self.peers.get_mut(&peer) {
            r.remove(start, end);
            if r.is_empty() {
                self.peers.remove(&peer);
            }
        }
    }

    /// What `self` holds and `other` does not.
    pub fn difference(&self, other: &Summary) -> Summary {
        let mut out = Summary::new();
        for (peer, ranges) in &self.peers {
            let d = match other.peers.get(peer) {
                Some(theirs) => ranges.difference(theirs),
                None => ranges.clone(),
            };
            if !d.is_empty() {
                out.peers.insert(*peer, d);
            }
        }
        out
    }

    /// Add everything `other` holds.
    pub fn union_with(&mut self, other: &Summary) {
        for (peer, ranges) in other.peers.iter().filter(|(_, r)| !r.is_empty()) {
            let mine = self.peers.entry(*peer).or_default();
            *mine = mine.union(ranges);
        }
    }

    /// What both `self` and `other` hold (linear in their ranges).
    pub fn intersection(&self, other: &Summary) -> Summary {
        self.difference(&self.difference(other))
    }

    /// How many ranges the summary holds, over every author: what its size and the cost of working with it grow
    /// with.
    pub fn range_count(&self) -> usize {
        self.peers.values().map(|r| r.0.len()).sum()
    }

    /// Every author's ranges are sorted, disjoint and non-adjacent (for decoded data).
    pub fn is_well_formed(&self) -> bool {
        self.peers.values().all(|r| r.is_well_formed() && !r.is_empty())
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether the change `peer:start..=end` is held.
    pub fn contains(&self, peer: PeerId, start: u64, end: u64) -> bool {
        self.peers.get(&peer).is_some_and(|r| r.contains_range(start, end))
    }

    /// Whether any counter of `peer:start..=end` is held.
    pub fn overlaps(&self, peer: PeerId, start: u64, end: u64) -> bool {
        self.peers.get(&peer).is_some_and(|r| r.overlaps(start, end))
    }

    /// Whether `self` and `other` hold some change in common.
    pub fn intersects(&self, other: &Summary) -> bool {
        self.peers().any(|(p, rs)| rs.ranges().iter().any(|&(a, b)| other.overlaps(p, a, b)))
    }

    /// The ranges held of one author.
    pub fn ranges_of(&self, peer: PeerId) -> Option<&RangeSet> {
        self.peers.get(&peer)
    }

    /// Forget everything held of one author.
    pub fn remove_author(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// The authors and their ranges.
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &RangeSet)> {
        self.peers.iter().map(|(p, r)| (*p, r))
    }

    /// Each author's counters held from its first without a gap: the end of its first range, when that starts at
    /// counter 1 (authors whose first range starts later are left out).
    pub fn dense_prefix(&self) -> crate::VersionVector {
        self.peers.iter().filter_map(|(p, r)| r.ranges().first().filter(|r| r.0 == 1).map(|r| (*p, r.1))).collect()
    }

    /// The compact binary form (what [`Summary::decode`] reads).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// A denser binary form for a store's own records of many scattered counters (the changes a document folded,
    /// see [`crate::Store::compact`]): each range as its gap from the previous one and, unless it is a single
    /// counter, its length, in varints — about 2 bytes per range of scattered counters where [`Summary::encode`]
    /// takes 6. It starts with a 0 byte, which
    /// [`Summary::encode`] never writes for a non-empty summary, so [`Summary::decode_dense`] reads both.
    pub fn encode_dense(&self) -> Vec<u8> {
        use crate::util::write_varint as varint;
        if !self.is_well_formed() {
            return self.encode();
        }
        let mut out = vec![0, DENSE_FORMAT];
        varint(self.peers.len() as u128, &mut out);
        for (peer, ranges) in &self.peers {
            varint(peer.0.into(), &mut out);
            varint(ranges.0.len() as u128, &mut out);
            // The first range's start, then each range's distance from the end of the one before it less 2 (they
            // are neither adjacent nor overlapping), doubled, plus 1 when its length less 1 follows (it is not a
            // single counter).
            let mut before: Option<u64> = None;
            for &(start, end) in &ranges.0 {
                let gap = before.map_or(start, |e| start - e - 2);
                varint((u128::from(gap) << 1) | u128::from(end > start), &mut out);
                if end > start {
                    varint((end - start).into(), &mut out);
                }
                before = Some(end);
            }
        }
        out
    }

    /// Read what [`Summary::encode_dense`] or [`Summary::encode`] wrote (checked as [`Summary::decode`] checks).
    pub fn decode_dense(bytes: &[u8]) -> Result<Summary, ChangeError> {
        let Some(body) = bytes.strip_prefix(&[0, DENSE_FORMAT]) else {
            return Summary::decode(bytes);
        };
        if bytes.len() > MAX_SUMMARY_BYTES {
            return Err(ChangeError::TooLarge(format!("summary of {} bytes", bytes.len())));
        }
        let corrupt = || ChangeError::Corrupt("malformed dense summary".into());
        let mut rest = body;
        let mut wide = || crate::util::read_varint(&mut rest).ok_or_else(corrupt);
        let narrow = |v: u128| u64::try_from(v).map_err(|_| corrupt());
        let mut out = Summary::new();
        for _ in 0..narrow(wide()?)? {
            let peer = PeerId(narrow(wide()?)?);
            let mut ranges = Vec::new();
            let mut before: Option<u64> = None;
            for _ in 0..narrow(wide()?)? {
                let key = wide()?;
                let gap = narrow(key >> 1)?;
                let start = match before {
                    None => Some(gap),
                    Some(e) => e.checked_add(2).and_then(|n| n.checked_add(gap)),
                }
                .ok_or_else(corrupt)?;
                let len = if key & 1 == 1 { narrow(wide()?)? } else { 0 };
                // A length written must not be 0 (one form per summary).
                if key & 1 == 1 && len == 0 {
                    return Err(corrupt());
                }
                let end = start.checked_add(len).ok_or_else(corrupt)?;
                ranges.push((start, end));
                before = Some(end);
            }
            if ranges.is_empty() || out.peers.insert(peer, RangeSet(ranges)).is_some() {
                return Err(corrupt());
            }
        }
        if !rest.is_empty() {
            return Err(corrupt());
        }
        Ok(out)
    }

    /// Read what [`Summary::encode`] wrote, checking limits and well-formedness (it may come from another device).
    /// Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Summary, ChangeError> {
        if bytes.len() > MAX_SUMMARY_BYTES {
            return Err(ChangeError::TooLarge(format!("summary of {} bytes", bytes.len())));
        }
        let s: Summary = postcard::from_bytes(bytes).map_err(|e| ChangeError::Corrupt(e.to_string()))?;
        if !s.peers.values().all(RangeSet::is_well_formed) {
            return Err(ChangeError::Corrupt("malformed summary".into()));
        }
        Ok(s)
    }
}

/// A document's whole CRDT state, sent to a device that lacks changes the sender folded into its snapshot (see
/// [`crate::Store::compact`]) in place of them. The receiver merges it ([`crate::Document::join`]), which is
/// exactly equivalent to applying the changes, and then holds `changes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocState {
    /// The document's collection.
    pub collection: String,
    /// The document's id within its collection.
    pub doc_id: String,
    /// The state ([`crate::Document::encode`]; at most [`crate::store::MAX_STATE_BYTES`]).
    pub state: Vec<u8>,
    /// Exactly the changes the state holds: for each author, the counters of its changes to this document (the
    /// greatest is the author's entry in the state's version vector).
    pub changes: Summary,
}

impl DocState {
    /// The state's document, once the state is checked as a whole: its collection and id, its size (at most
    /// [`crate::store::MAX_STATE_BYTES`]), its encoding, and that `changes` is well formed and fits its version.
    /// A state that fails is malformed: every honest store refuses it.
    pub fn decode_checked(&self) -> Result<crate::Document, crate::Error> {
        super::check_collection(&self.collection)?;
        super::check_doc_id(&self.doc_id)?;
        if self.state.len() > super::MAX_STATE_BYTES {
            return Err(ChangeError::TooLarge(format!("a document state of {} bytes", self.state.len())).into());
        }
        let doc = crate::Document::decode(&self.state)?;
        if !self.changes.is_well_formed() || !self.changes_fit(doc.version()) {
            return Err(ChangeError::Corrupt(format!(
                "the changes listed with the state of {}/{} do not fit its version",
                self.collection, self.doc_id
            ))
            .into());
        }
        Ok(doc)
    }

    /// Whether `changes` fits the state's version vector `version`: the same authors, and each author's greatest
    /// counter its entry there.
    pub fn changes_fit(&self, version: &crate::VersionVector) -> bool {
        let authors = self.changes.peers().count() == version.iter().count();
        authors
            && version.iter().all(|(peer, top)| {
                self.changes.ranges_of(peer).and_then(|r| r.ranges().last()).is_some_and(|&(_, end)| end == top)
            })
    }
}

/// A document's state signed by an attester (certificate mode; see [`crate::security::attestation`]): what a
/// device sends in place of signed changes it folded, and keeps so that it can.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttestedState {
    /// The state, exactly as signed.
    pub state: DocState,
    /// The attester's signature of it.
    pub attestation: crate::security::Attestation,
}

/// A change together with the document it belongs to: what travels between stores.
#[derive(Clone, Debug, PartialEq)]
pub struct DocChange {
    /// The document's collection.
    pub collection: String,
    /// The document's id within its collection.
    pub doc_id: String,
    /// What was done to the document.
    pub change: Change,
    /// Its author's signature (see [`crate::security::authorship`]); `None` when its author was not enrolled. Not
    /// part of [`DocChange::encode`]: it signs that encoding.
    pub signature: Option<crate::security::ChangeSignature>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    collection: String,
    doc_id: String,
}

/// The document's collection and id, then the change's own versioned encoding.
pub(crate) fn encode_doc_change(collection: &str, doc_id: &str, change_body: &[u8]) -> Vec<u8> {
    #[derive(Serialize)]
    struct HeaderRef<'a> {
        collection: &'a str,
        doc_id: &'a str,
    }
    let mut out = Vec::with_capacity(change_body.len() + collection.len() + doc_id.len() + 4);
    out = postcard::to_extend(&HeaderRef { collection, doc_id }, out).unwrap_or_default();
    out.extend_from_slice(change_body);
    out
}

impl DocChange {
    /// Encode: the document's collection and id, then the change in its own versioned format.
    pub fn encode(&self) -> Vec<u8> {
        encode_doc_change(&self.collection, &self.doc_id, &self.change.encode())
    }

    /// Decode and validate. Never panics on garbage.
    pub fn decode(bytes: &[u8]) -> Result<DocChange, crate::Error> {
        let (header, rest): (Header, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| ChangeError::Corrupt(e.to_string()))?;
        super::check_collection(&header.collection)?;
        super::check_doc_id(&header.doc_id)?;
        let change = Change::decode(rest)?;
        Ok(DocChange { collection: header.collection, doc_id: header.doc_id, change, signature: None })
    }

    /// The change of `doc_id` in `collection`, unsigned.
    pub fn new(collection: &str, doc_id: &str, change: Change) -> DocChange {
        DocChange { collection: collection.to_string(), doc_id: doc_id.to_string(), change, signature: None }
    }

    /// What its author signs: [`change_digest`] of its encoding.
    pub fn digest(&self) -> [u8; 32] {
        change_digest(&self.collection, &self.doc_id, &self.change.encode())
    }

    /// This change signed with `key`, whose author id `chain` wrote it (see
    /// [`VerifyingKey::author`](crate::security::VerifyingKey::author)): how a device's own change goes out in
    /// certificate mode.
    pub fn signed(mut self, key: &crate::security::SigningKey, chain: u32) -> DocChange {
        let digest = self.digest();
        self.signature = Some(crate::security::ChangeSignature::sign(key, chain, &digest));
        self
    }
}

/// What [`crate::store::Replica::apply_changes`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changes now part of the store.
    pub applied: usize,
    /// Changes the store already had.
    pub duplicates: usize,
    /// Changes kept aside until the changes they depend on arrive.
    pub pending: usize,
    /// Changes ignored because their document was evicted here.
    pub ignored_evicted: usize,
    /// Changes refused because they conflict with what the store holds: another change of the same author that
    /// covers some of the same counters (an equivocation, recorded in [`crate::Store::equivocations`]), or a change
    /// that does not follow its author's earlier changes to the document; and, in certificate mode, changes whose
    /// signature or author's permissions do not hold (each in [`ApplyReport::refusals`]). The rest of the batch is
    /// applied.
    pub refused: usize,
    /// The changes refused by the checks of certificate mode, and why (at most [`MAX_REPORTED_REFUSALS`]; the
    /// rest are counted in [`ApplyReport::refused`] and logged).
    pub refusals: Vec<crate::security::Refused>,
}

/// The most refusals one [`ApplyReport`] lists.
pub const MAX_REPORTED_REFUSALS: usize = 64;

impl ApplyReport {
    /// Count `refused` (a change refused by the checks of certificate mode), and log it.
    pub fn refuse(&mut self, refused: crate::security::Refused) {
        log::warn!("{refused}");
        self.refused += 1;
        if self.refusals.len() < MAX_REPORTED_REFUSALS {
            self.refusals.push(refused);
        }
    }

    /// Add up another report (of a later part of the same batch).
    pub(crate) fn add(&mut self, other: ApplyReport) {
        self.applied += other.applied;
        self.duplicates += other.duplicates;
        self.pending += other.pending;
        self.ignored_evicted += other.ignored_evicted;
        self.refused += other.refused;
        for r in other.refusals {
            if self.refusals.len() < MAX_REPORTED_REFUSALS {
                self.refusals.push(r);
            }
        }
    }
}

/// The length of a change's content hash ([`change_hash`]).
pub const CHANGE_HASH_BYTES: usize = 16;

/// A change's content hash: the first [`CHANGE_HASH_BYTES`] of BLAKE3 over its [`DocChange`] encoding (document,
/// then the change). Two different changes for one (author, counter) have different hashes (128 bits: finding a
/// collision takes about 2^64 work).
pub fn change_hash(collection: &str, doc_id: &str, change_body: &[u8]) -> [u8; CHANGE_HASH_BYTES] {
    short_hash(&change_digest(collection, doc_id, change_body))
}

/// A change's digest: BLAKE3 over its [`DocChange`] encoding (document, then the change) — what its author signs.
/// Its first [`CHANGE_HASH_BYTES`] are its content hash ([`change_hash`]).
pub fn change_digest(collection: &str, doc_id: &str, change_body: &[u8]) -> [u8; 32] {
    // The encoding's header, then its body, without copying the body.
    let mut h = blake3::Hasher::new();
    h.update(&encode_doc_change(collection, doc_id, &[]));
    h.update(change_body);
    *h.finalize().as_bytes()
}

/// The content hash within a digest (see [`change_digest`]).
pub(crate) fn short_hash(digest: &[u8; 32]) -> [u8; CHANGE_HASH_BYTES] {
    let mut out = [0u8; CHANGE_HASH_BYTES];
    out.copy_from_slice(&digest[..CHANGE_HASH_BYTES]);
    out
}

/// What one replica holds of one author, in 32 bytes, for another replica to compare with its own
/// ([`crate::store::Replica::author_digests`]): two replicas holding the same counters of an author hold the same
/// changes of it exactly when their digests are equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorDigest {
    /// The author.
    pub author: PeerId,
    /// BLAKE3 (first 16 bytes) of the author's held counter ranges: digests are comparable only when these agree.
    pub ranges: [u8; CHANGE_HASH_BYTES],
    /// BLAKE3 (first 16 bytes) of the author's held changes, each as (start, end, content hash), in start order,
    /// hashed in buckets of 2^[`DIGEST_BUCKET_BITS`](crate::store::DIGEST_BUCKET_BITS) counters and then over the
    /// bucket hashes (see `Inner::author_digest`).
    pub changes: [u8; CHANGE_HASH_BYTES],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_set_merges_and_splits() {
        let mut r = RangeSet::default();
        r.insert(5, 7);
        r.insert(1, 2);
        r.insert(3, 4);
        assert_eq!(r.ranges(), &[(1, 7)]);
        r.insert(10, 12);
        assert_eq!(r.ranges(), &[(1, 7), (10, 12)]);
        assert!(r.contains_range(2, 6));
        assert!(!r.contains_range(6, 10));
        r.insert(8, 9);
        assert_eq!(r.ranges(), &[(1, 12)]);
        r.remove(4, 5);
        assert_eq!(r.ranges(), &[(1, 3), (6, 12)]);
        assert!(r.is_well_formed());
        r.insert(0, u64::MAX);
        assert_eq!(r.ranges(), &[(0, u64::MAX)]);
    }

    proptest::proptest! {
        #[test]
        fn range_set_difference_matches_sets(a in proptest::collection::vec((0u64..60, 0u64..6), 0..8),
                                             b in proptest::collection::vec((0u64..60, 0u64..6), 0..8)) {
            let (mut ra, mut rb) = (RangeSet::default(), RangeSet::default());
            let (mut sa, mut sb) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
            for (s, l) in a { ra.insert(s, s + l); sa.extend(s..=s + l); }
            for (s, l) in b { rb.insert(s, s + l); sb.extend(s..=s + l); }
            let d = ra.difference(&rb);
            proptest::prop_assert!(d.is_well_formed());
            let got: std::collections::BTreeSet<u64> = d.ranges().iter().flat_map(|&(s, e)| s..=e).collect();
            let want: std::collections::BTreeSet<u64> = sa.difference(&sb).copied().collect();
            proptest::prop_assert_eq!(d.count(), want.len() as u64);
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn change_hash_is_of_the_doc_change_encoding() {
        let body = b"\x01some change body".to_vec();
        let whole = encode_doc_change("c", "d", &body);
        assert_eq!(&change_hash("c", "d", &body)[..], &blake3::hash(&whole).as_bytes()[..CHANGE_HASH_BYTES]);
        assert_ne!(change_hash("c", "d", &body), change_hash("c", "e", &body));
    }

    #[test]
    fn summary_round_trip_and_garbage() {
        let mut s = Summary::new();
        s.insert(PeerId(3), 1, 10);
        s.insert(PeerId(9), 4, 4);
        assert_eq!(Summary::decode(&s.encode()).ok(), Some(s.clone()));
        assert!(s.contains(PeerId(3), 2, 9));
        assert!(!s.contains(PeerId(9), 1, 4));
        assert!(Summary::decode(&[0xff, 0xff, 0xff]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_dense_form_reads_back_exactly_and_reads_the_plain_form_too(
            ranges in proptest::collection::vec((0u64..4, any_counter(), 0u64..5), 0..60),
        ) {
            let mut s = Summary::new();
            for (peer, start, len) in ranges {
                s.insert(PeerId(peer.wrapping_mul(0x9e37_79b9_7f4a_7c15)), start, start.saturating_add(len));
            }
            let dense = s.encode_dense();
            proptest::prop_assert_eq!(Summary::decode_dense(&dense), Ok(s.clone()));
            proptest::prop_assert_eq!(Summary::decode_dense(&s.encode()), Ok(s.clone()));
            // Every prefix of it is refused, never misread.
            for cut in 2..dense.len() {
                proptest::prop_assert!(Summary::decode_dense(&dense[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_in_the_dense_form_is_refused_or_well_formed(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut input = vec![0, DENSE_FORMAT];
            input.extend(bytes);
            if let Ok(s) = Summary::decode_dense(&input) {
                proptest::prop_assert!(s.is_well_formed());
            }
        }
    }

    fn any_counter() -> impl proptest::strategy::Strategy<Value = u64> {
        proptest::prop_oneof![0u64..2_000, proptest::num::u64::ANY]
    }

    #[test]
    fn the_dense_form_takes_about_a_third_of_the_bytes_of_scattered_counters() {
        let mut s = Summary::new();
        for i in 0..1_000u64 {
            s.insert(PeerId(0xdead_beef_dead_beef), 500_000 + i * 997, 500_000 + i * 997);
        }
        let (plain, dense) = (s.encode().len(), s.encode_dense().len());
        assert!(dense * 3 <= plain + 64, "{dense} bytes against {plain}");
        // The extremes of counters read back.
        let mut s = Summary::new();
        s.insert(PeerId(1), 0, 0);
        s.insert(PeerId(1), 2, u64::MAX);
        s.insert(PeerId(u64::MAX), 0, u64::MAX);
        assert_eq!(Summary::decode_dense(&s.encode_dense()), Ok(s));
    }
}
