//! Links to other devices: framing, the LAN transport (TCP + mDNS, on tokio), simulated links; BLE later.
//!
//! Everything here but [`lan`] is sans-IO: the types turn bytes into messages and back, and the caller owns the
//! sockets, timers and threads; [`lan`] is such a caller. Every byte that arrives from a link is untrusted, so no
//! input can make these types panic or grow without bound.

pub mod frame;
pub mod lan;
pub mod sim;
