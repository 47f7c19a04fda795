//! The MQTT topic grammar between edge agents and the bridge, and the default names of the
//! Kafka topics ([`kafka`]), owned here and nowhere else:
//!
//! | topic | who publishes | what |
//! |---|---|---|
//! | `edgesync/v1/{device}/batch` | the device's agent, QoS 1 | its delta batches |
//! | `edgesync/v1/{device}/ack` | the bridge, QoS 1, retained | the server's latest acknowledgement |
//!
//! `{device}` is an [`edgesync_core::DeviceId`], whose grammar (`[a-z0-9][a-z0-9._-]{0,63}`)
//! keeps it free of MQTT's `/`, `+` and `#`. `v1` names this grammar; a change to it is a new
//! version both sides subscribe to side by side. `deploy/mosquitto.acl` spells the same
//! patterns for the broker (a file Mosquitto reads, so it cannot call this).

use edgesync_core::id::DeviceIdError;
use edgesync_core::DeviceId;

/// What every topic of this grammar starts with.
const PREFIX: &str = "edgesync/v1/";

/// The filter matching every device's batch topic (the bridge's subscription).
pub const BATCH_FILTER: &str = "edgesync/v1/+/batch";

/// The topic `device` publishes its batches on.
pub fn batch(device: &DeviceId) -> String {
    format!("{PREFIX}{device}/batch")
}

/// The topic the server's retained acknowledgements for `device` are published on.
pub fn ack(device: &DeviceId) -> String {
    format!("{PREFIX}{device}/ack")
}

/// Why a topic is not a device's batch topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not of the form `edgesync/v1/{device}/batch`.
    #[error("topic {0:?} is not edgesync/v1/{{device}}/batch")]
    NotABatchTopic(String),
    /// The shape is right but the device id breaks its grammar.
    #[error("device id {id:?}: {source}")]
    BadDeviceId {
        /// The id as the topic spells it.
        id: String,
        /// What is wrong with it.
        source: DeviceIdError,
    },
}

/// The device whose batch topic `topic` is.
pub fn device_of_batch(topic: &str) -> Result<DeviceId, TopicError> {
    let id = topic
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_suffix("/batch"))
        .ok_or_else(|| TopicError::NotABatchTopic(topic.to_owned()))?;
    DeviceId::new(id).map_err(|source| TopicError::BadDeviceId {
        id: id.to_owned(),
        source,
    })
}

/// The Kafka topics' default names (each service's `[kafka]` section can rename them; the
/// README's topic table says who writes and reads each).
pub mod kafka {
    /// Device batches, keyed by device (bridge → reconciler).
    pub const DELTAS: &str = "edgesync.deltas";
    /// One record per event, once each, in dot order per device (reconciler → analytics).
    pub const EVENTS: &str = "edgesync.events";
    /// State deltas re-keyed by key (the reconciler's device stage → its key stage).
    pub const STATE_DELTAS: &str = "edgesync.state-deltas";
    /// Converged state per key, compacted (reconciler → analytics).
    pub const STATE: &str = "edgesync.state";
    /// Acknowledged watermarks per device (reconciler → bridge → devices).
    pub const ACKS: &str = "edgesync.acks";
    /// Dead letters with their reason (bridge, reconciler → operators).
    pub const DLQ: &str = "edgesync.dlq";
    /// Per device, the completeness ledger's lines, compacted (reconciler → analytics).
    pub const COMPLETENESS: &str = "edgesync.completeness";
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_device_s_topics_parse_back_to_it_and_nothing_else_does() {
        let d = DeviceId::new("pump-1").unwrap();
        assert_eq!(batch(&d), "edgesync/v1/pump-1/batch");
        assert_eq!(ack(&d), "edgesync/v1/pump-1/ack");
        assert_eq!(device_of_batch(&batch(&d)), Ok(d.clone()));
        assert!(matches!(
            device_of_batch(&ack(&d)),
            Err(TopicError::NotABatchTopic(_))
        ));
        assert!(matches!(
            device_of_batch("edgesync/v1/Pump 1/batch"),
            Err(TopicError::BadDeviceId { .. })
        ));
        assert!(matches!(
            device_of_batch("edgesync/v2/pump-1/batch"),
            Err(TopicError::NotABatchTopic(_))
        ));
    }
}
