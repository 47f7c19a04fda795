//! The reconciler as a service: topics ensured, both stages on their own threads, the ledger
//! and metrics served over HTTP, everything stopped by one cancellation token.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use edgesync_protocol::ServerConfig;
use edgesync_schemas::{Codec, Limits, MessageKind};
use edgesync_servicekit::kafka::{
    client_config, create_missing, durable_producer_config, existing_topics, TopicSpec,
};
use edgesync_servicekit::now_ms;
use edgesync_servicekit::ops;
use edgesync_servicekit::registry::framed;
use prometheus_client::registry::Registry;
use rdkafka::ClientConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ExactlyOnce, KafkaSection};
use crate::device::{DeviceConfig, DeviceStage, Transactions};
use crate::key::{KeyConfig, KeyStage};
use crate::ledger::Ledger;
use crate::metrics::ReconcilerMetrics;
use crate::out::{Deliveries, Producer};
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
    /// The output schemas could not be published to the Schema Registry.
    #[error(transparent)]
    Registry(#[from] edgesync_servicekit::registry::RegistryError),
    /// The system's randomness could not be read (for a new group instance id).
    #[error("read random bits for the group instance id: {0}")]
    Random(#[source] std::io::Error),
    /// The HTTP server failed.
    #[error("http: {0}")]
    Http(#[source] std::io::Error),
    /// A stage's thread could not be started.
    #[error("start a stage thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A blocking start-up task (opening the state store) panicked
    /// or was cancelled.
    #[error("{what}: {source}")]
    Task {
        /// What it was doing.
        what: &'static str,
        /// Why it ended.
        source: tokio::task::JoinError,
    },
}

/// The producer both stages share: `durable_producer_config` with lz4 and a 2 ms linger, and
/// a local queue sized by bytes rather than by count; every `[kafka.properties]` entry wins.
pub fn producer(k: &KafkaSection) -> Result<Producer, rdkafka::error::KafkaError> {
    producer_config(k).create_with_context(Deliveries)
}

/// The settings of [`producer`]. A stage hands librdkafka a whole group at once (`out.rs`):
/// 2,000 batches of 100 events are 200,000 records, over librdkafka's default of 100,000 queued
/// messages, which made the stage wait for its own group to drain instead of applying the next
/// one. So the queue is bounded in bytes (256 MiB, a quarter of librdkafka's default byte
/// bound), not in records.
pub fn producer_config(k: &KafkaSection) -> rdkafka::ClientConfig {
    let mut c = durable_producer_config(&k.bootstrap_servers, &k.properties, "lz4", 2);
    for (name, value) in [
        ("queue.buffering.max.messages", "10000000"),
        ("queue.buffering.max.kbytes", "262144"),
    ] {
        if !k.properties.contains_key(name) {
            c.set(name, value);
        }
    }
    c
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

/// Creates the pipeline's topics when missing, with the deltas topic's partition count if it
/// exists (the events topic must match it: the device stage writes events partition p while
/// it owns deltas partition p).
async fn create_topics(base: &ClientConfig, k: &KafkaSection) -> Result<(), ServiceError> {
    let existing = existing_topics(base).await.map_err(Error::from)?;
    let n = existing
        .get(&k.deltas_topic)
        .copied()
        .unwrap_or(k.partitions);
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
        spec(&k.completeness_topic, vec![("cleanup.policy", "compact")]),
        spec(&k.dlq_topic, vec![]),
    ];
    create_missing(base, &specs, &existing)
        .await
        .map_err(Error::from)?;
    Ok(())
}

/// The codec, framing the analytics-facing outputs with the Schema Registry's ids when one is
/// configured.
async fn codec(cfg: &Config) -> Result<Codec, ServiceError> {
    let codec = Codec::new(Limits::default()).map_err(ServiceError::Codec)?;
    let k = &cfg.kafka;
    let outputs = vec![
        (k.events_topic.clone(), MessageKind::Event),
        (k.state_topic.clone(), MessageKind::StateRecord),
        (k.dlq_topic.clone(), MessageKind::DeadLetter),
        (k.completeness_topic.clone(), MessageKind::Completeness),
    ];
    Ok(framed(codec, cfg.schema_registry.clone(), outputs).await?)
}

/// What both stages share.
struct Shared {
    codec: Arc<Codec>,
    store: Arc<Store>,
    producer: Producer,
    metrics: Arc<ReconcilerMetrics>,
    ledger: Arc<Ledger>,
    /// The static member id's prefix (empty: dynamic membership).
    instance: String,
}

impl Shared {
    /// Opens the state store (off the runtime thread) and makes the producer and the rest.
    async fn open(
        cfg: &Config,
        codec: Codec,
        metrics: Arc<ReconcilerMetrics>,
    ) -> Result<Self, ServiceError> {
        let codec = Arc::new(codec);
        let dir = cfg.state_dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|source| ServiceError::Task {
                what: "opening the state store",
                source,
            })?
            .map_err(Error::from)?;
        let instance = match &cfg.kafka.group_instance_id {
            Some(id) => id.clone(),
            None => {
                let fresh = edgesync_servicekit::random_u64().map_err(ServiceError::Random)?;
                store.instance_id(fresh).map_err(Error::from)?
            }
        };
        tracing::info!(group_instance_id = %instance, "static group membership");
        Ok(Shared {
            codec,
            store: Arc::new(store),
            producer: producer(&cfg.kafka).map_err(Error::from)?,
            metrics,
            ledger: Arc::new(Ledger::new(cfg.clock_skew_bound_ms)),
            instance,
        })
    }

    /// A stage's own group membership and reader, with the shared codec, store, producer and
    /// metrics.
    fn io(
        &self,
        base: &ClientConfig,
        stage: &str,
        group: &str,
        topic: &str,
    ) -> Result<stage::Io, Error> {
        let member = (!self.instance.is_empty()).then(|| format!("{}-{stage}", self.instance));
        let config = stage::member_config(base, group, member.as_deref());
        Ok(stage::Io {
            codec: Arc::clone(&self.codec),
            store: Arc::clone(&self.store),
            producer: self.producer.clone(),
            member: stage::Member::join(config, topic, self.metrics.lag(stage))?,
            reader: stage::reader(base)?,
            metrics: Arc::clone(&self.metrics),
        })
    }
}

/// The two stages, configured from `cfg`.
fn stages(
    cfg: &Config,
    base: &ClientConfig,
    shared: &Shared,
) -> Result<(DeviceStage, KeyStage), Error> {
    let k = &cfg.kafka;
    let device = DeviceStage {
        cfg: DeviceConfig {
            deltas_topic: k.deltas_topic.clone(),
            events_topic: k.events_topic.clone(),
            state_deltas_topic: k.state_deltas_topic.clone(),
            acks_topic: k.acks_topic.clone(),
            completeness_topic: k.completeness_topic.clone(),
            dlq_topic: k.dlq_topic.clone(),
            max_group: cfg.max_group_records,
            server: ServerConfig {
                max_pending_per_replica: cfg.max_pending_per_replica,
            },
            skew_bound_ms: cfg.clock_skew_bound_ms,
            transactions: transactions(cfg),
        },
        io: shared.io(base, "device", &k.device_group, &k.deltas_topic)?,
        ledger: Arc::clone(&shared.ledger),
    };
    let keys = KeyStage {
        cfg: KeyConfig {
            state_deltas_topic: k.state_deltas_topic.clone(),
            state_topic: k.state_topic.clone(),
            dlq_topic: k.dlq_topic.clone(),
            max_group: cfg.max_group_records,
        },
        io: shared.io(base, "key", &k.key_group, &k.state_deltas_topic)?,
    };
    Ok((device, keys))
}

type StageThread = std::thread::JoinHandle<Result<(), Error>>;

/// Runs a stage on its own thread. A failing stage stops the whole process (it cancels
/// `stop`): a half-running reconciler would hold partitions it does not serve.
fn spawn_stage(
    name: &str,
    stop: &CancellationToken,
    f: impl FnOnce(CancellationToken) -> Result<(), Error> + Send + 'static,
) -> Result<StageThread, ServiceError> {
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
        .map_err(ServiceError::Thread)
}

/// Waits up to `grace` for the stages to finish; the first stage error, if any.
async fn join_stages(threads: [StageThread; 2], grace: Duration) -> Result<(), ServiceError> {
    let joined = tokio::task::spawn_blocking(move || threads.map(|t| t.join()));
    match tokio::time::timeout(grace, joined).await {
        Ok(Ok(results)) => match results.into_iter().find_map(|r| r.ok()?.err()) {
            Some(e) => Err(ServiceError::Stage(e)),
            None => Ok(()),
        },
        _ => {
            tracing::warn!(
                "grace period over; progress is in the state store, work resumes from it"
            );
            Ok(())
        }
    }
}

/// `/metrics`, `/healthz` and the completeness ledger at `/v1/status`.
fn router(registry: Registry, shared: &Shared) -> axum::Router {
    let refresh = {
        let (metrics, ledger) = (Arc::clone(&shared.metrics), Arc::clone(&shared.ledger));
        move || metrics.refresh(&ledger, now_ms())
    };
    let ledger = Arc::clone(&shared.ledger);
    let status = move || {
        let body = ledger.status_json(now_ms(), 1000);
        async move { axum::Json(body) }
    };
    ops::router(Arc::new(registry), refresh).route("/v1/status", get(status))
}

/// Runs the reconciler until `shutdown` is cancelled; `listener` serves HTTP.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    // First: a registry that refuses the output schemas stops the start before anything else.
    let codec = codec(&cfg).await?;
    let k = &cfg.kafka;
    let base = client_config(&[], &k.bootstrap_servers, &k.properties);
    if k.create_topics {
        create_topics(&base, k).await?;
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(ReconcilerMetrics::register(&mut registry));
    let shared = Shared::open(&cfg, codec, metrics).await?;
    let (device, keys) = stages(&cfg, &base, &shared)?;
    let stop = shutdown.child_token();
    let threads = [
        spawn_stage("device-stage", &stop, move |s| device.run(s))?,
        spawn_stage("key-stage", &stop, move |s| keys.run(s))?,
    ];
    let http = ops::serve(listener, router(registry, &shared), stop.clone());
    stop.cancelled().await;
    tracing::info!("stopping");
    let result = join_stages(threads, Duration::from_millis(cfg.shutdown_grace_ms)).await;
    let _ = http.await;
    result
}
