//! The drop-oldest quota policy: when an append would exceed the byte quota, or held events
//! are older than the age limit, the oldest unacknowledged events are replaced by one dropped
//! range (reason `Quota` or `Age`) that keeps their seqs, so the server learns exactly what
//! was dropped. Refusing and dropping the newest are decided in the writer's append.

use super::writer::Writer;
use super::*;

impl Writer {
    /// Replaces the oldest held events by one dropped range until `incoming` bytes fit and no
    /// held event is older than the age limit. Reads committed records only: events appended
    /// earlier in this same group are never dropped for it.
    pub(super) fn drop_oldest(
        &self,
        s: &mut State,
        b: &mut WriteBatch,
        incoming: u64,
        now: u64,
    ) -> Result<(), SpoolError> {
        let age_cutoff = self
            .cfg
            .max_age
            .map(|a| now.saturating_sub(a.as_millis() as u64));
        let mut range: Option<(u64, u64)> = None; // first..=last replaced
        let mut freed = 0u64;
        let (mut quota_n, mut age_n, mut events_n) = (0u64, 0u64, 0u64);
        let mut next_oldest = None;
        for item in self.db.db()?.iterator(IteratorMode::From(
            &keys::event_key(s.acked + 1),
            Direction::Forward,
        )) {
            let (k, v) = item?;
            let Some(seq) = keys::seq_of(&k) else { break };
            // The dropped-range record that replaces them takes room too.
            let over_quota =
                s.bytes.saturating_sub(freed) + incoming + DROPPED_RECORD_SIZE > self.cfg.max_bytes;
            let (last, appended, is_event) = match keys::decode(&v) {
                Some(keys::Record::Event { appended_ms, .. }) => (seq, Some(appended_ms), true),
                Some(keys::Record::Dropped { last, .. }) => (last.max(seq), None, false),
                None => (seq, None, false),
            };
            let too_old = appended.zip(age_cutoff).is_some_and(|(a, c)| a < c);
            if !over_quota && !too_old && is_event {
                next_oldest = appended;
                break;
            }
            freed += record_size(v.len());
            if is_event {
                events_n += 1;
                if over_quota {
                    quota_n += 1;
                } else {
                    age_n += 1;
                }
            }
            range = Some((range.map_or(seq, |r| r.0), last));
        }
        if let Some((first, last)) = range {
            let reason = if quota_n > 0 {
                DropReason::Quota
            } else {
                DropReason::Age
            };
            b.delete_range(keys::event_key(first), keys::event_key(last + 1));
            let rec = keys::dropped_record(now, last, reason.byte());
            s.bytes = s.bytes.saturating_sub(freed) + record_size(rec.len());
            b.put(keys::event_key(first), rec);
            s.events = s.events.saturating_sub(events_n);
            s.stats.dropped_oldest_quota += quota_n;
            s.stats.dropped_oldest_age += age_n;
            tracing::warn!(
                first,
                last,
                by_quota = quota_n,
                by_age = age_n,
                "spool full: oldest unacknowledged events dropped (policy drop-oldest)"
            );
            s.oldest_ms = next_oldest;
        }
        Ok(())
    }
}
