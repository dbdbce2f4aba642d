//! Per-author digests of the PostgreSQL replica (the equivocation check by digest, as on phones: see
//! `shoaldb::store` and [`AuthorDigest`](shoaldb::store::AuthorDigest)): two replicas that hold the same counters of an author compare a hash
//! of that author's changes, and a difference means one of them holds a forged version.
//!
//! The digest is the phone's, to the bit (the same [`bucket_hashes`] and [`changes_digest`]): changes in buckets
//! of 2^[`DIGEST_BUCKET_BITS`] counters, a hash per bucket over its (start, end, content hash) rows, a hash over the
//! bucket hashes. This process keeps the bucket hashes it computed, and marks a bucket to be read again when a
//! change lands in it: one of this process's commits, or one of another relay's that the replica's summary learns
//! of ([`PgReplica::changed`](crate::PgReplica::changed)). An author is read whole the first time it is asked for.
//!
//! A digest read while another relay's commit is not yet known here covers less than the database holds: it can
//! only differ from a peer's that holds more, which makes the session send that author's changes again (finding no
//! conflict on receipt). It never makes two different versions pass for the same one: a bucket hash is always of
//! rows the database holds, and held changes are never replaced.

use crate::pg::Conn;
use shoaldb::store::{bucket_hashes, changes_digest, CHANGE_HASH_BYTES, DIGEST_BUCKET_BITS};
use shoaldb::{Error, PeerId, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

type Hash = [u8; CHANGE_HASH_BYTES];

/// The bucket hashes this process computed, by author.
#[derive(Default)]
pub(crate) struct DigestCache {
    authors: Mutex<HashMap<PeerId, Buckets>>,
}

#[derive(Default)]
struct Buckets {
    /// Bucket → hash (buckets holding no change are absent).
    hashes: BTreeMap<u64, Hash>,
    /// Buckets changed since they were hashed.
    dirty: BTreeSet<u64>,
    /// `hashes` covers every bucket (false until the author was read whole).
    complete: bool,
    /// Bumped whenever a bucket is marked: a read that started before does not clear the mark.
    generation: u64,
}

/// What to read of one author: everything, or some buckets.
struct Work {
    author: PeerId,
    whole: bool,
    buckets: Vec<u64>,
    generation: u64,
}

impl DigestCache {
    /// A change of `author` starting at `start` was written (here or by another relay).
    pub fn changed(&self, author: PeerId, start: u64) {
        let mut authors = shoaldb::util::lock(&self.authors);
        if let Some(a) = authors.get_mut(&author) {
            a.dirty.insert(start >> DIGEST_BUCKET_BITS);
            a.generation += 1;
        }
    }

    /// Forget everything (the summary was read whole again: what changed since is not known change by change).
    pub fn clear(&self) {
        shoaldb::util::lock(&self.authors).clear();
    }

    /// The changes part of the digest of each of `authors` (every one the database holds a change of), reading the
    /// buckets that are not known or changed on `client`.
    pub fn changes_digests(&self, client: &mut Conn, authors: &[PeerId]) -> Result<Vec<(PeerId, Hash)>> {
        let work: Vec<Work> = {
            let cache = shoaldb::util::lock(&self.authors);
            authors
                .iter()
                .filter_map(|&author| match cache.get(&author) {
                    Some(b) if b.complete && b.dirty.is_empty() => None,
                    Some(b) if b.complete => Some(Work {
                        author,
                        whole: false,
                        buckets: b.dirty.iter().copied().collect(),
                        generation: b.generation,
                    }),
                    Some(b) => Some(Work { author, whole: true, buckets: Vec::new(), generation: b.generation }),
                    None => Some(Work { author, whole: true, buckets: Vec::new(), generation: 0 }),
                })
                .collect()
        };
        let read = read_buckets(client, &work)?;
        let mut cache = shoaldb::util::lock(&self.authors);
        let mut out = Vec::with_capacity(authors.len());
        let mut fresh: HashMap<PeerId, (Work, BTreeMap<u64, Hash>)> =
            work.into_iter().zip(read).map(|(w, hashes)| (w.author, (w, hashes))).collect();
        for &author in authors {
            let entry = cache.entry(author).or_default();
            let hashes = match fresh.remove(&author) {
                None => entry.hashes.clone(),
                Some((w, read)) => {
                    // What was read, over what was known of the other buckets.
                    let mut hashes = if w.whole { BTreeMap::new() } else { entry.hashes.clone() };
                    for b in &w.buckets {
                        hashes.remove(b);
                    }
                    hashes.extend(read);
                    if entry.generation == w.generation {
                        // Nothing changed meanwhile: kept.
                        entry.hashes = hashes.clone();
                        entry.dirty.clear();
                        entry.complete = true;
                    }
                    hashes
                }
            };
            out.push((author, changes_digest(author, &hashes)));
        }
        Ok(out)
    }
}

/// The bucket hashes `work` asks for, one map per item, in one statement for the authors read whole and one for
/// the buckets read again.
fn read_buckets(client: &mut Conn, work: &[Work]) -> Result<Vec<BTreeMap<u64, Hash>>> {
    let mut rows_of: Vec<Vec<(u64, u64, Hash)>> = work.iter().map(|_| Vec::new()).collect();
    let (mut authors, mut los, mut his, mut items) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, w) in work.iter().enumerate() {
        let ranges: Vec<(u64, u64)> = if w.whole {
            vec![(0, u64::MAX)]
        } else {
            w.buckets
                .iter()
                .map(|b| (b << DIGEST_BUCKET_BITS, ((b + 1) << DIGEST_BUCKET_BITS).wrapping_sub(1)))
                .collect()
        };
        for (lo, hi) in ranges {
            authors.push(w.author.0 as i64);
            los.push(lo.min(i64::MAX as u64) as i64);
            his.push(hi.min(i64::MAX as u64) as i64);
            items.push(n as i64);
        }
    }
    if authors.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT w.n, c.start_ctr, c.end_ctr, c.hash \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS w(a, lo, hi, n) \
             JOIN changes c ON c.author = w.a AND c.start_ctr >= w.lo AND c.start_ctr <= w.hi \
             ORDER BY w.n, c.start_ctr",
            &[&authors, &los, &his, &items],
        )
        .map_err(|e| Error::Backend(crate::describe(&e).into()))?;
    for r in rows {
        let n = r.get::<_, i64>(0) as usize;
        let hash: Vec<u8> = r.get(3);
        let hash: Hash = hash
            .as_slice()
            .try_into()
            .map_err(|_| Error::Corrupt("a change's content hash has the wrong size".into()))?;
        let row = (r.get::<_, i64>(1) as u64, r.get::<_, i64>(2) as u64, hash);
        rows_of.get_mut(n).ok_or_else(|| Error::Corrupt("a digest row for no author".into()))?.push(row);
    }
    Ok(rows_of.into_iter().map(|rows| bucket_hashes(rows).into_iter().collect()).collect())
}
