//! The cloud's own change log, kept bounded (issue 17): the fleet's frontier, and changes folded below it.
//!
//! Every device says what it holds (its summary as a session starts, and the announcements after it); the cloud
//! keeps that per device (`device_acks`, what of it the cloud holds, with when the device was last heard from).
//! The **fleet's frontier** is what every device heard from within the horizon holds: no device the cloud knows
//! of will ask for those changes as changes again. [`PgReplica::compact`] drops from the change log the changes
//! below it, and those received longer ago than the horizon whoever lacks them — but never one the back office's
//! feed still keeps (received within its retention) nor a signed one its document's attested state does not hold
//! (certificate mode: a state carries no author's signature, so a device takes only one an attester signed: see
//! [`super::attested`]). The documents' states hold them already (the cloud keeps every document merged); they
//! become held only folded, exactly as those merged from a device that compacted
//! ([`super::states`]): a device lacking some of them is sent the document's state, so nothing deleted comes back
//! and its own edits still merge, however long it was away.

use super::states::{persist_merges, Compacted, MergedDoc};
use super::{held_ranges, pg, AuthorRanges, PgReplica};
use postgres::fallible_iterator::FallibleIterator;
use shoaldb::security::attestation::Stability;
use shoaldb::security::{CertificateChain, DeviceKey, Enrolment, StableFrontier, VerifyingKey};
use shoaldb::store::RangeSet;
use shoaldb::{CompactionPolicy, CompactionReport, Document, Error, PeerId, Result, Summary};
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

/// How often (seconds) the time a device was last heard from is written again when its summary adds nothing.
const ACK_REFRESH_SECS: f64 = 60.0;

/// The most bytes of a device's acknowledgements kept whole: a device says what it holds as a session starts,
/// before it sends the cloud what the cloud lacks, so its claims are kept beyond what the cloud held then (else
/// the changes it brings would count as acknowledged only at its next session) — up to this size; past it, only
/// what the cloud holds is kept.
const MAX_ACK_BYTES: usize = 64 * 1024;

/// How many log rows one compaction transaction looks at: each holds the database-wide lock, so that no batch
/// applies to a document while its rows go (the other relays wait for at most one such transaction at a time).
const COMPACT_ROWS_PER_TRANSACTION: i64 = 2000;

/// How many documents' versions [`PgReplica::fill_versions`] writes down per statement.
const VERSIONS_PER_STATEMENT: i64 = 500;

/// What the members of a roster acknowledged before its time ([`PgReplica::roster_frontier`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RosterAcks {
    /// What every member acknowledged: the roster's frontier, before it is cut to what the cloud holds.
    pub every: Summary,
    /// What some member acknowledged: the changes a member may have made before it acknowledged the frontier are
    /// among these.
    pub some: Summary,
}

/// What one transaction of [`PgReplica::compact`] folds: the changes under the fleet's frontier (and older than the
/// horizon), and in the states of the documents it compacts, what the kept stable frontier makes garbage.
#[derive(Clone, Copy)]
struct Fold<'a> {
    frontier: Option<&'a Summary>,
    stability: Option<&'a Stability>,
}

/// Fold what `stability` makes garbage in the states of the documents `docs` (by number), inside `tx`: a state
/// is written back only when it changed.
fn collect_stable(tx: &mut crate::pg::Tx<'_>, docs: &[i64], stability: &Stability) -> Result<()> {
    let rows = tx.query("SELECT num, collection, state FROM docs WHERE num = ANY($1)", &[&docs]).map_err(pg)?;
    for r in &rows {
        let num: i64 = r.get(0);
        let mut doc = match Document::decode(r.get(2)) {
            Ok(doc) => doc,
            Err(e) => {
                log::warn!("document {num}: its state does not decode ({e}); nothing folded in it");
                continue;
            }
        };
        // The cloud keeps no change log to tell which deletions are stable: it keeps its tombstones.
        if stability.collect(r.get(1), &mut doc, None) {
            tx.execute("UPDATE docs SET state = $2 WHERE num = $1", &[&num, &doc.encode()]).map_err(pg)?;
        }
    }
    Ok(())
}

/// A device's acknowledgements as `device_acks` keeps them (the dense summary phones keep).
fn acks(bytes: &[u8]) -> Result<Summary> {
    Summary::decode_dense(bytes).map_err(|e| Error::Corrupt(format!("a device's acknowledgements: {e}")))
}

/// What `frontier` (`None`: no device yet) and a device's acknowledgements `acked` both hold.
fn meet(frontier: Option<Summary>, acked: Summary) -> Summary {
    match frontier {
        None => acked,
        Some(f) => f.intersection(&acked),
    }
}

/// `ms` as PostgreSQL interval seconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl PgReplica {
    /// `device` said it holds `summary` ([`shoaldb::store::Replica::keep_peer_summary`]): it joins what the device
    /// acknowledged before (kept whole up to [`MAX_ACK_BYTES`], beyond it only what the cloud holds), with the
    /// time. Writes nothing when it adds nothing and the time was written less than a minute ago, so a device's
    /// announcements cost a read. The frontier only ever folds rows the cloud holds. The day's row (a roster's
    /// frontier) takes only whole acknowledgements: a cut one leaves it as it was.
    pub(super) fn keep_device_summary(&self, device: &DeviceKey, summary: &Summary) -> Result<()> {
        let key: &[u8] = &device.0;
        let mut client = self.client()?;
        let known = client
            .query_opt(
                "SELECT summary, now() - heard < make_interval(secs => $2) FROM device_acks WHERE device = $1",
                &[&key, &ACK_REFRESH_SECS],
            )
            .map_err(pg)?;
        if let Some(row) = &known {
            if row.get::<_, bool>(1) && summary.difference(&acks(row.get(0))?).is_empty() {
                return Ok(());
            }
        }
        let mut tx = client.transaction().map_err(pg)?;
        let row = tx.query_opt("SELECT summary FROM device_acks WHERE device = $1 FOR UPDATE", &[&key]).map_err(pg)?;
        let mut acked = row.map_or_else(|| Ok(Summary::new()), |r| acks(r.get(0)))?;
        acked.union_with(summary);
        let mut encoded = acked.encode_dense();
        let cut = encoded.len() > MAX_ACK_BYTES;
        if cut {
            // Only what the cloud holds counts then: a device cannot make its row grow by claiming more.
            encoded = self.with_held(|held, _| acked.intersection(held))?.encode_dense();
        }
        tx.execute(
            "INSERT INTO device_acks (device, summary) VALUES ($1, $2) \
             ON CONFLICT (device) DO UPDATE SET summary = excluded.summary, heard = now()",
            &[&key, &encoded],
        )
        .map_err(pg)?;
        if cut {
            // A roster's frontier takes only whole acknowledgements: cut, this one would leave out the device's own
            // changes not sent yet, which may not have seen what it acknowledged (`RosterAcks::some`). Its day keeps
            // what it said before, and the frontier waits for it.
            log::warn!(
                "device {device}: acknowledgements of {} bytes (over {MAX_ACK_BYTES}) kept cut to what the cloud \
                 holds; not counted for a roster's frontier",
                acked.encode_dense().len()
            );
        } else {
            tx.execute(
                "INSERT INTO device_ack_days (device, day, summary) VALUES ($1, date_trunc('day', now(), 'UTC'), $2) \
                 ON CONFLICT (device, day) DO UPDATE SET summary = excluded.summary",
                &[&key, &encoded],
            )
            .map_err(pg)?;
        }
        tx.commit().map_err(pg)
    }

    /// What the members of a roster (`members`, by the keys their handshakes prove) had acknowledged to the cloud
    /// by the end of a day (UTC) before the roster's time `until_ms`, each its last such day — `None` when some
    /// member had not been heard from by then (that member holds the frontier back until it is heard from, or a
    /// roster leaves it out).
    ///
    /// Only acknowledgements from before the roster's time count: a device certified after it is not a member,
    /// and it takes its first copy of a document, whole, from a device that then held at least what it had
    /// acknowledged before that time — so its copy holds the frontier, and so do the changes it makes.
    pub fn roster_frontier(&self, members: &[DeviceKey], until_ms: u64) -> Result<Option<RosterAcks>> {
        let keys: Vec<&[u8]> = members.iter().map(|m| &m.0[..]).collect();
        let rows = self
            .client()?
            .query(
                "SELECT DISTINCT ON (device) device, summary FROM device_ack_days \
                 WHERE device = ANY($1) AND day + interval '1 day' <= to_timestamp($2) \
                 ORDER BY device, day DESC",
                &[&keys, &(until_ms as f64 / 1000.0)],
            )
            .map_err(pg)?;
        let mut found = std::collections::BTreeSet::new();
        let (mut every, mut some): (Option<Summary>, Summary) = (None, Summary::new());
        for row in &rows {
            found.insert(row.get::<_, Vec<u8>>(0));
            let acked = acks(row.get(1))?;
            some.union_with(&acked);
            every = Some(meet(every, acked));
        }
        if keys.iter().any(|k| !found.contains(*k)) {
            return Ok(None);
        }
        Ok(Some(RosterAcks { every: every.unwrap_or_default(), some }))
    }

    /// Write down the versions of the documents written before versions were kept (schema 8), from their states,
    /// [`VERSIONS_PER_STATEMENT`] per statement: a device taking its first copy of a document waits for its version
    /// (`shoaldb::sync::first_copy`). A document written meanwhile (by this relay or another) keeps the version
    /// that write gave it.
    fn fill_versions(&self) -> Result<()> {
        let mut client = self.client()?;
        let mut after = 0i64;
        loop {
            let rows = client
                .query(
                    "SELECT num, state FROM docs WHERE version IS NULL AND num > $1 ORDER BY num LIMIT $2",
                    &[&after, &VERSIONS_PER_STATEMENT],
                )
                .map_err(pg)?;
            let (mut nums, mut versions) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
            for r in &rows {
                let num: i64 = r.get(0);
                after = num;
                let doc = match Document::decode(r.get(1)) {
                    Ok(doc) => doc,
                    Err(e) => {
                        log::warn!("document {num}: its state does not decode ({e}); its version is not written");
                        continue;
                    }
                };
                nums.push(num);
                versions.push(doc.version().to_bytes());
            }
            if !nums.is_empty() {
                client
                    .execute(
                        "UPDATE docs d SET version = t.v FROM unnest($1::bigint[], $2::bytea[]) AS t(n, v) \
                         WHERE d.num = t.n AND d.version IS NULL",
                        &[&nums, &versions],
                    )
                    .map_err(pg)?;
            }
            if (rows.len() as i64) < VERSIONS_PER_STATEMENT {
                return Ok(());
            }
        }
    }

    /// Record `key` as the signing key of a relay serving this database ([`crate::Relay::start`] does, in
    /// certificate mode): as a roster's member, what it holds is the cloud's own.
    pub fn register_relay(&self, key: &VerifyingKey) -> Result<()> {
        self.client()?
            .execute("INSERT INTO relay_keys (signing_key) VALUES ($1) ON CONFLICT DO NOTHING", &[&&key.0[..]])
            .map_err(pg)?;
        Ok(())
    }

    /// The frontier of the newest roster this relay knows (from `enrolment` and the revocation lists the cloud
    /// keeps), signed with the relay's key and kept — or `None` when there is no roster, or some member was not
    /// heard from before its time ([`PgReplica::roster_frontier`]), or the cloud lacks some change a member held
    /// then. A member is known by its signing key; the cloud finds its acknowledgements through its certificate
    /// (kept when it first linked), which names the key its handshakes prove. Members that are the cloud's relays
    /// ([`PgReplica::register_relay`]) count with what the cloud holds now, which every frontier is cut to: the
    /// cloud's own writes (the back office's) then hold it too.
    ///
    /// The frontier's `required` is what the cloud holds as it signs: every change a member held as it
    /// acknowledged (its own not yet sent included: those may not have seen the frontier), and every change of
    /// the cloud's own writers (see [`StableFrontier`]). Every relay with an `attest` grant calls it each
    /// [`crate::relay::COMPACT_EVERY`].
    pub fn sign_frontier(&self, enrolment: &Enrolment) -> Result<Option<StableFrontier>> {
        let mut enrolment = enrolment.clone();
        shoaldb::enrolment::accept_kept_revocations(&mut enrolment, &self.revocation_lists()?);
        let Some((members, until_ms)) = enrolment.revocations().roster() else { return Ok(None) };
        let members = members.to_vec();
        let Some(acked) = self.members_frontier(&members, until_ms)? else {
            log::info!("the roster of {until_ms} has members not heard from before its time: no frontier yet");
            return Ok(None);
        };
        let (stable, required) = self.with_held(|held, _| (acked.every.intersection(held), held.clone()))?;
        let lacking = acked.some.difference(&required);
        if !lacking.is_empty() {
            // Named, since a member acknowledging changes the cloud refused (a revoked author's past its limit)
            // holds the frontier back until a roster leaves that member out.
            let authors: Vec<String> = lacking.peers().take(8).map(|(p, _)| p.to_string()).collect();
            log::info!(
                "the roster of {until_ms}: the cloud lacks {} ranges of changes members held before its time, by \
                 authors {}: no frontier yet",
                lacking.range_count(),
                authors.join(", ")
            );
            return Ok(None);
        }
        let frontier = StableFrontier::sign(enrolment.signing_key(), until_ms, stable, required);
        if frontier.summaries_len() > shoaldb::sync::wire::MAX_FRONTIER_BYTES {
            log::warn!("the roster of {until_ms}'s frontier is over its bound: not signed");
            return Ok(None);
        }
        // The relay's chain goes ahead of the frontier, as ahead of the states it signs.
        let device = enrolment.signing_key().verifying_key().device_id();
        shoaldb::Replica::keep_certificate(self, device, &enrolment.chain().encode())?;
        self.keep_frontier_row(&frontier)?;
        Ok(Some(frontier))
    }

    /// Keep `frontier` when it replaces the newest kept ([`StableFrontier::replaces`]); whether it did.
    pub(super) fn keep_frontier_row(&self, frontier: &StableFrontier) -> Result<bool> {
        if !self.newest_frontier()?.is_none_or(|kept| frontier.replaces(&kept)) {
            return Ok(false);
        }
        let encoded = postcard::to_allocvec(frontier).map_err(|e| Error::Corrupt(e.to_string()))?;
        self.client()?
            .execute(
                "INSERT INTO frontiers (until_ms, frontier) VALUES ($1, $2) \
                 ON CONFLICT (until_ms) DO UPDATE SET frontier = excluded.frontier",
                &[&(i64::try_from(frontier.until_ms).unwrap_or(i64::MAX)), &encoded],
            )
            .map_err(pg)?;
        Ok(true)
    }

    /// The newest frontier kept (signed here, or received and checked).
    pub(super) fn newest_frontier(&self) -> Result<Option<StableFrontier>> {
        let row = self
            .client()?
            .query_opt("SELECT frontier FROM frontiers ORDER BY until_ms DESC LIMIT 1", &[])
            .map_err(pg)?;
        row.map(|r| {
            postcard::from_bytes(r.get::<_, &[u8]>(0)).map_err(|e| Error::Corrupt(format!("a kept frontier: {e}")))
        })
        .transpose()
    }

    /// [`PgReplica::roster_frontier`] for members named by their signing keys: each is found by the Noise key its
    /// certificate names (`None` when the cloud keeps no certificate of some member: it never linked). The cloud's
    /// relays are left out: they count with what the cloud holds.
    fn members_frontier(&self, members: &[VerifyingKey], until_ms: u64) -> Result<Option<RosterAcks>> {
        let mut client = self.client()?;
        let relays: std::collections::HashSet<Vec<u8>> =
            client.query("SELECT signing_key FROM relay_keys", &[]).map_err(pg)?.iter().map(|r| r.get(0)).collect();
        let members: Vec<&VerifyingKey> = members.iter().filter(|m| !relays.contains(&m.0[..])).collect();
        let ids: Vec<i64> = members.iter().map(|m| m.device_id().0 as i64).collect();
        let rows =
            client.query("SELECT device, chain FROM certificates WHERE device = ANY($1)", &[&ids]).map_err(pg)?;
        drop(client);
        let chains: std::collections::HashMap<i64, &[u8]> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut devices = Vec::with_capacity(members.len());
        for m in members {
            let Some(chain) = chains.get(&(m.device_id().0 as i64)) else { return Ok(None) };
            let noise = CertificateChain::decode(chain)
                .ok()
                .map(|chain| chain.leaf().body().clone())
                .filter(|leaf| leaf.signing_key == *m)
                .and_then(|leaf| leaf.noise_key);
            match noise {
                Some(key) => devices.push(DeviceKey(key)),
                None => return Ok(None),
            }
        }
        self.roster_frontier(&devices, until_ms)
    }

    /// The fleet's frontier: what every device heard from within `horizon_ms` acknowledged (`None` when none
    /// was). Forgets the devices heard from longer ago (they no longer count; they are kept again when they come
    /// back). Reads the devices' rows one at a time.
    pub fn fleet_frontier(&self, horizon_ms: u64) -> Result<Option<Summary>> {
        let mut client = self.client()?;
        client
            .execute("DELETE FROM device_acks WHERE heard < now() - make_interval(secs => $1)", &[&secs(horizon_ms)])
            .map_err(pg)?;
        // The days before twice the horizon go, but each device's newest of them (a roster may still need it).
        client
            .execute(
                "DELETE FROM device_ack_days d WHERE day < now() - make_interval(secs => $1) \
                 AND EXISTS (SELECT 1 FROM device_ack_days n WHERE n.device = d.device AND n.day > d.day \
                 AND n.day < now() - make_interval(secs => $1))",
                &[&secs(horizon_ms.saturating_mul(2))],
            )
            .map_err(pg)?;
        let mut rows =
            client.client().query_raw("SELECT summary FROM device_acks", std::iter::empty::<i32>()).map_err(pg)?;
        let mut frontier: Option<Summary> = None;
        while let Some(row) = rows.next().map_err(pg)? {
            let acked = acks(row.get(0))?;
            frontier = Some(meet(frontier, acked));
        }
        Ok(frontier)
    }

    /// Fold the changes `policy` selects out of the change log (see the module docs): those below the fleet's
    /// frontier ([`PgReplica::fleet_frontier`], with `policy.fold_acknowledged`), and those received more than
    /// `policy.horizon_ms` ago — of either, only those received more than `feed_retention_ms` ago, and unsigned or
    /// held by their document's attested state ([`PgReplica::attest`]).
    /// They stay held, only folded into their documents' states, which devices lacking them are sent. Transactions
    /// of at most a few thousand rows each, each under the database-wide lock; every relay calls it every
    /// [`crate::relay::COMPACT_EVERY`]. The report counts the changes and bytes dropped.
    pub fn compact(&self, policy: &CompactionPolicy, feed_retention_ms: u64) -> Result<CompactionReport> {
        self.fill_versions()?;
        let frontier = if policy.fold_acknowledged { self.fleet_frontier(policy.horizon_ms)? } else { None };
        let stability = self.kept_stability()?;
        let mut report = CompactionReport::default();
        let mut after = 0i64;
        loop {
            let fold = Fold { frontier: frontier.as_ref(), stability: stability.as_ref() };
            let (looked_at, last) = self.compact_some(policy, feed_retention_ms, fold, after, &mut report)?;
            if looked_at < COMPACT_ROWS_PER_TRANSACTION {
                break;
            }
            after = last;
        }
        if report.changes > 0 {
            log::info!(
                "the cloud folded {} changes ({} bytes) of {} documents out of its log",
                report.changes,
                report.bytes,
                report.documents
            );
        }
        Ok(report)
    }

    /// What the newest stable frontier kept lets the compaction fold in the states of the documents it compacts
    /// ([`Stability`]): the cloud signed it holding its `required`, and holds it still.
    fn kept_stability(&self) -> Result<Option<Stability>> {
        let Some(frontier) = self.newest_frontier()? else { return Ok(None) };
        let chain = shoaldb::Replica::certificate(self, frontier.attestation.device)?;
        self.with_held(|held, _| Stability::of(&frontier, held, chain.as_deref()))
    }

    /// One transaction of [`PgReplica::compact`]: the log rows after `after` received before the retention, at
    /// most [`COMPACT_ROWS_PER_TRANSACTION`]. Returns how many it looked at, and the last one's number.
    fn compact_some(
        &self,
        policy: &CompactionPolicy,
        feed_retention_ms: u64,
        Fold { frontier, stability }: Fold<'_>,
        after: i64,
        report: &mut CompactionReport,
    ) -> Result<(i64, i64)> {
        let mut client = self.client()?;
        let mut tx = client.transaction().map_err(pg)?;
        // No batch applies while rows go: a document's record of folded changes and its rows change together.
        super::Locks::Database.take(&mut tx)?;
        let rows = tx
            .query(
                "SELECT c.seq, c.doc, c.author, c.start_ctr, c.end_ctr, octet_length(c.body)::bigint, \
                 c.received < now() - make_interval(secs => $3), c.xact::text, c.sig IS NOT NULL, a.changes \
                 FROM changes c LEFT JOIN attested a ON a.doc = c.doc AND c.sig IS NOT NULL \
                 WHERE c.seq > $1 AND c.received < now() - make_interval(secs => $4) \
                 ORDER BY c.seq LIMIT $2",
                &[&after, &COMPACT_ROWS_PER_TRANSACTION, &secs(policy.horizon_ms), &secs(feed_retention_ms)],
            )
            .map_err(pg)?;
        let looked_at = rows.len() as i64;
        let last = rows.last().map_or(after, |r| r.get(0));
        let mut gone: Vec<i64> = Vec::new();
        let mut floor: Option<(u64, i64)> = None;
        // Per document, what of each author goes.
        let mut by_doc: BTreeMap<i64, Summary> = BTreeMap::new();
        // The changes of the attested states of the documents met so far.
        let mut attested: BTreeMap<i64, Summary> = BTreeMap::new();
        for r in &rows {
            let (author, start, end) = (PeerId(r.get::<_, i64>(2) as u64), r.get::<_, i64>(3), r.get::<_, i64>(4));
            let (start, end) = (start.max(0) as u64, end.max(0) as u64);
            let old: bool = r.get(6);
            if !(old || frontier.is_some_and(|f| f.contains(author, start, end))) {
                continue;
            }
            // A signed change only under its document's attested state (a device lacking it is sent that state).
            if r.get::<_, bool>(8) {
                let Some(bytes) = r.get::<_, Option<&[u8]>>(9) else { continue };
                let held = match attested.entry(r.get::<_, i64>(1)) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(super::attested::changes_of(bytes)?),
                };
                if !held.contains(author, start, end) {
                    continue;
                }
            }
            let seq: i64 = r.get(0);
            gone.push(seq);
            by_doc.entry(r.get(1)).or_default().insert(author, start, end);
            report.changes += 1;
            report.bytes += r.get::<_, i64>(5).max(0) as u64;
            let xact: String = r.get(7);
            let xact = xact.parse().map_err(|_| Error::Corrupt(format!("a transaction id {xact:?}")))?;
            floor = floor.max(Some((xact, seq)));
        }
        if gone.is_empty() {
            return Ok((looked_at, last));
        }
        report.documents += by_doc.len() as u64;
        // The documents' records of folded changes, and the authors' ranges held only folded, joined.
        let docs: Vec<i64> = by_doc.keys().copied().collect();
        let mut records: BTreeMap<i64, Summary> = BTreeMap::new();
        for r in tx.query("SELECT doc, summary FROM folded WHERE doc = ANY($1)", &[&docs]).map_err(pg)? {
            records.insert(r.get(0), super::states::folded_record(r.get(1))?);
        }
        let mut authors: Vec<i64> = by_doc.values().flat_map(|s| s.peers().map(|(a, _)| a.0 as i64)).collect();
        authors.sort_unstable();
        authors.dedup();
        let mut folded: AuthorRanges = BTreeMap::new();
        for r in tx.query("SELECT author, ranges FROM folded_held WHERE author = ANY($1)", &[&authors]).map_err(pg)? {
            folded.insert(PeerId(r.get::<_, i64>(0) as u64), (held_ranges(r.get(1))?, true));
        }
        let mut merged: Vec<(i64, MergedDoc)> = Vec::with_capacity(by_doc.len());
        for (doc, added) in by_doc {
            for (author, ranges) in added.peers() {
                let into = &mut folded.entry(author).or_insert_with(|| (RangeSet::default(), true)).0;
                for &(s, e) in ranges.ranges() {
                    into.insert(s, e);
                }
            }
            let mut record = records.remove(&doc).unwrap_or_default();
            record.union_with(&added);
            merged.push((doc, MergedDoc { record, added }));
        }
        let floor = floor.ok_or_else(|| Error::Corrupt("changes folded without a row".into()))?;
        if let Some(stability) = stability {
            collect_stable(&mut tx, &docs, stability)?;
        }
        persist_merges(&mut tx, &folded, merged.iter().map(|(doc, m)| (*doc, m)), Some(&Compacted { gone, floor }))?;
        tx.commit().map_err(pg)?;
        report.transactions += 1;
        // What this relay's summary knows: those changes have no row any more.
        self.committed(&BTreeMap::new(), &folded, &[]);
        Ok((looked_at, last))
    }
}
