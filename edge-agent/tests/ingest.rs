//! Ingest on a real RocksDB spool: validation, CRDT operations and their persisted states,
//! group commit across concurrent producers, and refusals that leave no trace.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use edgesync_agent::ingest::{Accepted, Ingest, IngestConfig, IngestError, IngestEvent, Op};
use edgesync_agent::metrics::AgentMetrics;
use edgesync_agent::outbox::build_batch;
use edgesync_agent::spool::{Clock, QuotaPolicy, Spool, SpoolConfig};
use edgesync_core::{Crdt, DeviceId, ReplicaId, Value};
use edgesync_protocol::{BatchRequest, Server, ServerConfig};
use edgesync_schemas::{Codec, Limits};

struct Agent {
    spool: Arc<Spool>,
    ingest: Option<Ingest>,
    thread: Option<JoinHandle<()>>,
    codec: Arc<Codec>,
}

impl Agent {
    fn open(dir: &Path, cfg: SpoolConfig, clock: Clock) -> Self {
        let spool = Arc::new(Spool::open(dir, cfg).unwrap());
        let codec = Arc::new(Codec::new(Limits::default()).unwrap());
        let mut reg = prometheus_client::registry::Registry::default();
        let (ingest, thread) = Ingest::start(
            Arc::clone(&spool),
            Arc::clone(&codec),
            DeviceId::new("pump-1").unwrap(),
            IngestConfig::default(),
            clock,
            Arc::new(AgentMetrics::register(&mut reg)),
            Arc::new(tokio::sync::Notify::new()),
            Arc::default(),
        )
        .unwrap();
        Self {
            spool,
            ingest: Some(ingest),
            thread: Some(thread),
            codec,
        }
    }

    fn append(&self, events: Vec<IngestEvent>) -> Result<Accepted, IngestError> {
        self.ingest.as_ref().unwrap().append_blocking("api", events)
    }

    /// Every event and joined state the spool holds, as the server sees them.
    fn sync(&self) -> (Vec<edgesync_core::Event>, BTreeMap<String, Crdt>) {
        let replica = ReplicaId::new(
            DeviceId::new("pump-1").unwrap(),
            self.spool.meta().incarnation,
        );
        let mut server = Server::new(ServerConfig::default());
        let (mut events, mut state) = (Vec::new(), BTreeMap::<String, Crdt>::new());
        let last = self.spool.meta().next_seq - 1;
        let mut seq = self.spool.meta().acked + 1;
        while seq <= last {
            let req = BatchRequest {
                first_seq: seq,
                max_events: 500,
                max_bytes: 1 << 20,
            };
            let built = build_batch(&self.spool, &self.codec, &replica, &req).unwrap();
            seq = built.batch.last_seq() + 1;
            let a = server.apply(built.batch, 0);
            events.extend(a.released);
            for (k, d) in a.deltas {
                match state.get_mut(&k) {
                    Some(c) => c.join(&d).unwrap(),
                    None => {
                        state.insert(k, d);
                    }
                }
            }
        }
        (events, state)
    }

    fn close(mut self) -> Arc<Spool> {
        self.stop();
        Arc::clone(&self.spool)
    }

    /// Ends the ingest thread and waits for it: a thread still closing its RocksDB handle when
    /// the test process exits aborts it ("pthread lock: Invalid argument").
    fn stop(&mut self) {
        drop(self.ingest.take());
        if let Some(t) = self.thread.take() {
            let joined = t.join();
            if !std::thread::panicking() {
                joined.unwrap();
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fixed_clock(ms: u64) -> (Clock, Arc<AtomicU64>) {
    let t = Arc::new(AtomicU64::new(ms));
    let c = Arc::clone(&t);
    (Arc::new(move || c.load(Ordering::SeqCst)), t)
}

fn event(ops: Vec<Op>) -> IngestEvent {
    IngestEvent {
        stream: "pump.telemetry".into(),
        schema_version: 1,
        fields: BTreeMap::from([("pressure_kpa".into(), Value::Double(101.5))]),
        tags: BTreeMap::new(),
        ops,
    }
}

fn inc(key: &str, by: u64) -> Op {
    Op::Inc {
        key: key.into(),
        by,
    }
}

fn counter(state: &BTreeMap<String, Crdt>, key: &str) -> u128 {
    match &state[key] {
        Crdt::GCounter(c) => c.value(),
        other => panic!("{key} is {other:?}"),
    }
}

#[test]
fn operations_survive_restart_and_the_clock_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, time) = fixed_clock(10_000_000);
    let a = Agent::open(dir.path(), SpoolConfig::default(), clock.clone());
    let r = a
        .append(vec![
            event(vec![
                inc("starts", 2),
                Op::Mv {
                    key: "mode".into(),
                    value: Value::String("auto".into()),
                },
            ]),
            event(vec![
                inc("starts", 3),
                Op::SetAdd {
                    key: "alarms".into(),
                    value: Value::String("overheat".into()),
                },
            ]),
        ])
        .unwrap();
    assert_eq!(
        r,
        Accepted::Stored(edgesync_core::SeqRange { start: 1, end: 2 })
    );
    let spool = a.close();
    drop(spool);

    // The wall clock steps back an hour across the restart.
    time.store(10_000_000 - 3_600_000, Ordering::SeqCst);
    let a = Agent::open(dir.path(), SpoolConfig::default(), clock);
    a.append(vec![event(vec![
        inc("starts", 5),
        Op::SetRemove {
            key: "alarms".into(),
            value: Value::String("overheat".into()),
        },
        Op::Mv {
            key: "mode".into(),
            value: Value::String("manual".into()),
        },
    ])])
    .unwrap();
    let (events, state) = a.sync();
    assert_eq!(events.len(), 3);
    assert!(
        events.windows(2).all(|w| w[0].hlc < w[1].hlc),
        "HLC went back across restart"
    );
    assert_eq!(counter(&state, "starts"), 10);
    match &state["alarms"] {
        Crdt::OrSet(s) => assert_eq!(
            s.elements().count(),
            0,
            "remove after restart lost the add's dot"
        ),
        other => panic!("{other:?}"),
    }
    match &state["mode"] {
        Crdt::MvRegister(r) => assert_eq!(r.values(), vec![&Value::String("manual".into())]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_bad_event_refuses_the_whole_request_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (clock, _) = fixed_clock(1_000);
    let a = Agent::open(dir.path(), SpoolConfig::default(), clock);
    a.append(vec![event(vec![inc("starts", 1)])]).unwrap();
    let mut bad_stream = event(vec![]);
    bad_stream.stream = "Pump Telemetry".into();
    let cases: Vec<(Vec<IngestEvent>, usize, &str)> = vec![
        (vec![event(vec![]), bad_stream], 1, "stream"),
        (
            vec![
                event(vec![inc("x", 1)]),
                event(vec![Op::Add {
                    key: "starts".into(),
                    by: 1,
                }]),
            ],
            1,
            "is a G_COUNTER",
        ),
        (
            vec![event(vec![Op::Rollup {
                key: "p".into(),
                value: f64::NAN,
                bucket_ms: 1000,
            }])],
            0,
            "finite",
        ),
        (vec![event(vec![inc("", 1)])], 0, "op 0"),
    ];
    for (events, index, why) in cases {
        match a.append(events) {
            Err(IngestError::Invalid { index: i, reason }) => {
                assert_eq!(i, index, "{reason}");
                assert!(reason.contains(why), "{reason} should mention {why}");
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }
    let too_many = (0..10_001).map(|_| event(vec![])).collect();
    assert!(matches!(
        a.append(too_many),
        Err(IngestError::TooMany { .. })
    ));
    assert_eq!(
        a.spool.meta().next_seq,
        2,
        "a refused request consumed seqs"
    );
    let (events, state) = a.sync();
    assert_eq!(events.len(), 1);
    assert_eq!(counter(&state, "starts"), 1);
    assert!(
        !state.contains_key("x"),
        "state of a refused request was kept"
    );
}

#[test]
fn refused_and_dropped_requests_leave_the_state_untouched() {
    for policy in [QuotaPolicy::Block, QuotaPolicy::DropNewest] {
        let dir = tempfile::tempdir().unwrap();
        let (clock, _) = fixed_clock(1_000);
        let cfg = SpoolConfig {
            max_bytes: 4_000,
            policy,
            ..SpoolConfig::default()
        };
        let a = Agent::open(dir.path(), cfg, clock);
        let (mut stored, mut refused) = (0u128, 0);
        for _ in 0..100 {
            match a.append(vec![event(vec![inc("n", 1)])]) {
                Ok(Accepted::Stored(_)) => stored += 1,
                Ok(Accepted::Dropped { events: 1 }) if policy == QuotaPolicy::DropNewest => {
                    refused += 1
                }
                Err(IngestError::Full { .. }) if policy == QuotaPolicy::Block => refused += 1,
                other => panic!("{policy:?}: {other:?}"),
            }
        }
        assert!(refused > 0 && stored > 0, "{policy:?}: quota never reached");
        let (events, state) = a.sync();
        assert_eq!(events.len() as u128, stored);
        // The counter counts exactly the stored events: refused increments were not kept.
        assert_eq!(counter(&state, "n"), stored, "{policy:?}");
        // Nor was the type of a key only a refused request used.
        let first = a.append(vec![event(vec![inc("fresh", 1)])]);
        assert!(!matches!(first, Ok(Accepted::Stored(_))), "{first:?}");
        let add = Op::Add {
            key: "fresh".into(),
            by: 1,
        };
        let other_type = a.append(vec![event(vec![add])]);
        assert!(
            !matches!(other_type, Err(IngestError::Invalid { .. })),
            "{policy:?}: {other_type:?}"
        );
    }
}

#[test]
fn concurrent_producers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let writes = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&writes);
    let cfg = SpoolConfig {
        // A slow disk: every write takes 20 ms, so requests pile up behind it.
        observer: Some(Arc::new(move |_| {
            w.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        })),
        ..SpoolConfig::default()
    };
    let (clock, _) = fixed_clock(1_000);
    let a = Arc::new(Agent::open(dir.path(), cfg, clock));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let a = Arc::clone(&a);
            std::thread::spawn(move || {
                for _ in 0..50 {
                    a.append(vec![event(vec![inc("n", 1)])]).unwrap();
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let writes = writes.load(Ordering::SeqCst);
    // 400 requests; each thread waits for its own answer, so at most 8 can be queued: with
    // one fsync per request there would be 400 writes.
    assert!(writes <= 200, "{writes} writes for 400 requests");
    let (events, state) = a.sync();
    assert_eq!(events.len(), 400);
    assert_eq!(counter(&state, "n"), 400);
    let seqs: Vec<u64> = events.iter().map(|e| e.dot.seq).collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
}
