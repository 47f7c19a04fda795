//! `edgesync-bridge`: MQTT → Kafka for device batches, Kafka → MQTT for acknowledgements.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use edgesync_bridge::config::Config;
use edgesync_bridge::service;

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
    /// TOML configuration file.
    #[arg(short, long, env = "EDGESYNC_BRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. `--set kafka.bootstrap_servers=kafka-1:9092` or
    /// `--set mqtt.shared_group=` (repeatable; applied after the file and the environment).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    edgesync_servicekit::init_logging();
    let cfg = match Config::load(cli.config.as_deref(), std::env::vars(), &cli.set) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgesync-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let listen = cfg.http.listen;
    edgesync_servicekit::serve("edgesync-bridge", listen, |l, s| service::run(cfg, l, s))
}
