//! Sparkplug B ingest: the host-application side of Eclipse Sparkplug B 3.0, sans IO.
//!
//! [`Sparkplug::handle`] takes one MQTT message under `spBv1.0/` and returns the events it
//! becomes, the rebirth request to publish (if any) and what went wrong; the MQTT task does
//! the IO. The state it keeps per edge node (`{group}/{node}`):
//! - **births**: NBIRTH defines the node's metrics (name, datatype, alias) and its `bdSeq`;
//!   DBIRTH defines a device's. Aliases are unique per edge node, devices included (the spec),
//!   so one alias table per node. A new NBIRTH forgets the node's devices: they must be born
//!   again after it.
//! - **seq**: every message of a node after NBIRTH (seq 0) carries the previous seq + 1 modulo
//!   256. A gap means a lost message: it is counted and a rebirth is requested, and the data
//!   that did arrive is still taken (it is not wrong, only something before it is missing).
//! - **data before birth** (an unknown or dead node, an unborn device) and **an unknown alias**
//!   cannot be read: counted, a rebirth is requested.
//! - **rebirth requests** (`NCMD` with `Node Control/Rebirth` = true) go out at most once per
//!   `rebirth_interval_ms` per node, so a node that keeps failing is not flooded.
//! - **death**: NDEATH (when its `bdSeq` matches the birth's; an older session's will is
//!   ignored) marks the node and its devices offline; DDEATH one device.
//!
//! Mapping (ARCHITECTURE.md, "Sparkplug B"): each NDATA/DDATA becomes events of stream
//! `stream`, one per metric set: metrics with the same timestamp and `is_historical` flag go
//! into one event until a name repeats (a store-and-forward batch holds many samples of one
//! metric). Fields are the metric names made valid ([`field_name`]) with values typed from the
//! Sparkplug datatype; the metric's timestamp (or the payload's) is the field
//! [`EVENT_TIME_FIELD`]; tags `sp_group`, `sp_node`, `sp_device` and `is_historical`. Births,
//! commands and `STATE` messages carry no readings and become no events. Configured `ops` turn
//! a metric's samples into CRDT operations; `lww` and `rollup` skip historical samples, which
//! must not overwrite the present.

use std::collections::BTreeMap;

use edgesync_core::event::EVENT_TIME_FIELD;
use edgesync_core::{EventLimits, Value};
use serde::Deserialize;
use srad_types::payload::Message as _;
use srad_types::payload::{metric, DataType, Metric, Payload};

use super::{IngestEvent, Op};

/// The Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";
const REBIRTH_METRIC: &str = "Node Control/Rebirth";
const BD_SEQ: &str = "bdSeq";

/// `[ingest_mqtt.sparkplug]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparkplugConfig {
    /// Topic filters to subscribe to (QoS 1).
    pub topics: Vec<String>,
    /// Stream of the events.
    pub stream: String,
    /// Send `Node Control/Rebirth` on a seq gap, data before birth or an unknown alias.
    pub rebirth: bool,
    /// Least time between two rebirth requests to one node.
    pub rebirth_interval_ms: u64,
    /// Metrics turned into state operations.
    pub ops: Vec<MetricOp>,
}

impl Default for SparkplugConfig {
    fn default() -> Self {
        Self {
            topics: vec![format!("{NAMESPACE}/#")],
            stream: "sparkplug".into(),
            rebirth: true,
            rebirth_interval_ms: 5_000,
            ops: Vec::new(),
        }
    }
}

/// `[[ingest_mqtt.sparkplug.ops]]`: every sample of `metric` becomes `op` on the state `key`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricOp {
    /// The Sparkplug metric name (as born, e.g. `Outputs/Count`).
    pub metric: String,
    /// What to do with each sample.
    pub op: MetricOpKind,
    /// State key; `{group}`, `{node}`, `{device}` and `{metric}` are replaced.
    pub key: String,
    /// Bucket width of `rollup`.
    #[serde(default)]
    pub bucket_ms: u64,
}

/// The operations a metric can drive.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MetricOpKind {
    /// G-counter, by the sample (a non-negative integer).
    Inc,
    /// PN-counter, by the sample (an integer).
    Add,
    /// Max register.
    Max,
    /// Min register.
    Min,
    /// Last-writer-wins register (live samples only).
    Lww,
    /// Rollup of numeric samples (live samples only).
    Rollup,
}

impl SparkplugConfig {
    /// Checks what serde cannot.
    pub fn check(&self) -> Result<(), String> {
        edgesync_core::event::validate_stream_name(&self.stream).map_err(|e| e.to_string())?;
        if self.topics.is_empty() {
            return Err("ingest_mqtt.sparkplug.topics is empty".into());
        }
        for o in &self.ops {
            if o.op == MetricOpKind::Rollup && o.bucket_ms == 0 {
                return Err(format!(
                    "sparkplug op on {:?}: rollup needs bucket_ms > 0",
                    o.metric
                ));
            }
        }
        Ok(())
    }
}

/// What went wrong with a message (each is counted by [`Problem::reason`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Problem {
    /// The payload is not a Sparkplug B protobuf.
    #[error("payload does not decode: {0}")]
    Malformed(String),
    /// The topic is not `spBv1.0/{group}/{type}/{node}[/{device}]`.
    #[error("topic is not a Sparkplug B topic")]
    BadTopic,
    /// Data or a device birth from a node or device that is not born (or is dead).
    #[error("{what} before its birth")]
    BeforeBirth {
        /// The message type.
        what: &'static str,
    },
    /// The node's seq skipped.
    #[error("seq gap: expected {expected}, got {got}")]
    SeqGap {
        /// The seq that should have come.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// A metric by an alias no birth declared.
    #[error("unknown alias {0}")]
    UnknownAlias(u64),
    /// A metric of a type with no event field type (arrays, datasets, templates, bytes).
    #[error("metric {name:?}: datatype {datatype} has no field type")]
    Unsupported {
        /// The metric.
        name: String,
        /// Its datatype number.
        datatype: u32,
    },
    /// A value that does not fit its field (an unsigned 64-bit value over i64::MAX, a string
    /// over the limit, a value of the wrong protobuf kind for its datatype).
    #[error("metric {name:?}: {why}")]
    BadValue {
        /// The metric.
        name: String,
        /// Why.
        why: String,
    },
    /// An NDEATH whose bdSeq is not the current birth's (an older session's will).
    #[error("stale NDEATH (bdSeq {got:?}, born with {born:?})")]
    StaleDeath {
        /// The death's bdSeq.
        got: Option<u64>,
        /// The birth's.
        born: Option<u64>,
    },
}

impl Problem {
    /// Short reason for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Malformed(_) => "malformed",
            Problem::BadTopic => "bad_topic",
            Problem::BeforeBirth { .. } => "before_birth",
            Problem::SeqGap { .. } => "seq_gap",
            Problem::UnknownAlias(_) => "unknown_alias",
            Problem::Unsupported { .. } => "unsupported_type",
            Problem::BadValue { .. } => "bad_value",
            Problem::StaleDeath { .. } => "stale_death",
        }
    }

    fn wants_rebirth(&self) -> bool {
        matches!(
            self,
            Problem::BeforeBirth { .. } | Problem::SeqGap { .. } | Problem::UnknownAlias(_)
        )
    }
}

/// An MQTT message to publish (QoS 0, as the spec has commands).
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    /// `spBv1.0/{group}/NCMD/{node}`.
    pub topic: String,
    /// The encoded payload.
    pub payload: Vec<u8>,
}

/// What one message became.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The message type (`NDATA`, …), if the topic parsed.
    pub kind: Option<&'static str>,
    /// Events to append.
    pub events: Vec<IngestEvent>,
    /// A rebirth request to publish.
    pub rebirth: Option<Command>,
    /// What went wrong (the rest of the message is still taken).
    pub problems: Vec<Problem>,
}

#[derive(Clone, Debug)]
struct Def {
    name: String,
    datatype: u32,
}

#[derive(Debug, Default)]
struct Node {
    online: bool,
    bd_seq: Option<u64>,
    /// The last seq seen; `None` until NBIRTH.
    seq: Option<u64>,
    aliases: BTreeMap<u64, Def>,
    /// Datatypes by name: the node's metrics under `""`, each device's under its id.
    types: BTreeMap<(String, String), u32>,
    devices: BTreeMap<String, bool>,
    last_rebirth_ms: Option<u64>,
}

struct Topic<'a> {
    group: &'a str,
    kind: &'static str,
    node: &'a str,
    device: Option<&'a str>,
}

fn parse_topic(topic: &str) -> Option<Topic<'_>> {
    let mut parts = topic.split('/');
    if parts.next()? != NAMESPACE {
        return None;
    }
    let group = parts.next()?;
    let kind = match parts.next()? {
        "NBIRTH" => "NBIRTH",
        "NDATA" => "NDATA",
        "NDEATH" => "NDEATH",
        "NCMD" => "NCMD",
        "DBIRTH" => "DBIRTH",
        "DDATA" => "DDATA",
        "DDEATH" => "DDEATH",
        "DCMD" => "DCMD",
        _ => return None,
    };
    let node = parts.next()?;
    let device = parts.next();
    let wants_device = kind.starts_with('D');
    if parts.next().is_some() || device.is_some() != wants_device || group.is_empty() {
        return None;
    }
    Some(Topic {
        group,
        kind,
        node,
        device,
    })
}

/// A metric name as an event field name: every character outside `[A-Za-z0-9_]` becomes `_`,
/// a leading digit gets a `_` before it, and the result is cut to the field name limit.
pub fn field_name(metric: &str) -> String {
    let mut out: String = metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out.truncate(edgesync_core::event::FIELD_NAME_MAX_LEN);
    out
}

/// A metric's value as a field value, typed by its Sparkplug datatype.
fn typed(datatype: u32, value: &metric::Value) -> Result<Value, String> {
    use metric::Value as V;
    let dt = i32::try_from(datatype)
        .ok()
        .and_then(|d| DataType::try_from(d).ok())
        .unwrap_or(DataType::Unknown);
    // Signed types travel as two's complement in the low bits (some writers sign-extend to 32
    // or 64 bits, some do not): the low bits decide.
    Ok(match (dt, value) {
        (DataType::Int8, V::IntValue(v)) => Value::Long(i64::from(*v as u8 as i8)),
        (DataType::Int16, V::IntValue(v)) => Value::Long(i64::from(*v as u16 as i16)),
        (DataType::Int32, V::IntValue(v)) => Value::Long(i64::from(*v as i32)),
        (DataType::Int64, V::LongValue(v)) => Value::Long(*v as i64),
        (DataType::UInt8 | DataType::UInt16 | DataType::UInt32, V::IntValue(v)) => {
            Value::Long(i64::from(*v))
        }
        (DataType::UInt64 | DataType::DateTime, V::LongValue(v)) => Value::Long(
            i64::try_from(*v).map_err(|_| format!("{v} does not fit a signed 64-bit field"))?,
        ),
        (DataType::Float, V::FloatValue(v)) => Value::Double(f64::from(*v)),
        (DataType::Double, V::DoubleValue(v)) => Value::Double(*v),
        (DataType::Boolean, V::BooleanValue(v)) => Value::Bool(*v),
        (DataType::String | DataType::Text | DataType::Uuid, V::StringValue(v)) => {
            Value::String(v.clone())
        }
        (dt, _) => return Err(format!("a {} value of the wrong kind", dt.as_str_name())),
    })
}

fn supported(datatype: u32) -> bool {
    (1..=15).contains(&datatype)
}

/// One metric of a data message, resolved against the births.
struct Sample {
    name: String,
    value: Value,
    time_ms: Option<u64>,
    historical: bool,
}

/// The Sparkplug B host state of one agent.
#[derive(Debug)]
pub struct Sparkplug {
    cfg: SparkplugConfig,
    limits: EventLimits,
    nodes: BTreeMap<(String, String), Node>,
}

/// Online nodes and devices, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    /// Nodes whose last word was a birth.
    pub nodes_online: u64,
    /// Nodes seen, online or not.
    pub nodes_known: u64,
    /// Devices born and not dead, on online nodes.
    pub devices_online: u64,
    /// Devices seen.
    pub devices_known: u64,
}

impl Sparkplug {
    /// A host with no node known yet.
    pub fn new(cfg: SparkplugConfig, limits: EventLimits) -> Self {
        Self {
            cfg,
            limits,
            nodes: BTreeMap::new(),
        }
    }

    /// Handles one message received at `now_ms`.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Outcome {
        let mut out = Outcome::default();
        let Some(t) = parse_topic(topic) else {
            out.problems.push(Problem::BadTopic);
            return out;
        };
        out.kind = Some(t.kind);
        if t.kind.ends_with("CMD") {
            // Commands are the host's own (or another host's) words to nodes.
            return out;
        }
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                out.problems.push(Problem::Malformed(e.to_string()));
                return out;
            }
        };
        let key = (t.group.to_owned(), t.node.to_owned());
        let node = self.nodes.entry(key).or_default();
        match t.kind {
            "NBIRTH" => node_birth(node, &p),
            "NDEATH" => node_death(node, &p, &mut out.problems),
            "DBIRTH" => device_birth(node, t.device.unwrap_or(""), &p, &mut out.problems),
            "DDEATH" => device_death(node, t.device.unwrap_or(""), &p, &mut out.problems),
            _ => {
                let samples = data(node, &t, &p, &self.limits, &mut out.problems);
                out.events = self.events(&t, samples);
            }
        }
        let node = self
            .nodes
            .get_mut(&(t.group.to_owned(), t.node.to_owned()))
            .expect("inserted above");
        if self.cfg.rebirth && out.problems.iter().any(Problem::wants_rebirth) {
            let due = node
                .last_rebirth_ms
                .is_none_or(|l| now_ms >= l + self.cfg.rebirth_interval_ms);
            if due {
                node.last_rebirth_ms = Some(now_ms);
                out.rebirth = Some(rebirth(t.group, t.node, now_ms));
            }
        }
        out
    }

    /// Nodes and devices online.
    pub fn census(&self) -> Census {
        let mut c = Census::default();
        for n in self.nodes.values() {
            c.nodes_known += 1;
            c.nodes_online += u64::from(n.online);
            c.devices_known += n.devices.len() as u64;
            if n.online {
                c.devices_online += n.devices.values().filter(|on| **on).count() as u64;
            }
        }
        c
    }

    /// Every node with its state, for status: `{"group/node": {"online", "devices": {id: online}}}`.
    pub fn status(&self) -> serde_json::Value {
        let nodes: serde_json::Map<String, serde_json::Value> = self
            .nodes
            .iter()
            .map(|((g, n), node)| {
                let devices: serde_json::Map<String, serde_json::Value> = node
                    .devices
                    .iter()
                    .map(|(d, on)| (d.clone(), serde_json::Value::Bool(*on && node.online)))
                    .collect();
                (
                    format!("{g}/{n}"),
                    serde_json::json!({"online": node.online, "devices": devices}),
                )
            })
            .collect();
        serde_json::json!({"census": self.census(), "nodes": nodes})
    }

    fn events(&self, t: &Topic<'_>, samples: Vec<Sample>) -> Vec<IngestEvent> {
        let mut events: Vec<IngestEvent> = Vec::new();
        let mut current: Option<(Option<u64>, bool)> = None;
        for s in samples {
            let field = field_name(&s.name);
            let fits = events.last().is_some_and(|e| {
                current == Some((s.time_ms, s.historical))
                    && !e.fields.contains_key(&field)
                    && e.fields.len() < self.limits.max_fields
            });
            if !fits {
                events.push(self.event(t, s.time_ms, s.historical));
                current = Some((s.time_ms, s.historical));
            }
            let e = events.last_mut().expect("pushed above");
            e.ops.extend(self.ops(t, &s));
            e.fields.insert(field, s.value);
        }
        events
    }

    fn event(&self, t: &Topic<'_>, time_ms: Option<u64>, historical: bool) -> IngestEvent {
        let mut tags = BTreeMap::from([
            ("sp_group".to_owned(), t.group.to_owned()),
            ("sp_node".to_owned(), t.node.to_owned()),
        ]);
        if let Some(d) = t.device {
            tags.insert("sp_device".into(), d.to_owned());
        }
        if historical {
            tags.insert("is_historical".into(), "true".into());
        }
        let mut fields = BTreeMap::new();
        if let Some(ms) = time_ms.and_then(|ms| i64::try_from(ms).ok()) {
            fields.insert(EVENT_TIME_FIELD.to_owned(), Value::Long(ms));
        }
        IngestEvent {
            stream: self.cfg.stream.clone(),
            schema_version: 1,
            fields,
            tags,
            ops: Vec::new(),
        }
    }

    fn ops(&self, t: &Topic<'_>, s: &Sample) -> Vec<Op> {
        self.cfg
            .ops
            .iter()
            .filter(|o| o.metric == s.name)
            .filter_map(|o| {
                let key = o
                    .key
                    .replace("{group}", t.group)
                    .replace("{node}", t.node)
                    .replace("{device}", t.device.unwrap_or(""))
                    .replace("{metric}", &s.name);
                let value = s.value.clone();
                match (o.op, &value) {
                    (MetricOpKind::Inc, Value::Long(v)) => {
                        u64::try_from(*v).ok().map(|by| Op::Inc { key, by })
                    }
                    (MetricOpKind::Add, Value::Long(v)) => Some(Op::Add { key, by: *v }),
                    (MetricOpKind::Max, _) => Some(Op::Max { key, value }),
                    (MetricOpKind::Min, _) => Some(Op::Min { key, value }),
                    (MetricOpKind::Lww, _) if !s.historical => Some(Op::Lww { key, value }),
                    (MetricOpKind::Rollup, Value::Double(_) | Value::Long(_)) if !s.historical => {
                        let value = match value {
                            Value::Double(d) => d,
                            Value::Long(l) => l as f64,
                            _ => return None,
                        };
                        Some(Op::Rollup {
                            key,
                            value,
                            bucket_ms: o.bucket_ms,
                        })
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

fn metric_u64(p: &Payload, name: &str) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .and_then(|m| match m.value {
            Some(metric::Value::LongValue(v)) => Some(v),
            Some(metric::Value::IntValue(v)) => Some(u64::from(v)),
            _ => None,
        })
}

fn node_birth(node: &mut Node, p: &Payload) {
    *node = Node {
        online: true,
        bd_seq: metric_u64(p, BD_SEQ),
        seq: Some(p.seq.unwrap_or(0) % 256),
        last_rebirth_ms: node.last_rebirth_ms,
        ..Node::default()
    };
    define(node, "", &p.metrics);
}

fn define(node: &mut Node, device: &str, metrics: &[Metric]) {
    for m in metrics {
        let (Some(name), Some(dt)) = (&m.name, m.datatype) else {
            continue;
        };
        node.types.insert((device.to_owned(), name.clone()), dt);
        if let Some(a) = m.alias {
            node.aliases.insert(
                a,
                Def {
                    name: name.clone(),
                    datatype: dt,
                },
            );
        }
    }
}

/// Checks and advances the node's seq; false when the node is not born.
fn next_seq(node: &mut Node, p: &Payload, problems: &mut Vec<Problem>) -> bool {
    let Some(last) = node.seq.filter(|_| node.online) else {
        return false;
    };
    let got = p.seq.unwrap_or(0) % 256;
    let expected = (last + 1) % 256;
    if got != expected {
        problems.push(Problem::SeqGap { expected, got });
    }
    node.seq = Some(got);
    true
}

fn node_death(node: &mut Node, p: &Payload, problems: &mut Vec<Problem>) {
    let got = metric_u64(p, BD_SEQ);
    if node.online && got.is_some() && node.bd_seq.is_some() && got != node.bd_seq {
        problems.push(Problem::StaleDeath {
            got,
            born: node.bd_seq,
        });
        return;
    }
    node.online = false;
    node.seq = None;
    for on in node.devices.values_mut() {
        *on = false;
    }
}

fn device_birth(node: &mut Node, device: &str, p: &Payload, problems: &mut Vec<Problem>) {
    if !next_seq(node, p, problems) {
        problems.push(Problem::BeforeBirth { what: "DBIRTH" });
        return;
    }
    node.types.retain(|(d, _), _| d != device);
    define(node, device, &p.metrics);
    node.devices.insert(device.to_owned(), true);
}

fn device_death(node: &mut Node, device: &str, p: &Payload, problems: &mut Vec<Problem>) {
    if next_seq(node, p, problems) {
        node.devices.insert(device.to_owned(), false);
    }
}

/// The samples of an NDATA or DDATA.
fn data(
    node: &mut Node,
    t: &Topic<'_>,
    p: &Payload,
    limits: &EventLimits,
    problems: &mut Vec<Problem>,
) -> Vec<Sample> {
    let device = t.device.unwrap_or("");
    let born = next_seq(node, p, problems)
        && (t.device.is_none() || node.devices.get(device).copied().unwrap_or(false));
    if !born {
        problems.push(Problem::BeforeBirth { what: t.kind });
        return Vec::new();
    }
    let mut samples = Vec::with_capacity(p.metrics.len());
    for m in &p.metrics {
        match sample(node, device, m, p.timestamp, limits) {
            Ok(Some(s)) => samples.push(s),
            Ok(None) => {}
            Err(e) => problems.push(e),
        }
    }
    samples
}

fn sample(
    node: &Node,
    device: &str,
    m: &Metric,
    payload_ms: Option<u64>,
    limits: &EventLimits,
) -> Result<Option<Sample>, Problem> {
    let (name, born_type) = match (&m.name, m.alias) {
        (Some(n), _) => (
            n.clone(),
            node.types.get(&(device.to_owned(), n.clone())).copied(),
        ),
        (None, Some(a)) => {
            let d = node.aliases.get(&a).ok_or(Problem::UnknownAlias(a))?;
            (d.name.clone(), Some(d.datatype))
        }
        (None, None) => {
            return Err(Problem::Malformed(
                "a metric with neither name nor alias".into(),
            ))
        }
    };
    let datatype = m.datatype.or(born_type).unwrap_or(0);
    if !supported(datatype) {
        return Err(Problem::Unsupported { name, datatype });
    }
    let Some(v) = m.value.as_ref().filter(|_| m.is_null != Some(true)) else {
        // An explicit null is "no value now": nothing to record.
        return Ok(None);
    };
    let value = typed(datatype, v).map_err(|why| Problem::BadValue {
        name: name.clone(),
        why,
    })?;
    if let Value::String(s) = &value {
        if s.len() > limits.max_string_bytes {
            return Err(Problem::BadValue {
                name,
                why: format!(
                    "{} bytes, the limit is {}",
                    s.len(),
                    limits.max_string_bytes
                ),
            });
        }
    }
    Ok(Some(Sample {
        name,
        value,
        time_ms: m.timestamp.or(payload_ms),
        historical: m.is_historical == Some(true),
    }))
}

fn rebirth(group: &str, node: &str, now_ms: u64) -> Command {
    let p = Payload {
        timestamp: Some(now_ms),
        metrics: vec![Metric {
            name: Some(REBIRTH_METRIC.into()),
            timestamp: Some(now_ms),
            datatype: Some(DataType::Boolean as u32),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        }],
        seq: None,
        uuid: None,
        body: None,
    };
    Command {
        topic: format!("{NAMESPACE}/{group}/NCMD/{node}"),
        payload: p.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn m(name: Option<&str>, alias: Option<u64>, dt: DataType, v: metric::Value) -> Metric {
        Metric {
            name: name.map(str::to_owned),
            alias,
            datatype: Some(dt as u32),
            value: Some(v),
            ..Metric::default()
        }
    }

    fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            timestamp: Some(1_000),
            metrics,
            seq,
            uuid: None,
            body: None,
        }
        .encode_to_vec()
    }

    fn host() -> Sparkplug {
        let cfg = SparkplugConfig {
            ops: vec![MetricOp {
                metric: "Count".into(),
                op: MetricOpKind::Inc,
                key: "{node}/{device}/{metric}".into(),
                bucket_ms: 0,
            }],
            ..SparkplugConfig::default()
        };
        Sparkplug::new(cfg, EventLimits::default())
    }

    const NB: &str = "spBv1.0/g/NBIRTH/n";
    const DB: &str = "spBv1.0/g/DBIRTH/n/d";
    const DD: &str = "spBv1.0/g/DDATA/n/d";

    fn born() -> Sparkplug {
        use metric::Value as V;
        let mut h = host();
        let bd = m(Some("bdSeq"), None, DataType::Int64, V::LongValue(3));
        assert!(h
            .handle(NB, &payload(Some(0), vec![bd]), 0)
            .problems
            .is_empty());
        let defs = vec![
            m(Some("Temp/Inner"), Some(1), DataType::Int8, V::IntValue(0)),
            m(Some("Count"), Some(2), DataType::UInt64, V::LongValue(0)),
        ];
        assert!(h.handle(DB, &payload(Some(1), defs), 0).problems.is_empty());
        h
    }

    #[test]
    fn data_by_alias_is_typed_from_the_birth_and_drives_the_ops() {
        use metric::Value as V;
        let mut h = born();
        // Int8 -5 sign-extended to 32 bits, as Tahu writes it.
        let t = Metric {
            datatype: None,
            timestamp: Some(7),
            ..m(None, Some(1), DataType::Unknown, V::IntValue(0xFFFF_FFFB))
        };
        let c = Metric {
            datatype: None,
            timestamp: Some(7),
            ..m(None, Some(2), DataType::Unknown, V::LongValue(4))
        };
        let out = h.handle(DD, &payload(Some(2), vec![t, c]), 0);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.events.len(), 1);
        let e = &out.events[0];
        assert_eq!(e.fields["Temp_Inner"], Value::Long(-5));
        assert_eq!(e.fields["Count"], Value::Long(4));
        assert_eq!(e.fields[EVENT_TIME_FIELD], Value::Long(7));
        assert_eq!(e.tags["sp_device"], "d");
        assert_eq!(
            e.ops,
            vec![Op::Inc {
                key: "n/d/Count".into(),
                by: 4
            }]
        );
    }

    #[test]
    fn a_repeated_metric_or_another_time_starts_a_new_event() {
        use metric::Value as V;
        let mut h = born();
        let s = |ts, v, hist| Metric {
            timestamp: Some(ts),
            is_historical: Some(hist),
            ..m(Some("Count"), None, DataType::UInt64, V::LongValue(v))
        };
        let out = h.handle(
            DD,
            &payload(Some(2), vec![s(1, 1, true), s(1, 2, true), s(2, 3, false)]),
            0,
        );
        let counts: Vec<_> = out
            .events
            .iter()
            .map(|e| e.fields["Count"].clone())
            .collect();
        assert_eq!(counts, vec![Value::Long(1), Value::Long(2), Value::Long(3)]);
        assert_eq!(
            out.events[0].tags.get("is_historical").map(String::as_str),
            Some("true")
        );
        assert!(!out.events[2].tags.contains_key("is_historical"));
    }

    #[test]
    fn a_gap_is_counted_and_asks_for_a_rebirth_once_per_interval_and_the_data_is_kept() {
        use metric::Value as V;
        let mut h = born();
        let c = || m(Some("Count"), None, DataType::UInt64, V::LongValue(1));
        let out = h.handle(DD, &payload(Some(5), vec![c()]), 100);
        assert_eq!(
            out.problems,
            vec![Problem::SeqGap {
                expected: 2,
                got: 5
            }]
        );
        assert_eq!(out.events.len(), 1);
        let cmd = out.rebirth.unwrap();
        assert_eq!(cmd.topic, "spBv1.0/g/NCMD/n");
        let p = Payload::decode(cmd.payload.as_slice()).unwrap();
        assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
        assert_eq!(p.metrics[0].value, Some(V::BooleanValue(true)));
        // Another gap within the interval: counted, not asked again.
        let out = h.handle(DD, &payload(Some(9), vec![c()]), 200);
        assert!(out.rebirth.is_none() && out.problems.len() == 1);
        assert!(h
            .handle(DD, &payload(Some(20), vec![c()]), 5_200)
            .rebirth
            .is_some());
    }

    #[test]
    fn seq_wraps_after_255() {
        use metric::Value as V;
        let mut h = born();
        for i in 2..600u64 {
            let out = h.handle(
                DD,
                &payload(
                    Some(i % 256),
                    vec![m(Some("Count"), None, DataType::UInt64, V::LongValue(1))],
                ),
                0,
            );
            assert!(out.problems.is_empty(), "{i}: {:?}", out.problems);
        }
    }

    #[test]
    fn unreadable_input_is_counted_never_a_panic() {
        use metric::Value as V;
        let mut h = host();
        // Data before any birth.
        let out = h.handle(DD, &payload(Some(1), vec![]), 0);
        assert_eq!(out.problems, vec![Problem::BeforeBirth { what: "DDATA" }]);
        assert!(out.rebirth.is_some());
        let mut h = born();
        assert!(matches!(
            h.handle(DD, b"\xff\xff\xff", 0).problems[..],
            [Problem::Malformed(_)]
        ));
        assert_eq!(
            h.handle("spBv1.0/g/DDATA/n", b"", 0).problems,
            vec![Problem::BadTopic]
        );
        let out = h.handle(
            DD,
            &payload(
                Some(2),
                vec![m(None, Some(99), DataType::Int64, V::LongValue(1))],
            ),
            0,
        );
        assert_eq!(out.problems, vec![Problem::UnknownAlias(99)]);
        let big = m(
            Some("Count"),
            None,
            DataType::UInt64,
            V::LongValue(u64::MAX),
        );
        let out = h.handle(DD, &payload(Some(3), vec![big]), 0);
        assert!(matches!(out.problems[..], [Problem::BadValue { .. }]));
        let wrong = m(
            Some("Count"),
            None,
            DataType::Float,
            V::StringValue("x".into()),
        );
        assert!(matches!(
            h.handle(DD, &payload(Some(4), vec![wrong]), 0).problems[..],
            [Problem::BadValue { .. }]
        ));
        let arr = m(Some("A"), None, DataType::Int8Array, V::BytesValue(vec![1]));
        assert!(matches!(
            h.handle(DD, &payload(Some(5), vec![arr]), 0).problems[..],
            [Problem::Unsupported { .. }]
        ));
        // Arbitrary bytes never panic.
        for n in 0..2_000u32 {
            let bytes: Vec<u8> = (0..(n % 64))
                .map(|i| (n.wrapping_mul(2_654_435_761).rotate_left(i) & 0xff) as u8)
                .collect();
            let _ = h.handle(DD, &bytes, 0);
        }
    }

    #[test]
    fn deaths_take_nodes_and_devices_offline_and_a_stale_will_is_ignored() {
        use metric::Value as V;
        let mut h = born();
        assert_eq!(h.census().devices_online, 1);
        let stale = payload(
            None,
            vec![m(Some("bdSeq"), None, DataType::Int64, V::LongValue(2))],
        );
        let out = h.handle("spBv1.0/g/NDEATH/n", &stale, 0);
        assert!(matches!(out.problems[..], [Problem::StaleDeath { .. }]));
        assert_eq!(h.census().nodes_online, 1);
        assert!(h
            .handle("spBv1.0/g/DDEATH/n/d", &payload(Some(2), vec![]), 0)
            .problems
            .is_empty());
        assert_eq!((h.census().nodes_online, h.census().devices_online), (1, 0));
        let death = payload(
            None,
            vec![m(Some("bdSeq"), None, DataType::Int64, V::LongValue(3))],
        );
        assert!(h
            .handle("spBv1.0/g/NDEATH/n", &death, 0)
            .problems
            .is_empty());
        assert_eq!(h.census().nodes_online, 0);
        assert_eq!(h.status()["nodes"]["g/n"]["online"], false);
    }

    #[test]
    fn field_names_are_valid_event_field_names() {
        assert_eq!(field_name("Inputs/Temp 1"), "Inputs_Temp_1");
        assert_eq!(field_name("1st"), "_1st");
        assert_eq!(field_name(&"x".repeat(100)).len(), 64);
        for n in ["a/b", "Node Control/Rebirth", "9", "é"] {
            edgesync_core::event::validate_name("field", &field_name(n)).unwrap();
        }
    }
}
