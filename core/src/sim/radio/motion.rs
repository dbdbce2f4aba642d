//! Where the phones of a [`RadioWorld`] stand and how they move: positions in a plane (metres), ranges, and motion
//! stepped every [`MOTION_STEP_US`].

use super::{Event, PhoneId, RadioWorld};
use crate::sim::{World, MILLISECOND, SECOND};
use std::collections::VecDeque;

/// How often moving phones are moved (virtual µs).
pub const MOTION_STEP_US: u64 = 100 * MILLISECOND;

/// How a phone moves.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Motion {
    /// Standing.
    Still,
    /// Moving at a constant velocity (m/s).
    Velocity { vx: f64, vy: f64 },
    /// Walking through waypoints at a speed (m/s), then standing.
    Walk { points: VecDeque<(f64, f64)>, speed: f64 },
}

impl RadioWorld {
    /// Where a phone stands (metres).
    pub fn position(&self, p: PhoneId) -> (f64, f64) {
        self.phones[p].pos
    }

    /// How far apart two phones are (metres).
    pub fn distance(&self, a: PhoneId, b: PhoneId) -> f64 {
        let (pa, pb) = (self.phones[a].pos, self.phones[b].pos);
        (pa.0 - pb.0).hypot(pa.1 - pb.1)
    }

    /// Whether `a` and `b` hear each other (distance ≤ the smaller of their ranges).
    pub fn in_range(&self, a: PhoneId, b: PhoneId) -> bool {
        a != b && self.distance(a, b) <= self.phones[a].range.min(self.phones[b].range)
    }

    /// Set a phone's radio range (metres).
    pub fn set_range(&mut self, p: PhoneId, range_m: f64) {
        self.phones[p].range = range_m;
    }

    /// Put a phone at (`x`, `y`) now, and stop it.
    pub fn move_to(&mut self, p: PhoneId, x: f64, y: f64) {
        self.phones[p].pos = (x, y);
        self.phones[p].motion = Motion::Still;
    }

    /// Make a phone move at a constant velocity (m/s) until told otherwise.
    pub fn set_velocity(&mut self, p: PhoneId, vx: f64, vy: f64) {
        self.phones[p].motion = Motion::Velocity { vx, vy };
        self.schedule_motion();
    }

    /// Make a phone walk through `waypoints` at `speed` (m/s), then stop.
    pub fn walk(&mut self, p: PhoneId, waypoints: &[(f64, f64)], speed: f64) {
        self.phones[p].motion = Motion::Walk { points: waypoints.iter().copied().collect(), speed };
        self.schedule_motion();
    }

    /// Make a phone walk to (`x`, `y`) at `speed` (m/s), then stop.
    pub fn walk_to(&mut self, p: PhoneId, x: f64, y: f64, speed: f64) {
        self.walk(p, &[(x, y)], speed);
    }

    /// Stop a phone where it is.
    pub fn stop(&mut self, p: PhoneId) {
        self.phones[p].motion = Motion::Still;
    }

    /// Whether a phone is moving.
    pub fn is_moving(&self, p: PhoneId) -> bool {
        self.phones[p].motion != Motion::Still
    }

    pub(super) fn schedule_motion(&mut self) {
        if !self.motion_scheduled {
            self.motion_scheduled = true;
            self.push(self.now() + MOTION_STEP_US, Event::Motion);
        }
    }

    pub(super) fn on_motion(&mut self) {
        self.motion_scheduled = false;
        let dt = MOTION_STEP_US as f64 / SECOND as f64;
        let mut any = false;
        for phone in &mut self.phones {
            match &mut phone.motion {
                Motion::Still => {}
                Motion::Velocity { vx, vy } => {
                    phone.pos.0 += *vx * dt;
                    phone.pos.1 += *vy * dt;
                    any = true;
                }
                Motion::Walk { points, speed } => {
                    let mut step = *speed * dt;
                    while step > 0.0 {
                        let Some(&(x, y)) = points.front() else { break };
                        let d = (x - phone.pos.0).hypot(y - phone.pos.1);
                        if d <= step {
                            phone.pos = (x, y);
                            step -= d;
                            points.pop_front();
                        } else {
                            phone.pos.0 += (x - phone.pos.0) / d * step;
                            phone.pos.1 += (y - phone.pos.1) / d * step;
                            step = 0.0;
                        }
                    }
                    if points.is_empty() {
                        phone.motion = Motion::Still;
                    } else {
                        any = true;
                    }
                }
            }
        }
        if any {
            self.schedule_motion();
        }
    }
}
