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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgesync_core::Incarnation;
use edgesync_schemas::Codec;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::metrics::BridgeMetrics;
use crate::mqtt_in::MqttIn;

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
    let subscribed = || {
        let c = new_consumer()?;
        c.subscribe(&[acks_topic.as_str()])?;
        Ok::<_, KafkaError>(c)
    };
    let mut consumer = match subscribed() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "subscribe to the acks topic");
            return;
        }
    };
    let mut opts = MqttOptions::new(format!("{}.acks", mqtt.client_id), mqtt.host, mqtt.port);
    opts.set_clean_session(true);
    opts.set_keep_alive(mqtt.keep_alive);
    mqtt.security.apply(&mut opts);
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let loop_stop = shutdown.clone();
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
                _ = loop_stop.cancelled() => break,
            }
        }
    });
    let mut latest: HashMap<String, (Incarnation, u64)> = HashMap::new();
    loop {
        let msg = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.cancelled() => break,
        };
        if let Err(e @ KafkaError::MessageConsumptionFatal(_)) = &msg {
            tracing::error!(error = %e, "acks consumer unusable; joining again with a new one");
            drop(msg);
            tokio::time::sleep(Duration::from_secs(1)).await;
            match subscribed() {
                Ok(c) => consumer = c,
                Err(e) => tracing::error!(error = %e, "subscribe to the acks topic"),
            }
            continue;
        }
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "acks consumer");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
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
        let device = ack.replica.device.to_string();
        let inc = ack.replica.incarnation;
        match latest.get(&device) {
            Some((i, w)) if *i == inc && *w >= ack.watermark => {
                metrics.acks_stale.inc();
                continue;
            }
            _ => {}
        }
        let topic = edgesync_schemas::topics::ack(&ack.replica.device);
        if client
            .publish(topic, QoS::AtLeastOnce, true, payload.to_vec())
            .await
            .is_err()
        {
            break;
        }
        latest.insert(device, (inc, ack.watermark));
        metrics.acks_published.inc();
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), event_loop).await;
}
