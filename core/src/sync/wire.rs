//! The sync wire format: one [`Message`] per encoded message, a version byte first, then the message in postcard's
//! compact form. Messages are carried by a link's secure channel, cut into frames of at most
//! [`crate::transport::frame::MAX_FRAME_LEN`] bytes (see [`super::link`]). Everything decoded here comes from
//! another device: sizes are bounded and every field is checked before anything acts on it.

use crate::crdt::change::MAX_ENCODED_CHANGE_BYTES;
use crate::store::{AuthorDigest, Summary};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The protocol version this build speaks. A message with another version byte is refused. (2: changes travel
/// with their authors' signatures, and certificate chains ahead of them; 3: a document's first change sent carries
/// its version, so that a first copy arrives whole; 4: a stable frontier carries what a store must hold to fold under
/// it.)
pub const PROTOCOL_VERSION: u8 = 4;

/// The largest message accepted (the largest change plus room for its header): a [`Message::Changes`].
pub const MAX_MESSAGE_BYTES: usize = MAX_ENCODED_CHANGE_BYTES + (1 << 20);

/// The largest [`Message::Summary`] accepted: the largest summary a store accepts from elsewhere
/// (`store::replicate::MAX_SUMMARY_BYTES`, 16 MiB: one of many scattered changes) plus room for its header. Decoding
/// one costs memory in proportion (up to about eight times its size), so it is bounded well below
/// [`MAX_MESSAGE_BYTES`].
pub const MAX_SUMMARY_MESSAGE_BYTES: usize = (16 << 20) + 16;

/// The largest message of any other kind accepted (an interest, presence record or attachment chunk is far
/// smaller). Checked from a message's first frame, before the rest is reassembled.
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 4 << 20;

/// The postcard variant indexes of the messages allowed more than [`MAX_CONTROL_MESSAGE_BYTES`].
const SUMMARY_VARIANT: u8 = 2;
const CHANGES_VARIANT: u8 = 3;
const STATES_VARIANT: u8 = 13;
const ATTESTED_STATES_VARIANT: u8 = 14;
const WANT_ATTESTED_VARIANT: u8 = 15;

/// The largest a message may be, from its first bytes (the version byte, then the message kind).
pub(crate) fn size_limit(start: &[u8]) -> usize {
    match start.get(1) {
        Some(&CHANGES_VARIANT | &STATES_VARIANT | &ATTESTED_STATES_VARIANT) => MAX_MESSAGE_BYTES,
        Some(&SUMMARY_VARIANT | &WANT_ATTESTED_VARIANT) => MAX_SUMMARY_MESSAGE_BYTES,
        _ => MAX_CONTROL_MESSAGE_BYTES,
    }
}

/// Changes are sent in batches of about this many bytes.
pub const BATCH_BYTES: usize = 48 << 10;

/// Attachment bytes travel in chunks of this size.
pub const ATTACHMENT_CHUNK: usize = 32 << 10;

/// The most subscriptions one [`Message::Interest`] may carry. A device asking its neighbour for more than this
/// (its own and those it carries for others) merges them first ([`bounded_interest`]).
pub const MAX_SUBSCRIPTIONS: usize = 1024;
/// The longest filter of one subscription, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// The most filtered subscriptions of one collection in one [`Message::Interest`]: every document of the collection
/// is checked against each of them (when it changes, and again when the interest changes), so this bounds the work
/// one document costs. More are merged into the whole collection ([`bounded_interest`]).
pub const MAX_FILTERS_PER_COLLECTION: usize = 16;
/// The most bytes of filters of one collection in one [`Message::Interest`] (see [`MAX_FILTERS_PER_COLLECTION`]).
pub const MAX_FILTER_BYTES_PER_COLLECTION: usize = 16 << 10;
/// The most bytes of filters in one [`Message::Interest`], all collections together: a relay combines the
/// interests of all its neighbours for each of them, so this bounds that work and the memory interests take.
pub const MAX_INTEREST_FILTER_BYTES: usize = 64 << 10;
const MAX_NAME_BYTES: usize = 256;
/// The most links one presence record may list (a longer one is refused).
pub const MAX_PRESENCE_LINKS: usize = 1024;

/// What a device wants: the documents of one collection (every collection when `collection` is `None`), all of
/// them or those matching a filter in the query language (see [`crate::query`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subscription {
    /// The collection; `None` for every collection.
    pub collection: Option<String>,
    /// A filter in the query language that the documents must match (such as `done == false`); `None` for every
    /// document of the collection.
    pub filter: Option<String>,
}

impl Subscription {
    /// Every document of every collection.
    pub fn everything() -> Subscription {
        Subscription { collection: None, filter: None }
    }

    /// Every document of `collection`.
    pub fn collection(name: &str) -> Subscription {
        Subscription { collection: Some(name.to_string()), filter: None }
    }

    /// The documents of `collection` matching `filter`.
    pub fn filtered(name: &str, filter: &str) -> Subscription {
        Subscription { collection: Some(name.to_string()), filter: Some(filter.to_string()) }
    }

    /// Parse `COLLECTION` or `COLLECTION:FILTER` (the CLI's form); `*` alone is every collection.
    pub fn parse(s: &str) -> Result<Subscription, WireError> {
        let (c, f) = match s.split_once(':') {
            Some((c, f)) => (c.trim(), Some(f.trim().to_string()).filter(|f| !f.is_empty())),
            None => (s.trim(), None),
        };
        let sub = match c {
            "*" if f.is_none() => Subscription::everything(),
            _ => Subscription { collection: Some(c.to_string()), filter: f },
        };
        sub.validate()?;
        Ok(sub)
    }

    fn validate(&self) -> Result<(), WireError> {
        if self.collection.is_none() && self.filter.is_some() {
            return Err(WireError::Invalid("a filter without a collection".into()));
        }
        if let Some(c) = &self.collection {
            crate::store::check_collection(c).map_err(|e| WireError::Invalid(e.to_string()))?;
        }
        if let Some(f) = &self.filter {
            if f.len() > MAX_FILTER_BYTES {
                return Err(WireError::Invalid(format!("filter of {} bytes", f.len())));
            }
            crate::query::Query::filter(f).map_err(|e| WireError::Invalid(format!("filter {f:?}: {e}")))?;
        }
        Ok(())
    }
}

/// Subscriptions in the form sent to a neighbour: sorted, without duplicates, `*` absorbing everything and a whole
/// collection absorbing its filters — and within the bounds a neighbour accepts, by widening rather than dropping
/// (a device may then receive more than it asked for, never less):
///
/// 1. a collection with more than [`MAX_FILTERS_PER_COLLECTION`] filters, or more than
///    [`MAX_FILTER_BYTES_PER_COLLECTION`] bytes of them, is asked for whole;
/// 2. while there are more than [`MAX_SUBSCRIPTIONS`], or more than [`MAX_INTEREST_FILTER_BYTES`] of filters, the
///    collection with the most filters (then the most bytes of them) is asked for whole;
/// 3. if still more (that many collections), everything is asked for (`*`).
///
/// A relay asks its neighbours for its own subscriptions plus every other neighbour's: however many those are, its
/// message never is one the neighbours must refuse.
pub fn bounded_interest(subs: Vec<Subscription>) -> Vec<Subscription> {
    bounded_interest_of(subs.iter())
}

/// [`bounded_interest`] of borrowed subscriptions: only what is kept is copied.
pub(crate) fn bounded_interest_of<'a>(subs: impl Iterator<Item = &'a Subscription>) -> Vec<Subscription> {
    // Per collection: `None` when wanted whole, else its filters.
    let mut by_collection: BTreeMap<&str, Option<BTreeSet<&str>>> = BTreeMap::new();
    for s in subs {
        let Some(c) = s.collection.as_deref() else {
            if s.filter.is_none() {
                return vec![Subscription::everything()];
            }
            continue;
        };
        let entry = by_collection.entry(c).or_insert_with(|| Some(BTreeSet::new()));
        match (s.filter.as_deref(), entry.as_mut()) {
            (None, _) => *entry = None,
            (Some(f), Some(filters)) => {
                filters.insert(f);
            }
            (Some(_), None) => {}
        }
    }
    let bytes_of = |f: &BTreeSet<&str>| f.iter().map(|f| f.len()).sum::<usize>();
    for filters in by_collection.values_mut() {
        let too_many = filters
            .as_ref()
            .is_some_and(|f| f.len() > MAX_FILTERS_PER_COLLECTION || bytes_of(f) > MAX_FILTER_BYTES_PER_COLLECTION);
        if too_many {
            *filters = None;
        }
    }
    let mut total: usize = by_collection.values().map(|f| f.as_ref().map_or(1, BTreeSet::len)).sum();
    let mut filter_bytes: usize = by_collection.values().flatten().map(bytes_of).sum();
    if total > MAX_SUBSCRIPTIONS || filter_bytes > MAX_INTEREST_FILTER_BYTES {
        // The collections with the most filters first, then the most bytes of them (then by name, so every device
        // decides alike).
        let mut order: Vec<(usize, usize, &str)> =
            by_collection.iter().filter_map(|(c, f)| f.as_ref().map(|f| (f.len(), bytes_of(f), *c))).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then_with(|| a.2.cmp(b.2)));
        for (n, bytes, c) in order {
            if total <= MAX_SUBSCRIPTIONS && filter_bytes <= MAX_INTEREST_FILTER_BYTES {
                break;
            }
            by_collection.insert(c, None);
            total -= n.saturating_sub(1);
            filter_bytes -= bytes;
        }
    }
    if total > MAX_SUBSCRIPTIONS {
        return vec![Subscription::everything()];
    }
    let mut out = Vec::with_capacity(total);
    for (c, filters) in by_collection {
        match filters {
            None => out.push(Subscription::collection(c)),
            Some(filters) => out.extend(filters.iter().map(|f| Subscription::filtered(c, f))),
        }
    }
    out
}

impl std::fmt::Display for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.collection, &self.filter) {
            (None, _) => write!(f, "*"),
            (Some(c), None) => write!(f, "{c}"),
            (Some(c), Some(q)) => write!(f, "{c}:{q}"),
        }
    }
}

/// How a link is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TransportKind {
    /// The local network (TCP).
    Lan,
    /// Bluetooth LE (GATT or an L2CAP channel).
    Ble,
    /// The cloud's relays over the internet: a WebSocket (`ws://`, `wss://`) a device dialled, or one a relay
    /// accepted. (Presence records list such links as [`TransportKind::Lan`]: devices of protocol 2 from before
    /// this kind existed decode only the two others.)
    Cloud,
}

impl TransportKind {
    /// Which transport is used first: lower is preferred. It carries the data when a device is linked over
    /// several, and attachments are asked for over it first. The LAN is the fastest; the cloud, when present, comes
    /// before Bluetooth LE (it is faster, and holds everything the device may read).
    pub fn preference(self) -> u8 {
        match self {
            TransportKind::Lan => 0,
            TransportKind::Cloud => 1,
            TransportKind::Ble => 2,
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Lan => "lan",
            TransportKind::Ble => "ble",
            TransportKind::Cloud => "cloud",
        })
    }
}

/// One direct link of a device, as announced in presence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceLink {
    /// The key of the device at the other end ([`DeviceKey`](crate::security::DeviceKey) bytes).
    pub device: [u8; 32],
    /// What carries the link.
    pub transport: TransportKind,
}

/// A change as it travels: its [`crate::DocChange`] encoding, and its author's signature (forwarded unchanged by
/// every relay; `None` when its author was not enrolled).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireChange {
    /// The [`crate::DocChange`] encoding.
    pub change: Vec<u8>,
    /// Its author's signature.
    pub signature: Option<crate::security::ChangeSignature>,
    /// With the first change of a document the sender sends, unless the receiver is known to hold some of it: the
    /// document's version vector as the sender holds it. A receiver that holds nothing of the document holds its
    /// changes aside until they reach that version (see [`super::first_copy`]).
    pub version: Option<crate::crdt::version::VersionVector>,
}

impl WireChange {
    /// An encoded [`crate::DocChange`] without a signature.
    pub fn unsigned(change: Vec<u8>) -> WireChange {
        WireChange { change, signature: None, version: None }
    }

    /// An encoded [`crate::DocChange`] with its signature, without a version.
    pub fn signed(change: Vec<u8>, signature: Option<crate::security::ChangeSignature>) -> WireChange {
        WireChange { change, signature, version: None }
    }
}

/// The most certificate chains one [`Message::Certificates`] may carry.
pub const MAX_CHAINS_PER_MESSAGE: usize = 64;

/// A sync message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message on a secure link: who we are.
    Hello {
        /// The sender's device name, shown to the other devices (at most 256 bytes).
        name: String,
        /// The [`PeerId`](crate::PeerId) of the sender's store (informational: the receiver does not act on it).
        store_peer: u64,
    },
    /// What the sender wants from the receiver: its own subscriptions and those it carries for its other neighbours.
    Interest {
        /// Every subscription the sender asks for (at most [`MAX_SUBSCRIPTIONS`], at most
        /// [`MAX_FILTERS_PER_COLLECTION`] filters per collection and [`MAX_INTEREST_FILTER_BYTES`] of filters in
        /// all; a filter needs a collection); it replaces the interest sent before.
        subscriptions: Vec<Subscription>,
    },
    /// The changes the sender holds.
    Summary {
        /// The sender's changes, by author and counter ranges. The first one is complete; later ones add what the
        /// sender received since.
        summary: Summary,
    },
    /// Changes, causal within each document.
    Changes {
        /// Each change with its signature.
        changes: Vec<WireChange>,
    },
    /// Flow control: the receiver has processed this many more bytes of changes; the sender may send as many more.
    Credit {
        /// Bytes of encoded changes processed since the last credit.
        bytes: u64,
    },
    /// A device's direct links, flooded through the mesh. A higher `seq` replaces a lower one.
    Presence {
        /// The key of the device whose links these are ([`DeviceKey`](crate::security::DeviceKey) bytes).
        origin: [u8; 32],
        /// The origin's sequence number for this record; it grows with each new record of the origin.
        seq: u64,
        /// The origin's device name.
        name: String,
        /// The origin's direct links (at most 1024).
        links: Vec<PresenceLink>,
        /// The origin's signature of the record (certificate mode; `None` in development mode).
        signature: Option<crate::security::PresenceSignature>,
    },
    /// Please send the attachment `hash` from `offset`; `hops` is how many more devices may relay the request.
    FetchAttachment {
        /// The requester's number for this request; the answers carry it.
        request: u64,
        /// The attachment's BLAKE3 hash.
        hash: [u8; 32],
        /// The bytes the requester holds already: send from there.
        offset: u64,
        /// How many more devices may relay the request: 0 means the receiver answers only from its own store (a
        /// fetch starts with [`MAX_HOPS`](super::MAX_HOPS)).
        hops: u8,
    },
    /// Bytes of a requested attachment.
    AttachmentChunk {
        /// The request answered.
        request: u64,
        /// Where `data` starts within the attachment, in bytes.
        offset: u64,
        /// The attachment's length in bytes.
        total: u64,
        /// The bytes (this build sends at most [`ATTACHMENT_CHUNK`]; up to four times as many are accepted).
        data: Vec<u8>,
    },
    /// The attachment of `request` is not available here (nor through the devices asked).
    AttachmentUnavailable {
        /// The request answered.
        request: u64,
    },
    /// The sender's side of this link now carries the data (the link it preferred went): please send your current
    /// [`Message::Summary`], so that only what is missing travels.
    Resync,
    /// Issue 13 (equivocation): what the sender holds of some authors, one [`AuthorDigest`] each (at most
    /// [`MAX_DIGESTS_PER_MESSAGE`]). The receiver compares those of which it holds the same counters with its own;
    /// a difference means the author made two different changes for one counter, and each side sends the other
    /// its changes of that author again, so both find and record the pair.
    Digests {
        /// One per author.
        authors: Vec<AuthorDigest>,
    },
    /// Issue 14: a revocation list of the app authority (a
    /// [`RevocationList`](crate::security::RevocationList) encoding, at most
    /// [`MAX_REVOCATION_LIST_BYTES`](crate::security::revocation::MAX_REVOCATION_LIST_BYTES)). Every list a device
    /// holds goes first thing on every new link; a list new to the receiver takes effect at once (links to what it
    /// revokes close) and is passed on to every other link.
    Revocations {
        /// The encoded list.
        list: Vec<u8>,
    },
    /// Issue 14: the certificate chains of devices whose signed changes follow (each a
    /// [`CertificateChain`](crate::security::CertificateChain) encoding; at most [`MAX_CHAINS_PER_MESSAGE`]), sent
    /// once per link ahead of the first change each signed, so that a device can check changes of authors it never
    /// met. A chain that does not lead to a pinned authority closes the link; a revoked one is ignored.
    Certificates {
        /// The encoded chains.
        chains: Vec<Vec<u8>>,
    },
    /// Issue 17: documents' whole states, in place of changes the sender folded into their snapshots (see
    /// [`crate::Store::compact`]) and the receiver lacks. Development mode only (a state carries no author's
    /// signature). Each state is at most [`crate::store::MAX_STATE_BYTES`]; a batch of small ones shares a message.
    States {
        /// The states.
        states: Vec<crate::store::DocState>,
    },
    /// Issue 17, certificate mode: documents' states signed by an attester (see
    /// [`crate::security::attestation`]), in place of signed changes the sender folded and the receiver lacks;
    /// sent after the attesters' certificate chains ([`Message::Certificates`]). Each is checked on receipt; one
    /// that fails is refused alone. Bounded like [`Message::States`].
    AttestedStates {
        /// The states.
        states: Vec<crate::store::AttestedState>,
    },
    /// Issue 17, certificate mode: the signed changes in the sender's log that no attested state it keeps holds
    /// (sent as a session starts, when there are any). The receiver sends back the attested states it keeps that
    /// hold some of them ([`Message::AttestedStates`]), so that the sender can fold those changes too.
    WantAttested {
        /// The changes.
        changes: Summary,
    },
    /// Certificate mode (issue 17): the newest roster's stable frontier the sender keeps, signed by an attester
    /// (after its chain, when the receiver may lack it). Sent as a session starts and when a newer one is kept; a
    /// receiver checks it ([`crate::security::Signers::check_frontier`]), keeps it if it is newer than its own, and
    /// passes it on. One that fails the check is ignored (logged).
    Frontier {
        /// The frontier (its two summaries at most [`MAX_FRONTIER_BYTES`] together, dense encoding).
        frontier: crate::security::StableFrontier,
    },
}

/// The largest stable frontier signed or accepted: its two summaries' dense encodings together.
pub const MAX_FRONTIER_BYTES: usize = 1 << 20;

/// The most states one [`Message::States`] or [`Message::AttestedStates`] carries: each costs the receiver a
/// merge (and a signature check), whatever its size.
pub const MAX_STATES_PER_MESSAGE: usize = 1024;

/// The states of a [`Message::States`] or [`Message::AttestedStates`] checked for their number, size and summaries.
fn check_states<'a>(states: impl ExactSizeIterator<Item = &'a crate::store::DocState>) -> Result<(), WireError> {
    if states.len() > MAX_STATES_PER_MESSAGE {
        return Err(WireError::Invalid(format!("{} states in one message", states.len())));
    }
    match { states }.find(|s| s.state.len() > crate::store::MAX_STATE_BYTES || !s.changes.is_well_formed()) {
        Some(s) => Err(WireError::Invalid(format!("a malformed state of {}/{}", s.collection, s.doc_id))),
        None => Ok(()),
    }
}

/// The most [`AuthorDigest`]s in one [`Message::Digests`] (40 bytes each: 160 KiB): what a receiver compares per
/// message (each digest it has not computed yet reads that author's rows of the log once).
pub const MAX_DIGESTS_PER_MESSAGE: usize = 4096;

/// A message that could not be decoded or is not acceptable.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The message starts with a protocol version this build does not speak (the version byte found): the other
    /// device runs an incompatible release.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    /// The message has no bytes at all.
    #[error("empty message")]
    Empty,
    /// The message is longer than allowed for its kind ([`MAX_MESSAGE_BYTES`], [`MAX_SUMMARY_MESSAGE_BYTES`] or
    /// [`MAX_CONTROL_MESSAGE_BYTES`]; its length in bytes, or as far as it was received).
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// The bytes do not decode to a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decodes but a field is out of bounds or invalid, such as a subscription's filter or a device
    /// name that is too long; also a subscription given as text that is not valid.
    #[error("invalid message: {0}")]
    Invalid(String),
}

impl Message {
    /// The version byte, then the message.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![PROTOCOL_VERSION];
        // Serialising plain data into a Vec cannot fail.
        postcard::to_extend(self, out).unwrap_or_else(|_| vec![PROTOCOL_VERSION])
    }

    /// Decode and check a message. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
        let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
        if version != PROTOCOL_VERSION {
            return Err(WireError::UnsupportedVersion(version));
        }
        if bytes.len() > size_limit(bytes) {
            return Err(WireError::TooLarge(bytes.len()));
        }
        let (msg, rest): (Message, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| WireError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(WireError::Malformed(format!("{} trailing bytes", rest.len())));
        }
        msg.validate()?;
        Ok(msg)
    }

    fn validate(&self) -> Result<(), WireError> {
        let invalid = |s: String| Err(WireError::Invalid(s));
        match self {
            Message::Hello { name, .. } | Message::Presence { name, .. } if name.len() > MAX_NAME_BYTES => {
                invalid(format!("device name of {} bytes", name.len()))
            }
            Message::Interest { subscriptions } => {
                if subscriptions.len() > MAX_SUBSCRIPTIONS {
                    return invalid(format!("{} subscriptions", subscriptions.len()));
                }
                // Sizes first (cheap), then the filters are parsed.
                let mut per_collection: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
                let mut filter_bytes = 0usize;
                for s in subscriptions {
                    if let (Some(c), Some(f)) = (&s.collection, &s.filter) {
                        filter_bytes += f.len();
                        if filter_bytes > MAX_INTEREST_FILTER_BYTES {
                            return invalid(format!("over {MAX_INTEREST_FILTER_BYTES} bytes of filters"));
                        }
                        let (n, bytes) = per_collection.entry(c).or_default();
                        *n += 1;
                        *bytes += f.len();
                        if *n > MAX_FILTERS_PER_COLLECTION || *bytes > MAX_FILTER_BYTES_PER_COLLECTION {
                            return invalid(format!("too many filters for collection {c:?}"));
                        }
                    }
                }
                subscriptions.iter().try_for_each(Subscription::validate)
            }
            Message::Summary { summary } | Message::WantAttested { changes: summary } if !summary.is_well_formed() => {
                invalid("malformed summary".into())
            }
            Message::Digests { authors } if authors.len() > MAX_DIGESTS_PER_MESSAGE => {
                invalid(format!("{} author digests", authors.len()))
            }
            Message::Revocations { list } if list.len() > crate::security::revocation::MAX_REVOCATION_LIST_BYTES => {
                invalid(format!("a revocation list of {} bytes", list.len()))
            }
            Message::States { states } => check_states(states.iter()),
            Message::Frontier { frontier } if frontier.summaries_len() > MAX_FRONTIER_BYTES => {
                invalid("a stable frontier over its bound".into())
            }
            Message::AttestedStates { states } => check_states(states.iter().map(|a| &a.state)),
            Message::Certificates { chains } => {
                if chains.len() > MAX_CHAINS_PER_MESSAGE {
                    return invalid(format!("{} certificate chains", chains.len()));
                }
                match chains.iter().find(|c| c.len() > crate::security::certificate::MAX_CHAIN_BYTES) {
                    Some(c) => invalid(format!("a certificate chain of {} bytes", c.len())),
                    None => Ok(()),
                }
            }
            Message::Presence { links, .. } if links.len() > MAX_PRESENCE_LINKS => {
                invalid(format!("{} links", links.len()))
            }
            Message::AttachmentChunk { data, offset, total, .. } => {
                if data.len() > ATTACHMENT_CHUNK * 4 {
                    return invalid(format!("attachment chunk of {} bytes", data.len()));
                }
                if offset.checked_add(data.len() as u64).is_none_or(|end| end > *total) {
                    return invalid("attachment chunk beyond its total".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version() {
        let mut s = Summary::new();
        s.insert(crate::PeerId(7), 1, 9);
        let msgs = vec![
            Message::Hello { name: "a".into(), store_peer: 5 },
            Message::Interest {
                subscriptions: vec![Subscription::everything(), Subscription::filtered("t", "done == false")],
            },
            Message::Summary { summary: s },
            Message::Changes { changes: vec![WireChange::unsigned(vec![1, 2, 3])] },
            Message::Credit { bytes: 10 },
            Message::Resync,
        ];
        for m in msgs {
            let bytes = m.encode();
            assert_eq!(bytes[0], PROTOCOL_VERSION);
            assert_eq!(Message::decode(&bytes), Ok(m));
            let mut other = bytes.clone();
            other[0] = 1;
            assert_eq!(Message::decode(&other), Err(WireError::UnsupportedVersion(1)));
        }
    }

    /// The variant indexes `size_limit` relies on.
    #[test]
    fn size_limits_follow_the_message_kind() {
        let summary = Message::Summary { summary: Summary::new() }.encode();
        let changes = Message::Changes { changes: vec![] }.encode();
        assert_eq!(size_limit(&summary), MAX_SUMMARY_MESSAGE_BYTES);
        assert_eq!(size_limit(&changes), MAX_MESSAGE_BYTES);
        assert_eq!(size_limit(&Message::States { states: vec![] }.encode()), MAX_MESSAGE_BYTES);
        assert_eq!(size_limit(&Message::AttestedStates { states: vec![] }.encode()), MAX_MESSAGE_BYTES);
        let want = Message::WantAttested { changes: Summary::new() }.encode();
        assert_eq!(size_limit(&want), MAX_SUMMARY_MESSAGE_BYTES);
        assert_eq!(size_limit(&Message::Resync.encode()), MAX_CONTROL_MESSAGE_BYTES);
        let big = Message::Presence {
            origin: [0; 32],
            seq: 1,
            name: "x".repeat(MAX_CONTROL_MESSAGE_BYTES),
            links: vec![],
            signature: None,
        }
        .encode();
        assert_eq!(Message::decode(&big), Err(WireError::TooLarge(big.len())));
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(Message::decode(&[]), Err(WireError::Empty));
        assert!(matches!(Message::decode(&[PROTOCOL_VERSION, 200, 1]), Err(WireError::Malformed(_))));
        let bad = Message::Interest { subscriptions: vec![Subscription::filtered("t", "done ==")] }.encode();
        assert!(matches!(Message::decode(&bad), Err(WireError::Invalid(_))));
        let mut trailing = Message::Credit { bytes: 1 }.encode();
        trailing.push(0);
        assert!(matches!(Message::decode(&trailing), Err(WireError::Malformed(_))));
    }

    /// A stable frontier whose summaries are over their bound is refused when decoded, before anyone checks its
    /// signature or keeps it; one within the bound decodes.
    #[test]
    fn a_stable_frontier_over_its_bound_is_refused() {
        let key = crate::security::SigningKey::generate().unwrap();
        let scattered = |n: u64| {
            let mut s = crate::store::Summary::new();
            for c in 0..n {
                s.insert(crate::PeerId(1), (c << 30) + 1, (c << 30) + 1);
            }
            s
        };
        let over = crate::security::StableFrontier::sign(&key, 1, scattered(150_000), scattered(150_000));
        assert!(over.summaries_len() > MAX_FRONTIER_BYTES);
        let bytes = Message::Frontier { frontier: over }.encode();
        assert!(bytes.len() <= MAX_CONTROL_MESSAGE_BYTES, "refused by its bound, not by the message's size");
        assert!(matches!(Message::decode(&bytes), Err(WireError::Invalid(_))));
        let within = crate::security::StableFrontier::sign(&key, 1, scattered(1000), scattered(1000));
        let bytes = Message::Frontier { frontier: within.clone() }.encode();
        assert_eq!(Message::decode(&bytes), Ok(Message::Frontier { frontier: within }));
    }

    #[test]
    fn subscription_parse() {
        assert_eq!(Subscription::parse("*").ok(), Some(Subscription::everything()));
        assert_eq!(Subscription::parse("tasks").ok(), Some(Subscription::collection("tasks")));
        assert_eq!(
            Subscription::parse("tasks:done == false").ok(),
            Some(Subscription::filtered("tasks", "done == false"))
        );
        assert!(Subscription::parse("tasks:done ==").is_err());
        assert!(Subscription::parse("").is_err());
    }

    /// Whatever a relay gathers, what it sends is an interest its neighbours accept, wanting at least as much.
    #[test]
    fn bounded_interest_is_always_accepted() {
        let long = |i: usize| format!("n == {i} || title == \"{}\"", "x".repeat(1000));
        let cases: Vec<Vec<Subscription>> = vec![
            (0..3000).map(|i| Subscription::collection(&format!("c{i}"))).collect(),
            (0..3000).map(|i| Subscription::filtered("t", &format!("n == {i}"))).collect(),
            (0..2000).map(|i| Subscription::filtered(&format!("c{}", i % 500), &format!("n == {i}"))).collect(),
            (0..200).map(|i| Subscription::filtered(&format!("c{}", i % 100), &long(i))).collect(),
            vec![Subscription::filtered("t", "n == 1"), Subscription::collection("t")],
        ];
        for subs in cases {
            let bounded = bounded_interest(subs.clone());
            let msg = Message::Interest { subscriptions: bounded.clone() };
            assert!(Message::decode(&msg.encode()).is_ok(), "{} subscriptions refused", bounded.len());
            let wanted = |c: &str, f: Option<&str>| {
                bounded.iter().any(|b| {
                    b.collection.is_none()
                        || (b.collection.as_deref() == Some(c) && (b.filter.is_none() || b.filter.as_deref() == f))
                })
            };
            for s in &subs {
                assert!(wanted(s.collection.as_deref().unwrap_or("*"), s.filter.as_deref()), "{s} was dropped");
            }
        }
        assert_eq!(
            bounded_interest(vec![Subscription::filtered("t", "n == 1"), Subscription::collection("t")]),
            vec![Subscription::collection("t")]
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Message::decode(&bytes);
            let mut versioned = vec![PROTOCOL_VERSION];
            versioned.extend_from_slice(&bytes);
            let _ = Message::decode(&versioned);
        }
    }
}
