//! Causal context: which dots have been seen, per replica, in compact form.
//!
//! For every replica the context keeps a contiguous *watermark* (every seq in `1..=watermark`
//! was seen) plus the disjoint ranges seen above it. The representation is canonical: ranges
//! never touch each other or the watermark, and replicas with nothing seen are not stored, so
//! two contexts holding the same set of dots are equal as values and encode to the same bytes.
//!
//! The server uses one context per device stage to decide what is new, what to acknowledge
//! (the watermark) and exactly which ranges are still missing; the dotted CRDTs (MV-register,
//! OR-set) use one per object to track what their entries have superseded.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::id::{Dot, ReplicaId};

/// An inclusive range of sequence numbers, `start <= end`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SeqRange {
    /// First seq in the range.
    pub start: u64,
    /// Last seq in the range (inclusive).
    pub end: u64,
}

impl SeqRange {
    /// Builds a range; `None` if `start > end` or `start == 0` (seqs start at 1).
    pub fn new(start: u64, end: u64) -> Option<Self> {
        (start >= 1 && start <= end).then_some(Self { start, end })
    }

    /// Number of seqs in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Never true: a range holds at least one seq.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why a context could not be rebuilt from its parts (e.g. when decoding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// A range was empty, reversed, started at 0, or overlapped/touched a neighbour or the watermark.
    #[error(
        "replica {replica}: range {start}..={end} is not canonical after watermark {watermark}"
    )]
    NonCanonicalRange {
        /// The replica, as text.
        replica: String,
        /// Watermark of that replica.
        watermark: u64,
        /// Start of the offending range.
        start: u64,
        /// End of the offending range.
        end: u64,
    },
    /// The same replica appeared twice.
    #[error("replica {replica} appears twice")]
    DuplicateReplica {
        /// The replica, as text.
        replica: String,
    },
}

/// Dots seen from one replica.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct ReplicaContext {
    watermark: u64,
    /// start -> end (inclusive). Invariant: every start > watermark + 1, ranges disjoint and
    /// separated by at least one missing seq.
    ranges: BTreeMap<u64, u64>,
}

impl ReplicaContext {
    /// Every seq in `1..=watermark` has been seen.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The seen ranges above the watermark, ascending.
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = SeqRange> + '_ {
        self.ranges
            .iter()
            .map(|(&start, &end)| SeqRange { start, end })
    }

    /// Every covered range, the watermark's `1..=watermark` first.
    pub fn covered(&self) -> impl Iterator<Item = SeqRange> + '_ {
        SeqRange::new(1, self.watermark)
            .into_iter()
            .chain(self.ranges())
    }

    /// Highest seq seen (0 if none).
    pub fn max_seen(&self) -> u64 {
        self.ranges
            .last_key_value()
            .map_or(self.watermark, |(_, &end)| end)
    }

    /// Whether `seq` was seen. Seq 0 is not a valid dot and counts as seen.
    pub fn contains(&self, seq: u64) -> bool {
        seq <= self.watermark
            || self
                .ranges
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &end)| end >= seq)
    }

    /// Marks `seq` seen; `true` if it was new.
    pub fn insert(&mut self, seq: u64) -> bool {
        if self.watermark.checked_add(1) == Some(seq) && self.ranges.is_empty() {
            self.watermark = seq; // in-order fast path
            return true;
        }
        if self.contains(seq) {
            return false;
        }
        self.insert_range(seq, seq);
        true
    }

    /// Marks every seq in `start..=end` seen.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        if end <= self.watermark || start > end {
            return;
        }
        let next = self.watermark.saturating_add(1);
        if start <= next && self.ranges.is_empty() {
            self.watermark = end; // contiguous with the watermark: no ranges to merge
            return;
        }
        let mut lo = start.max(next);
        let mut hi = end;
        // Absorb the ranges that overlap or touch [lo, hi], highest first (no allocation: this
        // is on the reconciler's per-event path).
        while let Some((&s, &e)) = self.ranges.range(..=hi.saturating_add(1)).next_back() {
            if e.saturating_add(1) < lo {
                break;
            }
            self.ranges.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        if lo == next {
            self.watermark = hi;
        } else {
            self.ranges.insert(lo, hi);
        }
    }

    /// Seqs not seen in `watermark+1 ..= up_to`, as exact ranges. `up_to` is typically the
    /// highest seq the device says it has; seqs above [`Self::max_seen`] count as missing.
    pub fn missing(&self, up_to: u64) -> Vec<SeqRange> {
        let mut out = Vec::new();
        if self.watermark == u64::MAX {
            return out;
        }
        let mut cursor = self.watermark + 1;
        for (&s, &e) in &self.ranges {
            if s > up_to {
                break;
            }
            if s > cursor {
                out.push(SeqRange {
                    start: cursor,
                    end: s - 1,
                });
            }
            match e.checked_add(1) {
                Some(c) => cursor = c,
                None => return out, // everything up to u64::MAX is accounted for
            }
        }
        if up_to >= cursor {
            out.push(SeqRange {
                start: cursor,
                end: up_to,
            });
        }
        out
    }

    /// Number of seqs seen.
    pub fn count(&self) -> u64 {
        self.watermark + self.ranges().map(|r| r.len()).sum::<u64>()
    }

    fn is_empty(&self) -> bool {
        self.watermark == 0 && self.ranges.is_empty()
    }

    fn merge(&mut self, other: &ReplicaContext) {
        self.insert_range(1, other.watermark);
        for r in other.ranges() {
            self.insert_range(r.start, r.end);
        }
    }

    /// Rebuilds from parts, checking the canonical-form invariants.
    pub fn from_parts(
        replica: &ReplicaId,
        watermark: u64,
        ranges: impl IntoIterator<Item = (u64, u64)>,
    ) -> Result<Self, ContextError> {
        let mut ctx = Self {
            watermark,
            ranges: BTreeMap::new(),
        };
        let mut floor = watermark.saturating_add(1); // next range must start above this
        for (start, end) in ranges {
            if start <= floor || end < start {
                return Err(ContextError::NonCanonicalRange {
                    replica: replica.to_string(),
                    watermark,
                    start,
                    end,
                });
            }
            ctx.ranges.insert(start, end);
            floor = end.saturating_add(1);
        }
        Ok(ctx)
    }
}

/// A dotted version vector: per replica a watermark plus the dots seen above it.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct CausalContext {
    replicas: BTreeMap<ReplicaId, ReplicaContext>,
}

impl CausalContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `dot` seen; `true` if it was new.
    pub fn insert(&mut self, dot: &Dot) -> bool {
        if let Some(rc) = self.replicas.get_mut(&dot.replica) {
            return rc.insert(dot.seq);
        }
        if dot.seq == 0 {
            return false;
        }
        let mut rc = ReplicaContext::default();
        rc.insert(dot.seq);
        self.replicas.insert(dot.replica.clone(), rc);
        true
    }

    /// Marks a whole range of one replica seen.
    pub fn insert_range(&mut self, replica: &ReplicaId, range: SeqRange) {
        match self.replicas.get_mut(replica) {
            Some(rc) => rc.insert_range(range.start, range.end),
            None => {
                let mut rc = ReplicaContext::default();
                rc.insert_range(range.start, range.end);
                self.replicas.insert(replica.clone(), rc);
            }
        }
    }

    /// Whether `dot` was seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.seq == 0
            || self
                .replicas
                .get(&dot.replica)
                .is_some_and(|rc| rc.contains(dot.seq))
    }

    /// The contiguous watermark of `replica` (0 if nothing seen).
    pub fn watermark(&self, replica: &ReplicaId) -> u64 {
        self.replicas.get(replica).map_or(0, |rc| rc.watermark)
    }

    /// Highest seq seen from `replica` (0 if nothing seen).
    pub fn max_seen(&self, replica: &ReplicaId) -> u64 {
        self.replicas
            .get(replica)
            .map_or(0, ReplicaContext::max_seen)
    }

    /// The next unused seq of `replica` in this context (dot generation for dotted CRDTs).
    pub fn next_seq(&self, replica: &ReplicaId) -> u64 {
        self.max_seen(replica).saturating_add(1)
    }

    /// Exact missing ranges of `replica` up to `up_to`.
    pub fn missing(&self, replica: &ReplicaId, up_to: u64) -> Vec<SeqRange> {
        match self.replicas.get(replica) {
            Some(rc) => rc.missing(up_to),
            None => SeqRange::new(1, up_to).into_iter().collect(),
        }
    }

    /// The per-replica part, if anything was seen from `replica`.
    pub fn replica(&self, replica: &ReplicaId) -> Option<&ReplicaContext> {
        self.replicas.get(replica)
    }

    /// Replicas and their parts, in replica order (the compact form).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ReplicaId, &ReplicaContext)> {
        self.replicas.iter()
    }

    /// Number of replicas with anything seen.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether nothing was seen at all.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Union with `other`.
    pub fn merge(&mut self, other: &CausalContext) {
        for (r, orc) in &other.replicas {
            match self.replicas.get_mut(r) {
                Some(rc) => rc.merge(orc),
                None => {
                    self.replicas.insert(r.clone(), orc.clone());
                }
            }
        }
    }

    /// Rebuilds from the compact form, checking canonical-form invariants.
    pub fn from_parts(
        parts: impl IntoIterator<Item = (ReplicaId, ReplicaContext)>,
    ) -> Result<Self, ContextError> {
        let mut replicas = BTreeMap::new();
        for (r, rc) in parts {
            if rc.is_empty() {
                continue;
            }
            if replicas.contains_key(&r) {
                return Err(ContextError::DuplicateReplica {
                    replica: r.to_string(),
                });
            }
            replicas.insert(r, rc);
        }
        Ok(Self { replicas })
    }

    /// The contiguous watermarks as a version vector.
    pub fn version_vector(&self) -> VersionVector {
        VersionVector(
            self.replicas
                .iter()
                .filter(|(_, rc)| rc.watermark > 0)
                .map(|(r, rc)| (r.clone(), rc.watermark))
                .collect(),
        )
    }
}

/// Per replica the highest contiguous seq. `PartialOrd` is causality: `a < b` means every
/// event `a` covers is covered by `b` and `b` covers more; concurrent vectors are unordered.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct VersionVector(BTreeMap<ReplicaId, u64>);

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry for `replica` (0 if absent).
    pub fn get(&self, replica: &ReplicaId) -> u64 {
        self.0.get(replica).copied().unwrap_or(0)
    }

    /// Raises the entry for `replica` to at least `seq`.
    pub fn observe(&mut self, replica: &ReplicaId, seq: u64) {
        if seq == 0 {
            return;
        }
        let e = self.0.entry(replica.clone()).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VersionVector) {
        for (r, &s) in &other.0 {
            self.observe(r, s);
        }
    }

    /// Entries in replica order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ReplicaId, u64)> {
        self.0.iter().map(|(r, &s)| (r, s))
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(iter: I) -> Self {
        let mut v = VersionVector::new();
        for (r, s) in iter {
            v.observe(&r, s);
        }
        v
    }
}

impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let mut le = true; // self <= other pointwise
        let mut ge = true; // self >= other pointwise
        for (r, &s) in &self.0 {
            let o = other.get(r);
            le &= s <= o;
            ge &= s >= o;
        }
        for (r, &o) in &other.0 {
            let s = self.get(r);
            le &= s <= o;
            ge &= s >= o;
        }
        match (le, ge) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{DeviceId, Incarnation};

    fn r(name: &str) -> ReplicaId {
        ReplicaId::new(DeviceId::new(name).unwrap(), Incarnation::new(1).unwrap())
    }

    #[test]
    fn gaps_are_reported_exactly_and_fill_into_the_watermark() {
        let a = r("a");
        let mut c = CausalContext::new();
        for s in [1, 2, 5, 6, 9] {
            assert!(c.insert(&Dot::new(a.clone(), s)));
        }
        assert!(!c.insert(&Dot::new(a.clone(), 5)), "duplicate");
        assert_eq!(c.watermark(&a), 2);
        let m = c.missing(&a, 10);
        assert_eq!(
            m,
            vec![
                SeqRange { start: 3, end: 4 },
                SeqRange { start: 7, end: 8 },
                SeqRange { start: 10, end: 10 }
            ]
        );
        c.insert(&Dot::new(a.clone(), 3));
        c.insert(&Dot::new(a.clone(), 4));
        assert_eq!(c.watermark(&a), 6);
        c.insert_range(&a, SeqRange::new(7, 8).unwrap());
        assert_eq!(c.watermark(&a), 9);
        assert!(c.missing(&a, 9).is_empty());
    }

    #[test]
    fn seqs_at_the_top_of_the_range_neither_wrap_nor_panic() {
        let a = r("a");
        let mut c = CausalContext::new();
        for s in [u64::MAX, u64::MAX - 2, 1] {
            assert!(c.insert(&Dot::new(a.clone(), s)));
        }
        assert_eq!(c.max_seen(&a), u64::MAX);
        assert_eq!(
            c.next_seq(&a),
            u64::MAX,
            "saturates instead of wrapping to 0"
        );
        let m = c.missing(&a, u64::MAX);
        assert_eq!(m.first().map(|x| x.start), Some(2));
        assert_eq!(
            m.last().map(|x| (x.start, x.end)),
            Some((u64::MAX - 1, u64::MAX - 1))
        );
        c.insert_range(&a, SeqRange::new(2, u64::MAX).unwrap());
        assert_eq!(c.watermark(&a), u64::MAX);
        assert!(c.missing(&a, u64::MAX).is_empty());
        assert!(!c.insert(&Dot::new(a.clone(), u64::MAX)));
        assert!(!c.insert(&Dot::new(a.clone(), 0)), "seq 0 is never new");
        assert_eq!(c.watermark(&a), u64::MAX);
    }

    #[test]
    fn from_parts_rejects_non_canonical_ranges() {
        let a = r("a");
        assert!(
            ReplicaContext::from_parts(&a, 3, [(4, 5)]).is_err(),
            "touches watermark"
        );
        assert!(
            ReplicaContext::from_parts(&a, 3, [(6, 7), (8, 9)]).is_err(),
            "adjacent"
        );
        assert!(
            ReplicaContext::from_parts(&a, 3, [(7, 6)]).is_err(),
            "reversed"
        );
        assert!(ReplicaContext::from_parts(&a, 3, [(5, 6), (8, 9)]).is_ok());
    }

    #[test]
    fn version_vector_order_is_causality() {
        let (a, b) = (r("a"), r("b"));
        let v1: VersionVector = [(a.clone(), 2)].into_iter().collect();
        let v2: VersionVector = [(a.clone(), 3)].into_iter().collect();
        let v3: VersionVector = [(b.clone(), 1)].into_iter().collect();
        assert!(v1 < v2);
        assert_eq!(v1.partial_cmp(&v3), None);
        let mut j = v2.clone();
        j.merge(&v3);
        assert!(v2 < j && v3 < j);
    }
}
