//! The server's side: de-duplicate, release in dot order, merge, acknowledge, report gaps.
//!
//! [`Server::apply`] takes one decoded batch (possibly a duplicate, a partial overlap of earlier
//! batches, out of order, or from an agent that crashed and restarted) and returns an
//! [`Applied`]: the events to release now, in dot order; the state deltas to merge; the
//! watermark to acknowledge. Events above a gap are held (and count as seen) until the gap
//! fills; the ack is always the contiguous watermark, so an agent never trims what the server
//! does not have in full.
//!
//! Durability contract for the driver: everything in [`Server`] is durable state (the
//! reconciler keeps it in RocksDB). Apply a batch, make the result durable, *then* publish the
//! released events and the ack. After a crash the driver rebuilds the same value with
//! [`Server::restore`]; a batch applied but not yet published is applied again on redelivery,
//! which releases nothing twice because it was persisted as seen.

use std::collections::BTreeMap;

use edgesync_core::causal::ReplicaContext;
use edgesync_core::{Crdt, DeltaBatch, DropReason, Event, ReplicaId, SeqRange};

/// Limits of the server side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most events held back above a gap, per replica. Beyond it new events are not taken (not
    /// marked seen, so not acknowledged) and arrive again after the agent goes back to the
    /// watermark. Bounds memory against an agent that runs far ahead of a gap.
    pub max_pending_per_replica: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_pending_per_replica: 100_000,
        }
    }
}

/// One replica's durable state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaState {
    /// Seen seqs: the watermark (released) plus the ranges held above gaps.
    pub ctx: ReplicaContext,
    /// Events seen above the watermark, waiting for the gap below them to fill.
    pub pending: BTreeMap<u64, Event>,
    /// When the current gap was first seen (server time), if there is one.
    pub gap_since_ms: Option<u64>,
    /// Seqs the agent reported as dropped at the edge, by reason (they count as seen).
    pub dropped: BTreeMap<DropReason, u64>,
    /// Bytes of this replica's batches received as published (compressed, duplicates
    /// included): what its link carried, as the driver counts it ([`Server::apply_received`]).
    pub wire_bytes: u64,
}

/// What applying one batch produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The batch's replica.
    pub replica: ReplicaId,
    /// Events to publish now, in seq order, each exactly once over the server's life.
    pub released: Vec<Event>,
    /// State deltas to merge (joined per key; empty when the batch held nothing new).
    pub deltas: BTreeMap<String, Crdt>,
    /// The watermark to acknowledge.
    pub watermark: u64,
    /// Events of the batch seen for the first time.
    pub new_events: usize,
    /// Events of the batch seen before.
    pub duplicates: usize,
    /// Events not taken because the pending limit was reached.
    pub deferred: usize,
    /// Seqs of the batch newly accounted as dropped at the edge.
    pub dropped: u64,
}

/// Status of one replica, for the completeness ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Contiguous watermark.
    pub watermark: u64,
    /// Highest seq seen.
    pub max_seen: u64,
    /// Exact missing ranges below `max_seen`.
    pub missing: Vec<SeqRange>,
    /// Since when there has been a gap.
    pub gap_since_ms: Option<u64>,
    /// Events held back.
    pub pending: usize,
    /// Seqs dropped at the edge, by reason.
    pub dropped: BTreeMap<DropReason, u64>,
}

/// The server's protocol state for the replicas it owns (one reconciler partition, or all).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Server {
    cfg: ServerConfig,
    replicas: BTreeMap<ReplicaId, ReplicaState>,
}

impl Server {
    /// An empty server.
    pub fn new(cfg: ServerConfig) -> Self {
        Self {
            cfg,
            replicas: BTreeMap::new(),
        }
    }

    /// Rebuilds a server from its persisted replica states.
    pub fn restore(
        cfg: ServerConfig,
        replicas: impl IntoIterator<Item = (ReplicaId, ReplicaState)>,
    ) -> Self {
        Self {
            cfg,
            replicas: replicas.into_iter().collect(),
        }
    }

    /// What a restarted process holds: this server rebuilt from its durable parts (what
    /// simulations and tests use for a restart).
    pub fn reloaded(&self) -> Server {
        Server::restore(
            self.cfg,
            self.replicas.iter().map(|(r, s)| (r.clone(), s.clone())),
        )
    }

    /// The durable state, per replica.
    pub fn replicas(&self) -> impl ExactSizeIterator<Item = (&ReplicaId, &ReplicaState)> {
        self.replicas.iter()
    }

    /// The durable state of `replica`, if known.
    pub fn state(&self, replica: &ReplicaId) -> Option<&ReplicaState> {
        self.replicas.get(replica)
    }

    /// The watermark of `replica` (0 if unknown).
    pub fn watermark(&self, replica: &ReplicaId) -> u64 {
        self.replicas.get(replica).map_or(0, |r| r.ctx.watermark())
    }

    /// Completeness status of `replica`.
    pub fn status(&self, replica: &ReplicaId) -> Option<ReplicaStatus> {
        self.replicas.get(replica).map(|r| ReplicaStatus {
            watermark: r.ctx.watermark(),
            max_seen: r.ctx.max_seen(),
            missing: r.ctx.missing(r.ctx.max_seen()),
            gap_since_ms: r.gap_since_ms,
            pending: r.pending.len(),
            dropped: r.dropped.clone(),
        })
    }

    /// [`Server::apply`] for a batch that was `wire_bytes` long as received, counted in its
    /// replica's [`ReplicaState::wire_bytes`] (durable with the rest of the state, so a batch
    /// applied again after a crash is not counted twice).
    pub fn apply_received(&mut self, batch: DeltaBatch, wire_bytes: u64, now_ms: u64) -> Applied {
        let applied = self.apply(batch, now_ms);
        if let Some(rs) = self.replicas.get_mut(&applied.replica) {
            rs.wire_bytes = rs.wire_bytes.saturating_add(wire_bytes);
        }
        applied
    }

    /// Applies one batch at server time `now_ms`.
    pub fn apply(&mut self, batch: DeltaBatch, now_ms: u64) -> Applied {
        let cap = self.cfg.max_pending_per_replica;
        let (replica, _first, events, dropped_ranges, state) = batch.into_parts();
        let rs = self.replicas.entry(replica.clone()).or_default();
        let (mut new_events, mut duplicates, mut deferred) = (0, 0, 0);
        // Dropped seqs count as seen (the agent will never send them): they move the watermark
        // like delivered events, and the ledger keeps how many and why.
        let mut dropped = 0;
        for d in dropped_ranges {
            let before = rs.ctx.count();
            rs.ctx.insert_range(d.range.start, d.range.end);
            let new = rs.ctx.count() - before;
            if new > 0 {
                *rs.dropped.entry(d.reason).or_insert(0) += new;
                dropped += new;
            }
        }
        let mut released = Vec::new();
        for e in events {
            let seq = e.dot.seq;
            if rs.ctx.contains(seq) {
                duplicates += 1;
            } else if seq > rs.ctx.watermark() + 1 && rs.pending.len() >= cap {
                deferred += 1;
            } else {
                let next = seq == rs.ctx.watermark() + 1;
                rs.ctx.insert(seq);
                new_events += 1;
                if next && rs.pending.is_empty() {
                    // The common case, in order with nothing held: released at once (events
                    // come in seq order, so anything held later is above it).
                    released.push(e);
                } else {
                    rs.pending.insert(seq, e);
                }
            }
        }
        // Everything at or below the (possibly advanced) watermark is contiguous: release it.
        let watermark = rs.ctx.watermark();
        while let Some(entry) = rs.pending.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            released.push(entry.remove());
        }
        rs.gap_since_ms = if rs.pending.is_empty() {
            None
        } else {
            rs.gap_since_ms.or(Some(now_ms))
        };
        // A batch with nothing new carries only deltas already merged from earlier batches.
        let deltas = if new_events + deferred > 0 {
            state
        } else {
            BTreeMap::new()
        };
        Applied {
            replica,
            released,
            deltas,
            watermark,
            new_events,
            duplicates,
            deferred,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgesync_core::arbitrary::replica;
    use edgesync_core::{BatchBuilder, Dot, EventLimits, Hlc};

    fn batch(first: u64, last: u64) -> DeltaBatch {
        let r = replica(0);
        let mut b = BatchBuilder::new(r.clone(), first, EventLimits::default());
        for s in first..=last {
            let e = Event {
                dot: Dot::new(r.clone(), s),
                hlc: Hlc::new(s, 0),
                stream: "s".into(),
                schema_version: 1,
                fields: Default::default(),
                tags: Default::default(),
            };
            b.push(e, []).unwrap();
        }
        b.finish().unwrap()
    }

    fn seqs(a: &Applied) -> Vec<u64> {
        a.released.iter().map(|e| e.dot.seq).collect()
    }

    #[test]
    fn a_gap_holds_later_events_back_until_it_fills() {
        let mut s = Server::new(ServerConfig::default());
        assert_eq!(seqs(&s.apply(batch(1, 3), 0)), vec![1, 2, 3]);
        let a = s.apply(batch(7, 9), 10);
        assert!(a.released.is_empty());
        assert_eq!(a.watermark, 3);
        let st = s.status(&replica(0)).unwrap();
        assert_eq!(st.missing, vec![SeqRange::new(4, 6).unwrap()]);
        assert_eq!(st.gap_since_ms, Some(10));
        let a = s.apply(batch(4, 6), 20);
        assert_eq!(seqs(&a), vec![4, 5, 6, 7, 8, 9]);
        assert_eq!(a.watermark, 9);
        assert_eq!(s.status(&replica(0)).unwrap().gap_since_ms, None);
    }

    #[test]
    fn a_batch_across_held_events_releases_everything_in_order_once() {
        let mut s = Server::new(ServerConfig::default());
        assert_eq!(seqs(&s.apply(batch(1, 3), 0)), vec![1, 2, 3]);
        assert!(s.apply(batch(6, 8), 0).released.is_empty());
        let a = s.apply(batch(4, 10), 0);
        assert_eq!(seqs(&a), vec![4, 5, 6, 7, 8, 9, 10]);
        assert_eq!((a.new_events, a.duplicates, a.watermark), (4, 3, 10));
        assert_eq!(seqs(&s.apply(batch(11, 12), 0)), vec![11, 12]);
        assert_eq!(s.status(&replica(0)).unwrap().pending, 0);
    }

    #[test]
    fn duplicates_and_overlaps_release_nothing_twice() {
        let mut s = Server::new(ServerConfig::default());
        s.apply(batch(1, 5), 0);
        let a = s.apply(batch(3, 8), 0);
        assert_eq!(seqs(&a), vec![6, 7, 8]);
        assert_eq!((a.new_events, a.duplicates), (3, 3));
        let a = s.apply(batch(1, 8), 0);
        assert!(a.released.is_empty() && a.deltas.is_empty());
        assert_eq!(a.watermark, 8, "a pure duplicate is still acknowledged");
    }

    #[test]
    fn the_pending_limit_defers_instead_of_growing() {
        let mut s = Server::new(ServerConfig {
            max_pending_per_replica: 2,
        });
        let a = s.apply(batch(3, 6), 0);
        assert_eq!((a.new_events, a.deferred), (2, 2));
        let a = s.apply(batch(1, 6), 0);
        assert_eq!(seqs(&a), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn seqs_dropped_at_the_edge_move_the_watermark_and_are_counted() {
        let mut s = Server::new(ServerConfig::default());
        s.apply(batch(1, 2), 0);
        let r = replica(0);
        let only_dropped = DeltaBatch::with_dropped(
            r.clone(),
            3,
            vec![],
            vec![edgesync_core::DroppedRange {
                range: SeqRange::new(3, 6).unwrap(),
                reason: DropReason::Quota,
            }],
            Default::default(),
            &EventLimits::default(),
        )
        .unwrap();
        let a = s.apply(only_dropped.clone(), 0);
        assert_eq!((a.watermark, a.dropped), (6, 4));
        assert!(a.released.is_empty());
        assert_eq!(seqs(&s.apply(batch(7, 8), 0)), vec![7, 8]);
        assert_eq!(
            s.apply(only_dropped, 0).dropped,
            0,
            "a resent drop counts once"
        );
        assert_eq!(
            s.status(&r).unwrap().dropped,
            BTreeMap::from([(DropReason::Quota, 4)])
        );
    }

    #[test]
    fn restore_continues_where_the_durable_state_left_off() {
        let mut s = Server::new(ServerConfig::default());
        s.apply(batch(1, 2), 0);
        s.apply(batch(5, 5), 0);
        let parts: Vec<_> = s
            .replicas()
            .map(|(r, st)| (r.clone(), st.clone()))
            .collect();
        let mut t = Server::restore(ServerConfig::default(), parts);
        assert_eq!(t, s);
        assert_eq!(seqs(&t.apply(batch(3, 5), 1)), vec![3, 4, 5]);
    }
}
