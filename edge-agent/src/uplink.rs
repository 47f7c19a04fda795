//! The uplink: one event loop that drives the protocol's agent state machine over MQTT.
//!
//! In the style of rumqttc itself (state machine without I/O, one loop that does the I/O): the
//! `edgesync_protocol::Agent` decides what to send and when to give up; this loop feeds it the
//! spool's new seqs, the connection's ups and downs, the server's acks (retained, on
//! `edgesync/v1/{device}/ack`) and the passing of time, publishes the batches it asks for
//! (QoS 1 on `edgesync/v1/{device}/batch`), and trims the spool behind every ack. A lost
//! connection is retried with exponential backoff and jitter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_core::{DeviceId, ReplicaId};
use edgesync_protocol::agent::AckEffect;
use edgesync_protocol::{Agent, AgentConfig, AgentDurable};
use edgesync_schemas::Codec;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::{watch, Notify};

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
}

/// Topic a device publishes its batches to.
pub fn batch_topic(device: &DeviceId) -> String {
    format!("edgesync/v1/{device}/batch")
}

/// Topic the server's (retained) acknowledgements arrive on.
pub fn ack_topic(device: &DeviceId) -> String {
    format!("edgesync/v1/{device}/ack")
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
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UplinkStats {
    /// Batches published.
    pub batches: u64,
    /// Payload bytes published.
    pub bytes: u64,
    /// Acks received.
    pub acks: u64,
    /// Connection losses.
    pub disconnects: u64,
    /// Spool records sent as dropped because they no longer decode.
    pub corrupt: u64,
}

/// Runs until `shutdown` turns true. `appended` is notified after every append to the spool.
pub async fn run(
    cfg: UplinkConfig,
    spool: Arc<Spool>,
    codec: Arc<Codec>,
    appended: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<UplinkStats, UplinkError> {
    let meta = spool.meta();
    let replica = ReplicaId::new(cfg.device.clone(), meta.incarnation);
    let mut agent = Agent::new(
        cfg.agent,
        AgentDurable {
            last_seq: meta.next_seq - 1,
            acked: meta.acked,
        },
    )?;
    let mut opts = MqttOptions::new(cfg.device.as_str(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_clean_session(true); // the retained ack is all the state a session needs
    opts.set_max_packet_size(4 << 20, 4 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let (batch_topic, ack_topic) = (batch_topic(&cfg.device), ack_topic(&cfg.device));
    let started = Instant::now();
    let now = || started.elapsed().as_millis() as u64;
    let mut stats = UplinkStats::default();
    let mut backoff = cfg.backoff_min;
    let mut jitter = Jitter(meta.incarnation.get() | 1);
    loop {
        // New seqs the spool made durable since the last turn.
        let last = spool.meta().next_seq - 1;
        for seq in agent.last_seq() + 1..=last {
            agent.appended(seq)?;
        }
        while let Some(req) = agent.poll_send() {
            let (batch, corrupt) = build_batch(&spool, &codec, &replica, &req)?;
            stats.corrupt += corrupt as u64;
            let Ok(bytes) = codec.encode_batch(&batch) else {
                break; // too large for the limits: the window shrinks on the next request
            };
            stats.batches += 1;
            stats.bytes += bytes.len() as u64;
            if client
                .publish(batch_topic.as_str(), QoS::AtLeastOnce, false, bytes)
                .await
                .is_err()
            {
                break; // the event loop is gone; shutdown follows
            }
            agent.sent(batch.first_seq(), batch.last_seq(), now())?;
        }
        let tick = agent
            .next_deadline()
            .map(|t| Duration::from_millis(t.saturating_sub(now())))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = cfg.backoff_min;
                    agent.connected(now());
                    let _ = client.subscribe(ack_topic.as_str(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == ack_topic => {
                    stats.acks += 1;
                    if let Ok(ack) = codec.decode_ack(&p.payload) {
                        if ack.replica == replica {
                            if let AckEffect::Advanced { trim_to } = agent.on_ack(ack.watermark, now()) {
                                spool.trim(trim_to)?;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    stats.disconnects += 1;
                    agent.disconnected();
                    let wait = jitter.spread(backoff);
                    backoff = (backoff * 2).min(cfg.backoff_max);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            },
            _ = tokio::time::sleep(tick) => agent.on_tick(now()),
            _ = appended.notified() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            let _ = client.disconnect().await;
            return Ok(stats);
        }
    }
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
