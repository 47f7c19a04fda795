//! `edgesync-agent`: run the edge agent, show its status, inspect, verify and replay its spool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use edgesync_agent::config::Config;
use edgesync_agent::{cli, service};

/// The edgesync edge agent.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file (see deploy/edge-agent.toml).
    #[arg(short, long, env = "EDGESYNC_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set uplink.port=8883` (repeatable; after the file and
    /// EDGESYNC_AGENT__* environment variables).
    #[arg(long = "set", value_name = "PATH=VALUE", global = true)]
    set: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent until SIGINT or SIGTERM.
    Run(ConfigArgs),
    /// Spool depth and bytes, oldest unacknowledged age, watermark and link state (asks the
    /// running agent; reads the spool directly when it is not running).
    Status {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Work on the spool.
    Spool {
        #[command(flatten)]
        config: ConfigArgs,
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
    let cli = Cli::parse();
    edgesync_servicekit::init_logging();
    let load = |a: &ConfigArgs| Config::load(a.config.as_deref(), std::env::vars(), &a.set);
    let result =
        match cli.command {
            Command::Run(a) => match load(&a) {
                Ok(cfg) => {
                    let listen = cfg.http.listen;
                    return edgesync_servicekit::serve("edgesync-agent", listen, |l, s| {
                        service::run(cfg, l, s)
                    });
                }
                Err(e) => Err(e.to_string()),
            },
            Command::Status { config } => load(&config)
                .map_err(|e| e.to_string())
                .and_then(|c| cli::status(&c)),
            Command::Spool { config, command } => load(&config)
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
