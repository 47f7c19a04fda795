//! Typed configuration (TOML file, `EDGESYNC_BRIDGE__<SECTION>__<FIELD>` variables, `--set`
//! flags; unknown fields refused). `deploy/bridge.toml` documents every field.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use edgesync_schemas::topics::kafka as topics;
use edgesync_servicekit::config::ServiceConfig;
use edgesync_servicekit::registry::RegistrySection;
use serde::Deserialize;

pub use edgesync_servicekit::config::ConfigError;

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The MQTT broker devices publish to.
    #[serde(default)]
    pub mqtt: MqttSection,
    /// The Kafka cluster.
    #[serde(default)]
    pub kafka: KafkaSection,
    /// `/metrics`, `/healthz`.
    #[serde(default)]
    pub http: HttpSection,
    /// Largest batch accepted from a device (bigger ones are dead-lettered); at most what Kafka
    /// takes in one record on its defaults.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Shutdown grace period: in-flight messages get this long to reach Kafka and be acked.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// A Schema Registry: set, dead letters carry the Confluent wire format with the id it
    /// assigns; unset, single-object encoding.
    #[serde(default)]
    pub schema_registry: Option<RegistrySection>,
}

fn default_max_payload() -> usize {
    edgesync_servicekit::kafka::MAX_RECORD_VALUE_BYTES
}
fn default_grace_ms() -> u64 {
    10_000
}

/// `[mqtt]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSection {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Client id of the persistent session (unique per bridge instance). It also names this
    /// bridge's static member of the acks group (`<client_id>-acks`, KIP-345), so a restarted
    /// bridge takes its acks partitions back at once.
    pub client_id: String,
    /// Shared-subscription group: bridges with the same group split the devices' batches.
    /// Empty = a plain subscription (brokers without `$share`).
    pub shared_group: String,
    /// Keep-alive.
    pub keep_alive_secs: u64,
    /// Most messages received and not yet acknowledged (waiting for Kafka), sent to the broker
    /// as the MQTT 5 receive maximum (at most 65,535). When reached the broker stops sending
    /// and keeps the rest. It must cover throughput × Kafka delivery latency (Little's law):
    /// 30 k batches/s at 30 ms is 900 in flight, so a window of 1,000 capped the bridge there.
    /// Memory: up to this many batches (typically a few KiB each).
    pub max_inflight: usize,
    /// User name.
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// PEM CA file: TLS to the broker when set.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub tls_client_cert_file: Option<PathBuf>,
    /// See above.
    pub tls_client_key_file: Option<PathBuf>,
}

impl Default for MqttSection {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "edgesync-bridge-1".into(),
            shared_group: "edgesync-bridge".into(),
            keep_alive_secs: 30,
            max_inflight: 10_000,
            username: None,
            password_file: None,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

/// `[kafka]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// Where batches go, keyed by device.
    pub deltas_topic: String,
    /// Where the reconciler's acknowledgements come from.
    pub acks_topic: String,
    /// Where bad input goes, with its reason.
    pub dlq_topic: String,
    /// Consumer group of the ack path.
    pub acks_group: String,
    /// Create missing topics at start-up with these partitions and replication.
    pub create_topics: bool,
    /// Partitions of created topics.
    pub partitions: i32,
    /// Replication factor of created topics.
    pub replication_factor: i32,
    /// Producer compression (`none`, `lz4`, `zstd`, ...). Batches are already zstd-compressed.
    pub compression: String,
    /// Any librdkafka property, passed through (SASL/SSL, timeouts, ...).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            deltas_topic: topics::DELTAS.into(),
            acks_topic: topics::ACKS.into(),
            dlq_topic: topics::DLQ.into(),
            acks_group: "edgesync-bridge-acks".into(),
            create_topics: true,
            partitions: 12,
            replication_factor: 1,
            compression: "lz4".into(),
            properties: BTreeMap::new(),
        }
    }
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address of `/metrics` (localhost by default).
    pub listen: SocketAddr,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "EDGESYNC_BRIDGE__";

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(1..=usize::from(u16::MAX)).contains(&self.mqtt.max_inflight) {
            return bad("mqtt.max_inflight must be 1..=65535 (the MQTT 5 receive maximum)");
        }
        if self.mqtt.client_id.is_empty() {
            return bad("mqtt.client_id is empty");
        }
        if self.mqtt.tls_client_cert_file.is_some() != self.mqtt.tls_client_key_file.is_some() {
            return bad("mqtt.tls_client_cert_file and tls_client_key_file go together");
        }
        if self.kafka.partitions < 1 || self.kafka.replication_factor < 1 {
            return bad("kafka.partitions and replication_factor must be >= 1");
        }
        let most = edgesync_servicekit::kafka::MAX_RECORD_VALUE_BYTES;
        if self.max_payload_bytes == 0 || self.max_payload_bytes > most {
            return bad(&format!(
                "max_payload_bytes must be in 1..={most} (what Kafka takes in one record on its defaults)"
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
    fn the_shipped_example_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bridge.toml");
        let c = Config::load(Some(&p), [], &[]).unwrap();
        assert_eq!(c.kafka.deltas_topic, "edgesync.deltas");
        assert_eq!(c.mqtt.shared_group, "edgesync-bridge");
    }

    #[test]
    fn defaults_load_and_unknown_fields_are_refused() {
        let c = Config::load(None, [], &[]).unwrap();
        assert_eq!(c.mqtt.port, 1883);
        let c = Config::load(
            None,
            [(
                "EDGESYNC_BRIDGE__KAFKA__PROPERTIES".into(),
                "{ \"security.protocol\" = \"SSL\" }".into(),
            )],
            &[],
        )
        .unwrap();
        assert_eq!(c.kafka.properties["security.protocol"], "SSL");
        for (set, why) in [
            ("mqtt.max_infligt=1", "max_infligt"),
            ("mqtt.max_inflight=0", "max_inflight"),
            ("mqtt.max_inflight=65536", "max_inflight"),
            ("kafka.partitions=0", "partitions"),
        ] {
            let e = Config::load(None, [], &[set.into()]).unwrap_err();
            assert!(e.to_string().contains(why), "{set}: {e}");
        }
    }
}
