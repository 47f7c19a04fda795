//! The uplink: one event loop that drives the protocol's agent state machines over MQTT, one
//! per lane.
//!
//! In the style of rumqttc itself (state machine without I/O, one loop that does the I/O): each
//! lane's `edgesync_protocol::Agent` decides what to send from its spool and when to give up;
//! this loop feeds it the spool's new seqs, the connection's ups and downs, the server's acks
//! (retained, on the device's ack topic: `edgesync_schemas::topics`; each ack names its
//! replica, so its lane) and the passing of time, publishes the batches it asks for (QoS 1 on
//! the device's batch topic), and trims the lane's spool behind every ack. A lost connection is
//! retried with exponential backoff and jitter. TLS (and mutual TLS) and a per-device user name
//! and password are optional. A built batch is published only when the [`Budget`] (rate cap,
//! daily bytes) admits it; until then it waits, built, in the spool's order, and the loop wakes
//! when the budget will have room.
//!
//! Lanes (`lanes.rs`) share the connection and one window: at most `max_inflight` batches are in
//! flight over all lanes, so what waits on a thin link for the bytes ahead of it is at most a
//! window, and the loop, not the link, decides what goes next. That is start-time fair
//! queueing on the batches' wire bytes: each lane's next batch gets a start tag (the later of
//! the loop's virtual time and the end of the lane's previous batch, which advances by its
//! bytes / weight), and the lowest tag goes, the higher lane on a tie. A lane's share of the
//! uplink while others wait too is its weight over theirs; an idle lane banks no credit; a lane
//! alone gets all of it. The lanes share the device's retained ack too, which holds the latest
//! ack of any lane: a retained ack of another lane settles a lane's resume or confirmation at
//! once (it resumes from its own watermark: at most a window is sent again, and the server
//! ignores it) instead of making it wait `resume_wait_ms`.
//!
//! The loop never waits on the disk. Batches are built (spool read, records decoded, deltas
//! joined, encoded and compressed) on the blocking pool ahead of the window: up to a window's
//! worth of the requests the agent will make next, in parallel, so that when an ack opens the
//! window the next batch is ready to publish. A prepared batch is used if it answers the
//! request the agent then makes (`BatchRequest::answers`: the same first seq, no more events
//! than asked), even when more events have become durable since it was built: rebuilding it
//! each time the request grew kept an agent taking appends rebuilding the same batch, and
//! its batches waiting (the agent's part of bench-latency's p50 went from 37 to 17 ms).
//! Otherwise (an ack, a timeout or a reconnect moved the agent) it is dropped and the request
//! built anew. Trims run on their own task per lane, which takes the latest
//! acknowledged watermark whenever it is free (a trim is idempotent and a later one covers an
//! earlier), so an ack costs the loop no fsync. Nagle's algorithm is off on the socket; the
//! broker should turn it off on its side too (Mosquitto: `set_tcp_nodelay true`), or each
//! ack it sends right after a PUBACK waits for the agent's delayed TCP acknowledgement.

use edgesync_servicekit::crash::crash_point;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::{DeviceId, ReplicaId};
use edgesync_protocol::agent::AckEffect;
use edgesync_protocol::{Agent, AgentConfig, AgentDurable, BatchRequest};
use edgesync_schemas::{topics, Codec};
use edgesync_servicekit::mqtt::MqttSecurity;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::budget::{Budget, Spent, Wait};
use crate::lanes::OpenLane;
use crate::metrics::AgentMetrics;
use crate::outbox::{build_batch, Built, OutboxError};
use crate::spool::Spool;

/// Uplink settings.
#[derive(Clone, Debug)]
pub struct UplinkConfig {
    /// The device (also the MQTT client id).
    pub device: DeviceId,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT keep-alive: how soon a dead link is noticed.
    pub keep_alive: Duration,
    /// The protocol's send window (`max_inflight_batches` is shared by the lanes).
    pub agent: AgentConfig,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// TLS and credentials.
    pub security: MqttSecurity,
    /// Rate cap on published bytes per second (0 = none).
    pub max_bytes_per_sec: u64,
    /// Most bytes published per UTC day (0 = none).
    pub daily_budget_bytes: u64,
    /// Where the day's count is saved across restarts (`None`: it starts again each time).
    pub budget_file: Option<PathBuf>,
}

impl UplinkConfig {
    /// Plain TCP to `host:port` with the default window and backoff.
    pub fn new(device: DeviceId, host: impl Into<String>, port: u16) -> Self {
        Self {
            device,
            host: host.into(),
            port,
            keep_alive: Duration::from_secs(30),
            agent: AgentConfig::default(),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            security: MqttSecurity::default(),
            max_bytes_per_sec: 0,
            daily_budget_bytes: 0,
            budget_file: None,
        }
    }

    /// The MQTT options for a client `client_id` of this configuration.
    pub fn mqtt_options(&self, client_id: &str) -> MqttOptions {
        let mut opts = MqttOptions::new(client_id, self.host.clone(), self.port);
        opts.set_keep_alive(self.keep_alive);
        opts.set_clean_session(true); // the retained ack is all the state a session needs
        opts.set_max_packet_size(4 << 20, 4 << 20);
        self.security.apply(&mut opts);
        opts
    }
}

/// Why the uplink stopped.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The spool's durable state contradicts itself.
    #[error("agent state: {0}")]
    Agent(#[from] edgesync_protocol::agent::AgentError),
    /// A batch could not be built from the spool.
    #[error("outbox: {0}")]
    Outbox(#[from] OutboxError),
    /// The spool failed.
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// A blocking spool task panicked or was cancelled.
    #[error("spool task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The trim task ended while the uplink ran.
    #[error("the trim task stopped")]
    TrimStopped,
}

/// Runs spool work (RocksDB reads, a trim that waits for the writer thread) on tokio's
/// blocking pool, never on the runtime thread that drives MQTT.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UplinkError> + Send + 'static,
) -> Result<T, UplinkError> {
    tokio::task::spawn_blocking(f).await?
}

/// What the uplink works with.
#[derive(Clone, Debug)]
pub struct UplinkDeps {
    /// The lanes it sends from and trims, highest priority first.
    pub lanes: Vec<OpenLane>,
    /// Batch and ack codec.
    pub codec: Arc<Codec>,
    /// Notified after every append to any lane's spool.
    pub appended: Arc<Notify>,
    /// Where it counts what it does.
    pub metrics: Arc<AgentMetrics>,
}

/// A batch built and encoded off the loop.
struct Packed {
    built: Built,
    /// The encoded batch; `None` when it is too large for the codec's limits.
    bytes: Option<Vec<u8>>,
}

/// A request being (or already) built ahead of the window.
struct Slot {
    id: u64,
    req: BatchRequest,
    done: Option<Result<Packed, UplinkError>>,
}

/// A built batch coming back from the blocking pool: (lane, slot id, outcome).
type BuiltMsg = (usize, u64, Result<Packed, UplinkError>);

/// One lane: its replica's state machine, its spool and what is built ahead for it.
struct LaneLink {
    lane: OpenLane,
    agent: Agent,
    replica: ReplicaId,
    /// Requests being built, in the order the agent will make them.
    ahead: VecDeque<Slot>,
    /// Where the agent's next request will start, as far as the uplink can tell: after the
    /// last batch sent (the agent itself says so whenever its window has room).
    next_unsent: u64,
    /// The latest watermark to trim to, for the lane's trim task.
    trim: watch::Sender<u64>,
    /// When the batch the budget holds back may go (the uplink's clock).
    held_until: Option<u64>,
    /// Fair queueing: the virtual time its last batch ended at.
    finish: f64,
}

impl LaneLink {
    /// Tells the agent of the seqs the spool made durable since the last turn.
    fn catch_up(&mut self) -> Result<(), UplinkError> {
        let last = self.lane.spool.meta().next_seq - 1;
        for seq in self.agent.last_seq() + 1..=last {
            self.agent.appended(seq)?;
        }
        Ok(())
    }

    /// Whether the front of `ahead` still answers the agent's next request; if not (an ack,
    /// a timeout, a reconnect, or a batch cut short by its byte limit moved the agent), what
    /// was built ahead is dropped. Returns the request, if the agent has one.
    fn current_request(&mut self) -> Option<BatchRequest> {
        let req = self.agent.poll_send()?;
        if self.ahead.front().is_some_and(|s| !s.req.answers(&req)) {
            self.ahead.clear();
            self.held_until = None;
        }
        Some(req)
    }

    /// Whether the front batch is built and answers the agent's request.
    fn ready(&self) -> bool {
        self.agent.poll_send().is_some() && self.ahead.front().is_some_and(|s| s.done.is_some())
    }
}

/// One connection's state machines and the I/O they drive.
struct Uplink {
    cfg: UplinkConfig,
    lanes: Vec<LaneLink>,
    codec: Arc<Codec>,
    metrics: Arc<AgentMetrics>,
    client: AsyncClient,
    batch_topic: String,
    ack_topic: String,
    started: Instant,
    backoff: Duration,
    jitter: Jitter,
    connected_once: bool,
    next_slot: u64,
    /// Where built batches come back.
    built: mpsc::UnboundedSender<BuiltMsg>,
    budget: Budget,
    /// The day's count as last handed to the saving task, and when it is next due if it
    /// changed.
    saved: (Spent, u64),
    /// The saving task's input (`None`: the count is not saved).
    budget_saves: Option<watch::Sender<Spent>>,
    /// Fair queueing's virtual time: the start tag of the last batch published.
    vtime: f64,
}

/// How often the budget's day count is saved while it changes.
const BUDGET_SAVE_MS: u64 = 5_000;

/// Why a lane's front batch did not go this turn.
enum Blocked {
    /// The budget holds it; `Rate` holds every lane.
    Budget(Wait),
    /// Too large for the codec's limits: the window shrinks on the next request.
    TooLarge,
    /// The MQTT event loop is gone; shutdown follows.
    Closed,
}

impl Uplink {
    /// Milliseconds since the uplink started (the protocol's clock).
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn inflight(&self) -> usize {
        self.lanes.iter().map(|l| l.agent.inflight()).sum()
    }

    /// Tells each lane's agent of the seqs its spool made durable since the last turn,
    /// publishes the batches they ask for that are built, lane by fair-queueing order while the
    /// shared window has room, and starts building what they will ask for next.
    async fn send_due(&mut self) -> Result<(), UplinkError> {
        for i in 0..self.lanes.len() {
            self.lanes[i].catch_up()?;
            self.build_front(i);
        }
        let mut skip = vec![false; self.lanes.len()];
        while self.inflight() < self.cfg.agent.max_inflight_batches {
            let Some(i) = self.next_lane(&skip) else {
                break;
            };
            match self.publish_front(i).await? {
                Ok(()) => {}
                Err(Blocked::Budget(Wait::Rate(_)) | Blocked::Closed) => break,
                Err(_) => skip[i] = true,
            }
            self.build_front(i);
        }
        let waiting = self.lanes.iter().any(|l| l.held_until.is_some());
        self.metrics.budget_waiting.set(i64::from(waiting));
        for i in 0..self.lanes.len() {
            self.build_ahead(i);
        }
        Ok(())
    }

    /// Starts building lane `i`'s next request unless it is built (or being built) already.
    fn build_front(&mut self, i: usize) {
        if let Some(req) = self.lanes[i].current_request() {
            if self.lanes[i].ahead.is_empty() {
                self.start_build(i, req);
            }
        }
    }

    /// The lane whose built front batch goes next: the lowest start tag, the higher lane on a
    /// tie.
    fn next_lane(&self, skip: &[bool]) -> Option<usize> {
        let start = |l: &LaneLink| l.finish.max(self.vtime);
        (0..self.lanes.len())
            .filter(|&i| !skip[i] && self.lanes[i].ready())
            .min_by(|&a, &b| start(&self.lanes[a]).total_cmp(&start(&self.lanes[b])))
    }

    /// Publishes lane `i`'s built front batch, unless the budget holds it.
    async fn publish_front(&mut self, i: usize) -> Result<Result<(), Blocked>, UplinkError> {
        let Some(done) = self.lanes[i].ahead.front_mut().and_then(|s| s.done.take()) else {
            return Ok(Ok(()));
        };
        if let Ok(Packed { bytes: Some(b), .. }) = &done {
            if let Err(wait) = self.admit(i, b.len() as u64) {
                self.hold(i, wait, done);
                return Ok(Err(Blocked::Budget(wait)));
            }
        }
        self.lanes[i].ahead.pop_front();
        let Packed { built, bytes } = done?;
        let m = &self.metrics;
        m.corrupt(built.corrupt as u64);
        let Some(bytes) = bytes else {
            return Ok(Err(Blocked::TooLarge));
        };
        let n = bytes.len() as u64;
        m.batches.inc();
        m.wire_bytes.inc_by(n);
        m.raw_bytes.inc_by(built.raw_bytes);
        m.lane_published(&self.lanes[i].lane.name, n);
        let published = self
            .client
            .publish(self.batch_topic.as_str(), QoS::AtLeastOnce, false, bytes)
            .await;
        if published.is_err() {
            return Ok(Err(Blocked::Closed));
        }
        crash_point("uplink.after_publish");
        let (first, last) = (built.batch.first_seq(), built.batch.last_seq());
        let now = self.now();
        let l = &mut self.lanes[i];
        l.agent.sent(first, last, now)?;
        l.next_unsent = last + 1;
        let start = l.finish.max(self.vtime);
        l.finish = start + n as f64 / f64::from(l.lane.weight.max(1));
        self.vtime = start;
        Ok(Ok(()))
    }

    /// Whether the budget lets lane `i`'s `bytes` go now (counted if so).
    fn admit(&mut self, i: usize, bytes: u64) -> Result<(), Wait> {
        let (now, wall) = (self.now(), edgesync_servicekit::now_ms());
        let bypass = self.lanes[i].lane.bypass_daily_budget;
        let r = self.budget.admit(bytes, now, wall, bypass);
        self.metrics.budget_seen(&self.budget.view(wall));
        if r.is_ok() {
            self.lanes[i].held_until = None;
        }
        r
    }

    /// Puts lane `i`'s front batch back to wait for the budget.
    fn hold(&mut self, i: usize, wait: Wait, done: Result<Packed, UplinkError>) {
        let until = self.now() + wait.duration().as_millis() as u64;
        let l = &mut self.lanes[i];
        if l.held_until.is_none() {
            tracing::info!(lane = %l.lane.name, ?wait, "uplink budget: the lane's next batch waits");
            self.metrics.budget_held(wait);
        }
        l.held_until = Some(until);
        if let Some(slot) = l.ahead.front_mut() {
            slot.done = Some(done);
        }
    }

    /// When the loop must wake next: the agents' deadlines or, while a built batch is held at
    /// the front of a streaming window with room in the shared window, the budget's (a full
    /// window opens with an ack, which wakes the loop: a hold that ran out meanwhile must not
    /// make it spin until then).
    fn next_wake(&self) -> Duration {
        let room = self.inflight() < self.cfg.agent.max_inflight_batches;
        let at = self
            .lanes
            .iter()
            .flat_map(|l| {
                let held = l.held_until.filter(|_| {
                    room && l.agent.is_streaming()
                        && l.ahead.front().is_some_and(|s| s.done.is_some())
                });
                [l.agent.next_deadline(), held]
            })
            .chain([self.save_due()])
            .flatten()
            .min();
        at.map(|t| Duration::from_millis(t.saturating_sub(self.now())))
            .unwrap_or(Duration::from_secs(3600))
    }

    /// When the day's count must be saved, if it changed since it last was.
    fn save_due(&self) -> Option<u64> {
        let changed = self.budget_saves.is_some() && self.budget.spent() != self.saved.0;
        changed.then_some(self.saved.1)
    }

    /// Hands the day's count to the saving task if it is due (`now`: whenever it changed).
    fn save_budget(&mut self, now: bool) {
        let Some(at) = self.save_due() else { return };
        if !now && self.now() < at {
            return;
        }
        let spent = self.budget.spent();
        self.saved = (spent, self.now() + BUDGET_SAVE_MS);
        if let Some(tx) = &self.budget_saves {
            tx.send_replace(spent);
        }
    }

    /// Starts building the requests lane `i`'s agent will make after those already being
    /// built, up to a window's worth, assuming each batch is as long as its request allows
    /// (true unless its byte limit cuts it short, which `current_request` notices).
    fn build_ahead(&mut self, i: usize) {
        let c = self.cfg.agent;
        loop {
            let l = &self.lanes[i];
            if !l.agent.is_streaming() || l.ahead.len() >= c.max_inflight_batches {
                return;
            }
            let first = match l.ahead.back() {
                Some(s) => s.req.first_seq + s.req.max_events as u64,
                None => l
                    .agent
                    .poll_send()
                    .map_or(l.next_unsent.max(l.agent.acked() + 1), |r| r.first_seq),
            };
            if first > l.agent.last_seq() {
                return;
            }
            let available = (l.agent.last_seq() - first + 1).min(usize::MAX as u64) as usize;
            self.start_build(
                i,
                BatchRequest {
                    first_seq: first,
                    max_events: c.max_batch_events.min(available),
                    max_bytes: c.max_batch_bytes,
                },
            );
        }
    }

    /// Builds and encodes lane `i`'s `req` on the blocking pool; the outcome comes back on
    /// `built`.
    fn start_build(&mut self, i: usize, req: BatchRequest) {
        let id = self.next_slot;
        self.next_slot += 1;
        let l = &mut self.lanes[i];
        l.ahead.push_back(Slot {
            id,
            req,
            done: None,
        });
        let (s, c, r, tx) = (
            Arc::clone(&l.lane.spool),
            Arc::clone(&self.codec),
            l.replica.clone(),
            self.built.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let packed = build_batch(&s, &c, &r, &req)
                .map(|built| {
                    let bytes = c.encode_batch(&built.batch).ok();
                    Packed { built, bytes }
                })
                .map_err(UplinkError::from);
            let _ = tx.send((i, id, packed)); // the uplink may be gone
        });
    }

    /// A build finished: its slot holds the outcome (a slot already dropped as stale is gone,
    /// and so is its outcome, failed or not).
    fn on_built(&mut self, (i, id, packed): BuiltMsg) {
        if let Some(slot) = self.lanes[i].ahead.iter_mut().find(|s| s.id == id) {
            slot.done = Some(packed);
        }
    }

    async fn on_connected(&mut self) {
        let m = &self.metrics;
        self.backoff = self.cfg.backoff_min;
        m.link_up.set(1);
        if self.connected_once {
            m.reconnects.inc();
        }
        self.connected_once = true;
        tracing::info!(host = %self.cfg.host, port = self.cfg.port, "uplink connected");
        let now = self.now();
        for l in &mut self.lanes {
            l.agent.connected(now);
        }
        let _ = self
            .client
            .subscribe(self.ack_topic.as_str(), QoS::AtLeastOnce)
            .await;
    }

    /// A server ack: its lane's window advances and the lane's spool is trimmed behind it. A
    /// retained one (the answer to a subscription) settles every other lane waiting for one.
    fn on_ack(&mut self, payload: &[u8], retained: bool) {
        self.metrics.acks.inc();
        let Ok(ack) = self.codec.decode_ack(payload) else {
            return;
        };
        let now = self.now();
        // With one lane, an ack of another replica is an old incarnation's: it says nothing
        // about the lane, whose own acks may still come during its resume wait.
        let lanes = self.lanes.len() > 1;
        for l in &mut self.lanes {
            if ack.replica != l.replica {
                if retained && lanes {
                    l.agent.on_retained_ack_of_another(now);
                }
                continue;
            }
            if let AckEffect::Advanced { trim_to } = l.agent.on_ack(ack.watermark, now) {
                crash_point("uplink.after_ack");
                l.trim.send_replace(trim_to);
            }
        }
    }

    /// The connection is lost: wait (backoff with jitter, doubling) before the event loop
    /// connects again.
    async fn on_lost(&mut self, error: rumqttc::ConnectionError, shutdown: &CancellationToken) {
        let m = &self.metrics;
        m.disconnects.inc();
        m.link_up.set(0);
        for l in &mut self.lanes {
            l.agent.disconnected();
            l.held_until = None;
        }
        m.budget_waiting.set(0);
        let wait = self.jitter.spread(self.backoff);
        tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "uplink connection lost");
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    /// Whether any lane's agent asks for the server's current watermark.
    fn take_ack_request(&mut self) -> bool {
        let mut asked = false;
        for l in &mut self.lanes {
            asked |= l.agent.take_ack_request();
        }
        asked
    }
}

/// Lane `lane`'s link: its agent from the spool's durable state, and its trim task.
fn lane_link(
    cfg: &UplinkConfig,
    lane: OpenLane,
    trimmers: &mut JoinSet<Result<(), UplinkError>>,
) -> Result<LaneLink, UplinkError> {
    let meta = lane.spool.meta();
    let durable = AgentDurable {
        last_seq: meta.next_seq - 1,
        acked: meta.acked,
    };
    let (trim, trims) = watch::channel(meta.acked);
    trimmers.spawn(trim_behind(Arc::clone(&lane.spool), trims));
    Ok(LaneLink {
        agent: Agent::new(cfg.agent, durable)?,
        replica: ReplicaId::new(cfg.device.clone(), meta.incarnation),
        ahead: VecDeque::new(),
        next_unsent: meta.acked + 1,
        trim,
        held_until: None,
        finish: 0.0,
        lane,
    })
}

/// Runs until `shutdown` is cancelled; what it does is counted in `deps.metrics`.
pub async fn run(
    cfg: UplinkConfig,
    deps: UplinkDeps,
    shutdown: CancellationToken,
) -> Result<(), UplinkError> {
    let (client, mut events) = AsyncClient::new(cfg.mqtt_options(cfg.device.as_str()), 64);
    // A batch or a PUBACK must not wait for the broker's delayed TCP acknowledgement of the
    // last small packet (Nagle): with a window of a few batches that is a 40 ms stall per turn.
    events.network_options.set_tcp_nodelay(true);
    let (built, mut built_rx) = mpsc::unbounded_channel();
    let mut trimmers = JoinSet::new();
    let mut lanes = Vec::with_capacity(deps.lanes.len());
    for lane in deps.lanes {
        lanes.push(lane_link(&cfg, lane, &mut trimmers)?);
    }
    let seed = lanes.first().map_or(1, |l| l.replica.incarnation.get() | 1);
    let saved = match cfg.budget_file.clone() {
        Some(f) => tokio::task::spawn_blocking(move || Spent::load(&f)).await?,
        None => None,
    };
    let (budget_saves, saver) = match cfg.budget_file.clone() {
        Some(file) => {
            let (tx, rx) = watch::channel(saved.unwrap_or_default());
            (Some(tx), Some(tokio::spawn(save_behind(file, rx))))
        }
        None => (None, None),
    };
    let wall = edgesync_servicekit::now_ms();
    let budget = Budget::resume(
        cfg.max_bytes_per_sec,
        cfg.daily_budget_bytes,
        0,
        wall,
        saved,
    );
    let mut u = Uplink {
        lanes,
        codec: deps.codec,
        metrics: deps.metrics,
        batch_topic: topics::batch(&cfg.device),
        ack_topic: topics::ack(&cfg.device),
        started: Instant::now(),
        backoff: cfg.backoff_min,
        jitter: Jitter(seed),
        connected_once: false,
        next_slot: 0,
        built,
        client,
        saved: (budget.spent(), BUDGET_SAVE_MS),
        budget_saves,
        budget,
        vtime: 0.0,
        cfg,
    };
    let appended = deps.appended;
    loop {
        u.send_due().await?;
        u.save_budget(false);
        if u.take_ack_request() {
            // An agent asks for the server's current watermark (a batch timed out): subscribing
            // again makes the broker send the retained ack again.
            let _ = u
                .client
                .subscribe(u.ack_topic.as_str(), QoS::AtLeastOnce)
                .await;
        }
        let tick = u.next_wake();
        tokio::select! {
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => u.on_connected().await,
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == u.ack_topic => {
                    u.on_ack(&p.payload, p.retain);
                }
                Ok(_) => {}
                Err(e) => u.on_lost(e, &shutdown).await,
            },
            Some(msg) = built_rx.recv() => u.on_built(msg),
            _ = tokio::time::sleep(tick) => {
                let now = u.now();
                for l in &mut u.lanes {
                    l.agent.on_tick(now);
                }
            }
            _ = appended.notified() => {}
            Some(trimmed) = trimmers.join_next() => return Err(match trimmed {
                Ok(Ok(())) => UplinkError::TrimStopped,
                Ok(Err(e)) => e,
                Err(e) => e.into(),
            }),
            _ = shutdown.cancelled() => {}
        }
        if shutdown.is_cancelled() {
            u.metrics.link_up.set(0);
            u.save_budget(true);
            let _ = u.client.disconnect().await;
            // The last trims asked for finish; what they would have trimmed is sent again after
            // a restart only if they did not, and the server ignores it.
            drop(u);
            if let Some(saver) = saver {
                saver.await?; // the last count handed over is on disk
            }
            while let Some(r) = trimmers.join_next().await {
                r??;
            }
            return Ok(());
        }
    }
}

/// Saves the latest day count it is given to `file`, one write at a time (never two at once,
/// never an older one last); returns when the sender is gone, after saving the last value.
async fn save_behind(file: PathBuf, mut counts: watch::Receiver<Spent>) {
    let mut saved = *counts.borrow_and_update();
    loop {
        let open = counts.changed().await.is_ok();
        let spent = *counts.borrow_and_update();
        if spent != saved {
            let f = file.clone();
            match tokio::task::spawn_blocking(move || spent.save(&f)).await {
                Ok(Ok(())) => saved = spent,
                Ok(Err(e)) => {
                    tracing::warn!(file = %file.display(), error = %e, "uplink budget: the day's count was not saved")
                }
                Err(e) => tracing::warn!(error = %e, "uplink budget: the saving task failed"),
            }
        }
        if !open {
            return;
        }
    }
}

/// Trims the spool to the latest watermark it is given, whenever the previous trim is done;
/// returns when the sender is gone (after trimming to the last value) or a trim fails.
async fn trim_behind(spool: Arc<Spool>, mut to: watch::Receiver<u64>) -> Result<(), UplinkError> {
    let mut trimmed = *to.borrow_and_update();
    while to.changed().await.is_ok() {
        let w = *to.borrow_and_update();
        if w > trimmed {
            let s = Arc::clone(&spool);
            blocking(move || Ok(s.trim(w)?)).await?;
            trimmed = w;
        }
    }
    Ok(())
}

/// What a replay sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Batches published (and acknowledged by the broker).
    pub batches: u64,
    /// Seqs they covered.
    pub seqs: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// Publishes seqs `from..=to` of `spool` again, as batches on the device's batch topic, and
/// returns once the broker has acknowledged every one (QoS 1). For `spool replay`: an operator
/// re-sends a range when downstream lost it; the server ignores what it already has. Uses its
/// own client id (`{device}.replay`) so a running agent's session is not taken over.
pub async fn replay(
    cfg: &UplinkConfig,
    spool: &Spool,
    codec: &Codec,
    from: u64,
    to: u64,
    timeout: Duration,
) -> Result<ReplayStats, ReplayError> {
    let replica = ReplicaId::new(cfg.device.clone(), spool.meta().incarnation);
    let mut batches = Vec::new();
    let mut seq = from.max(1);
    while seq <= to {
        let req = edgesync_protocol::BatchRequest {
            first_seq: seq,
            max_events: (to - seq + 1).min(cfg.agent.max_batch_events as u64) as usize,
            max_bytes: cfg.agent.max_batch_bytes,
        };
        let built = build_batch(spool, codec, &replica, &req)?;
        seq = built.batch.last_seq() + 1;
        batches.push((
            built.batch.last_seq() - built.batch.first_seq() + 1,
            codec
                .encode_batch(&built.batch)
                .map_err(|e| ReplayError::Encode(e.to_string()))?,
        ));
    }
    if batches.is_empty() {
        return Ok(ReplayStats::default());
    }
    let (client, mut events) =
        AsyncClient::new(cfg.mqtt_options(&format!("{}.replay", cfg.device)), 64);
    let topic = topics::batch(&cfg.device);
    let mut stats = ReplayStats::default();
    let mut acked = 0u64;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pending = batches.into_iter();
    loop {
        let ev = tokio::time::timeout_at(deadline, events.poll())
            .await
            .map_err(|_| ReplayError::Timeout {
                acked,
                sent: stats.batches,
            })?;
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for (seqs, bytes) in pending.by_ref() {
                    stats.batches += 1;
                    stats.seqs += seqs;
                    stats.bytes += bytes.len() as u64;
                    client
                        .publish(topic.as_str(), QoS::AtLeastOnce, false, bytes)
                        .await
                        .map_err(|e| ReplayError::Mqtt(e.to_string()))?;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => return Err(ReplayError::Mqtt(e.to_string())),
        }
        if stats.batches > 0 && acked >= stats.batches {
            let _ = client.disconnect().await;
            return Ok(stats);
        }
    }
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The range is not (or no longer) in the spool.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A batch could not be encoded.
    #[error("encode: {0}")]
    Encode(String),
    /// The broker connection failed.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// The broker did not acknowledge everything in time.
    #[error("timed out: the broker acknowledged {acked} of {sent} batches")]
    Timeout {
        /// Batches acknowledged.
        acked: u64,
        /// Batches sent.
        sent: u64,
    },
}

/// A small xorshift for reconnect jitter (no I/O, no dependency): delays vary in [d/2, d].
struct Jitter(u64);

impl Jitter {
    fn spread(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let frac = 0.5 + (self.0 % 1000) as f64 / 2000.0;
        d.mul_f64(frac)
    }
}
