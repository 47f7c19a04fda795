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

/// Records to produce with one producer, and a wait for all of them.
pub struct Out {
    producer: Producer,
    /// Records whose partition and offset the caller wants back (events).
    tracked: Arc<Ticket>,
    rest: Arc<Ticket>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out").finish_non_exhaustive()
    }
}

impl Out {
    /// Nothing yet, to be produced with `producer`.
    pub fn new(producer: &Producer) -> Self {
        Self {
            producer: producer.clone(),
            tracked: Ticket::new(true, OnFailure::Keep),
            rest: Ticket::new(false, OnFailure::Keep),
        }
    }

    /// Records nobody waits for: a failed delivery is logged and counted in `failed`. For
    /// records whose loss costs only a repeat, such as acknowledgements (a lost one makes the
    /// agent send again and be acknowledged again), so that a stage does not wait a broker
    /// round trip for them.
    pub fn detached(producer: &Producer, what: &'static str, failed: Counter) -> Self {
        let ticket = Ticket::new(false, OnFailure::Count(what, failed));
        Self {
            producer: producer.clone(),
            tracked: Arc::clone(&ticket),
            rest: ticket,
        }
    }

    /// Enqueues a record (waiting while librdkafka's queue is full); `track` marks records
    /// whose partition and offset the caller wants back from [`Out::wait`].
    pub fn send(
        &mut self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        track: bool,
    ) {
        let ticket = if track { &self.tracked } else { &self.rest };
        ticket.lock().pending += 1;
        let mut rec = BaseRecord::with_opaque_to(topic, Arc::clone(ticket))
            .key(key)
            .payload(payload);
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        while let Err((_, back)) = self.producer.send(rec) {
            rec = back;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for every delivery; returns the highest offset per partition of the tracked
    /// records, or the first failure.
    pub fn wait(self) -> Result<BTreeMap<i32, i64>, KafkaError> {
        self.rest.wait()?;
        self.tracked.wait()
    }
}
