//! The completeness ledger: per replica the watermark, the exact missing ranges, the age
//! of the current gap and the bytes its link carried, kept up to date by the device stage and read by `/v1/status`, the
//! metrics and the `edgesync.completeness` topic ([`Ledger::record`], one record per device
//! with a line per incarnation). Per-device detail lives here, never in metric labels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use edgesync_core::id::{DeviceId, Incarnation};
use edgesync_core::{ReplicaId, SeqRange};
use edgesync_protocol::ReplicaState;
use edgesync_schemas::{Completeness, ReplicaCompleteness};
use serde_json::json;

/// One replica's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Contiguous watermark (released in order).
    pub watermark: u64,
    /// Highest seq seen.
    pub max_seen: u64,
    /// Missing ranges below `max_seen`.
    pub missing: Vec<SeqRange>,
    /// Since when a gap has been open (server time).
    pub gap_since_ms: Option<u64>,
    /// Events held back above the gap.
    pub pending: usize,
    /// Seqs dropped at the edge, all reasons (a quota or age policy, records the agent's
    /// spool could not read).
    pub dropped: u64,
    /// The same by reason (`QUOTA`, `AGE`, `CORRUPT`).
    pub dropped_by_reason: BTreeMap<&'static str, u64>,
    /// Receive time minus HLC of the replica's latest released event, if any.
    pub clock_skew_ms: Option<i64>,
    /// Bytes of its batches received as published (resent ones again).
    pub wire_bytes: u64,
}

impl Entry {
    /// The line of a replica in state `s` (its clock skew is kept by [`Ledger::update`]).
    pub fn of(s: &ReplicaState) -> Self {
        let max_seen = s.ctx.max_seen();
        Self {
            watermark: s.ctx.watermark(),
            max_seen,
            missing: s.ctx.missing(max_seen),
            gap_since_ms: s.gap_since_ms,
            pending: s.pending.len(),
            dropped: s.dropped.values().sum(),
            dropped_by_reason: s.dropped.iter().map(|(r, n)| (r.name(), *n)).collect(),
            clock_skew_ms: None,
            wire_bytes: s.wire_bytes,
        }
    }

    /// Seen / highest seen (1.0 without gaps), as the completeness topic states it.
    pub fn completeness(&self) -> f64 {
        ReplicaCompleteness::ratio(self.max_seen, &self.missing)
    }
}

/// The ledger of the replicas this process owns, by device and incarnation.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<HashMap<DeviceId, BTreeMap<Incarnation, Entry>>>,
    /// Devices whose clock is off by more than this are flagged.
    skew_bound_ms: u64,
}

impl Ledger {
    /// An empty ledger flagging clocks off by more than `skew_bound_ms`.
    pub fn new(skew_bound_ms: u64) -> Self {
        Self {
            entries: Mutex::default(),
            skew_bound_ms,
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<DeviceId, BTreeMap<Incarnation, Entry>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the current lines of some replicas ([`Entry::of`] their states), keeping each
    /// one's last clock skew.
    pub fn update(&self, lines: impl IntoIterator<Item = (ReplicaId, Entry)>) {
        let mut e = self.entries();
        for (r, mut entry) in lines {
            let device = e.entry(r.device).or_default();
            entry.clock_skew_ms = device.get(&r.incarnation).and_then(|x| x.clock_skew_ms);
            device.insert(r.incarnation, entry);
        }
    }

    /// Records a replica's latest clock skew (receive time minus event HLC).
    pub fn skew(&self, replica: &ReplicaId, skew_ms: i64) {
        let mut e = self.entries();
        if let Some(x) = e
            .get_mut(&replica.device)
            .and_then(|d| d.get_mut(&replica.incarnation))
        {
            x.clock_skew_ms = Some(skew_ms);
        }
    }

    /// Whether a skew is beyond the bound.
    pub fn flagged(&self, skew_ms: Option<i64>) -> bool {
        skew_ms.is_some_and(|s| s.unsigned_abs() > self.skew_bound_ms)
    }

    /// Forgets replicas (their partition moved to another process).
    pub fn forget<'a>(&self, replicas: impl IntoIterator<Item = &'a ReplicaId>) {
        let mut e = self.entries();
        for r in replicas {
            if let Some(d) = e.get_mut(&r.device) {
                d.remove(&r.incarnation);
                if d.is_empty() {
                    e.remove(&r.device);
                }
            }
        }
    }

    /// A copy of every entry.
    pub fn snapshot(&self) -> Vec<(ReplicaId, Entry)> {
        let e = self.entries();
        e.iter()
            .flat_map(|(d, lines)| {
                lines
                    .iter()
                    .map(|(i, x)| (ReplicaId::new(d.clone(), *i), x.clone()))
            })
            .collect()
    }

    /// `device`'s record for the completeness topic, as of `now_ms`: a line per incarnation
    /// the ledger holds (`None` when it holds none).
    pub fn record(&self, device: &DeviceId, now_ms: u64) -> Option<Completeness> {
        let e = self.entries();
        let replicas = e
            .get(device)?
            .iter()
            .map(|(incarnation, x)| ReplicaCompleteness {
                incarnation: *incarnation,
                watermark: x.watermark,
                max_seen: x.max_seen,
                missing: x.missing.clone(),
                gap_since_ms: x.gap_since_ms,
                pending: x.pending as u64,
                dropped: x
                    .dropped_by_reason
                    .iter()
                    .map(|(r, n)| ((*r).to_owned(), *n))
                    .collect(),
                clock_skew_ms: x.clock_skew_ms,
                clock_skewed: self.flagged(x.clock_skew_ms),
                wire_bytes: x.wire_bytes,
            })
            .collect();
        Some(Completeness {
            device: device.clone(),
            replicas,
            emitted_at_ms: now_ms,
        })
    }

    /// The status document: replicas with gaps first, least complete first.
    pub fn status_json(&self, now_ms: u64, limit: usize) -> serde_json::Value {
        let mut all = self.snapshot();
        all.sort_by(|a, b| {
            a.1.completeness()
                .total_cmp(&b.1.completeness())
                .then_with(|| a.0.cmp(&b.0))
        });
        let with_gaps = all.iter().filter(|(_, e)| !e.missing.is_empty()).count();
        let skewed = all
            .iter()
            .filter(|(_, e)| self.flagged(e.clock_skew_ms))
            .count();
        let devices: Vec<_> = all
            .iter()
            .take(limit)
            .map(|(r, e)| {
                json!({
                    "device": r.device.as_str(),
                    "incarnation": r.incarnation.get(),
                    "watermark": e.watermark,
                    "max_seen": e.max_seen,
                    "completeness": e.completeness(),
                    "missing": e.missing.iter().map(|m| [m.start, m.end]).collect::<Vec<_>>(),
                    "gap_age_ms": e.gap_since_ms.map(|g| now_ms.saturating_sub(g)),
                    "pending": e.pending,
                    "dropped_at_edge": e.dropped,
                    "dropped_at_edge_by_reason": e.dropped_by_reason,
                    "clock_skew_ms": e.clock_skew_ms,
                    "clock_skew_flagged": self.flagged(e.clock_skew_ms),
                    "wire_bytes": e.wire_bytes,
                })
            })
            .collect();
        json!({
            "replicas": all.len(),
            "with_gaps": with_gaps,
            "clock_skew_flagged": skewed,
            "clock_skew_bound_ms": self.skew_bound_ms,
            "devices": devices,
        })
    }
}
