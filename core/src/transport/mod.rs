//! Links to other devices: framing now; LAN, BLE and simulated links later.
//!
//! Everything here is sans-IO: the types turn bytes into messages and back, and the caller owns the sockets,
//! timers and threads. Every byte that arrives from a link is untrusted, so no input can make these types
//! panic or grow without bound.

pub mod frame;
