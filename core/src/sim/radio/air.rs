//! The air between the radios of a [`RadioWorld`]: discovery, connection attempts, connections and their
//! connection events, one radio per phone, loss, reordering and supervision timeouts (see the module docs of
//! [`super`] for the model). The phones' links only see what a platform radio would report
//! ([`RadioEvent`]s, through their [`crate::transport::ble::bridge::BleBridge`]).

use super::params::{pdu_air_bytes, pdu_us, IFS_US, INTERVAL_UNIT_US};
use super::{Event, PhoneId, RadioWorld};
use crate::sim::{World, MILLISECOND};
use crate::sync::TransportKind;
use crate::transport::ble::link::{Channel, Role, ATT_HEADER_LEN, ATT_MTU_MIN};
use crate::transport::ble::links::RadioCommand;
use crate::transport::ble::radio::RadioEvent;
use crate::util::rng::SeededRng;
use std::collections::VecDeque;

/// A connection attempt under way.
pub(super) struct Attempt {
    pub(super) from: PhoneId,
    pub(super) address: String,
    pub(super) started: u64,
    pub(super) cancelled: bool,
}

/// A BLE connection: `ends[0]` is the central. Direction `d` goes from `ends[d]` to `ends[1 - d]`.
pub(super) struct RadioConn {
    pub(super) ends: [PhoneId; 2],
    pub(super) interval: u64,
    pub(super) budget: usize,
    pub(super) target_mtu: u16,
    pub(super) mtu: u16,
    pub(super) queues: [VecDeque<Vec<u8>>; 2],
    pub(super) rng: SeededRng,
    pub(super) established: u64,
    /// The last exchange in which the peer heard the central.
    pub(super) last_ok: u64,
    /// The anchor of the current (or last) connection event.
    pub(super) anchor: u64,
    /// A connection event is running.
    pub(super) active: bool,
    /// The running event let another connection have the radio and waits to resume.
    pub(super) paused: bool,
    /// Exchanges in the current event.
    pub(super) slots: usize,
    /// Packets of the exchange on the air, delivered when it ends.
    pub(super) in_air: [Option<Vec<u8>>; 2],
    /// A PDU of the exchange on the air was lost: the event ends after it.
    pub(super) end_after: bool,
}

impl RadioWorld {
    pub(super) fn on_scan(&mut self, p: PhoneId) {
        let now_ms = self.now() / MILLISECOND;
        if self.phones[p].scanning {
            for q in 0..self.phones.len() {
                if q == p || !self.in_range(p, q) {
                    continue;
                }
                let Some(data) = self.phones[q].advertising.clone() else { continue };
                let address = self.phones[q].address.clone();
                let service_data = if data.is_empty() { None } else { Some(data) };
                self.phones[p].bridge.on_radio_event(now_ms, RadioEvent::Discovered { address, service_data });
                self.dirty.insert(p);
            }
        }
        let (lo, hi) = self.params.scan_period_us;
        let next = self.phones[p].rng.range(lo, hi.max(lo) + 1);
        self.push(self.now() + next.max(1), Event::Scan { phone: p });
    }

    pub(super) fn execute(&mut self, p: PhoneId, cmd: RadioCommand) {
        match cmd {
            RadioCommand::StartAdvertising { service_data } => self.phones[p].advertising = Some(service_data),
            RadioCommand::StartScanning => self.phones[p].scanning = true,
            RadioCommand::Connect { address } => {
                let id = self.next_attempt;
                self.next_attempt += 1;
                let mut rng = SeededRng::stream(self.seed(), 6 << 32 | id);
                let (lo, hi) = self.params.connect_setup_us;
                let setup = rng.range(lo, hi.max(lo) + 1);
                self.attempts.insert(id, Attempt { from: p, address, started: self.now(), cancelled: false });
                self.push(self.now() + setup, Event::Attempt { id });
            }
            RadioCommand::CancelConnect { address } => {
                for a in self.attempts.values_mut() {
                    if a.from == p && a.address == address {
                        a.cancelled = true;
                    }
                }
            }
            RadioCommand::Disconnect { conn } => {
                let Some(c) = self.conns.get(&conn) else { return };
                if !c.ends.contains(&p) {
                    self.violation(format!(
                        "{} disconnected connection {conn}, which is not its own",
                        self.phones[p].dev.name
                    ));
                    return;
                }
                let other = if c.ends[0] == p { c.ends[1] } else { c.ends[0] };
                let interval = c.interval;
                self.remove_conn(conn);
                self.push(self.now() + interval, Event::Disconnected { phone: other, conn });
            }
            RadioCommand::Send { conn, packet } => {
                let reorder = self.params.reorder_rate();
                let Some(c) = self.conns.get_mut(&conn) else {
                    // The connection is gone; the phone is told (or about to be).
                    return;
                };
                let Some(dir) = c.ends.iter().position(|e| *e == p) else {
                    let what = format!("{} sent on connection {conn}, which is not its own", self.phones[p].dev.name);
                    self.violation(what);
                    return;
                };
                let max = usize::from(c.mtu.saturating_sub(ATT_HEADER_LEN));
                if packet.len() > max || packet.is_empty() {
                    let what = format!(
                        "{} sent a packet of {} bytes on connection {conn} whose ATT MTU is {}",
                        self.phones[p].dev.name,
                        packet.len(),
                        c.mtu
                    );
                    self.violation(what);
                    self.drop_conn(conn);
                    return;
                }
                let queue = &mut c.queues[dir];
                if reorder > 0.0 && !queue.is_empty() && c.rng.chance(reorder) {
                    queue.insert(queue.len() - 1, packet);
                    self.phones[p].stats.packets_reordered += 1;
                } else {
                    queue.push_back(packet);
                }
            }
        }
    }

    pub(super) fn on_attempt(&mut self, id: u64) {
        let Some(a) = self.attempts.get(&id) else { return };
        if a.cancelled {
            self.attempts.remove(&id);
            return;
        }
        let (from, started) = (a.from, a.started);
        let target = self.by_address.get(&a.address).copied();
        let max = self.params.max_connections;
        let conns_of = |w: &RadioWorld, p: PhoneId| w.conns.values().filter(|c| c.ends.contains(&p)).count();
        let ok = target.is_some_and(|t| {
            t != from
                && self.phones[t].advertising.is_some()
                && self.in_range(from, t)
                && conns_of(self, from) < max
                && conns_of(self, t) < max
        });
        match target {
            Some(t) if ok => {
                self.attempts.remove(&id);
                self.establish(from, t);
            }
            _ => {
                let at = (started + self.params.connect_fail_us).max(self.now());
                self.push(at, Event::AttemptFailed { id });
            }
        }
    }

    pub(super) fn establish(&mut self, central: PhoneId, peripheral: PhoneId) {
        let id = self.next_conn;
        self.next_conn += 1;
        let mut rng = SeededRng::stream(self.seed(), 4 << 32 | id);
        let (lo, hi) = self.params.interval_us;
        let (lo_u, hi_u) = ((lo / INTERVAL_UNIT_US).max(6), (hi.max(lo) / INTERVAL_UNIT_US).max(6));
        let interval = rng.range(lo_u, hi_u.max(lo_u) + 1) * INTERVAL_UNIT_US;
        let (blo, bhi) = self.params.packets_per_event;
        let budget = rng.range(blo.max(1) as u64, bhi.max(blo).max(1) as u64 + 1) as usize;
        let target_mtu = if self.params.att_mtus.is_empty() { ATT_MTU_MIN } else { *rng.pick(&self.params.att_mtus) };
        let offset = rng.below(interval);
        self.conns.insert(
            id,
            RadioConn {
                ends: [central, peripheral],
                interval,
                budget,
                target_mtu,
                mtu: ATT_MTU_MIN,
                queues: [VecDeque::new(), VecDeque::new()],
                rng,
                established: self.now(),
                last_ok: self.now(),
                anchor: self.now(),
                active: false,
                paused: false,
                slots: 0,
                in_air: [None, None],
                end_after: false,
            },
        );
        self.push(self.now() + offset, Event::Anchor { conn: id });
        self.push(self.now() + interval, Event::Mtu { conn: id });
        let now_ms = self.now() / MILLISECOND;
        let (ca, pa) = (self.phones[central].address.clone(), self.phones[peripheral].address.clone());
        let channel = Channel::Gatt { att_mtu: ATT_MTU_MIN };
        let connected = |address, role| RadioEvent::Connected { conn: id, address, role, channel };
        self.phones[central].bridge.on_radio_event(now_ms, connected(pa, Role::Central));
        self.phones[peripheral].bridge.on_radio_event(now_ms, connected(ca, Role::Peripheral));
        for p in [central, peripheral] {
            self.phones[p].stats.connections += 1;
            self.dirty.insert(p);
        }
    }

    pub(super) fn on_mtu(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.mtu = c.target_mtu;
        let (mtu, ends) = (c.mtu, c.ends);
        let now_ms = self.now() / MILLISECOND;
        for p in ends {
            self.phones[p].bridge.on_radio_event(now_ms, RadioEvent::Mtu { conn, mtu });
            self.dirty.insert(p);
        }
    }

    /// Remove a connection from the radios (no one is told).
    pub(super) fn remove_conn(&mut self, conn: u64) -> Option<RadioConn> {
        let c = self.conns.remove(&conn)?;
        let lost = c.queues.iter().map(VecDeque::len).sum::<usize>() + c.in_air.iter().filter(|p| p.is_some()).count();
        for p in c.ends {
            self.phones[p].waiting.remove(&conn);
        }
        self.phones[c.ends[0]].stats.packets_dropped += lost as u64;
        Some(c)
    }

    /// The connection breaks (supervision timeout): both phones are told now.
    pub(super) fn drop_conn(&mut self, conn: u64) {
        let Some(c) = self.remove_conn(conn) else { return };
        let now_ms = self.now() / MILLISECOND;
        for p in c.ends {
            self.phones[p].bridge.on_radio_event(now_ms, RadioEvent::Disconnected { conn });
            self.dirty.insert(p);
        }
    }

    pub(super) fn on_anchor(&mut self, conn: u64) {
        let now = self.now();
        let supervision = self.params.supervision_timeout_us;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let interval = c.interval;
        if now.saturating_sub(c.last_ok) > supervision {
            let ends = c.ends;
            log::debug!(
                "radio sim: connection {conn} ({} – {}) lost (supervision timeout)",
                self.phones[ends[0]].dev.name,
                self.phones[ends[1]].dev.name
            );
            for p in ends {
                self.phones[p].stats.supervision_drops += 1;
            }
            self.drop_conn(conn);
            return;
        }
        self.push(now + interval, Event::Anchor { conn });
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if c.in_air.iter().any(Option::is_some) {
            // Cannot happen (an exchange ends strictly before the next anchor); skip this event.
            return;
        }
        // A previous event still paused ends here.
        c.active = false;
        c.paused = false;
        c.anchor = now;
        c.slots = 0;
        self.unwait(conn);
        self.try_start(conn);
    }

    /// Start (or resume) `conn`'s connection event now if both radios are free, else wait for them (or give the
    /// event up if they are not free before it would end).
    pub(super) fn try_start(&mut self, conn: u64) {
        let now = self.now();
        let Some(c) = self.conns.get(&conn) else { return };
        let [a, b] = c.ends;
        let free = self.phones[a].radio_free.max(self.phones[b].radio_free);
        if free > now {
            let minimum = pdu_us(None) * 2 + 2 * IFS_US;
            if free + minimum >= c.anchor + c.interval {
                // This event is over; the next anchor comes.
                for p in [a, b] {
                    self.phones[p].waiting.remove(&conn);
                }
                self.end_event(conn);
                return;
            }
            let anchor = c.anchor;
            for p in [a, b] {
                self.phones[p].waiting.insert(conn, free);
            }
            self.push(free, Event::Start { conn, anchor });
            return;
        }
        for p in [a, b] {
            self.phones[p].waiting.remove(&conn);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.active {
                c.active = true;
                c.slots = 0;
            }
            c.paused = false;
        }
        self.exchange(conn);
    }

    pub(super) fn end_event(&mut self, conn: u64) {
        self.unwait(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.active = false;
            c.paused = false;
        }
    }

    /// `conn` no longer waits for any radio.
    pub(super) fn unwait(&mut self, conn: u64) {
        if let Some(c) = self.conns.get(&conn) {
            for p in c.ends {
                self.phones[p].waiting.remove(&conn);
            }
        }
    }

    /// The next exchange of `conn`'s running event, or its end.
    pub(super) fn exchange(&mut self, conn: u64) {
        let now = self.now();
        let loss = self.params.loss_rate();
        let Some(c) = self.conns.get(&conn) else { return };
        let [a, b] = c.ends;
        let lens = [c.queues[0].front().map(Vec::len), c.queues[1].front().map(Vec::len)];
        let idle = lens == [None, None];
        let others_waiting =
            self.phones[a].waiting.iter().chain(self.phones[b].waiting.iter()).any(|(w, at)| *w != conn && *at <= now);
        if c.slots > 0 && (idle || c.slots >= c.budget) {
            self.end_event(conn);
            return;
        }
        if c.slots > 0 && others_waiting {
            // Another connection of either phone waits for the radio: let it have it, and resume after.
            let anchor = c.anchor;
            if let Some(c) = self.conns.get_mut(&conn) {
                c.paused = true;
            }
            self.push(now, Event::Start { conn, anchor });
            return;
        }
        let dur = pdu_us(lens[0]) + pdu_us(lens[1]) + 2 * IFS_US;
        if now + dur >= c.anchor + c.interval {
            self.end_event(conn);
            return;
        }
        let in_range = self.in_range(a, b);
        for p in [a, b] {
            self.phones[p].radio_free = now + dur;
            self.phones[p].stats.airtime_us += dur;
        }
        let c = self.conns.get_mut(&conn).expect("the connection");
        c.slots += 1;
        let central_heard = in_range && !(loss > 0.0 && c.rng.chance(loss));
        let peripheral_heard = central_heard && !(loss > 0.0 && c.rng.chance(loss));
        let mut in_air = [None, None];
        if central_heard {
            c.last_ok = now;
            if lens[0].is_some() {
                in_air[0] = c.queues[0].pop_front();
            }
        }
        if peripheral_heard && lens[1].is_some() {
            in_air[1] = c.queues[1].pop_front();
        }
        c.end_after = !central_heard || !peripheral_heard;
        // Air and loss statistics: the central always transmits; the peripheral only when it heard the central.
        let transmitted = [true, central_heard];
        let heard = [central_heard, peripheral_heard];
        for d in 0..2 {
            if !transmitted[d] {
                continue;
            }
            let s = &mut self.phones[c.ends[d]].stats;
            s.air_bytes_sent += pdu_air_bytes(lens[d]) as u64;
            match lens[d] {
                Some(n) => {
                    s.packets_sent += 1;
                    s.packet_bytes_sent += n as u64;
                    if !heard[d] {
                        s.retransmissions += 1;
                    }
                }
                None => s.empty_pdus += 1,
            }
        }
        if idle {
            // An empty exchange: the event ends (its radio time is reserved).
            c.active = false;
            return;
        }
        c.in_air = in_air;
        self.push(now + dur, Event::ExchangeDone { conn });
    }

    pub(super) fn on_exchange_done(&mut self, conn: u64) {
        let now_ms = self.now() / MILLISECOND;
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let in_air = std::mem::take(&mut c.in_air);
        let (ends, end_after) = (c.ends, c.end_after);
        for (d, packet) in in_air.into_iter().enumerate() {
            let Some(packet) = packet else { continue };
            let (from, to) = (ends[d], ends[1 - d]);
            *self.bytes_by_kind.entry((from, to, TransportKind::Ble)).or_default() += packet.len() as u64;
            self.wire.update(&conn.to_le_bytes()).update(&[d as u8]).update(&packet);
            let rx = &mut self.phones[to];
            rx.stats.packets_received += 1;
            rx.stats.packet_bytes_received += packet.len() as u64;
            rx.bridge.on_radio_event(now_ms, RadioEvent::Packet { conn, bytes: packet });
            self.phones[from].bridge.on_radio_event(now_ms, RadioEvent::Sent { conn });
            self.dirty.insert(from);
            self.dirty.insert(to);
        }
        self.settle();
        if self.conns.get(&conn).is_some_and(|c| c.active && !c.paused) {
            if end_after {
                self.end_event(conn);
            } else {
                self.exchange(conn);
            }
        }
    }

    pub(super) fn violation(&mut self, what: String) {
        log::warn!("radio sim: {what}");
        self.violations.push(what);
    }
}
