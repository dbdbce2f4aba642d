//! A document's first copy arrives whole (issue 17).
//!
//! When a store holds nothing of a document, the changes of it that a peer sends are held aside in memory until
//! every one the peer held when it sent them has arrived, then applied together. An app never sees half of a
//! document that arrived over a link that dropped halfway, and a device's copy of a document always covers
//! everything its sender held of it, which is what folding counters under a fleet's stable frontier relies on.
//!
//! How a receiver knows: the sender attaches to the first change of a document it sends the document's version
//! vector as it holds it (for each writer, the counter of its latest change to the document), unless the peer is
//! known to hold some of the document. A sender lists a document's changes author by author, each author's in counter
//! order, so once the receiver holds, for each writer of that version, a change reaching its counter, it holds every
//! change the sender had. Until then they wait here, bounded per link by [`MAX_HELD_BYTES`]: past it, the documents
//! held longest are applied as they are (and logged), so a document larger than the bound, or a sender that never
//! completes one, costs memory once and no more. A link that drops discards what it held: none of it was counted
//! as held by the store, so it is sent again in full.
//!
//! A document whose earlier changes the sender folded into its snapshot comes first as a state (a whole copy of
//! what was folded, sent ahead of the changes); changes held for a document when its state arrives are applied
//! right after it.

use crate::crdt::version::VersionVector;
use crate::store::{DocChange, Replica};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The most bytes of changes (and versions) one link holds aside for documents whose first copy is not yet whole.
pub const MAX_HELD_BYTES: usize = 4 << 20;

/// The largest version vector a sender attaches (encoded, about 10 bytes per writer); a document with more writers
/// arrives in parts.
pub const MAX_VERSION_BYTES: usize = 64 << 10;

/// A received change with the digest of its encoding as received (see [`super::session::ReceivedChanges`]).
pub(crate) type Received = (DocChange, [u8; 32]);

/// The documents one link holds aside until their first copy is whole.
#[derive(Default)]
pub(crate) struct FirstCopies {
    held: HashMap<(String, String), Held>,
    /// The documents held, by order of arrival (to release the oldest first when over the bound).
    order: BTreeMap<u64, (String, String)>,
    /// Bytes held, over every document.
    bytes: usize,
    next: u64,
}

struct Held {
    /// The latest version the sender attached.
    target: VersionVector,
    /// For each writer, the greatest counter of the held changes.
    reached: VersionVector,
    changes: Vec<Received>,
    bytes: usize,
    arrived: u64,
}

impl Held {
    fn is_whole(&self) -> bool {
        self.target.iter().all(|(writer, counter)| self.reached.get(writer) >= counter)
    }
}

impl FirstCopies {
    /// Sort a batch received from the peer (each change with its size as received and the version its sender
    /// attached, if any). Returns the changes to apply now, in order: those of documents the store holds or that
    /// are not held aside, then those of documents whose first copy this batch made whole (each document's in the
    /// order received). Keeps the rest. Reads the store only to learn which documents it holds (one look-up for
    /// the batch's new documents).
    pub fn sort(
        &mut self,
        store: &dyn Replica,
        batch: Vec<(Received, usize, Option<VersionVector>)>,
    ) -> crate::Result<Vec<Received>> {
        // The documents that may be first copies, looked up at once (one statement on the cloud).
        let mut candidates: Vec<(&str, &str)> = batch
            .iter()
            .filter(|((dc, _), _, version)| {
                version.is_some() && !self.held.contains_key(&(dc.collection.clone(), dc.doc_id.clone()))
            })
            .map(|((dc, _), _, _)| (dc.collection.as_str(), dc.doc_id.as_str()))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let found = if candidates.is_empty() { Vec::new() } else { store.has_docs(&candidates)? };
        let absent: HashSet<(String, String)> = candidates
            .iter()
            .zip(found)
            .filter(|(_, found)| !found)
            .map(|((c, i), _)| (c.to_string(), i.to_string()))
            .collect();
        let mut now = Vec::with_capacity(batch.len());
        let mut touched = Vec::new();
        for ((dc, digest), size, version) in batch {
            // Nearly always: nothing held, and a change the sender did not mark as a document's first.
            if version.is_none() && self.held.is_empty() {
                now.push((dc, digest));
                continue;
            }
            let key = (dc.collection.clone(), dc.doc_id.clone());
            let held = match self.held.get_mut(&key) {
                Some(held) => held,
                None => match &version {
                    Some(_) if absent.contains(&key) => {
                        self.next += 1;
                        self.order.insert(self.next, key.clone());
                        let held = Held {
                            target: VersionVector::new(),
                            reached: VersionVector::new(),
                            changes: Vec::new(),
                            bytes: 0,
                            arrived: self.next,
                        };
                        self.held.entry(key.clone()).or_insert(held)
                    }
                    _ => {
                        now.push((dc, digest));
                        continue;
                    }
                },
            };
            if let Some(v) = version {
                held.bytes += version_bytes(&v);
                self.bytes += version_bytes(&v);
                held.target.join(&v);
            }
            held.bytes += size;
            self.bytes += size;
            held.reached.raise(dc.change.peer, dc.change.end());
            held.changes.push((dc, digest));
            touched.push(key);
        }
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            if self.held.get(&key).is_some_and(Held::is_whole) {
                now.extend(self.take(&key));
            }
        }
        while self.bytes > MAX_HELD_BYTES {
            let Some((_, key)) = self.order.pop_first() else { break };
            log::info!(
                "document {}/{} is taken in parts: more than {MAX_HELD_BYTES} bytes wait for first copies",
                key.0,
                key.1
            );
            now.extend(self.take(&key));
        }
        Ok(now)
    }

    /// The changes held for one document, which stops being held (its state arrived, or it is whole).
    pub fn release(&mut self, collection: &str, doc_id: &str) -> Vec<Received> {
        self.take(&(collection.to_owned(), doc_id.to_owned()))
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn take(&mut self, key: &(String, String)) -> Vec<Received> {
        match self.held.remove(key) {
            Some(held) => {
                self.bytes -= held.bytes;
                self.order.remove(&held.arrived);
                held.changes
            }
            None => Vec::new(),
        }
    }
}

fn version_bytes(v: &VersionVector) -> usize {
    16 * v.iter().count() + 16
}

/// About the bytes `v` takes on the wire (an author id is a varint of up to 10 bytes, a counter a few more): what
/// a sender counts against a batch and flow control, and how it keeps a version within [`MAX_VERSION_BYTES`].
pub(crate) fn version_wire_len(v: &VersionVector) -> usize {
    20 * v.iter().count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Summary;
    use crate::Store;
    use serde_json::json;

    /// Store `a`'s changes, each with the version `a` holds of its document, as a sender attaches it.
    fn sent(a: &Store) -> Vec<(Received, usize, Option<VersionVector>)> {
        let entries = a.replica().log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap();
        entries
            .into_iter()
            .map(|e| {
                let dc = DocChange::decode(&e.to_wire()).unwrap();
                ((dc, [0; 32]), e.wire_len(), e.version.as_deref().cloned())
            })
            .collect()
    }

    fn docs(changes: &[Received]) -> Vec<&str> {
        changes.iter().map(|(dc, _)| dc.doc_id.as_str()).collect()
    }

    #[test]
    fn a_document_is_held_until_every_change_its_sender_holds_arrived() {
        let a = Store::open(":memory:").unwrap();
        let b = Store::open(":memory:").unwrap();
        a.upsert("c", json!({"_id": "known", "n": 0})).unwrap();
        b.replica().apply_changes(&a.replica().changes_since(&Summary::new()).unwrap()).unwrap();
        for i in 0..3 {
            a.upsert("c", json!({"_id": "new", "n": i})).unwrap();
            a.upsert("c", json!({"_id": "known", "n": i + 1})).unwrap();
        }
        let have = b.replica().summary().unwrap();
        let all: Vec<_> = sent(&a)
            .into_iter()
            .filter(|((dc, _), _, _)| !have.contains(dc.change.peer, dc.change.start, dc.change.end()))
            .collect();
        assert_eq!(all.len(), 6);
        let mut held = FirstCopies::default();
        let mut batches = all.into_iter();
        // The first two changes: one of a new document (held), one of a document b holds (applied now).
        let now = held.sort(&b.replica(), batches.by_ref().take(2).collect()).unwrap();
        assert_eq!(docs(&now), ["known"]);
        assert!(!held.is_empty());
        let now = held.sort(&b.replica(), batches.by_ref().take(2).collect()).unwrap();
        assert_eq!(docs(&now), ["known"], "the new document is not whole yet");
        // Its last change: all of it, in the order received.
        let now = held.sort(&b.replica(), batches.collect()).unwrap();
        assert_eq!(docs(&now), ["known", "new", "new", "new"]);
        let starts: Vec<u64> = now.iter().skip(1).map(|(dc, _)| dc.change.start).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "in the order sent: {starts:?}");
        assert!(held.is_empty());
    }

    #[test]
    fn changes_without_a_version_and_documents_the_store_holds_pass_through() {
        let a = Store::open(":memory:").unwrap();
        let b = Store::open(":memory:").unwrap();
        for i in 0..3 {
            a.upsert("c", json!({"_id": "d", "n": i})).unwrap();
        }
        let mut all = sent(&a);
        all.truncate(2);
        let unversioned: Vec<_> = all.iter().cloned().map(|(c, n, _)| (c, n, None)).collect();
        let mut held = FirstCopies::default();
        assert_eq!(held.sort(&b.replica(), unversioned).unwrap().len(), 2);
        assert!(held.is_empty());
    }

    #[test]
    fn a_malformed_version_closes_the_link_and_changes_nothing() {
        use crate::crdt::clock::PeerId;
        let a = Store::open(":memory:").unwrap();
        let b = Store::open(":memory:").unwrap();
        a.upsert("c", json!({"_id": "d", "n": 1})).unwrap();
        let entry = a.replica().log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap().remove(0);
        // Out of order, and a zero counter: what no honest sender encodes.
        for bad in [vec![(PeerId(2), 1u64), (PeerId(1), 1)], vec![(PeerId(1), 0)]] {
            let version: VersionVector = postcard::from_bytes(&postcard::to_allocvec(&bad).unwrap()).unwrap();
            let change =
                crate::sync::wire::WireChange { change: entry.to_wire(), signature: None, version: Some(version) };
            let mut session = super::super::session::Session::start(&b.replica(), "b", Vec::new()).unwrap();
            assert!(matches!(session.receive_changes(vec![change], false), Err(crate::sync::SyncError::Protocol(_))));
        }
        assert_eq!(b.replica().summary().unwrap(), Summary::new());
    }

    #[test]
    fn past_the_bound_the_documents_held_longest_are_applied_as_they_are() {
        let a = Store::open(":memory:").unwrap();
        let b = Store::open(":memory:").unwrap();
        for doc in ["x", "y"] {
            for i in 0..2 {
                a.upsert("c", json!({"_id": doc, "n": i})).unwrap();
            }
        }
        let all = sent(&a);
        let (x, y): (Vec<_>, Vec<_>) = all.into_iter().partition(|((dc, _), _, _)| dc.doc_id == "x");
        let big = |v: Vec<(Received, usize, Option<VersionVector>)>| {
            v.into_iter().take(1).map(|(c, _, v)| (c, MAX_HELD_BYTES / 2 + 1, v)).collect::<Vec<_>>()
        };
        let mut held = FirstCopies::default();
        assert!(held.sort(&b.replica(), big(x)).unwrap().is_empty());
        // Over the bound: x, held longest, goes in part; y stays.
        let now = held.sort(&b.replica(), big(y)).unwrap();
        assert_eq!(docs(&now), ["x"]);
        assert!(!held.is_empty());
        assert!(held.bytes <= MAX_HELD_BYTES);
    }
}
