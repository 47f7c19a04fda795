//! Durable append: the spool (group commit through its writer thread) against a raw RocksDB
//! loop (`WriteBatch` + synced write, same group sizes), in the same run on the same disk.
//!
//! `cargo bench -p edgesync-agent --bench spool_append` — prints events/s for both, the ratio,
//! and the append→durable latency percentiles of the spool. Targets (issue #5): >= 250k events/s
//! of 256 B, >= 0.7x the raw loop, p99 <= 15 ms. Set `SPOOL_BENCH_SECS` to change the duration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgesync_agent::spool::{Spool, SpoolConfig};
use rocksdb::{Options, WriteBatch, WriteOptions, DB};

const EVENT: usize = 256;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let secs: u64 = std::env::var("SPOOL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let writers: usize = 16;
    let per_append: usize = 8; // an ingest request carries a few events
    let dir = tempfile::tempdir().unwrap();

    // --- the spool ---------------------------------------------------------------------------
    let spool = Arc::new(Spool::open(&dir.path().join("spool"), SpoolConfig::default()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let (spool, stop) = (Arc::clone(&spool), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let bodies = vec![vec![7u8; EVENT]; per_append];
                    let t = Instant::now();
                    spool.append(bodies).unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    let stats = spool.stats();
    let spool_rate = stats.events as f64 / elapsed.as_secs_f64();
    let group_events = (stats.events / stats.groups.max(1)).max(1) as usize;
    lat.sort_unstable();

    // --- the raw loop: same number of groups of the same size, one synced write each --------
    let mut opts = Options::default();
    opts.create_if_missing(true);
    let db = DB::open(&opts, dir.path().join("raw")).unwrap();
    let mut w = WriteOptions::default();
    w.set_sync(true);
    let value = vec![7u8; EVENT + 9];
    let groups = stats.groups.clamp(1, 50_000);
    let mut seq: u64 = 0;
    let t = Instant::now();
    for _ in 0..groups {
        let mut b = WriteBatch::default();
        for _ in 0..group_events {
            seq += 1;
            let mut key = b"e/".to_vec();
            key.extend_from_slice(&seq.to_be_bytes());
            b.put(&key, &value);
        }
        b.put(b"m/next", (seq + 1).to_be_bytes());
        db.write_opt(b, &w).unwrap();
    }
    let raw_rate = seq as f64 / t.elapsed().as_secs_f64();

    println!("spool durable append, {EVENT} B events, {writers} writers x {per_append} events/append, {secs} s");
    println!(
        "  spool: {:>10.0} events/s  ({} events in {} fsynced groups, {} events/group)",
        spool_rate, stats.events, stats.groups, group_events
    );
    println!(
        "  raw RocksDB WriteBatch + sync loop, same group size: {:>10.0} events/s",
        raw_rate
    );
    println!("  ratio spool / raw: {:.2}", spool_rate / raw_rate);
    println!(
        "  append -> durable latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
