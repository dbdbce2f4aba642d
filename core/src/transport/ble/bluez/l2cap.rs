//! L2CAP LE credit-based channels: the listener and the channels it accepts, dialling a channel as central (with
//! retries of transient failures), and a channel's reader and writer.

use super::{timed, Actor, Conn, Internal, Kind, Traffic, Wire};
use crate::transport::ble::link::{Channel, Role, L2CAP_MAX_PACKET};
use crate::transport::ble::packet::{MIN_PACKET, RECORD_HEADER_LEN};
use crate::transport::ble::radio::RadioEvent;
use bluer::l2cap::{Socket as L2capSocket, SocketAddr as L2capAddr, Stream as L2capStream, StreamListener};
use bluer::Address;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// A central gives up opening an L2CAP channel (all attempts together) and uses GATT after this long.
const L2CAP_TIMEOUT: Duration = Duration::from_secs(8);

/// A central tries this many times at most to open an L2CAP channel before it falls back to GATT.
const L2CAP_ATTEMPTS: u32 = 4;

/// One attempt to open an L2CAP channel is given up after this long (the LE link is up by then, so the answer
/// takes a few connection intervals; see [`L2capError::transient`] for why it may never come).
const L2CAP_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// The pause after the first failed L2CAP attempt; doubled after each further one (0.25, 0.5, 1 s).
const L2CAP_BACKOFF: Duration = Duration::from_millis(250);

/// A PSM no LE peer listens on (SDP's, used over BR/EDR only): a request for it is refused at once ("PSM not
/// supported") and opens nothing at the peer. For holding channel ids, see [`l2cap_connect`].
const UNUSED_PSM: u16 = 0x0001;

impl Actor {
    /// Binds the L2CAP listener on a dynamic PSM of this adapter (`local`) and publishes the PSM (see the PSM
    /// characteristic); returns the task that accepts channels, `None` without a listener (GATT only then).
    pub(super) async fn listen(&self, local: L2capAddr) -> Option<AbortHandle> {
        match StreamListener::bind(local).await {
            Ok(listener) => {
                let psm = listener.as_ref().local_addr().map(|a| a.psm).unwrap_or(0);
                self.psm.store(psm, Ordering::Relaxed);
                let internal = self.internal.clone();
                let name = self.name.clone();
                let accept = tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, peer)) => {
                                let address = peer.addr.to_string().to_ascii_uppercase();
                                if internal.send(Internal::Accepted { stream, address }).is_err() {
                                    break;
                                }
                            }
                            Err(e) => {
                                log::warn!("{name}: L2CAP accept failed: {e}");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                    }
                })
                .abort_handle();
                log::info!("{}: L2CAP listener on PSM {psm:#04x}", self.name);
                Some(accept)
            }
            Err(e) => {
                log::warn!("{}: no L2CAP listener ({e}); GATT only", self.name);
                None
            }
        }
    }

    pub(super) fn accepted(&mut self, stream: L2capStream, address: String) {
        if !self.config.allows(&address) {
            log::debug!("{}: refusing an L2CAP channel from {address} (not allowed)", self.name);
            return;
        }
        let conn = self.new_conn();
        let mtu = l2cap_packet_size(&stream);
        let (r, w) = stream.into_split();
        let (tx, queue) = mpsc::unbounded_channel();
        let traffic = Arc::new(Traffic::default());
        let wire = self.wire(conn, &traffic);
        tokio::spawn(l2cap_writer(w, queue, wire.clone()));
        let reader = tokio::spawn(l2cap_reader(r, wire));
        let channel = Channel::L2cap { mtu };
        log::info!("{}: connected {conn} to {address} as peripheral over {channel:?}", self.name);
        self.conns.insert(
            conn,
            Conn {
                address: address.clone(),
                kind: Kind::PeripheralL2cap,
                tx,
                tasks: vec![reader.abort_handle()],
                att_mtu: 0,
                since: Instant::now(),
                traffic,
                logged: (0, 0, 0),
            },
        );
        self.report(RadioEvent::Connected { conn, address: address.clone(), role: Role::Peripheral, channel });
        self.watch(&address);
    }
}

/// The packet size for an L2CAP channel: one record (packet + its 2-byte length) per SDU of the peer's MTU.
pub(super) fn l2cap_packet_size(stream: &L2capStream) -> u16 {
    let send_mtu = stream.as_ref().send_mtu().ok().filter(|m| *m >= 23).unwrap_or(23);
    send_mtu.saturating_sub(RECORD_HEADER_LEN as u16).clamp(MIN_PACKET, L2CAP_MAX_PACKET)
}

/// Why opening an L2CAP channel failed.
#[derive(Debug)]
enum L2capError {
    /// Before connecting (address, device, socket): another attempt would fail the same way.
    Setup(String),
    /// The kernel's connect failed.
    Connect(std::io::Error),
    /// No answer within [`L2CAP_ATTEMPT_TIMEOUT`] or the time left.
    TimedOut,
}

impl L2capError {
    /// Whether another attempt may succeed soon. A central also sees transient failures on real devices, mostly
    /// right after the LE link came up or while both devices dial each other over one LE link: the peer refuses the
    /// channel (ECONNREFUSED, see [`L2capError::refused`]), resets it (ECONNRESET) or the link aborts it
    /// (ECONNABORTED), or the local controller is busy with another connection attempt (EBUSY, EAGAIN). An attempt
    /// that got no answer is retried too: when both hosts open channels to each other at once, Linux (6.1) can pair
    /// the peer's answer with the channel it has just accepted from the peer instead (see [`L2capError::refused`]),
    /// and the request then waits in vain. Not retried: everything else (permissions, an unsupported PSM or
    /// address type, a bad argument).
    fn transient(&self) -> bool {
        match self {
            L2capError::Connect(e) => matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::ECONNABORTED | libc::EBUSY | libc::EAGAIN)
            ),
            L2capError::TimedOut => true,
            L2capError::Setup(_) => false,
        }
    }

    /// Whether the peer refused the channel (ECONNREFUSED). Seen between two Linux hosts (kernel 6.1) when both
    /// opened their EATT channels (BlueZ's default) to each other at once, as they do when each dialled the other:
    /// the kernel pairs an L2CAP response with its request by the signalling identifier alone, both hosts number
    /// their requests alike, and a response lands on the wrong channel. One host is then left with a stale channel
    /// whose peer-side id the other host has freed; the other host hands out its lowest free id to every new
    /// channel, that very one, so each request is refused with "Source CID already allocated" for as long as the
    /// LE link lasts. A retry therefore holds the ids that were refused (see [`l2cap_connect`]).
    fn refused(&self) -> bool {
        matches!(self, L2capError::Connect(e) if e.raw_os_error() == Some(libc::ECONNREFUSED))
    }
}

impl std::fmt::Display for L2capError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            L2capError::Setup(e) => f.write_str(e),
            L2capError::Connect(e) => write!(f, "{e}"),
            L2capError::TimedOut => f.write_str("timed out"),
        }
    }
}

/// Opens an L2CAP LE credit-based channel from this adapter to `address` on `psm`: up to [`L2CAP_ATTEMPTS`]
/// attempts within [`L2CAP_TIMEOUT`], with a growing pause ([`L2CAP_BACKOFF`]) after a transient failure
/// ([`L2capError::transient`]); after `n` refusals, an attempt holds the `n` lowest free channel ids
/// ([`L2capError::refused`]). Failed attempts are logged at debug level (`name`: the radio's, for the log); the
/// error returned is the last one, with the number of attempts if there were several.
pub(super) async fn l2cap_dial(
    adapter: &bluer::Adapter,
    local: L2capAddr,
    address: &str,
    psm: u16,
    name: &str,
) -> Result<L2capStream, String> {
    let deadline = Instant::now() + L2CAP_TIMEOUT;
    let mut backoff = L2CAP_BACKOFF;
    let mut attempt = 1;
    let mut refusals = 0;
    let mut failed = String::new();
    loop {
        let e = match l2cap_connect(adapter, local, address, psm, deadline, refusals).await {
            Ok(stream) => {
                if attempt > 1 {
                    log::info!("{name}: L2CAP channel to {address} open at attempt {attempt} (before: {failed})");
                }
                return Ok(stream);
            }
            Err(e) => e,
        };
        // Only retry when the pause leaves the next attempt a fair chance (a second) before the deadline.
        let retry =
            e.transient() && attempt < L2CAP_ATTEMPTS && Instant::now() + backoff + Duration::from_secs(1) <= deadline;
        if !retry {
            return Err(if attempt > 1 { format!("{e}; {attempt} attempts") } else { e.to_string() });
        }
        log::debug!("{name}: L2CAP to {address} PSM {psm:#04x}: attempt {attempt} failed ({e}); again in {backoff:?}");
        failed = e.to_string();
        if e.refused() {
            refusals += 1;
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
        attempt += 1;
    }
}

/// One attempt of [`l2cap_dial`], given up after [`L2CAP_ATTEMPT_TIMEOUT`] or at `deadline`. With `hold > 0`, that many requests for [`UNUSED_PSM`]
/// go out first: the kernel gives each the lowest channel id free on this LE link, and each keeps it until its
/// refusal comes back, so the channel asked for gets an id above the ones refused before
/// ([`L2capError::refused`]). The refusal can come back within a millisecond, so all sockets are made first and
/// the connect(2) calls follow back to back. The holders open nothing at the peer and are dropped with the
/// attempt.
async fn l2cap_connect(
    adapter: &bluer::Adapter,
    local: L2capAddr,
    address: &str,
    psm: u16,
    deadline: Instant,
    hold: usize,
) -> Result<L2capStream, L2capError> {
    let addr: Address = address.parse().map_err(|e| L2capError::Setup(format!("{e}")))?;
    let device = adapter.device(addr).map_err(|e| L2capError::Setup(e.to_string()))?;
    let addr_type = device.address_type().await.map_err(|e| L2capError::Setup(e.to_string()))?;
    let socket = || -> Result<L2capSocket<L2capStream>, L2capError> {
        let socket = L2capSocket::<L2capStream>::new_stream().map_err(|e| L2capError::Setup(e.to_string()))?;
        socket.bind(local).map_err(|e| L2capError::Setup(format!("bind: {e}")))?;
        Ok(socket)
    };
    let holders = (0..hold).map(|_| socket()).collect::<Result<Vec<_>, _>>()?;
    let channel = socket()?;
    let mut holders: Vec<_> =
        holders.into_iter().map(|s| Box::pin(s.connect(L2capAddr::new(addr, addr_type, UNUSED_PSM)))).collect();
    for holder in &mut holders {
        // The first poll makes the connect(2) call, which takes the id (and does not wait).
        let _ = futures::poll!(holder.as_mut());
    }
    let connect = channel.connect(L2capAddr::new(addr, addr_type, psm));
    let given_up = deadline.min(Instant::now() + L2CAP_ATTEMPT_TIMEOUT);
    let result = match tokio::time::timeout_at(given_up, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(L2capError::Connect(e)),
        Err(_) => Err(L2capError::TimedOut),
    };
    drop(holders);
    result
}

pub(super) async fn l2cap_writer(
    mut w: bluer::l2cap::stream::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    wire: Wire,
) {
    while let Some(packet) = queue.recv().await {
        if let Err(why) = timed("write", w.write_all(&packet)).await {
            return wire.lost(why);
        }
        wire.sent();
    }
    // Closed from this side: an LE CoC socket closed right after a write can lose what the kernel still holds
    // for lack of credits (the Close packet), so give it a moment before the socket goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

pub(super) async fn l2cap_reader(mut r: bluer::l2cap::stream::OwnedReadHalf, wire: Wire) {
    let mut buf = vec![0u8; 4096];
    let why = loop {
        match r.read(&mut buf).await {
            Ok(0) => break "closed by the peer".to_string(),
            Ok(n) => wire.received(buf.get(..n).unwrap_or_default().to_vec()),
            Err(e) => break format!("read failed: {e}"),
        }
    };
    wire.lost(why);
}
