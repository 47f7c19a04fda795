//! `edgesync-reconciler`: causal de-duplication and CRDT convergence between Kafka topics.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use edgesync_reconciler::config::Config;
use edgesync_reconciler::service;
use tokio_util::sync::CancellationToken;

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = match Config::load(cli.config.as_deref(), std::env::vars(), &cli.set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgesync-reconciler: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgesync-reconciler: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(cfg.http.listen)
            .await
            .map_err(|e| format!("listen on {}: {e}", cfg.http.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(edgesync_servicekit::on_signal(shutdown.clone()));
        service::run(cfg, listener, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgesync-reconciler: {e}");
            ExitCode::from(2)
        }
    }
}
