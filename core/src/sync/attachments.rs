//! Attachments over sync, without I/O: fetching an attachment's bytes by its hash from whichever connected device
//! has them, in chunks, resumable, verified against the hash, relayed across hops.
//!
//! A fetch asks one synced neighbour at a time ([`Message::FetchAttachment`] with the offset already received). A
//! neighbour that has the bytes streams them ([`Message::AttachmentChunk`]); one that does not, and may relay
//! (`hops > 0`), fetches them for itself from its *other* neighbours and passes each part on as soon as it has
//! stored it (cut-through: a relay does not wait for the whole attachment, so a transfer across several hops takes
//! about as long as across one) — an attachment crosses any number of hops up to [`MAX_HOPS`], and every device
//! on the way keeps a verified copy. Parts a relay passes on are verified only at the end, by the relay and by the
//! device that asked, each against the hash; a relay whose own copy fails the check stops serving it (it answers
//! [`Message::AttachmentUnavailable`] mid-transfer), and the device it served drops the bytes it got from it
//! before asking the next neighbour. A neighbour
//! that cannot get them answers [`Message::AttachmentUnavailable`] and the next one is asked. Received bytes are
//! kept in the store as they arrive: after a broken link the fetch resumes from there with another neighbour (or
//! the same one when it is back). When all bytes are in, they are checked against the hash before the attachment
//! is stored; a mismatch drops them and tries another neighbour.
//!
//! Chunks are produced only when a link has nothing else to send, so a transfer never crowds out sync messages
//! and never queues more than one chunk per link.

use super::engine::LinkId;
use super::wire::{Message, ATTACHMENT_CHUNK};
use super::SyncError;
use crate::security::certificate::ReadRules;
use crate::store::Replica;
use crate::util::hex;
use std::collections::{BTreeMap, BTreeSet};

/// How many devices a fetch may be relayed through.
pub const MAX_HOPS: u8 = 8;

/// The most transfers one neighbour may have this device serve (or wait for) at once; further requests are
/// answered [`Message::AttachmentUnavailable`].
pub const MAX_SERVES_PER_LINK: usize = 8;

/// The most fetches this device makes at once on behalf of its neighbours (relaying); further requests are
/// answered [`Message::AttachmentUnavailable`]. With [`MAX_RELAYED_ATTACHMENT_BYTES`], this bounds the disk a
/// neighbour can make this device fill with bytes it does not want itself.
pub const MAX_RELAYED_FETCHES: usize = 2;

/// The largest attachment this device relays for a neighbour. A relay does not hold the token (the app's fetch
/// knows the length from it, and takes no more): it takes the length the first answer gives, if no larger than
/// this. The parts of a relayed fetch that ends without the attachment are dropped.
pub const MAX_RELAYED_ATTACHMENT_BYTES: u64 = 1 << 30;

/// The received parts of an attachment whose fetch by the app ended without it (no connected device had it) are
/// kept this long (ms), so that a fetch asked again soon resumes where it was; then they are dropped. (Parts left by
/// an earlier run of the engine are not known to it and stay until a fetch of the same attachment ends.)
pub const PARTIAL_TTL_MS: u64 = 60 * 60 * 1000;

/// A fetch's number within one engine.
pub type FetchId = u64;

/// What happened to a fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchEvent {
    /// Bytes received so far, of `total`.
    Progress {
        /// The fetch, as [`Engine::fetch_attachment`](super::Engine::fetch_attachment) numbered it.
        fetch: FetchId,
        /// The attachment's BLAKE3 hash.
        hash: [u8; 32],
        /// Bytes stored here so far, counting those received before the fetch resumed.
        done: u64,
        /// The attachment's length in bytes.
        total: u64,
    },
    /// The attachment is stored here now, verified.
    Done {
        /// The fetch, as [`Engine::fetch_attachment`](super::Engine::fetch_attachment) numbered it.
        fetch: FetchId,
        /// The attachment's BLAKE3 hash.
        hash: [u8; 32],
    },
    /// No connected device could provide it.
    Failed {
        /// The fetch, as [`Engine::fetch_attachment`](super::Engine::fetch_attachment) numbered it.
        fetch: FetchId,
        /// The attachment's BLAKE3 hash.
        hash: [u8; 32],
        /// Why, in words (for logs).
        reason: String,
    },
}

struct Fetch {
    id: FetchId,
    hash: [u8; 32],
    hops: u8,
    /// The link asked now, the request number used on it, and the offset asked from.
    asking: Option<(LinkId, u64)>,
    asked_from: u64,
    /// Links asked already (not asked again by this fetch).
    tried: BTreeSet<LinkId>,
    /// The link the request came from when relaying (never asked back).
    exclude: Option<LinkId>,
    /// Neighbours waiting for the first bytes of this fetch to serve them: (link, their request, their offset).
    waiting: Vec<(LinkId, u64, u64)>,
    /// The attachment's length, known from the first part received.
    total: Option<u64>,
    /// The length the app's token gives (a relayed fetch does not know it): any other `total` is refused.
    len: Option<u64>,
    /// Whether the app asked (events are reported).
    local: bool,
}

struct Serve {
    hash: [u8; 32],
    next: u64,
    total: u64,
    /// The stored chunk being served (chunks are larger than what one message carries).
    chunk: Option<(u64, Vec<u8>)>,
    /// Served from the bytes this device's own fetch is receiving (relaying), not from a stored attachment.
    relayed: bool,
}

impl Serve {
    fn stored(hash: [u8; 32], next: u64, total: u64) -> Self {
        Serve { hash, next, total, chunk: None, relayed: false }
    }

    fn relayed(hash: [u8; 32], next: u64, total: u64) -> Self {
        Serve { hash, next, total, chunk: None, relayed: true }
    }
}

/// Every fetch and every transfer this device serves.
#[derive(Default)]
pub(crate) struct Attachments {
    next_fetch: FetchId,
    next_request: u64,
    fetches: BTreeMap<FetchId, Fetch>,
    serving: BTreeMap<(LinkId, u64), Serve>,
    pub events: Vec<FetchEvent>,
    /// Attachments whose fetch ended without them, and when (engine time, ms): their parts expire.
    ended: BTreeMap<[u8; 32], u64>,
    /// The engine's time (ms), as of its last tick.
    now: u64,
    /// The parts left in the store by an earlier run were looked at (on the first tick): those nobody fetches
    /// expire like the parts of an ended fetch.
    leftovers_adopted: bool,
    /// Certificate mode: whether the device at the other end of a link may have an attachment's bytes (a document
    /// it may read references it), as found for an earlier request on that link.
    readable: BTreeMap<(LinkId, [u8; 32]), bool>,
}

/// The most answers [`Attachments::readable`] keeps (it starts afresh when full).
const MAX_READ_DECISIONS: usize = 4096;

/// The most attachments with parts left by an earlier run that one engine looks at (the rest wait for a restart).
pub const MAX_LEFTOVER_ATTACHMENTS: usize = 10_000;

impl Attachments {
    /// Start fetching `hash` for the app. Returns the fetch number; its outcome comes as [`FetchEvent`]s.
    pub fn fetch(
        &mut self,
        store: &dyn Replica,
        hash: [u8; 32],
        len: u64,
        links: &[LinkId],
        out: &mut Vec<(LinkId, Message)>,
    ) -> Result<FetchId, SyncError> {
        self.next_fetch += 1;
        let id = self.next_fetch;
        self.ended.remove(&hash);
        if store.attachment_len(&hash)?.is_some() {
            self.events.push(FetchEvent::Done { fetch: id, hash });
            return Ok(id);
        }
        if let Some(f) = self.fetches.values_mut().find(|f| f.hash == hash) {
            f.local = true;
            f.len = Some(len);
            return Ok(f.id);
        }
        self.fetches.insert(
            id,
            Fetch {
                id,
                hash,
                hops: MAX_HOPS,
                asking: None,
                asked_from: 0,
                tried: BTreeSet::new(),
                exclude: None,
                waiting: Vec::new(),
                total: None,
                len: Some(len),
                local: true,
            },
        );
        self.ask_next(store, id, links, out, true)?;
        Ok(id)
    }

    /// The app gave up on fetch `id`: it is no longer asked for, and every wait on it ends with
    /// [`FetchEvent::Failed`] ("cancelled"). The parts already received stay, and expire like those of a fetch
    /// that ended unless the attachment is fetched again first (it then resumes from them). A fetch that other
    /// devices wait on through this one (relaying) goes on for them. Returns whether the app was fetching it.
    ///
    /// The neighbour serving it is not told (the protocol has no message for it): it sends the rest of its
    /// current transfer, which this device drops as chunks for a request it no longer makes.
    pub fn cancel(&mut self, id: FetchId) -> bool {
        let Some(f) = self.fetches.get_mut(&id) else { return false };
        if !f.local {
            return false;
        }
        let hash = f.hash;
        if f.waiting.is_empty() {
            self.fetches.remove(&id);
        } else {
            f.local = false;
        }
        self.ended.insert(hash, self.now);
        self.events.push(FetchEvent::Failed { fetch: id, hash, reason: "cancelled".into() });
        log::debug!("attachment fetch {id} ({}) cancelled", hex(&hash));
        true
    }

    /// Ask the next untried link. When there is none: give up if `give_up` (every device asked said no), else wait
    /// for a link to come up (the one asked went away).
    fn ask_next(
        &mut self,
        store: &dyn Replica,
        id: FetchId,
        links: &[LinkId],
        out: &mut Vec<(LinkId, Message)>,
        give_up: bool,
    ) -> Result<(), SyncError> {
        // A neighbour serves at most MAX_SERVES_PER_LINK requests at once (it refuses more): a fetch waits for a
        // slot on a busy link rather than be refused.
        let mut in_flight: BTreeMap<LinkId, usize> = BTreeMap::new();
        for (link, _) in self.fetches.values().filter(|g| g.id != id).filter_map(|g| g.asking) {
            *in_flight.entry(link).or_default() += 1;
        }
        let Some(f) = self.fetches.get_mut(&id) else { return Ok(()) };
        let untried: Vec<LinkId> =
            links.iter().copied().filter(|l| !f.tried.contains(l) && Some(*l) != f.exclude).collect();
        let next = untried.iter().copied().find(|l| in_flight.get(l).copied().unwrap_or(0) < MAX_SERVES_PER_LINK);
        match next {
            None if !untried.is_empty() || !give_up => f.asking = None,
            Some(link) => {
                self.next_request += 1;
                let request = self.next_request;
                f.tried.insert(link);
                f.asking = Some((link, request));
                let offset = store.attachment_received(&f.hash)?;
                f.asked_from = offset;
                out.push((link, Message::FetchAttachment { request, hash: f.hash, offset, hops: f.hops }));
            }
            None => {
                let f = self.fetches.remove(&id).map(|f| (f.hash, f.local, f.waiting));
                if let Some((hash, local, waiting)) = f {
                    log::info!("attachment {} not available from any connected device", crate::util::hex(&hash));
                    if local {
                        self.ended.insert(hash, self.now);
                    } else {
                        // Nobody here wants these bytes: do not keep them.
                        store.forget_attachment_received_from(&hash, 0)?;
                    }
                    for (link, request, _) in waiting {
                        out.push((link, Message::AttachmentUnavailable { request }));
                    }
                    self.stop_relaying(hash, out);
                    if local {
                        self.events.push(FetchEvent::Failed {
                            fetch: id,
                            hash,
                            reason: "no connected device has it".into(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The passing of time (engine ms): the parts of fetches that ended more than [`PARTIAL_TTL_MS`] ago are
    /// dropped, and so are parts an earlier run left that nobody fetched for that long since this engine started.
    pub fn expire(&mut self, store: &dyn Replica, now: u64) -> Result<(), SyncError> {
        self.now = now;
        if !self.leftovers_adopted {
            self.leftovers_adopted = true;
            for hash in store.attachments_received(MAX_LEFTOVER_ATTACHMENTS)? {
                if !self.fetches.values().any(|f| f.hash == hash) {
                    self.ended.entry(hash).or_insert(now);
                }
            }
        }
        let expired: Vec<[u8; 32]> = self
            .ended
            .iter()
            .filter(|(h, t)| now.saturating_sub(**t) >= PARTIAL_TTL_MS && !self.fetches.values().any(|f| f.hash == **h))
            .map(|(h, _)| *h)
            .collect();
        for hash in expired {
            self.ended.remove(&hash);
            log::info!(
                "dropping the received parts of attachment {}: not fetched for {PARTIAL_TTL_MS} ms",
                crate::util::hex(&hash)
            );
            store.forget_attachment_received_from(&hash, 0)?;
        }
        Ok(())
    }

    /// Transfers `link` has this device serve or wait for.
    fn serves_of(&self, link: LinkId) -> usize {
        self.serving.range((link, 0)..=(link, u64::MAX)).count()
            + self.fetches.values().map(|f| f.waiting.iter().filter(|(l, _, _)| *l == link).count()).sum::<usize>()
    }

    fn fetch_asking(&self, link: LinkId, request: u64) -> Option<FetchId> {
        self.fetches.values().find(|f| f.asking == Some((link, request))).map(|f| f.id)
    }

    /// Handle an attachment message from `link`. `links` are the synced links now.
    /// Whether the device at the other end of `link`, which may read what `reads` allows (`None`: everything, in
    /// development mode), may have the bytes of attachment `hash`: some document of this store that it may read
    /// references it. (Attachments are served by hash; without this, knowing a hash would be enough.)
    fn may_have(
        &mut self,
        store: &dyn Replica,
        link: LinkId,
        reads: Option<&ReadRules>,
        hash: &[u8; 32],
    ) -> Result<bool, SyncError> {
        let Some(rules) = reads.filter(|r| !r.reads_everything()) else { return Ok(true) };
        if let Some(&known) = self.readable.get(&(link, *hash)) {
            return Ok(known);
        }
        let readable = store.attachment_readable(hash, rules)?;
        if self.readable.len() >= MAX_READ_DECISIONS {
            self.readable.clear();
        }
        self.readable.insert((link, *hash), readable);
        Ok(readable)
    }

    pub fn on_message(
        &mut self,
        store: &dyn Replica,
        link: LinkId,
        msg: Message,
        links: &[LinkId],
        reads: Option<&ReadRules>,
        out: &mut Vec<(LinkId, Message)>,
    ) -> Result<(), SyncError> {
        match msg {
            Message::FetchAttachment { request, hash, offset, hops } => {
                let busy = self.serves_of(link) >= MAX_SERVES_PER_LINK;
                let stored = if busy { None } else { store.attachment_len(&hash)? };
                if busy {
                    log::warn!("link {link}: over {MAX_SERVES_PER_LINK} attachment requests at once; refused one");
                    out.push((link, Message::AttachmentUnavailable { request }));
                } else if (stored.is_some() || hops > 0) && !self.may_have(store, link, reads, &hash)? {
                    log::info!("link {link}: no document it may read references attachment {}", hex(&hash));
                    out.push((link, Message::AttachmentUnavailable { request }));
                } else if let Some(total) = stored {
                    if offset > total {
                        out.push((link, Message::AttachmentUnavailable { request }));
                    } else {
                        self.serving.insert((link, request), Serve::stored(hash, offset, total));
                    }
                } else if hops == 0 {
                    out.push((link, Message::AttachmentUnavailable { request }));
                } else if let Some(f) = self.fetches.values_mut().find(|f| f.hash == hash) {
                    match f.total {
                        Some(total) if offset > total => out.push((link, Message::AttachmentUnavailable { request })),
                        Some(total) => {
                            self.serving.insert((link, request), Serve::relayed(hash, offset, total));
                        }
                        None => f.waiting.push((link, request, offset)),
                    }
                } else if self.fetches.values().filter(|f| !f.local).count() >= MAX_RELAYED_FETCHES {
                    log::info!("link {link}: already relaying {MAX_RELAYED_FETCHES} fetches; refused one");
                    out.push((link, Message::AttachmentUnavailable { request }));
                } else {
                    self.next_fetch += 1;
                    let id = self.next_fetch;
                    self.fetches.insert(
                        id,
                        Fetch {
                            id,
                            hash,
                            hops: hops - 1,
                            asking: None,
                            asked_from: 0,
                            tried: BTreeSet::new(),
                            exclude: Some(link),
                            waiting: vec![(link, request, offset)],
                            total: None,
                            len: None,
                            local: false,
                        },
                    );
                    self.ask_next(store, id, links, out, true)?;
                }
            }
            Message::AttachmentChunk { request, offset, total, data } => {
                let Some(id) = self.fetch_asking(link, request) else { return Ok(()) };
                let Some((hash, expected)) = self.fetches.get(&id).map(|f| (f.hash, f.total.or(f.len))) else {
                    return Ok(());
                };
                // The length is checked before anything is stored: the token's (or the first answer's), and a
                // relayed fetch's within its bound. The chunk itself ends within `total` (checked when decoded).
                match expected {
                    Some(t) if t != total => {
                        return Err(SyncError::Protocol(format!("attachment said to be {total} bytes, not {t}")));
                    }
                    None if total > MAX_RELAYED_ATTACHMENT_BYTES => {
                        return Err(SyncError::Protocol(format!(
                            "attachment of {total} bytes to relay, over {MAX_RELAYED_ATTACHMENT_BYTES}"
                        )));
                    }
                    _ => {}
                }
                let done = match store.receive_attachment_part(&hash, offset, &data) {
                    Ok(done) => done,
                    Err(crate::Error::AttachmentCorrupt { reason, .. }) => {
                        return Err(SyncError::Protocol(format!("attachment chunk out of order: {reason}")));
                    }
                    Err(e) => return Err(e.into()),
                };
                let Some(f) = self.fetches.get_mut(&id) else { return Ok(()) };
                let local = f.local;
                f.total = Some(total);
                // The neighbours waiting for these bytes get them as they come.
                for (l, r, from) in std::mem::take(&mut f.waiting) {
                    if from > total {
                        out.push((l, Message::AttachmentUnavailable { request: r }));
                    } else {
                        self.serving.insert((l, r), Serve::relayed(hash, from, total));
                    }
                }
                if local {
                    self.events.push(FetchEvent::Progress { fetch: id, hash, done, total });
                }
                if done == total {
                    match store.finish_attachment(&hash, total) {
                        Ok(()) => {
                            if let Some(f) = self.fetches.remove(&id) {
                                // Relayed transfers read the stored attachment from now on.
                                for serve in self.serving.values_mut().filter(|s| s.hash == hash) {
                                    serve.relayed = false;
                                }
                                if f.local {
                                    self.events.push(FetchEvent::Done { fetch: id, hash });
                                }
                            }
                        }
                        Err(e) => {
                            log::warn!("attachment from link {link} failed verification: {e}");
                            self.stop_relaying(hash, out);
                            if let Some(f) = self.fetches.get_mut(&id) {
                                f.total = None;
                            }
                            self.ask_next(store, id, links, out, true)?;
                        }
                    }
                }
            }
            Message::AttachmentUnavailable { request } => {
                if let Some(id) = self.fetch_asking(link, request) {
                    if let Some((hash, from)) = self.fetches.get(&id).map(|f| (f.hash, f.asked_from)) {
                        if store.attachment_received(&hash)? > from {
                            // Given up on after sending bytes: a relay whose own copy failed verification. Those
                            // bytes cannot be trusted either; drop them (and stop passing them on) rather than
                            // build on them with the next device.
                            log::info!(
                                "link {link} stopped sending attachment {} mid-way; dropping its bytes",
                                crate::util::hex(&hash)
                            );
                            store.forget_attachment_received_from(&hash, from)?;
                            self.stop_relaying(hash, out);
                        }
                    }
                    self.ask_next(store, id, links, out, true)?;
                }
            }
            _ => {}
        }
        // A fetch that ended or moved on freed a slot on its link: fetches waiting for one ask now.
        self.ask_stalled(store, links, out)
    }

    /// A link went away: fetches asking it move on (resuming where they were), transfers to it stop.
    pub fn link_down(
        &mut self,
        store: &dyn Replica,
        link: LinkId,
        links: &[LinkId],
        out: &mut Vec<(LinkId, Message)>,
    ) -> Result<(), SyncError> {
        self.serving.retain(|(l, _), _| *l != link);
        self.readable.retain(|(l, _), _| *l != link);
        let ids: Vec<FetchId> =
            self.fetches.values().filter(|f| f.asking.is_some_and(|(l, _)| l == link)).map(|f| f.id).collect();
        for f in self.fetches.values_mut() {
            f.waiting.retain(|(l, _, _)| *l != link);
        }
        for id in ids {
            if let Some(f) = self.fetches.get_mut(&id) {
                // The same neighbour may come back on a new link; let it be asked again then.
                f.asking = None;
            }
            self.ask_next(store, id, links, out, false)?;
        }
        Ok(())
    }

    /// A link came up: stalled fetches (none asked now) ask it.
    pub fn link_up(
        &mut self,
        store: &dyn Replica,
        links: &[LinkId],
        out: &mut Vec<(LinkId, Message)>,
    ) -> Result<(), SyncError> {
        self.ask_stalled(store, links, out)
    }

    /// Fetches asking nobody now (waiting for a link, or for a free slot on a busy one) ask the next link they can.
    fn ask_stalled(
        &mut self,
        store: &dyn Replica,
        links: &[LinkId],
        out: &mut Vec<(LinkId, Message)>,
    ) -> Result<(), SyncError> {
        let ids: Vec<FetchId> = self.fetches.values().filter(|f| f.asking.is_none()).map(|f| f.id).collect();
        for id in ids {
            self.ask_next(store, id, links, out, false)?;
        }
        Ok(())
    }

    /// Transfers relaying `hash` from this device's own fetch end: the bytes they were passing on cannot be trusted
    /// (they failed verification) or will not come.
    fn stop_relaying(&mut self, hash: [u8; 32], out: &mut Vec<(LinkId, Message)>) {
        let stopped: Vec<(LinkId, u64)> =
            self.serving.iter().filter(|(_, s)| s.relayed && s.hash == hash).map(|(k, _)| *k).collect();
        for key in stopped {
            self.serving.remove(&key);
            out.push((key.0, Message::AttachmentUnavailable { request: key.1 }));
        }
    }

    /// Whether `link` is being served attachment bytes (more may be ready when the store changes).
    pub fn serves(&self, link: LinkId) -> bool {
        self.serving.range((link, 0)..=(link, u64::MAX)).next().is_some()
    }

    /// The next chunk to send on `link`, if it is serving a transfer that has bytes to send now (a relayed one may
    /// be waiting for them).
    pub fn next_chunk(&mut self, store: &dyn Replica, link: LinkId) -> Result<Option<Message>, SyncError> {
        let requests: Vec<u64> = self.serving.range((link, 0)..=(link, u64::MAX)).map(|((_, r), _)| *r).collect();
        for request in requests {
            if let Some(msg) = self.next_chunk_of(store, link, request)? {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    fn next_chunk_of(&mut self, store: &dyn Replica, link: LinkId, request: u64) -> Result<Option<Message>, SyncError> {
        let Some(serve) = self.serving.get_mut(&(link, request)) else { return Ok(None) };
        let data = if serve.relayed {
            match store.read_attachment_received(&serve.hash, serve.next)? {
                Some(mut bytes) => {
                    bytes.truncate(ATTACHMENT_CHUNK);
                    bytes
                }
                // Not received yet.
                None => return Ok(None),
            }
        } else {
            let size = crate::store::CHUNK_SIZE as u64;
            let idx = serve.next / size;
            if serve.next >= serve.total {
                // Nothing left (an empty attachment has no chunk at all).
                serve.chunk = Some((idx, Vec::new()));
            }
            if serve.chunk.as_ref().is_none_or(|(i, _)| *i != idx) {
                serve.chunk = Some((idx, store.read_attachment_chunk(&serve.hash, idx)?));
            }
            match &serve.chunk {
                Some((_, bytes)) => {
                    let from = ((serve.next - idx * size) as usize).min(bytes.len());
                    bytes[from..(from + ATTACHMENT_CHUNK).min(bytes.len())].to_vec()
                }
                None => Vec::new(),
            }
        };
        if data.is_empty() && serve.next < serve.total {
            log::warn!("attachment {} is shorter than stored: cannot serve it", crate::util::hex(&serve.hash));
            self.serving.remove(&(link, request));
            return Ok(Some(Message::AttachmentUnavailable { request }));
        }
        let (offset, total) = (serve.next, serve.total);
        serve.next += data.len() as u64;
        if serve.next >= total || data.is_empty() {
            self.serving.remove(&(link, request));
        }
        Ok(Some(Message::AttachmentChunk { request, offset, total, data }))
    }
}
