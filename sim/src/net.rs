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

/// The discrete-event queue of virtual time.
pub struct Queue<E> {
    heap: BinaryHeap<Item<E>>,
    seq: u64,
}

impl<E> std::fmt::Debug for Queue<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("pending", &self.heap.len())
            .finish()
    }
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> Queue<E> {
    /// Schedules `ev` at `at`.
    pub fn push(&mut self, at: Ms, ev: E) {
        self.seq += 1;
        self.heap.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    /// The next event, unless it is due after `stop`.
    pub fn pop_until(&mut self, stop: Ms) -> Option<(Ms, E)> {
        if self.heap.peek().is_some_and(|i| i.at > stop) {
            return None;
        }
        self.heap.pop().map(|i| (i.at, i.ev))
    }
}
