//! What the agent's process benchmarks share: the telemetry they feed and an offline agent.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use edgesync_testkit::{free_port, Service};

/// NDJSON: events `start..start + n`, each with two fields, a tag, a G-counter increment and a
/// rollup sample (a pump's reading).
pub fn ndjson(start: u64, n: u64) -> Vec<u8> {
    let mut out = String::new();
    for i in start..start + n {
        out.push_str(&format!(
            "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{i},\"pressure_kpa\":{:.1}}},\"tags\":{{\"site\":\"north\"}},\"ops\":[{{\"op\":\"inc\",\"key\":\"readings\",\"by\":1}},{{\"op\":\"rollup\",\"key\":\"pressure\",\"value\":101.5,\"bucket_ms\":60000}}]}}\n",
            101.0 + (i % 50) as f64 / 10.0
        ));
    }
    out.into_bytes()
}

/// The `edgesync-agent` binary this bench was built with.
pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edgesync-agent"))
}

/// The environment the shipped systemd unit (`deploy/systemd/edgesync-agent.service`) gives
/// the agent, but its log level.
pub fn unit_environment() -> Vec<(String, String)> {
    let unit = std::fs::read_to_string(edgesync_testkit::deploy("systemd/edgesync-agent.service"))
        .unwrap();
    unit.lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k != "RUST_LOG")
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An agent offline (its uplink points at a port nobody listens on), on `config` if given,
/// with `sets` after it and `env` beside it, logging warnings only.
pub fn offline_agent(
    config: Option<PathBuf>,
    sets: &[String],
    env: &[(String, String)],
) -> Service {
    let nobody = free_port().unwrap();
    let mut all = vec![
        "device.id=\"pump-0042\"".to_owned(),
        "spool.dir=\"{dir}/spool\"".to_owned(),
        format!("uplink.port={nobody}"),
    ];
    all.extend(sets.iter().cloned());
    let mut all_env = vec![("RUST_LOG".to_owned(), "warn".to_owned())];
    all_env.extend(config.map(|c| ("EDGESYNC_AGENT_CONFIG".to_owned(), c.display().to_string())));
    all_env.extend(env.iter().cloned());
    Service::start_with_env(agent_binary(), Some("run"), "bench agent", &all, &all_env).unwrap()
}

/// Posts `n` events from index `start` in requests of `per_request`.
pub fn feed(svc: &Service, start: u64, n: u64, per_request: u64) {
    let mut sent = 0;
    while sent < n {
        let k = per_request.min(n - sent);
        let (code, body) = svc
            .post(
                "/v1/events",
                "application/x-ndjson",
                &ndjson(start + sent, k),
            )
            .unwrap();
        assert_eq!(code, 200, "{body}");
        sent += k;
    }
}
