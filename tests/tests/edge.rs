//! The edge side end to end on Apache Kafka: Sparkplug B sensors, driven by PyPI's
//! `pysparkplug` through Mosquitto, reach `edgesync.events` with every metric value, type and
//! time, through an agent on the edge profile (`deploy/edge-agent-small.toml`); the uplink's
//! bandwidth budget holds batches back and loses nothing; priority lanes carry alarms past a
//! telemetry backlog on a thin link (`edgesync_tests::lanes`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use edgesync_core::Value;
use edgesync_schemas::topics::kafka as topics;
use edgesync_schemas::{Codec, Limits};
use edgesync_testkit::{deploy, outside_python, wait_until, Broker, FaultProxy, Kafka, Service};
use edgesync_tests::lanes::{self, Backlog};
use edgesync_tests::{agent_sets, binary, latest_counters, status, stream_events, Fleet};

fn json_value(v: &Value) -> serde_json::Value {
    match v {
        Value::Double(d) => serde_json::json!(d),
        Value::Long(l) => serde_json::json!(l),
        Value::String(s) => serde_json::json!(s),
        Value::Bool(b) => serde_json::json!(b),
    }
}

#[test]
fn sparkplug_b_metrics_reach_the_events_topic_typed_and_timed() {
    let k = Kafka::start_on(Broker::Apache).unwrap();
    let fleet = Fleet::start(&k, "spb", 0, &[]);
    let link = FaultProxy::start(fleet.mosquitto.addr()).unwrap();
    let mut sets = agent_sets("spb-gw", &link);
    sets.extend([
        format!("ingest_mqtt.port={}", fleet.mosquitto.port()),
        "ingest_mqtt.sparkplug.stream=\"plant.sparkplug\"".into(),
        "ingest_mqtt.sparkplug.ops=[{metric=\"Outputs/Count\",op=\"inc\",key=\"{node}/{device}/count\"}]"
            .into(),
    ]);
    // The gateway runs the edge profile, as shipped.
    let profile = deploy("edge-agent-small.toml").display().to_string();
    let env = [("EDGESYNC_AGENT_CONFIG".to_owned(), profile)];
    let agent =
        Service::start_with_env(binary("edgesync-agent"), Some("run"), "spb-gw", &sets, &env)
            .unwrap();
    assert!(wait_until(Duration::from_secs(20), || agent
        .process
        .log_tail(50)
        .contains("local MQTT ingest subscribed")));

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/sparkplug_node.py");
    let addr = fleet.mosquitto.addr();
    let report = outside_python([script, &addr.ip().to_string(), &addr.port().to_string()])
        .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.process.log_tail(40)));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    let expected = report["expected"].as_array().unwrap();
    assert!(expected.len() > 260, "{}", expected.len());

    // Every metric set stored, published and acknowledged.
    let n = expected.len() as u64;
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = status(&agent);
            s["last_seq"] == n && s["acked_watermark"] == n && s["spool_events"] == 0
        }),
        "{}\n{}",
        status(&agent),
        agent.process.log_tail(40)
    );
    let codec = Codec::new(Limits::default()).unwrap();
    let recs = k
        .read_topic(topics::EVENTS, Duration::from_secs(60), |r| {
            r.len() >= expected.len()
        })
        .unwrap();
    let events: Vec<_> = recs
        .iter()
        .map(|r| codec.decode_event(&r.payload).unwrap())
        .collect();
    assert_eq!(events.len(), expected.len());
    // The script's own expectations derive names and grouping as the host does; a few literal
    // ones do not: the device's birth, then its first data by name.
    let birth = &events[1];
    assert_eq!(birth.tags.get("sp_birth").map(String::as_str), Some("true"));
    let first = &events[2];
    for (field, want) in [
        ("Inputs_Pressure", Value::Double(101.25)),
        ("Inputs_Temp", Value::Double(21.5)),
        ("Level", Value::Long(-5)),
        ("Flow", Value::Long(4_000_000_000)),
        ("Started_At", Value::Long(1_700_000_000_500)),
        ("Status", Value::String("running".into())),
        ("Running", Value::Bool(true)),
    ] {
        assert_eq!(first.fields.get(field), Some(&want), "{field}: {first:?}");
    }
    assert_eq!(
        first.tags.get("sp_device").map(String::as_str),
        Some("pump7")
    );
    for (i, (e, want)) in events.iter().zip(expected).enumerate() {
        assert_eq!(e.dot.seq, i as u64 + 1);
        assert_eq!(e.stream, "plant.sparkplug");
        let fields: serde_json::Map<_, _> = e
            .fields
            .iter()
            .map(|(k, v)| (k.clone(), json_value(v)))
            .collect();
        assert_eq!(
            serde_json::Value::Object(fields),
            want["fields"],
            "event {i}"
        );
        assert_eq!(serde_json::json!(e.tags), want["tags"], "event {i}");
    }
    // The counter op: 3 + 2 + 260 × 1 + 5.
    let states = k
        .read_topic(topics::STATE, Duration::from_secs(60), |r| {
            latest_counters(&codec, r).get("gw1/pump7/count") == Some(&270)
        })
        .unwrap();
    assert_eq!(
        latest_counters(&codec, &states).get("gw1/pump7/count"),
        Some(&270)
    );

    // Rebirths asked of the node after the gap and of the node that never was born.
    assert_eq!(report["rebirths"], serde_json::json!(["gw1", "gw2"]));
    for reason in report["counts"].as_array().unwrap() {
        let label = format!("reason=\"{}\"", reason.as_str().unwrap());
        assert!(
            agent.metric("edgesync_agent_sparkplug_problems_total", &label) >= 1.0,
            "{label}"
        );
    }
    assert!(agent.metric("edgesync_agent_sparkplug_rebirth_requests_total", "") >= 2.0);
    // Dead at the end: the node's NDEATH and the device's DDEATH.
    let s = status(&agent);
    assert_eq!(
        s["sparkplug"]["nodes"]["plant1/gw1"]["online"], false,
        "{s}"
    );
    assert_eq!(
        s["sparkplug"]["nodes"]["plant1/gw1"]["devices"]["pump7"], false,
        "{s}"
    );
    assert_eq!(
        agent.metric("edgesync_agent_sparkplug_nodes_online", ""),
        0.0
    );
    assert_eq!(
        agent.metric("edgesync_agent_sparkplug_devices_online", ""),
        0.0
    );
    assert_eq!(
        agent.metric("edgesync_agent_rejected_events_total", ""),
        0.0,
        "nothing refused whole"
    );
}

#[test]
fn the_uplink_budget_holds_batches_back_in_the_spool_and_loses_nothing() {
    let mut k = Kafka::start_on(Broker::Apache).unwrap();
    let mut f = Fleet::start(&k, "budget", 1, &[]);
    let agent = &mut f.agents[0];
    for (var, value) in [
        ("EDGESYNC_AGENT__UPLINK__MAX_BYTES_PER_SEC", "200"),
        ("EDGESYNC_AGENT__UPLINK__DAILY_BUDGET_BYTES", "2000"),
    ] {
        agent.process.set_env(var, Some(value));
    }
    agent.process.restart().unwrap();
    f.send_round(200);
    assert!(wait_until(Duration::from_secs(30), || status(&f.agents[0])
        ["acked_watermark"]
        == 200));
    // The first batch alone must leave some of the day's budget, or no rate hold could come.
    let first = f.agents[0].metric("edgesync_agent_published_wire_bytes_total", "");
    assert!(first < 1500.0, "{first}");
    // A big batch went first and left the rate bucket in debt: the next ones wait for the
    // rate, then for the day once 2,000 bytes are spent. What waits stays in the spool.
    for _ in 0..25 {
        f.send_round(20);
        std::thread::sleep(Duration::from_millis(300));
    }
    let agent = &f.agents[0];
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = status(agent);
            s["uplink_budget"]["exhausted"] == true && s["uplink_budget"]["waiting"] == true
        }),
        "{}\n{}",
        status(agent),
        agent.process.log_tail(20)
    );
    // The batch that spent the budget may still be on its way to an ack: let it settle.
    let mut s = status(agent);
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(2));
        let now = status(agent);
        if now["acked_watermark"] == s["acked_watermark"] {
            break;
        }
        s = now;
    }
    let spent = s["uplink_budget"]["spent_today_bytes"].as_f64().unwrap();
    let wire = agent.metric("edgesync_agent_published_wire_bytes_total", "");
    assert!(spent >= 2000.0 && spent == wire, "{s} {wire}");
    assert!(
        s["acked_watermark"].as_u64() < s["last_seq"].as_u64(),
        "{s}"
    );
    assert!(s["spool_events"].as_u64().unwrap() > 0, "{s}");
    for reason in ["rate", "daily"] {
        let label = format!("reason=\"{reason}\"");
        let holds = agent.metric("edgesync_agent_uplink_budget_holds_total", &label);
        assert!(holds >= 1.0, "{reason}");
    }
    // Nothing more goes while the day's budget is spent.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(agent)["acked_watermark"], s["acked_watermark"]);
    // A link lost while a batch is held: the agent neither spins nor fails to come back.
    let pid = agent.process.pid().unwrap();
    let reconnects = agent.metric("edgesync_agent_reconnects_total", "");
    f.links[0].cut();
    let cpu = edgesync_testkit::cpu::process_secs(pid);
    std::thread::sleep(Duration::from_secs(5));
    let busy = edgesync_testkit::cpu::process_secs(pid) - cpu;
    assert!(
        busy < 1.0,
        "{busy} CPU seconds in 5 s while the link was down"
    );
    f.links[0].heal();
    assert!(wait_until(Duration::from_secs(30), || agent
        .metric("edgesync_agent_reconnects_total", "")
        > reconnects
        && status(agent)["uplink_budget"]["waiting"] == true));
    // The day's count outlives a restart: still spent, nothing more goes.
    let acked = status(agent)["acked_watermark"].clone();
    let agent = &mut f.agents[0];
    agent.process.restart().unwrap();
    let agent = &f.agents[0];
    assert!(
        wait_until(Duration::from_secs(30), || {
            let b = &status(agent)["uplink_budget"];
            b["exhausted"] == true && b["spent_today_bytes"].as_f64() >= Some(2000.0)
        }),
        "{}",
        status(agent)
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(status(agent)["acked_watermark"], acked);
    // Lifted, the rest drains, every event once.
    let agent = &mut f.agents[0];
    agent
        .process
        .set_env("EDGESYNC_AGENT__UPLINK__DAILY_BUDGET_BYTES", None);
    agent.process.restart().unwrap();
    f.assert_converged(&mut k, Duration::from_secs(120));
}

#[test]
fn priority_lanes_put_alarms_ahead_of_a_backlog_on_a_thin_link_and_lose_nothing() {
    let mut k = Kafka::start_on(Broker::Apache).unwrap();
    let mut f = Fleet::start(&k, "lanes", 1, &[]);
    f.replace_agent(0, &lanes::alarm_lane_sets());
    f.send_round(50);
    f.send_stream(lanes::ALARM, 5);
    let alarm_seqs = f.answered_on("lanes-1", lanes::ALARM_LANE);
    assert_eq!(alarm_seqs, (1..=5).collect::<Vec<_>>(), "its own seqs");
    // One request of both lanes: each part stored on its lane, with that lane's seqs.
    f.send_made(10, |d, start, n| {
        let alarms = stream_events(lanes::ALARM, d, start + n, 2);
        [lanes::pump_readings(d, start, n), alarms].concat()
    });
    let alarm_seqs = f.answered_on("lanes-1", lanes::ALARM_LANE);
    assert_eq!(alarm_seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(f.answered_on("lanes-1", "default").len(), 60);
    // The bytes each lane published are the bytes the server's ledger has for its replica.
    let agent = &f.agents[0];
    let same_bytes = || {
        let s = status(agent);
        let ledger = status(&f.reconciler);
        ["alarm", "default"].iter().all(|lane| {
            let inc = s["lanes"][lane]["incarnation"].as_u64();
            let label = format!("lane=\"{lane}\"");
            let sent = agent.metric("edgesync_agent_lane_published_wire_bytes_total", &label);
            let line = ledger["devices"].as_array().into_iter().flatten();
            let got = line
                .filter(|l| l["incarnation"].as_u64() == inc)
                .find_map(|l| l["wire_bytes"].as_f64());
            sent > 0.0 && got == Some(sent)
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), same_bytes),
        "{}\n{}",
        status(agent),
        status(&f.reconciler)
    );
    // Ten minutes of telemetry and alarms behind a cut link, then 16 KiB/s.
    let backlog = Backlog {
        minutes: 10,
        telemetry_per_sec: 10,
        bytes_per_sec: 16 << 10,
        fresh_alarms: 2,
    };
    let d = lanes::drain_after_outage(&mut f, backlog, true);
    eprintln!("{d:?}");
    let s = status(&f.agents[0]);
    assert!(d.telemetry_left_at_alarms > 0.5, "{d:?}\n{s}");
    assert_eq!(d.fresh_ahead_of_backlog, 2, "{d:?}\n{s}");
    f.links[0].set_bandwidth(None);

    // A spent daily budget holds telemetry back; alarms still go.
    let agent = &mut f.agents[0];
    let budget = "EDGESYNC_AGENT__UPLINK__DAILY_BUDGET_BYTES";
    agent.process.set_env(budget, Some("1"));
    agent.process.restart().unwrap();
    f.send_round(100);
    let agent = &f.agents[0];
    assert!(wait_until(Duration::from_secs(30), || status(agent)
        ["uplink_budget"]["exhausted"]
        == true));
    f.send_round(100);
    f.send_stream(lanes::ALARM, 3);
    let last_alarm = *f.answered_on("lanes-1", lanes::ALARM_LANE).last().unwrap();
    let agent = &f.agents[0];
    assert!(
        wait_until(Duration::from_secs(30), || status(agent)["lanes"]
            [lanes::ALARM_LANE]["acked_watermark"]
            == last_alarm),
        "{}",
        status(agent)
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = status(agent);
    assert!(
        s["lanes"]["default"]["unacked_seqs"].as_u64() > Some(0),
        "{s}"
    );
    assert_eq!(s["uplink_budget"]["waiting"], true, "{s}");
    let holds = agent.metric(
        "edgesync_agent_uplink_budget_holds_total",
        "reason=\"daily\"",
    );
    assert!(holds >= 1.0, "{holds}");
    let agent = &mut f.agents[0];
    agent.process.set_env(budget, None);
    agent.process.restart().unwrap();
    f.assert_converged(&mut k, Duration::from_secs(120));
}
