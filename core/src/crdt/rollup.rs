//! Rollup map: exact per-bucket aggregates despite duplicates and late data.
//!
//! Each `(bucket, replica)` cell is owned by that replica, which alone updates it and bumps its
//! version. Joining keeps the higher version per cell, so a duplicated or reordered delta can
//! never count a sample twice, and the bucket's aggregate is the combination of its cells.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::Lattice;
use crate::id::ReplicaId;

/// One replica's aggregate for one bucket.
#[derive(Clone, Copy, Debug)]
pub struct RollupCell {
    /// Bumped by the owning replica on every update.
    pub version: u64,
    /// Samples recorded.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl RollupCell {
    fn key(&self) -> (u64, u64, u64, u64, u64) {
        // Bit patterns give a total order for the (never well-formed) equal-version tie-break.
        (
            self.version,
            self.count,
            self.sum.to_bits(),
            self.min.to_bits(),
            self.max.to_bits(),
        )
    }
}

impl PartialEq for RollupCell {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for RollupCell {}
impl PartialOrd for RollupCell {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RollupCell {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// A sample that cannot be aggregated.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("rollup sample {0} is not a finite number")]
pub struct NonFiniteSample(pub f64);

/// The aggregate of one bucket across all replicas.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RollupAggregate {
    /// Samples recorded.
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

/// Per time bucket (its start, in ms) and replica: count, sum, min, max.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RollupMap {
    cells: BTreeMap<(u64, ReplicaId), RollupCell>,
}

impl RollupMap {
    /// Records sample `x` in `bucket` on behalf of `replica` and returns the delta.
    pub fn record(
        &mut self,
        replica: &ReplicaId,
        bucket: u64,
        x: f64,
    ) -> Result<RollupMap, NonFiniteSample> {
        if !x.is_finite() {
            return Err(NonFiniteSample(x));
        }
        let key = (bucket, replica.clone());
        let cell = match self.cells.get(&key) {
            Some(c) => RollupCell {
                version: c.version + 1,
                count: c.count + 1,
                sum: c.sum + x,
                min: c.min.min(x),
                max: c.max.max(x),
            },
            None => RollupCell {
                version: 1,
                count: 1,
                sum: x,
                min: x,
                max: x,
            },
        };
        self.cells.insert(key.clone(), cell);
        Ok(RollupMap {
            cells: BTreeMap::from([(key, cell)]),
        })
    }

    /// Every cell, in `(bucket, replica)` order.
    pub fn cells(&self) -> impl ExactSizeIterator<Item = (&(u64, ReplicaId), &RollupCell)> {
        self.cells.iter()
    }

    /// Builds from cells (decoding); a repeated key keeps the higher version.
    pub fn from_cells(cells: impl IntoIterator<Item = ((u64, ReplicaId), RollupCell)>) -> Self {
        let mut m = RollupMap::default();
        for (k, c) in cells {
            m.join_cell(&k, c);
        }
        m
    }

    fn join_cell(&mut self, key: &(u64, ReplicaId), cell: RollupCell) {
        match self.cells.get_mut(key) {
            Some(c) => {
                if cell > *c {
                    *c = cell;
                }
            }
            None => {
                self.cells.insert(key.clone(), cell);
            }
        }
    }

    /// Aggregates per bucket across replicas, in bucket order.
    pub fn buckets(&self) -> BTreeMap<u64, RollupAggregate> {
        let mut out: BTreeMap<u64, RollupAggregate> = BTreeMap::new();
        for ((bucket, _), c) in &self.cells {
            out.entry(*bucket)
                .and_modify(|a| {
                    a.count += c.count;
                    a.sum += c.sum;
                    a.min = a.min.min(c.min);
                    a.max = a.max.max(c.max);
                })
                .or_insert(RollupAggregate {
                    count: c.count,
                    sum: c.sum,
                    min: c.min,
                    max: c.max,
                });
        }
        out
    }
}

impl Lattice for RollupMap {
    fn join(&mut self, other: &Self) {
        for (k, c) in &other.cells {
            self.join_cell(k, *c);
        }
    }
}
