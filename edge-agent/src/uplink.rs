//! The uplink: one event loop that drives the protocol's agent state machine over MQTT.
//!
//! In the style of rumqttc itself (state machine without I/O, one loop that does the I/O): the
//! `edgesync_protocol::Agent` decides what to send and when to give up; this loop feeds it the
//! spool's new seqs, the connection's ups and downs, the server's acks (retained, on the
//! device's ack topic: `edgesync_schemas::topics`) and the passing of time, publishes the
//! batches it asks for (QoS 1 on its batch topic), and trims the spool behind every ack. A lost
//! connection is retried with exponential backoff and jitter. TLS (and mutual TLS) and a
//! per-device user name and password are optional.

use edgesync_servicekit::crash::crash_point;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::{DeviceId, ReplicaId};
use edgesync_protocol::agent::AckEffect;
use edgesync_protocol::{Agent, AgentConfig, AgentDurable};
use edgesync_schemas::{topics, Codec};
use edgesync_servicekit::mqtt::MqttSecurity;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;
use crate::outbox::{build_batch, OutboxError};
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
}

impl Uplink {
    /// Milliseconds since the uplink started (the protocol's clock).
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Tells the agent of the seqs the spool made durable since the last turn, then builds
    /// and publishes every batch it asks for.
    async fn send_due(&mut self) -> Result<(), UplinkError> {
        let last = self.deps.spool.meta().next_seq - 1;
        for seq in self.agent.last_seq() + 1..=last {
            self.agent.appended(seq)?;
        }
        while let Some(req) = self.agent.poll_send() {
            let (s, c, r) = (
                Arc::clone(&self.deps.spool),
                Arc::clone(&self.deps.codec),
                self.replica.clone(),
            );
            let (built, encoded) = blocking(move || {
                let built = build_batch(&s, &c, &r, &req)?;
                let encoded = c.encode_batch(&built.batch);
                Ok((built, encoded))
            })
            .await?;
            let m = &self.deps.metrics;
            m.corrupt(built.corrupt as u64);
            let Ok(bytes) = encoded else {
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
        }
        Ok(())
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
            let s = Arc::clone(&self.deps.spool);
            blocking(move || Ok(s.trim(trim_to)?)).await?;
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
    let mut u = Uplink {
        agent: Agent::new(cfg.agent, durable)?,
        replica: ReplicaId::new(cfg.device.clone(), meta.incarnation),
        batch_topic: topics::batch(&cfg.device),
        ack_topic: topics::ack(&cfg.device),
        started: Instant::now(),
        backoff: cfg.backoff_min,
        jitter: Jitter(meta.incarnation.get() | 1),
        connected_once: false,
        client,
        deps,
        cfg,
    };
    let appended = Arc::clone(&u.deps.appended);
    loop {
        u.send_due().await?;
        let tick = u
            .agent
            .next_deadline()
            .map(|t| Duration::from_millis(t.saturating_sub(u.now())))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => u.on_connected().await,
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == u.ack_topic => {
                    u.on_ack(&p.payload).await?;
                }
                Ok(_) => {}
                Err(e) => u.on_lost(e, &shutdown).await,
            },
            _ = tokio::time::sleep(tick) => {
                let now = u.now();
                u.agent.on_tick(now);
            }
            _ = appended.notified() => {}
            _ = shutdown.cancelled() => {}
        }
        if shutdown.is_cancelled() {
            u.deps.metrics.link_up.set(0);
            let _ = u.client.disconnect().await;
            return Ok(());
        }
    }
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
