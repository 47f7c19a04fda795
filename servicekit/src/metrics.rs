//! Metric shapes the services share.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The label of a [`ReasonCounters`] series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason, lower case (e.g. a dead-letter reason's symbol).
    pub reason: String,
}

/// A counter per reason, every known reason present from the start at 0: the first count is
/// then an increase that `increase()` and alerts see (a series born at 1 has none).
#[derive(Clone, Debug, Default)]
pub struct ReasonCounters(Family<ReasonLabel, Counter>);

impl ReasonCounters {
    /// Counters for `reasons`, each at 0.
    pub fn new(reasons: impl IntoIterator<Item = String>) -> Self {
        let family = Family::<ReasonLabel, Counter>::default();
        for reason in reasons {
            let _ = family.get_or_create(&ReasonLabel { reason });
        }
        Self(family)
    }

    /// Counts one of `reason`.
    pub fn inc(&self, reason: &str) {
        self.0
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

impl prometheus_client::encoding::EncodeMetric for ReasonCounters {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.0.metric_type()
    }
}

/// Declares a service's metrics once each: the struct field (with its doc), how it starts,
/// its name under the service's prefix and its help text. Generates the struct and its
/// `register(&mut Registry) -> Self`, which creates every metric and registers it; fields
/// after `extra` are state the struct keeps beside its metrics (not registered).
///
/// ```ignore
/// edgesync_servicekit::metric_set! {
///     /// Every metric of the bridge.
///     pub struct BridgeMetrics, prefix "edgesync_bridge" {
///         /// MQTT messages received.
///         received: Counter = Counter::default(), "received", "MQTT messages received";
///     }
///     extra {}
/// }
/// ```
#[macro_export]
macro_rules! metric_set {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident, prefix $prefix:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $init:expr, $metric:literal, $help:literal;
            )*
        }
        extra {
            $(
                $(#[doc = $xdoc:literal])*
                $xfield:ident : $xty:ty = $xinit:expr;
            )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            $( $(#[doc = $xdoc])* $xfield: $xty, )*
        }

        impl $name {
            #[doc = concat!("Creates every metric and registers it under `", $prefix, "_`.")]
            pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
                let m = Self {
                    $( $field: $init, )*
                    $( $xfield: $xinit, )*
                };
                let r = registry.sub_registry_with_prefix($prefix);
                $( r.register($metric, $help, m.$field.clone()); )*
                m
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    use super::ReasonCounters;

    crate::metric_set! {
        /// Two metrics and a reason family.
        #[derive(Debug)]
        pub struct Demo, prefix "demo" {
            /// Things.
            things: Counter = Counter::default(), "things", "Things seen";
            /// Level.
            level: Gauge = Gauge::default(), "level", "The level";
            /// Refusals.
            refused: ReasonCounters = ReasonCounters::new(["full".to_owned()]), "refused", "Refused, by reason";
        }
        extra {
            /// Not a metric.
            note: u8 = 7;
        }
    }

    #[test]
    fn every_declared_metric_is_registered_under_the_prefix_with_its_help() {
        let mut registry = Registry::default();
        let m = Demo::register(&mut registry);
        m.things.inc();
        m.level.set(3);
        m.refused.inc("full");
        assert_eq!(m.note, 7);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# HELP demo_things Things seen.",
            "demo_things_total 1",
            "# HELP demo_level The level.",
            "demo_level 3",
            "# HELP demo_refused Refused, by reason.",
            "demo_refused_total{reason=\"full\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
    }
}
