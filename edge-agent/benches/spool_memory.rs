//! The agent's memory against the size of its spool: 100 events spooled against 1,000,000.
//!
//! `cargo bench -p edgesync-agent --bench spool_memory` runs the `edgesync-agent` binary on its
//! shipped configuration, offline (its uplink points at a port nobody listens on), feeds it N
//! telemetry events over HTTP (NDJSON requests of 1,000, each event with two fields, a tag, a
//! G-counter increment and a rollup sample), and reads `VmRSS` and `VmHWM` from `/proc`: once
//! the spool holds all N, and again after a restart on that spool (the open scans every record
//! and replays the write-ahead log). Prints one row per N (`SPOOL_MEMORY_EVENTS`, default
//! `100,100000,1000000`) and the difference between the largest and the smallest, against the
//! RocksDB budget the configuration sets (`[spool] cache_bytes + 2 * write_buffer_bytes`;
//! `SPOOL_MEMORY_SET` adds `;`-separated `--set` values, e.g.
//! `spool.cache_bytes=2097152;spool.write_buffer_bytes=2097152`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::time::{Duration, Instant};

use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::knob;
use edgesync_testkit::mem::{dir_bytes, mib, rss};

struct Measured {
    filled: (u64, u64),
    restarted: (u64, u64),
    spool_bytes: u64,
    secs: f64,
}

fn run(n: u64) -> Measured {
    let sets: Vec<String> = std::env::var("SPOOL_MEMORY_SET")
        .unwrap_or_default()
        .split(';')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect();
    let mut svc = common::offline_agent(None, &sets, &[]);
    let started = Instant::now();
    common::feed(&svc, 0, n, 1_000);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(svc.metric("edgesync_agent_spool_events", "") as u64, n);
    // Let the memtable flush and compactions that follow a burst settle.
    std::thread::sleep(Duration::from_secs(5));
    let filled = rss(svc.process.pid().unwrap());
    svc.process.terminate(Duration::from_secs(10));
    svc.process.restart().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(svc.metric("edgesync_agent_spool_events", "") as u64, n);
    let restarted = rss(svc.process.pid().unwrap());
    Measured {
        filled,
        restarted,
        spool_bytes: dir_bytes(&svc.dir().join("spool")),
        secs,
    }
}

fn main() {
    let sizes: String = knob("SPOOL_MEMORY_EVENTS", "100,100000,1000000".to_owned());
    let sizes: Vec<u64> = sizes
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    println!("| events spooled | spool on disk (MiB) | fill time (s) | VmRSS filled (MiB) | VmHWM filled (MiB) | VmRSS after a restart (MiB) | VmHWM after a restart (MiB) |");
    println!("|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for n in sizes {
        let m = run(n);
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            mib(m.spool_bytes),
            m.secs,
            mib(m.filled.0),
            mib(m.filled.1),
            mib(m.restarted.0),
            mib(m.restarted.1)
        );
        rows.push((n, m));
    }
    let sets: Vec<String> = std::env::var("SPOOL_MEMORY_SET")
        .unwrap_or_default()
        .split(';')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .chain(["device.id=\"a\"".to_owned()])
        .collect();
    let cfg = edgesync_agent::config::Config::load(None, [], &sets).unwrap();
    let budget = cfg.spool_config().memory.budget() as u64;
    if let (Some((n0, a)), Some((n1, b))) = (rows.first(), rows.last()) {
        println!(
            "{n1} against {n0} events: VmRSS {:+.1} MiB filled, {:+.1} MiB after a restart; the spool's RocksDB budget is {:.1} MiB",
            mib(b.filled.0) - mib(a.filled.0),
            mib(b.restarted.0) - mib(a.restarted.0),
            mib(budget)
        );
    }
}
