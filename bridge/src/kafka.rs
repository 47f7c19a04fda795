//! Kafka clients of the bridge: the producer for batches and dead letters, the consumer of the
//! acks topic, and topic creation at start-up.

use edgesync_servicekit::kafka::{self, client_config, TopicSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use crate::config::KafkaSection;

/// A client config with the bootstrap servers and every pass-through property.
pub fn base_config(k: &KafkaSection) -> ClientConfig {
    client_config(&[], &k.bootstrap_servers, &k.properties)
}

/// The producer ([`kafka::durable_producer_config`]), with the configured compression and a
/// 5 ms linger.
pub fn producer(k: &KafkaSection) -> Result<FutureProducer, KafkaError> {
    kafka::durable_producer_config(&k.bootstrap_servers, &k.properties, &k.compression, 5).create()
}

/// Waits until `topic` has a leader for every partition, asking through the producer itself so
/// that its first records do not wait on a metadata lookup; retries every second. The bridge
/// takes no MQTT message before this: a batch it cannot forward would only sit in its window.
/// Returns false when `shutdown` comes first.
pub async fn wait_ready(
    producer: &FutureProducer,
    topic: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    use rdkafka::producer::Producer;
    let mut logged = false;
    loop {
        let (p, t) = (producer.clone(), topic.to_owned());
        let ready = tokio::task::spawn_blocking(move || {
            let md = p
                .client()
                .fetch_metadata(Some(&t), std::time::Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let topic = md
                .topics()
                .iter()
                .find(|x| x.name() == t)
                .ok_or_else(|| format!("topic {t} not in metadata"))?;
            if let Some(e) = topic.error() {
                return Err(format!("topic {t}: {e:?}"));
            }
            if topic.partitions().is_empty() || topic.partitions().iter().any(|p| p.leader() < 0) {
                return Err(format!("topic {t}: a partition has no leader"));
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match ready {
            Ok(()) => {
                if logged {
                    tracing::info!(topic, "Kafka ready");
                }
                return true;
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "waiting for Kafka before taking MQTT messages");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return false,
        }
    }
}

/// The consumer of the acks topic, a static member (KIP-345) of the acks group named
/// `<member>-acks`: a restarted bridge gets its partitions back at once instead of after the
/// dead member's session timeout.
pub fn acks_consumer(k: &KafkaSection, member: &str) -> Result<StreamConsumer, KafkaError> {
    let instance = format!("{member}-acks");
    client_config(
        &[
            ("group.id", &k.acks_group),
            ("group.instance.id", &instance),
            ("enable.auto.commit", "true"),
            ("auto.offset.reset", "earliest"),
            // Acks reach devices without waiting out librdkafka's 500 ms default.
            ("fetch.wait.max.ms", "10"),
        ],
        &k.bootstrap_servers,
        &k.properties,
    )
    .create()
}

/// Creates the deltas, acks and dead-letter topics when missing.
pub async fn ensure_topics(k: &KafkaSection) -> Result<(), KafkaError> {
    let specs: Vec<TopicSpec> = [&k.deltas_topic, &k.acks_topic, &k.dlq_topic]
        .into_iter()
        .map(|t| TopicSpec {
            name: t,
            partitions: k.partitions,
            replication: k.replication_factor,
            config: vec![],
        })
        .collect();
    kafka::ensure_topics(&base_config(k), &specs).await
}
