//! The spool on real RocksDB: density, durability, group commit, trim, quota policies,
//! verification and repair, and `kill -9` in the middle of heavy appends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_agent::spool::{
    Appended, Clock, DropReason, Entry, QuotaPolicy, Spool, SpoolConfig, SpoolError,
};

fn cfg() -> SpoolConfig {
    SpoolConfig::default()
}

fn open(dir: &Path, cfg: SpoolConfig) -> Spool {
    Spool::open(dir, cfg).unwrap()
}

fn body(tag: &str, i: u64) -> Vec<u8> {
    let mut b = format!("{tag}-{i:08}-").into_bytes();
    b.resize(256, b'.');
    b
}

fn stored(a: Appended) -> (u64, u64) {
    match a {
        Appended::Stored(r) => (r.start, r.end),
        other => panic!("not stored: {other:?}"),
    }
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries
        .iter()
        .flat_map(|e| match e {
            Entry::Event { seq, .. } => *seq..=*seq,
            Entry::Dropped { first, last, .. } => *first..=*last,
        })
        .collect()
}

#[test]
fn appends_get_dense_seqs_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let inc = {
        let s = open(dir.path(), cfg());
        assert_eq!(
            stored(s.append(vec![body("a", 0), body("a", 1)]).unwrap()),
            (1, 2)
        );
        assert_eq!(stored(s.append(vec![body("a", 2)]).unwrap()), (3, 3));
        s.meta().incarnation
    };
    let s = open(dir.path(), cfg());
    let m = s.meta();
    assert_eq!(
        (m.incarnation, m.next_seq, m.events, m.acked),
        (inc, 4, 3, 0)
    );
    let got = s.read(1, 100, usize::MAX).unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    assert!(matches!(&got[2], Entry::Event { body: b, .. } if b == &body("a", 2)));
    assert_eq!(stored(s.append(vec![body("a", 3)]).unwrap()), (4, 4));
}

#[test]
fn a_new_spool_gets_a_new_incarnation() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ia = open(a.path(), cfg()).meta().incarnation;
    let ib = open(b.path(), cfg()).meta().incarnation;
    assert_ne!(ia, ib);
}

#[test]
fn concurrent_appends_share_fsyncs_and_get_unique_dense_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path(), cfg()));
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| stored(s.append(vec![body(&format!("t{t}"), i)]).unwrap()).0)
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());
    let st = s.stats();
    assert_eq!(st.appends, 800);
    assert!(
        st.groups < st.appends,
        "appends that arrived together shared a write: {st:?}"
    );
}

#[test]
fn trim_forgets_only_at_or_below_the_watermark_and_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), cfg());
        s.append((0..10).map(|i| body("t", i)).collect()).unwrap();
        assert_eq!(s.trim(4).unwrap(), 4);
        assert_eq!(
            seqs(&s.read(1, 100, usize::MAX).unwrap()),
            (5..=10).collect::<Vec<_>>()
        );
        assert_eq!(s.trim(3).unwrap(), 0, "acks never go backwards");
    }
    let s = open(dir.path(), cfg());
    let m = s.meta();
    assert_eq!((m.acked, m.next_seq, m.events), (4, 11, 6));
    // An ack beyond what was appended trims only what exists and never moves next_seq back.
    s.trim(100).unwrap();
    let m = s.meta();
    assert_eq!((m.acked, m.next_seq, m.events, m.bytes), (10, 11, 0, 0));
    drop(s);
    let s = open(dir.path(), cfg());
    assert_eq!(
        stored(s.append(vec![body("t", 99)]).unwrap()),
        (11, 11),
        "seqs are never reused"
    );
}

fn small(policy: QuotaPolicy) -> SpoolConfig {
    SpoolConfig {
        max_bytes: 10 * 275, // ten 256-byte events with their record overhead
        policy,
        ..cfg()
    }
}

#[test]
fn block_policy_refuses_with_a_clear_error_until_acks_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), small(QuotaPolicy::Block));
    s.append((0..10).map(|i| body("b", i)).collect()).unwrap();
    let err = s.append(vec![body("b", 10)]).unwrap_err();
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(err.to_string().contains("spool full"));
    assert_eq!(s.stats().refused, 1);
    assert_eq!(s.meta().next_seq, 11, "a refused append takes no seq");
    s.trim(5).unwrap();
    assert_eq!(stored(s.append(vec![body("b", 10)]).unwrap()), (11, 11));
    let too_big = s.append(vec![vec![0u8; 4000]]).unwrap_err();
    assert!(matches!(too_big, SpoolError::TooLarge { .. }));
}

#[test]
fn drop_newest_drops_incoming_events_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), small(QuotaPolicy::DropNewest));
    s.append((0..10).map(|i| body("n", i)).collect()).unwrap();
    assert_eq!(
        s.append(vec![body("n", 10), body("n", 11)]).unwrap(),
        Appended::Dropped { events: 2 }
    );
    assert_eq!(s.stats().dropped_newest, 2);
    assert_eq!(
        seqs(&s.read(1, 100, usize::MAX).unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
}

#[test]
fn drop_oldest_turns_the_oldest_events_into_a_dropped_range_keeping_seqs_dense() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), small(QuotaPolicy::DropOldest));
    s.append((0..10).map(|i| body("o", i)).collect()).unwrap();
    assert_eq!(
        stored(
            s.append(vec![body("o", 10), body("o", 11), body("o", 12)])
                .unwrap()
        ),
        (11, 13)
    );
    // Three new events need three old ones' room, plus room for the dropped-range record.
    assert_eq!(s.stats().dropped_oldest_quota, 4);
    let got = s.read(1, 100, usize::MAX).unwrap();
    assert_eq!(
        got[0],
        Entry::Dropped {
            first: 1,
            last: 4,
            reason: DropReason::Quota
        }
    );
    assert_eq!(
        seqs(&got),
        (1..=13).collect::<Vec<_>>(),
        "every seq accounted for"
    );
    assert!(s.meta().bytes <= 10 * 275);
    // Reading from inside the dropped range, and trimming through it, keep the rest.
    assert_eq!(
        s.read(2, 1, usize::MAX).unwrap(),
        vec![Entry::Dropped {
            first: 2,
            last: 4,
            reason: DropReason::Quota
        }]
    );
    s.trim(2).unwrap();
    assert_eq!(
        seqs(&s.read(3, 100, usize::MAX).unwrap()),
        (3..=13).collect::<Vec<_>>()
    );
    assert!(s.verify(|_| Ok(())).unwrap().is_clean());
}

#[test]
fn the_age_limit_drops_or_blocks_by_policy() {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let clock: Clock = {
        let now = Arc::clone(&now);
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let dir = tempfile::tempdir().unwrap();
    let aged = |policy| SpoolConfig {
        max_age: Some(Duration::from_secs(60)),
        policy,
        clock: Arc::clone(&clock),
        ..cfg()
    };
    {
        let s = open(dir.path(), aged(QuotaPolicy::DropOldest));
        s.append(vec![body("a", 0), body("a", 1)]).unwrap();
        now.fetch_add(30_000, Ordering::SeqCst);
        s.append(vec![body("a", 2)]).unwrap();
        now.fetch_add(40_000, Ordering::SeqCst); // seqs 1-2 are now 70 s old, seq 3 is 40 s
        s.append(vec![body("a", 3)]).unwrap();
        assert_eq!(s.stats().dropped_oldest_age, 2);
        let got = s.read(1, 100, usize::MAX).unwrap();
        assert_eq!(
            got[0],
            Entry::Dropped {
                first: 1,
                last: 2,
                reason: DropReason::Age
            }
        );
    }
    let s = open(dir.path(), aged(QuotaPolicy::Block));
    now.fetch_add(30_000, Ordering::SeqCst); // seq 3 is 70 s old
    assert!(matches!(
        s.append(vec![body("a", 4)]),
        Err(SpoolError::Full { .. })
    ));
}

#[test]
fn agent_state_is_written_with_its_events_and_not_when_they_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), small(QuotaPolicy::DropNewest));
        let st = |v: &str| vec![("fleet/readings".to_owned(), v.as_bytes().to_vec())];
        s.append_with_state((0..10).map(|i| body("s", i)).collect(), st("v1"))
            .unwrap();
        assert_eq!(
            s.append_with_state(vec![body("s", 10)], st("v2")).unwrap(),
            Appended::Dropped { events: 1 }
        );
        assert_eq!(s.state().unwrap()["fleet/readings"], b"v1");
    }
    let s = open(dir.path(), cfg());
    let state = s.state().unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(state["fleet/readings"], b"v1", "survives a reopen");
    assert_eq!(s.meta().events, 10, "state keys are not events");
}

#[test]
fn verify_reports_a_corrupt_record_and_repair_keeps_every_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), cfg());
        s.append((0..5).map(|i| body("v", i)).collect()).unwrap();
    }
    {
        // Damage seq 3 behind the spool's back.
        let db = rocksdb::DB::open_default(dir.path()).unwrap();
        let mut key = b"e/".to_vec();
        key.extend_from_slice(&3u64.to_be_bytes());
        db.put(&key, b"\xffgarbage").unwrap();
    }
    let s = open(dir.path(), cfg());
    let report = s.verify(|_| Ok(())).unwrap();
    assert_eq!(report.bad.keys().copied().collect::<Vec<_>>(), vec![3]);
    assert!(report.gaps.is_empty());
    assert_eq!(s.repair(&report).unwrap(), 1);
    assert!(s.verify(|_| Ok(())).unwrap().is_clean());
    let got = s.read(1, 100, usize::MAX).unwrap();
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
    assert_eq!(
        got.iter()
            .filter(|e| matches!(e, Entry::Event { .. }))
            .count(),
        4
    );
    assert!(got.contains(&Entry::Dropped {
        first: 3,
        last: 3,
        reason: DropReason::Corrupt
    }));
    // A body the caller's decoder rejects is reported too.
    let report = s
        .verify(|b| {
            if b.starts_with(b"v-00000004") {
                Err("bad".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
    assert_eq!(report.bad.keys().copied().collect::<Vec<_>>(), vec![5]);
}

/// Child side of the kill -9 test: appends from four threads forever, reporting each answered
/// append to a file (the page cache outlives the process).
#[test]
fn helper_appends_until_killed() {
    let Some(dir) = std::env::var_os("EDGESYNC_SPOOL_HELPER_DIR") else {
        return;
    };
    let report = std::env::var_os("EDGESYNC_SPOOL_HELPER_REPORT").unwrap();
    let s = Arc::new(open(Path::new(&dir), cfg()));
    let log = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(report)
            .unwrap(),
    ));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (s, log) = (Arc::clone(&s), Arc::clone(&log));
            std::thread::spawn(move || {
                for i in 0.. {
                    // Unique across restarts of the helper: batch numbers start again at 0.
                    let tag = format!("t{t}b{i}p{}", std::process::id());
                    let bodies = (0..16).map(|j| body(&tag, j)).collect();
                    // The thread's "state" is its last batch: written with the batch, atomically.
                    let state = vec![(format!("t{t}"), tag.clone().into_bytes())];
                    let (a, b) = stored(s.append_with_state(bodies, state).unwrap());
                    use std::io::Write;
                    // One write per line, so a kill cannot interleave or split lines mid-way.
                    let line = format!("{a} {b} {tag}\n");
                    log.lock().unwrap().write_all(line.as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

#[test]
fn kill_9_during_heavy_appends_loses_no_answered_event_and_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("answered");
    let spool_dir = dir.path().join("spool");
    for round in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "helper_appends_until_killed", "--test-threads=1"])
            .env("EDGESYNC_SPOOL_HELPER_DIR", &spool_dir)
            .env("EDGESYNC_SPOOL_HELPER_REPORT", &report)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let target = 40 * (round + 1);
        while std::fs::read_to_string(&report)
            .unwrap_or_default()
            .lines()
            .count()
            < target
        {
            assert!(Instant::now() < deadline, "the helper made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap(); // SIGKILL, mid-append
        child.wait().unwrap();
    }
    let s = open(&spool_dir, cfg());
    let answered = std::fs::read_to_string(&report).unwrap();
    let mut max_answered = 0;
    let mut seen = std::collections::BTreeSet::new();
    // A line the kill cut short was never fully reported: only complete lines count.
    for line in answered.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let mut f = line.trim_end().split(' ');
        let (a, b): (u64, u64) = (
            f.next().unwrap().parse().unwrap(),
            f.next().unwrap().parse().unwrap(),
        );
        let tag = f.next().unwrap();
        let got = s.read(a, (b - a + 1) as usize, usize::MAX).unwrap();
        assert_eq!(
            got.len() as u64,
            b - a + 1,
            "answered range {a}..={b} incomplete"
        );
        for (j, e) in got.iter().enumerate() {
            match e {
                Entry::Event { seq, body: got, .. } => {
                    assert_eq!(*seq, a + j as u64);
                    assert_eq!(got, &body(tag, j as u64), "seq {seq} holds another event");
                    assert!(seen.insert(*seq), "seq {seq} answered twice");
                }
                other => panic!("answered seq turned into {other:?}"),
            }
        }
        max_answered = max_answered.max(b);
    }
    assert!(
        s.verify(|_| Ok(())).unwrap().is_clean(),
        "dense and decodable after three kills"
    );
    // Each thread's stored state names exactly its last stored batch (by seq), all 16 events
    // of which are stored.
    let mut last_batch: std::collections::BTreeMap<String, (String, usize)> = Default::default();
    for e in s.read(1, usize::MAX, usize::MAX).unwrap() {
        let Entry::Event { body: b, .. } = e else {
            continue;
        };
        let text = String::from_utf8_lossy(&b).into_owned();
        let tag = text.split('-').next().unwrap().to_owned(); // "t{t}b{i}p{pid}"
        let thread = tag[..tag.find('b').unwrap()].to_owned();
        let entry = last_batch.entry(thread).or_insert((tag.clone(), 0));
        if entry.0 != tag {
            *entry = (tag, 0);
        }
        entry.1 += 1;
    }
    let state = s.state().unwrap();
    assert_eq!(state.len(), last_batch.len());
    for (thread, (batch, events)) in &last_batch {
        assert_eq!(*events, 16, "{thread}'s last batch {batch} is torn");
        assert_eq!(
            state[thread],
            batch.as_bytes(),
            "state of {thread} out of step with its events"
        );
    }
    let (next, _) = stored(s.append(vec![body("after", 0)]).unwrap());
    assert!(
        next > max_answered,
        "seq {next} reused (answered up to {max_answered})"
    );
}
