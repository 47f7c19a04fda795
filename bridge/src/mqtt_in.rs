//! MQTT → Kafka: every batch is acknowledged to MQTT only after Kafka's delivery report.
//!
//! MQTT 5, so that the broker honours our *receive maximum*: it never has more than
//! `max_inflight` unacknowledged batches out to us. Three tasks, so that the MQTT event loop
//! is never blocked by Kafka (an event loop that waits cannot send the PUBACKs the rest of the
//! pipeline is waiting for):
//!
//! 1. the **event loop** keeps the session (persistent, manual acks, shared subscription) and
//!    hands each PUBLISH to the producer task;
//! 2. the **producer** classifies it (forward or dead-letter, see [`crate::validate`]) and
//!    enqueues the Kafka record, passing the delivery future on in receive order;
//! 3. the **acker** awaits the delivery reports in that order and sends each PUBACK once its
//!    record is in Kafka (MQTT wants acknowledgements in the order messages arrived). A failed
//!    delivery is produced again after a pause, never skipped.
//!
//! Back-pressure: at most `max_inflight` messages are between receipt and PUBACK: the MQTT 5
//! receive maximum, which the broker honours when acknowledgements stop (Kafka slow or down):
//! the window fills, the broker stops sending and keeps the rest; nothing is dropped. The
//! event loop itself never waits (it is what sends the PUBACKs), so the bound is the broker's
//! to keep. Mosquitto 2.0.11 exceeds it while draining a restored session's backlog with
//! acknowledgements flowing (75k in flight against a receive maximum of 10k, measured by the
//! throughput benchmark); then its per-session queue limit (`max_queued_messages` in
//! `deploy/mosquitto.conf`) bounds what can arrive, and `edgesync_bridge_inflight_peak` /
//! `inflight_bytes` show it. On shutdown the event loop stops
//! taking new messages (those stay unacknowledged and the broker delivers them again to the
//! session) while the in-flight ones are delivered and acknowledged.

use edgesync_servicekit::crash::crash_point;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_schemas::{Codec, DeadLetter, DeadLetterReason, MessageKind};
use edgesync_servicekit::mqtt::MqttSecurity;
use edgesync_servicekit::now_ms;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::BridgeMetrics;
use crate::validate::{classify, Verdict};

/// MQTT side settings.
#[derive(Clone, Debug)]
pub struct MqttIn {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Persistent session's client id.
    pub client_id: String,
    /// Shared-subscription group; empty = plain subscription.
    pub shared_group: String,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// Most messages between receipt and PUBACK.
    pub max_inflight: usize,
    /// TLS and credentials.
    pub security: MqttSecurity,
}

/// The batch topic filter, shared or not.
pub fn subscription(shared_group: &str) -> String {
    let batches = edgesync_schemas::topics::BATCH_FILTER;
    if shared_group.is_empty() {
        batches.to_owned()
    } else {
        format!("$share/{shared_group}/{batches}")
    }
}

/// Largest MQTT packet the bridge reads: well above the batch limit, so oversize batches are
/// dead-lettered instead of breaking the session.
pub fn incoming_limit(max_payload: usize) -> usize {
    (max_payload * 4).max(16 << 20)
}

/// Kafka side of the forwarding path.
#[derive(Clone)]
pub struct KafkaOut {
    /// The producer.
    pub producer: FutureProducer,
    /// Batches go here, keyed by device.
    pub deltas_topic: String,
    /// Dead letters go here.
    pub dlq_topic: String,
    /// Largest accepted payload.
    pub max_payload: usize,
    /// Decodes batches for validation, encodes dead letters.
    pub codec: Arc<Codec>,
    /// Counters.
    pub metrics: Arc<BridgeMetrics>,
}

impl std::fmt::Debug for KafkaOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOut")
            .field("deltas_topic", &self.deltas_topic)
            .field("dlq_topic", &self.dlq_topic)
            .finish_non_exhaustive()
    }
}

/// A message received: one more (and its bytes) between receipt and PUBACK.
fn inflight_received(m: &BridgeMetrics, bytes: usize) {
    let n = m.inflight.inc() + 1;
    m.inflight_bytes.inc_by(bytes as i64);
    if n > m.inflight_peak.get() {
        m.inflight_peak.set(n);
    }
}

/// One message on its way: what to produce, and the delivery it waits for.
struct Pending {
    publish: Publish,
    received: Instant,
    record: Outgoing,
    delivery: DeliveryFuture,
}

/// A Kafka record, kept so it can be produced again after a failed delivery.
struct Outgoing {
    topic: String,
    key: Vec<u8>,
    /// The MQTT payload itself for a batch (no copy), the encoded record for a dead letter.
    payload: bytes::Bytes,
    dead: Option<DeadLetterReason>,
}

/// The persistent session's options: manual acks, a receive maximum of the window, packets
/// large enough for oversize batches to arrive (and be dead-lettered).
fn session_options(cfg: &MqttIn, max_payload: usize) -> MqttOptions {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    // A persistent session: what arrives while the bridge restarts waits for it.
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(7 * 24 * 3600));
    // The config refuses windows above the protocol's u16.
    opts.set_receive_maximum(Some(u16::try_from(cfg.max_inflight).unwrap_or(u16::MAX)));
    opts.set_manual_acks(true);
    opts.set_keep_alive(cfg.keep_alive);
    // Oversize batches must arrive to be dead-lettered: a packet over rumqttc's own limit
    // would drop the connection and come back forever. The broker's message size limit
    // (deploy/mosquitto.conf) must stay below this.
    opts.set_max_packet_size(Some(incoming_limit(max_payload) as u32));
    cfg.security.apply_v5(&mut opts);
    opts
}

/// Disconnects, and lets the DISCONNECT go out (for at most 500 ms).
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(ev) = events.poll().await {
            if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = ev {
                break;
            }
        }
    })
    .await;
}

/// Runs until `shutdown` is cancelled, then drains in-flight messages for at most `grace`.
pub async fn run(cfg: MqttIn, out: KafkaOut, shutdown: CancellationToken, grace: Duration) {
    // At most max_inflight PUBACKs can be pending: never a reason for the acker to wait.
    let mut opts = session_options(&cfg, out.max_payload);
    // PUBACKs leave at once (no Nagle): the broker holds a device's batch until it has one.
    let mut net = opts.network_options();
    net.set_tcp_nodelay(true);
    opts.set_network_options(net);
    let (client, mut events) = AsyncClient::new(opts, cfg.max_inflight + 64);
    // Unbounded on purpose: the receive maximum bounds it, and the event loop must not wait.
    let (to_producer, from_loop) = mpsc::unbounded_channel::<(Publish, Instant)>();
    let (to_acker, from_producer) = mpsc::channel::<Pending>(cfg.max_inflight);
    let producer = tokio::spawn(produce(from_loop, to_acker, out.clone()));
    let acker = tokio::spawn(ack(from_producer, client.clone(), out.clone()));
    let filter = subscription(&cfg.shared_group);
    let mut connected_once = false;
    let mut to_producer = Some(to_producer);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut acker = acker;
    loop {
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                // Stop taking messages; what is in flight is delivered and acknowledged.
                tracing::info!("bridge stopping: draining in-flight messages");
                drop(to_producer.take());
                drain_deadline = Some(tokio::time::Instant::now() + grace);
                continue;
            }
            _ = &mut acker, if drain_deadline.is_some() => break,
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)), if drain_deadline.is_some() => {
                tracing::warn!("grace period over: unacknowledged messages will be redelivered to the session");
                break;
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if connected_once {
                    out.metrics.mqtt_reconnects.inc();
                }
                connected_once = true;
                tracing::info!(session_present = ack.session_present, filter = %filter, "bridge connected to MQTT");
                // Subscribe on every connect, even with a session present: a broker restored
                // from persistence may keep the session but not its shared subscription
                // (seen with Mosquitto), and subscribing again is harmless.
                let _ = client.subscribe(filter.as_str(), QoS::AtLeastOnce).await;
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                tracing::info!(filter = %filter, "bridge subscribed");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(tx) = &to_producer else {
                    continue; // stopping: left unacknowledged, redelivered later
                };
                out.metrics.received.inc();
                if p.dup {
                    out.metrics.redelivered.inc();
                }
                inflight_received(&out.metrics, p.payload.len());
                if tx.send((p, Instant::now())).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "MQTT connection lost");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled(), if drain_deadline.is_none() => {}
                }
            }
        }
    }
    producer.abort();
    disconnect(&client, &mut events).await;
}

/// Classifies each message and enqueues its record; hands the deliveries on in order.
async fn produce(
    mut rx: mpsc::UnboundedReceiver<(Publish, Instant)>,
    tx: mpsc::Sender<Pending>,
    out: KafkaOut,
) {
    while let Some((publish, received)) = rx.recv().await {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        let record = match classify(&topic, &publish.payload, &out.codec, out.max_payload) {
            Verdict::Forward { device } => Outgoing {
                topic: out.deltas_topic.clone(),
                key: device.as_str().as_bytes().to_vec(),
                payload: publish.payload.clone(),
                dead: None,
            },
            Verdict::Dead {
                reason,
                detail,
                device,
            } => {
                tracing::warn!(topic = %topic, reason = reason.symbol(), detail = %detail, "dead-lettered");
                let dl = DeadLetter {
                    reason,
                    detail,
                    source: format!("mqtt:{topic}"),
                    device: device.clone(),
                    received_at_ms: now_ms(),
                    payload: publish.payload.to_vec(),
                };
                let payload = match out
                    .codec
                    .encode_dead_letter(&dl, out.codec.output_framing(MessageKind::DeadLetter))
                {
                    Ok(b) => b,
                    Err(e) => {
                        // Cannot happen for a well-formed record; keep the message unacknowledged.
                        tracing::error!(error = %e, "encode dead letter");
                        continue;
                    }
                };
                Outgoing {
                    topic: out.dlq_topic.clone(),
                    key: device.unwrap_or_else(|| topic.clone()).into_bytes(),
                    payload: payload.into(),
                    dead: Some(reason),
                }
            }
        };
        let delivery = send(&out.producer, &record).await;
        if tx
            .send(Pending {
                publish,
                received,
                record,
                delivery,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Enqueues a record in librdkafka, waiting while its queue is full. No headers: the key names
/// the device and the MQTT topic follows from it (a header per record cost the broker ~20 %).
async fn send(producer: &FutureProducer, r: &Outgoing) -> DeliveryFuture {
    loop {
        let rec = FutureRecord::to(&r.topic)
            .key(&r.key)
            .payload(&r.payload[..]);
        match producer.send_result(rec) {
            Ok(d) => return d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                tracing::debug!("producer queue full; waiting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Not expected (records are bounded by `MAX_RECORD_VALUE_BYTES`); still never
            // skipped, since the message is acknowledged only once Kafka has it.
            Err((e, _)) => {
                tracing::error!(error = %e, topic = %r.topic, "Kafka refused the record; producing again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Awaits deliveries in receive order and acknowledges each message once Kafka has it.
async fn ack(mut rx: mpsc::Receiver<Pending>, client: AsyncClient, out: KafkaOut) {
    while let Some(mut p) = rx.recv().await {
        loop {
            match (&mut p.delivery).await {
                Ok(Ok(_)) => break,
                Ok(Err((e, _))) => {
                    out.metrics.produce_retries.inc();
                    tracing::error!(error = %e, topic = %p.record.topic, "Kafka delivery failed; producing again");
                }
                Err(_canceled) => {
                    out.metrics.produce_retries.inc();
                    tracing::error!("Kafka delivery report lost; producing again");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            p.delivery = send(&out.producer, &p.record).await;
        }
        out.metrics
            .produce_latency
            .observe(p.received.elapsed().as_secs_f64());
        match &p.record.dead {
            None => {
                out.metrics.forwarded.inc();
            }
            Some(reason) => out.metrics.dead_lettered.inc(&reason.label()),
        }
        crash_point("bridge.after_delivery");
        if client.ack(&p.publish).await.is_err() {
            return; // the event loop is gone
        }
        crash_point("bridge.after_puback");
        out.metrics.mqtt_acked.inc();
        out.metrics.inflight.dec();
        out.metrics
            .inflight_bytes
            .dec_by(p.publish.payload.len() as i64);
    }
}
