//! The `edgesync-agent` binary as ops run it: configured by file and flags, fed over HTTP and
//! a local MQTT broker, syncing to a real Mosquitto where a test subscriber plays the server,
//! killed with `kill -9`, inspected with its CLI.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http, ndjson, serve, Seen};
use edgesync_core::Crdt;
use edgesync_testkit::{
    free_port, wait_until, FaultProxy, Managed, Mosquitto, MosquittoOptions, ProcessSpec, Ready,
    TestPki,
};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_edgesync-agent");

/// A running agent process with its own directory, config file and HTTP port.
struct AgentProc {
    process: Managed,
    http: SocketAddr,
    dir: TempDir,
}

impl AgentProc {
    /// Starts `edgesync-agent run` for `device`, uplink to `broker`, plus `sets` flags.
    fn start(device: &str, broker: SocketAddr, sets: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let http = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[device]\nid = \"{device}\"\n[spool]\ndir = \"{}\"\n[uplink]\nhost = \"{}\"\nport = {}\n\
                 keep_alive_secs = 5\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\nresend_timeout_ms = 5000\n\
                 [http]\nlisten = \"{http}\"\n",
                dir.path().join("spool").display(),
                broker.ip(),
                broker.port()
            ),
        )
        .unwrap();
        let mut args: Vec<std::ffi::OsString> =
            vec!["run".into(), "--config".into(), config.into()];
        for s in sets {
            args.push("--set".into());
            args.push((*s).into());
        }
        let process = Managed::start(ProcessSpec {
            name: format!("edgesync-agent {device}"),
            program: PathBuf::from(BIN),
            args,
            cwd: dir.path().to_owned(),
            env: vec![("RUST_LOG".into(), "info".into())],
            log: dir.path().join("agent.log"),
            ready: Ready::Http {
                addr: http,
                path: "/healthz".into(),
            },
        })
        .unwrap();
        Self { process, http, dir }
    }

    fn post(&self, content_type: &str, body: &[u8]) -> (u16, String, String) {
        http(self.http, "POST", "/v1/events", content_type, body).unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let (code, _, body) = http(self.http, "GET", "/v1/status", "text/plain", b"").unwrap();
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn metrics(&self) -> String {
        let (code, _, body) = http(self.http, "GET", "/metrics", "text/plain", b"").unwrap();
        assert_eq!(code, 200);
        body
    }

    /// Runs the CLI against this agent's config.
    fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join("agent.toml"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.split([' ', '{']).next() == Some(name) && (labels.is_empty() || l.contains(labels))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{text}"))
}

/// A broker address where nothing listens: the uplink stays down.
fn nowhere() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()))
}

#[test]
fn malformed_ingest_is_refused_with_the_reason_and_nothing_is_stored() {
    let a = AgentProc::start("pump-bad", nowhere(), &["http.max_body_bytes=20000"]);
    let ok = br#"{"stream":"pump.telemetry","fields":{"a":1}}"#;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("application/json", b"{not json".to_vec(), 400, "not JSON"),
        ("application/json", br#"{"stream":"Bad Stream"}"#.to_vec(), 400, "stream"),
        ("application/json", br#"[{"stream":"s"},{"stream":"s","fields":{"a":null}}]"#.to_vec(), 400, "null"),
        ("application/json", br#"{"stream":"s","fields":{"a":1},"extra":2}"#.to_vec(), 400, "unknown field"),
        ("application/x-ndjson", b"{\"stream\":\"s\"}\n{\"stream\":\"s\",\"ops\":[{\"op\":\"inc\",\"key\":\"k\",\"by\":-1}]}\n".to_vec(), 400, "invalid value"),
        ("application/json", br#"[{"stream":"s","ops":[{"op":"inc","key":"k","by":1}]},{"stream":"s","ops":[{"op":"mv","key":"k","value":1}]}]"#.to_vec(), 400, "G_COUNTER"),
        ("application/json", vec![b' '; 30_000], 413, ""),
    ];
    for (ct, body, code, why) in cases {
        let (got, _, text) = a.post(ct, &body);
        assert_eq!(got, code, "{text}");
        assert!(text.contains(why), "{text} should say {why}");
        if code == 400 {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(v["index"].is_u64(), "{text}");
        }
    }
    assert_eq!(a.status()["last_seq"], 0, "a refused request consumed seqs");
    let (code, _, text) = a.post("application/json", ok);
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["first_seq"].as_u64(), v["last_seq"].as_u64()),
        (Some(1), Some(1))
    );
    let m = a.metrics();
    assert!(
        metric(
            &m,
            "edgesync_agent_rejected_events_total",
            "reason=\"invalid\""
        ) >= 5.0
    );
}

#[test]
fn quota_block_answers_503_with_retry_after_and_counts_it() {
    let a = AgentProc::start(
        "pump-block",
        nowhere(),
        &["spool.max_bytes=30000", "spool.policy=block"],
    );
    let mut refused = None;
    for i in 0..200 {
        let (code, head, body) = a.post("application/x-ndjson", &ndjson(10, i * 10));
        match code {
            200 => {}
            503 => {
                refused = Some((head, body));
                break;
            }
            other => panic!("{other}: {body}"),
        }
    }
    let (head, body) = refused.expect("the quota was never reached");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("spool full"), "{body}");
    let before = a.status()["last_seq"].as_u64().unwrap();
    assert_eq!(a.post("application/x-ndjson", &ndjson(10, 0)).0, 503);
    assert_eq!(
        a.status()["last_seq"].as_u64().unwrap(),
        before,
        "blocked events got seqs"
    );
    assert!(a.status()["refused_appends"].as_u64().unwrap() >= 2);
    assert!(
        metric(
            &a.metrics(),
            "edgesync_agent_rejected_events_total",
            "reason=\"full\""
        ) >= 20.0
    );
}

#[test]
fn quota_drop_newest_answers_202_and_counts_every_drop() {
    let a = AgentProc::start(
        "pump-newest",
        nowhere(),
        &["spool.max_bytes=30000", "spool.policy=drop-newest"],
    );
    let mut dropped = 0;
    for i in 0..200 {
        let (code, _, body) = a.post("application/x-ndjson", &ndjson(10, i * 10));
        match code {
            200 => {}
            202 => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                dropped += v["dropped"].as_u64().unwrap();
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(dropped > 0, "the quota was never reached");
    assert_eq!(
        a.status()["dropped"]["quota_newest"].as_u64(),
        Some(dropped)
    );
    let m = a.metrics();
    assert_eq!(
        metric(&m, "edgesync_agent_dropped_events_total", "quota_newest"),
        dropped as f64
    );
    assert!(
        a.log().contains("policy drop-newest"),
        "drops are not logged"
    );
}

#[test]
fn quota_drop_oldest_tells_the_server_exactly_what_was_dropped() {
    let m = Mosquitto::start().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen));
    let proxy = FaultProxy::start(m.addr()).unwrap();
    proxy.cut();
    let a = AgentProc::start(
        "pump-oldest",
        proxy.addr(),
        &["spool.max_bytes=30000", "spool.policy=drop-oldest"],
    );
    let mut stored = 0;
    for i in 0..200 {
        let (code, _, body) = a.post("application/x-ndjson", &ndjson(10, i * 10));
        assert_eq!(code, 200, "{body}");
        stored += 10;
    }
    let st = a.status();
    let dropped = st["dropped"]["quota_oldest"].as_u64().unwrap();
    assert!(dropped > 0, "{st}");
    assert_eq!(st["last_seq"].as_u64(), Some(stored));
    proxy.heal();
    assert!(
        wait_until(Duration::from_secs(60), || a.status()["acked_watermark"]
            == stored),
        "not synced: {}\n{}",
        a.status(),
        a.log()
    );
    let s = seen.lock().unwrap();
    assert_eq!(
        s.dropped, dropped,
        "the server was not told about every drop"
    );
    assert_eq!(s.released.len() as u64 + dropped, stored);
    // Dropped events are gone, their effect on state is not: a delta carries the joined state,
    // so the server's counter still counts every event the device accepted.
    match &s.state["readings"] {
        Crdt::GCounter(c) => assert_eq!(c.value(), u128::from(stored)),
        other => panic!("{other:?}"),
    }
    assert!(
        a.log().contains("policy drop-oldest"),
        "drops are not logged"
    );
}

#[test]
fn kill_9_during_heavy_appends_loses_no_answered_event_and_doubles_none() {
    let m = Mosquitto::start().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen));
    let mut a = AgentProc::start("pump-kill", m.addr(), &[]);
    let answered = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = a.http;
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let (answered, stop) = (Arc::clone(&answered), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let body = ndjson(50, t * 1_000_000 + i);
                    i += 50;
                    // While the agent is down, requests fail: the producer retries.
                    let Ok((200, _, text)) =
                        http(addr, "POST", "/v1/events", "application/x-ndjson", &body)
                    else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let r = (
                        v["first_seq"].as_u64().unwrap(),
                        v["last_seq"].as_u64().unwrap(),
                    );
                    answered.lock().unwrap().push(r);
                }
            })
        })
        .collect();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        a.process.kill9();
        std::thread::sleep(Duration::from_millis(300));
        a.process.restart().unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    producers.into_iter().for_each(|p| p.join().unwrap());

    let answered = answered.lock().unwrap().clone();
    let mut seqs = BTreeSet::new();
    for (first, last) in &answered {
        for s in *first..=*last {
            assert!(seqs.insert(s), "seq {s} answered twice: a seq was reused");
        }
    }
    let max = *seqs.last().unwrap();
    assert!(
        seqs.len() > 1_000,
        "too few appends to mean anything: {}",
        seqs.len()
    );
    assert!(
        wait_until(Duration::from_secs(120), || {
            a.status()["acked_watermark"].as_u64().unwrap() >= max
        }),
        "not synced: {}",
        a.status()
    );
    let s = seen.lock().unwrap();
    let released: BTreeSet<u64> = s.released.iter().copied().collect();
    assert_eq!(released.len(), s.released.len(), "a dot was released twice");
    let lost: Vec<_> = seqs.difference(&released).take(10).collect();
    assert!(lost.is_empty(), "answered but never delivered: {lost:?}");
    // Seqs between answered ones that were never answered (in flight at the kill) are
    // delivered too: seqs stay dense, no gap holds the server back.
    assert_eq!(released.len() as u64, *released.last().unwrap());
}

#[test]
fn metrics_status_and_cli_report_the_pipeline() {
    let m = Mosquitto::start().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen));
    let mut a = AgentProc::start("pump-obs", m.addr(), &[]);
    for i in 0..20 {
        assert_eq!(a.post("application/x-ndjson", &ndjson(50, i * 50)).0, 200);
    }
    assert!(wait_until(Duration::from_secs(30), || a.status()
        ["acked_watermark"]
        == 1000));
    let st = a.status();
    assert_eq!(st["link_up"], true, "{st}");
    assert_eq!(st["spool_events"], 0, "{st}");
    let text = a.metrics();
    for (name, labels, at_least) in [
        ("edgesync_agent_published_batches_total", "", 1.0),
        ("edgesync_agent_acks_total", "", 1.0),
        (
            "edgesync_agent_ingested_events_total",
            "source=\"http\"",
            1000.0,
        ),
        ("edgesync_agent_append_latency_seconds_count", "", 20.0),
        ("edgesync_agent_spool_write_seconds_count", "", 1.0),
        ("edgesync_agent_acked_watermark", "", 1000.0),
        ("edgesync_agent_link_up", "", 1.0),
    ] {
        assert!(
            metric(&text, name, labels) >= at_least,
            "{name} < {at_least}\n{text}"
        );
    }
    let wire = metric(&text, "edgesync_agent_published_wire_bytes_total", "");
    let raw = metric(&text, "edgesync_agent_published_raw_bytes_total", "");
    assert!(wire > 0.0 && wire < raw, "wire {wire} raw {raw}");
    assert!(!text.contains("pump-obs"), "a metric is labelled by device");

    // The CLI asks the running agent.
    let (code, out, err) = a.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"link_up\":true"), "{out}");

    // Stopped with SIGTERM: a clean exit, then the CLI reads the spool itself.
    let status = a.process.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{:?}\n{}",
        status,
        a.log()
    );
    let (code, out, err) = a.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["acked_watermark"], 1000);
    assert!(v["link_up"].is_null());
}

#[test]
fn cli_inspects_verifies_and_replays_the_spool() {
    let m = Mosquitto::start().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen));
    let proxy = FaultProxy::start(m.addr()).unwrap();
    proxy.cut();
    let mut a = AgentProc::start("pump-cli", proxy.addr(), &[]);
    assert_eq!(a.post("application/x-ndjson", &ndjson(30, 0)).0, 200);
    assert!(a.process.terminate(Duration::from_secs(10)).is_some());

    let (code, out, err) = a.cli(&["spool", "inspect", "--from", "5", "--limit", "3"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0]["next_seq"], 31);
    assert_eq!(lines[1]["seq"], 5);
    assert_eq!(lines[1]["stream"], "pump.telemetry");
    assert_eq!(lines[1]["fields"]["i"], 4);

    let (code, out, err) = a.cli(&["spool", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("clean") && out.contains("records 30"), "{out}");

    // Replay goes to the real broker (not through the cut proxy).
    let (code, out, err) = a.cli(&[
        "spool",
        "replay",
        "--from",
        "1",
        "--to",
        "12",
        "--set",
        &format!("uplink.port={}", m.addr().port()),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("12 seqs"), "{out}");
    assert!(wait_until(Duration::from_secs(10), || seen
        .lock()
        .unwrap()
        .released
        .len()
        == 12));
    assert_eq!(seen.lock().unwrap().released, (1..=12).collect::<Vec<_>>());

    // `--help` documents every command.
    let help = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for c in ["run", "status", "spool"] {
        assert!(help.contains(c), "{help}");
    }
}

#[test]
fn sensors_on_the_local_broker_are_ingested_and_bad_messages_counted() {
    let m = Mosquitto::start().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen));
    let a = AgentProc::start(
        "pump-local",
        m.addr(),
        &[
            &format!("ingest_mqtt.port={}", m.addr().port()),
            "ingest_mqtt.topics=[\"sensors/+/events\"]",
        ],
    );
    let mut o = rumqttc::MqttOptions::new("sensor-1", m.addr().ip().to_string(), m.addr().port());
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(o, 200);
    std::thread::spawn(move || for _ in conn.iter() {});
    wait_until(Duration::from_secs(10), || {
        a.log().contains("local MQTT ingest connected")
    });
    std::thread::sleep(Duration::from_millis(300)); // its subscription follows the CONNACK
    for i in 0..100 {
        let body = String::from_utf8(ndjson(1, i)).unwrap();
        client
            .publish(
                "sensors/pump/events",
                rumqttc::QoS::AtLeastOnce,
                false,
                body.trim_end(),
            )
            .unwrap();
    }
    client
        .publish(
            "sensors/pump/events",
            rumqttc::QoS::AtLeastOnce,
            false,
            "not json",
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || a.status()["acked_watermark"]
            == 100),
        "{}\n{}",
        a.status(),
        a.log()
    );
    assert!(wait_until(Duration::from_secs(10), || {
        let m = a.metrics();
        m.contains("source=\"mqtt\",reason=\"invalid\"")
            && metric(
                &m,
                "edgesync_agent_rejected_events_total",
                "source=\"mqtt\"",
            ) == 1.0
    }));
    assert_eq!(
        metric(
            &a.metrics(),
            "edgesync_agent_ingested_events_total",
            "source=\"mqtt\""
        ),
        100.0
    );
    assert_eq!(seen.lock().unwrap().released.len(), 100);
}

#[test]
fn uplink_over_mutual_tls_delivers_and_a_wrong_ca_never_connects() {
    let certs = tempfile::tempdir().unwrap();
    let pki = TestPki::create(certs.path(), "pump-tls").unwrap();
    let m = Mosquitto::start_with(MosquittoOptions {
        tls: Some((pki.clone(), true)),
        ..MosquittoOptions::default()
    })
    .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen)); // the stand-in server uses the plain listener
    let tls = m.tls_addr().unwrap();
    let ca = format!("uplink.tls.ca_file={:?}", pki.ca.display().to_string());
    let cert = format!(
        "uplink.tls.client_cert_file={:?}",
        pki.client_cert.display().to_string()
    );
    let key = format!(
        "uplink.tls.client_key_file={:?}",
        pki.client_key.display().to_string()
    );
    let a = AgentProc::start("pump-tls", tls, &[&ca, &cert, &key]);
    assert_eq!(a.post("application/x-ndjson", &ndjson(100, 0)).0, 200);
    assert!(
        wait_until(Duration::from_secs(30), || a.status()["acked_watermark"]
            == 100),
        "{}\n{}",
        a.status(),
        a.log()
    );
    assert_eq!(seen.lock().unwrap().released.len(), 100);

    // Another CA: the broker's certificate is refused and nothing is sent.
    let other = tempfile::tempdir().unwrap();
    let other_pki = TestPki::create(other.path(), "pump-tls2").unwrap();
    let ca = format!(
        "uplink.tls.ca_file={:?}",
        other_pki.ca.display().to_string()
    );
    let b = AgentProc::start("pump-tls2", tls, &[&ca, &cert, &key]);
    assert_eq!(b.post("application/x-ndjson", &ndjson(10, 0)).0, 200);
    std::thread::sleep(Duration::from_secs(2));
    let st = b.status();
    assert_eq!(st["link_up"], false, "{st}");
    assert_eq!(st["acked_watermark"], 0, "{st}");
    assert!(b.log().contains("uplink connection lost"), "{}", b.log());
}
