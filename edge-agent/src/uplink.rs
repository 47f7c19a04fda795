//! The uplink: one event loop that drives the protocol's agent state machine over MQTT.
//!
//! In the style of rumqttc itself (state machine without I/O, one loop that does the I/O): the
//! `edgesync_protocol::Agent` decides what to send and when to give up; this loop feeds it the
//! spool's new seqs, the connection's ups and downs, the server's acks (retained, on the
//! device's ack topic: `edgesync_schemas::topics`) and the passing of time, publishes the
//! batches it asks for (QoS 1 on its batch topic), and trims the spool behind every ack. A lost
//! connection is retried with exponential backoff and jitter. TLS (and mutual TLS) and a
//! per-device user name and password are optional. A built batch is published only when the
//! [`Budget`] (rate cap, daily bytes) admits it; until then it waits, built, in the spool's
//! order, and the loop wakes when the budget will have room.
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
//! built anew. Trims run on their own task, which takes the latest
//! acknowledged watermark whenever it is free (a trim is idempotent and a later one covers an
//! earlier), so an ack costs the loop no fsync. Nagle's algorithm is off on the socket; the
//! broker should turn it off on its side too (Mosquitto: `set_tcp_nodelay true`), or each
//! ack it sends right after a PUBACK waits for the agent's delayed TCP acknowledgement.

use edgesync_servicekit::crash::crash_point;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::{DeviceId, ReplicaId};
use edgesync_protocol::agent::AckEffect;
use edgesync_protocol::{Agent, AgentConfig, AgentDurable, BatchRequest};
use edgesync_schemas::{topics, Codec};
use edgesync_servicekit::mqtt::MqttSecurity;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::budget::{Budget, Wait};
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
    /// The protocol's send window.
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
    /// The spool it sends from and trims.
    pub spool: Arc<Spool>,
    /// Batch and ack codec.
    pub codec: Arc<Codec>,
    /// Notified after every append to the spool.
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

/// One connection's state machine and the I/O it drives.
struct Uplink {
    cfg: UplinkConfig,
    agent: Agent,
    replica: ReplicaId,
    deps: UplinkDeps,
    client: AsyncClient,
    batch_topic: String,
    ack_topic: String,
    started: Instant,
    backoff: Duration,
    jitter: Jitter,
    connected_once: bool,
    /// Requests being built, in the order the agent will make them.
    ahead: VecDeque<Slot>,
    /// Where the agent's next request will start, as far as the uplink can tell: after the
    /// last batch sent (the agent itself says so whenever its window has room).
    next_unsent: u64,
    next_slot: u64,
    /// Where built batches come back (slot id, outcome).
    built: mpsc::UnboundedSender<(u64, Result<Packed, UplinkError>)>,
    /// The latest watermark to trim to, for the trim task.
    trim: watch::Sender<u64>,
    budget: Budget,
    /// When the batch the budget holds back may go (the uplink's clock).
    held_until: Option<u64>,
}

impl Uplink {
    /// Milliseconds since the uplink started (the protocol's clock).
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Tells the agent of the seqs the spool made durable since the last turn, publishes
    /// every batch it asks for that is built, and starts building what it will ask for next.
    async fn send_due(&mut self) -> Result<(), UplinkError> {
        let last = self.deps.spool.meta().next_seq - 1;
        for seq in self.agent.last_seq() + 1..=last {
            self.agent.appended(seq)?;
        }
        while let Some(req) = self.agent.poll_send() {
            if self.ahead.front().is_some_and(|s| !s.req.answers(&req)) {
                // The agent went elsewhere (an ack from the server, a timeout, a reconnect,
                // or a batch cut short by its byte limit): what was built ahead is stale.
                self.ahead.clear();
                self.release_hold();
            }
            if self.ahead.is_empty() {
                self.start_build(req);
            }
            let Some(done) = self.ahead.front_mut().and_then(|s| s.done.take()) else {
                break; // still being built: the loop goes on and comes back when it is
            };
            if let Ok(Packed { bytes: Some(b), .. }) = &done {
                if let Err(wait) = self.admit(b.len() as u64) {
                    self.hold(wait, done);
                    break;
                }
            }
            self.ahead.pop_front();
            let Packed { built, bytes } = done?;
            let m = &self.deps.metrics;
            m.corrupt(built.corrupt as u64);
            let Some(bytes) = bytes else {
                break; // too large for the limits: the window shrinks on the next request
            };
            m.batches.inc();
            m.wire_bytes.inc_by(bytes.len() as u64);
            m.raw_bytes.inc_by(built.raw_bytes);
            let published = self
                .client
                .publish(self.batch_topic.as_str(), QoS::AtLeastOnce, false, bytes)
                .await;
            if published.is_err() {
                break; // the event loop is gone; shutdown follows
            }
            crash_point("uplink.after_publish");
            let (first, last) = (built.batch.first_seq(), built.batch.last_seq());
            self.agent.sent(first, last, self.now())?;
            self.next_unsent = last + 1;
        }
        self.build_ahead();
        Ok(())
    }

    /// Whether the budget lets `bytes` go now (counted if so).
    fn admit(&mut self, bytes: u64) -> Result<(), Wait> {
        let (now, wall) = (self.now(), edgesync_servicekit::now_ms());
        let r = self.budget.admit(bytes, now, wall);
        self.deps.metrics.budget_seen(&self.budget.view(wall));
        if r.is_ok() {
            self.release_hold();
        }
        r
    }

    /// Nothing waits for the budget any more (admitted, or the held batch was dropped).
    fn release_hold(&mut self) {
        self.held_until = None;
        self.deps.metrics.budget_waiting.set(0);
    }

    /// Puts the front batch back to wait for the budget.
    fn hold(&mut self, wait: Wait, done: Result<Packed, UplinkError>) {
        if self.held_until.is_none() {
            tracing::info!(?wait, "uplink budget: the next batch waits");
            self.deps.metrics.budget_held(wait);
        }
        self.held_until = Some(self.now() + wait.duration().as_millis() as u64);
        if let Some(slot) = self.ahead.front_mut() {
            slot.done = Some(done);
        }
    }

    /// When the loop must wake next: the agent's deadline or, while a built batch is held at
    /// the front of a streaming window, the budget's.
    fn next_wake(&self) -> Duration {
        let held = self.held_until.filter(|_| {
            self.agent.is_streaming() && self.ahead.front().is_some_and(|s| s.done.is_some())
        });
        let at = match (self.agent.next_deadline(), held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        at.map(|t| Duration::from_millis(t.saturating_sub(self.now())))
            .unwrap_or(Duration::from_secs(3600))
    }

    /// Starts building the requests the agent will make after those already being built, up
    /// to a window's worth, assuming each batch is as long as its request allows (true unless
    /// its byte limit cuts it short, which `send_due` notices).
    fn build_ahead(&mut self) {
        if !self.agent.is_streaming() {
            return;
        }
        let c = self.cfg.agent;
        while self.ahead.len() < c.max_inflight_batches {
            let first = match self.ahead.back() {
                Some(s) => s.req.first_seq + s.req.max_events as u64,
                None => self
                    .agent
                    .poll_send()
                    .map_or(self.next_unsent.max(self.agent.acked() + 1), |r| {
                        r.first_seq
                    }),
            };
            if first > self.agent.last_seq() {
                return;
            }
            let available = (self.agent.last_seq() - first + 1).min(usize::MAX as u64) as usize;
            self.start_build(BatchRequest {
                first_seq: first,
                max_events: c.max_batch_events.min(available),
                max_bytes: c.max_batch_bytes,
            });
        }
    }

    /// Builds and encodes `req` on the blocking pool; the outcome comes back on `built`.
    fn start_build(&mut self, req: BatchRequest) {
        let id = self.next_slot;
        self.next_slot += 1;
        self.ahead.push_back(Slot {
            id,
            req,
            done: None,
        });
        let (s, c, r, tx) = (
            Arc::clone(&self.deps.spool),
            Arc::clone(&self.deps.codec),
            self.replica.clone(),
            self.built.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let packed = build_batch(&s, &c, &r, &req)
                .map(|built| {
                    let bytes = c.encode_batch(&built.batch).ok();
                    Packed { built, bytes }
                })
                .map_err(UplinkError::from);
            let _ = tx.send((id, packed)); // the uplink may be gone
        });
    }

    /// A build finished: its slot holds the outcome (a slot already dropped as stale is gone,
    /// and so is its outcome, failed or not).
    fn on_built(&mut self, id: u64, packed: Result<Packed, UplinkError>) {
        if let Some(slot) = self.ahead.iter_mut().find(|s| s.id == id) {
            slot.done = Some(packed);
        }
    }

    async fn on_connected(&mut self) {
        let m = &self.deps.metrics;
        self.backoff = self.cfg.backoff_min;
        m.link_up.set(1);
        if self.connected_once {
            m.reconnects.inc();
        }
        self.connected_once = true;
        tracing::info!(host = %self.cfg.host, port = self.cfg.port, "uplink connected");
        self.agent.connected(self.now());
        let _ = self
            .client
            .subscribe(self.ack_topic.as_str(), QoS::AtLeastOnce)
            .await;
    }

    /// A server ack for this replica: the agent's window advances and the spool is trimmed
    /// behind it.
    async fn on_ack(&mut self, payload: &[u8]) -> Result<(), UplinkError> {
        self.deps.metrics.acks.inc();
        let Ok(ack) = self.deps.codec.decode_ack(payload) else {
            return Ok(());
        };
        if ack.replica != self.replica {
            return Ok(());
        }
        if let AckEffect::Advanced { trim_to } = self.agent.on_ack(ack.watermark, self.now()) {
            crash_point("uplink.after_ack");
            self.trim.send_replace(trim_to);
        }
        Ok(())
    }

    /// The connection is lost: wait (backoff with jitter, doubling) before the event loop
    /// connects again.
    async fn on_lost(&mut self, error: rumqttc::ConnectionError, shutdown: &CancellationToken) {
        let m = &self.deps.metrics;
        m.disconnects.inc();
        m.link_up.set(0);
        self.agent.disconnected();
        self.release_hold();
        let wait = self.jitter.spread(self.backoff);
        tracing::warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "uplink connection lost");
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Runs until `shutdown` is cancelled; what it does is counted in `deps.metrics`.
pub async fn run(
    cfg: UplinkConfig,
    deps: UplinkDeps,
    shutdown: CancellationToken,
) -> Result<(), UplinkError> {
    let meta = deps.spool.meta();
    let durable = AgentDurable {
        last_seq: meta.next_seq - 1,
        acked: meta.acked,
    };
    let (client, mut events) = AsyncClient::new(cfg.mqtt_options(cfg.device.as_str()), 64);
    // A batch or a PUBACK must not wait for the broker's delayed TCP acknowledgement of the
    // last small packet (Nagle): with a window of a few batches that is a 40 ms stall per turn.
    events.network_options.set_tcp_nodelay(true);
    let (built, mut built_rx) = mpsc::unbounded_channel();
    let (trim, trims) = watch::channel(meta.acked);
    let mut trimmer = tokio::spawn(trim_behind(Arc::clone(&deps.spool), trims));
    let mut u = Uplink {
        agent: Agent::new(cfg.agent, durable)?,
        replica: ReplicaId::new(cfg.device.clone(), meta.incarnation),
        batch_topic: topics::batch(&cfg.device),
        ack_topic: topics::ack(&cfg.device),
        started: Instant::now(),
        backoff: cfg.backoff_min,
        jitter: Jitter(meta.incarnation.get() | 1),
        connected_once: false,
        ahead: VecDeque::new(),
        next_unsent: meta.acked + 1,
        next_slot: 0,
        built,
        trim,
        client,
        budget: Budget::new(
            cfg.max_bytes_per_sec,
            cfg.daily_budget_bytes,
            0,
            edgesync_servicekit::now_ms(),
        ),
        held_until: None,
        deps,
        cfg,
    };
    let appended = Arc::clone(&u.deps.appended);
    loop {
        u.send_due().await?;
        if u.agent.take_ack_request() {
            // The agent asks for the server's current watermark (a batch timed out): subscribing
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
                    u.on_ack(&p.payload).await?;
                }
                Ok(_) => {}
                Err(e) => u.on_lost(e, &shutdown).await,
            },
            Some((id, packed)) = built_rx.recv() => u.on_built(id, packed),
            _ = tokio::time::sleep(tick) => {
                let now = u.now();
                u.agent.on_tick(now);
            }
            _ = appended.notified() => {}
            trimmed = &mut trimmer => return Err(match trimmed {
                Ok(Ok(())) => UplinkError::TrimStopped,
                Ok(Err(e)) => e,
                Err(e) => e.into(),
            }),
            _ = shutdown.cancelled() => {}
        }
        if shutdown.is_cancelled() {
            u.deps.metrics.link_up.set(0);
            let _ = u.client.disconnect().await;
            // The last trim asked for finishes; what it would have trimmed is sent again after
            // a restart only if it did not, and the server ignores it.
            drop(u);
            return trimmer.await?;
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
