//! The listener's connection slots, shared fairly between sources.
//!
//! Anyone on the network can open TCP connections to a listening node, without the app secret: each costs the node
//! a socket, two tasks and an engine link until its handshake fails or times out. So that no single source can
//! hold every slot (and lock honest devices out), every accepted connection takes a [`Slot`] from [`Slots`],
//! which counts per source address how many connections it holds and how many of them have not authenticated
//! yet, and refuses one beyond [`MAX_CONNECTIONS_PER_SOURCE`], [`MAX_UNAUTHENTICATED_PER_SOURCE`] or
//! [`MAX_UNAUTHENTICATED`] in total. A connection that authenticates ([`Slot::authenticated`]) stops counting as
//! unauthenticated; one that does not within [`super::HANDSHAKE_DEADLINE`] is closed by the
//! connection itself. The overall cap ([`super::MAX_CONNECTIONS`]) is checked by the listener.
//!
//! A source is an IPv4 address, or an IPv6 /64 prefix (one host usually holds a whole /64, and picks addresses
//! in it at will). An attacker with many addresses still gets only [`MAX_UNAUTHENTICATED`] handshakes at once,
//! which leaves most of the [`super::MAX_CONNECTIONS`] slots to authenticated devices.

use crate::util::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The most accepted connections one source address holds at once, authenticated or not: a host runs a few
/// devices of the app at most (a phone, a desktop app, a CLI peer), and an attacker holding the app secret still
/// leaves the other [`super::MAX_CONNECTIONS`] slots to the others.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 8;

/// The most accepted connections one source address holds at once that have not authenticated yet: an honest
/// device dials once per link (and again only after backoff), so two (one dialled link racing one redial) is
/// plenty; a source without the app secret holds no more than this.
pub const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 2;

/// The most accepted connections that have not authenticated yet, over all sources: bounds what handshakes cost
/// and keeps most of the [`super::MAX_CONNECTIONS`] slots for authenticated devices whatever many addresses an
/// attacker uses.
pub const MAX_UNAUTHENTICATED: usize = 16;

/// How many connections a listener holds at once, and from whom (see the module docs). A device's defaults
/// ([`ListenLimits::DEVICE`]) fit a phone or a desktop on a LAN; a server that devices reach through NAT or a load
/// balancer — many devices behind one address — takes [`ListenLimits::SERVER`] or its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenLimits {
    /// The most connections open at once, accepted and dialled; more are refused.
    pub connections: usize,
    /// The most accepted connections one source holds at once, authenticated or not.
    pub per_source: usize,
    /// The most accepted connections one source holds at once that have not authenticated yet.
    pub unauthenticated_per_source: usize,
    /// The most accepted connections that have not authenticated yet, over all sources.
    pub unauthenticated: usize,
}

impl ListenLimits {
    /// A device's: [`super::MAX_CONNECTIONS`], [`MAX_CONNECTIONS_PER_SOURCE`], [`MAX_UNAUTHENTICATED_PER_SOURCE`],
    /// [`MAX_UNAUTHENTICATED`].
    pub const DEVICE: ListenLimits = ListenLimits {
        connections: super::MAX_CONNECTIONS,
        per_source: MAX_CONNECTIONS_PER_SOURCE,
        unauthenticated_per_source: MAX_UNAUTHENTICATED_PER_SOURCE,
        unauthenticated: MAX_UNAUTHENTICATED,
    };

    /// A server's (the cloud peer's relays): 10,000 connections, any number of them from one address (carrier NAT,
    /// a load balancer), but at most 64 handshakes at once from one source and 512 in all, so that a flood of
    /// connections without credentials still leaves room for devices.
    pub const SERVER: ListenLimits =
        ListenLimits { connections: 10_000, per_source: 10_000, unauthenticated_per_source: 64, unauthenticated: 512 };
}

impl Default for ListenLimits {
    fn default() -> ListenLimits {
        ListenLimits::DEVICE
    }
}

/// Who a connection comes from, for the per-source counts: an IPv4 address, or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    /// The source of a connection from `ip`.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(bits.into()))
                }
            },
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was refused a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The source holds [`ListenLimits::per_source`] connections.
    #[error("{0} holds {1} connections")]
    SourceFull(Source, usize),
    /// The source holds [`ListenLimits::unauthenticated_per_source`] connections that have not authenticated.
    #[error("{0} holds {1} unauthenticated connections")]
    SourceUnauthenticated(Source, usize),
    /// [`ListenLimits::unauthenticated`] connections have not authenticated.
    #[error("{0} connections are waiting for their handshake")]
    Unauthenticated(usize),
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    open: usize,
    unauthenticated: usize,
}

#[derive(Debug, Default)]
struct State {
    by_source: HashMap<Source, Counts>,
    unauthenticated: usize,
}

/// The slots of one listener (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Slots {
    state: Mutex<State>,
    limits: ListenLimits,
}

impl Slots {
    /// No slot taken, a device's limits.
    #[cfg(test)]
    pub fn new() -> Arc<Slots> {
        Slots::with_limits(ListenLimits::DEVICE)
    }

    /// No slot taken; `limits`.
    pub fn with_limits(limits: ListenLimits) -> Arc<Slots> {
        Arc::new(Slots { state: Mutex::default(), limits })
    }

    /// The limits of these slots.
    pub fn limits(&self) -> ListenLimits {
        self.limits
    }

    /// A slot for a new, unauthenticated connection from `ip`, unless its source or all sources hold too many.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let source = Source::of(ip);
        let limits = self.limits;
        let mut state = lock(&self.state);
        if state.unauthenticated >= limits.unauthenticated {
            return Err(Refused::Unauthenticated(limits.unauthenticated));
        }
        let counts = state.by_source.entry(source).or_default();
        if counts.open >= limits.per_source {
            return Err(Refused::SourceFull(source, limits.per_source));
        }
        if counts.unauthenticated >= limits.unauthenticated_per_source {
            return Err(Refused::SourceUnauthenticated(source, limits.unauthenticated_per_source));
        }
        counts.open += 1;
        counts.unauthenticated += 1;
        state.unauthenticated += 1;
        Ok(Slot { slots: self.clone(), source, authenticated: false })
    }

    /// Connections held by the source of `ip`: (open, unauthenticated).
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> (usize, usize) {
        let state = lock(&self.state);
        let c = state.by_source.get(&Source::of(ip)).copied().unwrap_or_default();
        (c.open, c.unauthenticated)
    }
}

/// One accepted connection's slot; released when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    source: Source,
    authenticated: bool,
}

impl Slot {
    /// The connection authenticated: it no longer counts as unauthenticated.
    pub fn authenticated(&mut self) {
        if self.authenticated {
            return;
        }
        self.authenticated = true;
        let mut state = lock(&self.slots.state);
        state.unauthenticated = state.unauthenticated.saturating_sub(1);
        if let Some(c) = state.by_source.get_mut(&self.source) {
            c.unauthenticated = c.unauthenticated.saturating_sub(1);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.slots.state);
        if !self.authenticated {
            state.unauthenticated = state.unauthenticated.saturating_sub(1);
        }
        let empty = match state.by_source.get_mut(&self.source) {
            Some(c) => {
                c.open = c.open.saturating_sub(1);
                if !self.authenticated {
                    c.unauthenticated = c.unauthenticated.saturating_sub(1);
                }
                c.open == 0
            }
            None => false,
        };
        if empty {
            state.by_source.remove(&self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn one_source_holds_few_unauthenticated_slots_and_others_still_get_theirs() {
        let slots = Slots::new();
        let attacker = ip("10.0.0.66");
        let mut held = Vec::new();
        let mut refused = 0;
        for _ in 0..1000 {
            match slots.admit(attacker) {
                Ok(s) => held.push(s),
                Err(e) => {
                    assert_eq!(e, Refused::SourceUnauthenticated(Source::of(attacker), MAX_UNAUTHENTICATED_PER_SOURCE));
                    refused += 1;
                }
            }
        }
        assert_eq!(held.len(), MAX_UNAUTHENTICATED_PER_SOURCE);
        assert_eq!(refused, 1000 - MAX_UNAUTHENTICATED_PER_SOURCE);
        // An honest device elsewhere still gets a slot, and once authenticated frees its handshake share.
        let mut honest = slots.admit(ip("10.0.0.7")).expect("an honest source is admitted");
        honest.authenticated();
        assert_eq!(slots.held(ip("10.0.0.7")), (1, 0));
        // Released slots are counted back.
        held.clear();
        assert_eq!(slots.held(attacker), (0, 0));
        assert!(slots.admit(attacker).is_ok());
    }

    #[test]
    fn authenticated_connections_per_source_are_capped_too() {
        let slots = Slots::new();
        let host = ip("192.168.1.5");
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_SOURCE {
            let mut s = slots.admit(host).expect("admitted");
            s.authenticated();
            held.push(s);
        }
        assert_eq!(slots.admit(host).err(), Some(Refused::SourceFull(Source::of(host), MAX_CONNECTIONS_PER_SOURCE)));
        drop(held.pop());
        assert!(slots.admit(host).is_ok());
    }

    #[test]
    fn many_sources_share_a_total_of_unauthenticated_slots() {
        let slots = Slots::new();
        let mut held = Vec::new();
        for i in 0..200u8 {
            if let Ok(s) = slots.admit(IpAddr::from([10, 1, 0, i])) {
                held.push(s);
            }
        }
        assert_eq!(held.len(), MAX_UNAUTHENTICATED);
        assert_eq!(slots.admit(ip("10.2.0.1")).err(), Some(Refused::Unauthenticated(MAX_UNAUTHENTICATED)));
        // An authenticated connection frees its share.
        if let Some(s) = held.first_mut() {
            s.authenticated();
        }
        assert!(slots.admit(ip("10.2.0.1")).is_ok());
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64_prefix() {
        let slots = Slots::new();
        let mut held = Vec::new();
        for i in 0..50u16 {
            let addr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i);
            if let Ok(s) = slots.admit(IpAddr::V6(addr)) {
                held.push(s);
            }
        }
        assert_eq!(held.len(), MAX_UNAUTHENTICATED_PER_SOURCE);
        assert_eq!(Source::of(ip("::ffff:10.0.0.1")), Source::of(ip("10.0.0.1")));
    }
}
