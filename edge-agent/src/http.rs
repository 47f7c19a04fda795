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
//! `Retry-After` when the spool is full under the block policy or unavailable. With lanes, the
//! answer has the seqs per lane (`lanes`: name → `first_seq`, `last_seq`, or `dropped`);
//! `first_seq` and `last_seq` stay at the top when one lane stored the request. A refusal of a
//! request that spans lanes lists under `stored` the lanes stored before it (only what storing
//! alone finds can do that: a lane filling up after the check, a disk error; bad input or a
//! full lane refuses the whole request first, `lanes::Intake::append`).

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
use crate::ingest::{Accepted, IngestError};
use crate::lanes::{Intake, LaneAccepted, OpenLane, Totals};
use crate::metrics::AgentMetrics;
use crate::spool::{Clock, Spool};
use edgesync_servicekit::ops;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// Where events go.
    pub intake: Intake,
    /// The lanes' spools, for status and metrics.
    pub lanes: Arc<[OpenLane]>,
    /// The registry `/metrics` renders.
    pub registry: Arc<Registry>,
    /// Refreshed before every scrape.
    pub metrics: Arc<AgentMetrics>,
    /// Wall clock (ms).
    pub clock: Clock,
    /// The device, for status.
    pub device: String,
    /// Decodes the stored states for their digests in status.
    pub codec: Arc<edgesync_schemas::Codec>,
    /// The Sparkplug B nodes and devices, for status.
    pub sparkplug: Option<Arc<std::sync::Mutex<Sparkplug>>>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("device", &self.device)
            .field("lanes", &self.lanes)
            .finish_non_exhaustive()
    }
}

/// The router, with bodies limited to `max_body_bytes`.
pub fn router(state: HttpState, max_body_bytes: usize) -> Router {
    let (lanes, metrics, clock) = (
        Arc::clone(&state.lanes),
        Arc::clone(&state.metrics),
        state.clock.clone(),
    );
    let refresh = move || metrics.refresh(&lanes, clock());
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
    match s.intake.append("http", events).await {
        Ok(parts) => answer(n, &parts),
        Err(refused) => {
            let e = &refused.error;
            let (code, index) = match e {
                IngestError::Invalid { index, .. } => (StatusCode::BAD_REQUEST, Some(*index)),
                IngestError::TooMany { .. } | IngestError::TooLarge { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, None)
                }
                IngestError::Full { .. } | IngestError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, None)
                }
            };
            let mut body = error_body(index, &e.to_string());
            if !refused.stored.is_empty() {
                body["stored"] = lanes_json(&refused.stored);
            }
            let mut r = (code, Json(body)).into_response();
            if code == StatusCode::SERVICE_UNAVAILABLE {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            r
        }
    }
}

/// The answer to a request of `n` events stored (or dropped) lane by lane.
fn answer(n: usize, parts: &[LaneAccepted]) -> Response {
    let dropped: usize = parts
        .iter()
        .map(|p| match p.accepted {
            Accepted::Dropped { events } => events,
            _ => 0,
        })
        .sum();
    let mut stored = parts.iter().filter_map(|p| match p.accepted {
        Accepted::Stored(r) => Some(r),
        _ => None,
    });
    let mut body = json!({"stored": n - dropped, "lanes": lanes_json(parts)});
    if let (Some(r), None) = (stored.next(), stored.next()) {
        body["first_seq"] = json!(r.start);
        body["last_seq"] = json!(r.end);
    }
    if dropped == 0 {
        return (StatusCode::OK, Json(body)).into_response();
    }
    body["dropped"] = json!(dropped);
    body["reason"] = json!("spool full: dropped by the drop-newest policy");
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// Lane name → what its part became.
fn lanes_json(parts: &[LaneAccepted]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for p in parts {
        let v = match p.accepted {
            Accepted::Stored(r) => json!({"first_seq": r.start, "last_seq": r.end}),
            Accepted::Dropped { events } => json!({"dropped": events}),
            Accepted::Empty => json!({}),
        };
        m.insert(p.lane.to_string(), v);
    }
    serde_json::Value::Object(m)
}

fn error(code: StatusCode, index: Option<usize>, reason: &str) -> Response {
    (code, Json(error_body(index, reason))).into_response()
}

fn error_body(index: Option<usize>, reason: &str) -> serde_json::Value {
    match index {
        Some(i) => json!({"error": reason, "index": i}),
        None => json!({"error": reason}),
    }
}

async fn status(State(s): State<HttpState>) -> Response {
    // The state digests read every stored state from RocksDB: off the runtime thread.
    let link_up = Some(s.metrics.link_up.get() == 1);
    let doc = tokio::task::spawn_blocking(move || {
        let mut doc = status_json(&s.lanes, &s.codec, &s.device, link_up, (s.clock)());
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
/// with `link_up` unknown). At the top, the spool figures add up every lane's, and the
/// replica's own (`incarnation`, `last_seq`, `acked_watermark`, `policy`) are the `default`
/// lane's; `lanes` has each lane's, by name.
pub fn status_json(
    lanes: &[OpenLane],
    codec: &edgesync_schemas::Codec,
    device: &str,
    link_up: Option<bool>,
    now_ms: u64,
) -> serde_json::Value {
    let mut doc = json!({"device": device, "link_up": link_up});
    let mut per_lane = serde_json::Map::new();
    for l in lanes {
        let lane = lane_json(l, now_ms);
        if l.is_default() {
            for k in ["incarnation", "last_seq", "acked_watermark", "policy"] {
                doc[k] = lane[k].clone();
            }
        }
        per_lane.insert(l.name.to_string(), lane);
    }
    let t = Totals::of(lanes, now_ms);
    doc["unacked_seqs"] = json!(t.unacked);
    doc["spool_events"] = json!(t.events);
    doc["spool_bytes"] = json!(t.bytes);
    doc["oldest_unacked_age_ms"] = json!(t.oldest_age_ms);
    doc["dropped"] = dropped_json(&t.stats);
    doc["refused_appends"] = json!(t.stats.refused);
    let spools = lanes.iter().map(|l| &*l.spool);
    doc["state_digests"] = json!(crate::ingest::state_digests(spools, codec));
    doc["lanes"] = serde_json::Value::Object(per_lane);
    doc
}

fn dropped_json(st: &crate::spool::SpoolStats) -> serde_json::Value {
    json!({
        "quota_newest": st.dropped_newest,
        "quota_oldest": st.dropped_oldest_quota,
        "age_oldest": st.dropped_oldest_age,
    })
}

/// One lane's part of the status document.
fn lane_json(l: &OpenLane, now_ms: u64) -> serde_json::Value {
    let spool: &Spool = &l.spool;
    let m = spool.meta();
    let st = spool.stats();
    json!({
        "incarnation": m.incarnation.get(),
        "last_seq": m.next_seq - 1,
        "acked_watermark": m.acked,
        "unacked_seqs": m.unacked(),
        "spool_events": m.events,
        "spool_bytes": m.bytes,
        "oldest_unacked_age_ms": m.oldest_age_ms(now_ms),
        "policy": l.policy.name(),
        "weight": l.weight,
        "bypass_daily_budget": l.bypass_daily_budget,
        "dropped": dropped_json(&st),
        "refused_appends": st.refused,
    })
}
