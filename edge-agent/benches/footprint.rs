//! The agent's footprint on the edge profile (`deploy/edge-agent-small.toml`, as shipped).
//!
//! `cargo bench -p edgesync-agent --bench footprint` measures the `edgesync-agent` binary this
//! bench was built with (the release profile):
//! - its size, and its size stripped (`strip` on a copy);
//! - `VmRSS` idle: started on an empty spool, offline, after 5 s;
//! - under load: 1,000 events/s over HTTP (requests of 100 every 100 ms, each event a pump's
//!   reading with two fields, a tag, an increment and a rollup sample) for `FOOTPRINT_SECS`
//!   (default 30) s, the agent offline so everything stays spooled: the largest `VmRSS` seen
//!   (sampled every 100 ms) and the CPU it used (user + system, from `/proc`) per second; once
//!   starting from 100 events spooled and once from 1,000,000 (`FOOTPRINT_EVENTS`, fed at full
//!   speed, then the agent restarted on that spool so the fill's compactions and allocator
//!   high-water mark do not count);
//! - the spool's bytes on disk per event, with the 1,000,000 held (after a settle of 10 s);
//! - `VmHWM`, the restarted process's peak, after its load.
//!
//! The agent gets the environment the shipped systemd unit gives it (`MALLOC_ARENA_MAX=2`);
//! `FOOTPRINT_UNIT_ENV=0` leaves it out, to compare. `FOOTPRINT_CONFIG` names another file of
//! `deploy/` (e.g. `edge-agent.toml` for the
//! defaults), to compare.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use edgesync_testkit::cpu::process_secs;
use edgesync_testkit::mem::{dir_bytes, mib, rss};
use edgesync_testkit::{deploy, knob, Service};

/// What a load window showed.
struct Load {
    max_rss: u64,
    cpu_per_sec: f64,
    rate: f64,
}

/// 1,000 events/s for `secs`, from event index `start`.
fn load(svc: &Service, start: u64, secs: u64) -> Load {
    let pid = svc.process.pid().unwrap();
    let cpu0 = process_secs(pid);
    let t0 = Instant::now();
    let mut sent = 0;
    let mut max_rss = 0;
    for tick in 1..=secs * 10 {
        common::feed(svc, start + sent, 100, 100);
        sent += 100;
        max_rss = max_rss.max(rss(pid).0);
        let due = t0 + Duration::from_millis(tick * 100);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let wall = t0.elapsed().as_secs_f64();
    Load {
        max_rss,
        cpu_per_sec: (process_secs(pid) - cpu0) / wall,
        rate: sent as f64 / wall,
    }
}

fn stripped_size(binary: &PathBuf) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("edgesync-agent");
    std::fs::copy(binary, &copy).unwrap();
    let ok = Command::new("strip").arg(&copy).status().unwrap().success();
    assert!(ok, "strip failed");
    std::fs::metadata(&copy).unwrap().len()
}

fn main() {
    let config: String = knob("FOOTPRINT_CONFIG", "edge-agent-small.toml".to_owned());
    let config = deploy(&config);
    let secs: u64 = knob("FOOTPRINT_SECS", 30);
    let big: u64 = knob("FOOTPRINT_EVENTS", 1_000_000);
    let binary = common::agent_binary();
    let size = std::fs::metadata(&binary).unwrap().len();
    println!("config: {}", config.display());
    println!(
        "binary: {:.1} MiB, stripped {:.1} MiB",
        mib(size),
        mib(stripped_size(&binary))
    );

    let env = if knob("FOOTPRINT_UNIT_ENV", 1u8) == 1 {
        common::unit_environment()
    } else {
        Vec::new()
    };
    println!("environment: {env:?}");
    let mut svc = common::offline_agent(Some(config), &[], &env);
    let pid = svc.process.pid().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    println!("VmRSS idle, empty spool: {:.1} MiB", mib(rss(pid).0));

    common::feed(&svc, 0, 100, 100);
    let small = load(&svc, 100, secs);
    let held = 100 + secs * 1_000;
    if big > held {
        common::feed(&svc, held, big - held, 1_000);
    }
    let spooled = big.max(held);
    std::thread::sleep(Duration::from_secs(10));
    let disk = dir_bytes(&svc.dir().join("spool"));
    svc.process.terminate(Duration::from_secs(10));
    svc.process.restart().unwrap();
    let pid = svc.process.pid().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let settled = rss(pid).0;
    let large = load(&svc, spooled, secs);
    let stored = svc.metric("edgesync_agent_spool_events", "") as u64;
    assert_eq!(stored, spooled + secs * 1_000, "every event spooled");

    println!("| spooled at the start | events/s | VmRSS max under load (MiB) | CPU (share of one core) |");
    println!("|---|---|---|---|");
    for (n, l) in [(100, &small), (spooled, &large)] {
        println!(
            "| {n} | {:.0} | {:.1} | {:.3} |",
            l.rate,
            mib(l.max_rss),
            l.cpu_per_sec
        );
    }
    println!(
        "{spooled} spooled: VmRSS after a restart {:.1} MiB, VmHWM of that process after its load {:.1} MiB, spool {:.1} MiB on disk = {:.1} bytes per event",
        mib(settled),
        mib(rss(pid).1),
        mib(disk),
        disk as f64 / spooled as f64
    );
    println!(
        "VmRSS under load from {spooled} against from 100 spooled: {:+.1} MiB",
        mib(large.max_rss) - mib(small.max_rss)
    );
}
