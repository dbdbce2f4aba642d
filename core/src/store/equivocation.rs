//! Equivocation: two different changes for one (author, counter).
//!
//! Every change in the log carries a content hash ([`change_hash`]: 16 bytes of BLAKE3 over its
//! [`DocChange`](super::DocChange) encoding). A store finds an equivocation in two ways:
//!
//! - **on receipt**: a received change whose counters the store holds (in part or whole) is compared with the held
//!   change by (start, end, hash) — one indexed lookup, only for changes whose range is held. Anything but the same
//!   change is an equivocation: the received version is refused (counted in
//!   [`ApplyReport::refused`](super::ApplyReport)), logged (`warn!`) and recorded with both versions;
//! - **by digest**: replicas that hold the same counters of an author exchange [`AuthorDigest`]s (a real hash over
//!   the author's sorted (start, end, hash) list, never an XOR or sum of hashes, which crafted changes could make
//!   collide). Different digests mean different contents: the sync session then sends that author's changes again,
//!   and the receiver finds the differing change on receipt, as above.
//!
//! The guarantee: two replicas never end *silently* different. Each keeps the version it received first and
//! refuses the other wherever it is seen; every replica that holds one version and is offered the other records
//! the pair ([`crate::Store::equivocations`]) — durable evidence for revoking the author. Replicas holding
//! different versions do not converge to one (that would need undoing an applied change); they both report.

use super::inner::Inner;
use super::logrow::LogRow;
use super::replicate::{change_hash, AuthorDigest, CHANGE_HASH_BYTES};
use crate::crdt::clock::PeerId;
use crate::error::Result;
use rusqlite::{params, OptionalExtension};

/// The most equivocations recorded (one per author and counter): an author forging without end cannot fill the
/// disk. Past it, conflicting changes are still refused and logged, not recorded.
pub const MAX_EQUIVOCATION_RECORDS: usize = 10_000;

/// Two different changes for one author and counter, seen by this store: the one it holds and the one it refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Equivocation {
    /// The author that made (or was forged to make) both.
    pub author: PeerId,
    /// The first counter of the refused version.
    pub start: u64,
    /// The version this store holds ([`DocChange`](super::DocChange) encoding; empty if it was evicted since).
    pub held: Vec<u8>,
    /// The version it refused ([`DocChange`](super::DocChange) encoding).
    pub refused: Vec<u8>,
    /// When it was seen, in milliseconds since the Unix epoch (the store's clock).
    pub detected_ms: u64,
    /// The held version's signature by its author (certificate mode), if it has one.
    pub held_signature: Option<crate::security::ChangeSignature>,
    /// The refused version's signature by its author, if it has one.
    pub refused_signature: Option<crate::security::ChangeSignature>,
}

impl Equivocation {
    /// Whether this is proof that the holder of `key` equivocated: both versions are signed with it, under the
    /// same author id, and are different changes. Anyone holding the author's certificate can check it, offline.
    pub fn proves(&self, key: &crate::security::VerifyingKey) -> bool {
        let (Some(h), Some(r)) = (&self.held_signature, &self.refused_signature) else { return false };
        let (Ok(held), Ok(refused)) = (super::DocChange::decode(&self.held), super::DocChange::decode(&self.refused))
        else {
            return false;
        };
        let signed = |dc: &super::DocChange, sig: &crate::security::ChangeSignature| {
            let digest = super::replicate::change_digest(&dc.collection, &dc.doc_id, &dc.change.encode());
            sig.verifies(key, dc.change.peer, &digest).is_ok()
        };
        held != refused
            && held.change.peer == self.author
            && refused.change.peer == self.author
            && signed(&held, h)
            && signed(&refused, r)
    }
}

/// Counters per bucket of an author's digest ([`crate::store::AuthorDigest`]), as a power of two: a change goes
/// into bucket `start >> DIGEST_BUCKET_BITS`, so a new change makes at most 4,096 rows be hashed again.
pub const DIGEST_BUCKET_BITS: u32 = 12;

/// Per-author digests, cached by bucket (see [`Inner::author_digest`]).
#[derive(Debug, Default)]
pub(crate) struct DigestCache {
    authors: std::collections::HashMap<PeerId, AuthorBuckets>,
}

#[derive(Debug, Default)]
pub(crate) struct AuthorBuckets {
    /// Bucket → hash of its (start, end, hash) list (buckets holding no change are absent).
    buckets: std::collections::BTreeMap<u64, [u8; CHANGE_HASH_BYTES]>,
    /// Buckets whose changes changed since they were hashed.
    dirty: std::collections::BTreeSet<u64>,
    /// `buckets` covers every bucket (false until the author's rows were read once).
    complete: bool,
    /// The digest over `buckets`, while none is dirty.
    digest: Option<[u8; CHANGE_HASH_BYTES]>,
}

impl DigestCache {
    /// A change of `author` starting at `start` was written or dropped.
    pub fn changed(&mut self, author: PeerId, start: u64) {
        if let Some(a) = self.authors.get_mut(&author) {
            a.dirty.insert(start >> DIGEST_BUCKET_BITS);
            a.digest = None;
        }
    }

    /// Changes of `author` covering `start..=end` were written or dropped (a run of them, or one change): every
    /// bucket one of them may start in.
    pub fn changed_range(&mut self, author: PeerId, start: u64, end: u64) {
        if let Some(a) = self.authors.get_mut(&author) {
            a.dirty.extend((start >> DIGEST_BUCKET_BITS)..=(end >> DIGEST_BUCKET_BITS));
            a.digest = None;
        }
    }

    /// Forget everything (the log was changed by another connection).
    pub fn clear(&mut self) {
        self.authors.clear();
    }
}

/// The ranges part of an [`AuthorDigest`]: a hash over `author`'s held counter `ranges`.
pub fn ranges_digest(author: PeerId, ranges: &super::replicate::RangeSet) -> [u8; CHANGE_HASH_BYTES] {
    let mut r = Vec::with_capacity(8 + ranges.ranges().len() * 16);
    r.extend_from_slice(&author.0.to_le_bytes());
    for &(s, e) in ranges.ranges() {
        r.extend_from_slice(&s.to_le_bytes());
        r.extend_from_slice(&e.to_le_bytes());
    }
    short(&r)
}

/// The changes part of an [`AuthorDigest`]: a hash over `author`'s bucket hashes ([`bucket_hashes`]), every bucket
/// holding a change, in bucket order.
pub fn changes_digest(
    author: PeerId,
    buckets: &std::collections::BTreeMap<u64, [u8; CHANGE_HASH_BYTES]>,
) -> [u8; CHANGE_HASH_BYTES] {
    let mut h = blake3::Hasher::new();
    h.update(&author.0.to_le_bytes());
    for (b, bucket) in buckets {
        h.update(&b.to_le_bytes());
        h.update(bucket);
    }
    short_hash(h)
}

fn short_hash(h: blake3::Hasher) -> [u8; CHANGE_HASH_BYTES] {
    let mut out = [0u8; CHANGE_HASH_BYTES];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHANGE_HASH_BYTES]);
    out
}

/// The pieces of an [`AuthorDigest`], for replicas other than the SQLite store (the cloud's): the hash of each
/// bucket of an author's changes, given as (start, end, content hash) rows in start order — every row of the
/// buckets it covers. Returns (bucket, hash) in bucket order.
pub fn bucket_hashes(
    rows: impl IntoIterator<Item = (u64, u64, [u8; CHANGE_HASH_BYTES])>,
) -> Vec<(u64, [u8; CHANGE_HASH_BYTES])> {
    let mut out = Vec::new();
    let mut current: Option<(u64, blake3::Hasher)> = None;
    for (start, end, hash) in rows {
        let b = start >> DIGEST_BUCKET_BITS;
        if current.as_ref().is_some_and(|(cb, _)| *cb != b) {
            if let Some((cb, h)) = current.take() {
                out.push((cb, short_hash(h)));
            }
        }
        let (_, h) = current.get_or_insert_with(|| (b, blake3::Hasher::new()));
        h.update(&start.to_le_bytes());
        h.update(&end.to_le_bytes());
        h.update(&hash);
    }
    if let Some((cb, h)) = current {
        out.push((cb, short_hash(h)));
    }
    out
}

/// A change of the log, as the equivocation checks need it.
pub(super) struct HeldChange {
    pub start: u64,
    pub end: u64,
    pub hash: [u8; CHANGE_HASH_BYTES],
}

fn short(bytes: &[u8]) -> [u8; CHANGE_HASH_BYTES] {
    let mut out = [0u8; CHANGE_HASH_BYTES];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..CHANGE_HASH_BYTES]);
    out
}

impl Inner {
    /// The logged change of `peer` with the greatest start at or before `counter` (read without its body).
    pub(super) fn logged_change_before(&self, peer: PeerId, counter: u64) -> Result<Option<HeldChange>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT start, end, hash, parts FROM changes WHERE peer = ?1 AND start <= ?2 ORDER BY start DESC LIMIT 1",
        )?;
        let mut rows = stmt.query(params![peer.0 as i64, counter.min(i64::MAX as u64) as i64])?;
        let Some(r) = rows.next()? else { return Ok(None) };
        let Some(part) = LogRow::read_layout(r, 0)?.spans()?.into_iter().rev().find(|p| p.start <= counter) else {
            return Ok(None);
        };
        let hash = match part.hash {
            Some(hash) => hash,
            None => self.logged_hash(peer, part.start)?,
        };
        Ok(Some(HeldChange { start: part.start, end: part.end, hash }))
    }

    /// The content hash of the logged change `peer:start`, computed from its body (for a row without one).
    fn logged_hash(&self, peer: PeerId, start: u64) -> Result<[u8; CHANGE_HASH_BYTES]> {
        Ok(self.logged_encoding(peer, start)?.map_or([0; CHANGE_HASH_BYTES], |e| short(&e)))
    }

    /// The [`DocChange`](super::DocChange) encoding of the logged change `peer:start`, if it is in the log.
    pub(super) fn logged_encoding(&self, peer: PeerId, start: u64) -> Result<Option<Vec<u8>>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT d.collection, d.id, c.start, c.end, c.body, c.hash, c.parts FROM changes c \
             JOIN docs d ON d.doc = c.doc WHERE c.peer = ?1 AND c.start <= ?2 ORDER BY c.start DESC LIMIT 1",
        )?;
        let mut rows = stmt.query(params![peer.0 as i64, start.min(i64::MAX as u64) as i64])?;
        let Some(r) = rows.next()? else { return Ok(None) };
        let (collection, id): (String, String) = (r.get(0)?, r.get(1)?);
        let found = LogRow::read(r, 2)?.parts()?.into_iter().find(|p| p.start == start);
        Ok(found.map(|p| super::replicate::encode_doc_change(&collection, &id, p.body)))
    }

    /// The signature kept with the logged change `peer:start` (encoded), if it is in the log and signed.
    pub(super) fn logged_signature(&self, peer: PeerId, start: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT sig FROM changes WHERE peer = ?1 AND start = ?2")?
            .query_row(params![peer.0 as i64, start as i64], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten())
    }

    /// Keep the evidence of an equivocation (at most one record per author and counter, at most
    /// [`MAX_EQUIVOCATION_RECORDS`] in all): each version's [`DocChange`](super::DocChange) encoding and signature.
    pub(super) fn record_equivocation(
        &self,
        peer: PeerId,
        start: u64,
        (held, held_sig): (&[u8], Option<&[u8]>),
        (refused, refused_sig): (&[u8], Option<&[u8]>),
    ) -> Result<()> {
        let rows: i64 = self.conn.query_row("SELECT count(*) FROM equivocations", [], |r| r.get(0))?;
        if rows as usize >= MAX_EQUIVOCATION_RECORDS {
            log::warn!("equivocation of author {peer} at {start} not recorded: {rows} recorded already");
            return Ok(());
        }
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO equivocations (peer, start, held, refused, detected, held_sig, refused_sig) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                peer.0 as i64,
                start as i64,
                held,
                refused,
                self.sources.now_ms() as i64,
                held_sig,
                refused_sig
            ])?;
        Ok(())
    }

    /// Every equivocation recorded here, by author and counter.
    pub(super) fn equivocations(&self) -> Result<Vec<Equivocation>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT peer, start, held, refused, detected, held_sig, refused_sig FROM equivocations \
                 ORDER BY peer, start",
        )?;
        let sig = |b: Option<Vec<u8>>| b.and_then(|b| crate::security::ChangeSignature::decode(&b));
        let rows = stmt
            .query_map([], |r| {
                Ok(Equivocation {
                    author: PeerId(r.get::<_, i64>(0)? as u64),
                    start: r.get::<_, i64>(1)? as u64,
                    held: r.get(2)?,
                    refused: r.get(3)?,
                    detected_ms: r.get::<_, i64>(4)? as u64,
                    held_signature: sig(r.get(5)?),
                    refused_signature: sig(r.get(6)?),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The digest of what this store holds of `author` (see [`AuthorDigest`]): a hash over the author's buckets
    /// (changes grouped by `start >> DIGEST_BUCKET_BITS`), each a hash over its sorted (start, end, hash) list — a
    /// two-level hash tree, as collision-resistant as BLAKE3 itself. Cached per bucket: a new or dropped change
    /// makes only its bucket be read again (the log rows of at most 2^[`DIGEST_BUCKET_BITS`] changes, read
    /// without their bodies), plus one hash over the author's bucket hashes. The first digest of an author after
    /// the store is opened reads all its rows once.
    pub(super) fn author_digest(&mut self, author: PeerId) -> Result<Option<AuthorDigest>> {
        let Some(ranges) = self.ranges_digest(author) else { return Ok(None) };
        let mut cached = self.digests.authors.remove(&author).unwrap_or_default();
        let result = self.update_buckets(author, &mut cached);
        let digest = cached.digest.get_or_insert_with(|| changes_digest(author, &cached.buckets));
        let changes = *digest;
        if result.is_ok() {
            self.digests.authors.insert(author, cached);
        }
        result?;
        Ok(Some(AuthorDigest { author, ranges, changes }))
    }

    /// Hash again the buckets of `author` that changed (all of them the first time).
    fn update_buckets(&self, author: PeerId, cached: &mut AuthorBuckets) -> Result<()> {
        if !cached.complete {
            cached.buckets = bucket_hashes(self.rows_of(author, 0, u64::MAX)?).into_iter().collect();
            cached.dirty.clear();
            cached.complete = true;
            cached.digest = None;
            return Ok(());
        }
        for b in std::mem::take(&mut cached.dirty) {
            cached.digest = None;
            let (lo, hi) = (b << DIGEST_BUCKET_BITS, ((b + 1) << DIGEST_BUCKET_BITS).wrapping_sub(1));
            cached.buckets.remove(&b);
            if let Some((_, hash)) = bucket_hashes(self.rows_of(author, lo, hi)?).into_iter().next() {
                cached.buckets.insert(b, hash);
            }
        }
        Ok(())
    }

    /// The (start, end, hash) of `author`'s logged changes starting in `lo..=hi`, in order.
    fn rows_of(&self, author: PeerId, lo: u64, hi: u64) -> Result<Vec<(u64, u64, [u8; CHANGE_HASH_BYTES])>> {
        let (sql_lo, sql_hi) = (lo.min(i64::MAX as u64) as i64, hi.min(i64::MAX as u64) as i64);
        let mut out = Vec::new();
        let mut take = |rows: &mut rusqlite::Rows<'_>| -> Result<()> {
            while let Some(r) = rows.next()? {
                for part in LogRow::read_layout(r, 0)?.spans()? {
                    if part.start < lo || part.start > hi {
                        continue;
                    }
                    let hash = match part.hash {
                        Some(hash) => hash,
                        None => self.logged_hash(author, part.start)?,
                    };
                    out.push((part.start, part.end, hash));
                }
            }
            Ok(())
        };
        // The row starting before `lo` first (a run may hold changes starting in the range), then those in it.
        let mut before = self.conn.prepare_cached(
            "SELECT start, end, hash, parts FROM changes WHERE peer = ?1 AND start < ?2 ORDER BY start DESC LIMIT 1",
        )?;
        take(&mut before.query(params![author.0 as i64, sql_lo])?)?;
        let mut within = self.conn.prepare_cached(
            "SELECT start, end, hash, parts FROM changes WHERE peer = ?1 AND start >= ?2 AND start <= ?3 ORDER BY start",
        )?;
        take(&mut within.query(params![author.0 as i64, sql_lo, sql_hi])?)?;
        Ok(out)
    }

    /// The ranges part of [`AuthorDigest`] for what this store holds of `author` (cheap: from memory).
    pub(super) fn ranges_digest(&self, author: PeerId) -> Option<[u8; CHANGE_HASH_BYTES]> {
        Some(ranges_digest(author, self.held.ranges_of(author)?))
    }

    /// Fill in the content hash of log rows written before schema 5 (once, at open).
    pub(super) fn backfill_change_hashes(&self) -> Result<()> {
        if super::inner::meta_u64(&self.conn, "hashes_filled")?.is_some() {
            return Ok(());
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let mut last = i64::MIN;
            loop {
                let rows: Vec<(i64, String, String, Vec<u8>)> = self
                    .conn
                    .prepare_cached(
                        "SELECT c.seq, d.collection, d.id, c.body FROM changes c JOIN docs d ON d.doc = c.doc \
                         WHERE c.hash IS NULL AND c.seq > ?1 ORDER BY c.seq LIMIT 1000",
                    )?
                    .query_map(params![last], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                    .collect::<rusqlite::Result<_>>()?;
                let Some(&(seq, ..)) = rows.last() else {
                    return super::inner::meta_put_u64(&self.conn, "hashes_filled", 1);
                };
                last = seq;
                let mut update = self.conn.prepare_cached("UPDATE changes SET hash = ?2 WHERE seq = ?1")?;
                for (seq, collection, id, body) in rows {
                    update.execute(params![seq, &change_hash(&collection, &id, &body)[..]])?;
                }
            }
        })();
        match result {
            Ok(()) => self.conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        log::info!("content hashes of the logged changes computed");
        Ok(())
    }
}
