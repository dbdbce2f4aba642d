//! What a store's file holds ([`StorageStats`]) and the collection of what nothing needs any more
//! ([`Store::collect_garbage`]): attachments no document names, downloads that stopped, and the free pages they
//! leave in the file.
//!
//! Collection is mark and sweep with a grace period: a pass marks what it finds unneeded with the time it first
//! saw it so, and deletes what has stayed so for longer than the policy's period. An attachment stored by an app
//! just before the document naming it is written is therefore never collected in between, and a download making
//! progress, however slowly, is never dropped.

use std::path::Path as FsPath;

use rusqlite::{params, Connection};

use super::Store;
use crate::Result;

/// What a store's file holds, by kind (see [`Store::storage_stats`]). Sizes are in bytes: payloads as stored
/// (JSON text, encoded changes and states, attachment bytes), and the file's pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// The database file's size (its pages, without the write-ahead log).
    pub file_bytes: u64,
    /// Pages of the file that hold nothing (freed by deletions, reused by later writes or returned to the system
    /// by [`Store::collect_garbage`]).
    pub free_bytes: u64,
    /// The write-ahead log's size (written into the file at checkpoints).
    pub wal_bytes: u64,
    /// Documents that exist here.
    pub documents: u64,
    /// Documents removed (their rows are kept, with their changes or their snapshots: they are what tells a device
    /// coming back that they were removed).
    pub removed_documents: u64,
    /// Documents evicted from this device ([`Store::evict`]).
    pub evicted_documents: u64,
    /// The documents' JSON views (what queries read), large values kept beside them included.
    pub view_bytes: u64,
    /// Changes in the change log (what sync serves to other devices).
    pub log_changes: u64,
    /// Their encoded size.
    pub log_bytes: u64,
    /// Documents' CRDT states saved as snapshots (a document is rebuilt from its snapshot and the changes after it).
    pub snapshot_bytes: u64,
    /// The deleted characters of texts and elements of arrays that documents keep as tombstones (later inserts may
    /// name them as their neighbours, so they are not collected; only their count and ids are kept, not their
    /// contents), as of each document's snapshot: deletions made by the changes after it are counted at the next.
    pub tombstones: u64,
    /// Documents some of whose changes were folded into their snapshots and dropped from the log
    /// ([`Store::compact`]).
    pub compacted_documents: u64,
    /// The record of which changes those were (what the store tells other devices it holds).
    pub folded_bytes: u64,
    /// Documents' states signed by an attester, kept to send in place of the signed changes they hold (certificate
    /// mode: see [`crate::security::attestation`]), with their records of those changes and their signatures.
    pub attested_bytes: u64,
    /// Received changes waiting for the changes they depend on.
    pub pending_changes: u64,
    /// Attachments stored whole.
    pub attachments: u64,
    /// Their bytes.
    pub attachment_bytes: u64,
    /// Attachments being downloaded (bytes received so far are kept, so that a download resumes).
    pub partial_downloads: u64,
    /// Their bytes so far.
    pub partial_bytes: u64,
}

/// What [`Store::collect_garbage`] collects, and after how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GarbagePolicy {
    /// An attachment that no document here names is deleted once it has been so for this long (ms), as seen by
    /// successive collections. The grace keeps an attachment stored just before the document naming it is written,
    /// and leaves devices that still hold an older version naming it time to fetch it. Default: one day.
    pub unreferenced_attachment_ms: u64,
    /// The bytes received of a download that has made no progress for this long (ms) are deleted; the download
    /// starts from the beginning if it is asked for again. Default: seven days.
    pub stalled_download_ms: u64,
}

impl Default for GarbagePolicy {
    fn default() -> GarbagePolicy {
        GarbagePolicy { unreferenced_attachment_ms: 24 * 3_600_000, stalled_download_ms: 7 * 24 * 3_600_000 }
    }
}

/// What one [`Store::collect_garbage`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GarbageReport {
    /// Attachments deleted: no document names them, for longer than the policy's grace.
    pub attachments_removed: u64,
    /// Their bytes.
    pub attachment_bytes_removed: u64,
    /// Downloads whose bytes were deleted: no progress for longer than the policy allows.
    pub downloads_removed: u64,
    /// Their bytes.
    pub download_bytes_removed: u64,
    /// The database file's size before and after (free pages are returned to the system).
    pub file_bytes_before: u64,
    /// See `file_bytes_before`.
    pub file_bytes_after: u64,
}

/// Kinds of [`gc_marks`](super::schema) rows.
pub(crate) const UNREFERENCED: i64 = 0;
const STALLED: i64 = 1;

/// SQL: whether some document here names attachment `b.hash` in its view or in a large value kept beside it.
/// `attachment_refs` lists the documents that ever named it; their current text decides. (A string that merely
/// contains the token's text counts too: a false "named" keeps the bytes, never the reverse.)
const NAMED: &str = "EXISTS (
    SELECT 1 FROM attachment_refs r JOIN docs d ON d.doc = r.doc
    WHERE r.hash = b.hash AND (
        instr(d.view, '\"_attachment\":\"' || lower(hex(b.hash)) || '\"') > 0
        OR (d.parts > 0 AND EXISTS (
            SELECT 1 FROM view_parts p
            WHERE p.doc = d.doc AND instr(p.json, '\"_attachment\":\"' || lower(hex(b.hash)) || '\"') > 0))))";

pub(crate) fn stats(conn: &Connection, path: &FsPath) -> Result<StorageStats> {
    let one = |sql: &str| -> Result<(u64, u64)> {
        Ok(conn.prepare_cached(sql)?.query_row([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)))?)
    };
    let (documents, removed_documents) = one("SELECT count(view), count(*) - count(view) FROM docs")?;
    let (view_bytes, part_bytes) = one("SELECT (SELECT coalesce(sum(length(CAST(view AS BLOB))), 0) FROM docs),
                (SELECT coalesce(sum(length(CAST(json AS BLOB))), 0) FROM view_parts)")?;
    let (log_changes, log_bytes) =
        one("SELECT coalesce(sum(CASE WHEN parts IS NULL THEN 1 ELSE length(hash) / 16 END), 0), \
         coalesce(sum(length(body)), 0) FROM changes")?;
    let (_, snapshot_bytes) = one("SELECT count(*), coalesce(sum(length(state)), 0) FROM snapshots")?;
    let tombstones = tombstones(conn)?;
    let (compacted_documents, folded_bytes) = one("SELECT count(*), coalesce(sum(length(summary)), 0) FROM folded")?;
    let (_, attested_bytes) = one("SELECT count(*), coalesce(sum(length(state) + length(signature) + 8), 0) \
         + (SELECT coalesce(sum(length(changes)), 0) FROM attested_changes) FROM attested")?;
    let (pending_changes, evicted_documents) =
        one("SELECT (SELECT count(*) FROM pending), (SELECT count(*) FROM evicted)")?;
    let (attachments, attachment_bytes) = one("SELECT count(*), coalesce(sum(len), 0) FROM blobs")?;
    let (partial_downloads, partial_bytes) =
        one("SELECT count(DISTINCT hash), coalesce(sum(length(data)), 0) FROM partial_blobs")?;
    let (page_size, pages, free_pages) = pages(conn)?;
    let wal_bytes = match super::in_memory(path) {
        true => 0,
        false => std::fs::metadata(super::encryption::sibling(path, "-wal")).map(|m| m.len()).unwrap_or(0),
    };
    Ok(StorageStats {
        file_bytes: pages * page_size,
        free_bytes: free_pages * page_size,
        wal_bytes,
        documents,
        removed_documents,
        evicted_documents,
        view_bytes: view_bytes + part_bytes,
        log_changes,
        log_bytes,
        snapshot_bytes,
        tombstones,
        compacted_documents,
        folded_bytes,
        attested_bytes,
        pending_changes,
        attachments,
        attachment_bytes,
        partial_downloads,
        partial_bytes,
    })
}

/// The tombstones the snapshots keep: their counts, and for snapshots written before counts were kept, from their
/// states (a snapshot that does not decode counts none: it is rebuilt from the log when its document loads).
fn tombstones(conn: &Connection) -> Result<u64> {
    let counted: i64 = conn.query_row("SELECT coalesce(sum(tombstones), 0) FROM snapshots", [], |r| r.get(0))?;
    let mut n = counted.max(0) as u64;
    let mut stmt = conn.prepare_cached("SELECT state FROM snapshots WHERE tombstones IS NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let state = r.get_ref(0)?.as_blob().unwrap_or_default();
        n = n.saturating_add(crate::Document::decode(state).map_or(0, |d| d.tombstones()));
    }
    Ok(n)
}

/// The page size, the pages of the file and how many of them are free.
pub(super) fn pages(conn: &Connection) -> Result<(u64, u64, u64)> {
    // SQLCipher answers `page_size` on an encrypted file as text (its column named `cipher_page_size`).
    let get = |pragma: &str| -> Result<u64> {
        let v: rusqlite::types::Value = conn.query_row(pragma, [], |r| r.get(0))?;
        match v {
            rusqlite::types::Value::Integer(n) => Ok(n.max(0) as u64),
            rusqlite::types::Value::Text(t) => {
                t.trim().parse().map_err(|_| crate::Error::Corrupt(format!("{pragma} answered {t:?}")))
            }
            other => Err(crate::Error::Corrupt(format!("{pragma} answered {other:?}"))),
        }
    };
    Ok((get("PRAGMA page_size")?, get("PRAGMA page_count")?, get("PRAGMA freelist_count")?))
}

/// One pass of marking and sweeping, in the caller's write transaction (see the module's documentation).
pub(crate) fn sweep(conn: &Connection, policy: &GarbagePolicy, now_ms: u64) -> Result<GarbageReport> {
    let now = now_ms.min(i64::MAX as u64) as i64;
    let mut report = GarbageReport::default();
    // Attachments: unmark those named again, mark those newly unnamed, delete those unnamed for long enough.
    conn.execute(
        &format!(
            "DELETE FROM gc_marks AS m WHERE m.kind = ?1 AND (
            NOT EXISTS (SELECT 1 FROM blobs b WHERE b.hash = m.hash)
            OR EXISTS (SELECT 1 FROM blobs b WHERE b.hash = m.hash AND {NAMED}))"
        ),
        params![UNREFERENCED],
    )?;
    conn.execute(
        &format!(
            "INSERT OR IGNORE INTO gc_marks (kind, hash, since, seen)
            SELECT ?1, b.hash, ?2, 0 FROM blobs b WHERE NOT {NAMED}"
        ),
        params![UNREFERENCED, now],
    )?;
    let cutoff = now.saturating_sub(policy.unreferenced_attachment_ms.min(i64::MAX as u64) as i64);
    (report.attachments_removed, report.attachment_bytes_removed) = delete_marked(
        conn,
        UNREFERENCED,
        "SELECT b.hash, b.len FROM gc_marks m JOIN blobs b ON b.hash = m.hash WHERE m.kind = ?1 AND m.since <= ?2",
        cutoff,
        &["blob_chunks", "blobs"],
        "attachments no document names",
    )?;
    // Downloads: a mark remembers the bytes received when it was made; progress since then renews it.
    conn.execute(
        "DELETE FROM gc_marks AS m WHERE m.kind = ?1 AND m.seen IS NOT
            (SELECT sum(length(data)) FROM partial_blobs p WHERE p.hash = m.hash)",
        params![STALLED],
    )?;
    conn.execute(
        "INSERT OR IGNORE INTO gc_marks (kind, hash, since, seen)
            SELECT ?1, hash, ?2, sum(length(data)) FROM partial_blobs GROUP BY hash",
        params![STALLED, now],
    )?;
    let cutoff = now.saturating_sub(policy.stalled_download_ms.min(i64::MAX as u64) as i64);
    (report.downloads_removed, report.download_bytes_removed) = delete_marked(
        conn,
        STALLED,
        "SELECT hash, seen FROM gc_marks WHERE kind = ?1 AND since <= ?2",
        cutoff,
        &["partial_blobs"],
        "stalled downloads",
    )?;
    Ok(report)
}

/// Deletes the rows of `tables` and the marks of `kind` for each hash `select` (bound to `kind` and `cutoff`) gives
/// with its size; returns how many hashes and bytes.
fn delete_marked(
    conn: &Connection,
    kind: i64,
    select: &str,
    cutoff: i64,
    tables: &[&str],
    what: &str,
) -> Result<(u64, u64)> {
    let doomed: Vec<(Vec<u8>, i64)> = conn
        .prepare(select)?
        .query_map(params![kind, cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let (mut count, mut bytes) = (0u64, 0u64);
    for (hash, size) in &doomed {
        for table in tables {
            conn.execute(&format!("DELETE FROM {table} WHERE hash = ?1"), params![hash])?;
        }
        conn.execute("DELETE FROM gc_marks WHERE kind = ?1 AND hash = ?2", params![kind, hash])?;
        count += 1;
        bytes += (*size).max(0) as u64;
    }
    if count > 0 {
        log::info!("garbage collection: {count} {what} ({bytes} bytes) deleted");
    }
    Ok((count, bytes))
}

/// One step of [`Store::vacuum`]: 512 free pages (2 MiB of 4 KiB pages) returned to the system; the store's writers
/// wait for at most one step. (A pragma takes no parameter.)
const VACUUM_STEP: &str = "PRAGMA incremental_vacuum(512)";

impl Store {
    /// Returns the file's free pages to the system, a [`VACUUM_STEP`] at a time with the store's lock let go
    /// between steps (each step is a transaction of its own), then writes the log back into the file, which
    /// shrinks. A store created before incremental vacuuming existed is rewritten once (`VACUUM`, in one go) to turn
    /// it on.
    pub(super) fn vacuum(&self) -> Result<()> {
        {
            let inner = self.lock();
            let mode: i64 = inner.conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
            if mode != 2 {
                log::info!("garbage collection: rewriting the store once to turn on incremental vacuuming");
                inner.conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")?;
            }
        }
        let free =
            |conn: &Connection| -> Result<i64> { Ok(conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?) };
        self.in_steps(|inner| {
            let before = free(&inner.conn)?;
            // Each step of the pragma frees one page: step it to its end.
            let mut stmt = inner.conn.prepare_cached(VACUUM_STEP)?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            drop(rows);
            drop(stmt);
            let after = free(&inner.conn)?;
            // Done when no free page is left, or when a step frees none (nothing more can be).
            if after == 0 || after >= before {
                // The file shrinks when the log is written back into it.
                super::checkpoints::checkpoint_whole(&inner.conn)?;
                return Ok(true);
            }
            Ok(false)
        })
    }
}

impl Store {
    /// What this store's file holds, by kind: documents and their views, the change log, snapshots, attachments,
    /// downloads in progress, free pages (see [`StorageStats`]). Reads every row's size: linear in the store, for
    /// a settings screen or a diagnostic, not for every frame.
    pub fn storage_stats(&self) -> Result<StorageStats> {
        self.read_views(None, |conn| stats(conn, self.path()))
    }

    /// Deletes what nothing here needs any more, as `policy` says (see [`GarbagePolicy`]): attachments no
    /// document names and downloads that stopped, each only once it has been so for the policy's period as seen
    /// by successive collections — so an app calls this now and then (at start, daily), and the first call only
    /// marks. Then returns the file's free pages to the system. Documents, removed documents and the change log
    /// are kept. Returns what was deleted.
    pub fn collect_garbage(&self, policy: &GarbagePolicy) -> Result<GarbageReport> {
        let mut inner = self.lock();
        inner.refresh()?;
        // Attachments are named by the documents' views: stale ones would hide a name.
        inner.flush_views(None)?;
        let file_bytes = |conn: &Connection| -> Result<u64> {
            let (page_size, pages, _) = pages(conn)?;
            Ok(page_size * pages)
        };
        let file_bytes_before = file_bytes(&inner.conn)?;
        let mut report = inner.immediate(|conn| sweep(conn, policy, inner.sources.now_ms()))?;
        drop(inner);
        if !super::in_memory(self.path()) {
            self.vacuum()?;
        }
        report.file_bytes_before = file_bytes_before;
        report.file_bytes_after = file_bytes(&self.lock().conn)?;
        Ok(report)
    }
}
