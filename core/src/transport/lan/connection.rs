//! One TCP connection to another device: a reader task and a writer task around one engine link.
//!
//! The reader reads whatever arrives, cuts it into frames ([`FrameDecoder`]) and hands them to the engine; a batch
//! of changes among them is applied to the replica apart from the engine ([`Engine::on_frame_deferring`]), so
//! that one link's batch does not hold up the others. After each engine call the hub wakes the writers of the links
//! that may have something to send now ([`Engine::take_wakes`]): not every writer on every frame, which with many
//! links would cost the square of their number. The writer pulls frames for *its*
//! link only once its previous write completed, writes them, and sleeps until woken when the engine has nothing:
//! a slow socket therefore stops the engine producing for that link (the session's own flow control bounds what
//! the engine queues meanwhile). The connection closes when the engine closes the link (an error, a duplicate, or
//! silence: the engine's keepalives and link timeout notice a peer that vanished), on end of stream, on any I/O or
//! framing error, or when the node shuts down; the engine is then told (`remove_link`).

use super::slots::Slot;
use crate::security::DeviceKey;
#[cfg(doc)]
use crate::sync::Engine;
use crate::sync::{LinkId, TransportKind};
use crate::transport::frame::{encode_frame, FrameDecoder};
use crate::transport::hub::{Hub, LinkState};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// The receiving half of a connection's byte stream: a TCP socket's, or a WebSocket's messages.
pub(crate) trait ByteSource: Send + 'static {
    /// Read some bytes into `buf`; 0 at the end of the stream.
    fn read(&mut self, buf: &mut [u8]) -> impl Future<Output = std::io::Result<usize>> + Send;
}

/// The sending half of a connection's byte stream.
pub(crate) trait ByteSink: Send + 'static {
    /// Send all of `data`.
    fn write_all(&mut self, data: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Close the sending direction cleanly.
    fn shutdown(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl ByteSource for OwnedReadHalf {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        AsyncReadExt::read(self, buf).await
    }
}

impl ByteSink for OwnedWriteHalf {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        AsyncWriteExt::write_all(self, data).await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        AsyncWriteExt::shutdown(self).await
    }
}

/// A connection that has not authenticated (handshake done, hello received) this long after it opened is closed
/// by the transport, whatever the engine does: a connection costs a socket, two tasks and a slot
/// ([`super::slots`]), so one that does not prove it holds the app secret must not hold them long. An honest
/// handshake takes a few round trips (milliseconds on a LAN); a few seconds leave room for a slow, busy device.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// A write that does not complete by then (the peer stopped reading) closes the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 64 << 10;

/// Frames pulled from the engine for one write, about (at least one frame).
const WRITE_BATCH: usize = 256 << 10;

/// What a connection amounted to, for the dialer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outcome {
    /// The device at the other end, when the handshake authenticated it (even if the link was then refused).
    pub device: Option<DeviceKey>,
    /// The link synced (handshake and hello), so dialling worked.
    pub synced: bool,
}

/// Drive `stream` as a link of the hub's engine until it closes; `initiator` when this side dialled. An accepted
/// connection holds its listener `slot` until it closes (marked authenticated once it is).
pub(crate) async fn run(hub: Arc<Hub>, stream: TcpStream, initiator: bool, slot: Option<Slot>) -> Outcome {
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("TCP_NODELAY: {e}");
    }
    let peer_addr = stream.peer_addr().ok();
    let (rd, wr) = stream.into_split();
    run_halves(hub, rd, wr, peer_addr, TransportKind::Lan, initiator, slot).await
}

/// [`run`] over any byte stream, given as its two halves (`peer_addr`: where it comes from, for logs and limits),
/// as a link of `transport`.
pub(crate) async fn run_halves<R: ByteSource, W: ByteSink>(
    hub: Arc<Hub>,
    rd: R,
    wr: W,
    peer_addr: Option<SocketAddr>,
    transport: TransportKind,
    initiator: bool,
    slot: Option<Slot>,
) -> Outcome {
    let link = match hub.with_engine(move |e| e.add_link(transport, initiator)).await {
        Ok(Ok(link)) => link,
        Ok(Err(e)) => {
            log::warn!("cannot open a link: {e}");
            return Outcome::default();
        }
        Err(e) => {
            log::warn!("cannot open a link: {e}");
            return Outcome::default();
        }
    };
    let conn = hub.register(link, transport, peer_addr.map(|a| a.to_string()));
    log::debug!(
        "link {link}: {} {}",
        if initiator { "dialled" } else { "accepted" },
        peer_addr.map(|a| a.to_string()).unwrap_or_default()
    );
    let reader = hub.runtime().spawn(read_loop(hub.clone(), conn.clone(), link, rd));
    let writer = hub.runtime().spawn(write_loop(hub.clone(), conn.clone(), link, wr));
    // When either half ends (for whatever reason, a panic included), the other is told to stop.
    let ended = |half: tokio::task::JoinHandle<()>, what: &'static str| {
        let conn = conn.clone();
        async move {
            if let Err(e) = half.await {
                log::error!("link {link}: {what} task failed: {e}");
            }
            conn.stop(format!("{what} stopped"));
        }
    };
    tokio::join!(ended(reader, "reader"), ended(writer, "writer"), authenticate_within(&conn, link, slot, peer_addr));
    let reason = conn.reason();
    let device = match hub
        .with_engine(move |e| {
            let device = e.link_device(link);
            e.remove_link(link, &reason);
            device
        })
        .await
    {
        Ok(d) => d,
        Err(e) => {
            log::error!("link {link}: {e}");
            None
        }
    };
    hub.unregister(link);
    // (The links that have something to say about this one going away — presence — were woken by the engine
    // call that removed it.)
    hub.nudge();
    log::debug!("link {link} closed: {}", conn.reason());
    Outcome { device: device.or_else(|| conn.device()), synced: conn.is_synced() }
}

/// Close the connection unless it authenticates within [`HANDSHAKE_DEADLINE`]; then hold `slot` (marked
/// authenticated) until the connection stops.
async fn authenticate_within(conn: &LinkState, link: LinkId, mut slot: Option<Slot>, peer: Option<SocketAddr>) {
    tokio::select! {
        biased;
        () = conn.stopped() => return,
        () = conn.synced() => {}
        () = tokio::time::sleep(HANDSHAKE_DEADLINE) => {
            let peer = peer.map(|a| a.to_string()).unwrap_or_default();
            log::warn!("link {link} ({peer}): no handshake within {} s; closing it", HANDSHAKE_DEADLINE.as_secs());
            conn.stop(format!("no handshake within {} s", HANDSHAKE_DEADLINE.as_secs()));
            return;
        }
    }
    if let Some(s) = slot.as_mut() {
        s.authenticated();
    }
    conn.stopped().await;
    drop(slot);
}

async fn read_loop(hub: Arc<Hub>, conn: Arc<LinkState>, link: LinkId, mut rd: impl ByteSource) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = tokio::select! {
            biased;
            () = conn.stopped() => return,
            r = rd.read(&mut buf) => match r {
                Ok(0) => return conn.stop("closed by the peer"),
                Ok(n) => n,
                Err(e) => return conn.stop(format!("read: {e}")),
            },
        };
        decoder.push(buf.get(..n).unwrap_or_default());
        let mut frames = Vec::new();
        let mut broken = None;
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        if !frames.is_empty() {
            let step = hub
                .with_engine(move |e| {
                    for f in &frames {
                        e.on_frame_deferring(link, f);
                        if e.is_closed(link) {
                            break;
                        }
                    }
                    (e.take_apply(link), e.is_closed(link))
                })
                .await;
            hub.nudge();
            let (mut job, mut closed) = match step {
                Ok(step) => step,
                Err(e) => return conn.stop(e.to_string()),
            };
            // Batches of changes are applied without the engine (the links' batches are applied at once, while
            // the engine serves the others), then finished in it; the frames after one wait for it.
            while let (Some(j), false) = (job.take(), closed) {
                let Some(done) = hub.apply(j).await else {
                    return conn.stop("applying changes failed: the node is going away");
                };
                let step = hub
                    .with_engine(move |e| {
                        e.finish_apply(done);
                        (e.take_apply(link), e.is_closed(link))
                    })
                    .await;
                hub.nudge();
                (job, closed) = match step {
                    Ok(step) => step,
                    Err(e) => return conn.stop(e.to_string()),
                };
            }
            if closed {
                return conn.stop("closed by the sync engine");
            }
        }
        if let Some(e) = broken {
            return conn.stop(format!("bad framing: {e}"));
        }
    }
}

async fn write_loop(hub: Arc<Hub>, conn: Arc<LinkState>, link: LinkId, mut wr: impl ByteSink) {
    let mut out: Vec<u8> = Vec::new();
    loop {
        if conn.is_stopped() {
            break;
        }
        let mut batch = std::mem::take(&mut out);
        batch.clear();
        let pulled = hub
            .with_engine(move |e| {
                let mut bad = None;
                while batch.len() < WRITE_BATCH {
                    let Some(frame) = e.poll_frame(link) else { break };
                    if let Err(err) = encode_frame(&frame, &mut batch) {
                        bad = Some(err);
                        break;
                    }
                }
                (batch, e.is_closed(link), bad)
            })
            .await;
        let (batch, closed, bad) = match pulled {
            Ok(p) => p,
            Err(e) => {
                conn.stop(e.to_string());
                break;
            }
        };
        if let Some(e) = bad {
            conn.stop(format!("cannot frame an outgoing message: {e}"));
            break;
        }
        if closed {
            conn.stop("closed by the sync engine");
            break;
        }
        if !batch.is_empty() {
            tokio::select! {
                biased;
                () = conn.stopped() => break,
                r = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&batch)) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        conn.stop(format!("write: {e}"));
                        break;
                    }
                    Err(_) => {
                        conn.stop("write timed out (the peer stopped reading)");
                        break;
                    }
                },
            }
            out = batch;
            // Keep the buffer's memory bounded between writes.
            out.shrink_to(WRITE_BATCH * 2);
            continue;
        }
        out = batch;
        tokio::select! {
            biased;
            () = conn.stopped() => break,
            () = conn.writer_woken() => {}
        }
    }
    // Send FIN (a clean close for the peer); give up quickly if the socket is stuck.
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
}
