//! The uplink's bandwidth budget, sans IO: a rate cap (token bucket) and an optional daily
//! byte budget, for metered and thin links.
//!
//! - **Rate**: a bucket of `rate` bytes per second holding at most one second's worth
//!   (`burst`). A batch may go when the bucket is not empty and takes its bytes, leaving the
//!   bucket in debt if it is larger than what was there: a batch is never split, and over any
//!   window the bytes sent stay within `rate × window + burst + one batch`.
//! - **Daily**: `daily` bytes per UTC day (by the agent's wall clock); once spent, nothing
//!   goes until the next day starts. A batch may start while some of the budget is left and
//!   is counted whole, so a day overshoots by at most one batch (`uplink.max_batch_bytes`
//!   before compression): a batch is never split, and one larger than what is left must not
//!   wait forever. A lane that bypasses the daily budget (`lanes.rs`: alarms) still goes
//!   once it is spent, and its bytes still count; the rate cap holds every lane.
//!
//! [`Budget::admit`] answers at once: go (the bytes are counted), or how long to wait. What
//! waits stays in the spool; nothing is dropped by the budget.
//!
//! The day's count outlives a restart: [`Spent`] is what the uplink saves (a small JSON file
//! beside the spool, `{"day": <UTC day number>, "spent_bytes": <n>}`, replaced atomically and
//! synced, 5 s after a change at most and at shutdown, one write at a time) and
//! [`Budget::resume`] starts from, on its day: a clock that starts in the past (a gateway
//! without a real-time clock, before NTP) finds it once it reaches that day, and never
//! overwrites it with an older day's. A crash loses at most the bytes counted since the last
//! save.

use std::time::Duration;

/// One UTC day in ms.
const DAY_MS: u64 = 86_400_000;
/// The longest a daily wait is slept before the budget is asked again: the wait is reckoned on
/// the wall clock and slept on the monotonic one, and a wall clock set right (NTP on a gateway
/// without a real-time clock) must not leave a batch waiting for a day.
const DAILY_RECHECK: Duration = Duration::from_secs(60);

/// Why a batch waits, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The rate cap: the bucket refills in this long.
    Rate(Duration),
    /// The daily budget is spent: until the next UTC day (at most a minute, then asked again).
    Daily(Duration),
}

impl Wait {
    /// How long.
    pub fn duration(self) -> Duration {
        match self {
            Wait::Rate(d) | Wait::Daily(d) => d,
        }
    }
}

/// The budget's state.
#[derive(Clone, Debug)]
pub struct Budget {
    rate: Option<u64>,
    daily: Option<u64>,
    /// Bytes in the bucket (negative: debt).
    tokens: f64,
    /// Monotonic ms of the last refill.
    refilled_ms: u64,
    /// The UTC day (wall ms / DAY_MS) `spent_today` is of.
    day: u64,
    spent_today: u64,
    /// The count saved before the start: taken up when its day comes (a gateway without a
    /// real-time clock may start days in the past and reach today only once NTP sets it).
    carried: Option<Spent>,
}

/// A day's count, as saved across restarts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spent {
    /// The UTC day (days since the Unix epoch).
    pub day: u64,
    /// Bytes counted that day.
    pub spent_bytes: u64,
}

impl Spent {
    /// Where it is saved for the spool in `spool_dir`: beside it (not in it: a salvaged
    /// spool directory is rebuilt from its records).
    pub fn file_beside(spool_dir: &std::path::Path) -> std::path::PathBuf {
        let dir = std::path::absolute(spool_dir).unwrap_or_else(|_| spool_dir.to_path_buf());
        let mut name = dir.file_name().unwrap_or_default().to_os_string();
        name.push(".budget.json");
        dir.with_file_name(name)
    }

    /// Reads it from `file`; `None` when there is none or it does not parse (a new count).
    pub fn load(file: &std::path::Path) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(file).ok()?).ok()
    }

    /// Writes it to `file`, replacing the old one atomically and durably (a temporary file,
    /// synced, renamed over it, the directory synced). One writer at a time.
    pub fn save(&self, file: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = file.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        std::fs::File::open(dir.unwrap_or(std::path::Path::new(".")))?.sync_all()
    }
}

/// What status and metrics show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetView {
    /// The cap in bytes/s (`None`: no cap).
    pub rate_bytes_per_sec: Option<u64>,
    /// The daily budget (`None`: none).
    pub daily_bytes: Option<u64>,
    /// Bytes sent today (UTC).
    pub spent_today: u64,
    /// Whether today's budget is spent.
    pub exhausted: bool,
}

impl Budget {
    /// A budget of `rate` bytes/s and `daily` bytes a day (`0`: no limit), full at `now_ms`
    /// (monotonic) and `wall_ms`.
    pub fn new(rate: u64, daily: u64, now_ms: u64, wall_ms: u64) -> Self {
        let rate = (rate > 0).then_some(rate);
        Self {
            rate,
            daily: (daily > 0).then_some(daily),
            tokens: rate.unwrap_or(0) as f64,
            refilled_ms: now_ms,
            day: wall_ms / DAY_MS,
            spent_today: 0,
            carried: None,
        }
    }

    /// [`Budget::new`], having spent `saved` already on its day (now, or when the clock
    /// reaches it).
    pub fn resume(rate: u64, daily: u64, now_ms: u64, wall_ms: u64, saved: Option<Spent>) -> Self {
        let mut b = Self::new(rate, daily, now_ms, wall_ms);
        b.carried = saved;
        if let Some(s) = saved.filter(|s| s.day == b.day) {
            b.spent_today = s.spent_bytes;
        }
        b
    }

    /// The day's count, to save: the saved one while the clock is before its day (a clock not
    /// set yet must not overwrite today's count with one of 1970).
    pub fn spent(&self) -> Spent {
        match self.carried {
            Some(c) if c.day > self.day => c,
            _ => Spent {
                day: self.day,
                spent_bytes: self.spent_today,
            },
        }
    }

    /// Whether a batch of `bytes` may go now (past a spent daily budget too, with
    /// `bypass_daily`); if so its bytes are counted.
    pub fn admit(
        &mut self,
        bytes: u64,
        now_ms: u64,
        wall_ms: u64,
        bypass_daily: bool,
    ) -> Result<(), Wait> {
        self.roll_day(wall_ms);
        if let Some(daily) = self.daily.filter(|_| !bypass_daily) {
            if self.spent_today >= daily {
                let next_day = (self.day + 1) * DAY_MS;
                let until = Duration::from_millis(next_day.saturating_sub(wall_ms));
                return Err(Wait::Daily(until.min(DAILY_RECHECK)));
            }
        }
        if let Some(rate) = self.rate {
            self.refill(rate, now_ms);
            if self.tokens < 0.0 {
                let ms = (-self.tokens * 1000.0 / rate as f64).ceil() as u64;
                return Err(Wait::Rate(Duration::from_millis(ms.max(1))));
            }
            self.tokens -= bytes as f64;
        }
        self.spent_today = self.spent_today.saturating_add(bytes);
        Ok(())
    }

    fn refill(&mut self, rate: u64, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.refilled_ms = self.refilled_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed as f64 * rate as f64 / 1000.0).min(rate as f64);
    }

    fn roll_day(&mut self, wall_ms: u64) {
        let day = wall_ms / DAY_MS;
        if day != self.day {
            // A clock stepped back a day starts a new day too: better to send a day's budget
            // twice than never again.
            self.day = day;
            self.spent_today = (self.carried.filter(|c| c.day == day)).map_or(0, |c| c.spent_bytes);
        }
    }

    /// For status and metrics, at `wall_ms`.
    pub fn view(&self, wall_ms: u64) -> BudgetView {
        let spent = if wall_ms / DAY_MS == self.day {
            self.spent_today
        } else {
            0
        };
        BudgetView {
            rate_bytes_per_sec: self.rate,
            daily_bytes: self.daily,
            spent_today: spent,
            exhausted: self.daily.is_some_and(|d| spent >= d),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn no_limits_admit_everything() {
        let mut b = Budget::new(0, 0, 0, 0);
        for i in 0..100 {
            assert_eq!(b.admit(1 << 20, i, i, false), Ok(()));
        }
        assert_eq!(b.view(0).spent_today, 100 << 20);
    }

    #[test]
    fn the_rate_holds_over_any_window_within_a_burst_and_a_batch() {
        let rate = 16 * 1024;
        let mut b = Budget::new(rate, 0, 0, 0);
        let batch = 5_000;
        let mut sent_at = Vec::new();
        let mut now = 0;
        while now < 60_000 {
            match b.admit(batch, now, now, false) {
                Ok(()) => sent_at.push(now),
                Err(w) => now += w.duration().as_millis() as u64,
            }
        }
        for w in [1_000, 10_000, 30_000] {
            for &start in &sent_at {
                let n = sent_at
                    .iter()
                    .filter(|t| **t >= start && **t < start + w)
                    .count() as u64;
                assert!(
                    n * batch <= rate * w / 1000 + rate + batch,
                    "{w} ms from {start}: {n}"
                );
            }
        }
        // And it is used: within 5 % of the rate over the minute.
        let total = sent_at.len() as u64 * batch;
        assert!(total as f64 >= rate as f64 * 60.0 * 0.95, "{total}");
    }

    #[test]
    fn the_daily_budget_overshoots_by_at_most_one_batch_and_renews_the_next_utc_day() {
        let day = DAY_MS;
        let mut b = Budget::new(0, 10_000, 0, 5 * day + 1_000);
        assert_eq!(b.admit(6_000, 0, 5 * day + 1_000, false), Ok(()));
        assert!(!b.view(5 * day + 1_000).exhausted);
        // Some budget is left: the batch goes whole.
        assert_eq!(b.admit(6_000, 0, 5 * day + 2_000, false), Ok(()));
        assert!(b.view(5 * day + 2_000).exhausted);
        let wait = b.admit(1, 0, 5 * day + 2_000, false).unwrap_err();
        assert_eq!(wait, Wait::Daily(DAILY_RECHECK));
        // A lane that bypasses it still goes, and is counted.
        assert_eq!(b.admit(500, 0, 5 * day + 2_000, true), Ok(()));
        assert_eq!(b.view(5 * day + 2_000).spent_today, 12_500);
        let late = b.admit(1, 0, 6 * day - 2_000, false).unwrap_err();
        assert_eq!(late, Wait::Daily(Duration::from_millis(2_000)));
        assert!(!b.view(6 * day).exhausted);
        // A batch larger than the whole budget does not wait forever.
        assert_eq!(b.admit(50_000, 0, 6 * day, false), Ok(()));
    }

    #[test]
    fn the_day_s_count_survives_a_restart_on_the_same_day_only() {
        let day = DAY_MS;
        let mut b = Budget::new(0, 10_000, 0, 3 * day + 5);
        assert_eq!(b.admit(9_000, 0, 3 * day + 5, false), Ok(()));
        let saved: Spent =
            serde_json::from_str(&serde_json::to_string(&b.spent()).unwrap()).unwrap();
        assert_eq!(
            saved,
            Spent {
                day: 3,
                spent_bytes: 9_000
            }
        );
        let mut again = Budget::resume(0, 10_000, 0, 3 * day + 60_000, Some(saved));
        assert_eq!(again.admit(2_000, 0, 3 * day + 60_000, false), Ok(()));
        assert!(
            again.admit(1, 0, 3 * day + 60_000, false).is_err(),
            "spent, as before"
        );
        let next_day = Budget::resume(0, 10_000, 0, 4 * day, Some(saved));
        assert_eq!(next_day.view(4 * day).spent_today, 0);
    }

    #[test]
    fn a_clock_set_after_the_start_finds_the_day_s_count() {
        let day = DAY_MS;
        let saved = Spent {
            day: 20_000,
            spent_bytes: 9_000,
        };
        // Booted in 1970, before NTP: what goes then counts for 1970, and today's count stays.
        let mut b = Budget::resume(0, 10_000, 0, 5, Some(saved));
        assert_eq!(b.admit(500, 0, 5, false), Ok(()));
        assert_eq!(b.spent(), saved);
        // NTP sets the clock: today's count is back.
        assert_eq!(b.admit(2_000, 0, 20_000 * day + 1, false), Ok(()));
        assert_eq!(b.view(20_000 * day + 1).spent_today, 11_000);
        assert!(b.admit(1, 0, 20_000 * day + 2, false).is_err());
    }

    #[test]
    fn the_count_is_saved_beside_the_spool_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let file = Spent::file_beside(&spool);
        assert_eq!(file, dir.path().join("spool.budget.json"));
        assert_eq!(Spent::load(&file), None);
        let s = Spent {
            day: 3,
            spent_bytes: 7,
        };
        s.save(&file).unwrap();
        assert_eq!(Spent::load(&file), Some(s));
        std::fs::write(&file, b"{not json").unwrap();
        assert_eq!(Spent::load(&file), None, "a damaged file is a new count");
    }

    #[test]
    fn a_batch_larger_than_the_bucket_goes_and_leaves_a_debt() {
        let mut b = Budget::new(1_000, 0, 0, 0);
        assert_eq!(b.admit(5_000, 0, 0, false), Ok(()));
        assert_eq!(
            b.admit(1, 0, 0, false),
            Err(Wait::Rate(Duration::from_millis(4_000)))
        );
        assert_eq!(b.admit(1, 4_001, 0, false), Ok(()));
    }
}
