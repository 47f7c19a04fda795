//! `edgesync-reconciler`: causal de-duplication and CRDT convergence between Kafka topics.

use std::process::ExitCode;

use clap::Parser;
use edgesync_reconciler::config::Config;
use edgesync_reconciler::service;
use edgesync_servicekit::cli::{self, ConfigArgs};

/// jemalloc for the whole process, librdkafka's and RocksDB's allocations included (see the
/// workspace's `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let args: Cli = cli::parse("EDGESYNC_RECONCILER_CONFIG");
    let loaded = args.config.load::<Config>();
    cli::serve_loaded(
        "edgesync-reconciler",
        loaded,
        |c| c.http.listen,
        service::run,
    )
}
