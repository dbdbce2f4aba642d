//! LAN links between phones of a [`RadioWorld`]: engine-level links of [`TransportKind::Lan`] carried directly by
//! the simulator ([`RadioParams::lan`](super::RadioParams::lan)), which the engines prefer for data while BLE stands
//! by.

use super::{Event, PhoneId, RadioWorld};
use crate::sim::pipe::Pipe;
use crate::sim::World;
use crate::sync::{LinkId, TransportKind};
use crate::transport::frame::HEADER_LEN;
use crate::util::rng::SeededRng;

/// A LAN link: `ends[0]` dialled. Direction `d` goes from `ends[d]` to `ends[1 - d]`.
pub(super) struct LanConn {
    pub(super) ends: [PhoneId; 2],
    pub(super) links: [LinkId; 2],
    pub(super) pipes: [Pipe; 2],
}

impl RadioWorld {
    /// Give `a` and `b` a LAN link (`a` dials). Returns false if they have one already.
    ///
    /// # Panics
    /// If `a == b`.
    pub fn lan_link(&mut self, a: PhoneId, b: PhoneId) -> bool {
        assert_ne!(a, b, "a phone cannot be linked to itself");
        if self.lan_between(a, b).is_some() {
            return false;
        }
        let la = self.phones[a].dev.engine.add_link(TransportKind::Lan, true).expect("add_link");
        let lb = self.phones[b].dev.engine.add_link(TransportKind::Lan, false).expect("add_link");
        let id = self.next_lan;
        self.next_lan += 1;
        let pipes = [0, 1].map(|dir| Pipe::new(SeededRng::stream(self.seed(), 8 << 32 | id << 1 | dir)));
        self.lan.insert(id, LanConn { ends: [a, b], links: [la, lb], pipes });
        for (p, l) in [(a, la), (b, lb)] {
            self.phones[p].lan_link.insert(l, id);
            self.phones[p].engine_dirty = true;
            self.dirty.insert(p);
        }
        self.settle();
        true
    }

    /// Drop the LAN link between `a` and `b` (frames in flight are lost). Returns whether there was one.
    pub fn lan_unlink(&mut self, a: PhoneId, b: PhoneId) -> bool {
        match self.lan_between(a, b) {
            Some(c) => {
                self.lan_teardown(c, "LAN unlinked");
                self.settle();
                true
            }
            None => false,
        }
    }

    /// The pairs with a LAN link (dialler first).
    pub fn lan_pairs(&self) -> Vec<(PhoneId, PhoneId)> {
        self.lan.values().map(|c| (c.ends[0], c.ends[1])).collect()
    }

    pub(super) fn lan_between(&self, a: PhoneId, b: PhoneId) -> Option<u64> {
        self.lan.iter().find(|(_, c)| c.ends == [a, b] || c.ends == [b, a]).map(|(id, _)| *id)
    }

    /// Take frames from phone `p`'s end of LAN link `c` while the backlog has room. Returns whether any was taken.
    pub(super) fn lan_pull(&mut self, c: u64, p: PhoneId) -> bool {
        let mut moved = false;
        loop {
            let now = self.now();
            let Some(conn) = self.lan.get_mut(&c) else { return moved };
            let dir = if conn.ends[0] == p { 0 } else { 1 };
            let link = conn.links[dir];
            let to = conn.ends[1 - dir];
            let pipe = &mut conn.pipes[dir];
            if !pipe.has_room(now) {
                return moved;
            }
            let phone = &mut self.phones[p];
            let Some(frame) = phone.dev.engine.poll_frame(link) else {
                phone.lan_starved.insert(link);
                return moved;
            };
            moved = true;
            let wire = frame.len() + HEADER_LEN;
            let sent = pipe.transmit(now, &self.params.lan, wire);
            phone.stats.lan_frames_sent += 1;
            phone.stats.lan_bytes_sent += wire as u64;
            *self.bytes_by_kind.entry((p, to, TransportKind::Lan)).or_default() += wire as u64;
            self.push(sent.sent_at, Event::LanWake { conn: c, dir });
            self.push(sent.deliver_at, Event::LanDeliver { conn: c, dir, frame });
        }
    }

    pub(super) fn lan_deliver(&mut self, c: u64, dir: usize, frame: Vec<u8>) {
        let Some(conn) = self.lan.get_mut(&c) else { return };
        conn.pipes[dir].delivered(frame.len() + HEADER_LEN);
        let (to, link) = (conn.ends[1 - dir], conn.links[1 - dir]);
        self.wire.update(b"lan").update(&c.to_le_bytes()).update(&[dir as u8]).update(&frame);
        let phone = &mut self.phones[to];
        phone.dev.engine.on_frame(link, &frame);
        phone.engine_dirty = true;
        self.dirty.insert(to);
    }

    pub(super) fn lan_teardown(&mut self, c: u64, reason: &str) {
        let Some(conn) = self.lan.remove(&c) else { return };
        for d in 0..2 {
            let (p, link) = (conn.ends[d], conn.links[d]);
            let phone = &mut self.phones[p];
            phone.lan_link.remove(&link);
            phone.dev.engine.remove_link(link, reason);
            phone.engine_dirty = true;
            self.dirty.insert(p);
        }
    }
}
