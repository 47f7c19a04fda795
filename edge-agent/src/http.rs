//! The local HTTP endpoint: event ingest, Prometheus `/metrics`, and status.
//!
//! | route | |
//! |---|---|
//! | `POST /v1/events` | one JSON event, a JSON array, or NDJSON (`Content-Type: application/x-ndjson`) |
//! | `GET /v1/status` | spool depth and bytes, oldest unacknowledged age, watermark, link state, uplink budget, Sparkplug B nodes and devices online (JSON) |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | `ok` once the spool is open |
//!
//! Ingest answers `200` with the seqs once the events are durable; `202` when the drop-newest
//! policy dropped them; `400` with the index of the first bad event and the reason (nothing of
//! the request is stored); `413` for a body or request over the limits; `503` with
//! `Retry-After` when the spool is full under the block policy or unavailable.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::ingest::json::{parse_json, parse_ndjson};
use crate::ingest::sparkplug::Sparkplug;
use crate::ingest::{Accepted, Ingest, IngestError};
use crate::metrics::AgentMetrics;
use crate::spool::{Clock, Spool};
use edgesync_servicekit::ops;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Where events go.
    pub ingest: Ingest,
    /// For status and metrics.
    pub spool: Arc<Spool>,
    /// The registry `/metrics` renders.
    pub registry: Arc<Registry>,
    /// Refreshed before every scrape.
    pub metrics: Arc<AgentMetrics>,
    /// Wall clock (ms).
    pub clock: Clock,
    /// The device, for status.
    pub device: String,
    /// The quota policy, for status.
    pub policy: &'static str,
    /// Decodes the stored states for their digests in status.
    pub codec: Arc<edgesync_schemas::Codec>,
    /// The Sparkplug B nodes and devices, for status.
    pub sparkplug: Option<Arc<std::sync::Mutex<Sparkplug>>>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("device", &self.device)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
}

/// The router, with bodies limited to `max_body_bytes`.
pub fn router(state: HttpState, max_body_bytes: usize) -> Router {
    let (spool, metrics, clock) = (
        Arc::clone(&state.spool),
        Arc::clone(&state.metrics),
        state.clock.clone(),
    );
    let refresh = move || metrics.refresh(&spool, clock());
    Router::new()
        .route("/v1/events", post(events))
        .route("/v1/status", get(status))
        .merge(ops::router(Arc::clone(&state.registry), refresh))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn events(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // A body over the limit (or cut off) is refused here, before parsing: counted like any
    // other refusal, as one event (its events were never read).
    let body = match body {
        Ok(b) => b,
        Err(r) => {
            let reason = match r.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                _ => "invalid",
            };
            s.metrics.refused("http", reason, 1);
            return error(r.status(), None, &r.body_text());
        }
    };
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("ndjson"));
    let parsed = if ndjson {
        parse_ndjson(&body)
    } else {
        parse_json(&body)
    };
    let events = match parsed {
        Ok(e) => e,
        Err(e) => {
            s.metrics.refused("http", "invalid", 1);
            return error(StatusCode::BAD_REQUEST, Some(e.index), &e.reason);
        }
    };
    let n = events.len();
    match s.ingest.append("http", events).await {
        Ok(Accepted::Stored(r)) => (
            StatusCode::OK,
            Json(json!({"stored": n, "first_seq": r.start, "last_seq": r.end})),
        )
            .into_response(),
        Ok(Accepted::Empty) => (StatusCode::OK, Json(json!({"stored": 0}))).into_response(),
        Ok(Accepted::Dropped { events }) => (
            StatusCode::ACCEPTED,
            Json(json!({"stored": 0, "dropped": events,
                        "reason": "spool full: dropped by the drop-newest policy"})),
        )
            .into_response(),
        Err(e) => {
            let (code, index) = match &e {
                IngestError::Invalid { index, .. } => (StatusCode::BAD_REQUEST, Some(*index)),
                IngestError::TooMany { .. } | IngestError::TooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, None)
                }
                IngestError::Full { .. } | IngestError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, None)
                }
            };
            let mut r = error(code, index, &e.to_string());
            if code == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            r
        }
    }
}

fn error(code: StatusCode, index: Option<usize>, reason: &str) -> Response {
    let body = match index {
        Some(i) => json!({"error": reason, "index": i}),
        None => json!({"error": reason}),
    };
    (code, Json(body)).into_response()
}

async fn status(State(s): State<HttpState>) -> Response {
    // The state digests read every stored state from RocksDB: off the runtime thread.
    let link_up = Some(s.metrics.link_up.get() == 1);
    let doc = tokio::task::spawn_blocking(move || {
        let mut doc = status_json(
            &s.spool,
            &s.codec,
            &s.device,
            s.policy,
            link_up,
            (s.clock)(),
        );
        let m = &s.metrics;
        doc["uplink_budget"] = json!({
            "spent_today_bytes": m.budget_spent_today.get(),
            "exhausted": m.budget_exhausted.get() == 1,
            "waiting": m.budget_waiting.get() == 1,
        });
        if let Some(sp) = &s.sparkplug {
            doc["sparkplug"] = sp.lock().unwrap_or_else(|e| e.into_inner()).status();
        }
        doc
    })
    .await;
    match doc {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, None, &e.to_string()),
    }
}

/// The status document (also printed by `edgesync-agent status` when the agent is stopped,
/// with `link_up` unknown).
pub fn status_json(
    spool: &Spool,
    codec: &edgesync_schemas::Codec,
    device: &str,
    policy: &str,
    link_up: Option<bool>,
    now_ms: u64,
) -> serde_json::Value {
    let m = spool.meta();
    let st = spool.stats();
    json!({
        "device": device,
        "incarnation": m.incarnation.get(),
        "last_seq": m.next_seq - 1,
        "acked_watermark": m.acked,
        "unacked_seqs": (m.next_seq - 1).saturating_sub(m.acked),
        "spool_events": m.events,
        "spool_bytes": m.bytes,
        "oldest_unacked_age_ms": m.oldest_ms.map(|o| now_ms.saturating_sub(o)),
        "policy": policy,
        "link_up": link_up,
        "dropped": {
            "quota_newest": st.dropped_newest,
            "quota_oldest": st.dropped_oldest_quota,
            "age_oldest": st.dropped_oldest_age,
        },
        "refused_appends": st.refused,
        "state_digests": crate::ingest::state_digests(spool, codec),
    })
}
