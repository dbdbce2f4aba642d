//! A simulated Bluetooth LE air that phones in other processes share, so that the shipped phone radios (Android's
//! `AndroidBluetoothRadio` on Robolectric, iOS's `CoreBluetoothRadio.swift` on Linux) meet in one mesh. Test
//! infrastructure: no app links it. The wire protocol is in `PROTOCOL.md` beside this crate.
//!
//! * [`air`]: the air as a state machine without I/O;
//! * [`server`]: the loopback TCP server around it;
//! * [`control`]: a control connection (a test driver's: range, app state, loss, traffic, commands on phones);
//! * [`mesh`]: the mesh scenarios, which start phone programs, shape the air and check that the phones converge;
//! * [`linux`]: a Linux peer's phone program (the core's own Bluetooth LE stack over a radio for this air).

pub mod air;
pub mod control;
pub mod linux;
pub mod mesh;
pub mod server;
