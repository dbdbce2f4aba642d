//! Peer identities, dots and the hybrid logical clock.
//!
//! A [`Dot`] names one operation uniquely in the whole system: the peer that made it and that peer's counter, which
//! only ever grows (it is persisted with the store). A [`Timestamp`] is a hybrid logical clock reading: wall-clock
//! milliseconds in the high 48 bits and a logical counter in the low 16, so that it sorts like time but still grows
//! when the wall clock stands still or goes backwards.
//!
//! # Far-future timestamps
//! A peer whose clock is wrong (or malicious) may send timestamps far ahead of ours. Shoal keeps such timestamps as
//! they are for ordering *concurrent* writes (every replica must order them the same way), but they never drag the
//! local clock forward by more than [`MAX_CLOCK_SKEW_MS`]: when we observe a remote timestamp, the local clock
//! advances to at most `wall_now + MAX_CLOCK_SKEW_MS`. Writes made here after receiving such a change still win over
//! it, because a register's winner is decided by causality first and by time only for concurrent writes.
//! Timestamps whose wall part does not fit in 48 bits are rejected as corrupt.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The identity of one replica (one store on one device). Random, persistent.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct PeerId(pub u64);

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One operation's unique name: (peer, counter). Counters start at 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct Dot {
    /// The replica that made the operation.
    pub peer: PeerId,
    /// The operation's number in that replica's sequence (1 for its first).
    pub counter: u64,
}

impl Dot {
    /// The dot of `peer`'s operation number `counter`.
    pub const fn new(peer: PeerId, counter: u64) -> Self {
        Dot { peer, counter }
    }

    /// The dot `n` counters after this one (same peer).
    pub const fn offset(self, n: u64) -> Dot {
        Dot { peer: self.peer, counter: self.counter + n }
    }
}

/// How far ahead of our wall clock a remote timestamp may pull the local clock, in milliseconds.
pub const MAX_CLOCK_SKEW_MS: u64 = 60_000;

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MASK: u64 = (1 << LOGICAL_BITS) - 1;
/// The largest wall-clock value (ms) a timestamp can carry.
pub const MAX_WALL_MS: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// A hybrid logical clock reading. Orders like wall time, ties broken by the logical part.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The earliest timestamp (a clock that never ticked).
    pub(crate) const ZERO: Timestamp = Timestamp(0);

    /// The reading `logical` within millisecond `wall_ms` since the Unix epoch (clamped to [`MAX_WALL_MS`]).
    pub fn new(wall_ms: u64, logical: u16) -> Self {
        Timestamp((wall_ms.min(MAX_WALL_MS) << LOGICAL_BITS) | logical as u64)
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical part: orders readings taken within the same millisecond.
    pub(crate) fn logical(self) -> u16 {
        (self.0 & LOGICAL_MASK) as u16
    }

    /// The next representable timestamp.
    fn successor(self) -> Timestamp {
        Timestamp(self.0.saturating_add(1))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.wall_ms(), self.logical())
    }
}

/// The current wall clock in milliseconds since the Unix epoch (0 if the system clock is before 1970).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A hybrid logical clock. Every reading is strictly greater than every earlier reading and every observed remote
/// timestamp (within the skew bound, see the module docs).
#[derive(Clone, Debug)]
pub struct Hlc {
    last: Timestamp,
}

impl Hlc {
    /// A clock that continues after `last` (e.g. the value persisted by a store), so readings stay monotonic across
    /// restarts even if the wall clock went backwards.
    pub fn new(last: Timestamp) -> Self {
        Hlc { last }
    }

    /// The last reading handed out or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// A new reading, given the wall clock now.
    pub fn tick(&mut self, wall_now_ms: u64) -> Timestamp {
        let candidate = Timestamp::new(wall_now_ms, 0);
        self.last = if candidate > self.last { candidate } else { self.last.successor() };
        self.last
    }

    /// Take a remote timestamp into account (see the module docs for the skew rule). Returns `false` when the
    /// remote timestamp was beyond the skew bound, so that callers can log it.
    pub fn observe(&mut self, remote: Timestamp, wall_now_ms: u64) -> bool {
        let bound = Timestamp::new(wall_now_ms.saturating_add(MAX_CLOCK_SKEW_MS), LOGICAL_MASK as u16);
        let within = remote <= bound;
        // Adopted at most with a logical count of 0 at the bound, so that the ticks after it stay within the bound
        // (from the bound's largest logical count, the very next tick would carry into the following millisecond).
        let effective = remote.min(Timestamp::new(wall_now_ms.saturating_add(MAX_CLOCK_SKEW_MS), 0));
        if effective > self.last {
            self.last = effective;
        }
        within
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_when_wall_clock_stalls_or_goes_back() {
        let mut c = Hlc::new(Timestamp::ZERO);
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(500);
        assert!(a < b && b < d);
        assert_eq!(a.wall_ms(), 1000);
        assert_eq!(d.wall_ms(), 1000);
        let e = c.tick(2000);
        assert_eq!(e, Timestamp::new(2000, 0));
    }

    #[test]
    fn observe_is_bounded_by_skew() {
        let mut c = Hlc::new(Timestamp::ZERO);
        let far = Timestamp::new(1_000_000_000, 3);
        assert!(!c.observe(far, 1000));
        assert!(c.last().wall_ms() <= 1000 + MAX_CLOCK_SKEW_MS);
        // Writes in the same millisecond stay within the bound too.
        for _ in 0..1000 {
            assert!(c.tick(1000).wall_ms() <= 1000 + MAX_CLOCK_SKEW_MS);
        }
        // A near-future timestamp is adopted, and the next tick is after it.
        let near = Timestamp::new(1500, 7);
        let mut c = Hlc::new(Timestamp::ZERO);
        assert!(c.observe(near, 1000));
        assert!(c.tick(1000) > near);
    }

    #[test]
    fn wall_is_clamped_to_48_bits() {
        let t = Timestamp::new(u64::MAX, 9);
        assert_eq!(t.wall_ms(), MAX_WALL_MS);
        assert_eq!(t.logical(), 9);
    }
}
