//! The bridge's Prometheus metrics (prefix `edgesync_bridge_`), registered in a registry the
//! caller passes in. No device labels: per-device detail belongs to the reconciler's ledger.

use edgesync_schemas::DeadLetterReason;
use edgesync_servicekit::metrics::ReasonCounters;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

edgesync_servicekit::metric_set! {
    /// Every metric of the bridge.
    #[derive(Debug)]
    pub struct BridgeMetrics, prefix "edgesync_bridge" {
        /// MQTT messages received.
        received: Counter = Counter::default(), "received", "MQTT messages received";
        /// MQTT messages received again (DUP flag: a redelivery after a bridge or link failure).
        redelivered: Counter = Counter::default(),
            "redelivered", "MQTT messages received again (DUP flag)";
        /// Batches Kafka confirmed on the deltas topic.
        forwarded: Counter = Counter::default(),
            "forwarded", "Batches confirmed by Kafka on the deltas topic";
        /// Messages Kafka confirmed on the dead-letter topic, by reason.
        dead_lettered: ReasonCounters = ReasonCounters::new(DeadLetterReason::ALL.map(DeadLetterReason::label)),
            "dead_lettered", "Messages confirmed on the dead-letter topic, by reason";
        /// MQTT acknowledgements sent (each after Kafka's delivery report).
        mqtt_acked: Counter = Counter::default(),
            "mqtt_acked", "MQTT acknowledgements sent after Kafka confirmed";
        /// Messages received and not yet acknowledged.
        inflight: Gauge = Gauge::default(),
            "inflight", "Messages received and not yet acknowledged";
        /// Their payload bytes.
        inflight_bytes: Gauge = Gauge::default(),
            "inflight_bytes", "Payload bytes received and not yet acknowledged";
        /// The most messages ever in flight at once: above `max_inflight` only when the broker
        /// ignored the receive maximum.
        inflight_peak: Gauge = Gauge::default(),
            "inflight_peak", "Most messages in flight at once since start";
        /// The configured window (`mqtt.max_inflight`), for comparing `inflight` against it.
        inflight_limit: Gauge = Gauge::default(),
            "inflight_limit", "The window: mqtt.max_inflight, sent to the broker as the receive maximum";
        /// Receive → Kafka delivery report.
        produce_latency: Histogram = Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            "produce_latency_seconds", "Receive to Kafka delivery report";
        /// Produce attempts that failed and were retried.
        produce_retries: Counter = Counter::default(),
            "produce_retries", "Failed produce attempts, retried";
        /// MQTT connections after the first (devices' side).
        mqtt_reconnects: Counter = Counter::default(),
            "mqtt_reconnects", "MQTT connections after the first";
        /// Acknowledgements published to devices (retained).
        acks_published: Counter = Counter::default(),
            "acks_published", "Acknowledgements published to devices";
        /// Acknowledgements skipped because a newer watermark was already published.
        acks_stale: Counter = Counter::default(),
            "acks_stale", "Acknowledgements older than one already published";
        /// Ack records that did not decode (skipped; the reconciler wrote them).
        acks_undecodable: Counter = Counter::default(),
            "acks_undecodable", "Ack records that did not decode";
    }
    extra {}
}
