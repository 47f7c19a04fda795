//! `edgesync-sim`: prints the comparison table for a seed and fleet size.

use std::process::ExitCode;
use std::time::Instant;

use edgesync_sim::config::WireModel;
use edgesync_sim::SimConfig;

const USAGE: &str =
    "usage: edgesync-sim [--profile default|cellular|outage] [--seed N] [--devices N]
       [--hours H] [--protocol-only] [--threads N] [--json FILE] [--format md|json]

Runs edgesync and a retry-based baseline on the same seeded trace and prints the comparison
(Markdown by default). --json also writes the full JSON report (every parameter included).

--profile      the link profile (default: default): default (up 2 h / down 20 min on average,
               1 % loss), cellular (up 5 min / down 20 s, 3 % loss, 5 % reordering, 16 kB/s),
               outage (up 18 h / down 6 h: the baseline's retry queue overflows)
--protocol-only  edgesync alone, without the baseline and the batch codec (wire sizes from a
               model measured with the codec): the protocol's checks at fleet scale
--threads      threads to run on (default: the machine's); the output does not depend on it

The same arguments (--threads aside) always print the same bytes.";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgesync-sim: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // The profile sets every parameter; the other options then change some of them.
    let profile = argv
        .iter()
        .position(|a| a == "--profile")
        .map_or(Some("default"), |i| argv.get(i + 1).map(String::as_str))
        .ok_or("--profile needs a value")?;
    let mut cfg = SimConfig::profile(profile).ok_or_else(|| {
        format!(
            "unknown profile {profile} (one of {})",
            edgesync_sim::config::PROFILES.join(", ")
        )
    })?;
    let (mut json_path, mut format) = (None, "md".to_owned());
    let mut threads = edgesync_sim::default_threads();
    let mut args = argv.into_iter();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return Ok(());
        }
        if flag == "--protocol-only" {
            cfg.protocol_only = Some(WireModel::measured());
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--seed" => cfg.seed = value.parse().map_err(|e| bad(&e))?,
            "--devices" => cfg.devices = value.parse().map_err(|e| bad(&e))?,
            "--hours" => cfg.hours = value.parse().map_err(|e| bad(&e))?,
            "--profile" => {}
            "--json" => json_path = Some(value),
            "--threads" => threads = value.parse().map_err(|e| bad(&e))?,
            "--format" if value == "md" || value == "json" => format = value,
            _ => return Err(format!("unknown option {flag} {value}")),
        }
    }
    let started = Instant::now();
    let report = edgesync_sim::run_on(&cfg, threads).map_err(|e| e.to_string())?;
    let json = report.to_json();
    if let Some(path) = json_path {
        std::fs::write(&path, format!("{json}\n")).map_err(|e| format!("write {path}: {e}"))?;
    }
    if format == "json" {
        println!("{json}");
    } else {
        print!("{}", report.to_markdown());
    }
    // Wall time goes to stderr so that stdout stays byte-identical for a given seed.
    eprintln!(
        "simulated {} devices x {} h (+ drain), profile {}{}, in {:.1} s on {threads} threads",
        cfg.devices,
        cfg.hours,
        cfg.profile,
        if cfg.protocol_only.is_some() {
            ", protocol only"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
