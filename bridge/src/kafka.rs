//! Kafka clients of the bridge: the producer for batches and dead letters, the consumer of the
//! acks topic, and topic creation at start-up.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaSection;

/// A client config with the bootstrap servers and every pass-through property.
pub fn base_config(k: &KafkaSection) -> ClientConfig {
    let mut c = ClientConfig::new();
    pass_through(&mut c, k);
    c
}

/// Sets the bootstrap servers and the pass-through properties (which win over defaults set
/// before).
fn pass_through(c: &mut ClientConfig, k: &KafkaSection) {
    c.set("bootstrap.servers", &k.bootstrap_servers);
    for (key, value) in &k.properties {
        c.set(key, value);
    }
}

/// The producer: idempotent, `acks=all`, key-hashed like the Java client (murmur2) so every
/// client puts a device in the same partition, retrying without a deadline (a batch is
/// acknowledged to MQTT only once delivered, so giving up would only mean a redelivery).
pub fn producer(k: &KafkaSection) -> Result<FutureProducer, KafkaError> {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("compression.type", &k.compression)
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5");
    pass_through(&mut c, k);
    c.create()
}

/// The consumer of the acks topic.
pub fn acks_consumer(k: &KafkaSection) -> Result<StreamConsumer, KafkaError> {
    let mut c = ClientConfig::new();
    c.set("group.id", &k.acks_group)
        .set("enable.auto.commit", "true")
        .set("auto.offset.reset", "earliest");
    pass_through(&mut c, k);
    c.create()
}

/// Creates the deltas, acks and dead-letter topics when missing.
pub async fn ensure_topics(k: &KafkaSection) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base_config(k).create()?;
    let topics: Vec<NewTopic> = [&k.deltas_topic, &k.acks_topic, &k.dlq_topic]
        .into_iter()
        .map(|t| {
            NewTopic::new(
                t,
                k.partitions,
                TopicReplication::Fixed(k.replication_factor),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(t) => tracing::info!(topic = %t, "topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => {
                tracing::error!(topic = %t, error = %code, "topic creation failed");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}
