//! Ingest from a local MQTT broker that sensors on the gateway publish to.
//!
//! A persistent session (clean session off) with manual acknowledgements: a message is
//! acknowledged to the broker only after its events are durable in the spool, so a message
//! published while the agent is down or restarting waits in the broker. A message that is not
//! a valid event is acknowledged (it would never become valid), counted as refused and logged
//! with its reason. While the spool is full under the block policy the message is retried,
//! not acknowledged: the broker's in-flight window turns that into back-pressure on sensors.
//! Delivery from the local broker is at least once: a crash between the spool write and the
//! broker ack stores the message's events again, with new seqs.
//!
//! Messages under `spBv1.0/` are Sparkplug B when `[ingest_mqtt.sparkplug]` is set: the
//! [`Sparkplug`] host state turns them into events, and a rebirth request it asks for is
//! published after the message's events are stored (commands are QoS 0, as the spec has them).
//! Everything else is edgesync's JSON.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio_util::sync::CancellationToken;

use crate::ingest::json::parse_json;
use crate::ingest::sparkplug::{Command, Sparkplug, NAMESPACE};
use crate::ingest::{IngestError, IngestEvent};
use crate::lanes::{Intake, Part};
use crate::metrics::AgentMetrics;

/// Local subscription settings.
#[derive(Clone, Debug)]
pub struct MqttIngestConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Topic filters.
    pub topics: Vec<String>,
    /// Client id of the persistent session.
    pub client_id: String,
    /// The Sparkplug B host state, when Sparkplug is taken (shared with status).
    pub sparkplug: Option<Arc<Mutex<Sparkplug>>>,
}

/// Runs until `shutdown` is cancelled.
///
/// The MQTT event loop only receives and hands messages to a worker task, which appends and
/// acknowledges them in order: an event loop that is not polled while a message is being
/// stored stalls rumqttc's outgoing acknowledgements.
pub async fn run(
    cfg: MqttIngestConfig,
    ingest: Intake,
    metrics: std::sync::Arc<AgentMetrics>,
    shutdown: CancellationToken,
) {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(4 << 20, 4 << 20);
    // Larger than the worker's queue: acks must never wait for the event loop while the event
    // loop waits for the worker.
    let (client, mut events) = AsyncClient::new(opts, 16 * 1024);
    // The broker's in-flight window bounds unacknowledged QoS 1 messages; this bounds the rest.
    let (tx, rx) = tokio::sync::mpsc::channel::<Publish>(4096);
    let worker = tokio::spawn(store(
        rx,
        client.clone(),
        ingest,
        Decoder {
            sparkplug: cfg.sparkplug.clone(),
            metrics,
        },
        shutdown.clone(),
    ));
    loop {
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = shutdown.cancelled() => break,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "local MQTT ingest connected"
                );
                for t in &cfg.topics {
                    let _ = client.subscribe(t.as_str(), QoS::AtLeastOnce).await;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                tracing::info!("local MQTT ingest subscribed");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "local MQTT ingest connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
    }
    drop(tx);
    let _ = worker.await;
    let _ = client.disconnect().await;
}

/// Turns messages into events, counting what it refuses.
struct Decoder {
    sparkplug: Option<Arc<Mutex<Sparkplug>>>,
    metrics: Arc<AgentMetrics>,
}

impl Decoder {
    /// The message's events (none for a message that is refused whole) and the command to
    /// publish once they are stored.
    fn decode(&self, p: &Publish) -> (Vec<IngestEvent>, Option<Command>) {
        match &self.sparkplug {
            Some(sp)
                if p.topic
                    .strip_prefix(NAMESPACE)
                    .is_some_and(|t| t.starts_with('/')) =>
            {
                self.sparkplug(sp, p)
            }
            _ => match parse_json(&p.payload) {
                Ok(e) => (e, None),
                Err(e) => {
                    self.metrics.refused("mqtt", "invalid", 1);
                    tracing::warn!(topic = %p.topic, reason = %e, "local MQTT message refused");
                    (Vec::new(), None)
                }
            },
        }
    }

    fn sparkplug(&self, sp: &Mutex<Sparkplug>, p: &Publish) -> (Vec<IngestEvent>, Option<Command>) {
        let now = edgesync_servicekit::now_ms();
        let mut host = sp.lock().unwrap_or_else(|e| e.into_inner());
        let out = host.handle(&p.topic, &p.payload, now);
        self.metrics.sparkplug_seen(
            out.kind,
            &out.problems,
            out.rebirth.is_some(),
            &host.census(),
        );
        drop(host);
        for problem in &out.problems {
            tracing::warn!(topic = %p.topic, %problem, "Sparkplug B message");
        }
        (out.events, out.rebirth)
    }
}

/// Appends each message's events and acknowledges it once they are durable.
async fn store(
    mut rx: tokio::sync::mpsc::Receiver<Publish>,
    client: AsyncClient,
    ingest: Intake,
    decoder: Decoder,
    shutdown: CancellationToken,
) {
    while let Some(p) = rx.recv().await {
        let (events, command) = decoder.decode(&p);
        if !events.is_empty() && !append(&ingest, &p, events, &shutdown).await {
            return;
        }
        let _ = client.ack(&p).await;
        if let Some(c) = command {
            tracing::info!(topic = %c.topic, "Sparkplug B rebirth requested");
            let _ = client
                .publish(c.topic, QoS::AtMostOnce, false, c.payload)
                .await;
        }
    }
}

/// Appends `events` in requests within the ingest limit, each split by lane, waiting while a
/// lane's spool is full (a part stored is not stored again while another waits); false when
/// shutdown came first (the message stays unacknowledged and the broker delivers it again: at
/// least once, as the module header says).
async fn append(
    ingest: &Intake,
    p: &Publish,
    events: Vec<IngestEvent>,
    shutdown: &CancellationToken,
) -> bool {
    for chunk in events.chunks(ingest.max_request_events().max(1)) {
        // Bad input refuses the whole chunk, whatever lanes it spans, before any is stored.
        if ingest.spans_lanes(chunk) {
            if let Err(e) = ingest.validate("mqtt", chunk) {
                tracing::warn!(topic = %p.topic, reason = %e, "local MQTT message refused");
                return true;
            }
        }
        for part in ingest.by_lane(chunk.to_vec()) {
            if !append_one(ingest, p, &part, shutdown).await {
                return false;
            }
        }
    }
    true
}

async fn append_one(
    ingest: &Intake,
    p: &Publish,
    part: &Part,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        match ingest.append_part("mqtt", part).await {
            Ok(_) => return true,
            Err(
                e @ (IngestError::Invalid { .. }
                | IngestError::TooMany { .. }
                | IngestError::TooLarge { .. }),
            ) => {
                tracing::warn!(topic = %p.topic, reason = %e, "local MQTT message refused");
                return true;
            }
            Err(e) => {
                tracing::debug!(reason = %e, "local MQTT message waits for room in the spool");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => return false,
                }
            }
        }
    }
}
