//! Attested states in the cloud (issue 17, certificate mode: see `shoaldb::security::attestation`).
//!
//! In certificate mode a state carries no author's signature, so devices fold signed changes only under a state an
//! attester signed, and send that state — never one of their own — to a device lacking what they folded. The cloud
//! takes part as a device does, with its own tables (schema migration 7):
//! - it **merges and keeps** the attested states devices send it (checked by the sync engine first; the changes
//!   kept aside that a state makes ready go through the write check), one per document, a state replacing the
//!   kept one only when it holds strictly more;
//! - a relay whose certificate has an `attest` grant **attests** ([`PgReplica::attest`], every
//!   [`crate::relay::COMPACT_EVERY`] before it compacts): it signs the state of each document whose log holds
//!   changes its kept state lacks — the natural attester of a fleet: it checked every change it holds;
//! - it **serves** them: to a device lacking changes the cloud holds only folded, to a device asking for the states
//!   of changes in its log ([`shoaldb::sync::wire::Message::WantAttested`]), and each new one to the linked devices
//!   holding some of its changes;
//! - its **compaction** folds a signed change only when its document's attested state holds it
//!   ([`super::compaction`]).
//!
//! Every transaction that keeps attested states takes one advisory lock last, and numbers them one past the
//! highest kept: the numbers follow the commits, so a link that sent the states up to a number never misses one
//! committed later with a lower number. The cloud does not ask devices for attested states of its own log's changes
//! (it is usually the attester itself; a device attester's new states reach it live, as they reach every linked
//! device holding their changes).

use super::{pg, sql_counter, PgReplica, CHANGES_CHANNEL};
use crate::pg::{Conn, Tx};
use shoaldb::security::{Attestation, Enrolment, Signature};
use shoaldb::store::MAX_STATE_BYTES;
use shoaldb::{AttestReport, AttestedState, DocState, Error, PeerId, Result, Summary};
use std::collections::BTreeMap;

/// How many attested states (or documents) one statement looks at.
const ATTESTED_PAGE: i64 = 64;

/// The changes an attested state holds, as `attested` keeps them (the dense summary phones keep).
pub(super) fn changes_of(bytes: &[u8]) -> Result<Summary> {
    Summary::decode_dense(bytes).map_err(|e| Error::Corrupt(format!("the changes of an attested state: {e}")))
}

/// The attested states kept for the documents `docs` (by number), in the order of `docs`.
fn read_attested(client: &mut Conn, docs: &[i64]) -> Result<Vec<(i64, AttestedState)>> {
    let rows = client
        .query(
            "SELECT a.doc, d.collection, d.doc_id, a.state, a.changes, a.attester, a.signature \
             FROM attested a JOIN docs d ON d.num = a.doc WHERE a.doc = ANY($1)",
            &[&docs],
        )
        .map_err(pg)?;
    let mut by_doc = BTreeMap::new();
    for r in rows {
        let doc: i64 = r.get(0);
        let signature: Vec<u8> = r.get(6);
        let signature = Signature(
            signature.try_into().map_err(|_| Error::Corrupt(format!("document {doc}: an attestation's signature")))?,
        );
        let state =
            DocState { collection: r.get(1), doc_id: r.get(2), state: r.get(3), changes: changes_of(r.get(4))? };
        let attestation = Attestation { device: PeerId(r.get::<_, i64>(5) as u64), signature };
        by_doc.insert(doc, AttestedState { state, attestation });
    }
    Ok(docs.iter().filter_map(|d| Some((*d, by_doc.remove(d)?))).collect())
}

/// Each author of `changes` with the span of its counters there (first, last), as `attested_spans` keeps them.
fn spans(changes: &Summary) -> impl Iterator<Item = (i64, i64, i64)> + '_ {
    changes.peers().filter_map(|(author, ranges)| {
        let (first, last) = (ranges.ranges().first()?, ranges.ranges().last()?);
        Some((author.0 as i64, sql_counter(first.0), sql_counter(last.1)))
    })
}

/// Of `candidates` (document number, bytes of its attested state), in order, those taken while `budget` bytes
/// remain (at least the first: a link always makes progress), with the budget taken off.
fn within(candidates: &[(i64, i64)], budget: &mut usize) -> Vec<i64> {
    let mut docs = Vec::new();
    for &(doc, len) in candidates {
        if *budget == 0 {
            break;
        }
        docs.push(doc);
        *budget = budget.saturating_sub(len.max(0) as usize);
    }
    docs
}

/// Keep the attested states `states` (each with its document's number), in `tx`: each replaces the state kept for
/// its document only when it holds strictly more changes (two attesters' states can each hold changes the other
/// lacks; the first stays, so two relays or devices never send one back and forth), numbered one past every state
/// kept before, with its authors' spans; the other relays are told at commit. Returns what was kept.
pub(super) fn keep(tx: &mut Tx<'_>, states: &[(i64, &DocState, &Attestation)]) -> Result<AttestReport> {
    if states.is_empty() {
        return Ok(AttestReport::default());
    }
    // Last of the transaction's locks, and the same for every relay: the numbers follow the commits.
    tx.execute("SELECT pg_advisory_xact_lock(3, 0)", &[]).map_err(pg)?;
    let docs: Vec<i64> = states.iter().map(|(d, _, _)| *d).collect();
    let mut held: BTreeMap<i64, Summary> = BTreeMap::new();
    for r in tx.query("SELECT doc, changes FROM attested WHERE doc = ANY($1)", &[&docs]).map_err(pg)? {
        held.insert(r.get(0), changes_of(r.get(1))?);
    }
    // The one state kept of each document (a batch may bring two), in the order they came.
    let mut chosen: BTreeMap<i64, (usize, &DocState, &Attestation)> = BTreeMap::new();
    for (n, &(doc, s, a)) in states.iter().enumerate() {
        if let Some(old) = held.get(&doc) {
            if !old.difference(&s.changes).is_empty() || s.changes.difference(old).is_empty() {
                continue;
            }
        }
        held.insert(doc, s.changes.clone());
        chosen.insert(doc, (n, s, a));
    }
    if chosen.is_empty() {
        return Ok(AttestReport::default());
    }
    let mut order: Vec<(usize, i64, &DocState, &Attestation)> =
        chosen.into_iter().map(|(doc, (n, s, a))| (n, doc, s, a)).collect();
    order.sort_unstable_by_key(|(n, ..)| *n);
    let last: i64 = tx.query_one("SELECT coalesce(max(seq), 0) FROM attested", &[]).map_err(pg)?.get(0);
    let (mut rows, mut seqs, mut bodies, mut changes, mut attesters, mut signatures) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut span_authors, mut span_docs, mut los, mut his) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, &(_, doc, s, a)) in order.iter().enumerate() {
        rows.push(doc);
        seqs.push(last + 1 + i as i64);
        bodies.push(s.state.as_slice());
        changes.push(s.changes.encode_dense());
        attesters.push(a.device.0 as i64);
        signatures.push(&a.signature.0[..]);
        // A kept state only grows, so its authors' spans are only ever widened.
        for (author, lo, hi) in spans(&s.changes) {
            span_authors.push(author);
            span_docs.push(doc);
            los.push(lo);
            his.push(hi);
        }
    }
    tx.execute(
        "WITH states AS (INSERT INTO attested (doc, seq, state, changes, attester, signature) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bigint[], $6::bytea[]) \
         ON CONFLICT (doc) DO UPDATE SET seq = excluded.seq, state = excluded.state, changes = excluded.changes, \
         attester = excluded.attester, signature = excluded.signature), \
         spans AS (INSERT INTO attested_spans (author, doc, lo, hi) \
         SELECT * FROM unnest($7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) \
         ON CONFLICT (author, doc) DO UPDATE SET lo = excluded.lo, hi = excluded.hi) \
         SELECT pg_notify($11, $12::bigint::text)",
        &[
            &rows,
            &seqs,
            &bodies,
            &changes,
            &attesters,
            &signatures,
            &span_authors,
            &span_docs,
            &los,
            &his,
            &CHANGES_CHANNEL,
            &(last + order.len() as i64),
        ],
    )
    .map_err(pg)?;
    let bytes = order.iter().map(|(_, _, s, _)| s.state.len() as u64).sum();
    Ok(AttestReport { documents: order.len() as u64, bytes })
}

impl PgReplica {
    /// Sign, with the relay's key, the state of every document whose log holds changes its kept attested state
    /// lacks, in the collections the relay's certificate lets it attest (`enrolment`: an `attest` grant), and keep
    /// each (see the module docs). Devices take these states in place of the changes they hold, and fold those
    /// changes; the cloud's own compaction folds them too. Pages of documents: the log rows' counters of each are
    /// read first, and a document's state only when it is signed. Every relay with the grant calls it every
    /// [`crate::relay::COMPACT_EVERY`], before compacting.
    ///
    /// # Errors
    /// [`Error::NotPermitted`] when the certificate has no `attest` grant; PostgreSQL's failures.
    pub fn attest(&self, enrolment: &Enrolment) -> Result<AttestReport> {
        let permissions = enrolment.chain().permissions();
        if !permissions.attests_anything() {
            let reason = "the relay's certificate has no `attest` grant".to_string();
            return Err(Error::NotPermitted { collection: String::new(), id: String::new(), reason });
        }
        let key = enrolment.signing_key();
        // The relay's chain goes ahead of the states it signed, as a signer's goes ahead of its changes.
        shoaldb::Replica::keep_certificate(self, key.verifying_key().device_id(), &enrolment.chain().encode())?;
        let mut report = AttestReport::default();
        let mut client = self.client()?;
        let mut from = 0i64;
        loop {
            let page = client
                .query(
                    "SELECT d.num, d.collection, a.changes, l.a, l.s, l.e FROM docs d \
                     LEFT JOIN attested a ON a.doc = d.num CROSS JOIN LATERAL \
                     (SELECT array_agg(c.author) AS a, array_agg(c.start_ctr) AS s, array_agg(c.end_ctr) AS e \
                      FROM changes c WHERE c.doc = d.num) AS l \
                     WHERE d.num >= $1 AND l.a IS NOT NULL ORDER BY d.num LIMIT $2",
                    &[&from, &ATTESTED_PAGE],
                )
                .map_err(pg)?;
            let Some(last) = page.last().map(|r| r.get::<_, i64>(0)) else { break };
            from = last + 1;
            let mut docs = Vec::new();
            for r in &page {
                if !permissions.may_attest(r.get(1)) {
                    continue;
                }
                let kept = r.get::<_, Option<&[u8]>>(2).map(changes_of).transpose()?.unwrap_or_default();
                let column = |n: usize| -> Vec<i64> { r.get::<_, Option<Vec<i64>>>(n).unwrap_or_default() };
                let lacking = column(3)
                    .into_iter()
                    .zip(column(4))
                    .zip(column(5))
                    .any(|((a, s), e)| !kept.contains(PeerId(a as u64), s.max(0) as u64, e.max(0) as u64));
                if lacking {
                    docs.push(r.get::<_, i64>(0));
                }
            }
            let mut signed = Vec::new();
            for (doc, state) in super::states::read_states(&mut client, &docs)? {
                if state.state.len() > MAX_STATE_BYTES {
                    log::info!("{}/{}: not attested: its state is too large to send", state.collection, state.doc_id);
                    continue;
                }
                let attestation = Attestation::sign(key, &state);
                signed.push((doc, AttestedState { state, attestation }));
            }
            if !signed.is_empty() {
                let mut tx = client.transaction().map_err(pg)?;
                let refs: Vec<(i64, &DocState, &Attestation)> =
                    signed.iter().map(|(d, a)| (*d, &a.state, &a.attestation)).collect();
                let kept = keep(&mut tx, &refs)?;
                tx.commit().map_err(pg)?;
                report.documents += kept.documents;
                report.bytes += kept.bytes;
            }
            if (page.len() as i64) < ATTESTED_PAGE {
                break;
            }
        }
        if report.documents > 0 {
            log::info!("the cloud attested {} documents ({} bytes)", report.documents, report.bytes);
        }
        Ok(report)
    }

    /// See [`shoaldb::Replica::attested_states_missing`]: the attested states of the documents some of whose
    /// folded changes are in neither `have` nor `skip`, from document `from_doc` on, about `max_bytes` of them. A
    /// document whose attested state lacks some of those is left out (folded in development mode, or unsigned).
    pub(super) fn read_attested_missing(
        &self,
        have: &Summary,
        skip: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        let lacking = |folded: &Summary| folded.difference(have).difference(skip);
        if self.with_held(|_, folded| lacking(folded).is_empty())? {
            return Ok(Vec::new());
        }
        let mut client = self.client()?;
        let (mut out, mut budget, mut from) = (Vec::new(), max_bytes, from_doc);
        while budget > 0 {
            let page = client
                .query(
                    "SELECT f.doc, f.summary, a.changes, octet_length(a.state)::bigint FROM folded f \
                     JOIN attested a ON a.doc = f.doc WHERE f.doc >= $1 ORDER BY f.doc LIMIT $2",
                    &[&from, &ATTESTED_PAGE],
                )
                .map_err(pg)?;
            let Some(last) = page.last().map(|r| r.get::<_, i64>(0)) else { break };
            from = last + 1;
            let mut candidates = Vec::new();
            for r in &page {
                let missing = lacking(&super::states::folded_record(r.get(1))?);
                if missing.is_empty() {
                    continue;
                }
                if !missing.difference(&changes_of(r.get(2))?).is_empty() {
                    log::warn!(
                        "document {}: a device lacks folded changes its attested state does not hold",
                        r.get::<_, i64>(0)
                    );
                    continue;
                }
                candidates.push((r.get::<_, i64>(0), r.get::<_, i64>(3)));
            }
            let docs = within(&candidates, &mut budget);
            out.extend(read_attested(&mut client, &docs)?);
        }
        Ok(out)
    }

    /// See [`shoaldb::Replica::attested_states_wanted`]: the attested states kept that hold some of `want`, from
    /// document `from_doc` on, about `max_bytes` of them — found through the authors' spans (an index range scan
    /// per author of `want`), then checked exactly.
    pub(super) fn read_attested_wanted(
        &self,
        want: &Summary,
        from_doc: i64,
        max_bytes: usize,
    ) -> Result<Vec<(i64, AttestedState)>> {
        let (mut authors, mut los, mut his) = (Vec::new(), Vec::new(), Vec::new());
        for (author, lo, hi) in spans(want) {
            authors.push(author);
            los.push(lo);
            his.push(hi);
        }
        let mut client = self.client()?;
        let (mut out, mut budget, mut from) = (Vec::new(), max_bytes, from_doc);
        while budget > 0 && !authors.is_empty() {
            let page = client
                .query(
                    "SELECT a.doc, a.changes, octet_length(a.state)::bigint FROM attested a WHERE a.doc IN \
                     (SELECT DISTINCT s.doc FROM attested_spans s \
                      JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS w(a, lo, hi) \
                      ON s.author = w.a AND s.hi >= w.lo AND s.lo <= w.hi WHERE s.doc >= $4 ORDER BY s.doc LIMIT $5) \
                     ORDER BY a.doc",
                    &[&authors, &los, &his, &from, &ATTESTED_PAGE],
                )
                .map_err(pg)?;
            let Some(last) = page.last().map(|r| r.get::<_, i64>(0)) else { break };
            from = last + 1;
            let mut candidates = Vec::new();
            for r in &page {
                if changes_of(r.get(1))?.intersects(want) {
                    candidates.push((r.get::<_, i64>(0), r.get::<_, i64>(2)));
                }
            }
            let docs = within(&candidates, &mut budget);
            out.extend(read_attested(&mut client, &docs)?);
        }
        Ok(out)
    }

    /// See [`shoaldb::Replica::attested_seq`].
    pub(super) fn read_attested_seq(&self) -> Result<i64> {
        let row = self.client()?.query_one("SELECT coalesce(max(seq), 0) FROM attested", &[]).map_err(pg)?;
        Ok(row.get(0))
    }

    /// See [`shoaldb::Replica::attested_kept_after`]: the attested states kept after number `after` that hold some
    /// of `held`, in the order they were kept, about `max_bytes` of them; and the number of the last one looked at.
    pub(super) fn read_attested_after(
        &self,
        after: i64,
        held: &Summary,
        max_bytes: usize,
    ) -> Result<(Vec<(i64, AttestedState)>, i64)> {
        let mut client = self.client()?;
        let (mut out, mut budget, mut last) = (Vec::new(), max_bytes, after);
        while budget > 0 {
            let page = client
                .query(
                    "SELECT doc, seq, changes, octet_length(state)::bigint FROM attested WHERE seq > $1 \
                     ORDER BY seq LIMIT $2",
                    &[&last, &ATTESTED_PAGE],
                )
                .map_err(pg)?;
            if page.is_empty() {
                break;
            }
            // In the order they were kept, up to the budget (at least one): every one before the last taken was
            // looked at.
            let (mut docs, mut full) = (Vec::new(), false);
            for r in &page {
                if changes_of(r.get(2))?.intersects(held) {
                    if budget == 0 {
                        full = true;
                        break;
                    }
                    docs.push(r.get::<_, i64>(0));
                    budget = budget.saturating_sub(r.get::<_, i64>(3).max(0) as usize);
                }
                last = r.get(1);
            }
            out.extend(read_attested(&mut client, &docs)?);
            if full || (page.len() as i64) < ATTESTED_PAGE {
                break;
            }
        }
        Ok((out, last))
    }
}
