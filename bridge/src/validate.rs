//! What the bridge does with one MQTT message, decided without I/O: forward it to Kafka keyed
//! by its device, or dead-letter it with a reason.
//!
//! The device id comes from the topic (which the broker's ACL ties to the device's
//! credentials) and must follow the grammar; the payload must be within the size limit, be a
//! well-formed delta batch (decompressed, known schema, every length and branch checked by
//! `Codec::check_batch` without building values), and name the same device. The checks are
//! bounded and total, so no input can crash the bridge. The batch's content (dense seqs,
//! event limits, CRDT datums) is validated by the reconciler's full decode, which
//! dead-letters what fails it.

use edgesync_core::DeviceId;
use edgesync_schemas::topics::{self, TopicError};
use edgesync_schemas::{Codec, DeadLetterReason};

/// The verdict on one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid batch of `device`.
    Forward {
        /// The device (from the topic, confirmed by the batch).
        device: DeviceId,
    },
    /// Bad input: goes to the dead-letter topic.
    Dead {
        /// Why.
        reason: DeadLetterReason,
        /// Detail for humans.
        detail: String,
        /// The device, when the topic named a valid one.
        device: Option<String>,
    },
}

/// The device id of a batch topic, or the dead-letter reason of one that is not.
pub fn device_of_topic(topic: &str) -> Result<DeviceId, (DeadLetterReason, String)> {
    topics::device_of_batch(topic).map_err(|e| {
        let reason = match e {
            TopicError::NotABatchTopic(_) => DeadLetterReason::BadTopic,
            TopicError::BadDeviceId { .. } => DeadLetterReason::BadDeviceId,
        };
        (reason, e.to_string())
    })
}

/// Classifies one message.
pub fn classify(topic: &str, payload: &[u8], codec: &Codec, max_payload: usize) -> Verdict {
    let dead = |reason, detail: String, device: Option<&DeviceId>| Verdict::Dead {
        reason,
        detail,
        device: device.map(|d| d.to_string()),
    };
    let device = match device_of_topic(topic) {
        Ok(d) => d,
        Err((reason, detail)) => return dead(reason, detail, None),
    };
    if payload.len() > max_payload {
        return dead(
            DeadLetterReason::Oversize,
            format!("{} bytes, the limit is {max_payload}", payload.len()),
            Some(&device),
        );
    }
    let (replica, _first_seq) = match codec.check_batch(payload) {
        Ok(x) => x,
        Err(e) => return dead(e.dead_letter_reason(), e.to_string(), Some(&device)),
    };
    if replica.device != device {
        return dead(
            DeadLetterReason::DeviceMismatch,
            format!("topic names {device}, the batch names {}", replica.device),
            Some(&device),
        );
    }
    Verdict::Forward { device }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edgesync_core::{DeltaBatch, Incarnation, ReplicaId};
    use edgesync_schemas::Limits;

    fn batch_of(device: &str, codec: &Codec) -> Vec<u8> {
        let r = ReplicaId::new(DeviceId::new(device).unwrap(), Incarnation::new(7).unwrap());
        let b = DeltaBatch::with_dropped(
            r,
            1,
            vec![],
            vec![edgesync_core::DroppedRange {
                range: edgesync_core::SeqRange { start: 1, end: 3 },
                reason: edgesync_core::DropReason::Quota,
            }],
            Default::default(),
            &edgesync_core::EventLimits::default(),
        )
        .unwrap();
        codec.encode_batch(&b).unwrap()
    }

    #[test]
    fn every_bad_input_has_its_reason() {
        let codec = Codec::new(Limits::default()).unwrap();
        let good = batch_of("pump-1", &codec);
        assert_eq!(
            classify("edgesync/v1/pump-1/batch", &good, &codec, 1 << 20),
            Verdict::Forward {
                device: DeviceId::new("pump-1").unwrap(),
            }
        );
        let reason =
            |topic: &str, payload: &[u8], max: usize| match classify(topic, payload, &codec, max) {
                Verdict::Dead { reason, .. } => reason,
                v => panic!("{topic}: {v:?}"),
            };
        assert_eq!(
            reason("edgesync/v1/pump-1/other", &good, 1 << 20),
            DeadLetterReason::BadTopic
        );
        assert_eq!(
            reason("edgesync/v1/Pump 1/batch", &good, 1 << 20),
            DeadLetterReason::BadDeviceId
        );
        assert_eq!(
            reason("edgesync/v1/pump-2/batch", &good, 1 << 20),
            DeadLetterReason::DeviceMismatch
        );
        assert_eq!(
            reason("edgesync/v1/pump-1/batch", &good, 10),
            DeadLetterReason::Oversize
        );
        assert_eq!(
            reason("edgesync/v1/pump-1/batch", b"garbage", 1 << 20),
            DeadLetterReason::Undecodable
        );
        assert_eq!(
            reason("edgesync/v1/pump-1/batch", &[], 1 << 20),
            DeadLetterReason::Undecodable
        );
    }
}
