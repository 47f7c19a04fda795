//! Links, the server's availability, and the event queue: the simulated world's plumbing.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::config::{LinkConfig, SimConfig};
use crate::fleet::{ms, purpose, Ms};
use crate::rng::Rng;

/// One device's link. Its up/down schedule comes from its own random stream (the same in every
/// approach); what happens to each message comes from the approach's network stream.
#[derive(Debug)]
pub struct Link {
    schedule: Rng,
    mean_up_s: f64,
    mean_down_s: f64,
    /// Whether the link is up now.
    pub up: bool,
    /// When the current up or down period ends (`Ms::MAX` once healed).
    pub phase_end: Ms,
    /// Per direction (0 = device to server, 1 = server to device): busy sending until.
    busy: [Ms; 2],
}

/// When a message arrives: not at all, once, or twice (duplicated).
pub type Arrivals = std::iter::Flatten<std::array::IntoIter<Option<Ms>, 2>>;

/// Direction of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Device to server.
    Up = 0,
    /// Server to device.
    Down = 1,
}

impl Link {
    /// The link of device `idx` at time 0.
    pub fn new(cfg: &SimConfig, idx: usize) -> Self {
        let mut schedule = Rng::stream(cfg.seed, purpose::LINK, idx as u64);
        let (u, d) = (cfg.link.mean_up_s, cfg.link.mean_down_s);
        let up = d <= 0.0 || schedule.unit() < u / (u + d);
        let mean = if up { u } else { d };
        let phase_end = if d <= 0.0 {
            Ms::MAX
        } else {
            ms(schedule.exp(mean))
        };
        Self {
            schedule,
            mean_up_s: u,
            mean_down_s: d,
            up,
            phase_end,
            busy: [0; 2],
        }
    }

    /// Flips the link at the end of its phase; returns the new phase's end.
    pub fn toggle(&mut self, now: Ms) -> Ms {
        self.up = !self.up;
        let mean = if self.up {
            self.mean_up_s
        } else {
            self.mean_down_s
        };
        self.phase_end = now + ms(self.schedule.exp(mean)).max(1);
        self.phase_end
    }

    /// The network heals: up from now on.
    pub fn heal(&mut self) {
        self.up = true;
        self.phase_end = Ms::MAX;
    }

    /// Sends `bytes` at `now`: the arrival times (none if lost, two if duplicated).
    pub fn send(
        &mut self,
        now: Ms,
        bytes: usize,
        dir: Dir,
        net: &mut Rng,
        cfg: &LinkConfig,
    ) -> Arrivals {
        let none = [None, None].into_iter().flatten();
        if !self.up {
            return none;
        }
        let lane = dir as usize;
        let depart = now.max(self.busy[lane]);
        let on_wire = (bytes as f64 / cfg.bandwidth_bytes_per_s * 1000.0).ceil() as Ms;
        self.busy[lane] = depart + on_wire;
        let mut delay = cfg.latency_ms + net.exp(cfg.jitter_mean_ms);
        if net.chance(cfg.reorder) {
            delay += net.unit() * cfg.reorder_max_ms;
        }
        let lost = net.chance(cfg.loss);
        let dup = net.chance(cfg.duplicate);
        let again = net.exp(cfg.jitter_mean_ms.max(1.0));
        let arrive = self.busy[lane] + delay as Ms;
        if lost || arrive >= self.phase_end {
            return none;
        }
        let second = arrive + again as Ms;
        let second = (dup && second < self.phase_end).then_some(second);
        [Some(arrive), second].into_iter().flatten()
    }
}

/// When the server is down (restarts), precomputed for the measured window.
#[derive(Debug, Default)]
pub struct ServerSchedule {
    downs: Vec<(Ms, Ms)>,
}

impl ServerSchedule {
    /// Draws the restarts of a run.
    pub fn new(cfg: &SimConfig) -> Self {
        let mut rng = Rng::stream(cfg.seed, purpose::SERVER, 0);
        let end = ms(cfg.hours * 3600.0);
        let mut downs = Vec::new();
        if cfg.faults.server_restart_mean_h > 0.0 {
            let mut t = 0;
            loop {
                t += ms(rng.exp(cfg.faults.server_restart_mean_h * 3600.0));
                if t >= end {
                    break;
                }
                let up = t + ms(cfg.faults.server_down_s).max(1);
                downs.push((t, up));
                t = up;
            }
        }
        Self { downs }
    }

    /// The restarts: (down at, up again at).
    pub fn restarts(&self) -> &[(Ms, Ms)] {
        &self.downs
    }

    /// Whether the server is down at `t`.
    pub fn is_down(&self, t: Ms) -> bool {
        let i = self.downs.partition_point(|(start, _)| *start <= t);
        i > 0 && t < self.downs[i - 1].1
    }
}

struct Item<E> {
    at: Ms,
    seq: u64,
    ev: E,
}

impl<E> PartialEq for Item<E> {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl<E> Eq for Item<E> {}
impl<E> PartialOrd for Item<E> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Item<E> {
    fn cmp(&self, o: &Self) -> Ordering {
        // Earliest first; ties in insertion order, so the run is deterministic.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Buckets of the queue's wheel, each [`SLOT_MS`] wide: they cover the next 65.5 s, where
/// nearly every event of a device falls (arrivals, acks, ticks, its next reading).
const WHEEL_SLOTS: u64 = 4096;
/// Width of a bucket, ms.
const SLOT_MS: u64 = 16;

/// The discrete-event queue of virtual time: earliest first, ties in insertion order (so a run
/// is deterministic). A calendar queue: a wheel of small heaps, one per 16 ms of the next
/// 65.5 s, and one heap for everything later, moved onto the wheel as time gets near it.
/// Events are never scheduled before the last one taken (an earlier time counts as the
/// current bucket's, and still comes out in order).
pub struct Queue<E> {
    wheel: Vec<BinaryHeap<Item<E>>>,
    on_wheel: usize,
    later: BinaryHeap<Item<E>>,
    /// The bucket (absolute: time / `SLOT_MS`) the wheel's first slot holds.
    slot: u64,
    seq: u64,
}

impl<E> std::fmt::Debug for Queue<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("pending", &(self.on_wheel + self.later.len()))
            .finish()
    }
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self {
            wheel: (0..WHEEL_SLOTS).map(|_| BinaryHeap::new()).collect(),
            on_wheel: 0,
            later: BinaryHeap::new(),
            slot: 0,
            seq: 0,
        }
    }
}

impl<E> Queue<E> {
    /// Schedules `ev` at `at`.
    pub fn push(&mut self, at: Ms, ev: E) {
        self.seq += 1;
        self.place(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn place(&mut self, item: Item<E>) {
        let slot = (item.at / SLOT_MS).max(self.slot);
        if slot < self.slot + WHEEL_SLOTS {
            self.wheel[(slot % WHEEL_SLOTS) as usize].push(item);
            self.on_wheel += 1;
        } else {
            self.later.push(item);
        }
    }

    /// Moves onto the wheel what it now covers.
    fn refill(&mut self) {
        while self
            .later
            .peek()
            .is_some_and(|i| i.at / SLOT_MS < self.slot + WHEEL_SLOTS)
        {
            if let Some(item) = self.later.pop() {
                self.place(item);
            }
        }
    }

    /// The bucket holding the earliest event, if any.
    fn first(&mut self) -> Option<&mut BinaryHeap<Item<E>>> {
        loop {
            if self.on_wheel == 0 {
                let next = self.later.peek()?.at / SLOT_MS;
                self.slot = self.slot.max(next);
                self.refill();
            }
            let i = (self.slot % WHEEL_SLOTS) as usize;
            if !self.wheel[i].is_empty() {
                return Some(&mut self.wheel[i]);
            }
            self.slot += 1;
            self.refill();
        }
    }

    /// The next event, unless it is due after `stop`.
    pub fn pop_until(&mut self, stop: Ms) -> Option<(Ms, E)> {
        let bucket = self.first()?;
        if bucket.peek().is_some_and(|i| i.at > stop) {
            return None;
        }
        let item = bucket.pop()?;
        self.on_wheel -= 1;
        Some((item.at, item.ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_gives_events_by_time_then_insertion_order() {
        let mut r = Rng::new(5);
        let mut q = Queue::default();
        let mut reference = BinaryHeap::new();
        let (mut now, mut seq) = (0, 0);
        let mut popped = 0;
        for _ in 0..200_000 {
            if r.below(3) > 0 {
                // Mostly soon, sometimes far ahead, sometimes at the same instant.
                let at = now
                    + match r.below(10) {
                        0 => 0,
                        1 => r.below(20_000_000),
                        2 => r.below(70_000),
                        _ => r.below(20_000),
                    };
                seq += 1;
                q.push(at, seq);
                reference.push(Item { at, seq, ev: seq });
            } else if let Some(want) = reference.pop() {
                let got = q.pop_until(Ms::MAX);
                assert_eq!(got, Some((want.at, want.ev)));
                now = want.at;
                popped += 1;
            }
        }
        let stop = now + 30_000;
        while let Some((at, ev)) = q.pop_until(stop) {
            let want = reference.pop().unwrap();
            assert_eq!((at, ev), (want.at, want.ev));
        }
        assert!(reference.peek().is_none_or(|i| i.at > stop));
        assert!(popped > 50_000);
    }
}
