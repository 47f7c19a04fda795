//! `edgesync-reconciler`: causal de-duplication and CRDT convergence between Kafka topics.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use edgesync_reconciler::config::Config;
use edgesync_reconciler::service;

/// The edgesync reconciler: consumes device batches (edgesync.deltas), releases each event
/// once, in dot order per device, to edgesync.events; joins state deltas into RocksDB and emits
/// converged values to the compacted edgesync.state; sends watermarks to edgesync.acks for the
/// bridge to carry back to devices. Two consumer groups (device stage, key stage): start more
/// processes to split the partitions. Serves /metrics and the completeness ledger at
/// /v1/status. Runs until SIGINT or SIGTERM.
///
/// Every setting is in the TOML configuration (see deploy/reconciler.toml, which documents each
/// field and its default), overridable by EDGESYNC_RECONCILER__<SECTION>__<FIELD> environment
/// variables and then by --set flags. Unknown fields are refused.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(short, long, env = "EDGESYNC_RECONCILER_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set state_dir=/data/reconciler` (repeatable; applied
    /// after the file and the environment).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    edgesync_servicekit::init_logging();
    let cfg = match Config::load(cli.config.as_deref(), std::env::vars(), &cli.set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgesync-reconciler: {e}");
            return ExitCode::from(2);
        }
    };
    let listen = cfg.http.listen;
    edgesync_servicekit::serve("edgesync-reconciler", listen, |l, s| {
        service::run(cfg, l, s)
    })
}
