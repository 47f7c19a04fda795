//! `edgesync-chaos`: the nemesis runner as a command (`scripts/chaos` builds and runs it).
//! Prints the report; exits 1 when a promise broke, with the command that replays the seed.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use edgesync_tests::chaos::{run, Options};
use edgesync_tests::nemesis::Shape;

/// Runs the real pipeline under a seeded schedule of faults and checks it by history.
#[derive(Parser)]
#[command(name = "edgesync-chaos")]
struct Args {
    /// The schedule's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Minutes of faults (or use --seconds).
    #[arg(long, conflicts_with = "seconds")]
    minutes: Option<u64>,
    /// Seconds of faults.
    #[arg(long)]
    seconds: Option<u64>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let secs = a.seconds.or(a.minutes.map(|m| m * 60)).unwrap_or(60);
    let options = Options {
        seed: a.seed,
        duration: Duration::from_secs(secs),
        shape: Shape::default(),
    };
    match run(options, "chaos-pump") {
        Ok(report) => {
            println!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: the pipeline did not start: {e}");
            ExitCode::FAILURE
        }
    }
}
