//! What a store knows of the deletions of the changes it holds without their content, so that compaction can tell
//! which tombstones a stable frontier settles ([`crate::crdt::tombstones`]).
//!
//! A document's changes are in its log (their operations at hand) or folded into its snapshot: by compaction, or
//! merged in with another device's state. Table `unsettled` keeps, per document:
//! - `opaque`: the changes folded or merged whose deletions are not recorded. While the frontier does not cover all
//!   of them, no tombstone of the document is dropped.
//! - `deletions`: what the changes compaction folded while a frontier was kept that did not cover them delete
//!   ([`Deletions`]), until one does.
//!
//! A document without a row has every folded change opaque (the table's default, and what a store had before it):
//! rows are written only once a frontier is kept.

use super::compaction::folded_of;
use super::Summary;
use crate::crdt::change::Change;
use crate::crdt::clock::PeerId;
use crate::crdt::tombstones::{Deletions, Unsettled};
use crate::error::{Error, Result};
use crate::VersionVector;
use rusqlite::{params, Connection, OptionalExtension};

/// A document's row.
struct Record {
    opaque: Summary,
    deletions: Vec<Deletions>,
}

/// The row of document `row`, if it has one.
fn load(conn: &Connection, row: i64) -> Result<Option<Record>> {
    let got: Option<(Vec<u8>, Vec<u8>)> = conn
        .prepare_cached("SELECT opaque, deletions FROM unsettled WHERE doc = ?1")?
        .query_row(params![row], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((opaque, deletions)) = got else { return Ok(None) };
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("document {row}: unsettled deletions: {e}"));
    Ok(Some(Record {
        opaque: Summary::decode_dense(&opaque).map_err(|e| corrupt(&e))?,
        deletions: postcard::from_bytes(&deletions).map_err(|e| corrupt(&e))?,
    }))
}

fn save(conn: &Connection, row: i64, r: &Record) -> Result<()> {
    let deletions = postcard::to_allocvec(&r.deletions).map_err(|e| Error::Corrupt(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO unsettled (doc, opaque, deletions) VALUES (?1, ?2, ?3) \
         ON CONFLICT (doc) DO UPDATE SET opaque = ?2, deletions = ?3",
    )?
    .execute(params![row, r.opaque.encode_dense(), deletions])?;
    Ok(())
}

/// Changes `merged` came into document `row` with a state: their deletions are not known.
pub(super) fn merged(conn: &Connection, row: i64, merged: &Summary) -> Result<()> {
    if let Some(mut r) = load(conn, row)? {
        r.opaque.union_with(merged);
        save(conn, row, &r)?;
    }
    Ok(())
}

/// Compaction is about to fold `changes` into document `row`'s snapshot (before it records them folded): with a
/// frontier kept (`stable`), the deletions of those it does not cover are recorded; without one, they are opaque.
pub(super) fn folding(conn: &Connection, row: i64, changes: &[Change], stable: Option<&VersionVector>) -> Result<()> {
    let existing = load(conn, row)?;
    let Some(stable) = stable else {
        if let Some(mut r) = existing {
            for c in changes {
                r.opaque.insert(c.peer, c.start, c.end());
            }
            save(conn, row, &r)?;
        }
        return Ok(());
    };
    let existed = existing.is_some();
    let mut r = match existing {
        Some(r) => r,
        None => Record { opaque: folded_of(conn, row)?, deletions: Vec::new() },
    };
    let before = r.deletions.len();
    r.deletions.extend(changes.iter().filter(|c| c.end() > stable.get(c.peer)).filter_map(Deletions::of));
    // Written when new, even with nothing to record: from now on what is folded here is known, not opaque.
    if !existed || r.deletions.len() > before {
        save(conn, row, &r)?;
    }
    Ok(())
}

/// The deletions of document `row`'s changes that `stable` does not cover — those recorded, and those of its log —
/// or `None` when some opaque change is not covered (nothing of the document is then known to be settled). What
/// `stable` covers is forgotten from the row.
pub(super) fn of(conn: &Connection, row: i64, stable: &VersionVector) -> Result<Option<Unsettled>> {
    let loaded = load(conn, row)?;
    let existed = loaded.is_some();
    let mut r = match loaded {
        Some(r) => r,
        None => Record { opaque: folded_of(conn, row)?, deletions: Vec::new() },
    };
    let covered = |peer: PeerId, end: u64| end <= stable.get(peer);
    let before = r.deletions.len();
    r.deletions.retain(|d| !d.covered_by(stable));
    let opaque_covered =
        r.opaque.peers().all(|(peer, ranges)| ranges.ranges().last().is_none_or(|&(_, end)| covered(peer, end)));
    // Written when it changes, or to start the record (from now on what is folded here is known, not opaque).
    let forgets = opaque_covered && !r.opaque.is_empty();
    if forgets {
        r.opaque = Summary::new();
    }
    if forgets || (opaque_covered && !existed) || r.deletions.len() < before {
        save(conn, row, &r)?;
    }
    if !opaque_covered {
        log::debug!("document {row}: changes folded or merged without a record the frontier does not cover");
        return Ok(None);
    }
    let mut unsettled = Unsettled::new();
    for d in &r.deletions {
        unsettled.add(d);
    }
    let mut stmt = conn.prepare_cached(&format!("SELECT {} FROM changes WHERE doc = ?1", super::logrow::COLUMNS))?;
    let mut rows = stmt.query(params![row])?;
    while let Some(l) = rows.next()? {
        let logged = super::logrow::LogRow::read(l, 0)?;
        for part in logged.parts()? {
            let change = Change::decode(part.body).map_err(|e| Error::Corrupt(format!("document {row}: {e}")))?;
            if let Some(d) = Deletions::of(&change).filter(|d| !d.covered_by(stable)) {
                unsettled.add(&d);
            }
        }
    }
    Ok(Some(unsettled))
}
