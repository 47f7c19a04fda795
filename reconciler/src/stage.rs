//! What both stages share: their `Io` (codec, store, producer, a group consumer whose
//! rebalances are reported to the processing loop, a reader for replaying a partition range,
//! metrics), the resume points of a partition and dead-lettering. Producing with a wait for
//! Kafka is `out`.
//!
//! Progress lives in the state store, not in Kafka: each stage writes the next input offset
//! of a partition in the same RocksDB batch as the state it produced. Kafka's committed
//! offsets are written after that (for lag monitoring and as the group's start position).
//! On assignment the stage compares the two: if the group starts past what the local store
//! holds (another process worked on the partition), the gap is replayed from the topic with
//! the reader before anything else; records the store already reflects are skipped.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::statistics::Statistics;
use rdkafka::{Message, Offset, TopicPartitionList};

/// A change of the partitions a stage owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Newly assigned.
    Assigned(Vec<i32>),
    /// Taken away.
    Revoked(Vec<i32>),
}

/// Records rebalances for the processing loop (which handles them between groups, so nothing
/// is in flight when partitions move), and the stage's consumer lag from librdkafka's
/// statistics.
#[derive(Clone, Debug)]
pub struct Ctx {
    rebalances: Arc<Mutex<Rebalances>>,
    /// The input topic, and the gauge its lag goes to.
    topic: String,
    lag: Gauge,
}

/// The changes not yet taken, and the partitions held after them.
#[derive(Debug, Default)]
struct Rebalances {
    changes: Vec<Change>,
    held: BTreeSet<i32>,
}

impl Rebalances {
    fn push(&mut self, change: Change) {
        match &change {
            Change::Assigned(ps) => self.held.extend(ps),
            Change::Revoked(ps) => ps.iter().for_each(|p| {
                self.held.remove(p);
            }),
        }
        self.changes.push(change);
    }
}

impl Ctx {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rebalances> {
        self.rebalances.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the changes recorded since the last call.
    pub fn take(&self) -> Vec<Change> {
        std::mem::take(&mut self.lock().changes)
    }

    /// Records that every partition still held is gone (its consumer is).
    fn release_all(&self) {
        let mut r = self.lock();
        let held: Vec<i32> = r.held.iter().copied().collect();
        if !held.is_empty() {
            r.push(Change::Revoked(held));
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// Sum of the known lags (librdkafka reports -1 for partitions it does not consume).
fn total_lag(lags: impl Iterator<Item = i64>) -> i64 {
    lags.filter(|l| *l >= 0).sum()
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: Statistics) {
        if let Some(t) = statistics.topics.get(&self.topic) {
            self.lag
                .set(total_lag(t.partitions.values().map(|p| p.consumer_lag)));
        }
    }
}

impl ConsumerContext for Ctx {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, r: &Rebalance<'_>) {
        let change = match r {
            Rebalance::Assign(tpl) => Change::Assigned(partitions(tpl)),
            Rebalance::Revoke(tpl) => Change::Revoked(partitions(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        tracing::info!(?change, "rebalance");
        self.lock().push(change);
    }
}

/// The settings of a consumer in `group` (as static member `instance` when given), committing
/// only when told.
pub fn member_config(base: &ClientConfig, group: &str, instance: Option<&str>) -> ClientConfig {
    let mut c = base.clone();
    // Statistics carry the lag; every 5 s unless the operator set an interval.
    if c.get("statistics.interval.ms").is_none() {
        c.set("statistics.interval.ms", "5000");
    }
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // An idle fetch returns after at most this long (librdkafka waits 500 ms by default,
        // which would be the pipeline's latency floor); operators can raise it back.
        .set("fetch.wait.max.ms", "10");
    if let Some(id) = instance {
        c.set("group.instance.id", id);
    }
    c
}

/// How long a stage with nothing in hand waits for its first record before it looks at its
/// shutdown token again.
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// A stage's pipeline: at most one group in flight (its outputs travelling to Kafka) while
/// the next is applied. Groups finish in the order they were put in flight.
#[derive(Debug)]
pub struct InFlight<G>(Option<G>);

impl<G> Default for InFlight<G> {
    fn default() -> Self {
        Self(None)
    }
}

impl<G> InFlight<G> {
    /// How long to wait for the next records: not at all while a group is in flight (it is
    /// finished as soon as nothing else is there to apply), [`IDLE_POLL`] otherwise.
    pub fn poll_wait(&self) -> Duration {
        match self.0 {
            Some(_) => Duration::ZERO,
            None => IDLE_POLL,
        }
    }

    /// The group in flight.
    pub fn get(&self) -> Option<&G> {
        self.0.as_ref()
    }

    /// Finishes the group in flight, if any.
    pub fn drain(
        &mut self,
        finish: impl FnOnce(G) -> Result<(), crate::Error>,
    ) -> Result<(), crate::Error> {
        self.0.take().map_or(Ok(()), finish)
    }

    /// Puts `next` in flight after finishing the group before it.
    pub fn push(
        &mut self,
        next: G,
        finish: impl FnOnce(G) -> Result<(), crate::Error>,
    ) -> Result<(), crate::Error> {
        self.0.replace(next).map_or(Ok(()), finish)
    }
}

/// A stage's membership of its group: the consumer, its rebalance reports, and what it takes
/// to join again.
#[allow(missing_debug_implementations)]
pub struct Member {
    /// The group consumer, subscribed to the stage's input topic.
    pub consumer: BaseConsumer<Ctx>,
    /// Its rebalance reports.
    pub ctx: Ctx,
    config: ClientConfig,
}

impl Member {
    /// Joins with `config` (see [`member_config`]), subscribed to `topic`; its lag on `topic`
    /// goes to `lag`.
    pub fn join(config: ClientConfig, topic: &str, lag: Gauge) -> Result<Self, KafkaError> {
        let ctx = Ctx {
            rebalances: Arc::default(),
            topic: topic.to_owned(),
            lag,
        };
        let consumer = subscribed(&config, &ctx)?;
        Ok(Member {
            consumer,
            ctx,
            config,
        })
    }

    /// Up to `max` records, waiting up to `wait` for the first (see `poll_group`). After a fatal consumer error (Apache Kafka
    /// fences a static member whose rejoin it failed to persist in a failover) the old consumer
    /// is closed, every partition it held is reported revoked, and a new consumer joins as the
    /// same member; the assignments that follow resume from the state store as after any
    /// rebalance. Without this the stage would stop and wait for its unit to restart it.
    pub fn poll(
        &mut self,
        max: usize,
        wait: Duration,
        what: &str,
    ) -> Result<Vec<OwnedMessage>, KafkaError> {
        match poll_group(&self.consumer, max, wait, what) {
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(error = %e, consumer = what, "consumer unusable; joining again as the same member");
                std::thread::sleep(Duration::from_secs(1));
                let fresh = self.config.create_with_context(self.ctx.clone())?;
                drop(std::mem::replace(&mut self.consumer, fresh));
                self.ctx.release_all();
                self.consumer.subscribe(&[self.ctx.topic.as_str()])?;
                Ok(Vec::new())
            }
            r => r,
        }
    }
}

fn subscribed(config: &ClientConfig, ctx: &Ctx) -> Result<BaseConsumer<Ctx>, KafkaError> {
    let consumer: BaseConsumer<Ctx> = config.create_with_context(ctx.clone())?;
    consumer.subscribe(&[ctx.topic.as_str()])?;
    Ok(consumer)
}

/// A consumer for reading partition ranges by assignment (no group membership).
pub fn reader(base: &ClientConfig) -> Result<BaseConsumer, KafkaError> {
    let mut c = base.clone();
    c.set("group.id", "edgesync-reconciler-reader")
        // Polled only while replaying: statistics would pile up in its queue.
        .set("statistics.interval.ms", "0")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    c.create()
}

/// How long a stage keeps asking Kafka through a failover before it gives up (and the process
/// stops): a cluster elects a new leader within seconds of losing one, a hung broker is fenced
/// after its session timeout, and a whole cluster restarting takes tens of seconds. Until then a
/// partition leader that moved or a node that is down is an answer to wait out, not a failure.
pub const FAILOVER_PATIENCE: Duration = Duration::from_secs(120);

/// `f`, again after a growing pause while it fails, for at most [`FAILOVER_PATIENCE`]. Any
/// error counts as transient here: librdkafka's metadata queries report a stale leader
/// (`NotLeaderForPartition`) or an unreachable one as errors of the call, and a persistent
/// error still fails the stage once the patience is spent.
fn through_failover<T>(
    what: &str,
    mut f: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = Instant::now() + FAILOVER_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, what, "Kafka did not answer; asking again");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The group's committed offset of `topic`/`p`, if any.
pub fn committed(c: &BaseConsumer<Ctx>, topic: &str, p: i32) -> Result<Option<i64>, KafkaError> {
    let got = through_failover("committed offsets", || {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, p);
        c.committed_offsets(tpl, Duration::from_secs(10))
    })?;
    Ok(got.find_partition(topic, p).and_then(|e| match e.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }))
}

/// Low and high watermarks of `topic`/`p`.
pub fn watermarks(c: &BaseConsumer, topic: &str, p: i32) -> Result<(i64, i64), KafkaError> {
    through_failover("watermarks", || {
        let got = c.fetch_watermarks(topic, p, Duration::from_secs(10));
        if got.is_err() {
            // librdkafka finds the leader in its metadata cache and takes a partition without
            // one as final, without asking again: after a failover an idle reader's cache can
            // stay stale for its whole refresh interval (5 min; seen as `UnknownPartition` on
            // every retry). Asking for the topic's metadata refreshes the cache.
            let _ = c.fetch_metadata(Some(topic), Duration::from_secs(10));
        }
        got
    })
}

/// Reads `topic`/`p` from `from` up to `to` (exclusive), handing records to `f` in groups of
/// at most `group`. The reader's position counts too: a transaction's commit or abort marker
/// takes an offset but is never delivered, so the last record can lie below `to`.
pub fn read_range(
    r: &BaseConsumer,
    topic: &str,
    p: i32,
    from: i64,
    to: i64,
    group: usize,
    mut f: impl FnMut(Vec<OwnedMessage>) -> Result<(), crate::Error>,
) -> Result<(), crate::Error> {
    if from >= to {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::Offset(from))?;
    r.assign(&tpl)?;
    let mut next = from;
    let mut buf = Vec::new();
    let mut idle = Instant::now();
    while next < to {
        match r.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = Instant::now();
                next = m.offset() + 1;
                buf.push(m.detach());
                if buf.len() >= group {
                    f(std::mem::take(&mut buf))?;
                }
            }
            // A consumer's errors are reports (a broker down, a leader moved); librdkafka
            // recovers by itself, and a read that makes no progress ends below.
            Some(Err(e)) => tracing::warn!(error = %e, topic, partition = p, "replay read"),
            None if position(r, topic, p)?.is_some_and(|pos| pos >= to) => break,
            None if idle.elapsed() > FAILOVER_PATIENCE => {
                return Err(crate::Error::Replay(format!(
                    "{topic}/{p}: stuck at {next} of {to}"
                )))
            }
            None => {}
        }
    }
    if !buf.is_empty() {
        f(buf)?;
    }
    r.unassign()?;
    Ok(())
}

/// The reader's next offset in `topic`/`p`, once it has one.
fn position(r: &BaseConsumer, topic: &str, p: i32) -> Result<Option<i64>, KafkaError> {
    Ok(r.position()?
        .find_partition(topic, p)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }))
}

/// Commits `offsets` (next to read, per partition of `topic`) to the group, without waiting.
pub fn commit(c: &BaseConsumer<Ctx>, topic: &str, offsets: &std::collections::BTreeMap<i32, i64>) {
    if offsets.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
    }
    if let Err(e) = c.commit(&tpl, rdkafka::consumer::CommitMode::Async) {
        tracing::debug!(error = %e, "commit offsets");
    }
}

/// Up to `max` records: waits up to `wait` for the first, then takes what is already there.
/// A fatal consumer error (the consumer is unusable) is returned for [`Member::poll`] to join
/// again; others are logged.
fn poll_group(
    c: &BaseConsumer<Ctx>,
    max: usize,
    wait: Duration,
    what: &str,
) -> Result<Vec<OwnedMessage>, KafkaError> {
    let mut msgs = Vec::new();
    while msgs.len() < max {
        let timeout = if msgs.is_empty() {
            wait
        } else {
            Duration::ZERO
        };
        match c.poll(timeout) {
            Some(Ok(m)) => msgs.push(m.detach()),
            Some(Err(e @ KafkaError::MessageConsumptionFatal(_))) => return Err(e),
            Some(Err(e)) => {
                tracing::warn!(error = %e, consumer = what, "poll");
                break;
            }
            None => break,
        }
    }
    Ok(msgs)
}

/// What both stages work with: the codec, the state store, the Kafka clients and the metrics.
#[allow(missing_debug_implementations)]
pub struct Io {
    /// Codec.
    pub codec: Arc<edgesync_schemas::Codec>,
    /// State store.
    pub store: Arc<crate::store::Store>,
    /// Producer.
    pub producer: crate::out::Producer,
    /// The stage's membership of its group.
    pub member: Member,
    /// Reader for replays (and the events tail).
    pub reader: BaseConsumer,
    /// Metrics.
    pub metrics: Arc<crate::metrics::ReconcilerMetrics>,
}

impl Io {
    /// Where partition `p` of `topic` resumes: the next offset the local store reflects and the
    /// group's committed offset (both at least the low watermark).
    pub fn resume_points(
        &self,
        stage: crate::store::Stage,
        topic: &str,
        p: i32,
    ) -> Result<(i64, i64), crate::Error> {
        let (low, _) = watermarks(&self.reader, topic, p)?;
        let local = self.store.offset(stage, p)?.unwrap_or(low).max(low);
        let committed = committed(&self.member.consumer, topic, p)?.unwrap_or(low);
        Ok((local, committed))
    }

    /// Logs `m` as dead-lettered, enqueues its dead letter (reason, detail, source
    /// `kafka:<topic>/<partition>@<offset>`, original bytes) on `dlq_topic` and counts it.
    pub fn dead(
        &self,
        out: &mut crate::out::Out,
        dlq_topic: &str,
        m: &OwnedMessage,
        reason: edgesync_schemas::DeadLetterReason,
        detail: String,
        device: Option<String>,
    ) {
        tracing::warn!(partition = m.partition(), offset = m.offset(), reason = reason.symbol(), %detail, "dead-lettered");
        let d = edgesync_schemas::DeadLetter {
            reason,
            detail,
            source: format!("kafka:{}/{}@{}", m.topic(), m.partition(), m.offset()),
            device,
            received_at_ms: edgesync_servicekit::now_ms(),
            payload: m.payload().unwrap_or_default().to_vec(),
        };
        match self.codec.encode_dead_letter(
            &d,
            self.codec
                .output_framing(edgesync_schemas::MessageKind::DeadLetter),
        ) {
            Ok(bytes) => {
                out.send(dlq_topic, None, m.key().unwrap_or_default(), &bytes, false);
                self.metrics.dead(reason);
            }
            // Cannot happen for a well-formed record; the record is skipped, as before.
            Err(e) => tracing::error!(error = %e, "encode dead letter"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::total_lag;

    #[test]
    fn lag_sums_the_partitions_librdkafka_consumes() {
        // -1: a partition librdkafka knows of but does not consume (not assigned here).
        assert_eq!(total_lag([5, -1, 0, 7].into_iter()), 12);
        assert_eq!(total_lag(std::iter::empty()), 0);
    }
}
