//! Kafka → MQTT: the reconciler's acknowledgements back to devices.
//!
//! Consumes the acks topic and publishes each device's latest watermark, retained, QoS 1, on
//! the device's ack topic (`edgesync_schemas::topics`), so an agent that connects later finds
//! it at once. A watermark not newer than the one already published for the same replica is
//! skipped (after a consumer rewind or from another bridge); a new incarnation replaces the
//! old one. Offsets are committed automatically after the publish is queued: a crash can lose
//! one ack publish, and then the agent re-sends after its timeout and the server acknowledges
//! again — at least once, harmless, because agents ignore stale acks.
//!
//! A fatal consumer error (the broker fencing our static `group.instance.id`, as Apache Kafka
//! does when a rejoin's group write times out during a broker failover and it reverts the
//! member id) leaves librdkafka's consumer unusable: the path then builds a new consumer with
//! the same instance id, which takes the partitions back. Without that, acks stop reaching
//! devices for good while everything else flows.

use edgesync_servicekit::crash::crash_point;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgesync_core::Incarnation;
use edgesync_schemas::{Ack, Codec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::BridgeMetrics;
use crate::mqtt_in::MqttIn;

/// The acks consumer, joined again with a new consumer (same instance id) after a fatal error.
struct Acks<F> {
    new_consumer: F,
    topic: String,
    consumer: StreamConsumer,
}

impl<F: Fn() -> Result<StreamConsumer, KafkaError>> Acks<F> {
    fn subscribed(new_consumer: &F, topic: &str) -> Result<StreamConsumer, KafkaError> {
        let c = new_consumer()?;
        c.subscribe(&[topic])?;
        Ok(c)
    }

    fn new(new_consumer: F, topic: String) -> Result<Self, KafkaError> {
        let consumer = Self::subscribed(&new_consumer, &topic)?;
        Ok(Acks {
            new_consumer,
            topic,
            consumer,
        })
    }

    /// The next ack record; waits out errors (logged), joining again after a fatal one.
    async fn next(&mut self) -> OwnedMessage {
        loop {
            match self.consumer.recv().await {
                Ok(m) => return m.detach(),
                Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                    tracing::error!(error = %e, "acks consumer unusable; joining again with a new one");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match Self::subscribed(&self.new_consumer, &self.topic) {
                        Ok(c) => self.consumer = c,
                        Err(e) => tracing::error!(error = %e, "subscribe to the acks topic"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "acks consumer");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// The MQTT client `<client_id>.acks` and its event loop (which runs until `stop`).
fn mqtt_client(mqtt: MqttIn, stop: CancellationToken) -> (AsyncClient, JoinHandle<()>) {
    let mut opts = MqttOptions::new(format!("{}.acks", mqtt.client_id), mqtt.host, mqtt.port);
    opts.set_clean_session(true);
    opts.set_keep_alive(mqtt.keep_alive);
    mqtt.security.apply(&mut opts);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    // A device's ack must not wait for the broker's delayed TCP acknowledgement of the last
    // one (Nagle, about 40 ms): the agent's window turns on it.
    events.network_options.set_tcp_nodelay(true);
    let event_loop = tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => tracing::info!("ack path connected to MQTT"),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "ack path MQTT connection lost");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = stop.cancelled() => break,
            }
        }
    });
    (client, event_loop)
}

/// The latest watermark published per device, with its incarnation.
#[derive(Default)]
struct Latest(HashMap<String, (Incarnation, u64)>);

impl Latest {
    /// Whether `ack` is newer than what was published for its device: a higher watermark, or
    /// another incarnation (which replaces the old one).
    fn is_new(&self, ack: &Ack) -> bool {
        let device = ack.replica.device.as_str();
        !matches!(self.0.get(device), Some((i, w)) if *i == ack.replica.incarnation && *w >= ack.watermark)
    }

    fn published(&mut self, ack: &Ack) {
        let entry = (ack.replica.incarnation, ack.watermark);
        self.0.insert(ack.replica.device.to_string(), entry);
    }
}

/// Runs until `shutdown` is cancelled; publishes as MQTT client `<mqtt.client_id>.acks`, with
/// the bridge's broker, keep-alive and security settings.
pub async fn run(
    new_consumer: impl Fn() -> Result<StreamConsumer, KafkaError> + Send,
    acks_topic: String,
    mqtt: MqttIn,
    codec: Arc<Codec>,
    metrics: Arc<BridgeMetrics>,
    shutdown: CancellationToken,
) {
    let mut acks = match Acks::new(new_consumer, acks_topic) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "subscribe to the acks topic");
            return;
        }
    };
    let (client, event_loop) = mqtt_client(mqtt, shutdown.clone());
    let mut latest = Latest::default();
    loop {
        let msg = tokio::select! {
            m = acks.next() => m,
            _ = shutdown.cancelled() => break,
        };
        let Some(payload) = msg.payload() else {
            continue;
        };
        let ack = match codec.decode_ack(payload) {
            Ok(a) => a,
            Err(e) => {
                metrics.acks_undecodable.inc();
                tracing::warn!(error = %e, partition = msg.partition(), offset = msg.offset(), "undecodable ack skipped");
                continue;
            }
        };
        if !latest.is_new(&ack) {
            metrics.acks_stale.inc();
            continue;
        }
        let topic = edgesync_schemas::topics::ack(&ack.replica.device);
        if client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
            .await
            .is_err()
        {
            break;
        }
        crash_point("bridge.ack.after_publish");
        latest.published(&ack);
        metrics.acks_published.inc();
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), event_loop).await;
}
