//! Structured inputs from fuzz bytes, shared by the targets: a cursor over the bytes ([`Input`]) and builders of
//! the values another device sends — changes ([`doc_change`]) and sync messages ([`message`]). shoaldb's types do
//! not implement `Arbitrary`, so these builders pick each field from the bytes, mostly from small sets (a few
//! authors, counters, keys, collections) so that the changes relate to each other and to what the store holds,
//! and sometimes any value.
#![allow(dead_code)]

use shoaldb::crdt::change::Seg;
use shoaldb::crdt::clock::Dot;
use shoaldb::crdt::sequence::IdSpan;
use shoaldb::sync::wire::{PresenceLink, WireChange};
use shoaldb::sync::{Message, Subscription, TransportKind};
use shoaldb::{Change, DocChange, Kind, Op, PeerId, Scalar, Summary, Timestamp, VersionVector};
use std::collections::BTreeMap;

/// The fuzz bytes, read from the front; zeros once they run out.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `data`.
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u8) -> u8 {
        self.u8() % n.max(1)
    }

    /// Mostly a small number (below 16), sometimes any `u64`.
    pub fn u64(&mut self) -> u64 {
        let b = self.u8();
        if b < 0xf0 {
            u64::from(b % 16)
        } else {
            let mut v = [0u8; 8];
            for x in &mut v {
                *x = self.u8();
            }
            u64::from_le_bytes(v)
        }
    }

    /// Up to `max` bytes, as they come.
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.u8()).min(max).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head.to_vec()
    }

    /// The rest of the bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// A short string: mostly from a few names, sometimes lossy UTF-8 of the bytes.
    pub fn name(&mut self, names: &[&str]) -> String {
        let i = usize::from(self.u8());
        match names.get(i) {
            Some(n) => (*n).to_string(),
            None if i % 2 == 0 => names.first().copied().unwrap_or("").to_string(),
            None => String::from_utf8_lossy(&self.bytes(40)).into_owned(),
        }
    }
}

/// The authors the changes come from (PeerId 1…4).
pub fn peer(input: &mut Input) -> PeerId {
    PeerId(1 + u64::from(input.below(4)))
}

fn dot(input: &mut Input) -> Dot {
    Dot::new(peer(input), input.u64())
}

fn path(input: &mut Input) -> Vec<Seg> {
    let n = input.below(3);
    (0..n)
        .map(|_| if input.below(4) == 0 { Seg::Elem(dot(input)) } else { Seg::Key(input.name(&["a", "b", "t", "l"])) })
        .collect()
}

/// A scalar value, nested at most `depth` more levels.
pub fn scalar(input: &mut Input, depth: u8) -> Scalar {
    match input.below(if depth == 0 { 6 } else { 8 }) {
        0 => Scalar::Null,
        1 => Scalar::Bool(input.u8() & 1 == 1),
        2 => Scalar::Int(input.u64() as i64),
        3 => Scalar::Float(f64::from(input.u8()) / 3.0),
        4 => Scalar::Str(input.name(&["x", "", "héllo"])),
        5 => Scalar::Bytes(input.bytes(16)),
        6 => Scalar::List((0..input.below(4)).map(|_| scalar(input, depth - 1)).collect()),
        _ => {
            let mut m = BTreeMap::new();
            for _ in 0..input.below(4) {
                m.insert(input.name(&["k", "v", "_id"]), scalar(input, depth - 1));
            }
            Scalar::Object(m)
        }
    }
}

fn spans(input: &mut Input) -> Vec<IdSpan> {
    (0..input.below(4)).map(|_| IdSpan { peer: peer(input), start: input.u64(), len: input.u64().min(64) }).collect()
}

fn op(input: &mut Input) -> Op {
    let path = path(input);
    match input.below(8) {
        0 => Op::Set { path, value: scalar(input, 3) },
        1 => {
            let kind = [Kind::Map, Kind::Array, Kind::Text, Kind::Counter][usize::from(input.below(4))];
            Op::Make { path, kind }
        }
        2 => Op::Remove { path },
        3 => Op::Increment { path, by: input.u64() as i64 },
        4 => {
            let (origin_left, origin_right) = (opt_dot(input), opt_dot(input));
            let text = input.name(&["a", "hi", "héllo wörld"]);
            Op::InsertText { path, origin_left, origin_right, text: text.as_str().into() }
        }
        5 => {
            let (origin_left, origin_right) = (opt_dot(input), opt_dot(input));
            Op::InsertElems { path, origin_left, origin_right, count: input.u64().min(64) }
        }
        6 => Op::DeleteText { path, spans: spans(input) },
        _ => Op::DeleteElems { path, spans: spans(input) },
    }
}

fn opt_dot(input: &mut Input) -> Option<Dot> {
    (input.u8() & 1 == 1).then(|| dot(input))
}

/// A change to one of a few documents (collections `c`, `d`; ids `x`, `y`): a few ops, from a few authors.
pub fn doc_change(input: &mut Input) -> DocChange {
    let mut deps = VersionVector::new();
    for _ in 0..input.below(3) {
        deps.set(peer(input), input.u64());
    }
    let change = Change {
        peer: peer(input),
        start: input.u64().saturating_add(1),
        ts: Timestamp::new(input.u64().saturating_add(1_000), 0),
        deps,
        ops: (0..1 + input.below(4)).map(|_| op(input)).collect(),
    };
    DocChange { collection: input.name(&["c", "d"]), doc_id: input.name(&["x", "y"]), change, signature: None }
}

/// An encoded change: mostly a built one, sometimes a built one with a few bytes changed, sometimes raw bytes.
pub fn encoded_change(input: &mut Input) -> Vec<u8> {
    match input.below(8) {
        0 => input.bytes(200),
        1 => {
            let mut bytes = doc_change(input).encode();
            for _ in 0..1 + input.below(3) {
                let at = usize::from(input.u8()) % bytes.len().max(1);
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= input.u8();
                }
            }
            bytes
        }
        _ => doc_change(input).encode(),
    }
}

/// A sync message another device could send (encoded), or raw bytes.
pub fn message(input: &mut Input) -> Vec<u8> {
    let msg = match input.below(15) {
        0 => return input.bytes(300),
        1 => Message::Hello { name: input.name(&["mallory", ""]), store_peer: input.u64() },
        2 => Message::Interest {
            subscriptions: (0..input.below(4))
                .map(|_| Subscription {
                    collection: (input.u8() & 1 == 1).then(|| input.name(&["c", "d"])),
                    filter: (input.u8() & 1 == 1).then(|| input.name(&["a == 1", "t != 'x'", "b > 2 && a < 3"])),
                })
                .collect(),
        },
        3 => {
            let mut summary = Summary::new();
            for _ in 0..input.below(4) {
                let (p, a) = (peer(input), input.u64());
                summary.insert(p, a, a.saturating_add(input.u64()));
            }
            Message::Summary { summary }
        }
        4..=7 => Message::Changes {
            changes: (0..1 + input.below(4)).map(|_| WireChange::unsigned(encoded_change(input))).collect(),
        },
        8 => Message::Credit { bytes: input.u64() },
        9 => Message::Presence {
            origin: [input.u8(); 32],
            seq: input.u64(),
            name: input.name(&["somebody"]),
            links: (0..input.below(3))
                .map(|_| PresenceLink {
                    device: [input.u8(); 32],
                    transport: if input.u8() & 1 == 0 { TransportKind::Lan } else { TransportKind::Ble },
                })
                .collect(),
            signature: None,
        },
        10 => Message::FetchAttachment {
            request: input.u64(),
            hash: [input.u8(); 32],
            offset: input.u64(),
            hops: input.below(4),
        },
        11 => Message::AttachmentChunk {
            request: input.u64(),
            offset: input.u64(),
            total: input.u64(),
            data: input.bytes(64),
        },
        12 => Message::AttachmentUnavailable { request: input.u64() },
        13 => Message::Resync,
        _ => {
            // A document's state (issue 17): one made by a built change, or raw bytes; the changes it claims to
            // hold: its own, or made up.
            let mut doc = shoaldb::Document::new();
            if let Ok(dc) = shoaldb::DocChange::decode(&encoded_change(input)) {
                let _ = doc.apply(&dc.change);
            }
            let state = if input.u8() & 1 == 0 { doc.encode() } else { input.bytes(200) };
            let mut changes = Summary::new();
            for (p, top) in doc.version().iter() {
                if input.u8() & 3 != 0 {
                    changes.insert(p, input.u64().min(top).max(1), top);
                }
            }
            for _ in 0..input.below(2) {
                let (p, a) = (peer(input), input.u64());
                changes.insert(p, a, a.saturating_add(input.below(4) as u64));
            }
            let collection = input.name(&["c", "d"]);
            let doc_id = input.name(&["x", "y", ""]);
            Message::States { states: vec![shoaldb::DocState { collection, doc_id, state, changes }] }
        }
    };
    msg.encode()
}

/// A scratch directory for one input's stores: in memory (`/dev/shm`) where there is one, so that fuzzing
/// measures the code, not the disk.
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("tempdir")
}

/// A store in `dir` named `name`, without waiting for the disk on each commit (a crash is not what is fuzzed).
pub fn open_store(dir: &std::path::Path, name: &str) -> shoaldb::Store {
    let options = shoaldb::Options { durability: shoaldb::Durability::Normal, ..Default::default() };
    shoaldb::Store::open_with(dir.join(name), options).expect("store")
}

/// Every document the changes can reach, as the app sees them.
pub fn documents(store: &shoaldb::Store) -> Vec<Option<serde_json::Value>> {
    let mut out = Vec::new();
    for c in ["c", "d"] {
        for id in ["x", "y"] {
            // A read that fails is a state too (compared as such).
            out.push(store.get(c, id).unwrap_or_else(|e| Some(serde_json::json!({ "read error": e.to_string() }))));
        }
    }
    out
}
