//! Key stage: state deltas (partitioned by CRDT key) joined into the RocksDB state store; the
//! converged value of every key touched, with its version vector and digest, goes to the
//! compacted state topic. Joins are idempotent, commutative and associative, so replays,
//! duplicates and any arrival order converge to the same value; emitting the same converged
//! value twice is harmless (compaction keeps the latest).
//!
//! Per group: join the deltas into the keys' states, produce the converged values, and once
//! Kafka has them write the states and the next input offsets in one synced batch, then
//! commit the offsets. Pipelined like the device stage: the next group is joined while one
//! group's values travel to Kafka. That group's states are not in the store yet, so the next
//! group reads a key from them first ([`Staged::states`]); groups finish in order, at most one
//! is in flight, and none when partitions move.

use edgesync_servicekit::crash::crash_point;
use std::collections::{BTreeMap, HashMap};

use edgesync_schemas::{DeadLetterReason, Framing, MessageKind, StateRecord};
use edgesync_servicekit::now_ms;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::out::Out;
use crate::stage::{self, Change, Io};
use crate::store::{Batch, Stage};
use crate::Error;

/// Topic names and limits of the stage.
#[derive(Clone, Debug)]
pub struct KeyConfig {
    /// Input.
    pub state_deltas_topic: String,
    /// Output (compacted).
    pub state_topic: String,
    /// Bad records.
    pub dlq_topic: String,
    /// Records per group.
    pub max_group: usize,
}

/// A group joined, its converged values enqueued: what to write once Kafka has them.
struct Staged {
    out: Out,
    /// The joined states and the next input offsets.
    store: Batch,
    offsets: BTreeMap<i32, i64>,
    /// The joined states, for the next group (the store has them only once this one finishes).
    states: HashMap<String, StateRecord>,
}

/// What the stage works with.
#[allow(missing_debug_implementations)]
pub struct KeyStage {
    /// Settings.
    pub cfg: KeyConfig,
    /// Codec, store, Kafka clients (the group consumer reads the state-deltas topic), metrics.
    pub io: Io,
}

impl KeyStage {
    /// Runs until `shutdown` is cancelled (finishing the groups in hand).
    pub fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut in_flight = stage::InFlight::default();
        while !shutdown.is_cancelled() {
            let wait = in_flight.poll_wait();
            let msgs = self
                .io
                .member
                .poll(self.cfg.max_group, wait, "state-deltas")?;
            let changes = self.io.member.ctx.take();
            if !changes.is_empty() || msgs.is_empty() {
                in_flight.drain(|g| self.finish(g))?;
            }
            for change in changes {
                match change {
                    Change::Revoked(ps) => ps.iter().for_each(|p| {
                        next.remove(p);
                    }),
                    Change::Assigned(ps) => {
                        for p in ps {
                            self.assign(p, &mut next)?;
                        }
                    }
                }
            }
            if !msgs.is_empty() {
                let staged = self.stage(msgs, &mut next, in_flight.get())?;
                in_flight.push(staged, |g| self.finish(g))?;
            }
        }
        in_flight.drain(|g| self.finish(g))
    }

    fn assign(&self, p: i32, next: &mut HashMap<i32, i64>) -> Result<(), Error> {
        let c = &self.cfg;
        let (local, start) = self
            .io
            .resume_points(Stage::Key, &c.state_deltas_topic, p)?;
        next.insert(p, local);
        tracing::info!(
            partition = p,
            local,
            committed = start,
            "key partition assigned"
        );
        if start > local {
            stage::read_range(
                &self.io.reader,
                &c.state_deltas_topic,
                p,
                local,
                start,
                c.max_group,
                |msgs| self.stage(msgs, next, None).and_then(|g| self.finish(g)),
            )?;
        }
        Ok(())
    }

    /// Joins a group's deltas (reading each key from `in_flight` before the store) and
    /// enqueues the converged values.
    fn stage(
        &self,
        msgs: Vec<OwnedMessage>,
        next: &mut HashMap<i32, i64>,
        in_flight: Option<&Staged>,
    ) -> Result<Staged, Error> {
        let c = &self.cfg;
        let now = now_ms();
        self.io.metrics.group("key", msgs.len());
        let mut out = Out::new(&self.io.producer);
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut dirty: BTreeMap<String, StateRecord> = BTreeMap::new();
        for m in msgs {
            let p = m.partition();
            let Some(n) = next.get_mut(&p) else { continue };
            if m.offset() < *n {
                continue;
            }
            *n = m.offset() + 1;
            offsets.insert(p, *n);
            let delta = match self
                .io
                .codec
                .decode_state_record(m.payload().unwrap_or_default())
            {
                Ok(d) => d,
                Err(e) => {
                    self.dead(&mut out, &m, e.dead_letter_reason(), e.to_string());
                    continue;
                }
            };
            let current = match dirty.remove(&delta.key) {
                Some(s) => Some(s),
                None => match in_flight.and_then(|g| g.states.get(&delta.key)) {
                    Some(s) => Some(s.clone()),
                    None => self.io.store.state(&self.io.codec, &delta.key)?,
                },
            };
            let mut merged = match current {
                Some(s) => s,
                None => StateRecord {
                    key: delta.key.clone(),
                    state: delta.state.kind().bottom(),
                    version_vector: Default::default(),
                    emitted_at_ms: now,
                },
            };
            if let Err(e) = merged.state.join(&delta.state) {
                let why = format!("key {}: {e}", delta.key);
                dirty.insert(merged.key.clone(), merged);
                self.dead(&mut out, &m, DeadLetterReason::KindMismatch, why);
                continue;
            }
            merged.version_vector.merge(&delta.version_vector);
            self.io
                .metrics
                .convergence
                .observe(now.saturating_sub(delta.emitted_at_ms) as f64 / 1000.0);
            self.io.metrics.merges.inc();
            dirty.insert(merged.key.clone(), merged);
        }
        let mut store = Batch::default();
        let mut states = HashMap::with_capacity(dirty.len());
        for (key, mut s) in dirty {
            s.emitted_at_ms = now;
            // The store keeps the self-describing single-object form (readable whatever the
            // registry configuration later is); the topic gets the output framing.
            let bytes = self
                .io
                .codec
                .encode_state_record(&s, Framing::SingleObject)?;
            let output = self.io.codec.as_output(MessageKind::StateRecord, &bytes);
            out.send(&c.state_topic, None, key.as_bytes(), &output, false);
            store.state(&key, &bytes);
            self.io.metrics.states.inc();
            states.insert(key, s);
        }
        for (p, n) in &offsets {
            store.offset(Stage::Key, *p, *n);
        }
        // Out on their way while the next group is joined.
        out.flush();
        Ok(Staged {
            out,
            store,
            offsets,
            states,
        })
    }

    /// Once Kafka has a group's values: the states and offsets in one synced write, then the
    /// offsets to the group.
    fn finish(&self, g: Staged) -> Result<(), Error> {
        g.out.wait()?;
        crash_point("key.after_produce");
        self.io.store.commit(g.store)?;
        crash_point("key.after_store_write");
        let topic = &self.cfg.state_deltas_topic;
        stage::commit(&self.io.member.consumer, topic, &g.offsets);
        crash_point("key.after_commit");
        Ok(())
    }

    fn dead(&self, out: &mut Out, m: &OwnedMessage, reason: DeadLetterReason, detail: String) {
        self.io
            .dead(out, &self.cfg.dlq_topic, m, reason, detail, None);
    }
}
