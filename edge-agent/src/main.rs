//! `edgesync-agent`: run the edge agent, show its status, inspect, verify and replay its spool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgesync_agent::config::Config;
use edgesync_agent::{cli, service};
use edgesync_servicekit::cli::ConfigArgs;

/// The edgesync edge agent.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until SIGINT or SIGTERM.
    Run,
    /// Spool depth and bytes, oldest unacknowledged age, watermark and link state (asks the
    /// running agent; reads the spool directly when it is not running).
    Status,
    /// Work on the spool (of one lane: each lane has its own).
    Spool {
        /// The lane whose spool to work on.
        #[arg(long, default_value = edgesync_agent::lanes::DEFAULT_LANE)]
        lane: String,
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// Print the spool's metadata and its records from a seq on, as JSON lines.
    Inspect {
        /// First seq to print (default: the first held).
        #[arg(long)]
        from: Option<u64>,
        /// Most records to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// fsck: every record decodes, seqs are dense, next-seq and watermark agree. Exits 1 when
    /// something is wrong. Needs the agent stopped when repairing.
    Verify {
        /// Replace every bad record by a dropped range (reason corrupt) so the server learns
        /// they are gone; no valid record or seq is touched.
        #[arg(long)]
        repair: bool,
    },
    /// Publish a seq range again to the broker (the server ignores what it already has).
    Replay {
        /// First seq.
        #[arg(long)]
        from: u64,
        /// Last seq (default: the last assigned).
        #[arg(long)]
        to: Option<u64>,
    },
}

fn main() -> ExitCode {
    let args: Cli = edgesync_servicekit::cli::parse("EDGESYNC_AGENT_CONFIG");
    let loaded = args.config.load::<Config>();
    if !matches!(args.command, Command::Run) {
        edgesync_servicekit::init_logging(); // `Run` starts it in `serve_loaded`
    }
    let result = match args.command {
        Command::Run => {
            return edgesync_servicekit::cli::serve_loaded(
                "edgesync-agent",
                loaded,
                |c| c.http.listen,
                service::run,
            )
        }
        Command::Status => loaded
            .map_err(|e| e.to_string())
            .and_then(|c| cli::status(&c)),
        Command::Spool { lane, command } => loaded
            .and_then(|c| c.for_lane(&lane))
            .map_err(|e| e.to_string())
            .and_then(|c| match command {
                SpoolCommand::Inspect { from, limit } => cli::inspect(&c, from, limit),
                SpoolCommand::Verify { repair } => cli::verify(&c, repair),
                SpoolCommand::Replay { from, to } => cli::replay(&c, from, to),
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgesync-agent: {e}");
            ExitCode::from(2)
        }
    }
}
