//! Attested states in a store (issue 17, certificate mode; see [`crate::security::attestation`]).
//!
//! Table `attested` keeps, per document, the last state an attester signed that this store took: made here by
//! [`Store::attest`] (an attester), or received and checked. A store with a signing key (enrolled) folds a change
//! into a snapshot only when its document's attested state holds it ([`super::compaction`]), and sends a device
//! that lacks folded changes that attested state ([`Inner::attested_states_missing`]) — not a state of its own,
//! which nobody could check.

use super::{AttestedState, Inner, Store, Summary};
use crate::error::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// What [`Store::attest`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttestReport {
    /// Documents whose state was signed.
    pub documents: u64,
    /// Bytes of those states.
    pub bytes: u64,
}

/// The columns [`attested_from`] reads, from `attested a` joined with `docs d`.
const STATE_COLUMNS: &str = "d.collection, d.id, a.state, a.attester, a.signature";

/// The attested state of a row whose columns from `at` on are [`STATE_COLUMNS`], holding `changes`.
fn attested_from(r: &rusqlite::Row<'_>, at: usize, changes: Summary) -> Result<AttestedState> {
    let signature: Vec<u8> = r.get(at + 4)?;
    let signature = crate::security::Signature(
        signature.try_into().map_err(|_| Error::Corrupt("an attestation's signature".to_string()))?,
    );
    let state = super::DocState { collection: r.get(at)?, doc_id: r.get(at + 1)?, state: r.get(at + 2)?, changes };
    let attester = crate::PeerId(r.get::<_, i64>(at + 3)? as u64);
    Ok(AttestedState { state, attestation: crate::security::Attestation { device: attester, signature } })
}

/// The changes the attested state kept for document `row` holds.
pub(super) fn attested_changes_of(conn: &Connection, row: i64) -> Result<Option<Summary>> {
    let changes: Option<Option<Vec<u8>>> = conn
        .prepare_cached(&format!("SELECT {CHANGES} FROM attested a WHERE a.doc = ?1"))?
        .query_row(params![row], |r| r.get(0))
        .optional()?;
    changes.map(|c| decode_changes(c.as_deref().unwrap_or_default())).transpose()
}

/// An attested state's changes in SQL, from `attested a`: its own record (`attested_changes`), or — with none —
/// the document's record of folded changes, the same (a document whose changes were all folded under its attested
/// state, the usual case after a compaction, keeps the record once).
const CHANGES: &str = "coalesce((SELECT c.changes FROM attested_changes c WHERE c.doc = a.doc), \
                       (SELECT f.summary FROM folded f WHERE f.doc = a.doc))";

/// Document `row`'s attested state holds `changes`, and its record of folded changes is `folded`: the state's own
/// record of them is kept when they differ, and dropped when they are the same.
fn set_changes(conn: &Connection, row: i64, changes: &Summary, folded: &Summary) -> Result<()> {
    if changes == folded {
        conn.prepare_cached("DELETE FROM attested_changes WHERE doc = ?1")?.execute(params![row])?;
    } else {
        conn.prepare_cached(
            "INSERT INTO attested_changes (doc, changes) VALUES (?1, ?2) ON CONFLICT (doc) DO UPDATE SET changes = ?2",
        )?
        .execute(params![row, changes.encode_dense()])?;
    }
    Ok(())
}

/// Document `row`'s record of folded changes becomes `folded` (see [`set_changes`]).
pub(super) fn folded_changing(conn: &Connection, row: i64, folded: &Summary) -> Result<()> {
    match attested_changes_of(conn, row)? {
        Some(changes) => set_changes(conn, row, &changes, folded),
        None => Ok(()),
    }
}

fn decode_changes(blob: &[u8]) -> Result<Summary> {
    Summary::decode_dense(blob).map_err(|e| Error::Corrupt(format!("the changes of an attested state: {e}")))
}

/// Keep `attested` for document `row` when it holds more than the one kept (two attesters' states can each hold
/// changes the other lacks; the first stays), numbered one past every state kept before. Whether it was kept.
pub(super) fn keep(conn: &Connection, row: i64, attested: &AttestedState) -> Result<bool> {
    if let Some(old) = attested_changes_of(conn, row)? {
        if !old.difference(&attested.state.changes).is_empty() || attested.state.changes.difference(&old).is_empty() {
            return Ok(false);
        }
    }
    let (state, attestation) = (&attested.state, &attested.attestation);
    conn.prepare_cached(
        "INSERT INTO attested (doc, seq, state, attester, signature) \
         VALUES (?1, (SELECT coalesce(max(seq), 0) + 1 FROM attested), ?2, ?3, ?4) \
         ON CONFLICT (doc) DO UPDATE SET seq = excluded.seq, state = ?2, attester = ?3, signature = ?4",
    )?
    .execute(params![row, state.state, attestation.device.0 as i64, &attestation.signature.0[..]])?;
    set_changes(conn, row, &state.changes, &super::compaction::folded_of(conn, row)?)?;
    Ok(true)
}

/// The number of the last attested state kept (0: none).
pub(super) fn last_seq(conn: &Connection) -> Result<i64> {
    Ok(conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM attested")?.query_row([], |r| r.get(0))?)
}

/// The attested states kept after number `after` that hold some of `held` (a peer holds those changes and may fold
/// them), in the order they were kept, about `max_bytes` of them; and the number of the last one looked at.
pub(super) fn kept_after(
    conn: &Connection,
    after: i64,
    held: &Summary,
    max_bytes: usize,
) -> Result<(Vec<(i64, AttestedState)>, i64)> {
    let sql = format!(
        "SELECT a.doc, a.seq, {CHANGES}, {STATE_COLUMNS} FROM attested a JOIN docs d ON d.doc = a.doc \
         WHERE a.seq > ?1 ORDER BY a.seq"
    );
    overlapping_rows(conn, &sql, after, held, max_bytes)
}

/// The attested states kept that hold some of `want`, from document `from_doc` on, about `max_bytes` of them.
pub(super) fn overlapping(
    conn: &Connection,
    want: &Summary,
    from_doc: i64,
    max_bytes: usize,
) -> Result<Vec<(i64, AttestedState)>> {
    let sql = format!(
        "SELECT a.doc, a.doc, {CHANGES}, {STATE_COLUMNS} FROM attested a JOIN docs d ON d.doc = a.doc \
         WHERE a.doc >= ?1 ORDER BY a.doc"
    );
    Ok(overlapping_rows(conn, &sql, from_doc, want, max_bytes)?.0)
}

/// The attested states of the rows of `sql` (document, position, changes, then [`STATE_COLUMNS`]; from position
/// `from` on) that hold some of `with`, about `max_bytes` of them; and the position of the last row looked at. (A
/// state's bytes are read only for a state taken: SQLite reads a blob's overflow pages when it is asked for.)
fn overlapping_rows(
    conn: &Connection,
    sql: &str,
    from: i64,
    with: &Summary,
    max_bytes: usize,
) -> Result<(Vec<(i64, AttestedState)>, i64)> {
    let mut out = Vec::new();
    let (mut bytes, mut last) = (0usize, from);
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![from])?;
    while let Some(r) = rows.next()? {
        if bytes >= max_bytes {
            break;
        }
        last = r.get(1)?;
        let changes = decode_changes(r.get::<_, Option<Vec<u8>>>(2)?.as_deref().unwrap_or_default())?;
        if changes.intersects(with) {
            let attested = attested_from(r, 3, changes)?;
            bytes += attested.state.state.len();
            out.push((r.get(0)?, attested));
        }
    }
    Ok((out, last))
}

/// The changes in the log that no attested state kept holds (with certificates they are signed, but for those
/// written before the device was enrolled): what this store holds but did not fold, less what attested states hold —
/// from the summaries kept in memory and one read of the attested states' records, not from the log.
pub(super) fn wanted(inner: &Inner) -> Result<Summary> {
    let mut attested = Summary::new();
    let mut stmt = inner.conn.prepare_cached(&format!("SELECT {CHANGES} FROM attested a"))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        attested.union_with(&decode_changes(r.get::<_, Option<Vec<u8>>>(0)?.as_deref().unwrap_or_default())?);
    }
    Ok(inner.held.difference(&inner.folded).difference(&attested))
}

impl Store {
    /// Sign the current state of every document whose log holds changes its last attested state lacks, in the
    /// collections this device may attest (an `attest` grant in its certificate: see
    /// [`crate::security::attestation`]), and keep each. Devices take these states in place of the changes they
    /// hold, so they can fold those changes ([`Store::compact`]). An attester calls it now and then (a server
    /// after each batch of work, a supervisor's device daily), before compacting. A transaction per few dozen
    /// documents, the store's other writers let in between; the cost is one encoding and one signature per
    /// document signed.
    ///
    /// # Errors
    /// [`Error::NotPermitted`] when this device is not enrolled or its certificate has no `attest` grant.
    pub fn attest(&self) -> Result<AttestReport> {
        let (key, permissions, chain, docs) = {
            let mut inner = self.lock();
            inner.refresh()?;
            let not_permitted = |reason: &str| Error::NotPermitted {
                collection: String::new(),
                id: String::new(),
                reason: reason.to_string(),
            };
            let key = inner.signer.as_ref().map(|(k, _)| k.clone()).ok_or_else(|| not_permitted("not enrolled"))?;
            let permissions = inner.own_permissions.clone().ok_or_else(|| not_permitted("no certificate installed"))?;
            if !permissions.0.attests_anything() {
                return Err(not_permitted("the device's certificate has no `attest` grant"));
            }
            let chain = super::inner::meta_get(&inner.conn, super::inner::CHAIN_META)?;
            let mut docs = super::compaction::logged_docs(&inner.conn)?;
            docs.retain(|(_, collection, _)| permissions.0.may_attest(collection));
            (key, permissions, chain, docs)
        };
        // A transaction per few dozen documents, the store's lock let go between them (as `compact` does).
        let mut report = AttestReport::default();
        let mut parts = docs.chunks(ATTEST_DOCS_PER_TRANSACTION).enumerate();
        self.in_steps(|inner| {
            let Some((n, part)) = parts.next() else { return Ok(true) };
            inner.refresh()?;
            let mut signed = Vec::new();
            for (row, collection, id) in part {
                // The changes its state holds, against those its kept attested state does: encoded only when new.
                let changes = inner.state_changes(*row, super::compaction::folded_of(&inner.conn, *row)?)?;
                let kept = attested_changes_of(&inner.conn, *row)?;
                if kept.is_some_and(|k| changes.difference(&k).is_empty()) {
                    continue;
                }
                let mut out = Vec::new();
                inner.push_state(*row, collection.clone(), id.clone(), changes, &mut out)?;
                let Some((_, state)) = out.pop() else { continue };
                if state.state.len() > super::MAX_STATE_BYTES {
                    log::info!("{collection}/{id}: not attested: its state is too large to send");
                    continue;
                }
                let attestation = crate::security::Attestation::sign(&key, &state);
                signed.push((*row, AttestedState { state, attestation }));
            }
            inner.immediate(|conn| {
                // This device's chain, to send ahead of the states it signed (as a signer's chain goes ahead of
                // its changes).
                if let Some(chain) = chain.as_ref().filter(|_| n == 0) {
                    super::replica::keep_certificate(conn, permissions.1, chain)?;
                }
                for (row, attested) in &signed {
                    if keep(conn, *row, attested)? {
                        report.documents += 1;
                        report.bytes += attested.state.state.len() as u64;
                    }
                }
                Ok(())
            })?;
            Ok(parts.len() == 0)
        })?;
        log::info!("store {}: attested {} documents ({} bytes)", self.peer_id(), report.documents, report.bytes);
        if report.documents > 0 {
            // Sync sends them on to the devices that hold their changes.
            self.notify_commit();
        }
        Ok(report)
    }
}

/// How many documents one transaction of [`Store::attest`] looks at (each encoded and signed when new).
const ATTEST_DOCS_PER_TRANSACTION: usize = 64;

impl Inner {
    /// The attested states of the documents with folded changes in neither `have` nor `skip` (see
    /// [`super::Replica::attested_states_missing`]). A document whose attested state lacks some of those is left
    /// out (its folded changes were folded without one: by a build before attested states, or unsigned before
    /// this device was enrolled).
    pub(super) fn attested_states_missing(
        &mut self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut from = from_doc;
        while bytes < max_bytes {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT f.doc, f.summary, coalesce(c.changes, f.summary), {STATE_COLUMNS} FROM folded f \
                 JOIN attested a ON a.doc = f.doc JOIN docs d ON d.doc = f.doc \
                 LEFT JOIN attested_changes c ON c.doc = f.doc WHERE f.doc >= ?1 ORDER BY f.doc LIMIT 64"
            ))?;
            let mut rows = stmt.query(params![from])?;
            let mut looked_at = 0;
            while let Some(r) = rows.next()? {
                if bytes >= max_bytes {
                    break;
                }
                looked_at += 1;
                let row: i64 = r.get(0)?;
                from = row + 1;
                let folded = Summary::decode_dense(&r.get::<_, Vec<u8>>(1)?)
                    .map_err(|e| Error::Corrupt(format!("folded changes of a document: {e}")))?;
                let missing = folded.difference(have).difference(skip);
                if missing.is_empty() {
                    continue;
                }
                let attested = decode_changes(&r.get::<_, Vec<u8>>(2)?)?;
                if !missing.difference(&attested).is_empty() {
                    log::warn!("document {row}: a device lacks folded changes its attested state does not hold");
                    continue;
                }
                let attested = attested_from(r, 3, attested)?;
                bytes += attested.state.state.len();
                out.push((row, attested));
            }
            if looked_at < 64 {
                break;
            }
        }
        Ok(out)
    }
}
