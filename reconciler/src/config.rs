//! Typed configuration (TOML file, `EDGESYNC_RECONCILER__<SECTION>__<FIELD>` variables,
//! `--set` flags; unknown fields refused). `deploy/reconciler.toml` documents every field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use edgesync_schemas::topics::kafka as topics;

use crate::store::StoreMemory;
use edgesync_servicekit::config::ServiceConfig;
use edgesync_servicekit::registry::RegistrySection;
use serde::Deserialize;

pub use edgesync_servicekit::config::ConfigError;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The RocksDB state store (one per reconciler process).
    #[serde(default = "default_dir")]
    pub state_dir: PathBuf,
    /// The Kafka cluster and topics.
    #[serde(default)]
    pub kafka: KafkaSection,
    /// `/metrics`, `/v1/status`, `/healthz`.
    #[serde(default)]
    pub http: HttpSection,
    /// Most records processed per group (one state write, one fsync, per group).
    #[serde(default = "default_group")]
    pub max_group_records: usize,
    /// Most events held back above a gap per replica.
    #[serde(default = "default_pending")]
    pub max_pending_per_replica: usize,
    /// A device whose clock is off by more than this is flagged (metric and status).
    #[serde(default = "default_skew")]
    pub clock_skew_bound_ms: u64,
    /// Shutdown grace period.
    #[serde(default = "default_grace")]
    pub shutdown_grace_ms: u64,
    /// How the device stage writes each event to the events topic exactly once.
    #[serde(default)]
    pub exactly_once: ExactlyOnce,
    /// The state store's RocksDB memory.
    #[serde(default)]
    pub store: StoreSection,
    /// A Schema Registry: set, the events, state and dead-letter topics carry the Confluent
    /// wire format with the ids it assigns; unset, single-object encoding.
    #[serde(default)]
    pub schema_registry: Option<RegistrySection>,
}

/// `[store]`: what bounds the state store's RocksDB memory (`crate::store::StoreMemory`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// The block cache (data, index and filter blocks), in bytes.
    pub block_cache_bytes: u64,
    /// One memtable, in bytes.
    pub write_buffer_bytes: u64,
    /// Most memtables at once (at least 2).
    pub max_write_buffers: u32,
    /// Most table files open at once (-1: all of them).
    pub max_open_files: i32,
}

impl Default for StoreSection {
    fn default() -> Self {
        let m = StoreMemory::default();
        Self {
            block_cache_bytes: m.block_cache_bytes as u64,
            write_buffer_bytes: m.write_buffer_bytes as u64,
            max_write_buffers: m.max_write_buffers as u32,
            max_open_files: m.max_open_files,
        }
    }
}

impl StoreSection {
    /// The store's memory bounds.
    pub fn memory(&self) -> StoreMemory {
        let size = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        StoreMemory {
            block_cache_bytes: size(self.block_cache_bytes),
            write_buffer_bytes: size(self.write_buffer_bytes),
            max_write_buffers: self.max_write_buffers as usize,
            max_open_files: self.max_open_files,
        }
    }
}

/// `exactly_once`: the device stage's method (ARCHITECTURE.md compares them).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExactlyOnce {
    /// `"read_back"`: the stage is the only writer of an events partition while it owns the
    /// deltas partition; on assignment it reads back the events already there and does not
    /// produce them again. Works on every Kafka-protocol broker.
    #[default]
    ReadBack,
    /// `"transactions"`: per processed group and input partition one Kafka transaction holds
    /// the events, state deltas, dead letters, acks and the input offsets; the transactional
    /// id is `<device_group>-<partition>`, so the broker fences a zombie owner. Needs a broker
    /// with transactions (Apache Kafka); readers use `isolation.level=read_committed`.
    Transactions,
}

fn default_dir() -> PathBuf {
    PathBuf::from("edgesync-reconciler-state")
}
fn default_group() -> usize {
    2000
}
fn default_pending() -> usize {
    100_000
}
fn default_skew() -> u64 {
    300_000
}
fn default_grace() -> u64 {
    10_000
}

/// `[kafka]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Input: batches keyed by device (from the bridge).
    pub deltas_topic: String,
    /// Output: de-duplicated events, in dot order per replica.
    pub events_topic: String,
    /// Internal: state deltas keyed by CRDT key (device stage → key stage).
    pub state_deltas_topic: String,
    /// Output: converged state per key (compacted).
    pub state_topic: String,
    /// Output: watermarks for the bridge to carry back to devices.
    pub acks_topic: String,
    /// Output: per device, the completeness ledger's lines (compacted).
    pub completeness_topic: String,
    /// Output: records that could not be processed.
    pub dlq_topic: String,
    /// Consumer group of the device stage.
    pub device_group: String,
    /// Consumer group of the key stage.
    pub key_group: String,
    /// Static group membership (KIP-345): the stages' consumers join as `<id>-device` and
    /// `<id>-key`, so a restarted process is the same member and gets its partitions back at
    /// once instead of after the dead member's session timeout (45 s). Unset: an id made on
    /// first start and kept in the state store (one per state directory, which is one per
    /// process). An empty string turns static membership off (brokers older than Kafka 2.3).
    /// A static member does not leave its groups when it stops: a process removed for good
    /// hands its partitions over after `session.timeout.ms`.
    pub group_instance_id: Option<String>,
    /// Create missing topics (the deltas topic's partition count is used for the events topic,
    /// which must match it).
    pub create_topics: bool,
    /// Partitions of created topics (when the deltas topic does not exist yet).
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Any librdkafka property, passed through.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            deltas_topic: topics::DELTAS.into(),
            events_topic: topics::EVENTS.into(),
            state_deltas_topic: topics::STATE_DELTAS.into(),
            state_topic: topics::STATE.into(),
            acks_topic: topics::ACKS.into(),
            completeness_topic: topics::COMPLETENESS.into(),
            dlq_topic: topics::DLQ.into(),
            device_group: "edgesync-reconciler-device".into(),
            key_group: "edgesync-reconciler-key".into(),
            group_instance_id: None,
            create_topics: true,
            partitions: 12,
            replication_factor: 1,
            properties: BTreeMap::new(),
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address (localhost by default).
    pub listen: SocketAddr,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9466)),
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "EDGESYNC_RECONCILER__";

    fn check(&self) -> Result<(), ConfigError> {
        if self.max_group_records == 0 || self.max_pending_per_replica == 0 {
            return Err(ConfigError::Invalid(
                "max_group_records and max_pending_per_replica must be > 0".into(),
            ));
        }
        if self.kafka.partitions < 1 || self.kafka.replication_factor < 1 {
            return Err(ConfigError::Invalid(
                "kafka.partitions and replication_factor must be >= 1".into(),
            ));
        }
        let st = &self.store;
        if st.block_cache_bytes == 0 || st.write_buffer_bytes < 64 << 10 || st.max_write_buffers < 2
        {
            return Err(ConfigError::Invalid(
                "store.block_cache_bytes must be > 0, store.write_buffer_bytes >= 65536 and store.max_write_buffers >= 2".into(),
            ));
        }
        if st.max_open_files != -1 && st.max_open_files < 20 {
            return Err(ConfigError::Invalid(
                "store.max_open_files must be -1 (unlimited) or >= 20".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    #[test]
    fn the_shipped_example_loads_and_typos_are_refused() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/reconciler.toml");
        let c = Config::load(Some(&p), [], &[]).unwrap();
        assert_eq!(c.kafka.state_topic, "edgesync.state");
        let e = Config::load(None, [], &["kafka.evnts_topic=x".into()]).unwrap_err();
        assert!(e.to_string().contains("evnts_topic"), "{e}");
        let e = Config::load(None, [], &["max_group_records=0".into()]).unwrap_err();
        assert!(e.to_string().contains("max_group_records"), "{e}");
        assert_eq!(c.store.memory(), StoreMemory::default());
        let e = Config::load(None, [], &["store.max_write_buffers=1".into()]).unwrap_err();
        assert!(e.to_string().contains("max_write_buffers"), "{e}");
        let c = Config::load(None, [], &["store.block_cache_bytes=8388608".into()]).unwrap();
        assert_eq!(c.store.memory().block_cache_bytes, 8 << 20);
        assert!(c.schema_registry.is_none());
        let url = "schema_registry.url=\"http://registry:8081\"".to_owned();
        let c = Config::load(None, [], std::slice::from_ref(&url)).unwrap();
        let r = c.schema_registry.unwrap();
        assert_eq!(
            (r.compatibility.as_str(), r.timeout_ms),
            ("BACKWARD", 10_000)
        );
        let typo = "schema_registry.ca_fle=\"x\"".to_owned();
        let e = Config::load(None, [], &[url, typo]).unwrap_err();
        assert!(e.to_string().contains("ca_fle"), "{e}");
    }
}
