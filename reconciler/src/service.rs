//! The reconciler as a service: topics ensured, both stages on their own threads, the ledger
//! and metrics served over HTTP, everything stopped by one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use edgesync_protocol::ServerConfig;
use edgesync_schemas::{Codec, Limits};
use edgesync_servicekit::kafka::{client_config, durable_producer_config, ensure_topics, TopicSpec};
use edgesync_servicekit::now_ms;
use edgesync_servicekit::ops;
use prometheus_client::registry::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ExactlyOnce, KafkaSection};
use crate::device::{DeviceConfig, DeviceStage, Transactions};
use crate::key::{KeyConfig, KeyStage};
use crate::ledger::Ledger;
use crate::metrics::ReconcilerMetrics;
use crate::stage;
use crate::store::Store;
use crate::Error;

/// Why the reconciler stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A stage failed.
    #[error(transparent)]
    Stage(#[from] Error),
    /// The codec could not be built.
    #[error("codec: {0}")]
    Codec(#[source] edgesync_schemas::SchemaError),
    /// The system's randomness could not be read (for a new group instance id).
    #[error("read random bits for the group instance id: {0}")]
    Random(#[source] std::io::Error),
    /// The HTTP server failed.
    #[error("http: {0}")]
    Http(#[source] std::io::Error),
    /// A stage's thread could not be started.
    #[error("start a stage thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The producer both stages share: `durable_producer_config` with lz4 and a 2 ms linger;
/// every `[kafka.properties]` entry wins.
pub fn producer(k: &KafkaSection) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    producer_config(k).create()
}

/// The settings of [`producer`].
pub fn producer_config(k: &KafkaSection) -> rdkafka::ClientConfig {
    durable_producer_config(&k.bootstrap_servers, &k.properties, "lz4", 2)
}

/// The device stage's transactional producers' settings: [`producer_config`] with a delivery
/// deadline (librdkafka refuses an unbounded one in a transaction): the transaction timeout
/// unless `[kafka.properties]` sets one.
fn transactions(cfg: &Config) -> Option<Transactions> {
    (cfg.exactly_once == ExactlyOnce::Transactions).then(|| {
        let k = &cfg.kafka;
        let mut producer = producer_config(k);
        if !k.properties.contains_key("message.timeout.ms") {
            let txn_timeout = k
                .properties
                .get("transaction.timeout.ms")
                .map_or("60000", String::as_str);
            producer.set("message.timeout.ms", txn_timeout);
        }
        Transactions {
            producer,
            id_prefix: k.device_group.clone(),
        }
    })
}

/// The deltas topic's partition count, if it exists.
fn partitions_of(base: &rdkafka::ClientConfig, topic: &str) -> Result<Option<i32>, Error> {
    let c: BaseConsumer = base.create()?;
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len() as i32)
        .filter(|n| *n > 0))
}

/// Runs the reconciler until `shutdown` is cancelled; `listener` serves HTTP.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let k = &cfg.kafka;
    let base = client_config(&[], &k.bootstrap_servers, &k.properties);
    if k.create_topics {
        let n = partitions_of(&base, &k.deltas_topic)?.unwrap_or(k.partitions);
        let spec = |name, config: Vec<(&'static str, &'static str)>| TopicSpec {
            name,
            partitions: n,
            replication: k.replication_factor,
            config,
        };
        let specs = vec![
            spec(&k.deltas_topic, vec![]),
            spec(&k.events_topic, vec![]),
            spec(&k.state_deltas_topic, vec![]),
            spec(&k.state_topic, vec![("cleanup.policy", "compact")]),
            spec(&k.acks_topic, vec![]),
            spec(&k.dlq_topic, vec![]),
        ];
        ensure_topics(&base, &specs).await.map_err(Error::from)?;
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(ReconcilerMetrics::register(&mut registry));
    let registry = Arc::new(registry);
    let codec =
        Arc::new(Codec::new(Limits::default()).map_err(ServiceError::Codec)?);
    let store = Arc::new(Store::open(&cfg.state_dir).map_err(Error::from)?);
    let ledger = Arc::new(Ledger::new(cfg.clock_skew_bound_ms));
    let producer = producer(k).map_err(Error::from)?;
    let instance = match &k.group_instance_id {
        Some(id) => id.clone(),
        None => {
            let fresh = edgesync_servicekit::random_u64().map_err(ServiceError::Random)?;
            store.instance_id(fresh).map_err(Error::from)?
        }
    };
    tracing::info!(group_instance_id = %instance, "static group membership");

    // Each stage: its own group consumer and reader, the shared codec, store, producer, metrics.
    let io = |stage_name: &str, group: &str, topic: &str| -> Result<stage::Io, Error> {
        let member = (!instance.is_empty()).then(|| format!("{instance}-{stage_name}"));
        let config = stage::member_config(&base, group, member.as_deref());
        Ok(stage::Io {
            codec: Arc::clone(&codec),
            store: Arc::clone(&store),
            producer: producer.clone(),
            member: stage::Member::join(config, topic, metrics.lag(stage_name))?,
            reader: stage::reader(&base)?,
            metrics: Arc::clone(&metrics),
        })
    };
    let device = DeviceStage {
        cfg: DeviceConfig {
            deltas_topic: k.deltas_topic.clone(),
            events_topic: k.events_topic.clone(),
            state_deltas_topic: k.state_deltas_topic.clone(),
            acks_topic: k.acks_topic.clone(),
            dlq_topic: k.dlq_topic.clone(),
            max_group: cfg.max_group_records,
            server: ServerConfig {
                max_pending_per_replica: cfg.max_pending_per_replica,
            },
            skew_bound_ms: cfg.clock_skew_bound_ms,
            transactions: transactions(&cfg),
        },
        io: io("device", &k.device_group, &k.deltas_topic)?,
        ledger: Arc::clone(&ledger),
    };
    let keys = KeyStage {
        cfg: KeyConfig {
            state_deltas_topic: k.state_deltas_topic.clone(),
            state_topic: k.state_topic.clone(),
            dlq_topic: k.dlq_topic.clone(),
            max_group: cfg.max_group_records,
        },
        io: io("key", &k.key_group, &k.state_deltas_topic)?,
    };
    // A failing stage stops the whole process: a half-running reconciler would hold
    // partitions it does not serve.
    let stop = shutdown.child_token();
    let spawn = |name: &str, f: Box<dyn FnOnce(CancellationToken) -> Result<(), Error> + Send>| {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let r = f(stop.clone());
                if let Err(e) = &r {
                    tracing::error!(error = %e, "stage failed");
                }
                stop.cancel();
                r
            })
    };
    let device_thread =
        spawn("device-stage", Box::new(move |s| device.run(s))).map_err(ServiceError::Thread)?;
    let key_thread =
        spawn("key-stage", Box::new(move |s| keys.run(s))).map_err(ServiceError::Thread)?;

    let refresh = {
        let (metrics, ledger) = (Arc::clone(&metrics), Arc::clone(&ledger));
        move || metrics.refresh(&ledger, now_ms())
    };
    let status = move || {
        let body = ledger.status_json(now_ms(), 1000);
        async move { axum::Json(body) }
    };
    let app = ops::router(registry, refresh).route("/v1/status", get(status));
    let http = ops::serve(listener, app, stop.clone());
    stop.cancelled().await;
    tracing::info!("stopping");
    let joined = tokio::task::spawn_blocking(move || (device_thread.join(), key_thread.join()));
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let result = match tokio::time::timeout(grace, joined).await {
        Ok(Ok((d, k))) => {
            let first_err = [d, k].into_iter().find_map(|r| match r {
                Ok(Err(e)) => Some(e),
                _ => None,
            });
            match first_err {
                Some(e) => Err(ServiceError::Stage(e)),
                None => Ok(()),
            }
        }
        _ => {
            tracing::warn!(
                "grace period over; progress is in the state store, work resumes from it"
            );
            Ok(())
        }
    };
    let _ = http.await;
    result
}
