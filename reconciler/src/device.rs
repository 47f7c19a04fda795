//! Device stage: batches (partitioned by device) → de-duplicated events in dot order, state
//! deltas re-keyed by CRDT key, watermarks for the devices.
//!
//! Per group of input records: apply each batch to the protocol's `Server` of its partition
//! (the sans-IO state machine, unchanged); produce released events to the *same partition* of
//! the events topic, deltas to the state-deltas topic and dead letters, and wait until Kafka
//! has them; then produce the acks (a device may trim only what is durable downstream); then
//! write the touched replicas' states, the next input offset and the events checkpoint in one
//! synced RocksDB batch; then commit the offsets to the group.
//!
//! Exactly-once events without transactions: the device stage is the only writer of events
//! partition p while it owns deltas partition p. A crash between producing events and the
//! state write leaves events in Kafka that the restored state does not know it released. So
//! on assignment the stage reads the events partition from its checkpoint to the end and
//! records, per replica, the highest seq already there; re-released events up to it are not
//! produced again. The remaining risk is a zombie: a process that lost the partition in a
//! network partition but has not noticed may still write; every event carries its dot, so
//! such a duplicate is identifiable, and `edgesync_reconciler_events_suppressed_total` and the
//! reader-side check in the end-to-end tests detect it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use edgesync_core::{ReplicaId, VersionVector};
use edgesync_protocol::{Server, ServerConfig};
use edgesync_schemas::{Ack, DeadLetterReason, Framing, StateRecord};
use edgesync_servicekit::now_ms;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::stage::{self, Change, Io, Out};
use crate::store::{Batch, Stage};
use crate::Error;

/// Topic names and limits of the stage.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// Input.
    pub deltas_topic: String,
    /// Output, same partitioning as the input.
    pub events_topic: String,
    /// Output, keyed by CRDT key.
    pub state_deltas_topic: String,
    /// Output, keyed by device.
    pub acks_topic: String,
    /// Bad records.
    pub dlq_topic: String,
    /// Records per group.
    pub max_group: usize,
    /// Server limits.
    pub server: ServerConfig,
    /// Clock skew beyond which a device is flagged.
    pub skew_bound_ms: u64,
}

/// What the stage works with.
#[allow(missing_debug_implementations)]
pub struct DeviceStage {
    /// Settings.
    pub cfg: DeviceConfig,
    /// Codec, store, Kafka clients (the group consumer reads the deltas topic), metrics.
    pub io: Io,
    /// Completeness ledger.
    pub ledger: Arc<Ledger>,
}

struct Owned {
    server: Server,
    /// Next input offset this process's state reflects.
    next: i64,
}

impl DeviceStage {
    /// Runs until `shutdown` is cancelled (finishing the group in hand).
    pub fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let rt = stage::runtime()?;
        let mut owned: HashMap<i32, Owned> = HashMap::new();
        let mut skip: HashMap<ReplicaId, u64> = HashMap::new();
        while !shutdown.is_cancelled() {
            let msgs = stage::poll_group(&self.io.consumer, self.cfg.max_group, "deltas");
            // Rebalances happen inside poll: handle them before the records they precede.
            for change in self.io.ctx.take() {
                self.change(change, &mut owned, &mut skip, &rt)?;
            }
            if !msgs.is_empty() {
                self.process(msgs, &mut owned, &mut skip, &rt)?;
            }
        }
        Ok(())
    }

    fn change(
        &self,
        change: Change,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<(), Error> {
        match change {
            Change::Revoked(ps) => {
                for p in ps {
                    if let Some(o) = owned.remove(&p) {
                        self.ledger.forget(o.server.replicas().map(|(r, _)| r));
                    }
                }
            }
            Change::Assigned(ps) => {
                for p in ps {
                    self.assign(p, owned, skip, rt)?;
                }
            }
        }
        Ok(())
    }

    fn assign(
        &self,
        p: i32,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<(), Error> {
        let c = &self.cfg;
        let server = Server::restore(c.server, self.io.store.replicas(&self.io.codec, p)?);
        let (local, start) = self.io.resume_points(Stage::Device, &c.deltas_topic, p)?;
        // Events this partition already holds beyond what the local state knows it released.
        let (elow, ehigh) = stage::watermarks(&self.io.reader, &c.events_topic, p)?;
        let from = self.io.store.checkpoint(p)?.unwrap_or(elow).max(elow);
        let codec = &self.io.codec;
        stage::read_range(
            &self.io.reader,
            &c.events_topic,
            p,
            from,
            ehigh,
            10_000,
            |msgs| {
                for m in msgs {
                    if let Some(e) = m.payload().and_then(|b| codec.decode_event(b).ok()) {
                        let s = skip.entry(e.dot.replica.clone()).or_insert(0);
                        *s = (*s).max(e.dot.seq);
                    }
                }
                Ok(())
            },
        )?;
        owned.insert(
            p,
            Owned {
                server,
                next: local,
            },
        );
        self.ledger.update(
            owned[&p]
                .server
                .replicas()
                .map(|(r, s)| (r.clone(), s.clone())),
        );
        // The group starts at its committed offset: replay what lies between.
        tracing::info!(
            partition = p,
            local,
            committed = start,
            events_from = from,
            events_to = ehigh,
            "device partition assigned"
        );
        if start > local {
            stage::read_range(
                &self.io.reader,
                &c.deltas_topic,
                p,
                local,
                start,
                c.max_group,
                |msgs| self.process(msgs, owned, skip, rt),
            )?;
        }
        Ok(())
    }

    fn process(
        &self,
        msgs: Vec<OwnedMessage>,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<(), Error> {
        let c = &self.cfg;
        let now = now_ms();
        let mut out = Out::default();
        let mut acks: BTreeMap<ReplicaId, u64> = BTreeMap::new();
        let mut touched: BTreeSet<(i32, ReplicaId)> = BTreeSet::new();
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut skews: BTreeMap<ReplicaId, i64> = BTreeMap::new();
        let (mut n_events, mut n_deltas) = (0u64, 0u64);
        for m in msgs {
            let p = m.partition();
            let Some(o) = owned.get_mut(&p) else {
                continue; // revoked: the new owner reads it
            };
            if m.offset() < o.next {
                continue; // already reflected in the local state
            }
            o.next = m.offset() + 1;
            offsets.insert(p, o.next);
            self.io.metrics.batches.inc();
            let payload = m.payload().unwrap_or_default();
            let batch = match self.io.codec.decode_batch(payload) {
                Ok(b) => b,
                Err(e) => {
                    self.dead(&mut out, &m, DeadLetterReason::Undecodable, e.to_string());
                    continue;
                }
            };
            if let Some(k) = m.key() {
                if k != batch.replica().device.as_str().as_bytes() {
                    let why = format!(
                        "key {:?} but the batch names {}",
                        String::from_utf8_lossy(k),
                        batch.replica().device
                    );
                    self.dead(&mut out, &m, DeadLetterReason::DeviceMismatch, why);
                    continue;
                }
            }
            let oldest_hlc = batch.events().iter().map(|e| e.hlc.wall_ms).min();
            let replica = batch.replica().clone();
            let a = o.server.apply(batch, now);
            self.io.metrics.duplicates.inc_by(a.duplicates as u64);
            let done = skip.get(&replica).copied().unwrap_or(0);
            let mut last_skew = None;
            let device = replica.device.as_str().as_bytes();
            for e in &a.released {
                if e.dot.seq <= done {
                    self.io.metrics.suppressed.inc();
                    continue;
                }
                let skew_ms = now as i64 - e.hlc.wall_ms as i64;
                self.io.metrics.observe_skew(skew_ms, c.skew_bound_ms);
                last_skew = Some(skew_ms);
                let bytes = self.io.codec.encode_event(e, Framing::SingleObject)?;
                out.send(
                    &self.io.producer,
                    &c.events_topic,
                    Some(p),
                    device,
                    &bytes,
                    true,
                );
                n_events += 1;
            }
            if a.watermark >= done {
                skip.remove(&replica);
            }
            for (key, delta) in a.deltas {
                let mut vv = VersionVector::new();
                vv.observe(&replica, a.watermark);
                let rec = StateRecord {
                    key: key.clone(),
                    state: delta,
                    version_vector: vv,
                    // A delta carries the HLC time of its oldest event: the key stage measures
                    // convergence latency from it.
                    emitted_at_ms: oldest_hlc.unwrap_or(now),
                };
                let bytes = self
                    .io
                    .codec
                    .encode_state_record(&rec, Framing::SingleObject)?;
                out.send(
                    &self.io.producer,
                    &c.state_deltas_topic,
                    None,
                    key.as_bytes(),
                    &bytes,
                    false,
                );
                n_deltas += 1;
            }
            acks.insert(replica.clone(), a.watermark);
            if let Some(s) = last_skew {
                skews.insert(replica.clone(), s);
            }
            touched.insert((p, replica));
        }
        // Events, deltas and dead letters durable in Kafka before anything else.
        let last_event = out.wait(rt)?;
        // Counted once Kafka has them.
        self.io.metrics.events.inc_by(n_events);
        self.io.metrics.deltas.inc_by(n_deltas);
        let mut acks_out = Out::default();
        for (replica, watermark) in &acks {
            let bytes = self.io.codec.encode_ack(&Ack {
                replica: replica.clone(),
                watermark: *watermark,
                acked_at_ms: now,
            })?;
            acks_out.send(
                &self.io.producer,
                &c.acks_topic,
                None,
                replica.device.as_str().as_bytes(),
                &bytes,
                false,
            );
        }
        // Not awaited: the events they acknowledge are durable already, and a lost ack only
        // makes the agent send again (saves a broker round trip per group).
        acks_out.detach(rt, "ack", self.io.metrics.acks_failed.clone());
        self.io.metrics.acks.inc_by(acks.len() as u64);
        let mut b = Batch::default();
        for (p, r) in &touched {
            if let Some(s) = owned.get(p).and_then(|o| o.server.state(r)) {
                b.replica(&self.io.codec, *p, r, s)?;
            }
        }
        for (p, next) in &offsets {
            b.offset(Stage::Device, *p, *next);
        }
        for (p, off) in &last_event {
            b.checkpoint(*p, off + 1);
        }
        self.io.store.commit(b)?;
        stage::commit(&self.io.consumer, &c.deltas_topic, &offsets);
        self.ledger.update(touched.iter().filter_map(|(p, r)| {
            owned
                .get(p)
                .and_then(|o| o.server.state(r))
                .map(|s| (r.clone(), s.clone()))
        }));
        for (r, s) in &skews {
            self.ledger.skew(r, *s);
        }
        Ok(())
    }

    fn dead(&self, out: &mut Out, m: &OwnedMessage, reason: DeadLetterReason, detail: String) {
        let device = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        self.io
            .dead(out, &self.cfg.dlq_topic, m, reason, detail, device);
    }
}
