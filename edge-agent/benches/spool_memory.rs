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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgesync_servicekit::config::ServiceConfig;
use edgesync_testkit::mem::{dir_bytes, mib, rss};
use edgesync_testkit::{free_port, knob, Service};

const PER_REQUEST: u64 = 1_000;

fn ndjson(start: u64, n: u64) -> Vec<u8> {
    let mut out = String::new();
    for i in start..start + n {
        out.push_str(&format!(
            "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{i},\"pressure_kpa\":{:.1}}},\"tags\":{{\"site\":\"north\"}},\"ops\":[{{\"op\":\"inc\",\"key\":\"readings\",\"by\":1}},{{\"op\":\"rollup\",\"key\":\"pressure\",\"value\":101.5,\"bucket_ms\":60000}}]}}\n",
            101.0 + (i % 50) as f64 / 10.0
        ));
    }
    out.into_bytes()
}

struct Measured {
    filled: (u64, u64),
    restarted: (u64, u64),
    spool_bytes: u64,
    secs: f64,
}

fn run(n: u64) -> Measured {
    let nobody = free_port().unwrap();
    let mut sets = vec![
        "device.id=\"pump-0042\"".to_owned(),
        "spool.dir=\"{dir}/spool\"".to_owned(),
        format!("uplink.port={nobody}"),
    ];
    if let Ok(extra) = std::env::var("SPOOL_MEMORY_SET") {
        sets.extend(
            extra
                .split(';')
                .filter(|x| !x.is_empty())
                .map(str::to_owned),
        );
    }
    let env = [("RUST_LOG".to_owned(), "warn".to_owned())];
    let program = PathBuf::from(env!("CARGO_BIN_EXE_edgesync-agent"));
    let mut svc =
        Service::start_with_env(program, Some("run"), "bench agent", &sets, &env).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = PER_REQUEST.min(n - sent);
        let (code, body) = svc
            .post("/v1/events", "application/x-ndjson", &ndjson(sent, k))
            .unwrap();
        assert_eq!(code, 200, "{body}");
        sent += k;
    }
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
