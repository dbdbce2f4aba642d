//! How the change log's rows hold changes.
//!
//! A row holds one change — `body` its encoding, `hash` its content hash, `parts` NULL — or a **run**: consecutive
//! unsigned changes of one author to one document, logged by one transaction, each starting one counter after the
//! one before it ends. A run's `start..=end` therefore covers exactly its changes' counters, so everything that
//! reads only `peer, start, end` (what the store holds, what a document's state claims, the `(peer, start)`
//! lookups) reads a run as it reads a change. A run's `body` is its changes' encodings one after the other, its
//! `hash` their content hashes one after the other, and its `parts` says where each change ends: per change, the
//! varint of `end - start` and the varint of its encoding's length.
//!
//! A replayed edit of a text writes one change per keystroke; as runs, a hundred of them cost one row and one entry
//! in each of the log's indexes instead of a hundred.

use super::docs::LoggedChange;
use super::replicate::CHANGE_HASH_BYTES;
use crate::error::{Error, Result};
use crate::util::{read_varint, write_varint};

/// The most changes one run holds: its hashes and layout (about 18 bytes a change), which come before its body,
/// then stay within the row's first page.
pub(crate) const MAX_RUN_CHANGES: usize = 128;
/// The most bytes of encodings one run holds (a run reaches it with the change that crosses it): serving one
/// change of a run reads the whole row.
pub(crate) const MAX_RUN_BYTES: usize = 32 * 1024;

/// One change held by a log row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    /// Its first counter.
    pub start: u64,
    /// Its last counter.
    pub end: u64,
    /// Its encoding ([`crate::Change::encode`]).
    pub body: &'a [u8],
    /// Its content hash (`None` in a row written before hashes were kept, until they are filled in at open).
    pub hash: Option<[u8; CHANGE_HASH_BYTES]>,
}

/// A log row as read: its columns `start, end, body, hash, parts`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogRow<'a> {
    pub start: u64,
    pub end: u64,
    pub body: &'a [u8],
    pub hash: Option<&'a [u8]>,
    pub parts: Option<&'a [u8]>,
}

/// The columns [`LogRow::read`] reads, in its order.
pub(crate) const COLUMNS: &str = "start, end, body, hash, parts";

impl<'a> LogRow<'a> {
    /// The log row whose [`COLUMNS`] `r` holds from column `at` on (borrowed from `r`).
    pub fn read(r: &'a rusqlite::Row<'_>, at: usize) -> Result<LogRow<'a>> {
        Ok(LogRow { body: blob(r, at + 2)?.unwrap_or_default(), ..LogRow::layout(r, at, at + 3)? })
    }

    /// The row without its body, from its columns `start, end, hash, parts` in `r` from column `at` on (all before
    /// the body in a row: read without the body's overflow pages): enough for [`LogRow::spans`].
    pub fn read_layout(r: &'a rusqlite::Row<'_>, at: usize) -> Result<LogRow<'a>> {
        LogRow::layout(r, at, at + 2)
    }

    fn layout(r: &'a rusqlite::Row<'_>, at: usize, hash_at: usize) -> Result<LogRow<'a>> {
        Ok(LogRow {
            start: r.get::<_, i64>(at)? as u64,
            end: r.get::<_, i64>(at + 1)? as u64,
            body: &[],
            hash: blob(r, hash_at)?,
            parts: blob(r, hash_at + 1)?,
        })
    }

    /// The changes the row holds, in order (one for a row of one change). A run whose columns do not agree with
    /// each other is [`Error::Corrupt`].
    pub fn parts(&self) -> Result<Vec<Part<'a>>> {
        self.split(true)
    }

    /// As [`LogRow::parts`], without their bodies (empty): for a row read by [`LogRow::read_layout`].
    pub fn spans(&self) -> Result<Vec<Part<'a>>> {
        self.split(false)
    }

    fn split(&self, bodies: bool) -> Result<Vec<Part<'a>>> {
        let Some(mut layout) = self.parts else {
            return Ok(vec![Part {
                start: self.start,
                end: self.end,
                body: self.body,
                hash: self.hash.and_then(|h| h.try_into().ok()),
            }]);
        };
        let corrupt = || Error::Corrupt(format!("log row of changes {}..={}: malformed run", self.start, self.end));
        let mut hashes = self.hash.unwrap_or_default().chunks_exact(CHANGE_HASH_BYTES);
        if !hashes.remainder().is_empty() || hashes.len() > MAX_RUN_CHANGES {
            return Err(corrupt());
        }
        let mut out = Vec::with_capacity(hashes.len());
        let (mut next, mut body) = (Some(self.start), self.body);
        while !layout.is_empty() {
            let start = next.ok_or_else(corrupt)?;
            let span = read_varint(&mut layout).and_then(|v| u64::try_from(v).ok()).ok_or_else(corrupt)?;
            let len = read_varint(&mut layout).and_then(|v| usize::try_from(v).ok()).ok_or_else(corrupt)?;
            let end = start.checked_add(span).ok_or_else(corrupt)?;
            if end > self.end || (bodies && len > body.len()) {
                return Err(corrupt());
            }
            let (this, rest) = if bodies { body.split_at(len) } else { (body, body) };
            let hash = hashes.next().and_then(|h| h.try_into().ok()).ok_or_else(corrupt)?;
            out.push(Part { start, end, body: this, hash: Some(hash) });
            body = rest;
            next = end.checked_add(1);
        }
        let whole = out.last().is_some_and(|p| p.end == self.end);
        if !whole || !body.is_empty() || hashes.next().is_some() {
            return Err(corrupt());
        }
        Ok(out)
    }
}

fn blob<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> Result<Option<&'a [u8]>> {
    r.get_ref(i)?.as_blob_or_null().map_err(|e| Error::Corrupt(format!("log row: {e}")))
}

/// `changes` (one document's, in the order applied) split into the rows to log: the longest runs of unsigned
/// changes of one author whose counters follow on, within [`MAX_RUN_CHANGES`] and [`MAX_RUN_BYTES`]; a signed
/// change is a row of its own (its signature covers it alone).
pub(crate) fn runs(changes: &[LoggedChange]) -> impl Iterator<Item = &[LoggedChange]> {
    let mut rest = changes;
    std::iter::from_fn(move || {
        let first = rest.first()?;
        let mut n = 1;
        let mut bytes = first.body.len();
        if first.signature.is_none() {
            while let Some(next) = rest.get(n) {
                let follows = next.peer == first.peer && rest[n - 1].end.checked_add(1) == Some(next.start);
                if !follows || next.signature.is_some() || n == MAX_RUN_CHANGES || bytes >= MAX_RUN_BYTES {
                    break;
                }
                bytes += next.body.len();
                n += 1;
            }
        }
        let (run, tail) = rest.split_at(n);
        rest = tail;
        Some(run)
    })
}

/// The `body`, `hash` and `parts` columns of a run of two or more changes (see the module docs).
pub(crate) fn encode_run(run: &[LoggedChange]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut body = Vec::with_capacity(run.iter().map(|c| c.body.len()).sum());
    let mut hashes = Vec::with_capacity(run.len() * CHANGE_HASH_BYTES);
    let mut parts = Vec::with_capacity(run.len() * 3);
    for c in run {
        body.extend_from_slice(&c.body);
        hashes.extend_from_slice(&c.hash);
        write_varint((c.end - c.start).into(), &mut parts);
        write_varint(c.body.len() as u128, &mut parts);
    }
    (body, hashes, parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::clock::PeerId;

    fn change(peer: u64, start: u64, end: u64, body: &[u8], signed: bool) -> LoggedChange {
        LoggedChange {
            peer: PeerId(peer),
            start,
            end,
            body: body.to_vec(),
            hash: [start as u8; CHANGE_HASH_BYTES],
            digest: [0; 32],
            signature: signed.then(|| vec![1]),
            made_ms: 0,
        }
    }

    fn row<'a>(run: &[LoggedChange], cols: &'a (Vec<u8>, Vec<u8>, Vec<u8>)) -> LogRow<'a> {
        LogRow {
            start: run[0].start,
            end: run[run.len() - 1].end,
            body: &cols.0,
            hash: Some(&cols.1),
            parts: Some(&cols.2),
        }
    }

    #[test]
    fn runs_take_only_changes_that_follow_on() {
        let changes = [
            change(1, 1, 1, b"a", false),
            change(1, 2, 4, b"bcd", false),
            change(2, 1, 1, b"x", false), // another author
            change(1, 5, 5, b"e", false),
            change(1, 7, 7, b"g", false), // a gap
            change(1, 8, 8, b"h", true),  // signed
            change(1, 9, 9, b"i", false),
        ];
        let lens: Vec<usize> = runs(&changes).map(|r| r.len()).collect();
        assert_eq!(lens, [2, 1, 1, 1, 1, 1]);
        let long: Vec<LoggedChange> = (1..=600).map(|i| change(1, i, i, &[0; 100], false)).collect();
        let lens: Vec<usize> = runs(&long).map(|r| r.len()).collect();
        assert_eq!(lens, [128, 128, 128, 128, 88]);
        // 32 KiB of encodings: the run closes with the change that reaches it.
        let big: Vec<LoggedChange> = (1..=4).map(|i| change(1, i, i, &[0; 20_000], false)).collect();
        assert_eq!(runs(&big).map(|r| r.len()).collect::<Vec<_>>(), [2, 2]);
    }

    #[test]
    fn a_run_reads_back_as_its_changes() {
        let run = [change(3, 10, 10, b"one", false), change(3, 11, 15, b"", false), change(3, 16, 16, b"xyz", false)];
        let cols = encode_run(&run);
        let parts = row(&run, &cols).parts().unwrap();
        let expect: Vec<Part<'_>> =
            run.iter().map(|c| Part { start: c.start, end: c.end, body: &c.body, hash: Some(c.hash) }).collect();
        assert_eq!(parts, expect);
        let single = LogRow { start: 4, end: 6, body: b"b", hash: None, parts: None };
        assert_eq!(single.parts().unwrap(), [Part { start: 4, end: 6, body: b"b", hash: None }]);
    }

    #[test]
    fn a_run_whose_columns_disagree_is_corrupt() {
        let run = [change(3, 10, 10, b"one", false), change(3, 11, 12, b"two", false)];
        let cols = encode_run(&run);
        let good = row(&run, &cols);
        assert!(good.parts().is_ok());
        let bad = [
            LogRow { end: 11, ..good },                            // the parts reach past the row
            LogRow { end: 13, ..good },                            // or stop short of it
            LogRow { body: &cols.0[..5], ..good },                 // a body shorter than the parts say
            LogRow { body: b"onetwo!", ..good },                   // or longer
            LogRow { hash: Some(&cols.1[..16]), ..good },          // a hash missing
            LogRow { hash: Some(&cols.1[..20]), ..good },          // a partial hash
            LogRow { hash: None, ..good },                         // none
            LogRow { parts: Some(&cols.2[..3]), ..good },          // a truncated layout
            LogRow { parts: Some(&[0xff; 12]), ..good },           // a varint too long
            LogRow { parts: Some(&[]), ..good },                   // no part at all
            LogRow { start: u64::MAX - 1, end: u64::MAX, ..good }, // counters overflowing
        ];
        for (i, row) in bad.iter().enumerate() {
            assert!(matches!(row.parts(), Err(Error::Corrupt(_))), "case {i}: {:?}", row.parts());
        }
    }
}
