//! # edgesync-servicekit
//!
//! The plumbing every edgesync service (agent, bridge, reconciler) shares, so that they behave
//! the same for operators: configuration in three layers with unknown fields refused
//! ([`config`]) and from the command line ([`cli`]), shutdown on SIGINT/SIGTERM through a cancellation token ([`on_signal`]),
//! Prometheus text rendering ([`render_metrics`]) and the `/metrics` + `/healthz` endpoints
//! ([`ops`]), the TLS and credential files a configuration names ([`security`]), MQTT TLS and
//! credentials ([`mqtt`]), the one HTTP client ([`http`]) and the
//! Schema Registry client the services publish their output schemas with ([`registry`]).

pub mod cli;
pub mod config;
pub mod crash;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod mqtt;
pub mod ops;
pub mod registry;
pub mod security;

use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The environment variable that shifts [`now_ms`] by a signed number of milliseconds: the
/// seam clock-fault tests use to give one process a wrong wall clock (a gateway whose RTC
/// came back a day off after a power loss), read once per process. Unset means no shift.
pub const CLOCK_OFFSET_ENV: &str = "EDGESYNC_CLOCK_OFFSET_MS";

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it), shifted by
/// [`CLOCK_OFFSET_ENV`] when that is set.
pub fn now_ms() -> u64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let offset = *OFFSET.get_or_init(|| {
        std::env::var(CLOCK_OFFSET_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_add_signed(offset)
}

/// 64 random bits from the kernel (`/dev/urandom`): identities chosen once and stored, such as
/// a spool's incarnation or a reconciler's group instance id.
pub fn random_u64() -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The body of a service's `main`: binds `listen`, cancels a token on SIGINT/SIGTERM, runs
/// `run(listener, token)` to completion on a tokio runtime, and turns an error into a message
/// prefixed with `name` and exit code 2.
pub fn serve<F, Fut, E>(name: &str, listen: SocketAddr, run: F) -> ExitCode
where
    F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    crash::arm_from_env();
    let result = tokio::runtime::Runtime::new()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| format!("listen on {listen}: {e}"))?;
                let shutdown = CancellationToken::new();
                tokio::spawn(on_signal(shutdown.clone()));
                run(listener, shutdown).await.map_err(|e| e.to_string())
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::from(2)
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            token.cancel();
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    token.cancel();
}

/// Renders `registry` in the OpenMetrics text format.
pub fn render_metrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Content type of [`render_metrics`]' output.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
