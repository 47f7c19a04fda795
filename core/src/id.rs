//! Identities: device ids, replicas (one incarnation of a device's spool) and dots.
//!
//! Device ids end up inside MQTT topics (`edgesync/v1/{device}/batch`) and Kafka keys, so their
//! grammar is strict: `[a-z0-9][a-z0-9._-]{0,63}`. That rules out MQTT wildcards (`+`, `#`), topic
//! separators (`/`), `$`-prefixed system topics, whitespace, upper case (case-folding brokers and
//! ACL patterns would otherwise alias two devices) and anything non-ASCII.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest accepted device id, in bytes.
pub const DEVICE_ID_MAX_LEN: usize = 64;

/// Why a device id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// The id was empty.
    #[error("device id is empty")]
    Empty,
    /// The id was longer than [`DEVICE_ID_MAX_LEN`] bytes.
    #[error("device id is {len} bytes long, the limit is {limit}")]
    TooLong {
        /// Length of the rejected id in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A byte outside the grammar, at a byte offset.
    #[error("device id has a forbidden character {found:?} at byte {at} (allowed: a-z 0-9 . _ -)")]
    ForbiddenChar {
        /// Byte offset of the first offending byte.
        at: usize,
        /// The offending character (lossy for non-ASCII input).
        found: char,
    },
    /// The first character must be a lower-case letter or a digit.
    #[error("device id must start with a-z or 0-9, not {found:?}")]
    BadStart {
        /// The offending first character.
        found: char,
    },
}

/// A validated device id. Cheap to clone (shared string).
#[derive(Clone, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

impl std::hash::Hash for DeviceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state); // by content, consistent with `eq`
    }
}

impl PartialEq for DeviceId {
    fn eq(&self, other: &Self) -> bool {
        // Clones share the allocation: skip the byte comparison on the common path.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}
impl Eq for DeviceId {}

impl DeviceId {
    /// Validates `s` against the grammar `[a-z0-9][a-z0-9._-]{0,63}`.
    pub fn new(s: &str) -> Result<Self, DeviceIdError> {
        validate_device_id(s)?;
        Ok(Self(Arc::from(s)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn validate_device_id(s: &str) -> Result<(), DeviceIdError> {
    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(DeviceIdError::Empty);
    };
    if bytes.len() > DEVICE_ID_MAX_LEN {
        return Err(DeviceIdError::TooLong {
            len: bytes.len(),
            limit: DEVICE_ID_MAX_LEN,
        });
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        let found = s.chars().next().unwrap_or('\u{fffd}');
        return Err(DeviceIdError::BadStart { found });
    }
    for (at, c) in s.char_indices() {
        let ok = c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-');
        if !ok {
            return Err(DeviceIdError::ForbiddenChar { at, found: c });
        }
    }
    Ok(())
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", &*self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Random id of one spool's life. A wiped or replaced spool gets a new incarnation, so its
/// sequence numbers start again at 1 without ever colliding with the old ones.
///
/// Invariant: the value fits in 63 bits, so it travels as a non-negative Avro `long`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Incarnation(u64);

/// An incarnation outside the 63-bit range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("incarnation {0} does not fit in 63 bits")]
pub struct IncarnationOutOfRange(pub u64);

impl Incarnation {
    /// Largest valid incarnation.
    pub const MAX: u64 = i64::MAX as u64;

    /// Checks the 63-bit invariant.
    pub fn new(v: u64) -> Result<Self, IncarnationOutOfRange> {
        if v > Self::MAX {
            Err(IncarnationOutOfRange(v))
        } else {
            Ok(Self(v))
        }
    }

    /// Derives an incarnation from 64 random bits (the caller owns the randomness: this crate
    /// does no I/O, not even reading an entropy source).
    pub fn from_random_bits(bits: u64) -> Self {
        Self(bits >> 1)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One incarnation of one device's spool: the unit that owns a dense sequence of dots.
///
/// Ordered by incarnation first, then device: incarnations are random, so almost every
/// comparison in the reconciler's maps is settled by one integer compare instead of a string
/// compare. The order is part of the canonical encoding (digests), so it is fixed.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ReplicaId {
    /// The device.
    pub device: DeviceId,
    /// The spool's incarnation.
    pub incarnation: Incarnation,
}

impl Ord for ReplicaId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.incarnation.cmp(&other.incarnation).then_with(|| {
            if self.device == other.device {
                std::cmp::Ordering::Equal
            } else {
                self.device.cmp(&other.device)
            }
        })
    }
}

impl PartialOrd for ReplicaId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl ReplicaId {
    /// Builds a replica id.
    pub fn new(device: DeviceId, incarnation: Incarnation) -> Self {
        Self {
            device,
            incarnation,
        }
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.device, self.incarnation)
    }
}

/// Largest valid sequence number (they travel as non-negative Avro `long`s).
pub const SEQ_MAX: u64 = i64::MAX as u64;

/// A unique event identity: the `seq`-th event of a replica. Sequence numbers start at 1 and
/// are dense per replica.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Dot {
    /// The replica that issued the dot.
    pub replica: ReplicaId,
    /// Sequence number, `1..=SEQ_MAX`.
    pub seq: u64,
}

impl Dot {
    /// Builds a dot.
    pub fn new(replica: ReplicaId, seq: u64) -> Self {
        Self { replica, seq }
    }
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.replica, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for ok in ["a", "0", "pump-0042", "veh.17_b", &"x".repeat(64)] {
            assert!(DeviceId::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(DeviceId::new(""), Err(DeviceIdError::Empty));
        assert_eq!(
            DeviceId::new(&"x".repeat(65)),
            Err(DeviceIdError::TooLong { len: 65, limit: 64 })
        );
        for bad in [
            "a/b", "a+", "#", "a#b", "$SYS", "Pump", "é", "a b", "-a", ".a", "a\0",
        ] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            DeviceId::new("ab/c"),
            Err(DeviceIdError::ForbiddenChar { at: 2, found: '/' })
        );
    }

    #[test]
    fn incarnation_is_63_bits() {
        assert!(Incarnation::new(u64::MAX).is_err());
        assert_eq!(
            Incarnation::from_random_bits(u64::MAX).get(),
            Incarnation::MAX
        );
    }
}
