//! The sync wire format: one [`Message`] per encoded message, a version byte first, then the message in postcard's
//! compact form. Messages are carried by a link's secure channel, cut into frames of at most
//! [`crate::transport::frame::MAX_FRAME_LEN`] bytes (see [`super::link`]). Everything decoded here comes from
//! another device: sizes are bounded and every field is checked before anything acts on it.

use crate::crdt::change::MAX_ENCODED_CHANGE_BYTES;
use crate::store::{AuthorDigest, Summary};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A message with another version byte is refused.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest message accepted (the largest change plus room for its header).
pub const MAX_MESSAGE_BYTES: usize = MAX_ENCODED_CHANGE_BYTES + (1 << 20);

/// Changes are sent in batches of about this many bytes.
pub const BATCH_BYTES: usize = 48 << 10;

/// Attachment bytes travel in chunks of this size.
pub const ATTACHMENT_CHUNK: usize = 32 << 10;

const MAX_SUBSCRIPTIONS: usize = 1024;
const MAX_FILTER_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 256;
const MAX_PRESENCE_LINKS: usize = 1024;

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
}

impl TransportKind {
    /// Which transport carries the data when a device is linked over several: lower is preferred. The LAN is much
    /// faster than Bluetooth LE.
    pub fn preference(self) -> u8 {
        match self {
            TransportKind::Lan => 0,
            TransportKind::Ble => 1,
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Lan => "lan",
            TransportKind::Ble => "ble",
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
        /// Every subscription the sender asks for (at most 1024); it replaces the interest sent before.
        subscriptions: Vec<Subscription>,
    },
    /// The changes the sender holds.
    Summary {
        /// The sender's changes, by author and counter ranges. The first one is complete; later ones add what the
        /// sender received since.
        summary: Summary,
    },
    /// Changes ([`crate::DocChange`] encodings), causal within each document.
    Changes {
        /// One encoded [`crate::DocChange`] each.
        changes: Vec<Vec<u8>>,
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
    /// The message is longer than [`MAX_MESSAGE_BYTES`] (its length in bytes).
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
        if bytes.len() > MAX_MESSAGE_BYTES {
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
                subscriptions.iter().try_for_each(Subscription::validate)
            }
            Message::Summary { summary } if !summary.is_well_formed() => invalid("malformed summary".into()),
            Message::Digests { authors } if authors.len() > MAX_DIGESTS_PER_MESSAGE => {
                invalid(format!("{} author digests", authors.len()))
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
            Message::Changes { changes: vec![vec![1, 2, 3]] },
            Message::Credit { bytes: 10 },
            Message::Resync,
        ];
        for m in msgs {
            let bytes = m.encode();
            assert_eq!(bytes[0], PROTOCOL_VERSION);
            assert_eq!(Message::decode(&bytes), Ok(m));
            let mut other = bytes.clone();
            other[0] = 2;
            assert_eq!(Message::decode(&other), Err(WireError::UnsupportedVersion(2)));
        }
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
