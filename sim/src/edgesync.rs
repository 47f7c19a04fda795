//! edgesync in the simulator: real agent and server state machines (`edgesync-protocol`),
//! real batches through the real codec (or, in protocol-only runs, batches as values with a
//! modelled wire size), over simulated links.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::rc::Rc;

use edgesync_core::{Crdt, DeltaBatch, Event, EventLimits};
use edgesync_protocol::agent::{AckEffect, AgentStats};
use edgesync_protocol::{Agent, AgentConfig, AgentDurable, Server, ServerConfig};
use edgesync_schemas::{Ack, Codec};

use crate::config::{SimConfig, WireModel};
use crate::fleet::{
    device_name, join_into, join_maps, ms, next_crash, produce, purpose, DeviceGen, DeviceState,
    Ms, Produced, ReadValue, Sizes,
};
use crate::net::{Dir, Link, Queue, ServerSchedule};
use crate::report::Metrics;
use crate::rng::Rng;

/// What the edgesync run hands to the report.
#[derive(Debug)]
pub struct Outcome {
    /// Counters.
    pub metrics: Metrics,
    /// The server's converged state.
    pub state: BTreeMap<String, Crdt>,
    /// All generated events' deltas joined (the devices' own states joined): the state a
    /// perfect system would hold.
    pub reference: BTreeMap<String, Crdt>,
    /// Events still in some agent's spool at the end (0 when the run drained).
    pub unsynced: u64,
    /// Batches the server could not decode (always 0 unless the codec is broken).
    pub decode_errors: u64,
    /// Events the server released out of dot order or twice (always 0 unless the protocol is
    /// broken): each replica's releases must be exactly 1, 2, 3, ...
    pub order_violations: u64,
}

impl Outcome {
    /// Adds the outcome of another part of the fleet (devices are independent, the server's
    /// per-replica state is too, and joins do not depend on order: the result is the same
    /// however the fleet was split).
    pub fn merge(&mut self, o: Outcome) {
        self.metrics.merge(o.metrics);
        join_maps(&mut self.state, o.state);
        join_maps(&mut self.reference, o.reference);
        self.unsynced += o.unsynced;
        self.decode_errors += o.decode_errors;
        self.order_violations += o.order_violations;
    }
}

enum Ev {
    Gen(usize),
    LinkFlip(usize),
    /// The agent notices its link is gone (keep-alive), if the link is still down.
    Detect(usize, u64),
    Connect(usize, u64),
    Crash(usize),
    Restart(usize),
    Tick(usize),
    Uplink(usize, Payload),
    Ack(usize, u64, u64),
    /// The agent's request for the retained ack (a new subscription to its ack topic) reaches
    /// the broker, which holds the retained ack whether or not the server is up.
    AckRequest(usize, u64),
    ServerUp,
    Heal,
}

/// A batch on its way to the server: encoded, or (protocol-only runs) as a value.
enum Payload {
    Encoded(Rc<Vec<u8>>),
    Value(Rc<DeltaBatch>),
}

impl Payload {
    fn share(&self) -> Payload {
        match self {
            Payload::Encoded(b) => Payload::Encoded(Rc::clone(b)),
            Payload::Value(b) => Payload::Value(Rc::clone(b)),
        }
    }
}

struct Spooled {
    event: Event,
    deltas: Vec<(String, Crdt)>,
    approx: usize,
}

struct Dev {
    /// The device's index in the fleet.
    id: usize,
    /// The state deltas the server merged from this device's batches, joined. The server's
    /// state is the join of these over the fleet (joins are associative and commutative);
    /// keeping them per device keeps each join small.
    merged: BTreeMap<String, Crdt>,
    /// An ack's encoded size without its two varints (watermark, time): the rest of it is the
    /// same in every ack of the device.
    ack_base: usize,
    gen: DeviceGen,
    state: DeviceState,
    link: Link,
    link_epoch: u64,
    net: Rng,
    faults: Rng,
    /// The current or next crash: (down at, up again at).
    crash_at: Option<(Ms, Ms)>,
    crashed: bool,
    agent: Agent,
    durable_acked: u64,
    session: Option<u64>,
    sessions: u64,
    spool: VecDeque<Spooled>,
    spool_first: u64,
    /// Generation times of the events not yet released, from seq `gen_first` on.
    gen_times: VecDeque<Ms>,
    gen_first: u64,
    tick_at: Option<Ms>,
    past_stats: AgentStats,
}

struct World<'a> {
    cfg: &'a SimConfig,
    agent_cfg: AgentConfig,
    codec: Codec,
    /// Set in protocol-only runs: batches are not encoded, their size is modelled.
    model: Option<WireModel>,
    q: Queue<Ev>,
    devs: Vec<Dev>,
    server: Server,
    server_schedule: ServerSchedule,
    retained: Vec<Option<u64>>,
    m: Metrics,
    end: Ms,
    healed: bool,
    decode_errors: u64,
    released: Vec<u64>,
    order_violations: u64,
}

/// Runs edgesync over the trace of `cfg`.
pub fn run(cfg: &SimConfig) -> Outcome {
    run_part(cfg, 0..cfg.devices)
}

/// Runs edgesync for the devices `devices` of the fleet of `cfg` (with a server holding their
/// replicas). Devices interact only through the server, whose state is per replica, so the
/// parts of a fleet can run separately and [`Outcome::merge`] into the whole fleet's outcome.
pub fn run_part(cfg: &SimConfig, devices: Range<usize>) -> Outcome {
    let agent_cfg: AgentConfig = cfg.agent.into();
    let end = ms(cfg.hours * 3600.0);
    let codec = match Codec::new(Default::default()) {
        Ok(c) => c,
        Err(e) => unreachable!("built-in schemas parse: {e}"),
    };
    let mut w = World {
        cfg,
        agent_cfg,
        codec,
        model: cfg.protocol_only.clone(),
        q: Queue::default(),
        devs: Vec::with_capacity(devices.len()),
        server: Server::new(ServerConfig::default()),
        server_schedule: ServerSchedule::new(cfg),
        retained: vec![None; devices.len()],
        m: Metrics::default(),
        end,
        healed: false,
        decode_errors: 0,
        released: vec![0; devices.len()],
        order_violations: 0,
    };
    for (d, id) in devices.enumerate() {
        let dev = new_device(&w, id);
        w.q.push(dev.gen.next_at, Ev::Gen(d));
        if dev.link.phase_end < end {
            w.q.push(dev.link.phase_end, Ev::LinkFlip(d));
        }
        let up = dev.link.up;
        w.devs.push(dev);
        if up {
            w.q.push(cfg.link.connect_ms, Ev::Connect(d, 0));
        }
        schedule_crash(&mut w, d, 0);
    }
    // Arrivals check the schedule for the down time; the process restarts on the way up.
    for &(_, up) in w.server_schedule.restarts() {
        w.q.push(up, Ev::ServerUp);
    }
    w.q.push(end, Ev::Heal);
    let stop = end + ms(cfg.drain_hours * 3600.0);
    while let Some((now, ev)) = w.q.pop_until(stop) {
        w.handle(now, ev);
    }
    if !w.healed {
        w.m.delivered_in_window = w.m.delivered;
    }
    for d in 0..w.devs.len() {
        let left: Vec<(u64, u64)> = w.devs[d].agent.inflight_ranges().collect();
        w.count_abandoned(d, &left);
    }
    let mut unsynced = 0;
    for dev in &mut w.devs {
        let s = dev.agent.stats();
        w.m.attempts += dev.past_stats.batches_sent + s.batches_sent;
        w.m.failures +=
            dev.past_stats.batches_failed + s.batches_failed + dev.agent.inflight() as u64;
        unsynced += dev.state.last_seq - dev.durable_acked;
    }
    // Each device's own state is the join of every delta it produced (a delta joined into the
    // state before it gives the state after), so the reference is the join of the devices'
    // final states: what a perfect system would hold.
    let (mut reference, mut state) = (BTreeMap::new(), BTreeMap::new());
    for dev in &mut w.devs {
        join_maps(&mut reference, dev.state.crdts().clone());
        join_maps(&mut state, std::mem::take(&mut dev.merged));
    }
    Outcome {
        metrics: w.m,
        state,
        reference,
        unsynced,
        decode_errors: w.decode_errors,
        order_violations: w.order_violations,
    }
}

fn new_device(w: &World<'_>, id: usize) -> Dev {
    let (cfg, d) = (w.cfg, id);
    let agent = match Agent::new(w.agent_cfg, AgentDurable::default()) {
        Ok(a) => a,
        Err(e) => unreachable!("empty durable state is valid: {e}"),
    };
    let state = DeviceState::new(cfg, d);
    let ack = Ack {
        replica: state.replica.clone(),
        watermark: 0,
        acked_at_ms: 0,
    };
    let ack_base = w.codec.encode_ack(&ack).map_or(0, |b| b.len()) - 2;
    Dev {
        id,
        merged: BTreeMap::new(),
        ack_base,
        gen: DeviceGen::new(cfg, d),
        state,
        link: Link::new(cfg, d),
        link_epoch: 0,
        net: Rng::stream(cfg.seed, purpose::NET_EDGESYNC, d as u64),
        faults: Rng::stream(cfg.seed, purpose::CRASH, d as u64),
        crash_at: None,
        crashed: false,
        agent,
        durable_acked: 0,
        session: None,
        sessions: 0,
        spool: VecDeque::new(),
        spool_first: 1,
        gen_times: VecDeque::new(),
        gen_first: 1,
        tick_at: None,
        past_stats: AgentStats::default(),
    }
}

/// Draws device `d`'s next crash after `from` (the same draws as the baseline's).
fn schedule_crash(w: &mut World<'_>, d: usize, from: Ms) {
    let next = next_crash(w.cfg, from, &mut w.devs[d].faults).filter(|(at, _)| *at < w.end);
    w.devs[d].crash_at = next;
    if let Some((at, _)) = next {
        w.q.push(at, Ev::Crash(d));
    }
}

impl World<'_> {
    fn handle(&mut self, now: Ms, ev: Ev) {
        match ev {
            Ev::Gen(d) => self.generate(now, d),
            Ev::LinkFlip(d) => self.link_flip(now, d),
            Ev::Detect(d, epoch) => {
                let dev = &mut self.devs[d];
                if epoch == dev.link_epoch && dev.session.is_some() {
                    dev.agent.disconnected();
                    dev.session = None;
                }
            }
            Ev::Connect(d, epoch) => self.connect(now, d, epoch),
            Ev::Crash(d) => self.crash(now, d),
            Ev::Restart(d) => self.restart(now, d),
            Ev::Tick(d) => {
                let dev = &mut self.devs[d];
                if dev.tick_at == Some(now) {
                    dev.tick_at = None;
                }
                if !dev.crashed {
                    self.with_agent(d, |a| a.on_tick(now));
                    self.request_ack(now, d);
                    self.pump(now, d);
                }
            }
            Ev::Uplink(d, payload) => self.server_receive(now, d, payload),
            Ev::Ack(d, session, wm) => self.ack_arrives(now, d, session, wm),
            Ev::AckRequest(d, session) => {
                if let Some(wm) = self.retained[d] {
                    self.send_ack(now, d, session, wm);
                }
            }
            Ev::ServerUp => {
                // The server process restarts from its durable state.
                self.server = self.server.reloaded();
            }
            Ev::Heal => self.heal(now),
        }
    }

    fn generate(&mut self, now: Ms, d: usize) {
        let dev = &mut self.devs[d];
        let produced = produce(
            &mut dev.gen,
            &mut dev.state,
            (now, dev.crash_at),
            match &self.model {
                Some(model) => Sizes::Model(model),
                None => Sizes::Codec(&self.codec),
            },
            &mut self.m,
        );
        if dev.gen.next_at < self.end {
            self.q.push(dev.gen.next_at, Ev::Gen(d));
        }
        let Some(Produced {
            at, event, deltas, ..
        }) = produced
        else {
            return;
        };
        dev.gen_times.push_back(at);
        let seq = event.dot.seq;
        let approx = event.approx_size();
        dev.spool.push_back(Spooled {
            event,
            deltas,
            approx,
        });
        if let Err(e) = dev.agent.appended(seq) {
            unreachable!("seqs are dense: {e}");
        }
        self.pump(now, d);
    }

    fn link_flip(&mut self, now: Ms, d: usize) {
        if self.healed {
            return;
        }
        let (detect, connect) = (self.cfg.link.detect_down_ms, self.cfg.link.connect_ms);
        let dev = &mut self.devs[d];
        let next = dev.link.toggle(now);
        dev.link_epoch += 1;
        let epoch = dev.link_epoch;
        if dev.link.up {
            if dev.session.take().is_some() {
                dev.agent.disconnected(); // the old session died unnoticed
            }
            if !dev.crashed {
                self.q.push(now + connect, Ev::Connect(d, epoch));
            }
        } else {
            self.q.push(now + detect, Ev::Detect(d, epoch));
        }
        if next < self.end {
            self.q.push(next, Ev::LinkFlip(d));
        }
    }

    fn connect(&mut self, now: Ms, d: usize, epoch: u64) {
        let dev = &mut self.devs[d];
        if epoch != dev.link_epoch || !dev.link.up || dev.crashed || dev.session.is_some() {
            return;
        }
        dev.sessions += 1;
        let session = dev.sessions;
        dev.session = Some(session);
        dev.agent.connected(now);
        // The broker hands the retained ack to the new subscription.
        if let Some(wm) = self.retained[d] {
            self.send_ack(now, d, session, wm);
        }
        self.pump(now, d);
    }

    fn crash(&mut self, _now: Ms, d: usize) {
        let Some((_, up)) = self.devs[d].crash_at else {
            return;
        };
        // The window is volatile: what was in flight is lost with the process.
        let lost: Vec<(u64, u64)> = self.devs[d].agent.inflight_ranges().collect();
        self.count_abandoned(d, &lost);
        let dev = &mut self.devs[d];
        dev.crashed = true;
        dev.session = None;
        let s = dev.agent.stats();
        dev.past_stats.batches_sent += s.batches_sent;
        dev.past_stats.batches_failed += s.batches_failed + dev.agent.inflight() as u64;
        self.q.push(up, Ev::Restart(d));
    }

    /// Calls `f` on device `d`'s agent, and counts the batches it gave up on that the server
    /// had nonetheless (their acknowledgement was lost or late).
    fn with_agent<R>(&mut self, d: usize, f: impl FnOnce(&mut Agent) -> R) -> R {
        let agent = &mut self.devs[d].agent;
        // A streaming agent gives nothing up on an ack or a tick (a timeout first asks).
        if agent.inflight() == 0 || (agent.is_streaming() && self.agent_cfg.resume_wait_ms > 0) {
            return f(agent);
        }
        let failed = agent.stats().batches_failed;
        let before: Vec<(u64, u64)> = agent.inflight_ranges().collect();
        let r = f(agent);
        let n = (self.devs[d].agent.stats().batches_failed - failed) as usize;
        if n > 0 {
            // Go-back-N gives up the newest `n` batches of the window.
            self.count_abandoned(d, &before[before.len() - n..]);
        }
        r
    }

    /// Counts, of the batches `given_up`, those the server had in full.
    fn count_abandoned(&mut self, d: usize, given_up: &[(u64, u64)]) {
        let Some(rs) = self.server.state(&self.devs[d].state.replica) else {
            return;
        };
        let reached = given_up
            .iter()
            .filter(|&&(first, last)| (first..=last).all(|s| rs.ctx.contains(s)))
            .count();
        self.m.failures_reached += reached as u64;
    }

    /// Sends the agent's request for the retained ack, if it made one: a new subscription to
    /// its ack topic (its topic filter counted as bytes up).
    fn request_ack(&mut self, now: Ms, d: usize) {
        let dev = &mut self.devs[d];
        let Some(session) = dev.session else { return };
        if !dev.agent.take_ack_request() {
            return;
        }
        let size = device_name(dev.id).len() + ACK_TOPIC_EXTRA;
        self.m.bytes_up += size as u64;
        for at in dev
            .link
            .send(now, size, Dir::Up, &mut dev.net, &self.cfg.link)
        {
            self.q.push(at, Ev::AckRequest(d, session));
        }
    }

    fn restart(&mut self, now: Ms, d: usize) {
        let cfg = self.cfg;
        let agent_cfg = self.agent_cfg;
        let dev = &mut self.devs[d];
        dev.crashed = false;
        // Volatile state is gone: the agent starts again from what the spool persisted.
        let durable = AgentDurable {
            last_seq: dev.state.last_seq,
            acked: dev.durable_acked,
        };
        dev.agent = match Agent::new(agent_cfg, durable) {
            Ok(a) => a,
            Err(e) => unreachable!("durable state is consistent: {e}"),
        };
        dev.tick_at = None;
        if dev.link.up {
            let epoch = dev.link_epoch;
            self.q
                .push(now + cfg.link.connect_ms, Ev::Connect(d, epoch));
        }
        schedule_crash(self, d, now);
    }

    fn heal(&mut self, now: Ms) {
        self.healed = true;
        self.m.delivered_in_window = self.m.delivered;
        let connect = self.cfg.link.connect_ms;
        for d in 0..self.devs.len() {
            let dev = &mut self.devs[d];
            if dev.link.up {
                dev.link.heal();
                continue;
            }
            dev.link.heal();
            dev.link_epoch += 1;
            if dev.session.take().is_some() {
                dev.agent.disconnected();
            }
            if !dev.crashed {
                self.q.push(now + connect, Ev::Connect(d, dev.link_epoch));
            }
        }
    }

    /// Sends whatever the agent's window allows.
    fn pump(&mut self, now: Ms, d: usize) {
        let cfg = self.cfg;
        loop {
            let dev = &mut self.devs[d];
            let Some(req) = dev.agent.poll_send() else {
                break;
            };
            // What `BatchBuilder` would build (the same events, deltas joined per key), built
            // directly: the spooled events were checked when they were generated.
            let start = (req.first_seq - dev.spool_first) as usize;
            let (mut events, mut state, mut bytes) = (Vec::new(), BTreeMap::new(), 0);
            for s in dev.spool.range(start..).take(req.max_events) {
                if !events.is_empty() && bytes + s.approx > req.max_bytes {
                    break;
                }
                bytes += s.approx;
                events.push(s.event.clone());
                join_into(&mut state, &s.deltas);
            }
            let n = events.len();
            let last = req.first_seq + n as u64 - 1;
            let replica = dev.state.replica.clone();
            let limits = EventLimits::default();
            let batch = match DeltaBatch::new(replica, req.first_seq, events, state, &limits) {
                Ok(batch) => batch,
                Err(e) => unreachable!("a spooled batch is well formed: {e}"),
            };
            let (payload, size) = match &self.model {
                Some(model) => (Payload::Value(Rc::new(batch)), model.batch_bytes(n)),
                None => match self.codec.encode_batch(&batch) {
                    Ok(bytes) => {
                        let size = bytes.len();
                        (Payload::Encoded(Rc::new(bytes)), size)
                    }
                    Err(e) => unreachable!("a spooled batch encodes: {e}"),
                },
            };
            if let Err(e) = dev.agent.sent(req.first_seq, last, now) {
                unreachable!("the batch matches the request: {e}");
            }
            self.m.bytes_up += size as u64;
            for at in dev.link.send(now, size, Dir::Up, &mut dev.net, &cfg.link) {
                self.q.push(at, Ev::Uplink(d, payload.share()));
            }
        }
        self.schedule_tick(d);
    }

    fn schedule_tick(&mut self, d: usize) {
        let dev = &mut self.devs[d];
        if let Some(t) = dev.agent.next_deadline() {
            if dev.tick_at.is_none_or(|pending| t < pending) {
                dev.tick_at = Some(t);
                self.q.push(t, Ev::Tick(d));
            }
        }
    }

    fn server_receive(&mut self, now: Ms, d: usize, payload: Payload) {
        if self.server_schedule.is_down(now) {
            return; // nobody is there to take it; the agent will time out and resend
        }
        let batch = match payload {
            Payload::Encoded(bytes) => match self.codec.decode_batch(&bytes) {
                Ok(b) => b,
                Err(_) => {
                    self.decode_errors += 1;
                    return;
                }
            },
            // The last copy in flight is taken as is; a duplicate's first copy is cloned.
            Payload::Value(b) => Rc::try_unwrap(b).unwrap_or_else(|b| (*b).clone()),
        };
        let applied = self.server.apply(batch, now);
        let dev = &mut self.devs[d];
        for e in &applied.released {
            if e.dot.seq != self.released[d] + 1 {
                self.order_violations += 1;
            }
            self.released[d] = e.dot.seq;
            self.m.delivered += 1;
            let born = e
                .dot
                .seq
                .checked_sub(dev.gen_first)
                .and_then(|i| dev.gen_times.get(i as usize));
            if let Some(&born) = born {
                self.m.latencies_ms.push(now.saturating_sub(born));
            }
        }
        // Released events are released for good: their generation times are no longer needed.
        while dev.gen_first <= self.released[d] && dev.gen_times.pop_front().is_some() {
            dev.gen_first += 1;
        }
        join_maps(&mut self.devs[d].merged, applied.deltas);
        let wm = applied.watermark;
        if wm == 0 {
            return;
        }
        self.retained[d] = Some(self.retained[d].map_or(wm, |r| r.max(wm)));
        if let Some(session) = self.devs[d].session {
            self.send_ack(now, d, session, wm);
        }
    }

    fn send_ack(&mut self, now: Ms, d: usize, session: u64, wm: u64) {
        let dev = &mut self.devs[d];
        let size = dev.ack_base + usize::from(varint_len(wm) + varint_len(now));
        self.m.bytes_down += size as u64;
        for at in dev
            .link
            .send(now, size, Dir::Down, &mut dev.net, &self.cfg.link)
        {
            self.q.push(at, Ev::Ack(d, session, wm));
        }
    }

    fn ack_arrives(&mut self, now: Ms, d: usize, session: u64, wm: u64) {
        let dev = &mut self.devs[d];
        if dev.crashed || dev.session != Some(session) {
            return; // delivered to a session that no longer exists
        }
        if let AckEffect::Advanced { trim_to } = self.with_agent(d, |a| a.on_ack(wm, now)) {
            let dev = &mut self.devs[d];
            dev.durable_acked = trim_to;
            while dev.spool_first <= trim_to && dev.spool.pop_front().is_some() {
                dev.spool_first += 1;
            }
        }
        self.pump(now, d);
    }
}

/// A subscription's bytes besides the device name: `edgesync/v1/` and `/ack`, a 2-byte length
/// and a byte of options.
const ACK_TOPIC_EXTRA: usize = "edgesync/v1/".len() + "/ack".len() + 3;

/// Bytes of `n` as an Avro long (zig-zag varint).
fn varint_len(n: u64) -> u8 {
    // As a long, a u64 is clamped to i64::MAX; zig-zag then doubles it.
    let zigzag = u128::from(n.min(i64::MAX as u64)) << 1;
    (128 - (zigzag | 1).leading_zeros()).div_ceil(7) as u8
}

/// The server's per-key values, for the report.
pub fn values(state: &BTreeMap<String, Crdt>) -> BTreeMap<String, ReadValue> {
    state
        .iter()
        .map(|(k, c)| (k.clone(), ReadValue::of(c)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::replica_of;

    #[test]
    fn an_acks_size_is_its_base_plus_its_two_varints() {
        let codec = Codec::new(Default::default()).unwrap();
        let mut r = Rng::new(9);
        for i in 0..2_000 {
            let replica = replica_of(i % 7, i as usize);
            let base = codec
                .encode_ack(&Ack {
                    replica: replica.clone(),
                    watermark: 0,
                    acked_at_ms: 0,
                })
                .unwrap()
                .len()
                - 2;
            let (wm, now) = (
                r.next_u64() >> r.below(64),
                r.next_u64() >> (r.below(40) + 24),
            );
            let real = codec
                .encode_ack(&Ack {
                    replica,
                    watermark: wm,
                    acked_at_ms: now,
                })
                .unwrap()
                .len();
            assert_eq!(
                real,
                base + usize::from(varint_len(wm) + varint_len(now)),
                "{wm} {now}"
            );
        }
    }
}
