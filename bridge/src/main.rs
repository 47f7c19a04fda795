//! `edgesync-bridge`: MQTT → Kafka for device batches, Kafka → MQTT for acknowledgements.

use std::process::ExitCode;

use clap::Parser;
use edgesync_bridge::config::Config;
use edgesync_bridge::service;
use edgesync_servicekit::cli::{self, ConfigArgs};

/// The edgesync bridge: subscribes to devices' batches on MQTT (shared subscription,
/// persistent session), produces each valid batch to Kafka keyed by device and acknowledges
/// it to MQTT only once Kafka has it, dead-letters bad input with its reason, and publishes the
/// reconciler's acknowledgements back to devices (retained). Runs until SIGINT or SIGTERM,
/// then drains in-flight messages.
///
/// Every setting is in the TOML configuration (see deploy/bridge.toml, which documents each
/// field and its default), overridable by EDGESYNC_BRIDGE__<SECTION>__<FIELD> environment
/// variables and then by --set flags. Unknown fields are refused.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let args: Cli = cli::parse("EDGESYNC_BRIDGE_CONFIG");
    let loaded = args.config.load::<Config>();
    cli::serve_loaded("edgesync-bridge", loaded, |c| c.http.listen, service::run)
}
