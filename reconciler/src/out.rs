//! Producing a group's records and learning when Kafka has all of them.
//!
//! Every record a stage produces carries a [`Ticket`] (the delivery opaque, an `Arc`): the
//! producer's polling thread reports each delivery to it, and the stage waits on the ticket
//! until every record of its group is confirmed. One shared counter per group replaces a
//! future (a channel, an allocation and a wake-up) per record, which was a measurable part of
//! the device stage's cost per event at one record per event.
//!
//! Invariant: a ticket's `pending` counts the records handed to librdkafka and not yet
//! reported; `wait` returns only when it is 0, with the first failure if any record failed.
//! librdkafka reports every enqueued record exactly once (delivered or failed), including on
//! producer close, so a wait never outlives the producer.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

/// The producer both stages share, and each transactional producer of the device stage.
pub type Producer = ThreadedProducer<Deliveries>;

/// A producer's context: each delivery report goes to the ticket its record carries.
#[derive(Clone, Copy, Debug, Default)]
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Arc<Ticket>) {
        ticket.report(result);
    }
}

/// What happens to a failed delivery.
#[derive(Debug)]
enum OnFailure {
    /// Kept for [`Ticket::wait`], which returns the first.
    Keep,
    /// Counted and logged: for records whose loss costs only a repeat (see [`Out::detached`]).
    Count(&'static str, Counter),
}

#[derive(Debug, Default)]
struct Tally {
    pending: usize,
    failed: Option<KafkaError>,
    /// Highest delivered offset per partition (tracked tickets only).
    last: BTreeMap<i32, i64>,
}

/// The deliveries of one group's records (or one kind of them).
#[derive(Debug)]
pub struct Ticket {
    tally: Mutex<Tally>,
    done: Condvar,
    track: bool,
    on_failure: OnFailure,
}

impl Ticket {
    fn new(track: bool, on_failure: OnFailure) -> Arc<Self> {
        Arc::new(Self {
            tally: Mutex::default(),
            done: Condvar::new(),
            track,
            on_failure,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, result: &DeliveryResult<'_>) {
        let mut t = self.lock();
        match result {
            Ok(m) if self.track => {
                let e = t.last.entry(m.partition()).or_insert(m.offset());
                *e = (*e).max(m.offset());
            }
            Ok(_) => {}
            Err((e, _)) => match &self.on_failure {
                OnFailure::Keep => {
                    t.failed.get_or_insert_with(|| e.clone());
                }
                OnFailure::Count(what, counter) => {
                    counter.inc();
                    tracing::warn!(what, error = %e, "delivery failed; the record will be produced again when its source is");
                }
            },
        }
        t.pending -= 1;
        if t.pending == 0 {
            self.done.notify_all();
        }
    }

    /// Waits until every record carrying this ticket is reported; the highest offset per
    /// partition of a tracked ticket.
    fn wait(&self) -> Result<BTreeMap<i32, i64>, KafkaError> {
        let mut t = self.lock();
        while t.pending > 0 {
            t = self.done.wait(t).unwrap_or_else(|p| p.into_inner());
        }
        match t.failed.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut t.last)),
        }
    }
}

/// Records to produce with one producer, held until [`Out::flush`] (or the wait), and a wait
/// for all of them.
///
/// Held, because librdkafka's idempotent producer keeps one produce request in flight per
/// partition (confluentinc/librdkafka#4989), so a request carries what was enqueued for its
/// partition while the previous one was answered: records trickling in as a group is applied
/// went out in many small requests, and the broker's cost is per request as much as per
/// record. Enqueued together they leave in full batches.
pub struct Out {
    producer: Producer,
    /// Records whose partition and offset the caller wants back (events).
    tracked: Arc<Ticket>,
    rest: Arc<Ticket>,
    held: Held,
}

/// Records not yet handed to librdkafka: their keys and payloads back to back in one buffer.
#[derive(Default)]
struct Held {
    bytes: Vec<u8>,
    records: Vec<HeldRecord>,
    topics: Vec<String>,
}

struct HeldRecord {
    topic: usize,
    partition: Option<i32>,
    key: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
    track: bool,
}

impl Held {
    fn topic(&mut self, name: &str) -> usize {
        match self.topics.iter().position(|t| t == name) {
            Some(i) => i,
            None => {
                self.topics.push(name.to_owned());
                self.topics.len() - 1
            }
        }
    }

    fn push(&mut self, bytes: &[u8]) -> std::ops::Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(bytes);
        start..self.bytes.len()
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out")
            .field("held", &self.held.records.len())
            .finish_non_exhaustive()
    }
}

impl Out {
    /// Nothing yet, to be produced with `producer`.
    pub fn new(producer: &Producer) -> Self {
        Self {
            producer: producer.clone(),
            tracked: Ticket::new(true, OnFailure::Keep),
            rest: Ticket::new(false, OnFailure::Keep),
            held: Held::default(),
        }
    }

    /// Records nobody waits for: a failed delivery is logged and counted in `failed`. For
    /// records whose loss costs only a repeat, such as acknowledgements (a lost one makes the
    /// agent send again and be acknowledged again), so that a stage does not wait a broker
    /// round trip for them. They are enqueued when this is dropped, if not flushed before.
    pub fn detached(producer: &Producer, what: &'static str, failed: Counter) -> Self {
        let ticket = Ticket::new(false, OnFailure::Count(what, failed));
        Self {
            producer: producer.clone(),
            tracked: Arc::clone(&ticket),
            rest: ticket,
            held: Held::default(),
        }
    }

    /// Holds a record for [`Out::flush`]; `track` marks records whose partition and offset
    /// the caller wants back from [`Out::wait`].
    pub fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        track: bool,
    ) {
        let h = &mut self.held;
        let record = HeldRecord {
            topic: h.topic(topic),
            partition,
            key: h.push(key),
            payload: h.push(payload),
            track,
        };
        h.records.push(record);
    }

    /// Enqueues every held record with librdkafka, in the order they were sent (waiting while
    /// its queue is full).
    pub fn flush(&mut self) {
        let held = std::mem::take(&mut self.held);
        for r in &held.records {
            let ticket = if r.track { &self.tracked } else { &self.rest };
            ticket.lock().pending += 1;
            let mut rec = BaseRecord::with_opaque_to(&held.topics[r.topic], Arc::clone(ticket))
                .key(&held.bytes[r.key.clone()])
                .payload(&held.bytes[r.payload.clone()]);
            if let Some(p) = r.partition {
                rec = rec.partition(p);
            }
            while let Err((_, back)) = self.producer.send(rec) {
                rec = back;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    /// Flushes, then waits for every delivery; returns the highest offset per partition of the
    /// tracked records, or the first failure.
    pub fn wait(mut self) -> Result<BTreeMap<i32, i64>, KafkaError> {
        self.flush();
        self.rest.wait()?;
        self.tracked.wait()
    }
}

impl Drop for Out {
    /// Held records are enqueued, never dropped: waiting is optional (detached records), the
    /// records are not.
    fn drop(&mut self) {
        self.flush();
    }
}
