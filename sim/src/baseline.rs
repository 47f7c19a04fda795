//! The traditional client the source article compares against, on the same trace.
//!
//! Each event becomes a request carrying the event and the device's full state snapshot (its
//! own view of every key it writes). Requests wait in a bounded in-memory queue and go out one
//! at a time; a request without a response within the timeout has failed and is retried after
//! an exponential backoff with jitter; after `max_attempts` failures a message is dropped; when
//! the queue is full the oldest waiting message is dropped; a crash loses the queue. The server
//! keeps, per key, the value with the latest device timestamp (last write wins), and has no way
//! to tell a resent request from a new one.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;

use edgesync_core::causal::ReplicaContext;
use edgesync_core::Crdt;
use edgesync_schemas::{Ack, Codec};

use crate::config::SimConfig;
use crate::fleet::{
    join_maps, ms, next_crash, produce, purpose, DeviceGen, DeviceState, Ms, Produced, ReadValue,
    Sizes,
};
use crate::net::{Dir, Link, Queue, ServerSchedule};
use crate::report::Metrics;
use crate::rng::Rng;

/// What the baseline run hands to the report.
#[derive(Debug)]
pub struct Outcome {
    /// Counters.
    pub metrics: Metrics,
    /// The server's value per key, with the (device timestamp, device) that wrote it.
    pub written: BTreeMap<String, (u64, usize, ReadValue)>,
    /// All generated events' deltas joined (must equal edgesync's: same trace).
    pub reference: BTreeMap<String, Crdt>,
}

impl Outcome {
    /// The server's value per key.
    pub fn values(&self) -> BTreeMap<String, ReadValue> {
        self.written
            .iter()
            .map(|(k, (_, _, v))| (k.clone(), v.clone()))
            .collect()
    }

    /// Adds the outcome of another part of the fleet: per key the last write wins, as on one
    /// server (the order of the parts does not matter).
    pub fn merge(&mut self, o: Outcome) {
        self.metrics.merge(o.metrics);
        for (k, w) in o.written {
            match self.written.get_mut(&k) {
                Some(cur) if (w.0, w.1) > (cur.0, cur.1) => *cur = w,
                Some(_) => {}
                None => {
                    self.written.insert(k, w);
                }
            }
        }
        join_maps(&mut self.reference, o.reference);
    }
}

struct Msg {
    seq: u64,
    born: Ms,
    device_ts: u64,
    size: usize,
    snapshot: Vec<(Rc<str>, Rc<ReadValue>)>,
}

struct Queued {
    msg: Rc<Msg>,
    attempts: u32,
}

enum Ev {
    Gen(usize),
    LinkFlip(usize),
    Crash(usize),
    Restart(usize),
    Arrive(usize, Rc<Msg>, u64),
    Response(usize, u64),
    Timeout(usize, u64),
    Retry(usize),
    Heal,
}

struct Dev {
    gen: DeviceGen,
    /// The device's read value of each key it writes, and its share of a snapshot's size;
    /// updated for the keys an event touches.
    views: BTreeMap<Rc<str>, (Rc<ReadValue>, usize)>,
    views_size: usize,
    state: DeviceState,
    link: Link,
    net: Rng,
    faults: Rng,
    backoff: Rng,
    crash_at: Option<(Ms, Ms)>,
    crashed: bool,
    queue: VecDeque<Queued>,
    inflight: Option<u64>,
    requests: u64,
    failures_in_row: u32,
    retry_at: Option<Ms>,
}

struct World<'a> {
    cfg: &'a SimConfig,
    codec: Codec,
    q: Queue<Ev>,
    devs: Vec<Dev>,
    server_schedule: ServerSchedule,
    seen: Vec<ReplicaContext>,
    lww: BTreeMap<Rc<str>, (u64, usize, Rc<ReadValue>)>,
    ack_size: usize,
    m: Metrics,
    end: Ms,
    healed: bool,
}

/// Runs the baseline over the trace of `cfg`.
pub fn run(cfg: &SimConfig) -> Outcome {
    run_part(cfg, 0..cfg.devices)
}

/// Runs the baseline for the devices `devices` of the fleet of `cfg` (see
/// [`crate::edgesync::run_part`]).
pub fn run_part(cfg: &SimConfig, devices: Range<usize>) -> Outcome {
    let base = devices.start;
    let end = ms(cfg.hours * 3600.0);
    let codec = match Codec::new(Default::default()) {
        Ok(c) => c,
        Err(e) => unreachable!("built-in schemas parse: {e}"),
    };
    // Responses are the same size as edgesync's acks: a device, an id, a number.
    let ack_size = codec
        .encode_ack(&Ack {
            replica: crate::fleet::replica_of(cfg.seed, 0),
            watermark: 1_000,
            acked_at_ms: 1_700_000_000_000,
        })
        .map_or(32, |b| b.len());
    let mut w = World {
        cfg,
        codec,
        q: Queue::default(),
        devs: Vec::with_capacity(devices.len()),
        server_schedule: ServerSchedule::new(cfg),
        seen: vec![ReplicaContext::default(); devices.len()],
        lww: BTreeMap::new(),
        ack_size,
        m: Metrics::default(),
        end,
        healed: false,
    };
    for (d, id) in devices.enumerate() {
        let dev = Dev {
            gen: DeviceGen::new(cfg, id),
            views: BTreeMap::new(),
            views_size: 0,
            state: DeviceState::new(cfg, id),
            link: Link::new(cfg, id),
            net: Rng::stream(cfg.seed, purpose::NET_BASELINE, id as u64),
            faults: Rng::stream(cfg.seed, purpose::CRASH, id as u64),
            backoff: Rng::stream(cfg.seed, purpose::BACKOFF, id as u64),
            crash_at: None,
            crashed: false,
            queue: VecDeque::new(),
            inflight: None,
            requests: 0,
            failures_in_row: 0,
            retry_at: None,
        };
        w.q.push(dev.gen.next_at, Ev::Gen(d));
        if dev.link.phase_end < end {
            w.q.push(dev.link.phase_end, Ev::LinkFlip(d));
        }
        w.devs.push(dev);
        w.schedule_crash(d, 0);
    }
    w.q.push(end, Ev::Heal);
    let stop = end + ms(cfg.drain_hours * 3600.0);
    while let Some((now, ev)) = w.q.pop_until(stop) {
        w.handle(now, ev);
    }
    if !w.healed {
        w.m.delivered_in_window = w.m.delivered;
    }
    let written = w
        .lww
        .into_iter()
        .map(|(k, (ts, who, v))| (k.to_string(), (ts, base + who, (*v).clone())))
        .collect();
    let mut reference = BTreeMap::new();
    for dev in &w.devs {
        join_maps(&mut reference, dev.state.crdts().clone());
    }
    Outcome {
        metrics: w.m,
        written,
        reference,
    }
}

impl World<'_> {
    fn schedule_crash(&mut self, d: usize, from: Ms) {
        let next =
            next_crash(self.cfg, from, &mut self.devs[d].faults).filter(|(at, _)| *at < self.end);
        self.devs[d].crash_at = next;
        if let Some((at, _)) = next {
            self.q.push(at, Ev::Crash(d));
        }
    }

    fn handle(&mut self, now: Ms, ev: Ev) {
        match ev {
            Ev::Gen(d) => self.generate(now, d),
            Ev::LinkFlip(d) => {
                if !self.healed {
                    let next = self.devs[d].link.toggle(now);
                    if next < self.end {
                        self.q.push(next, Ev::LinkFlip(d));
                    }
                }
            }
            Ev::Crash(d) => {
                let dev = &mut self.devs[d];
                let Some((_, up)) = dev.crash_at else { return };
                dev.crashed = true;
                let lost = dev.queue.len() as u64;
                if dev.inflight.take().is_some() {
                    self.m.failures += 1;
                    if dev
                        .queue
                        .front()
                        .is_some_and(|h| self.seen[d].contains(h.msg.seq))
                    {
                        self.m.failures_reached += 1;
                    }
                }
                dev.queue.clear();
                dev.retry_at = None;
                dev.failures_in_row = 0;
                self.m.drop_events("crash lost the in-memory queue", lost);
                self.q.push(up, Ev::Restart(d));
            }
            Ev::Restart(d) => {
                self.devs[d].crashed = false;
                self.schedule_crash(d, now);
                self.try_send(now, d);
            }
            Ev::Arrive(d, msg, req) => self.server_receive(now, d, &msg, req),
            Ev::Response(d, req) => {
                let dev = &mut self.devs[d];
                if dev.crashed || dev.inflight != Some(req) {
                    return; // too late: the request already timed out
                }
                dev.inflight = None;
                dev.queue.pop_front();
                dev.failures_in_row = 0;
                dev.retry_at = None;
                self.try_send(now, d);
            }
            Ev::Timeout(d, req) => self.timeout(now, d, req),
            Ev::Retry(d) => {
                if self.devs[d].retry_at == Some(now) {
                    self.devs[d].retry_at = None;
                    self.try_send(now, d);
                }
            }
            Ev::Heal => {
                self.healed = true;
                self.m.delivered_in_window = self.m.delivered;
                for dev in &mut self.devs {
                    dev.link.heal();
                }
            }
        }
    }

    fn generate(&mut self, now: Ms, d: usize) {
        let cap = self.cfg.baseline.queue_capacity.max(1);
        let dev = &mut self.devs[d];
        let produced = produce(
            &mut dev.gen,
            &mut dev.state,
            (now, dev.crash_at),
            Sizes::Codec(&self.codec),
            &mut self.m,
        );
        if dev.gen.next_at < self.end {
            self.q.push(dev.gen.next_at, Ev::Gen(d));
        }
        let Some(Produced {
            at,
            event,
            deltas,
            raw,
        }) = produced
        else {
            return;
        };
        for (k, _) in &deltas {
            let Some(c) = dev.state.crdts().get(k) else {
                continue;
            };
            let v = ReadValue::of(c);
            let share = k.len() + 1 + v.wire_size();
            match dev.views.get_mut(k.as_str()) {
                Some(slot) => {
                    dev.views_size = dev.views_size - slot.1 + share;
                    *slot = (Rc::new(v), share);
                }
                None => {
                    dev.views_size += share;
                    dev.views.insert(Rc::from(k.as_str()), (Rc::new(v), share));
                }
            }
        }
        let snapshot: Vec<(Rc<str>, Rc<ReadValue>)> = dev
            .views
            .iter()
            .map(|(k, (v, _))| (Rc::clone(k), Rc::clone(v)))
            .collect();
        let size = raw + dev.views_size;
        dev.queue.push_back(Queued {
            msg: Rc::new(Msg {
                seq: event.dot.seq,
                born: at,
                device_ts: dev.state.device_time(at),
                size,
                snapshot,
            }),
            attempts: 0,
        });
        if dev.queue.len() > cap {
            // Drop the oldest message that is not on the wire right now.
            let victim = usize::from(dev.inflight.is_some());
            dev.queue.remove(victim);
            self.m.drop_events("retry queue full", 1);
        }
        self.try_send(now, d);
    }

    fn try_send(&mut self, now: Ms, d: usize) {
        let timeout = self.cfg.baseline.request_timeout_ms;
        let dev = &mut self.devs[d];
        if dev.crashed || dev.inflight.is_some() || dev.retry_at.is_some() {
            return;
        }
        let Some(head) = dev.queue.front() else {
            return;
        };
        let msg = Rc::clone(&head.msg);
        dev.requests += 1;
        let req = dev.requests;
        dev.inflight = Some(req);
        self.m.attempts += 1;
        if dev.link.up {
            self.m.bytes_up += msg.size as u64;
        }
        for at in dev
            .link
            .send(now, msg.size, Dir::Up, &mut dev.net, &self.cfg.link)
        {
            self.q.push(at, Ev::Arrive(d, Rc::clone(&msg), req));
        }
        self.q.push(now + timeout, Ev::Timeout(d, req));
    }

    fn timeout(&mut self, now: Ms, d: usize, req: u64) {
        let b = &self.cfg.baseline;
        let dev = &mut self.devs[d];
        if dev.inflight != Some(req) {
            return;
        }
        dev.inflight = None;
        self.m.failures += 1;
        if dev
            .queue
            .front()
            .is_some_and(|h| self.seen[d].contains(h.msg.seq))
        {
            self.m.failures_reached += 1; // the response was lost or late
        }
        let mut gave_up = false;
        if let Some(head) = dev.queue.front_mut() {
            head.attempts += 1;
            if head.attempts >= b.max_attempts {
                dev.queue.pop_front();
                gave_up = true;
            }
        }
        dev.failures_in_row += 1;
        let exp =
            b.initial_backoff_ms * 2f64.powi(dev.failures_in_row.saturating_sub(1).min(30) as i32);
        let jitter = dev
            .backoff
            .between(1.0 - b.backoff_jitter, 1.0 + b.backoff_jitter);
        let at = now + (exp.min(b.max_backoff_ms) * jitter).max(1.0) as Ms;
        dev.retry_at = Some(at);
        self.q.push(at, Ev::Retry(d));
        if gave_up {
            self.m.drop_events("gave up after max attempts", 1);
        }
    }

    fn server_receive(&mut self, now: Ms, d: usize, msg: &Msg, req: u64) {
        if self.server_schedule.is_down(now) {
            return;
        }
        if self.seen[d].insert(msg.seq) {
            self.m.delivered += 1;
            self.m.latencies_ms.push(now.saturating_sub(msg.born));
        } else {
            self.m.duplicates_applied += 1;
        }
        for (k, v) in &msg.snapshot {
            let write = (msg.device_ts, d, Rc::clone(v));
            match self.lww.get_mut(k) {
                Some(cur) if (msg.device_ts, d) > (cur.0, cur.1) => *cur = write,
                Some(_) => {}
                None => {
                    self.lww.insert(Rc::clone(k), write);
                }
            }
        }
        let dev = &mut self.devs[d];
        self.m.bytes_down += self.ack_size as u64;
        for at in dev
            .link
            .send(now, self.ack_size, Dir::Down, &mut dev.net, &self.cfg.link)
        {
            self.q.push(at, Ev::Response(d, req));
        }
    }
}
