//! Documents' states merged from devices that folded changes into their snapshots (issue 17: see
//! `shoaldb::store::compaction`), and served to devices that lack changes the cloud holds only that way.
//!
//! A device that compacted sends a document's whole state, with exactly the changes it holds, in place of changes
//! it no longer has. The cloud merges it as a phone does ([`Document::join`]: exactly equivalent to applying those
//! changes, removals included), in one transaction under the same locks as a batch of changes (the document, then
//! its authors). The changes it brought are held from then on — in `held`, as changes are — with no log row:
//! `folded` records them per document and `folded_held` per author, so that a device lacking some of them is sent
//! the document's state (never a change the cloud does not have), and such a change received again is a duplicate.
//! Each merge is journalled in `merged`, numbered in the change log's sequence with its transaction, for the other
//! relays' summaries and for the back office's feed. Changes kept aside that the state made ready are applied.

use super::{pg, AuthorRanges, Batch, Locks, PgReplica};
use crate::pg::Tx;
use shoaldb::security::{Attestation, ChangeCheck};
use shoaldb::store::judge::{self, Ledger};
use shoaldb::{ApplyReport, DocState, Document, Error, PeerId, Result, Summary};
use std::collections::BTreeMap;

/// How many documents with folded changes one statement looks at while looking for those a peer lacks.
const FOLDED_PAGE: i64 = 64;

/// What merging states (or compacting the log: [`super::compaction`]) did to a document.
pub(super) struct MergedDoc {
    /// Every change folded into the document's state (what was recorded before, and what was added).
    pub(super) record: Summary,
    /// The changes the batch's states brought, or the compaction folded (held only folded from now on).
    pub(super) added: Summary,
}

/// What a compaction folded out of the log, written with its records ([`persist_merges`]).
pub(super) struct Compacted {
    /// The log rows gone.
    pub(super) gone: Vec<i64>,
    /// The newest of them, (transaction, row): the feed's floor.
    pub(super) floor: (u64, i64),
}

impl PgReplica {
    /// Merge `states` in one transaction (see [`shoaldb::store::Replica::apply_states`]), the changes kept aside
    /// that they make ready through `check` (certificate mode); those with an attestation (already checked:
    /// [`shoaldb::Replica::apply_attested_states`]) are kept too ([`super::attested::keep`]). A malformed state
    /// fails the call before anything is read; one the merge finds inconsistent with what it holds fails it with
    /// nothing written.
    pub(super) fn merge_states(
        &self,
        states: &[(&DocState, Option<&Attestation>)],
        check: Option<&dyn ChangeCheck>,
    ) -> Result<ApplyReport> {
        let docs: Vec<Document> = states.iter().map(|(s, _)| s.decode_checked()).collect::<Result<_>>()?;
        if states.is_empty() {
            return Ok(ApplyReport::default());
        }
        let keys = states.iter().flat_map(|(s, _)| {
            let doc = super::lock_key(s.collection.as_bytes(), s.doc_id.as_bytes());
            std::iter::once((1, doc))
                .chain(s.changes.peers().map(|(a, _)| (2, super::lock_key(&a.0.to_le_bytes(), b""))))
        });
        match self.merge_under(states, &docs, check, super::lock_all(keys)) {
            Err(e) if super::is_outside_locks(&e) => self.merge_under(states, &docs, check, Locks::Database),
            other => other,
        }
    }

    /// [`PgReplica::merge_states`] of `states` (decoded: `docs`) under `locks`.
    fn merge_under(
        &self,
        states: &[(&DocState, Option<&Attestation>)],
        docs: &[Document],
        check: Option<&dyn ChangeCheck>,
        locks: Locks,
    ) -> Result<ApplyReport> {
        let mut client = self.client()?;
        let mut tx = client.transaction().map_err(pg)?;
        locks.take(&mut tx)?;
        let mut batch = Batch::new(&mut tx, locks);
        for ((s, _), theirs) in states.iter().zip(docs) {
            batch.merge_state(s, theirs, check)?;
        }
        let wrote = batch.persist()?;
        let report = std::mem::take(&mut batch.judged.report);
        let (held, folded) = (std::mem::take(&mut batch.held), std::mem::take(&mut batch.folded));
        let added: Vec<(PeerId, u64)> = batch.judged.added.keys().copied().collect();
        // The attested ones, kept under their documents' numbers (a state that brought nothing new is kept too: the
        // cloud may then fold the changes it holds).
        let attested: Vec<(&DocState, &Attestation)> = states.iter().filter_map(|(s, a)| Some((*s, (*a)?))).collect();
        if !attested.is_empty() {
            let (collections, ids): (Vec<&str>, Vec<&str>) =
                attested.iter().map(|(s, _)| (s.collection.as_str(), s.doc_id.as_str())).unzip();
            let nums: BTreeMap<(String, String), i64> = tx
                .query(
                    "SELECT d.collection, d.doc_id, d.num FROM docs d \
                     JOIN unnest($1::text[], $2::text[]) AS k(c, i) ON d.collection = k.c AND d.doc_id = k.i",
                    &[&collections, &ids],
                )
                .map_err(pg)?
                .iter()
                .map(|r| ((r.get(0), r.get(1)), r.get(2)))
                .collect();
            let numbered: Vec<(i64, &DocState, &Attestation)> = attested
                .iter()
                .filter_map(|&(s, a)| Some((*nums.get(&(s.collection.clone(), s.doc_id.clone()))?, s, a)))
                .collect();
            super::attested::keep(&mut tx, &numbered)?;
        }
        tx.commit().map_err(pg)?;
        log::debug!("merged {} document states: {report:?}", states.len());
        if wrote {
            self.committed(&held, &folded, &added);
        }
        Ok(report)
    }

    /// The changes folded into the state of document `doc` (see [`shoaldb::store::Replica::folded_of_doc`]).
    pub(super) fn read_folded_of(&self, doc: i64) -> Result<Summary> {
        let row = self.client()?.query_opt("SELECT summary FROM folded WHERE doc = $1", &[&doc]).map_err(pg)?;
        row.map_or_else(|| Ok(Summary::new()), |r| folded_record(r.get(0)))
    }

    /// The states of the documents some of whose folded changes are `wanted` (the peer has neither them nor
    /// skipped them), from document `from_doc` on, about `max_bytes` of them (see
    /// [`shoaldb::store::Replica::states_missing`]), each with the changes it holds ([`read_states`]).
    pub(super) fn read_states_missing(
        &self,
        wanted: &dyn Fn(&Summary) -> bool,
        (from_doc, max_bytes): (i64, usize),
    ) -> Result<Vec<(i64, DocState)>> {
        let mut client = self.client()?;
        let (mut out, mut bytes, mut from) = (Vec::new(), 0usize, from_doc);
        while bytes < max_bytes {
            let page = client
                .query("SELECT doc, summary FROM folded WHERE doc >= $1 ORDER BY doc LIMIT $2", &[&from, &FOLDED_PAGE])
                .map_err(pg)?;
            let Some(last) = page.last().map(|r| r.get::<_, i64>(0)) else { break };
            from = last + 1;
            let mut docs = Vec::new();
            for r in &page {
                if wanted(&folded_record(r.get(1))?) {
                    docs.push(r.get::<_, i64>(0));
                }
            }
            if docs.is_empty() {
                continue;
            }
            for (doc, state) in read_states(&mut client, &docs)? {
                if bytes >= max_bytes {
                    break;
                }
                bytes += state.state.len();
                out.push((doc, state));
            }
        }
        Ok(out)
    }
}

/// The states of the documents `docs` (by number, in that order; those the database lacks left out), each with
/// the changes it holds — its folded record and its log rows — read in one statement, so that they fit its
/// version whatever other relays commit meanwhile.
pub(super) fn read_states(client: &mut crate::pg::Conn, docs: &[i64]) -> Result<Vec<(i64, DocState)>> {
    let rows = client
        .query(
            "SELECT d.num, d.collection, d.doc_id, d.state, f.summary, l.a, l.s, l.e \
             FROM docs d LEFT JOIN folded f ON f.doc = d.num CROSS JOIN LATERAL \
             (SELECT array_agg(c.author) AS a, array_agg(c.start_ctr) AS s, array_agg(c.end_ctr) AS e \
              FROM changes c WHERE c.doc = d.num) AS l \
             WHERE d.num = ANY($1) ORDER BY d.num",
            &[&docs],
        )
        .map_err(pg)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let mut changes = r.get::<_, Option<&[u8]>>(4).map_or_else(|| Ok(Summary::new()), folded_record)?;
        // The document's log rows, as three arrays (NULL when it has none).
        let column = |n: usize| -> Vec<i64> { r.get::<_, Option<Vec<i64>>>(n).unwrap_or_default() };
        for ((a, s), e) in column(5).into_iter().zip(column(6)).zip(column(7)) {
            changes.insert(PeerId(a as u64), s.max(0) as u64, e.max(0) as u64);
        }
        out.push((r.get(0), DocState { collection: r.get(1), doc_id: r.get(2), state: r.get(3), changes }));
    }
    Ok(out)
}

/// A document's record of folded changes, as `folded` keeps it (the dense summary phones keep).
pub(super) fn folded_record(bytes: &[u8]) -> Result<Summary> {
    Summary::decode_dense(bytes).map_err(|e| Error::Corrupt(format!("folded changes of a document: {e}")))
}

impl Batch<'_, '_> {
    /// Merge the checked state `s` (decoded: `theirs`) into its document, as a phone's store does: the changes it
    /// holds that the cloud does not become held, folded; changes kept aside that it made ready are applied.
    fn merge_state(&mut self, s: &DocState, theirs: &Document, check: Option<&dyn ChangeCheck>) -> Result<()> {
        let (collection, id) = (s.collection.as_str(), s.doc_id.as_str());
        let mut added = Summary::new();
        for (author, ranges) in s.changes.peers() {
            for &(start, end) in ranges.difference(&self.ranges(author)?.0).ranges() {
                added.insert(author, start, end);
            }
        }
        let record = self.folded_record_of(collection, id)?;
        let doc = self.doc(collection, id)?;
        let before = doc.version().clone();
        doc.join(theirs)?;
        if doc.version() != &before {
            self.judged.report.applied += 1;
        } else {
            self.judged.report.duplicates += 1;
        }
        if !added.is_empty() {
            for (author, ranges) in added.peers() {
                for only_folded in [false, true] {
                    let held = if only_folded { self.folded_ranges(author)? } else { self.ranges(author)? };
                    for &(start, end) in ranges.ranges() {
                        held.0.insert(start, end);
                    }
                    held.1 = true;
                }
            }
            let d = self.docs.get_mut(&(collection.to_string(), id.to_string()));
            let d = d.ok_or_else(|| Error::Corrupt("batch document vanished".into()))?;
            let merged = d.merged.get_or_insert_with(|| MergedDoc { record, added: Summary::new() });
            merged.record.union_with(&added);
            merged.added.union_with(&added);
        }
        // Changes kept aside may have waited for what the state brought.
        let has_pending = self
            .tx
            .query_opt("SELECT 1 FROM pending WHERE collection = $1 AND doc_id = $2 LIMIT 1", &[&collection, &id])
            .map_err(pg)?
            .is_some();
        if has_pending {
            self.with_pending.insert((collection.to_string(), id.to_string()));
            judge::drain_pending(self, collection, id, check)?;
        }
        Ok(())
    }

    /// The record of changes folded into the state of `collection/id` (locked by the batch): as the batch has it,
    /// else as the database does.
    fn folded_record_of(&mut self, collection: &str, id: &str) -> Result<Summary> {
        if let Some(m) = self.docs.get(&(collection.to_string(), id.to_string())).and_then(|d| d.merged.as_ref()) {
            return Ok(m.record.clone());
        }
        let row = self
            .tx
            .query_opt(
                "SELECT f.summary FROM folded f JOIN docs d ON d.num = f.doc WHERE d.collection = $1 AND d.doc_id = $2",
                &[&collection, &id],
            )
            .map_err(pg)?;
        row.map_or_else(|| Ok(Summary::new()), |r| folded_record(r.get(0)))
    }
}

/// Write what the batch's merges — or a compaction, `compacted` — did (`merged`: each document's number and
/// merge; `folded`: what is held only folded of the authors it looked at): the log rows a compaction folded
/// away and the feed's floor, the documents' records of folded changes, the authors' ranges held only folded, and
/// the journal — with a notice to the other relays — in one statement.
pub(super) fn persist_merges<'m>(
    tx: &mut Tx<'_>,
    folded: &AuthorRanges,
    merged: impl IntoIterator<Item = (i64, &'m MergedDoc)>,
    compacted: Option<&Compacted>,
) -> Result<()> {
    let (mut docs, mut records) = (Vec::new(), Vec::new());
    let (mut journal_docs, mut journal_authors, mut journal_ranges) = (Vec::new(), Vec::new(), Vec::new());
    for (num, m) in merged {
        docs.push(num);
        records.push(m.record.encode_dense());
        for (author, ranges) in m.added.peers() {
            journal_docs.push(num);
            journal_authors.push(author.0 as i64);
            journal_ranges.push(postcard::to_stdvec(ranges).map_err(|e| Error::Corrupt(e.to_string()))?);
        }
    }
    let (authors, ranges) = changed_ranges(folded)?;
    let gone: &[i64] = compacted.map_or(&[], |c| &c.gone);
    let floor_xact = compacted.map(|c| c.floor.0.to_string());
    let floor_seq = compacted.map_or(0, |c| c.floor.1);
    tx.execute(
        "WITH gone AS (DELETE FROM changes WHERE seq = ANY($9)), \
             records AS (INSERT INTO folded (doc, summary) SELECT * FROM unnest($1::bigint[], $2::bytea[]) \
             ON CONFLICT (doc) DO UPDATE SET summary = excluded.summary), \
             authors AS (INSERT INTO folded_held (author, ranges) SELECT * FROM unnest($3::bigint[], $4::bytea[]) \
             ON CONFLICT (author) DO UPDATE SET ranges = excluded.ranges), \
             journal AS (INSERT INTO merged (doc, author, ranges, compacted) \
             SELECT d, a, r, $10 FROM unnest($5::bigint[], $6::bigint[], $7::bytea[]) \
             WITH ORDINALITY AS t(d, a, r, o) ORDER BY o RETURNING seq), \
             floor AS (INSERT INTO feed_floor (xact, seq) SELECT $11::text::xid8, $12 WHERE $11::text IS NOT NULL \
             ON CONFLICT (one) DO UPDATE SET (xact, seq) = (excluded.xact, excluded.seq) \
             WHERE (feed_floor.xact, feed_floor.seq) < (excluded.xact, excluded.seq)), \
             notice AS (SELECT pg_notify($8, m::text) FROM (SELECT max(seq) AS m FROM journal) AS last \
             WHERE m IS NOT NULL) \
             SELECT count(*) FROM notice",
        &[
            &docs,
            &records,
            &authors,
            &ranges,
            &journal_docs,
            &journal_authors,
            &journal_ranges,
            &super::CHANGES_CHANNEL,
            &gone,
            &compacted.is_some(),
            &floor_xact,
            &floor_seq,
        ],
    )
    .map_err(pg)?;
    Ok(())
}

/// The authors whose ranges a batch changed, and those ranges encoded, as two columns.
pub(super) fn changed_ranges(ranges: &AuthorRanges) -> Result<(Vec<i64>, Vec<Vec<u8>>)> {
    let mut out = (Vec::new(), Vec::new());
    for (author, (r, changed)) in ranges {
        if *changed {
            out.0.push(author.0 as i64);
            out.1.push(postcard::to_stdvec(r).map_err(|e| Error::Corrupt(e.to_string()))?);
        }
    }
    Ok(out)
}
