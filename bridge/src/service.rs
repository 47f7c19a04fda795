//! The bridge as a service: topics ensured, the MQTT → Kafka path and the ack path running
//! under one cancellation token, `/metrics` served, in-flight work drained on shutdown.

use std::sync::Arc;
use std::time::Duration;

use edgesync_schemas::{Codec, Limits, MessageKind};
use edgesync_servicekit::mqtt::MqttSecurity;
use edgesync_servicekit::ops;
use edgesync_servicekit::registry::framed;
use edgesync_servicekit::security::SecurityFiles;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::metrics::BridgeMetrics;
use crate::mqtt_in::{self, KafkaOut, MqttIn};
use crate::{acks, kafka};

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad configuration or unreadable files.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Kafka client could not be created or topics not ensured.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The codec could not be built.
    #[error("codec: {0}")]
    Codec(#[source] edgesync_schemas::SchemaError),
    /// The HTTP server failed.
    #[error("http: {0}")]
    Http(#[source] std::io::Error),
    /// The dead-letter schema could not be published to the Schema Registry.
    #[error(transparent)]
    Registry(#[from] edgesync_servicekit::registry::RegistryError),
}

/// Runs the bridge until `shutdown` is cancelled; `listener` serves `/metrics`.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(BridgeMetrics::register(&mut registry));
    metrics.inflight_limit.set(cfg.mqtt.max_inflight as i64);
    let registry = Arc::new(registry);
    let codec = Codec::new(Limits::default()).map_err(ServiceError::Codec)?;
    let outputs = vec![(cfg.kafka.dlq_topic.clone(), MessageKind::DeadLetter)];
    let codec = Arc::new(framed(codec, cfg.schema_registry.clone(), outputs).await?);
    if cfg.kafka.create_topics {
        kafka::ensure_topics(&cfg.kafka).await?;
    }
    let producer = kafka::producer(&cfg.kafka)?;
    // Built here first so that a bad consumer config fails the start, not the ack path.
    drop(kafka::acks_consumer(&cfg.kafka, &cfg.mqtt.client_id)?);
    let acks_consumer = {
        let (k, member) = (cfg.kafka.clone(), cfg.mqtt.client_id.clone());
        move || kafka::acks_consumer(&k, &member)
    };

    let http_stop = CancellationToken::new();
    let app = ops::router(Arc::clone(&registry), || ());
    let http = ops::serve(listener, app, http_stop.clone());

    let mqtt = mqtt_settings(&cfg)?;
    let ack_path = tokio::spawn(acks::run(
        acks_consumer,
        cfg.kafka.acks_topic.clone(),
        mqtt.clone(),
        Arc::clone(&codec),
        Arc::clone(&metrics),
        shutdown.clone(),
    ));
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    if kafka::wait_ready(&producer, &cfg.kafka.deltas_topic, &shutdown).await {
        mqtt_in::run(
            mqtt,
            KafkaOut {
                producer: producer.clone(),
                deltas_topic: cfg.kafka.deltas_topic.clone(),
                dlq_topic: cfg.kafka.dlq_topic.clone(),
                max_payload: cfg.max_payload_bytes,
                codec,
                metrics,
            },
            shutdown.clone(),
            grace,
        )
        .await;
    }
    let _ = tokio::time::timeout(grace, ack_path).await;
    flush(producer).await;
    http_stop.cancel();
    if let Ok(Err(e)) = http.await {
        return Err(ServiceError::Http(e));
    }
    tracing::info!("bridge stopped");
    Ok(())
}

/// The MQTT session settings both paths use, with the security files read.
fn mqtt_settings(cfg: &Config) -> Result<MqttIn, ServiceError> {
    let m = &cfg.mqtt;
    let security = MqttSecurity::load(&SecurityFiles {
        username: m.username.as_deref(),
        password_file: m.password_file.as_deref(),
        ca_file: m.tls_ca_file.as_deref(),
        client_cert_file: m.tls_client_cert_file.as_deref(),
        client_key_file: m.tls_client_key_file.as_deref(),
    })?;
    Ok(MqttIn {
        host: m.host.clone(),
        port: m.port,
        client_id: m.client_id.clone(),
        shared_group: m.shared_group.clone(),
        keep_alive: Duration::from_secs(m.keep_alive_secs.max(1)),
        max_inflight: m.max_inflight,
        security,
    })
}

/// Deliveries were awaited before every MQTT ack; this flushes what the ack path may have
/// queued (librdkafka's flush blocks, so off the runtime threads).
async fn flush(producer: rdkafka::producer::FutureProducer) {
    let flushed = tokio::task::spawn_blocking(move || {
        rdkafka::producer::Producer::flush(
            &producer,
            rdkafka::util::Timeout::After(Duration::from_secs(5)),
        )
    })
    .await;
    if let Ok(Err(e)) = flushed {
        tracing::warn!(error = %e, "producer flush at shutdown");
    }
}
