//! `edgesync-bench-lanes`: alarm latency after an outage on a thin link, with priority lanes
//! and without (`scripts/bench-lanes` builds and runs it). Each run builds the same backlog
//! behind a cut link twice on one Apache Kafka, once with alarms on their own lane and once
//! with everything on the `default` lane (the baseline), heals the link throttled and times
//! the drain (`edgesync_tests::lanes`). Prints each run, then the spread over the runs.

use std::time::Duration;

use clap::Parser;
use edgesync_testkit::{Broker, Kafka};
use edgesync_tests::lanes::{alarm_lane_sets, drain_after_outage, Backlog, Drain};
use edgesync_tests::Fleet;

/// Times how alarms and telemetry drain after an outage, lanes on and off.
#[derive(Parser)]
#[command(name = "edgesync-bench-lanes")]
struct Args {
    /// Runs (each with lanes and without).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Minutes of outage the backlog stands for.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Telemetry events per second of outage.
    #[arg(long, default_value_t = 10)]
    rate: u64,
    /// The link's bandwidth after the heal, bytes/s each way.
    #[arg(long, default_value_t = 16 << 10)]
    bandwidth: u64,
    /// Fresh alarms posted during the drain, 3 s apart.
    #[arg(long, default_value_t = 3)]
    fresh: usize,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn row(run: usize, lanes: bool, d: &Drain) {
    let fresh: Vec<String> = d
        .fresh_alarms
        .iter()
        .map(|f| format!("{:.1}", secs(*f)))
        .collect();
    println!(
        "run {run} lanes={:<5} backlog alarms {:>6.1} s  everything {:>6.1} s  telemetry left then {:>5.1} %  fresh alarms [{}] s  up {} KiB",
        lanes,
        secs(d.backlog_alarms),
        secs(d.everything),
        100.0 * d.telemetry_left_at_alarms,
        fresh.join(", "),
        d.bytes_up >> 10,
    );
}

/// The slowest fresh alarm of a drain, in seconds.
fn slowest_fresh(d: &Drain) -> f64 {
    d.fresh_alarms.iter().map(|f| secs(*f)).fold(0.0, f64::max)
}

/// Prints the least and the most of `v` with `digits` decimals.
fn spread(name: &str, digits: usize, v: impl Iterator<Item = f64>) {
    let v: Vec<f64> = v.collect();
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    println!("{name:<44} {lo:>8.digits$} .. {hi:>8.digits$}");
}

fn main() {
    let a = Args::parse();
    let backlog = Backlog {
        minutes: a.minutes,
        telemetry_per_sec: a.rate,
        bytes_per_sec: a.bandwidth,
        fresh_alarms: a.fresh,
    };
    println!(
        "backlog: {} min x {} events/s of telemetry + 1 alarm/min, then {} B/s; {} fresh alarms",
        a.minutes, a.rate, a.bandwidth, a.fresh
    );
    let k = Kafka::start_on(Broker::Apache).expect("Apache Kafka");
    let mut results: Vec<(Drain, Drain)> = Vec::new();
    for run in 1..=a.runs {
        let mut pair = Vec::new();
        for lanes in [true, false] {
            let name = format!("bench{run}{}", if lanes { "lanes" } else { "flat" });
            let mut f = Fleet::start(&k, &name, 1, &[]);
            if lanes {
                f.replace_agent(0, &alarm_lane_sets());
            }
            let d = drain_after_outage(&mut f, backlog, lanes);
            row(run, lanes, &d);
            pair.push(d);
        }
        let flat = pair.pop().unwrap_or_default();
        let lanes = pair.pop().unwrap_or_default();
        results.push((lanes, flat));
    }
    println!("\nover {} runs (min .. max):", a.runs);
    type Figure = fn(&Drain, &Drain) -> f64;
    let figures: [(&str, usize, Figure); 8] = [
        ("backlog alarms drained, lanes (s)", 1, |l, _| {
            secs(l.backlog_alarms)
        }),
        ("backlog alarms drained, no lanes (s)", 1, |_, f| {
            secs(f.backlog_alarms)
        }),
        ("everything drained, lanes (s)", 1, |l, _| {
            secs(l.everything)
        }),
        ("everything drained, no lanes (s)", 1, |_, f| {
            secs(f.everything)
        }),
        ("slowest fresh alarm, lanes (s)", 1, |l, _| slowest_fresh(l)),
        ("slowest fresh alarm, no lanes (s)", 1, |_, f| {
            slowest_fresh(f)
        }),
        ("alarm drain / everything drain, lanes", 3, |l, _| {
            secs(l.backlog_alarms) / secs(l.everything).max(1e-3)
        }),
        ("alarm drain with lanes / without", 3, |l, f| {
            secs(l.backlog_alarms) / secs(f.backlog_alarms).max(1e-3)
        }),
    ];
    for (name, digits, figure) in figures {
        spread(name, digits, results.iter().map(|(l, f)| figure(l, f)));
    }
}
