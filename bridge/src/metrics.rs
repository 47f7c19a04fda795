//! The bridge's Prometheus metrics (prefix `edgesync_bridge_`), registered in a registry the
//! caller passes in. No device labels: per-device detail belongs to the reconciler's ledger.

use edgesync_schemas::DeadLetterReason;
use edgesync_servicekit::metrics::ReasonCounters;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Every metric of the bridge.
#[derive(Debug)]
pub struct BridgeMetrics {
    /// MQTT messages received.
    pub received: Counter,
    /// MQTT messages received again (DUP flag: a redelivery after a bridge or link failure).
    pub redelivered: Counter,
    /// Batches Kafka confirmed on the deltas topic.
    pub forwarded: Counter,
    /// Messages Kafka confirmed on the dead-letter topic, by reason.
    pub dead_lettered: ReasonCounters,
    /// MQTT acknowledgements sent (each after Kafka's delivery report).
    pub mqtt_acked: Counter,
    /// Messages received and not yet acknowledged.
    pub inflight: Gauge,
    /// Their payload bytes.
    pub inflight_bytes: Gauge,
    /// The most messages ever in flight at once: above `max_inflight` only when the broker
    /// ignored the receive maximum.
    pub inflight_peak: Gauge,
    /// The configured window (`mqtt.max_inflight`), for comparing `inflight` against it.
    pub inflight_limit: Gauge,
    /// Receive → Kafka delivery report.
    pub produce_latency: Histogram,
    /// Produce attempts that failed and were retried.
    pub produce_retries: Counter,
    /// MQTT connections after the first (devices' side).
    pub mqtt_reconnects: Counter,
    /// Acknowledgements published to devices (retained).
    pub acks_published: Counter,
    /// Acknowledgements skipped because a newer watermark was already published.
    pub acks_stale: Counter,
    /// Ack records that did not decode (skipped; the reconciler wrote them).
    pub acks_undecodable: Counter,
}

impl BridgeMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            received: Counter::default(),
            redelivered: Counter::default(),
            forwarded: Counter::default(),
            dead_lettered: ReasonCounters::new(DeadLetterReason::ALL.map(DeadLetterReason::label)),
            mqtt_acked: Counter::default(),
            inflight: Gauge::default(),
            inflight_bytes: Gauge::default(),
            inflight_peak: Gauge::default(),
            inflight_limit: Gauge::default(),
            produce_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            produce_retries: Counter::default(),
            mqtt_reconnects: Counter::default(),
            acks_published: Counter::default(),
            acks_stale: Counter::default(),
            acks_undecodable: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("edgesync_bridge");
        r.register("received", "MQTT messages received", m.received.clone());
        r.register(
            "redelivered",
            "MQTT messages received again (DUP flag)",
            m.redelivered.clone(),
        );
        r.register(
            "forwarded",
            "Batches confirmed by Kafka on the deltas topic",
            m.forwarded.clone(),
        );
        r.register(
            "dead_lettered",
            "Messages confirmed on the dead-letter topic, by reason",
            m.dead_lettered.family(),
        );
        r.register(
            "mqtt_acked",
            "MQTT acknowledgements sent after Kafka confirmed",
            m.mqtt_acked.clone(),
        );
        r.register(
            "inflight",
            "Messages received and not yet acknowledged",
            m.inflight.clone(),
        );
        r.register(
            "inflight_bytes",
            "Payload bytes received and not yet acknowledged",
            m.inflight_bytes.clone(),
        );
        r.register(
            "inflight_peak",
            "Most messages in flight at once since start",
            m.inflight_peak.clone(),
        );
        r.register(
            "inflight_limit",
            "The window: mqtt.max_inflight, sent to the broker as the receive maximum",
            m.inflight_limit.clone(),
        );
        r.register(
            "produce_latency_seconds",
            "Receive to Kafka delivery report",
            m.produce_latency.clone(),
        );
        r.register(
            "produce_retries",
            "Failed produce attempts, retried",
            m.produce_retries.clone(),
        );
        r.register(
            "mqtt_reconnects",
            "MQTT connections after the first",
            m.mqtt_reconnects.clone(),
        );
        r.register(
            "acks_published",
            "Acknowledgements published to devices",
            m.acks_published.clone(),
        );
        r.register(
            "acks_stale",
            "Acknowledgements older than one already published",
            m.acks_stale.clone(),
        );
        r.register(
            "acks_undecodable",
            "Ack records that did not decode",
            m.acks_undecodable.clone(),
        );
        m
    }
}
