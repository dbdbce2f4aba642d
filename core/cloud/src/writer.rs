//! The cloud's own writes: the back office's upserts, updates and removals, made as a device of their own.
//!
//! A relay writes under an author id that no other writer uses: each relay run claims one when it starts (in
//! certificate mode a fresh chain of the relay's signing key, handed out by the `writers` table, so that relays
//! sharing one key never reuse one; in development mode a random id). Its changes are made with the same CRDT code
//! as a phone's — the document as the database holds it, edited — signed with the relay's key in certificate mode,
//! and applied through the checks a change received from a device passes (signature, the relay's certificate's
//! write permissions): what the relay may not write is refused, and nothing is stored. Devices receive these
//! changes like any other and check them the same way.
//!
//! Writes of one relay run one at a time (an author's counters follow each other). When a write fails in a way
//! that leaves unknown whether it was committed, the next write first reads the author's counters back from the
//! database, so that a counter is never used twice.

use crate::{CloudError, PgReplica};
use serde_json::{Map, Value as Json};
use shoaldb::crdt::clock::{wall_clock_ms, Hlc};
use shoaldb::security::{apply_received, Access, Checks, Enrolment, Signers};
use shoaldb::{DocChange, Document, Path, PeerId, Replica, Timestamp, Value};
use std::sync::Mutex;

/// How many chains a relay tries before giving up (each taken one is already used by some other writer).
const MAX_CHAIN_CLAIMS: usize = 64;

/// What a back-office write does to a document.
#[derive(Clone, Debug, PartialEq)]
pub enum Edit {
    /// Set the given fields (objects merged field by field), creating the document if it does not exist.
    Upsert(Map<String, Json>),
    /// Set the given fields of an existing document.
    Update(Map<String, Json>),
    /// Remove the document (a removal that replicates).
    Remove,
}

/// Why a back-office write was not made. Nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The collection, id or fields are not valid (the message says which).
    #[error("invalid write: {0}")]
    Invalid(String),
    /// The document does not exist (an update or removal).
    #[error("no document {collection}/{id}")]
    NotFound {
        /// Its collection.
        collection: String,
        /// Its id.
        id: String,
    },
    /// The relay's certificate does not let it make this write (or its signature did not verify).
    #[error("refused: {0}")]
    Refused(String),
    /// The database failed; the write may be retried.
    #[error("storage: {0}")]
    Storage(#[from] shoaldb::Error),
}

/// The author a relay run writes as, and where its counters are.
struct State {
    author: PeerId,
    /// The chain of the signing key `author` is (certificate mode).
    chain: u32,
    /// The next counter, or `None` when it must be read back from the database first.
    next: Option<u64>,
    clock: Hlc,
}

/// A relay's writer (see the module documentation).
pub struct CloudWriter {
    replica: PgReplica,
    /// The relay's enrolment in certificate mode: its signing key and certificate.
    enrolment: Option<Enrolment>,
    signers: Signers,
    state: Mutex<State>,
}

impl std::fmt::Debug for CloudWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudWriter").field("author", &self.author()).finish_non_exhaustive()
    }
}

impl CloudWriter {
    /// A writer for `replica`, admitted as `access` says; claims an author id no other writer uses, through
    /// `client` (a connection to the same database). Blocking: call it off the async runtime.
    ///
    /// # Errors
    /// [`CloudError`] when PostgreSQL fails, or no unused author id was found.
    pub fn new(replica: PgReplica, access: &Access, client: &mut postgres::Client) -> Result<CloudWriter, CloudError> {
        let enrolment = match access {
            Access::Certificates(e) => Some(Enrolment::clone(e)),
            _ => None,
        };
        let held = replica.summary()?;
        let mut claimed = None;
        for _ in 0..MAX_CHAIN_CLAIMS {
            let (author, chain) = match &enrolment {
                Some(e) => {
                    let key = e.signing_key().verifying_key();
                    let chain = claim_chain(client, key.device_id())?;
                    (key.author(chain), chain)
                }
                None => {
                    let mut bytes = [0u8; 8];
                    getrandom::fill(&mut bytes).map_err(|e| CloudError::Config(format!("randomness: {e}")))?;
                    (PeerId(u64::from_le_bytes(bytes)), 0)
                }
            };
            if held.ranges_of(author).is_none() {
                claimed = Some((author, chain));
                break;
            }
        }
        let (author, chain) =
            claimed.ok_or_else(|| CloudError::Config("no unused author id for the cloud's own writes".into()))?;
        log::info!("the cloud's own writes go under author {author}");
        Ok(CloudWriter {
            replica,
            enrolment,
            signers: Signers::default(),
            state: Mutex::new(State { author, chain, next: Some(1), clock: Hlc::new(Timestamp::new(0, 0)) }),
        })
    }

    /// The author id of this relay run's writes.
    pub fn author(&self) -> PeerId {
        self.lock().author
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make `edit` to the document `id` of `collection` (blocking: call it off the async runtime). Returns the
    /// document's JSON view as the write left it (`None` once removed).
    ///
    /// # Errors
    /// [`WriteError`]; nothing was stored.
    pub fn write(&self, collection: &str, id: &str, edit: Edit) -> Result<Option<Json>, WriteError> {
        shoaldb::store::check_collection(collection).map_err(|e| WriteError::Invalid(e.to_string()))?;
        shoaldb::store::check_doc_id(id).map_err(|e| WriteError::Invalid(e.to_string()))?;
        let fields = match &edit {
            Edit::Upsert(fields) | Edit::Update(fields) => {
                let mut fields = fields.clone();
                match fields.remove("_id") {
                    None => {}
                    Some(Json::String(s)) if s == id => {}
                    Some(other) => {
                        return Err(WriteError::Invalid(format!("_id {other} is not the document's id {id:?}")));
                    }
                }
                Some(Value::from_json_owned(Json::Object(fields)))
            }
            Edit::Remove => None,
        };
        let mut state = self.lock();
        let next = match state.next {
            Some(n) => n,
            None => self.next_from_database(state.author)?,
        };
        let mut doc = self.replica.document(collection, id)?.unwrap_or_else(Document::new);
        if !doc.exists() && !matches!(edit, Edit::Upsert(_)) {
            return Err(WriteError::NotFound { collection: collection.into(), id: id.into() });
        }
        let ts = state.clock.tick(wall_clock_ms());
        let mut editor = doc.edit(state.author, next, ts);
        let made = match fields {
            Some(fields) => editor.merge(Path::root(), fields),
            None => editor.remove_document(),
        };
        made.map_err(|e| WriteError::Invalid(e.to_string()))?;
        let next_after = editor.next_counter();
        let Some(change) = editor.finish() else { return Ok(doc.view(id)) };
        let change = DocChange::new(collection, id, change);
        // Until the outcome is known, the counters are not: a commit whose acknowledgement was lost used them.
        state.next = None;
        let report = match &self.enrolment {
            Some(enrolment) => {
                let change = change.signed(enrolment.signing_key(), state.chain);
                let digest = change.digest();
                let checks = Checks { signers: &self.signers, enrolment };
                apply_received(Some(checks), &self.replica, vec![(change, digest)])?
            }
            None => self.replica.apply_changes(&[change])?,
        };
        if let Some(refusal) = report.refusals.first() {
            state.next = Some(next);
            return Err(WriteError::Refused(refusal.reason.to_string()));
        }
        if report.applied != 1 {
            // Neither applied nor refused by the checks: the store found it in conflict (it cannot be, with an
            // author id of our own) — read the counters back before the next write.
            return Err(WriteError::Storage(shoaldb::Error::Corrupt(format!(
                "the cloud's own change was not applied: {report:?}"
            ))));
        }
        state.next = Some(next_after);
        Ok(doc.view(id))
    }

    /// The counter after the last one `author` holds in the database.
    fn next_from_database(&self, author: PeerId) -> Result<u64, WriteError> {
        self.replica.changed();
        let held = self.replica.summary()?;
        Ok(held.ranges_of(author).and_then(|r| r.ranges().last()).map_or(1, |&(_, end)| end + 1))
    }
}

/// A chain of `device`'s signing key that no writer has claimed (chain 0 is left to the device's own store).
fn claim_chain(client: &mut postgres::Client, device: PeerId) -> Result<u32, CloudError> {
    let row = client.query_one(
        "INSERT INTO writers (device, next_chain) VALUES ($1, 2) \
         ON CONFLICT (device) DO UPDATE SET next_chain = writers.next_chain + 1 RETURNING next_chain - 1",
        &[&(device.0 as i64)],
    )?;
    u32::try_from(row.get::<_, i64>(0)).map_err(|_| CloudError::Config(format!("device {device} has no chains left")))
}
