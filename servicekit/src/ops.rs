//! The operations endpoints every service serves on its `http.listen`, and serving them:
//!
//! - `GET /metrics`: the service's registry as OpenMetrics text ([`render_metrics`]), after
//!   the service's `refresh` brought its sampled gauges (queue depths, ages) up to date;
//! - `GET /healthz`: `ok` while the process serves at all.
//!
//! A service merges its own routes (the agent's `/v1/events`, the status pages) into
//! [`router`]'s and serves the whole with [`serve`].

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{render_metrics, METRICS_CONTENT_TYPE};

/// `/metrics` of `registry` (calling `refresh` first) and `/healthz`.
pub fn router<S>(
    registry: Arc<Registry>,
    refresh: impl Fn() + Clone + Send + Sync + 'static,
) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/metrics",
            get(move || {
                refresh();
                let body = render_metrics(&registry);
                async move { ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves `app` on `listener` on its own task until `stop` is cancelled (requests in progress
/// finish); the task ends with the server's I/O error, if any.
pub fn serve(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> JoinHandle<std::io::Result<()>> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listen = %addr, "http listening");
    }
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    })
}
