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

    /// The family, to register.
    pub fn family(&self) -> Family<ReasonLabel, Counter> {
        self.0.clone()
    }
}
