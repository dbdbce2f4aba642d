//! Loading and saving documents: a snapshot of the CRDT state plus the changes applied after it (read from the
//! change log through its per-document index), and a JSON view for reads and queries.
//!
//! An update costs one append to the change log plus one rewrite of the document's row (its view, without the large
//! values kept beside it). The snapshot is rewritten when the changes since the last one reach
//! [`SNAPSHOT_TAIL_RATIO`] times its size (at least 4 KiB, at most 1 MiB), which keeps the replay on load short — at
//! most two snapshots' worth of changes — and the write amplification a small constant: snapshots add half the
//! log's bytes (a 10 MiB document is rewritten once per megabyte of changes, not once per 64 KiB).
//!
//! The view of a large document (at least [`DEFERRED_VIEW_MIN_BYTES`]) follows a like rule: while the changes
//! since it was last written add up to less than [`VIEW_DEBT_RATIO`] times its size, a save leaves it behind and
//! marks it stale (`docs.stale`), and every read of views first writes the stale ones
//! ([`super::Inner::flush_views`]). Typing into a 100 KB text then costs what the keystrokes cost, not a 100 KB
//! rewrite per commit, and reads stay exact. A read renders a stale view once however far behind it is, so
//! leaving it longer costs reads nothing; the ratio bounds how many views a query may find stale.

use super::logrow::LogRow;
use crate::crdt::change::Change;
use crate::crdt::clock::{Dot, PeerId};
use crate::crdt::document::{Applied, Document};
use crate::crdt::json;
use crate::error::{Error, Result};
use crate::security::ChangeSignature;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};

/// A document in memory with what the snapshot policy needs to know.
#[derive(Clone, Debug, Default)]
pub(crate) struct CachedDoc {
    pub doc: Document,
    /// Encoded size of the last snapshot.
    pub snapshot_bytes: u64,
    /// Encoded size of the changes applied after it.
    pub tail_bytes: u64,
    /// The document's row number in `docs`, once it has one.
    pub row: Option<i64>,
    /// The large values kept beside its view (`view_parts`): register entry → location in the view.
    pub parts: BTreeMap<Dot, String>,
    /// Whether its stored view lags behind `doc` (`docs.stale`).
    pub view_stale: bool,
    /// Length of its stored view's text when it was written.
    pub view_bytes: u64,
    /// Encoded size of the changes saved since its view was written.
    pub view_debt: u64,
}

/// A change as it goes into a log: applied to a document in a transaction, or kept aside.
#[derive(Clone, Debug)]
pub struct LoggedChange {
    /// Its author.
    pub peer: PeerId,
    /// Its first counter.
    pub start: u64,
    /// Its last counter.
    pub end: u64,
    /// [`Change::encode`].
    pub body: Vec<u8>,
    /// [`super::replicate::change_hash`].
    pub hash: [u8; super::replicate::CHANGE_HASH_BYTES],
    /// [`super::replicate::change_digest`] (what its author signs).
    pub digest: [u8; 32],
    /// Its author's signature, encoded ([`ChangeSignature::encode`]); `None` when unsigned.
    pub signature: Option<Vec<u8>>,
    /// When it was made (its hybrid-logical-clock time, ms): what expiry measures a document's age by.
    pub made_ms: u64,
}

impl LoggedChange {
    /// The change `c` of the document `collection/id`, unsigned.
    pub fn of(collection: &str, id: &str, c: &Change) -> LoggedChange {
        let body = c.encode();
        let digest = super::replicate::change_digest(collection, id, &body);
        let hash = super::replicate::short_hash(&digest);
        let made_ms = c.ts.wall_ms();
        LoggedChange { peer: c.peer, start: c.start, end: c.end(), body, hash, digest, signature: None, made_ms }
    }

    /// The same change, carrying `signature`.
    pub fn with_signature(mut self, signature: Option<&ChangeSignature>) -> LoggedChange {
        self.signature = signature.map(ChangeSignature::encode);
        self
    }
}

/// A document's view as the store keeps it: the JSON text with large register values cut out, and those values.
pub(crate) struct StoredView {
    pub text: String,
    /// Every value cut out: its register entry, its location, and its JSON when the store does not hold it yet.
    pub parts: Vec<(Dot, String, Option<String>)>,
}

/// What [`save`] does with the document's view.
pub(crate) enum ViewWrite<'a> {
    /// Store this view (`None`: the document does not exist).
    Rendered(Option<&'a StoredView>),
    /// Leave the stored view behind and mark it stale (see [`may_defer_view`]).
    Deferred,
}

/// A snapshot is rewritten once the changes logged after it reach this many times its size (see the module's
/// documentation): a larger ratio writes less and replays more when a document is loaded.
pub(crate) const SNAPSHOT_TAIL_RATIO: u64 = 2;

/// A large document's stale view is written at a save once the changes since it was last written reach this many
/// times its size (see [`may_defer_view`]).
pub(crate) const VIEW_DEBT_RATIO: u64 = 4;

/// Views shorter than this (a page) are always written at once: rendering one costs little more than a stale read
/// would, and it is written within the document's row, not on pages of its own.
pub(crate) const DEFERRED_VIEW_MIN_BYTES: u64 = 4 * 1024;

/// Whether saving `cached` with changes of `bytes` bytes may leave its stored view stale: an existing document with
/// a view of at least [`DEFERRED_VIEW_MIN_BYTES`] whose changes since the view was written add up to less than
/// [`VIEW_DEBT_RATIO`] times the view. The view is then written once per that amount of changes (an edit's cost is
/// proportional to its size, amortized), and reads write stale views before they read.
pub(crate) fn may_defer_view(cached: &CachedDoc, bytes: u64) -> bool {
    cached.row.is_some()
        && cached.view_bytes >= DEFERRED_VIEW_MIN_BYTES
        && cached.view_debt.saturating_add(bytes) < cached.view_bytes.saturating_mul(VIEW_DEBT_RATIO)
        && cached.doc.exists()
}

/// Render the view of a document to store (`None` when it does not exist). Only large values the store does not
/// hold yet are rendered; the cost of the rest is proportional to the document without its large values.
pub(crate) fn render_view(cached: &CachedDoc, id: &str) -> Option<StoredView> {
    let cut = json::Cut::default();
    let text = json::to_string(cached.doc.json_view(Some(id), Some(&cut))?);
    let parts = cut
        .take_parts()
        .into_iter()
        .map(|p| {
            let json = (!cached.parts.contains_key(&p.dot)).then(|| json::to_string(json::ScalarJson(p.value)));
            (p.dot, p.location, json)
        })
        .collect();
    Some(StoredView { text, parts })
}

/// Parse a stored view (`parts`: how many values were cut out of it) and put those values back.
pub(crate) fn read_view(conn: &Connection, doc: i64, text: &str, parts: i64) -> Result<Json> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("stored view of document {doc}: {e}"));
    let mut view: Json = serde_json::from_str(text).map_err(|e| corrupt(&e))?;
    if parts == 0 {
        return Ok(view);
    }
    let mut stmt = conn.prepare_cached("SELECT location, json FROM view_parts WHERE doc = ?1")?;
    let mut rows = stmt.query(params![doc])?;
    while let Some(r) = rows.next()? {
        let location: Vec<Json> =
            serde_json::from_str(r.get_ref(0)?.as_str().map_err(|e| corrupt(&e))?).map_err(|e| corrupt(&e))?;
        let value: Json =
            serde_json::from_str(r.get_ref(1)?.as_str().map_err(|e| corrupt(&e))?).map_err(|e| corrupt(&e))?;
        let mut slot = &mut view;
        for step in &location {
            slot = match (step, slot) {
                (Json::String(k), Json::Object(m)) => m.get_mut(k.as_str()),
                (Json::Number(i), Json::Array(a)) => i.as_u64().and_then(|i| a.get_mut(i as usize)),
                _ => None,
            }
            .ok_or_else(|| corrupt(&"a value kept beside the view has no place in it"))?;
        }
        *slot = value;
    }
    Ok(view)
}

/// The row (`doc, view, parts`) of the one document `sql` selects.
fn view_row(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Option<(i64, Option<String>, i64)>> {
    Ok(conn.prepare_cached(sql)?.query_row(params, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?)
}

/// The stored JSON view of the one document `sql` selects with columns `doc, view, parts` (`None` when there is no
/// row, it was removed, or it is quarantined: one corrupt row breaks neither reads nor sync).
pub(crate) fn stored_view(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Option<Json>> {
    match view_row(conn, sql, params)? {
        Some((doc, Some(text), parts)) => quarantine_damaged(&doc, read_view(conn, doc, &text, parts)),
        _ => Ok(None),
    }
}

/// [`stored_view`] when the document's view is whole, read with one statement: `Some(view)`, or `None` when the
/// `parts` column is not 0: large values are kept beside it (read those with [`stored_view`] in a read transaction),
/// or the view is stale.
pub(crate) fn whole_view(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Option<Option<Json>>> {
    match view_row(conn, sql, params)? {
        Some((_, _, parts)) if parts != 0 => Ok(None),
        Some((doc, Some(text), _)) => Ok(Some(quarantine_damaged(&doc, read_view(conn, doc, &text, 0))?)),
        _ => Ok(Some(None)),
    }
}

/// The view of a row of `docs` whose columns `doc`, `view` and `parts` are at `columns` (read with [`read_view`]);
/// `None` (with a warning naming `what`) when it is damaged: the document is quarantined.
pub(crate) fn row_view(
    conn: &Connection,
    row: &rusqlite::Row<'_>,
    columns: [usize; 3],
    what: &dyn std::fmt::Display,
) -> Result<Option<Json>> {
    let [doc, view, parts] = columns;
    let text = row.get_ref(view)?.as_str().map_err(|e| Error::Corrupt(format!("stored view: {e}")));
    quarantine_damaged(what, text.and_then(|text| read_view(conn, row.get(doc)?, text, row.get(parts)?)))
}

/// A view read, or `None` (with a warning naming `what`) when it is damaged: the document is quarantined.
fn quarantine_damaged(what: &dyn std::fmt::Display, view: Result<Json>) -> Result<Option<Json>> {
    match view {
        Ok(view) => Ok(Some(view)),
        Err(Error::Corrupt(e)) => {
            log::warn!("document {what} quarantined: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub(crate) type DocKey = (String, String);

/// Documents kept decoded between transactions, bounded by an estimate of their memory (a few times their encoded
/// size). When over budget, the least recently used quarter is dropped in one pass, so bookkeeping per use is a
/// counter rather than an ordered index.
pub(crate) struct DocCache {
    docs: HashMap<DocKey, (CachedDoc, u64, usize)>,
    tick: u64,
    bytes: usize,
    budget: usize,
}

impl CachedDoc {
    /// Rough heap size of the decoded document.
    fn estimated_bytes(&self) -> usize {
        ((self.snapshot_bytes + self.tail_bytes) as usize).saturating_mul(4).saturating_add(256)
    }
}

impl DocCache {
    pub fn new(budget: usize) -> Self {
        DocCache { docs: HashMap::new(), tick: 0, bytes: 0, budget }
    }

    pub fn take(&mut self, key: &DocKey) -> Option<CachedDoc> {
        let (doc, _, size) = self.docs.remove(key)?;
        self.bytes -= size;
        Some(doc)
    }

    pub fn put(&mut self, key: DocKey, doc: CachedDoc) {
        self.tick += 1;
        let size = doc.estimated_bytes();
        self.bytes += size;
        if let Some((_, _, old)) = self.docs.insert(key, (doc, self.tick, size)) {
            self.bytes -= old;
        }
        if self.bytes > self.budget {
            self.shrink();
        }
    }

    /// Drop the least recently used documents until at most three quarters of the budget is used.
    fn shrink(&mut self) {
        let mut by_use: Vec<(u64, usize)> = self.docs.values().map(|(_, tick, size)| (*tick, *size)).collect();
        by_use.sort_unstable();
        let target = self.budget / 4 * 3;
        let mut bytes = self.bytes;
        let mut cutoff = 0;
        for (tick, size) in by_use {
            if bytes <= target {
                break;
            }
            bytes -= size;
            cutoff = tick;
        }
        self.docs.retain(|_, (_, tick, _)| *tick > cutoff);
        self.bytes = bytes;
    }

    pub fn remove(&mut self, key: &DocKey) {
        self.take(key);
    }

    pub fn clear(&mut self) {
        self.docs.clear();
        self.bytes = 0;
    }
}

/// The row number of a document, if the store has one.
pub(crate) fn row_of(conn: &Connection, collection: &str, id: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT doc FROM docs WHERE collection = ?1 AND id = ?2")?
        .query_row(params![collection, id], |r| r.get(0))
        .optional()?)
}

/// Load a document: its snapshot, then the changes it received after the snapshot, in the order they were applied.
pub(crate) fn load(conn: &Connection, collection: &str, id: &str) -> Result<Option<CachedDoc>> {
    let row: Option<(i64, i64, i64, bool, i64)> = conn
        .prepare_cached(
            "SELECT doc, snap_seq, parts, stale, coalesce(length(CAST(view AS BLOB)), 0) FROM docs \
             WHERE collection = ?1 AND id = ?2",
        )?
        .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .optional()?;
    let Some((row, snap_seq, n_parts, view_stale, view_bytes)) = row else { return Ok(None) };
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("{collection}/{id}: {e}"));
    let state: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM snapshots WHERE doc = ?1")?
        .query_row(params![row], |r| r.get(0))
        .optional()?;
    // A snapshot that does not decode is only a cache of the document's changes, all kept in the log: the
    // document is rebuilt from them (and its next save writes a good snapshot).
    let (mut doc, snapshot_bytes, from_seq) = match state.map(|s| (Document::decode(&s), s.len() as u64)) {
        Some((Ok(doc), len)) => (doc, len, snap_seq),
        Some((Err(e), _)) => {
            log::warn!("{collection}/{id}: stored snapshot does not decode ({e}); rebuilding it from the change log");
            (Document::new(), 0, 0)
        }
        None => (Document::new(), 0, snap_seq),
    };
    let mut tail_bytes = 0u64;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM changes WHERE doc = ?1 AND seq > ?2 ORDER BY seq",
        super::logrow::COLUMNS
    ))?;
    let mut rows = stmt.query(params![row, from_seq])?;
    while let Some(r) = rows.next()? {
        let logged = LogRow::read(r, 0)?;
        tail_bytes += logged.body.len() as u64;
        for part in logged.parts()? {
            let change = Change::decode(part.body).map_err(|e| corrupt(&e))?;
            match doc.apply_validated(&change) {
                Ok(Applied::Applied) | Ok(Applied::Duplicate) => {}
                Ok(Applied::NotReady) => return Err(corrupt(&"stored change out of causal order")),
                Err(e) => return Err(corrupt(&e)),
            }
        }
    }
    drop(rows);
    let mut parts = BTreeMap::new();
    if n_parts > 0 {
        let mut stmt = conn.prepare_cached("SELECT peer, counter, location FROM view_parts WHERE doc = ?1")?;
        let mut rows = stmt.query(params![row])?;
        while let Some(r) = rows.next()? {
            parts.insert(Dot::new(PeerId(r.get::<_, i64>(0)? as u64), r.get::<_, i64>(1)? as u64), r.get(2)?);
        }
    }
    Ok(Some(CachedDoc {
        doc,
        snapshot_bytes,
        tail_bytes,
        row: Some(row),
        parts,
        view_stale,
        view_bytes: view_bytes as u64,
        // Unknown after a reload: the next save writes the view if it is stale.
        view_debt: if view_stale { u64::MAX } else { 0 },
    }))
}

/// A document the store cannot read (see [`crate::Store::quarantined`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// The document's collection.
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// What does not decode.
    pub reason: String,
}

/// Every document whose stored view, or whose CRDT state (snapshot and change log together), cannot be read.
/// Linear in the store: a diagnostic, not a query.
pub(crate) fn quarantined(conn: &Connection) -> Result<Vec<Quarantined>> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare("SELECT doc, collection, id, view, parts FROM docs ORDER BY collection, id")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (doc, collection, id): (i64, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
        let view = match r.get_ref(3)? {
            rusqlite::types::ValueRef::Null => Ok(()),
            v => v
                .as_str()
                .map_err(|e| Error::Corrupt(e.to_string()))
                .and_then(|text| read_view(conn, doc, text, r.get(4)?).map(|_| ())),
        };
        let reason = match view.and_then(|()| load(conn, &collection, &id).map(|_| ())) {
            Ok(()) => continue,
            Err(e) => e.to_string(),
        };
        out.push(Quarantined { collection, id, reason });
    }
    Ok(out)
}

/// Persist a document after `changes` were applied to it: the changes are appended to the log, its row gets the
/// new view (or is marked stale, [`ViewWrite::Deferred`]) with the large values beside it, and a new snapshot is
/// written when the changes since the last one have grown enough — or always, with `resnapshot` (its state took in
/// what no logged change holds: a merged state).
pub(crate) fn save(
    conn: &Connection,
    collection: &str,
    id: &str,
    cached: &mut CachedDoc,
    changes: &[LoggedChange],
    view: ViewWrite<'_>,
    resnapshot: bool,
) -> Result<()> {
    let rendered = match view {
        ViewWrite::Rendered(v) => Some(v),
        ViewWrite::Deferred => None,
    };
    let row = match cached.row {
        Some(row) => row,
        None => {
            let v = rendered.flatten();
            conn.prepare_cached("INSERT INTO docs (collection, id, view, parts, stale) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![
                collection,
                id,
                v.map(|v| v.text.as_str()),
                v.map_or(0, |v| v.parts.len() as i64),
                rendered.is_none()
            ])?;
            conn.last_insert_rowid()
        }
    };
    let mut insert = conn.prepare_cached(
        "INSERT INTO changes (peer, start, end, doc, body, hash, sig, parts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut last_seq = 0;
    let mut bytes = 0;
    for run in super::logrow::runs(changes) {
        let (first, last) = (&run[0], &run[run.len() - 1]);
        let (peer, start, end) = (first.peer.0 as i64, first.start as i64, last.end as i64);
        if let [c] = run {
            bytes += c.body.len() as u64;
            insert.execute(params![peer, start, end, row, c.body, &c.hash[..], c.signature, None::<Vec<u8>>])?;
        } else {
            let (body, hashes, parts) = super::logrow::encode_run(run);
            bytes += body.len() as u64;
            insert.execute(params![peer, start, end, row, body, hashes, None::<Vec<u8>>, parts])?;
        }
        last_seq = conn.last_insert_rowid();
    }
    let made = changes.iter().map(|c| c.made_ms).max().map(|m| m.min(i64::MAX as u64) as i64);
    // The version goes with the document's changes when they are sent (`sync::first_copy`).
    conn.prepare_cached(
        "UPDATE docs SET modified = CASE WHEN ?2 IS NULL THEN modified ELSE max(coalesce(modified, 0), ?2) END, \
         version = ?3 WHERE doc = ?1",
    )?
    .execute(params![row, made, cached.doc.version().to_bytes()])?;
    cached.tail_bytes += bytes;
    let due = cached.snapshot_bytes.saturating_mul(SNAPSHOT_TAIL_RATIO).clamp(4 * 1024, 1 << 20);
    let snapshot = resnapshot || cached.tail_bytes >= due;
    if snapshot && last_seq == 0 {
        // No change logged now: the snapshot holds every change of the log.
        last_seq = last_logged(conn, row)?;
    }
    if snapshot {
        let state = cached.doc.encode();
        write_snapshot(conn, row, &cached.doc, &state)?;
        cached.snapshot_bytes = state.len() as u64;
        cached.tail_bytes = 0;
        conn.prepare_cached("UPDATE docs SET snap_seq = ?2 WHERE doc = ?1")?.execute(params![row, last_seq])?;
    }
    let inserted = cached.row.is_none();
    cached.row = Some(row);
    match rendered {
        Some(view) => store_view(conn, row, cached, view, !inserted),
        None => {
            if !cached.view_stale && !inserted {
                conn.prepare_cached("UPDATE docs SET stale = 1 WHERE doc = ?1")?.execute(params![row])?;
            }
            cached.view_stale = true;
            cached.view_debt = cached.view_debt.saturating_add(bytes);
            Ok(())
        }
    }
}

/// Write document `row`'s view (`None`: it does not exist) and the large values and attachment references beside
/// it, and mark it fresh; `update_row`: the row's own columns too (a row just inserted has them).
fn store_view(
    conn: &Connection,
    row: i64,
    cached: &mut CachedDoc,
    view: Option<&StoredView>,
    update_row: bool,
) -> Result<()> {
    save_parts(conn, row, cached, view.map_or(&[][..], |v| &v.parts))?;
    if let Some(view) = view {
        let texts = std::iter::once(view.text.as_str()).chain(view.parts.iter().filter_map(|p| p.2.as_deref()));
        save_attachment_refs(conn, row, texts)?;
    }
    let text = view.map(|v| v.text.as_str());
    if update_row {
        conn.prepare_cached("UPDATE docs SET view = ?2, parts = ?3, stale = 0 WHERE doc = ?1")?.execute(params![
            row,
            text,
            view.map_or(0, |v| v.parts.len() as i64)
        ])?;
    }
    cached.view_stale = false;
    cached.view_bytes = text.map_or(0, |t| t.len() as u64);
    cached.view_debt = 0;
    Ok(())
}

/// Write the stale view of document `id` (see [`ViewWrite::Deferred`]).
pub(crate) fn refresh_view(conn: &Connection, id: &str, cached: &mut CachedDoc) -> Result<()> {
    let Some(row) = cached.row else { return Ok(()) };
    let view = render_view(cached, id);
    store_view(conn, row, cached, view.as_ref(), true)
}

/// The documents whose stored views are stale, of `collection` or of every collection (a scan of the partial
/// index `docs_stale`, which holds only those).
pub(crate) fn stale_views(conn: &Connection, collection: Option<&str>) -> Result<Vec<(String, String)>> {
    Ok(conn
        .prepare_cached("SELECT collection, id FROM docs WHERE stale = 1 AND (?1 IS NULL OR collection = ?1)")?
        .query_map(params![collection], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?)
}

/// Whether some stored view (of `collection`, or of any) is stale: a lookup in the partial index `docs_stale`.
pub(crate) fn any_stale(conn: &Connection, collection: Option<&str>) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM docs WHERE stale = 1 AND (?1 IS NULL OR collection = ?1))")?
        .query_row(params![collection], |r| r.get(0))?)
}

/// The `seq` of document `row`'s last change in the log (0 when none is).
pub(crate) fn last_logged(conn: &Connection, row: i64) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM changes WHERE doc = ?1")?
        .query_row(params![row], |r| r.get(0))?)
}

/// Store `state`, the encoding of `doc`, as document `row`'s snapshot (its position, `docs.snap_seq`, is the
/// caller's to set).
pub(crate) fn write_snapshot(conn: &Connection, row: i64, doc: &Document, state: &[u8]) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO snapshots (doc, state, tombstones) VALUES (?1, ?2, ?3) \
         ON CONFLICT (doc) DO UPDATE SET state = ?2, tombstones = ?3",
    )?
    .execute(params![row, state, doc.tombstones().min(i64::MAX as u64) as i64])?;
    Ok(())
}

/// How an attachment token starts in a rendered view (`AttachmentToken::to_json`, compact JSON). Inside a JSON
/// string the quotes would be escaped, so only an object key `_attachment` with a string value reads so.
const TOKEN_PREFIX: &str = "\"_attachment\":\"";

/// The hashes of the attachment tokens in `json` (a rendered view or value): what a replica indexes to find the
/// documents that name an attachment.
pub fn attachment_hashes(json: &str) -> impl Iterator<Item = [u8; 32]> + '_ {
    json.match_indices(TOKEN_PREFIX)
        .filter_map(|(at, _)| json.get(at + TOKEN_PREFIX.len()..at + TOKEN_PREFIX.len() + 64))
        .filter_map(crate::util::parse_hex::<32>)
}

/// Record that document `row` refers to the attachments named in `texts` (its new view and values; see the
/// `attachment_refs` table).
fn save_attachment_refs<'a>(conn: &Connection, row: i64, texts: impl Iterator<Item = &'a str>) -> Result<()> {
    for text in texts {
        for hash in attachment_hashes(text) {
            conn.prepare_cached("INSERT OR IGNORE INTO attachment_refs (hash, doc) VALUES (?1, ?2)")?
                .execute(params![&hash[..], row])?;
        }
    }
    Ok(())
}

/// Bring `view_parts` of document `row` to `parts`: new values inserted, moved ones relocated, gone ones deleted.
fn save_parts(
    conn: &Connection,
    row: i64,
    cached: &mut CachedDoc,
    parts: &[(Dot, String, Option<String>)],
) -> Result<()> {
    if parts.is_empty() && cached.parts.is_empty() {
        return Ok(());
    }
    let mut now = BTreeMap::new();
    for (dot, location, json) in parts {
        match (cached.parts.remove(dot), json) {
            (None, Some(json)) => {
                conn.prepare_cached(
                    "INSERT INTO view_parts (doc, peer, counter, location, json) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![row, dot.peer.0 as i64, dot.counter as i64, location, json])?;
            }
            (None, None) => return Err(Error::Corrupt(format!("value {dot:?} of document {row} was not rendered"))),
            (Some(old), _) if old != *location => {
                conn.prepare_cached(
                    "UPDATE view_parts SET location = ?4 WHERE doc = ?1 AND peer = ?2 AND counter = ?3",
                )?
                .execute(params![row, dot.peer.0 as i64, dot.counter as i64, location])?;
            }
            (Some(_), _) => {}
        }
        now.insert(*dot, location.clone());
    }
    for dot in std::mem::replace(&mut cached.parts, now).into_keys() {
        conn.prepare_cached("DELETE FROM view_parts WHERE doc = ?1 AND peer = ?2 AND counter = ?3")?
            .execute(params![row, dot.peer.0 as i64, dot.counter as i64])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> DocKey {
        ("c".to_string(), format!("d{i}"))
    }

    fn doc() -> CachedDoc {
        CachedDoc { tail_bytes: 100, ..Default::default() }
    }

    #[test]
    fn cache_keeps_recently_used_documents_within_budget() {
        let size = doc().estimated_bytes();
        let mut cache = DocCache::new(size * 8);
        for i in 0..8 {
            cache.put(key(i), doc());
        }
        assert_eq!(cache.bytes, size * 8);
        // Use document 0 again: it becomes the most recent.
        let d0 = cache.take(&key(0)).expect("cached");
        cache.put(key(0), d0);
        cache.put(key(8), doc());
        assert!(cache.bytes <= size * 8, "over budget: {}", cache.bytes);
        assert!(cache.take(&key(0)).is_some(), "recently used document dropped");
        assert!(cache.take(&key(8)).is_some(), "newest document dropped");
        assert!(cache.take(&key(1)).is_none(), "least recently used document kept");
        // Putting a document again replaces it without counting it twice.
        cache.clear();
        cache.put(key(1), doc());
        cache.put(key(1), doc());
        assert_eq!(cache.bytes, size);
    }
}
