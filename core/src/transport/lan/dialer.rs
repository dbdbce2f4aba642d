//! Dialling: one task per address given by the app or device found by discovery, connecting, running the
//! connection, and trying again with exponential backoff when it fails or ends.
//!
//! A dialer does not dial a device that already has a synced link (whichever side dialled): it learns the device
//! behind an address from the first handshake, or from the mDNS record. An address that leads to this device itself
//! is given up.

use super::connection;
use super::targets::Failures;
use crate::security::DeviceKey;
use crate::transport::hub::Hub;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The first delay before dialling again.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest delay between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// When both devices found each other by mDNS, the one with the larger key waits this long before dialling, so
/// that usually only the other dials (the engine keeps the link dialled by the smaller key anyway).
const YIELD_TO_SMALLER_KEY: Duration = Duration::from_secs(3);

/// Exponential backoff with jitter: [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`], each delay randomised by ±25%
/// so that devices that lost each other at the same moment do not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Backoff from `min` doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, next: min }
    }

    /// The delay before the next attempt (jittered); the one after it doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        jitter(base)
    }

    /// Start again from the shortest delay (after a successful session).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
    }
}

/// `d` times a random factor in [0.75, 1.25].
fn jitter(d: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(u32::MAX / 2);
    let factor = 0.75 + 0.5 * (f64::from(r) / f64::from(u32::MAX));
    d.mul_f64(factor)
}

/// Where a dialer dials.
pub(crate) enum Target {
    /// An address the app gave; the device behind it is learnt from the first handshake.
    Address(SocketAddr),
    /// A device found by discovery, at the addresses it advertises (`None` once it is gone).
    Device { device: DeviceKey, addrs: watch::Receiver<Option<Vec<SocketAddr>>>, failures: Failures },
    /// A sync WebSocket the app gave (`ws://…` or `wss://…`, see [`crate::transport::websocket`]); its host is
    /// looked up at each attempt.
    #[cfg(feature = "websocket")]
    WebSocket(crate::transport::websocket::Endpoint),
}

impl Target {
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Address(a) => a.to_string(),
            Target::Device { device, .. } => format!("device {device}"),
            #[cfg(feature = "websocket")]
            Target::WebSocket(endpoint) => endpoint.url.clone(),
        }
    }

    /// The addresses to try now; `None` when the target is gone.
    async fn addrs(&self) -> Option<Vec<SocketAddr>> {
        match self {
            Target::Address(a) => Some(vec![*a]),
            Target::Device { addrs, .. } => addrs.borrow().clone(),
            #[cfg(feature = "websocket")]
            Target::WebSocket(endpoint) => match endpoint.resolve().await {
                Ok(addrs) => Some(addrs),
                Err(e) => {
                    log::debug!("looking up {}: {e}", endpoint.url);
                    Some(Vec::new())
                }
            },
        }
    }

    /// A dial of a discovered target failed (it counts against it in [`super::targets`]).
    fn failed(&self) {
        if let Target::Device { failures, .. } = self {
            failures.failed();
        }
    }

    /// A dial of a discovered target synced.
    fn synced(&self) {
        if let Target::Device { failures, .. } = self {
            failures.synced();
        }
    }

    /// Resolves when a discovered target is gone (never for an address).
    async fn gone(&mut self) {
        match self {
            Target::Address(_) => std::future::pending().await,
            #[cfg(feature = "websocket")]
            Target::WebSocket(_) => std::future::pending().await,
            Target::Device { addrs, .. } => {
                let _ = addrs.wait_for(Option::is_none).await;
            }
        }
    }
}

/// Dial `target` until the node shuts down (or the target is gone, or turns out to be this device).
pub(crate) async fn dial(hub: Arc<Hub>, mut target: Target) {
    let mut backoff = Backoff::default();
    let mut device = match &target {
        Target::Device { device, .. } => Some(*device),
        _ => None,
    };
    let what = target.describe();
    if matches!(device, Some(d) if d > hub.device()) {
        tokio::select! {
            () = tokio::time::sleep(jitter(YIELD_TO_SMALLER_KEY)) => {}
            () = hub.shutting_down() => return,
            () = target.gone() => return,
        }
    }
    loop {
        if hub.is_shutting_down() {
            return;
        }
        if let Some(d) = device {
            // Wait while a link to that device exists (it may have dialled us).
            let mut linked = hub.linked();
            tokio::select! {
                r = linked.wait_for(|set| !set.contains(&d)) => if r.is_err() { return },
                () = hub.shutting_down() => return,
                () = target.gone() => return,
            }
        }
        let Some(addrs) = target.addrs().await else { return };
        match connect_any(&addrs).await {
            Ok(stream) => {
                let outcome = match &target {
                    #[cfg(feature = "websocket")]
                    Target::WebSocket(endpoint) => {
                        let peer = stream.peer_addr().ok();
                        match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(stream)).await {
                            Ok(Ok((rd, wr))) => {
                                let cloud = crate::sync::TransportKind::Cloud;
                                connection::run_halves(hub.clone(), rd, wr, peer, cloud, true, None).await
                            }
                            Ok(Err(e)) => {
                                log::debug!("dialling {what}: the WebSocket upgrade failed: {e}");
                                connection::Outcome::default()
                            }
                            Err(_) => {
                                log::debug!("dialling {what}: no WebSocket upgrade within {CONNECT_TIMEOUT:?}");
                                connection::Outcome::default()
                            }
                        }
                    }
                    _ => connection::run(hub.clone(), stream, true, None).await,
                };
                if let Some(d) = outcome.device {
                    if d == hub.device() {
                        log::warn!("{what} is this device itself; not dialling it again");
                        return;
                    }
                    device = Some(d);
                }
                if outcome.synced {
                    backoff.reset();
                    target.synced();
                } else {
                    target.failed();
                }
            }
            Err(e) => {
                log::debug!("dialling {what}: {e}");
                target.failed();
            }
        }
        let delay = backoff.next_delay();
        log::debug!("dialling {what} again in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = hub.shutting_down() => return,
            () = target.gone() => return,
        }
    }
}

/// Connect to the first address that answers.
async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to dial");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = std::io::Error::new(e.kind(), format!("{addr}: {e}")),
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{addr}: connection timed out")),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let mut bases = Vec::new();
        for _ in 0..8 {
            let d = b.next_delay();
            bases.push(d);
        }
        let expect = [1u64, 2, 4, 8, 16, 30, 30, 30];
        for (d, e) in bases.iter().zip(expect) {
            let e = Duration::from_secs(e);
            assert!(*d >= e.mul_f64(0.74) && *d <= e.mul_f64(1.26), "{d:?} vs {e:?}");
        }
        b.reset();
        let d = b.next_delay();
        assert!(d <= Duration::from_millis(1260), "{d:?}");
    }
}
