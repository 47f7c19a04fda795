//! Kafka plumbing shared by the services: client configs with pass-through properties, the
//! durable producer's settings, and topic creation at start-up.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A client config: `defaults` first, then the bootstrap servers and every pass-through
/// property (which win, so operators can override anything, e.g. SASL/SSL settings).
pub fn client_config(
    defaults: &[(&str, &str)],
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// The largest record value the services produce (a forwarded batch; dead letters keep at most
/// 64 KiB of their input): under Kafka's default record-batch limit (`message.max.bytes`,
/// 1,048,588 bytes) with room for the key and framing, so no broker left on its defaults
/// refuses a record the bridge accepted. Refusing one would stall the device's stream behind
/// it: a record is produced again until Kafka has it, never skipped.
pub const MAX_RECORD_VALUE_BYTES: usize = 1_000_000;

/// The producer's own request limit: above [`MAX_RECORD_VALUE_BYTES`] plus key and framing.
const PRODUCER_MESSAGE_MAX_BYTES: &str = "1048576";

/// The settings every edgesync producer shares, as a client config (see [`client_config`] for
/// how pass-through properties win): idempotent with `acks=all`, so a retry never doubles or
/// reorders a record and an acknowledged one survives a broker's loss; keys hashed like the
/// Java client (murmur2), so every client puts a device in the same partition; no delivery
/// deadline (`message.timeout.ms=0`), because a hop acknowledges upstream only once Kafka has
/// the record and giving up would only mean a redelivery. `compression` and `linger_ms` are
/// each service's own trade of CPU and latency against bytes.
pub fn durable_producer_config(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
    compression: &str,
    linger_ms: u32,
) -> ClientConfig {
    let linger = linger_ms.to_string();
    client_config(
        &[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("partitioner", "murmur2_random"),
            ("message.timeout.ms", "0"),
            ("compression.type", compression),
            ("linger.ms", &linger),
            ("message.max.bytes", PRODUCER_MESSAGE_MAX_BYTES),
        ],
        bootstrap,
        properties,
    )
}

/// A topic to create if missing.
#[derive(Clone, Debug)]
pub struct TopicSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// Partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// Topic configs (e.g. `cleanup.policy=compact`).
    pub config: Vec<(&'a str, &'a str)>,
}

/// How long start-up waits for the cluster's metadata.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The partition count of each topic the cluster has (one metadata request, which any live
/// broker answers).
pub async fn existing_topics(config: &ClientConfig) -> Result<BTreeMap<String, i32>, KafkaError> {
    let c = config.clone();
    tokio::task::spawn_blocking(move || partition_counts(&c))
        .await
        .map_err(|_| KafkaError::Canceled)?
}

fn partition_counts(config: &ClientConfig) -> Result<BTreeMap<String, i32>, KafkaError> {
    // A consumer: a producer's metadata request would create a topic it names.
    let c: BaseConsumer = config.create()?;
    let md = c.fetch_metadata(None, METADATA_TIMEOUT)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

/// Creates every topic of `specs` that does not exist yet ([`create_missing`] on
/// [`existing_topics`]).
pub async fn ensure_topics(
    config: &ClientConfig,
    specs: &[TopicSpec<'_>],
) -> Result<(), KafkaError> {
    create_missing(config, specs, &existing_topics(config).await?).await
}

/// Creates every topic of `specs` that `existing` lacks. When all exist (every start but the
/// first) no admin request is made: creating goes through the cluster's controller, which a
/// restart while a broker is down could wait a request timeout for.
pub async fn create_missing(
    config: &ClientConfig,
    specs: &[TopicSpec<'_>],
    existing: &BTreeMap<String, i32>,
) -> Result<(), KafkaError> {
    let missing: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| !existing.contains_key(s.name))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tracing::info!(topics = ?missing.iter().map(|s| s.name).collect::<Vec<_>>(), "creating topics");
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let topics: Vec<NewTopic> = missing
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(s.name, s.partitions, TopicReplication::Fixed(s.replication));
            for (k, v) in &s.config {
                t = t.set(k, v);
            }
            t
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
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}
