//! The command line every service shares: where the configuration comes from
//! (`--config FILE`, also read from the service's `<NAME>_CONFIG` variable, and repeatable
//! `--set path=value`), and `main`'s one path from a loaded configuration to a running
//! service. Each binary keeps its own `Parser` struct for its help text and flattens
//! [`ConfigArgs`] into it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ServiceConfig};

/// Where a service's configuration comes from.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (the service's file in deploy/ documents each field and its
    /// default).
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// Override one setting, e.g. `--set http.listen=0.0.0.0:9500` (repeatable;
    /// applied after the file and the environment).
    #[arg(long = "set", value_name = "PATH=VALUE", global = true)]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// Loads the configuration from these arguments and the process environment.
    pub fn load<C: ServiceConfig>(&self) -> Result<C, ConfigError> {
        C::load(self.config.as_deref(), std::env::vars(), &self.set)
    }
}

/// Parses the command line into `T` (which flattens [`ConfigArgs`]); `--config` also reads the
/// environment variable `config_env`. Exits with clap's message on a bad command line.
pub fn parse<T: Parser>(config_env: &'static str) -> T {
    let matches = T::command()
        .mut_arg("config", |a| a.env(config_env))
        .get_matches();
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// A service's `main` once its configuration is loaded: starts logging, refuses a bad
/// configuration with exit code 2, and otherwise [`serve`](crate::serve)s `run` on the address
/// `listen` picks from the configuration.
pub fn serve_loaded<C, E, F, Fut, R>(
    name: &str,
    loaded: Result<C, E>,
    listen: impl FnOnce(&C) -> SocketAddr,
    run: F,
) -> ExitCode
where
    E: std::fmt::Display,
    F: FnOnce(C, tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), R>>,
    R: std::fmt::Display,
{
    crate::init_logging();
    match loaded {
        Ok(cfg) => {
            let addr = listen(&cfg);
            crate::serve(name, addr, |l, s| run(cfg, l, s))
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}
