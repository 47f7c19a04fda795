//! `edgesync-sim`: prints the comparison table for a seed and fleet size.

use std::process::ExitCode;
use std::time::Instant;

use edgesync_sim::config::WireModel;
use edgesync_sim::SimConfig;

const USAGE: &str =
    "usage: edgesync-sim [--seed N] [--devices N] [--hours H] [--json FILE] [--format md|json]

Runs edgesync and a retry-based baseline on the same seeded trace and prints the comparison
(Markdown by default). --json also writes the full JSON report (every parameter included).
The same arguments always print the same bytes.";

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
    let mut cfg = SimConfig::default();
    let (mut json_path, mut format) = (None, "md".to_owned());
    let mut threads = edgesync_sim::default_threads();
    let mut args = std::env::args().skip(1);
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
        "simulated {} devices x {} h (+ drain) in {:.1} s",
        cfg.devices,
        cfg.hours,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
