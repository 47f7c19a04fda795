//! Hybrid logical clock (Kulkarni et al., 2014).
//!
//! A stamp is `(wall_ms, logical)`. The clock never goes backwards, even when the physical
//! clock does (NTP step, RTC reset): it keeps the larger wall time and counts up `logical`.
//! The physical time is always passed in, so the clock is deterministic and testable.

use std::fmt;

/// One HLC stamp. Ordered by `(wall_ms, logical)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the largest physical time seen).
    pub wall_ms: u64,
    /// Counter that orders stamps with the same `wall_ms`.
    pub logical: u32,
}

impl Hlc {
    /// Builds a stamp.
    pub const fn new(wall_ms: u64, logical: u32) -> Self {
        Self { wall_ms, logical }
    }

    /// Next stamp after `self` at the same or a later wall time.
    fn tick(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self::new(self.wall_ms, logical),
            // 4 billion events in one millisecond: borrow a millisecond rather than wrap.
            None => Self::new(self.wall_ms.saturating_add(1), 0),
        }
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.wall_ms, self.logical)
    }
}

/// A remote stamp too far ahead of the local physical clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("remote clock is {ahead_ms} ms ahead of local physical time, the limit is {limit_ms} ms")]
pub struct ClockSkewError {
    /// How far the remote stamp was ahead.
    pub ahead_ms: u64,
    /// The configured limit.
    pub limit_ms: u64,
}

/// The clock of one process.
#[derive(Debug, Clone)]
pub struct HlcClock {
    last: Hlc,
    max_forward_ms: u64,
}

impl HlcClock {
    /// A clock that accepts remote stamps at most `max_forward_ms` ahead of local time, so a
    /// single peer with a broken clock cannot drag every clock into the future.
    pub fn new(max_forward_ms: u64) -> Self {
        Self {
            last: Hlc::default(),
            max_forward_ms,
        }
    }

    /// Resumes a clock from a persisted stamp (e.g. the last stamp in a spool).
    pub fn resume(last: Hlc, max_forward_ms: u64) -> Self {
        Self {
            last,
            max_forward_ms,
        }
    }

    /// The last stamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A new stamp for a local event, strictly greater than every earlier one.
    pub fn now(&mut self, physical_ms: u64) -> Hlc {
        self.last = if physical_ms > self.last.wall_ms {
            Hlc::new(physical_ms, 0)
        } else {
            self.last.tick()
        };
        self.last
    }

    /// Merges a received stamp; the result is greater than both it and every earlier local stamp.
    pub fn observe(&mut self, remote: Hlc, physical_ms: u64) -> Result<Hlc, ClockSkewError> {
        let ahead_ms = remote.wall_ms.saturating_sub(physical_ms);
        if ahead_ms > self.max_forward_ms {
            return Err(ClockSkewError {
                ahead_ms,
                limit_ms: self.max_forward_ms,
            });
        }
        let max = self.last.max(remote);
        self.last = if physical_ms > max.wall_ms {
            Hlc::new(physical_ms, 0)
        } else {
            max.tick()
        };
        Ok(self.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotone_when_wall_clock_jumps_backwards() {
        let mut c = HlcClock::new(1_000);
        let a = c.now(10_000);
        let b = c.now(5_000); // NTP stepped back five seconds
        let d = c.now(5_001);
        assert!(a < b && b < d);
        assert_eq!(b, Hlc::new(10_000, 1));
        let e = c.now(10_001);
        assert_eq!(e, Hlc::new(10_001, 0));
    }

    #[test]
    fn observe_moves_past_remote() {
        let mut c = HlcClock::new(1_000);
        c.now(100);
        let r = Hlc::new(600, 7);
        let m = c.observe(r, 200).unwrap();
        assert!(m > r);
        assert!(c.now(200) > m);
    }

    #[test]
    fn observe_rejects_far_future() {
        let mut c = HlcClock::new(1_000);
        let err = c.observe(Hlc::new(10_000, 0), 100).unwrap_err();
        assert_eq!(err.ahead_ms, 9_900);
        assert_eq!(
            c.last(),
            Hlc::default(),
            "a rejected stamp leaves the clock alone"
        );
    }

    #[test]
    fn logical_overflow_borrows_a_millisecond() {
        let mut c = HlcClock::resume(Hlc::new(5, u32::MAX), 0);
        assert_eq!(c.now(5), Hlc::new(6, 0));
    }
}
