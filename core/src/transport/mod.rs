//! Links to other devices: framing ([`frame`]), the LAN transport ([`lan`]: TCP + mDNS, on tokio), the Bluetooth LE
//! transport ([`ble`]: the link protocol, the glue to the engine, the platform radio's trait, BlueZ on Linux), and
//! the node's runtime hub shared by them (`hub`: the engine and the table of links of every transport).
//!
//! The protocol code is sans-IO: [`frame`], [`ble::link`], [`ble::links`] and [`ble::bridge`] turn bytes and
//! events into messages and commands and back, and the caller owns the sockets, radios, timers and threads; the
//! LAN's tasks, the node's Bluetooth task ([`ble::radio`]) and the simulators (`shoaldb::sim`, feature `sim`) are
//! such callers. Every byte that arrives from a link is untrusted, so no input can make these types panic or grow
//! without bound.
//!
//! # What a transport does
//! A link is an ordered, reliable, framed byte stream between two devices; the sync engine
//! ([`crate::sync::Engine`]) does everything else (handshake, encryption, what to send, flow control). A
//! transport — TCP, Bluetooth LE, the simulators in tests — only:
//! 1. opens links and tells the engine: [`Engine::add_link`](crate::sync::Engine::add_link) with the
//!    [`TransportKind`](crate::sync::TransportKind) and whether this side dialled;
//! 2. delivers every frame received, whole and in order: [`Engine::on_frame`](crate::sync::Engine::on_frame)
//!    (a byte stream is cut into frames with [`frame::FrameDecoder`]; a BLE transport reassembles frames from
//!    MTU-sized fragments the same way);
//! 3. sends the frames the engine produces, pulling the next one only when the previous ones were written
//!    ([`Engine::poll_frame`](crate::sync::Engine::poll_frame)) — this is the backpressure that keeps memory
//!    bounded on slow links;
//! 4. drops a link the engine closed ([`Engine::is_closed`](crate::sync::Engine::is_closed)) and reports a
//!    link it lost ([`Engine::remove_link`](crate::sync::Engine::remove_link));
//! 5. gives the engine the time about once a second ([`Engine::tick`](crate::sync::Engine::tick)) for
//!    keepalives and dead-link detection.
//!
//! Frames are at most [`frame::MAX_FRAME_LEN`] bytes; a transport with small packets (BLE's 23…512-byte ATT
//! MTU) fragments them itself.

pub mod ble;
pub mod frame;
pub(crate) mod hub;
pub mod lan;
#[cfg(feature = "websocket")]
pub mod websocket;
