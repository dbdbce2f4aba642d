//! Attachment bytes: stored beside the documents in fixed-size chunks, content-addressed by the BLAKE3 hash of the
//! whole content, written and read as streams so that a large file never has to be in memory at once. The same
//! content stored twice is kept once.

use crate::crdt::value::AttachmentToken;
use crate::error::{Error, Result};
use crate::util::hex;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::io::Read;

/// The size of one stored chunk.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Where an attachment is written before its hash is known, and when.
#[derive(Clone, Copy)]
pub(crate) struct Staging {
    /// A fresh temporary key for its chunks.
    pub key: [u8; 32],
    /// Now (ms): the attachment's last use ([`super::budget`]).
    pub now_ms: u64,
}

/// Write an attachment from a reader inside the caller's transaction. Chunks go under a temporary key while the
/// hash is not known yet, then are renamed (or dropped, when the content is already stored).
pub(crate) fn write(
    conn: &Connection,
    mut reader: impl Read,
    meta: BTreeMap<String, String>,
    staging: Staging,
) -> Result<AttachmentToken> {
    let temp_key = staging.key;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut len: u64 = 0;
    let mut idx: i64 = 0;
    {
        let mut insert = conn.prepare_cached("INSERT INTO blob_chunks (hash, idx, data) VALUES (?1, ?2, ?3)")?;
        loop {
            let n = read_full(&mut reader, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            insert.execute(params![&temp_key[..], idx, &buf[..n]])?;
            len += n as u64;
            idx += 1;
            if n < CHUNK_SIZE {
                break;
            }
        }
    }
    let hash: [u8; 32] = *hasher.finalize().as_bytes();
    let exists: bool = conn
        .prepare_cached("SELECT 1 FROM blobs WHERE hash = ?1")?
        .query_row(params![&hash[..]], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        conn.prepare_cached("DELETE FROM blob_chunks WHERE hash = ?1")?.execute(params![&temp_key[..]])?;
        // Stored again: a document naming it is about to be written, so its grace before collection starts over.
        conn.prepare_cached("DELETE FROM gc_marks WHERE kind = ?1 AND hash = ?2")?
            .execute(params![super::storage::UNREFERENCED, &hash[..]])?;
    } else {
        conn.prepare_cached("UPDATE blob_chunks SET hash = ?1 WHERE hash = ?2")?
            .execute(params![&hash[..], &temp_key[..]])?;
        conn.prepare_cached("INSERT INTO blobs (hash, len, chunk_size) VALUES (?1, ?2, ?3)")?.execute(params![
            &hash[..],
            len as i64,
            CHUNK_SIZE as i64
        ])?;
    }
    conn.prepare_cached("UPDATE blobs SET used = max(coalesce(used, 0), ?2) WHERE hash = ?1")?
        .execute(params![&hash[..], staging.now_ms.min(i64::MAX as u64) as i64])?;
    Ok(AttachmentToken { hash, len, meta })
}

/// Fill `buf` as far as the reader allows; returns the bytes read (less than `buf.len()` only at the end).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Whether the content is stored here, and its length.
pub(crate) fn stored_len(conn: &Connection, hash: &[u8; 32]) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached("SELECT len FROM blobs WHERE hash = ?1")?
        .query_row(params![&hash[..]], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|l| l as u64))
}

/// Read chunk `idx` of a stored attachment.
pub(crate) fn read_chunk(conn: &Connection, hash: &[u8; 32], idx: u64) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT data FROM blob_chunks WHERE hash = ?1 AND idx = ?2")?
        .query_row(params![&hash[..], idx as i64], |r| r.get(0))
        .optional()?)
}

pub(crate) fn not_found(hash: &[u8; 32]) -> Error {
    Error::AttachmentNotFound { hash: hex(hash) }
}

/// Bytes of `hash` received so far from another device. Parts are kept contiguous from offset 0 (a part is
/// accepted only where the received bytes end), so this is where the last part ends: one index lookup, however
/// many parts there are (summing them for every part received would cost the square of their number).
pub(crate) fn partial_len(conn: &Connection, hash: &[u8; 32]) -> Result<u64> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT offset + length(data) FROM partial_blobs WHERE hash = ?1 ORDER BY offset DESC LIMIT 1")?
        .query_row(params![&hash[..]], |r| r.get(0))
        .optional()?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// The received bytes of `hash` from `offset` to the end of the part that holds `offset`, if received.
pub(crate) fn read_partial(conn: &Connection, hash: &[u8; 32], offset: u64) -> Result<Option<Vec<u8>>> {
    let part: Option<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT offset, data FROM partial_blobs WHERE hash = ?1 AND offset <= ?2 ORDER BY offset DESC LIMIT 1",
        )?
        .query_row(params![&hash[..], offset as i64], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(part.and_then(|(start, mut data)| {
        let skip = usize::try_from(offset - start as u64).ok()?;
        (skip < data.len()).then(|| data.split_off(skip))
    }))
}

/// Streams the received parts of `hash`, in order, one row at a time.
struct PartsReader<'c> {
    conn: &'c Connection,
    hash: [u8; 32],
    next_offset: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for PartsReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            let row: Option<Vec<u8>> = self
                .conn
                .prepare_cached("SELECT data FROM partial_blobs WHERE hash = ?1 AND offset = ?2")
                .and_then(|mut s| {
                    s.query_row(params![&self.hash[..], self.next_offset as i64], |r| r.get(0)).optional()
                })
                .map_err(std::io::Error::other)?;
            match row {
                None => return Ok(0),
                Some(data) if data.is_empty() => return Ok(0),
                Some(data) => {
                    self.next_offset += data.len() as u64;
                    self.buf = data;
                    self.pos = 0;
                }
            }
        }
        Ok(drain(&self.buf, &mut self.pos, out))
    }
}

/// Copy what is left of `buf` from `pos` into `out`, as much as fits; advances `pos`.
pub(crate) fn drain(buf: &[u8], pos: &mut usize, out: &mut [u8]) -> usize {
    let n = out.len().min(buf.len().saturating_sub(*pos));
    out[..n].copy_from_slice(&buf[*pos..*pos + n]);
    *pos += n;
    n
}

/// Turn the received parts of `hash` into a stored attachment of `total` bytes, inside the caller's transaction:
/// the content must hash to `hash`, or the parts are dropped and an error returned.
pub(crate) fn finish_parts(conn: &Connection, hash: &[u8; 32], total: u64, staging: Staging) -> Result<()> {
    let have = partial_len(conn, hash)?;
    if have != total {
        return Err(Error::AttachmentCorrupt { hash: hex(hash), reason: format!("{have} of {total} bytes received") });
    }
    let reader = PartsReader { conn, hash: *hash, next_offset: 0, buf: Vec::new(), pos: 0 };
    let token = write(conn, reader, BTreeMap::new(), staging)?;
    conn.prepare_cached("DELETE FROM partial_blobs WHERE hash = ?1")?.execute(params![&hash[..]])?;
    if token.hash != *hash || token.len != total {
        // `write` stored the content under the hash it really has; the bytes are not what was asked for.
        return Err(Error::AttachmentCorrupt {
            hash: hex(hash),
            reason: "received bytes do not match the hash".into(),
        });
    }
    Ok(())
}
