//! The agent's `service::run` called in-process, the way a test or an embedding program uses
//! it: a listener bound to port 0, a cancellation token, the shipped defaults plus a spool
//! directory. No broker is needed: writes never wait for the network, so events are answered
//! (durable in the spool) while the uplink keeps retrying, and a cancelled run returns cleanly.
#![allow(clippy::unwrap_used)]

mod common;

use common::ndjson;
use edgesync_agent::config::Config;
use edgesync_agent::service;
use edgesync_servicekit::config::ServiceConfig;
use tokio_util::sync::CancellationToken;

#[test]
fn run_in_process_answers_events_offline_and_stops_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "device.id=\"pump-ip\"".to_owned(),
        format!(
            "spool.dir={:?}",
            dir.path().join("spool").display().to_string()
        ),
        // Nothing listens here: the uplink retries in the background.
        format!("uplink.port={}", edgesync_testkit::free_port().unwrap()),
    ];
    let cfg = Config::load(None, [], &sets).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let running = rt.spawn(service::run(cfg, listener, stop.clone()));

    // The listener is bound already: the request waits in its backlog until the spool is open.
    let body = ndjson(5, 0);
    let (code, _, answer) =
        edgesync_testkit::http(addr, "POST", "/v1/events", "application/x-ndjson", &body).unwrap();
    assert_eq!(code, 200, "{answer}");
    let (code, status) = edgesync_servicekit::http::get(addr, "/v1/status").unwrap();
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["last_seq"], 5, "{status}");
    assert_eq!(status["link_up"], false, "{status}");

    stop.cancel();
    rt.block_on(running).unwrap().unwrap();
}
