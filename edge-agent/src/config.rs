//! Typed configuration: TOML file, then environment, then `--set` flags, each overriding the
//! one before; unknown fields are refused at every layer, so a typo fails start-up instead of
//! being ignored.
//!
//! Environment variables are `EDGESYNC_AGENT__<SECTION>__<FIELD>` (upper case, `__` between
//! path parts), e.g. `EDGESYNC_AGENT__UPLINK__PORT=8883`. Flags are `--set uplink.port=8883`.
//! A value is read as TOML when it parses as one (numbers, booleans, arrays) and as a string
//! otherwise. `deploy/edge-agent.toml` documents every field with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgesync_core::{DeviceId, EventLimits};
use edgesync_protocol::AgentConfig;
use edgesync_servicekit::config::ServiceConfig;
use serde::Deserialize;

use crate::ingest::sparkplug::SparkplugConfig;
use crate::ingest::IngestConfig;
use crate::lanes::{self, LaneSection};
use crate::spool::{Durability, QuotaPolicy, SpoolConfig, SpoolMemory};

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which device this agent is.
    pub device: DeviceSection,
    /// The durable spool.
    #[serde(default)]
    pub spool: SpoolSection,
    /// The MQTT uplink to the server.
    #[serde(default)]
    pub uplink: UplinkSection,
    /// The local HTTP endpoint: ingest, `/metrics`, status.
    #[serde(default)]
    pub http: HttpSection,
    /// Request and event limits.
    #[serde(default)]
    pub ingest: IngestSection,
    /// Optional subscription to a local broker that sensors publish to.
    #[serde(default)]
    pub ingest_mqtt: Option<IngestMqttSection>,
    /// Priority lanes, highest first (none: one lane, `default`, carries every stream).
    #[serde(default)]
    pub lanes: Vec<LaneSection>,
    /// Shutdown grace period.
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
}

fn default_grace_ms() -> u64 {
    5_000
}

/// `[device]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    /// Device id (`[a-z0-9][a-z0-9._-]{0,63}`); also the MQTT client id.
    pub id: String,
}

/// `[spool]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSection {
    /// Directory of the RocksDB spool.
    pub dir: PathBuf,
    /// `fsync` (survives power loss) or `os-buffered` (survives a crash of the agent only).
    pub durability: DurabilityName,
    /// Quota in bytes.
    pub max_bytes: u64,
    /// Quota in age: events older than this make the spool full (0 = no age limit).
    pub max_age_secs: u64,
    /// `block`, `drop-oldest` or `drop-newest`.
    pub policy: PolicyName,
    /// RocksDB's block cache (data, index and filter blocks), in bytes.
    pub cache_bytes: u64,
    /// One RocksDB memtable, in bytes (at most two at once).
    pub write_buffer_bytes: u64,
    /// Table files RocksDB keeps open.
    pub max_open_files: u32,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("edgesync-agent-spool"),
            durability: DurabilityName::Fsync,
            max_bytes: 1 << 30,
            max_age_secs: 0,
            policy: PolicyName::Block,
            cache_bytes: SpoolMemory::default().cache_bytes as u64,
            write_buffer_bytes: SpoolMemory::default().write_buffer_bytes as u64,
            max_open_files: SpoolMemory::default().max_open_files.unsigned_abs(),
        }
    }
}

impl PolicyName {
    /// As written in the config (and shown in status).
    pub fn name(self) -> &'static str {
        match self {
            PolicyName::Block => "block",
            PolicyName::DropOldest => "drop-oldest",
            PolicyName::DropNewest => "drop-newest",
        }
    }
}

/// Spool durability, as written in the config.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilityName {
    /// See [`Durability::Fsync`].
    Fsync,
    /// See [`Durability::OsBuffered`].
    OsBuffered,
}

/// Quota policy, as written in the config.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// See [`QuotaPolicy::Block`].
    Block,
    /// See [`QuotaPolicy::DropOldest`].
    DropOldest,
    /// See [`QuotaPolicy::DropNewest`].
    DropNewest,
}

/// `[uplink]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkSection {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT keep-alive.
    pub keep_alive_secs: u64,
    /// MQTT user name (the per-device credential).
    pub username: Option<String>,
    /// File holding the password (kept out of the config file).
    pub password_file: Option<PathBuf>,
    /// TLS to the broker; absent = plain TCP.
    pub tls: Option<TlsSection>,
    /// Most events per batch.
    pub max_batch_events: usize,
    /// Most event bytes per batch (before compression).
    pub max_batch_bytes: usize,
    /// Most batches in flight.
    pub max_inflight: usize,
    /// Re-send from the watermark when nothing was acknowledged for this long.
    pub resend_timeout_ms: u64,
    /// After connecting, wait this long for the retained ack before sending from the spool's
    /// own watermark.
    pub resume_wait_ms: u64,
    /// First reconnect delay.
    pub backoff_min_ms: u64,
    /// Largest reconnect delay.
    pub backoff_max_ms: u64,
    /// Rate cap on published bytes per second (0 = none).
    pub max_bytes_per_sec: u64,
    /// Most bytes published per UTC day (0 = no budget).
    pub daily_budget_bytes: u64,
}

impl Default for UplinkSection {
    fn default() -> Self {
        let a = AgentConfig::default();
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            keep_alive_secs: 30,
            username: None,
            password_file: None,
            tls: None,
            max_batch_events: a.max_batch_events,
            max_batch_bytes: a.max_batch_bytes,
            max_inflight: a.max_inflight_batches,
            resend_timeout_ms: a.resend_timeout_ms,
            resume_wait_ms: a.resume_wait_ms,
            backoff_min_ms: 500,
            backoff_max_ms: 60_000,
            max_bytes_per_sec: 0,
            daily_budget_bytes: 0,
        }
    }
}

/// `[uplink.tls]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file of the CA(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate, for mutual TLS (with `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// PEM client key.
    pub client_key_file: Option<PathBuf>,
}

/// `[http]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address (localhost by default: the endpoint has no authentication).
    pub listen: SocketAddr,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_body_bytes: 4 << 20,
        }
    }
}

/// `[ingest]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// Most events per request.
    pub max_request_events: usize,
    /// Most operations per event.
    pub max_ops: usize,
    /// Most fields per event.
    pub max_fields: usize,
    /// Most tags per event.
    pub max_tags: usize,
    /// Longest string value.
    pub max_string_bytes: usize,
}

impl Default for IngestSection {
    fn default() -> Self {
        let i = IngestConfig::default();
        Self {
            max_request_events: i.max_request_events,
            max_ops: i.max_ops,
            max_fields: i.limits.max_fields,
            max_tags: i.limits.max_tags,
            max_string_bytes: i.limits.max_string_bytes,
        }
    }
}

/// `[ingest_mqtt]`: events published by sensors to a broker on the gateway.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestMqttSection {
    /// Broker host.
    #[serde(default = "localhost")]
    pub host: String,
    /// Broker port.
    #[serde(default = "mqtt_port")]
    pub port: u16,
    /// Topic filters (QoS 1); each message is one JSON event or an array of them.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Client id (a persistent session, so messages published while the agent restarts wait).
    #[serde(default = "ingest_client_id")]
    pub client_id: String,
    /// Sparkplug B sensors (`spBv1.0/...`), when set.
    #[serde(default)]
    pub sparkplug: Option<SparkplugConfig>,
}

fn localhost() -> String {
    "127.0.0.1".into()
}
fn mqtt_port() -> u16 {
    1883
}
fn ingest_client_id() -> String {
    "edgesync-agent-ingest".into()
}

pub use edgesync_servicekit::config::ConfigError;

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "EDGESYNC_AGENT__";

    fn check(&self) -> Result<(), ConfigError> {
        DeviceId::new(&self.device.id)
            .map_err(|e| ConfigError::Invalid(format!("device.id {:?}: {e}", self.device.id)))?;
        let u = &self.uplink;
        if u.max_batch_events == 0 || u.max_batch_bytes == 0 || u.max_inflight == 0 {
            return Err(ConfigError::Invalid(
                "uplink.max_batch_events, max_batch_bytes and max_inflight must be > 0".into(),
            ));
        }
        if u.backoff_min_ms == 0 || u.backoff_min_ms > u.backoff_max_ms {
            return Err(ConfigError::Invalid(
                "uplink.backoff_min_ms must be > 0 and <= backoff_max_ms".into(),
            ));
        }
        if let Some(t) = &u.tls {
            if t.client_cert_file.is_some() != t.client_key_file.is_some() {
                return Err(ConfigError::Invalid(
                    "uplink.tls: client_cert_file and client_key_file go together".into(),
                ));
            }
        }
        if self.spool.max_bytes == 0 {
            return Err(ConfigError::Invalid("spool.max_bytes must be > 0".into()));
        }
        if self.spool.cache_bytes == 0
            || self.spool.write_buffer_bytes < 64 << 10
            || self.spool.max_open_files < 16
        {
            return Err(ConfigError::Invalid(
                "spool.cache_bytes must be > 0, spool.write_buffer_bytes >= 65536 and spool.max_open_files >= 16".into(),
            ));
        }
        lanes::plan(&self.lanes).map_err(ConfigError::Invalid)?;
        if let Some(m) = &self.ingest_mqtt {
            if m.topics.is_empty() && m.sparkplug.is_none() {
                return Err(ConfigError::Invalid(
                    "ingest_mqtt: no topics and no [ingest_mqtt.sparkplug]".into(),
                ));
            }
            if let Some(sp) = &m.sparkplug {
                sp.check().map_err(ConfigError::Invalid)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// The device id (checked by `load`).
    pub fn device_id(&self) -> Result<DeviceId, ConfigError> {
        DeviceId::new(&self.device.id).map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// The lanes in priority order, `default` included (the plan was checked by `load`).
    pub fn lanes(&self) -> Vec<LaneSection> {
        lanes::plan(&self.lanes).unwrap_or_else(|_| vec![LaneSection::default_lane()])
    }

    /// This configuration as seen by one lane: its spool directory and quota in `[spool]`
    /// (what the `spool` commands open with `--lane`).
    pub fn for_lane(&self, name: &str) -> Result<Config, ConfigError> {
        let lanes = self.lanes();
        let lane = lanes.iter().find(|l| l.name == name).ok_or_else(|| {
            let known: Vec<&str> = lanes.iter().map(|l| l.name.as_str()).collect();
            ConfigError::Invalid(format!("no lane {name:?} (lanes: {})", known.join(", ")))
        })?;
        let mut c = self.clone();
        c.spool.dir = lanes::spool_dir(&self.spool.dir, &lane.name);
        c.spool.max_bytes = lane.max_bytes.unwrap_or(c.spool.max_bytes);
        c.spool.max_age_secs = lane.max_age_secs.unwrap_or(c.spool.max_age_secs);
        c.spool.policy = lane.policy.unwrap_or(c.spool.policy);
        Ok(c)
    }

    /// The spool's settings (clock and observer are the defaults; the service sets them).
    pub fn spool_config(&self) -> SpoolConfig {
        let s = &self.spool;
        SpoolConfig {
            durability: match s.durability {
                DurabilityName::Fsync => Durability::Fsync,
                DurabilityName::OsBuffered => Durability::OsBuffered,
            },
            max_bytes: s.max_bytes,
            max_age: (s.max_age_secs > 0).then(|| Duration::from_secs(s.max_age_secs)),
            policy: match s.policy {
                PolicyName::Block => QuotaPolicy::Block,
                PolicyName::DropOldest => QuotaPolicy::DropOldest,
                PolicyName::DropNewest => QuotaPolicy::DropNewest,
            },
            memory: SpoolMemory {
                cache_bytes: usize::try_from(s.cache_bytes).unwrap_or(usize::MAX),
                write_buffer_bytes: usize::try_from(s.write_buffer_bytes).unwrap_or(usize::MAX),
                max_open_files: i32::try_from(s.max_open_files).unwrap_or(i32::MAX),
            },
            ..SpoolConfig::default()
        }
    }

    /// The protocol's send window.
    pub fn agent_config(&self) -> AgentConfig {
        let u = &self.uplink;
        AgentConfig {
            max_batch_events: u.max_batch_events,
            max_batch_bytes: u.max_batch_bytes,
            max_inflight_batches: u.max_inflight,
            resend_timeout_ms: u.resend_timeout_ms,
            resume_wait_ms: u.resume_wait_ms,
        }
    }

    /// Ingest limits.
    pub fn ingest_config(&self) -> IngestConfig {
        let i = &self.ingest;
        IngestConfig {
            limits: EventLimits {
                max_fields: i.max_fields,
                max_tags: i.max_tags,
                max_string_bytes: i.max_string_bytes,
            },
            max_request_events: i.max_request_events,
            max_ops: i.max_ops,
            ..IngestConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::path::Path;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_example_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge-agent.toml");
        let c = Config::load(Some(&p), [], &[]).unwrap();
        assert_eq!(c.device.id, "pump-0042");
        assert_eq!(c.spool_config().memory, SpoolMemory::default());
    }

    #[test]
    fn the_shipped_lanes_example_loads_uncommented() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge-agent.toml");
        let mut text = String::new();
        let mut in_lanes = false;
        for line in std::fs::read_to_string(p).unwrap().lines() {
            in_lanes = (in_lanes && line.starts_with("# ")) || line == "# [[lanes]]";
            text.push_str(if in_lanes { &line[2..] } else { line });
            text.push('\n');
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        let c = Config::load(Some(file.path()), [], &[]).unwrap();
        let lanes = c.lanes();
        assert_eq!(lanes.len(), 2, "{lanes:?}");
        assert_eq!((lanes[0].name.as_str(), lanes[0].weight), ("alarm", 9));
        let alarm = c.for_lane("alarm").unwrap();
        assert_eq!(alarm.spool.max_bytes, 67_108_864);
        assert!(alarm.spool.dir.ends_with("spool-lane-alarm"));
        assert_eq!(c.for_lane("default").unwrap().spool.dir, c.spool.dir);
        assert!(c.for_lane("bulk").is_err());
    }

    #[test]
    fn the_small_gateway_profile_loads_and_bounds_rocksdb_to_a_few_mib() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/edge-agent-small.toml");
        let c = Config::load(Some(&p), [], &[]).unwrap();
        let m = c.spool_config().memory;
        assert!(m.budget() <= 4 << 20, "{m:?}");
        assert!(m.max_open_files <= 64, "{m:?}");
    }

    #[test]
    fn unknown_fields_are_refused_everywhere() {
        let base = ["device.id=a".to_string()];
        let e = Config::load(None, env(&[("EDGESYNC_AGENT__UPLINK__PROT", "1")]), &base);
        assert!(e.unwrap_err().to_string().contains("prot"));
        let mut sets = base.to_vec();
        sets.push("spool.max_byte=1".into());
        assert!(Config::load(None, [], &sets)
            .unwrap_err()
            .to_string()
            .contains("max_byte"));
        let e = Config::load(
            None,
            [],
            &["device.id=a".into(), "spool.policy=drop-all".into()],
        );
        assert!(e.unwrap_err().to_string().contains("drop-all"));
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        for (set, why) in [
            ("device.id=Pump/1", "device.id"),
            ("uplink.port=70000", "port"),
            ("uplink.max_inflight=0", "max_inflight"),
            ("spool.max_bytes=0", "max_bytes"),
            ("spool.write_buffer_bytes=1000", "write_buffer_bytes"),
        ] {
            let e = Config::load(None, [], &["device.id=a".into(), set.into()]).unwrap_err();
            assert!(e.to_string().contains(why), "{set}: {e}");
        }
        let e = Config::load(None, [], &[]).unwrap_err();
        assert!(e.to_string().contains("device"), "{e}");
    }
}
