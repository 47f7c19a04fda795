//! Device stage: batches (partitioned by device) → de-duplicated events in dot order, state
//! deltas re-keyed by CRDT key, watermarks for the devices.
//!
//! Per group of input records: apply each batch to the protocol's `Server` of its partition
//! (the sans-IO state machine, unchanged); produce released events to the *same partition* of
//! the events topic, the group's deltas joined per key (`GroupDeltas`) to the state-deltas
//! topic and dead letters, and wait until Kafka has them; then produce the acks (a device may trim only what is durable downstream); then
//! write the touched replicas' states, the next input offset and the events checkpoint in one
//! synced RocksDB batch; then commit the offsets to the group.
//!
//! Pipelined (`read_back`): while one group's outputs travel to Kafka the stage applies the
//! next group, so the stage's CPU and the broker's confirmation overlap instead of taking
//! turns. What each group must persist — the touched replicas' states, its next input
//! offsets, its acks and its ledger lines — is taken when the group is applied
//! ([`Staged`]), so a later group's effects never reach the store before that group's
//! outputs are durable. Groups finish in the order they were applied, at most one is in
//! flight, and none is in flight when partitions move (a rebalance finishes it first).
//!
//! Exactly-once events without transactions (`exactly_once = "read_back"`, the default): the
//! device stage is the only writer of events partition p while it owns deltas partition p. A crash between producing events and the
//! state write leaves events in Kafka that the restored state does not know it released. So
//! on assignment the stage reads the events partition from its checkpoint to the end and
//! records, per replica, the highest seq already there; re-released events up to it are not
//! produced again. The remaining risk is a zombie: a process that lost the partition in a
//! network partition but has not noticed may still write; every event carries its dot, so
//! such a duplicate is identifiable, and `edgesync_reconciler_events_suppressed_total` and the
//! reader-side check in the end-to-end tests detect it.
//!
//! With `exactly_once = "transactions"` each owned input partition p has its own transactional
//! producer (id `<device_group>-<p>`), made on assignment: its `init_transactions` fences any
//! earlier owner of p and ends that owner's open transaction, before the read-back (which reads
//! committed records only). A group of p's records is then one transaction: events, deltas,
//! dead letters, acks and p's next input offset (`send_offsets_to_transaction`), committed
//! before the state write. A zombie's commit fails (fenced), and the stage stops; what it wrote
//! in that transaction is aborted and invisible to `read_committed` readers.

use edgesync_servicekit::crash::crash_point;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use edgesync_core::{Crdt, DeltaBatch, DeviceId, ReplicaId, VersionVector};
use edgesync_protocol::{Server, ServerConfig};
use edgesync_schemas::{Ack, DeadLetterReason, Framing, MessageKind, StateRecord};
use edgesync_servicekit::now_ms;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::Producer as _;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::ledger::{Entry, Ledger};
use crate::out::{Out, Producer};
use crate::stage::{self, Change, Io};
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
    /// Output, keyed by device (compacted): the ledger's lines of each changed device.
    pub completeness_topic: String,
    /// Bad records.
    pub dlq_topic: String,
    /// Records per group.
    pub max_group: usize,
    /// Server limits.
    pub server: ServerConfig,
    /// Clock skew beyond which a device is flagged.
    pub skew_bound_ms: u64,
    /// `exactly_once = "transactions"`: how to make the transactional producers.
    pub transactions: Option<Transactions>,
}

/// The device stage's transactional producers (one per owned input partition).
#[derive(Clone, Debug)]
pub struct Transactions {
    /// Producer settings, without the transactional id.
    pub producer: ClientConfig,
    /// Ids are `<prefix>-<partition>` (the device group's name).
    pub id_prefix: String,
}

/// How long a transaction call may block (init, commit, abort, offsets).
const TXN_CALL: std::time::Duration = std::time::Duration::from_secs(60);

impl Transactions {
    /// Partition `p`'s producer, ready: `init_transactions` fences an earlier owner of `p` and
    /// completes or aborts its open transaction.
    fn open(&self, p: i32) -> Result<Producer, Error> {
        let id = format!("{}-{p}", self.id_prefix);
        let producer: Producer = self
            .producer
            .clone()
            .set("transactional.id", &id)
            .create_with_context(crate::out::Deliveries)?;
        producer.init_transactions(TXN_CALL)?;
        tracing::info!(partition = p, transactional_id = %id, "transactional producer ready");
        Ok(producer)
    }
}

/// What applying a group of records produced and touched.
#[derive(Default)]
struct Applied {
    acks: BTreeMap<ReplicaId, u64>,
    touched: BTreeSet<(i32, ReplicaId)>,
    offsets: BTreeMap<i32, i64>,
    skews: BTreeMap<ReplicaId, i64>,
    events: u64,
    deltas: u64,
}

/// The group's state deltas, joined per key (one record per key and CRDT kind).
///
/// Joins are associative, commutative and idempotent, so the key stage converges to the same
/// state whether it gets each batch's delta or their join; the join's version vector is the
/// merge of theirs and its `emitted_at_ms` the oldest. A thousand batches of a hundred devices
/// incrementing one fleet counter become one record instead of a thousand (the key stage then
/// decodes, joins and stores one delta). Deltas of different kinds under one key are not
/// joined: each goes on as its own record, for the key stage to dead-letter as before.
#[derive(Default)]
struct GroupDeltas(BTreeMap<String, Vec<StateRecord>>);

impl GroupDeltas {
    /// Adds one batch's joined deltas, from `replica` at `watermark`.
    fn add(
        &mut self,
        deltas: BTreeMap<String, Crdt>,
        replica: &ReplicaId,
        watermark: u64,
        emitted_at_ms: u64,
    ) {
        for (key, delta) in deltas {
            let records = self.0.entry(key).or_default();
            let same_kind = records.iter_mut().find(|r| r.state.kind() == delta.kind());
            if let Some(r) = same_kind.and_then(|r| r.state.join(&delta).is_ok().then_some(r)) {
                r.version_vector.observe(replica, watermark);
                r.emitted_at_ms = r.emitted_at_ms.min(emitted_at_ms);
                continue;
            }
            let mut version_vector = VersionVector::new();
            version_vector.observe(replica, watermark);
            records.push(StateRecord {
                key: String::new(),
                state: delta,
                version_vector,
                emitted_at_ms,
            });
        }
    }
}

/// A group applied, its outputs enqueued: what remains to do once Kafka has them, taken as of
/// this group (a later group may already have changed the servers).
struct Staged {
    out: Out,
    applied: Applied,
    /// The touched replicas' states and the next input offsets.
    store: Batch,
    /// The touched replicas' ledger lines.
    lines: Vec<(ReplicaId, Entry)>,
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
    /// The partition's transactional producer (`exactly_once = "transactions"`).
    txn: Option<Producer>,
}

impl DeviceStage {
    /// Runs until `shutdown` is cancelled (finishing the groups in hand).
    pub fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut owned: HashMap<i32, Owned> = HashMap::new();
        let mut skip: HashMap<ReplicaId, u64> = HashMap::new();
        let mut in_flight = stage::InFlight::default();
        while !shutdown.is_cancelled() {
            let wait = in_flight.poll_wait();
            let msgs = self.io.member.poll(self.cfg.max_group, wait, "deltas")?;
            // Rebalances happen inside poll: handle them, with nothing in flight, before the
            // records they precede.
            let changes = self.io.member.ctx.take();
            if !changes.is_empty() || msgs.is_empty() {
                in_flight.drain(|g| self.finish(g, true))?;
            }
            for change in changes {
                self.change(change, &mut owned, &mut skip)?;
            }
            if msgs.is_empty() {
                continue;
            }
            if self.cfg.transactions.is_some() {
                // One transaction per partition, each finished before the next.
                self.process(msgs, &mut owned, &mut skip)?;
                continue;
            }
            let next = self.stage(msgs, &self.io.producer, &mut owned, &mut skip)?;
            in_flight.push(next, |g| self.finish(g, true))?;
        }
        in_flight.drain(|g| self.finish(g, true))
    }

    fn change(
        &self,
        change: Change,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
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
                    self.assign(p, owned, skip)?;
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
    ) -> Result<(), Error> {
        let c = &self.cfg;
        // First, so that a zombie owner is fenced before the events are read back.
        let txn = c.transactions.as_ref().map(|t| t.open(p)).transpose()?;
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
                    // The dot alone: readable whatever schema version or registry id wrote it.
                    match codec.event_dot(m.payload().unwrap_or_default()) {
                        Ok(dot) => {
                            let s = skip.entry(dot.replica).or_insert(0);
                            *s = (*s).max(dot.seq);
                        }
                        Err(e) => tracing::warn!(partition = p, offset = m.offset(), error = %e,
                            "a record in the events topic names no event; not counted as written"),
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
                txn,
            },
        );
        let replicas = &owned[&p].server;
        self.ledger
            .update(replicas.replicas().map(|(r, s)| (r.clone(), Entry::of(s))));
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
                |msgs| self.process(msgs, owned, skip),
            )?;
        }
        // A new owner states every device it took, once it has caught up: records lost with
        // the previous owner (never awaited) are replaced.
        if let Some(o) = owned.get(&p) {
            let devices: BTreeSet<&DeviceId> =
                o.server.replicas().map(|(r, _)| &r.device).collect();
            self.publish_completeness(devices)?;
        }
        Ok(())
    }

    /// Processes records to the end, one group at a time: as one group, or with transactions
    /// one group (and transaction) per partition.
    fn process(
        &self,
        msgs: Vec<OwnedMessage>,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
    ) -> Result<(), Error> {
        if self.cfg.transactions.is_none() {
            let g = self.stage(msgs, &self.io.producer, owned, skip)?;
            return self.finish(g, true);
        }
        let mut parts: BTreeMap<i32, Vec<OwnedMessage>> = BTreeMap::new();
        for m in msgs {
            parts.entry(m.partition()).or_default().push(m);
        }
        for (p, part) in parts {
            // A revoked partition has no producer: its records are the new owner's.
            if let Some(txn) = owned.get(&p).and_then(|o| o.txn.clone()) {
                self.transaction(part, &txn, owned, skip)?;
            }
        }
        Ok(())
    }

    /// One partition's group as one transaction: its outputs, acks and input offsets
    /// committed together, then the state written.
    fn transaction(
        &self,
        msgs: Vec<OwnedMessage>,
        txn: &Producer,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
    ) -> Result<(), Error> {
        txn.begin_transaction()?;
        let mut g = self.stage(msgs, txn, owned, skip)?;
        self.send_acks(&g.applied.acks, &mut g.out)?;
        g.out.flush();
        if let Err(e) = self.commit_transaction(txn, &g.applied.offsets) {
            let _ = txn.abort_transaction(TXN_CALL);
            return Err(e);
        }
        self.finish(g, false)
    }

    /// Applies a group and enqueues its outputs with `producer`; takes what the group must
    /// persist once they are durable.
    fn stage(
        &self,
        msgs: Vec<OwnedMessage>,
        producer: &Producer,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
    ) -> Result<Staged, Error> {
        self.io.metrics.group("device", msgs.len());
        let mut out = Out::new(producer);
        let applied = self.apply(msgs, &mut out, owned, skip, now_ms())?;
        // Out on their way while the next group is applied.
        out.flush();
        let mut store = Batch::default();
        let mut lines = Vec::with_capacity(applied.touched.len());
        for (p, r) in &applied.touched {
            if let Some(s) = owned.get(p).and_then(|o| o.server.state(r)) {
                store.replica(&self.io.codec, *p, r, s)?;
                lines.push((r.clone(), Entry::of(s)));
            }
        }
        for (p, next) in &applied.offsets {
            store.offset(Stage::Device, *p, *next);
        }
        Ok(Staged {
            out,
            applied,
            store,
            lines,
        })
    }

    /// Once Kafka has a group's outputs (events, deltas and dead letters; in a transaction
    /// also its acks and offsets): the acks (`send_acks`, unless the transaction carried
    /// them), the state, offsets and events checkpoints in one synced write, the offsets to
    /// the group, the ledger.
    fn finish(&self, g: Staged, send_acks: bool) -> Result<(), Error> {
        let Staged {
            out,
            applied: a,
            mut store,
            lines,
        } = g;
        let last_event = out.wait()?;
        if send_acks {
            let counter = self.io.metrics.acks_failed.clone();
            let mut acks = Out::detached(&self.io.producer, "ack", counter);
            // Not awaited: the events they acknowledge are durable already, and a lost ack
            // only makes the agent send again (saves a broker round trip per group).
            self.send_acks(&a.acks, &mut acks)?;
            acks.flush();
            crash_point("acks.after_produce");
        }
        crash_point("device.after_produce");
        // Counted once Kafka has them.
        self.io.metrics.events.inc_by(a.events);
        self.io.metrics.deltas.inc_by(a.deltas);
        self.io.metrics.acks.inc_by(a.acks.len() as u64);
        for (p, off) in &last_event {
            store.checkpoint(*p, off + 1);
        }
        self.io.store.commit(store)?;
        crash_point("device.after_checkpoint");
        if self.cfg.transactions.is_none() {
            stage::commit(&self.io.member.consumer, &self.cfg.deltas_topic, &a.offsets);
        }
        crash_point("device.after_commit");
        self.ledger.update(lines);
        for (r, s) in &a.skews {
            self.ledger.skew(r, *s);
        }
        self.publish_completeness(a.touched.iter().map(|(_, r)| &r.device).collect())
    }

    /// Enqueues the completeness records of `devices`, as the ledger has them now. Not awaited
    /// (like acks): a lost record is replaced by the device's next change, or by the next
    /// owner of its partition, which publishes all of them; compaction keeps the latest.
    fn publish_completeness(&self, devices: BTreeSet<&DeviceId>) -> Result<(), Error> {
        let now = now_ms();
        let failed = self.io.metrics.completeness_failed.clone();
        let mut out = Out::detached(&self.io.producer, "completeness", failed);
        let framing = self.io.codec.output_framing(MessageKind::Completeness);
        for d in devices {
            if let Some(rec) = self.ledger.record(d, now) {
                let bytes = self.io.codec.encode_completeness(&rec, framing)?;
                let topic = &self.cfg.completeness_topic;
                out.send(topic, None, d.as_str().as_bytes(), &bytes, false);
            }
        }
        out.flush();
        Ok(())
    }

    /// The input offsets into the open transaction, then commit (which flushes its records).
    fn commit_transaction(&self, t: &Producer, offsets: &BTreeMap<i32, i64>) -> Result<(), Error> {
        if !offsets.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in offsets {
                tpl.add_partition_offset(&self.cfg.deltas_topic, *p, Offset::Offset(*o))?;
            }
            let group = self
                .io
                .member
                .consumer
                .group_metadata()
                .ok_or_else(|| Error::Replay("no consumer group metadata".into()))?;
            t.send_offsets_to_transaction(&tpl, &group, TXN_CALL)?;
        }
        t.commit_transaction(TXN_CALL)?;
        Ok(())
    }

    /// Applies each record to its partition's server and enqueues what it releases.
    fn apply(
        &self,
        msgs: Vec<OwnedMessage>,
        out: &mut Out,
        owned: &mut HashMap<i32, Owned>,
        skip: &mut HashMap<ReplicaId, u64>,
        now: u64,
    ) -> Result<Applied, Error> {
        let mut a = Applied::default();
        let mut deltas = GroupDeltas::default();
        for m in msgs {
            let p = m.partition();
            let Some(o) = owned.get_mut(&p) else {
                continue; // revoked: the new owner reads it
            };
            if m.offset() < o.next {
                continue; // already reflected in the local state
            }
            o.next = m.offset() + 1;
            a.offsets.insert(p, o.next);
            self.io.metrics.batches.inc();
            let Some(batch) = self.checked_batch(&m, out) else {
                continue;
            };
            // A delta carries the HLC time of its oldest event: the key stage measures
            // convergence latency from it.
            let oldest_hlc = batch.events().iter().map(|e| e.hlc.wall_ms).min();
            let wire = m.payload().map_or(0, |b| b.len() as u64);
            let applied = o.server.apply_received(batch, wire, now);
            self.io.metrics.duplicates.inc_by(applied.duplicates as u64);
            let replica = applied.replica.clone();
            if let Some(s) = self.release(&applied, p, skip, out, now, &mut a)? {
                a.skews.insert(replica.clone(), s);
            }
            let emitted_at = oldest_hlc.unwrap_or(now);
            deltas.add(applied.deltas, &replica, applied.watermark, emitted_at);
            a.acks.insert(replica.clone(), applied.watermark);
            a.touched.insert((p, replica));
        }
        self.emit_deltas(deltas, out, &mut a)?;
        Ok(a)
    }

    /// The record's batch, or `None` when it was dead-lettered (undecodable, invalid, or keyed
    /// by another device than it names).
    fn checked_batch(&self, m: &OwnedMessage, out: &mut Out) -> Option<DeltaBatch> {
        let batch = match self.io.codec.decode_batch(m.payload().unwrap_or_default()) {
            Ok(b) => b,
            Err(e) => {
                self.dead(out, m, e.dead_letter_reason(), e.to_string());
                return None;
            }
        };
        if let Some(k) = m.key() {
            if k != batch.replica().device.as_str().as_bytes() {
                let why = format!(
                    "key {:?} but the batch names {}",
                    String::from_utf8_lossy(k),
                    batch.replica().device
                );
                self.dead(out, m, DeadLetterReason::DeviceMismatch, why);
                return None;
            }
        }
        Some(batch)
    }

    /// Enqueues the released events on partition `p` of the events topic, except those the
    /// topic already has (`skip`: the read-back after an assignment); the skew of the last one.
    fn release(
        &self,
        applied: &edgesync_protocol::Applied,
        p: i32,
        skip: &mut HashMap<ReplicaId, u64>,
        out: &mut Out,
        now: u64,
        a: &mut Applied,
    ) -> Result<Option<i64>, Error> {
        let replica = &applied.replica;
        let done = skip.get(replica).copied().unwrap_or(0);
        let mut last_skew = None;
        let mut bytes = Vec::with_capacity(256);
        for e in &applied.released {
            if e.dot.seq <= done {
                self.io.metrics.suppressed.inc();
                continue;
            }
            let skew_ms = now as i64 - e.hlc.wall_ms as i64;
            self.io
                .metrics
                .observe_skew(skew_ms, self.cfg.skew_bound_ms);
            last_skew = Some(skew_ms);
            let framing = self.io.codec.output_framing(MessageKind::Event);
            self.io.codec.encode_event_into(e, framing, &mut bytes)?;
            let device = replica.device.as_str().as_bytes();
            out.send(&self.cfg.events_topic, Some(p), device, &bytes, true);
            a.events += 1;
        }
        if applied.watermark >= done {
            skip.remove(replica);
        }
        Ok(last_skew)
    }

    /// Enqueues the group's joined deltas on the state-deltas topic, keyed by their key.
    fn emit_deltas(
        &self,
        deltas: GroupDeltas,
        out: &mut Out,
        a: &mut Applied,
    ) -> Result<(), Error> {
        for (key, records) in deltas.0 {
            for mut rec in records {
                rec.key.clone_from(&key);
                let bytes = self
                    .io
                    .codec
                    .encode_state_record(&rec, Framing::SingleObject)?;
                let topic = &self.cfg.state_deltas_topic;
                out.send(topic, None, key.as_bytes(), &bytes, false);
                a.deltas += 1;
            }
        }
        Ok(())
    }

    /// Enqueues each replica's new watermark on the acks topic.
    fn send_acks(&self, acks: &BTreeMap<ReplicaId, u64>, out: &mut Out) -> Result<(), Error> {
        let now = now_ms();
        for (replica, watermark) in acks {
            let bytes = self.io.codec.encode_ack(&Ack {
                replica: replica.clone(),
                watermark: *watermark,
                acked_at_ms: now,
            })?;
            let device = replica.device.as_str().as_bytes();
            out.send(&self.cfg.acks_topic, None, device, &bytes, false);
        }
        Ok(())
    }

    fn dead(&self, out: &mut Out, m: &OwnedMessage, reason: DeadLetterReason, detail: String) {
        let device = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        self.io
            .dead(out, &self.cfg.dlq_topic, m, reason, detail, device);
    }
}
