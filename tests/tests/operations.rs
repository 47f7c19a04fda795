//! What ops run beside the services, checked against the real thing: the Prometheus config and
//! alert rules in `deploy/prometheus/` (promtool, the rules' own unit tests, then a real
//! Prometheus scraping the real services), the Grafana dashboard in `deploy/grafana/` (every
//! query evaluated by that Prometheus) and the systemd units in `deploy/systemd/`
//! (`systemd-analyze verify`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use edgesync_testkit::{deploy, workspace_binary, Kafka, Mosquitto, Prometheus, Service};

/// Runs a checking tool; its failure output is the assertion message.
fn check(program: &str, args: &[&Path]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{program} {args:?}:\n{text}");
}

#[test]
fn the_prometheus_config_and_rules_pass_promtool_and_their_unit_tests() {
    check(
        "promtool",
        &[
            Path::new("check"),
            Path::new("config"),
            &deploy("prometheus/prometheus.yml"),
        ],
    );
    check(
        "promtool",
        &[
            Path::new("test"),
            Path::new("rules"),
            &deploy("prometheus/edgesync-rules.test.yml"),
        ],
    );
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let bin = workspace_binary("edgesync-agent");
    let bin_dir = format!("{}/", bin.parent().unwrap().display());
    for unit in ["edgesync-agent", "edgesync-bridge", "edgesync-reconciler"] {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}.service"))).unwrap();
        assert!(text.contains("ExecStart=/usr/local/bin/"), "{unit}");
        // The built binaries stand in for the installed ones: verify checks they exist.
        let copy = dir.path().join(format!("{unit}.service"));
        std::fs::write(&copy, text.replace("/usr/local/bin/", &bin_dir)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze (scripts/setup installs systemd)");
        // Warnings (unknown keys, bad values) count as failures too.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{unit}: {stderr}"
        );
    }
}

/// Every sample name a `/metrics` text exposes.
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The edgesync metric names a rules file or dashboard refers to.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("edgesync_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match ok() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[test]
fn prometheus_scrapes_every_service_and_evaluates_every_rule_and_panel() {
    let m = Mosquitto::start().unwrap();
    // Durability is not under test here.
    let k = Kafka::start().unwrap();
    let kafka = format!("kafka.bootstrap_servers={}", k.bootstrap());
    let reconciler = Service::start(
        workspace_binary("edgesync-reconciler"),
        None,
        "reconciler",
        &[
            kafka.clone(),
            "kafka.partitions=2".into(),
            "state_dir=\"{dir}/state\"".into(),
        ],
    )
    .unwrap();
    let bridge = Service::start(
        workspace_binary("edgesync-bridge"),
        None,
        "bridge",
        &[
            kafka,
            format!("mqtt.port={}", m.port()),
            "kafka.partitions=2".into(),
        ],
    )
    .unwrap();
    let agent = Service::start(
        workspace_binary("edgesync-agent"),
        Some("run"),
        "agent",
        &[
            "device.id=ops-pump-1".into(),
            "spool.dir=\"{dir}/spool\"".into(),
            format!("uplink.port={}", m.port()),
        ],
    )
    .unwrap();
    let body = "{\"stream\":\"pump.telemetry\",\"fields\":{\"rpm\":1450},\"ops\":[{\"op\":\"inc\",\"key\":\"fleet/readings\",\"by\":1}]}\n".repeat(20);
    let (status, _) = agent
        .post("/v1/events", "application/x-ndjson", body.as_bytes())
        .unwrap();
    assert_eq!(status, 200);
    wait_for(
        "events through the pipeline",
        Duration::from_secs(60),
        || {
            let n = reconciler.metric("edgesync_reconciler_events_total", "");
            if n >= 20.0 {
                Ok(())
            } else {
                Err(format!("{n} events"))
            }
        },
    );

    // Every metric the rules and the dashboard name is one the services expose.
    let mut exposed = BTreeSet::new();
    for s in [&agent, &bridge, &reconciler] {
        exposed.extend(sample_names(&s.get("/metrics").unwrap().1));
    }
    let rules_path = deploy("prometheus/edgesync-rules.yml");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/edgesync.json")).unwrap())
            .unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() > 20, "{} dashboard queries", queries.len());
    let named = referenced_names(&std::fs::read_to_string(&rules_path).unwrap())
        .into_iter()
        .chain(queries.iter().flat_map(|q| referenced_names(q)))
        .collect::<BTreeSet<_>>();
    let unknown: Vec<_> = named.difference(&exposed).collect();
    assert!(
        unknown.is_empty(),
        "not exposed by any service: {unknown:?}"
    );

    // The shipped config, pointed at these services, scraping and evaluating every second.
    let prometheus = Prometheus::start(&[
        ("edgesync-agent", vec![agent.http]),
        ("edgesync-bridge", vec![bridge.http]),
        ("edgesync-reconciler", vec![reconciler.http]),
    ])
    .unwrap();

    let rules = std::fs::read_to_string(&rules_path)
        .unwrap()
        .matches("- alert:")
        .count();
    wait_for(
        "every target up and every rule evaluated",
        Duration::from_secs(30),
        || {
            let v = prometheus.view().map_err(|e| e.to_string())?;
            if v.targets_up == 3 && v.rules == rules && v.unhealthy_rules.is_empty() {
                Ok(())
            } else {
                Err(format!("{v:?}"))
            }
        },
    );
    // Every dashboard query evaluates (Grafana's interval variable as a fixed window).
    for q in &queries {
        let q = q.replace("$__rate_interval", "1m");
        let v = prometheus
            .json(&Prometheus::query_path(&q))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["status"], "success", "{q}: {v}");
    }
    // And the data path reaches Prometheus.
    wait_for(
        "events visible in Prometheus",
        Duration::from_secs(30),
        || {
            let v = prometheus
                .json(&Prometheus::query_path(
                    "sum(edgesync_reconciler_events_total)",
                ))
                .map_err(|e| e.to_string())?;
            let n = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
            if n >= 20.0 {
                Ok(())
            } else {
                Err(format!("{v}"))
            }
        },
    );
}
