//! Sparkplug B ingest: the agent as a (non-primary) Sparkplug B 3.0 host application, sans IO.
//!
//! [`Sparkplug::handle`] takes one MQTT message under `spBv1.0/` and returns the events it
//! becomes, the rebirth request to publish (if any) and what went wrong; the MQTT task does
//! the IO. The state it keeps per edge node (`{group}/{node}`):
//! - **births**: NBIRTH defines the node's metrics (name, datatype, alias) and its `bdSeq`;
//!   DBIRTH defines a device's, replacing that device's earlier definitions. Aliases are
//!   unique per edge node (the spec), so one alias table per node, each alias remembering the
//!   device it belongs to. A new NBIRTH forgets the node's devices: they must be born again.
//! - **seq**: every message of a node after NBIRTH (seq 0) carries the previous seq + 1 modulo
//!   256. The same seq again is a redelivery: dropped and counted, so nothing is stored twice.
//!   A gap means a lost message: it is counted and a rebirth is requested, and the data that
//!   did arrive is still taken (it is not wrong, only something before it is missing).
//! - **data before birth** (an unknown or dead node, an unborn device), **an unknown alias**
//!   and **a named metric no birth declared** cannot be typed: counted, a rebirth is requested.
//! - **rebirth requests** (`NCMD` with `Node Control/Rebirth` = true) go out at most once per
//!   `rebirth_interval_ms` per node, so a node that keeps failing is not flooded.
//! - **death**: NDEATH (when its `bdSeq` matches the birth's; an older session's will is
//!   ignored) marks the node and its devices offline; DDEATH one device.
//!
//! Mapping (ARCHITECTURE.md, "Sparkplug B"): each NBIRTH, DBIRTH, NDATA and DDATA becomes
//! events of stream `stream`, one per metric set: metrics with the same timestamp and
//! `is_historical` flag go into one event until a name repeats (a store-and-forward batch holds
//! many samples of one metric) or the field or op limit is reached. Fields are the metric
//! names made valid ([`field_name`]) with values typed from the Sparkplug datatype; the
//! metric's timestamp (or the payload's) is the field [`EVENT_TIME_FIELD`]; tags `sp_group`,
//! `sp_node`, `sp_device`, `is_historical` and, on a birth's values, `sp_birth`. Births restate
//! current values, so configured `ops` run on data only (a rebirth must not count twice);
//! `lww` and `rollup` skip historical samples, which must not overwrite the present. Deaths,
//! commands and `STATE` carry no readings.

use std::collections::BTreeMap;

use edgesync_core::event::EVENT_TIME_FIELD;
use edgesync_core::{EventLimits, Value};
use serde::Deserialize;
use srad_types::payload::Message as _;
use srad_types::payload::{metric, DataType, Metric, Payload};

use super::{IngestConfig, IngestEvent, Op};

/// The Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";
const REBIRTH_METRIC: &str = "Node Control/Rebirth";
/// Birth metrics that are the node's controls and session, not readings.
const NOT_READINGS: [&str; 2] = ["bdSeq", "Node Control/"];
const BD_SEQ: &str = "bdSeq";
/// The longest rebirth interval a config may set (one hour).
const MAX_REBIRTH_INTERVAL_MS: u64 = 3_600_000;

/// `[ingest_mqtt.sparkplug]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparkplugConfig {
    /// Topic filters to subscribe to (QoS 1), all under `spBv1.0/`.
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
    /// G-counter, by the sample (a non-negative integer: a count of new things, not a
    /// cumulative total; use `max` for a total that only grows).
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
        if let Some(t) = self
            .topics
            .iter()
            .find(|t| !t.starts_with(&format!("{NAMESPACE}/")))
        {
            return Err(format!(
                "ingest_mqtt.sparkplug.topics: {t:?} is not under {NAMESPACE}/"
            ));
        }
        if self.rebirth_interval_ms > MAX_REBIRTH_INTERVAL_MS {
            return Err(format!(
                "ingest_mqtt.sparkplug.rebirth_interval_ms must be <= {MAX_REBIRTH_INTERVAL_MS}"
            ));
        }
        for o in &self.ops {
            edgesync_core::event::validate_state_key(&o.key).map_err(|e| e.to_string())?;
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
    /// The topic is not `spBv1.0/{group}/{type}/{node}[/{device}]` nor `spBv1.0/STATE/{host}`.
    #[error("topic is not a Sparkplug B topic")]
    BadTopic,
    /// Data, a device birth or death from a node or device that is not born (or is dead).
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
    /// The node's last seq again: a redelivered message, dropped.
    #[error("seq {0} again: a redelivery, dropped")]
    Duplicate(u64),
    /// A metric by an alias no birth of this node or device declared.
    #[error("unknown alias {0}")]
    UnknownAlias(u64),
    /// A metric by a name no birth declared, without a datatype.
    #[error("metric {0:?} was not born and has no datatype")]
    NotBorn(String),
    /// A metric with neither name nor alias.
    #[error("a metric with neither name nor alias")]
    Nameless,
    /// A metric of a type with no event field type (arrays, datasets, templates, bytes).
    #[error("metric {name:?}: datatype {datatype} has no field type")]
    Unsupported {
        /// The metric.
        name: String,
        /// Its datatype number.
        datatype: u32,
    },
    /// A value that does not fit its field or its op (out of its type's range, a string over
    /// the limit, a value of the wrong protobuf kind, a negative `inc`, a non-finite sample
    /// for `max`, `min` or `rollup`).
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
            Problem::Malformed(_) | Problem::Nameless => "malformed",
            Problem::BadTopic => "bad_topic",
            Problem::BeforeBirth { .. } | Problem::NotBorn(_) => "before_birth",
            Problem::SeqGap { .. } => "seq_gap",
            Problem::Duplicate(_) => "duplicate",
            Problem::UnknownAlias(_) => "unknown_alias",
            Problem::Unsupported { .. } => "unsupported_type",
            Problem::BadValue { .. } => "bad_value",
            Problem::StaleDeath { .. } => "stale_death",
        }
    }

    fn wants_rebirth(&self) -> bool {
        matches!(
            self,
            Problem::BeforeBirth { .. }
                | Problem::SeqGap { .. }
                | Problem::UnknownAlias(_)
                | Problem::NotBorn(_)
        )
    }

    fn bad(name: &str, why: impl Into<String>) -> Self {
        Problem::BadValue {
            name: name.to_owned(),
            why: why.into(),
        }
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
    /// The message type (`NDATA`, …, `STATE`), if the topic parsed.
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
    /// `""` for the node's own metrics.
    device: String,
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
    /// Datatypes by (device, name): the node's metrics under `""`.
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

const KINDS: [&str; 8] = [
    "NBIRTH", "NDATA", "NDEATH", "NCMD", "DBIRTH", "DDATA", "DDEATH", "DCMD",
];

fn parse_topic(topic: &str) -> Option<Topic<'_>> {
    let mut parts = topic.split('/');
    if parts.next()? != NAMESPACE {
        return None;
    }
    let group = parts.next()?;
    let kind = parts.next()?;
    let kind = *KINDS.iter().find(|k| **k == kind)?;
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

/// `spBv1.0/STATE/{host}`: a host application's own birth and death.
fn is_state_topic(topic: &str) -> bool {
    let mut parts = topic.split('/');
    parts.next() == Some(NAMESPACE) && parts.next() == Some("STATE") && parts.next().is_some()
}

/// A metric name as an event field name: every character outside `[A-Za-z0-9_]` becomes `_`,
/// a leading digit gets a `_` before it, the result is cut to the field name limit, and the
/// event time's own name gets a `_` before it. Names that differ only in those characters map
/// to one field name (ARCHITECTURE.md says what then happens).
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
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') || out == EVENT_TIME_FIELD {
        out.insert(0, '_');
    }
    out.truncate(edgesync_core::event::FIELD_NAME_MAX_LEN);
    out
}

/// An integer metric's raw bits: writers put any integer type in either protobuf field
/// (Tahu writes UInt32 as a long, pysparkplug as an int).
fn raw_int(value: &metric::Value) -> Option<(u64, u32)> {
    match value {
        metric::Value::IntValue(v) => Some((u64::from(*v), 32)),
        metric::Value::LongValue(v) => Some((*v, 64)),
        _ => None,
    }
}

/// A signed type of `bits` from raw bits that are either the two's complement in the low bits
/// (pysparkplug) or sign-extended to the field's width (Tahu).
fn signed(raw: u64, width: u32, bits: u32) -> Option<i64> {
    let shift = 64 - bits;
    let value = ((raw << shift) as i64) >> shift;
    let extended = if width == 64 {
        value as u64
    } else {
        value as u64 & 0xFFFF_FFFF
    };
    (bits == 64 || raw < 1 << bits || raw == extended).then_some(value)
}

/// A metric's value as a field value, typed by its Sparkplug datatype.
fn typed(name: &str, datatype: u32, value: &metric::Value) -> Result<Value, Problem> {
    use metric::Value as V;
    let dt = i32::try_from(datatype)
        .ok()
        .and_then(|d| DataType::try_from(d).ok())
        .unwrap_or(DataType::Unknown);
    let int = raw_int(value);
    let wrong = || {
        Problem::bad(
            name,
            format!("a {} value of the wrong kind or range", dt.as_str_name()),
        )
    };
    let signed_of = |bits| int.and_then(|(raw, width)| signed(raw, width, bits));
    let unsigned_of = |max: u64| int.map(|(raw, _)| raw).filter(|raw| *raw <= max);
    let long = |v: Option<i64>| v.map(Value::Long).ok_or_else(wrong);
    match (dt, value) {
        (DataType::Int8, _) => long(signed_of(8)),
        (DataType::Int16, _) => long(signed_of(16)),
        (DataType::Int32, _) => long(signed_of(32)),
        (DataType::Int64 | DataType::DateTime, _) => long(signed_of(64)),
        (DataType::UInt8, _) => long(unsigned_of(u8::MAX.into()).map(|v| v as i64)),
        (DataType::UInt16, _) => long(unsigned_of(u16::MAX.into()).map(|v| v as i64)),
        (DataType::UInt32, _) => long(unsigned_of(u32::MAX.into()).map(|v| v as i64)),
        (DataType::UInt64, _) => long(unsigned_of(i64::MAX as u64).map(|v| v as i64)),
        (DataType::Float, V::FloatValue(v)) => Ok(Value::Double(f64::from(*v))),
        (DataType::Double, V::DoubleValue(v)) => Ok(Value::Double(*v)),
        (DataType::Boolean, V::BooleanValue(v)) => Ok(Value::Bool(*v)),
        (DataType::String | DataType::Text | DataType::Uuid, V::StringValue(v)) => {
            Ok(Value::String(v.clone()))
        }
        (DataType::Float | DataType::Double | DataType::Boolean, _) => Err(wrong()),
        (DataType::String | DataType::Text | DataType::Uuid, _) => Err(wrong()),
        _ => Err(Problem::Unsupported {
            name: name.to_owned(),
            datatype,
        }),
    }
}

/// One metric of a message, resolved against the births.
struct Sample {
    name: String,
    value: Value,
    time_ms: Option<u64>,
    historical: bool,
}

/// How metrics become events: the config and the limits of one event.
#[derive(Debug)]
struct Mapping {
    cfg: SparkplugConfig,
    limits: EventLimits,
    max_ops: usize,
}

/// The Sparkplug B host state of one agent.
#[derive(Debug)]
pub struct Sparkplug {
    map: Mapping,
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
    /// A host with no node known yet, making events within `ingest`'s limits.
    pub fn new(cfg: SparkplugConfig, ingest: &IngestConfig) -> Self {
        Self {
            map: Mapping {
                cfg,
                limits: ingest.limits,
                max_ops: ingest.max_ops,
            },
            nodes: BTreeMap::new(),
        }
    }

    /// Handles one message received at `now_ms`.
    pub fn handle(&mut self, topic: &str, payload: &[u8], now_ms: u64) -> Outcome {
        let mut out = Outcome::default();
        if is_state_topic(topic) {
            out.kind = Some("STATE");
            return out;
        }
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
        let node = self
            .nodes
            .entry((t.group.to_owned(), t.node.to_owned()))
            .or_default();
        let samples = match t.kind {
            "NBIRTH" => node_birth(node, &p, &self.map.limits, &mut out.problems),
            "NDEATH" => node_death(node, &p, &mut out.problems),
            "DBIRTH" => device_birth(node, &t, &p, &self.map.limits, &mut out.problems),
            "DDEATH" => device_death(node, &t, &p, &mut out.problems),
            _ => data(node, &t, &p, &self.map.limits, &mut out.problems),
        };
        let birth = t.kind.ends_with("BIRTH");
        out.events = self.map.events(&t, samples, birth, &mut out.problems);
        let due = node
            .last_rebirth_ms
            .is_none_or(|l| now_ms.saturating_sub(l) >= self.map.cfg.rebirth_interval_ms);
        if self.map.cfg.rebirth && due && out.problems.iter().any(Problem::wants_rebirth) {
            node.last_rebirth_ms = Some(now_ms);
            out.rebirth = Some(rebirth(t.group, t.node, now_ms));
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
}

impl Mapping {
    fn events(
        &self,
        t: &Topic<'_>,
        samples: Vec<Sample>,
        birth: bool,
        problems: &mut Vec<Problem>,
    ) -> Vec<IngestEvent> {
        let mut events: Vec<IngestEvent> = Vec::new();
        let mut current: Option<(Option<u64>, bool)> = None;
        for s in samples {
            let field = field_name(&s.name);
            let ops = if birth {
                Vec::new()
            } else {
                self.ops(t, &s, problems)
            };
            let fits = events.last().is_some_and(|e| {
                current == Some((s.time_ms, s.historical))
                    && !e.fields.contains_key(&field)
                    && e.fields.len() < self.limits.max_fields
                    && e.ops.len() + ops.len() <= self.max_ops
            });
            if !fits {
                events.push(self.event(t, s.time_ms, s.historical, birth));
                current = Some((s.time_ms, s.historical));
            }
            if let Some(e) = events.last_mut() {
                e.ops.extend(ops);
                e.fields.insert(field, s.value);
            }
        }
        events
    }

    fn event(
        &self,
        t: &Topic<'_>,
        time_ms: Option<u64>,
        historical: bool,
        birth: bool,
    ) -> IngestEvent {
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
        if birth {
            tags.insert("sp_birth".into(), "true".into());
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

    /// The configured ops of a data sample; a value an op cannot take is counted, not sent.
    fn ops(&self, t: &Topic<'_>, s: &Sample, problems: &mut Vec<Problem>) -> Vec<Op> {
        let mut out = Vec::new();
        for o in self.cfg.ops.iter().filter(|o| o.metric == s.name) {
            let key = o
                .key
                .replace("{group}", t.group)
                .replace("{node}", t.node)
                .replace("{device}", t.device.unwrap_or(""))
                .replace("{metric}", &s.name);
            match op(o, key, s) {
                Ok(Some(op)) => out.push(op),
                Ok(None) => {}
                Err(why) => problems.push(Problem::bad(&s.name, why)),
            }
        }
        out
    }
}

/// Sample `s` as operation `o` on `key`; `None` where the op skips historical samples.
fn op(o: &MetricOp, key: String, s: &Sample) -> Result<Option<Op>, String> {
    let value = s.value.clone();
    let number = match &value {
        Value::Double(d) => Some(*d),
        Value::Long(l) => Some(*l as f64),
        _ => None,
    };
    if number.is_some_and(|n| !n.is_finite()) && o.op != MetricOpKind::Lww {
        return Err(format!(
            "{value:?} is not finite, {:?} cannot take it",
            o.op
        ));
    }
    Ok(match (o.op, &value) {
        (MetricOpKind::Inc, Value::Long(v)) => Some(Op::Inc {
            key,
            by: u64::try_from(*v).map_err(|_| format!("inc by {v}: negative"))?,
        }),
        (MetricOpKind::Add, Value::Long(v)) => Some(Op::Add { key, by: *v }),
        (MetricOpKind::Inc | MetricOpKind::Add, _) => {
            return Err(format!("{:?} needs an integer, not {value:?}", o.op))
        }
        (MetricOpKind::Max, _) => Some(Op::Max { key, value }),
        (MetricOpKind::Min, _) => Some(Op::Min { key, value }),
        (MetricOpKind::Lww | MetricOpKind::Rollup, _) if s.historical => None,
        (MetricOpKind::Lww, _) => Some(Op::Lww { key, value }),
        (MetricOpKind::Rollup, _) => Some(Op::Rollup {
            key,
            value: number.ok_or_else(|| format!("rollup needs a number, not {value:?}"))?,
            bucket_ms: o.bucket_ms,
        }),
    })
}

fn metric_u64(p: &Payload, name: &str) -> Option<u64> {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .and_then(|m| m.value.as_ref().and_then(raw_int))
        .map(|(raw, _)| raw)
}

fn node_birth(
    node: &mut Node,
    p: &Payload,
    limits: &EventLimits,
    problems: &mut Vec<Problem>,
) -> Vec<Sample> {
    *node = Node {
        online: true,
        bd_seq: metric_u64(p, BD_SEQ),
        seq: Some(p.seq.unwrap_or(0) % 256),
        last_rebirth_ms: node.last_rebirth_ms,
        ..Node::default()
    };
    define(node, "", &p.metrics);
    readings(node, "", p, limits, problems)
}

/// Records a birth's definitions for `device` (`""`: the node), replacing its earlier ones.
fn define(node: &mut Node, device: &str, metrics: &[Metric]) {
    node.aliases.retain(|_, d| d.device != device);
    node.types.retain(|(d, _), _| d != device);
    for m in metrics {
        let (Some(name), Some(dt)) = (&m.name, m.datatype) else {
            continue;
        };
        node.types.insert((device.to_owned(), name.clone()), dt);
        if let Some(a) = m.alias {
            let def = Def {
                device: device.to_owned(),
                name: name.clone(),
                datatype: dt,
            };
            node.aliases.insert(a, def);
        }
    }
}

/// Where a message stands in its node's seq order.
enum Seq {
    /// The node is not born (or dead).
    Unborn,
    /// The node's last seq again.
    Again,
    /// Next (a gap is recorded as a problem).
    Next,
}

/// Checks and advances the node's seq.
fn next_seq(node: &mut Node, p: &Payload, problems: &mut Vec<Problem>) -> Seq {
    let Some(last) = node.seq.filter(|_| node.online) else {
        return Seq::Unborn;
    };
    let got = p.seq.unwrap_or(0) % 256;
    if got == last {
        problems.push(Problem::Duplicate(got));
        return Seq::Again;
    }
    let expected = (last + 1) % 256;
    if got != expected {
        problems.push(Problem::SeqGap { expected, got });
    }
    node.seq = Some(got);
    Seq::Next
}

fn node_death(node: &mut Node, p: &Payload, problems: &mut Vec<Problem>) -> Vec<Sample> {
    let got = metric_u64(p, BD_SEQ);
    if node.online && got.is_some() && node.bd_seq.is_some() && got != node.bd_seq {
        problems.push(Problem::StaleDeath {
            got,
            born: node.bd_seq,
        });
        return Vec::new();
    }
    node.online = false;
    node.seq = None;
    for on in node.devices.values_mut() {
        *on = false;
    }
    Vec::new()
}

/// Checks a node message's seq (DBIRTH, DDEATH, NDATA, DDATA): true when it is the node's
/// next message and the message should be taken; an unborn node is a problem, a redelivery
/// is dropped.
fn in_order(node: &mut Node, t: &Topic<'_>, p: &Payload, problems: &mut Vec<Problem>) -> bool {
    match next_seq(node, p, problems) {
        Seq::Unborn => {
            problems.push(Problem::BeforeBirth { what: t.kind });
            false
        }
        Seq::Again => false,
        Seq::Next => true,
    }
}

fn device_birth(
    node: &mut Node,
    t: &Topic<'_>,
    p: &Payload,
    limits: &EventLimits,
    problems: &mut Vec<Problem>,
) -> Vec<Sample> {
    if !in_order(node, t, p, problems) {
        return Vec::new();
    }
    let device = t.device.unwrap_or("");
    define(node, device, &p.metrics);
    node.devices.insert(device.to_owned(), true);
    readings(node, device, p, limits, problems)
}

fn device_death(
    node: &mut Node,
    t: &Topic<'_>,
    p: &Payload,
    problems: &mut Vec<Problem>,
) -> Vec<Sample> {
    if in_order(node, t, p, problems) {
        node.devices
            .insert(t.device.unwrap_or("").to_owned(), false);
    }
    Vec::new()
}

/// The samples of an NDATA or DDATA.
fn data(
    node: &mut Node,
    t: &Topic<'_>,
    p: &Payload,
    limits: &EventLimits,
    problems: &mut Vec<Problem>,
) -> Vec<Sample> {
    if !in_order(node, t, p, problems) {
        return Vec::new();
    }
    let device = t.device.unwrap_or("");
    if t.device.is_some() && !node.devices.get(device).copied().unwrap_or(false) {
        problems.push(Problem::BeforeBirth { what: t.kind });
        return Vec::new();
    }
    readings(node, device, p, limits, problems)
}

/// The readings among a message's metrics (a birth's controls and session number are not).
fn readings(
    node: &Node,
    device: &str,
    p: &Payload,
    limits: &EventLimits,
    problems: &mut Vec<Problem>,
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(p.metrics.len());
    for m in &p.metrics {
        let control = m
            .name
            .as_deref()
            .is_some_and(|n| NOT_READINGS.iter().any(|c| n.starts_with(c)));
        if control {
            continue;
        }
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
            let d = node
                .aliases
                .get(&a)
                .filter(|d| d.device == device)
                .ok_or(Problem::UnknownAlias(a))?;
            (d.name.clone(), Some(d.datatype))
        }
        (None, None) => return Err(Problem::Nameless),
    };
    let datatype = m
        .datatype
        .or(born_type)
        .ok_or_else(|| Problem::NotBorn(name.clone()))?;
    let Some(v) = m.value.as_ref().filter(|_| m.is_null != Some(true)) else {
        // An explicit null is "no value now": nothing to record.
        return Ok(None);
    };
    let value = typed(&name, datatype, v)?;
    if let Value::String(s) = &value {
        if s.len() > limits.max_string_bytes {
            let why = format!(
                "{} bytes, the limit is {}",
                s.len(),
                limits.max_string_bytes
            );
            return Err(Problem::bad(&name, why));
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
        Sparkplug::new(cfg, &IngestConfig::default())
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
    fn a_redelivered_message_is_dropped_not_stored_twice() {
        use metric::Value as V;
        let mut h = born();
        let c = || m(Some("Count"), None, DataType::UInt64, V::LongValue(1));
        assert_eq!(
            h.handle(DD, &payload(Some(2), vec![c()]), 0).events.len(),
            1
        );
        let again = h.handle(DD, &payload(Some(2), vec![c()]), 0);
        assert!(again.events.is_empty() && again.rebirth.is_none());
        assert_eq!(again.problems, vec![Problem::Duplicate(2)]);
    }

    #[test]
    fn a_birth_restates_values_as_events_without_ops_and_controls() {
        use metric::Value as V;
        let mut h = host();
        let nb = vec![
            m(Some("bdSeq"), None, DataType::Int64, V::LongValue(0)),
            m(
                Some("Node Control/Rebirth"),
                None,
                DataType::Boolean,
                V::BooleanValue(false),
            ),
            m(Some("Uptime"), Some(1), DataType::UInt32, V::IntValue(9)),
        ];
        let out = h.handle(NB, &payload(Some(0), nb), 0);
        assert_eq!(out.events.len(), 1);
        let e = &out.events[0];
        assert_eq!(
            e.fields.keys().collect::<Vec<_>>(),
            ["Uptime", EVENT_TIME_FIELD]
        );
        assert_eq!(e.tags["sp_birth"], "true");
        let db = vec![m(Some("Count"), Some(2), DataType::UInt64, V::LongValue(7))];
        let out = h.handle(DB, &payload(Some(1), db), 0);
        assert_eq!(out.events[0].fields["Count"], Value::Long(7));
        assert!(
            out.events[0].ops.is_empty(),
            "a rebirth must not count twice"
        );
    }

    #[test]
    fn integers_arrive_in_either_field_and_are_range_checked() {
        use metric::Value as V;
        let v = |dt: DataType, x| typed("x", dt as u32, &x);
        // Tahu writes UInt32 as a long; signed types sign-extended or not.
        assert_eq!(
            v(DataType::UInt32, V::LongValue(4_000_000_000)),
            Ok(Value::Long(4_000_000_000))
        );
        assert_eq!(v(DataType::Int8, V::IntValue(251)), Ok(Value::Long(-5)));
        assert_eq!(
            v(DataType::Int8, V::LongValue(u64::MAX - 4)),
            Ok(Value::Long(-5))
        );
        assert_eq!(
            v(DataType::Int16, V::IntValue(0xFFFF_8000)),
            Ok(Value::Long(-32768))
        );
        assert_eq!(
            v(DataType::Int64, V::LongValue(u64::MAX)),
            Ok(Value::Long(-1))
        );
        assert_eq!(
            v(DataType::DateTime, V::LongValue(1_700_000_000_000)),
            Ok(Value::Long(1_700_000_000_000))
        );
        for (dt, x) in [
            (DataType::Int8, V::IntValue(300)),
            (DataType::UInt8, V::IntValue(256)),
            (DataType::UInt16, V::LongValue(70_000)),
            (DataType::UInt64, V::LongValue(u64::MAX)),
            (DataType::Boolean, V::IntValue(1)),
        ] {
            assert!(matches!(v(dt, x), Err(Problem::BadValue { .. })), "{dt:?}");
        }
        assert!(matches!(
            v(DataType::Bytes, V::BytesValue(vec![])),
            Err(Problem::Unsupported { .. })
        ));
    }

    #[test]
    fn values_an_op_cannot_take_are_counted_and_the_reading_kept() {
        use metric::Value as V;
        let cfg = SparkplugConfig {
            ops: vec![MetricOp {
                metric: "P".into(),
                op: MetricOpKind::Rollup,
                key: "p".into(),
                bucket_ms: 1000,
            }],
            ..SparkplugConfig::default()
        };
        let mut h = Sparkplug::new(cfg, &IngestConfig::default());
        let bd = m(Some("bdSeq"), None, DataType::Int64, V::LongValue(0));
        h.handle(NB, &payload(Some(0), vec![bd]), 0);
        let nd = vec![m(
            Some("P"),
            None,
            DataType::Double,
            V::DoubleValue(f64::NAN),
        )];
        let out = h.handle("spBv1.0/g/NDATA/n", &payload(Some(1), nd), 0);
        assert_eq!(out.events.len(), 1);
        assert!(out.events[0].ops.is_empty());
        assert!(matches!(out.problems[..], [Problem::BadValue { .. }]));
    }

    #[test]
    fn an_event_is_cut_at_the_op_limit() {
        use metric::Value as V;
        let ops = (0..3)
            .map(|i| MetricOp {
                metric: format!("M{i}"),
                op: MetricOpKind::Inc,
                key: format!("k{i}"),
                bucket_ms: 0,
            })
            .collect();
        let cfg = SparkplugConfig {
            ops,
            ..SparkplugConfig::default()
        };
        let ingest = IngestConfig {
            max_ops: 2,
            ..IngestConfig::default()
        };
        let mut h = Sparkplug::new(cfg, &ingest);
        h.handle(NB, &payload(Some(0), vec![]), 0);
        let nd = (0..3)
            .map(|i| {
                m(
                    Some(&format!("M{i}")),
                    None,
                    DataType::Int64,
                    V::LongValue(1),
                )
            })
            .collect();
        let out = h.handle("spBv1.0/g/NDATA/n", &payload(Some(1), nd), 0);
        let sizes: Vec<_> = out.events.iter().map(|e| e.ops.len()).collect();
        assert_eq!(sizes, [2, 1]);
    }

    #[test]
    fn state_messages_and_commands_are_not_problems_and_aliases_belong_to_their_device() {
        use metric::Value as V;
        let mut h = born();
        assert!(h
            .handle("spBv1.0/STATE/scada", b"{\"online\":true}", 0)
            .problems
            .is_empty());
        assert!(h.handle("spBv1.0/g/NCMD/n", b"", 0).problems.is_empty());
        // Alias 1 is device d's; from another device it is unknown.
        let other = vec![m(Some("X"), Some(5), DataType::Int64, V::LongValue(0))];
        h.handle("spBv1.0/g/DBIRTH/n/e", &payload(Some(2), other), 0);
        let by_alias = vec![m(None, Some(1), DataType::Int8, V::IntValue(1))];
        let out = h.handle("spBv1.0/g/DDATA/n/e", &payload(Some(3), by_alias), 0);
        assert_eq!(out.problems, vec![Problem::UnknownAlias(1)]);
    }

    #[test]
    fn field_names_are_valid_event_field_names() {
        assert_eq!(field_name("Inputs/Temp 1"), "Inputs_Temp_1");
        assert_eq!(field_name("1st"), "_1st");
        assert_eq!(field_name(&"x".repeat(100)).len(), 64);
        assert_eq!(field_name(EVENT_TIME_FIELD), "_event_time_ms");
        for n in ["a/b", "Node Control/Rebirth", "9", "é"] {
            edgesync_core::event::validate_name("field", &field_name(n)).unwrap();
        }
    }
}
