//! Proof that the harness starts real brokers, breaks real connections and cleans up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use edgesync_testkit::{
    free_port, unique, FaultProxy, Kafka, Managed, Mosquitto, MosquittoOptions, ProcessSpec, Ready,
};
use rumqttc::{Event, Packet, QoS};

const T: Duration = Duration::from_secs(20);

#[test]
fn mqtt_qos1_and_retained_messages_flow_through_mosquitto() {
    let m = Mosquitto::start().unwrap();
    let publisher = mqtt(m.addr(), &unique("pub"));
    assert!(publisher.connected(T));
    publisher
        .client
        .publish(
            "edgesync/v1/pump-1/ack",
            QoS::AtLeastOnce,
            true,
            b"wm=42".to_vec(),
        )
        .unwrap();
    assert!(publisher.puback(T), "QoS 1 publish acknowledged");
    // A subscriber that connects later still gets the retained message.
    let late = mqtt(m.addr(), &unique("sub"));
    assert!(late.connected(T));
    late.subscribe("edgesync/v1/+/ack", T);
    assert_eq!(
        late.message("edgesync/v1/pump-1/ack", T),
        Some((b"wm=42".to_vec(), true))
    );
    // And live QoS 1 traffic.
    publisher
        .client
        .publish(
            "edgesync/v1/pump-1/ack",
            QoS::AtLeastOnce,
            false,
            b"wm=43".to_vec(),
        )
        .unwrap();
    assert_eq!(
        late.message("edgesync/v1/pump-1/ack", T),
        Some((b"wm=43".to_vec(), false))
    );
}

#[test]
fn mosquitto_keeps_retained_messages_across_kill_9_and_restart() {
    let mut m = Mosquitto::start_with(MosquittoOptions {
        save_every_change: true,
        ..MosquittoOptions::default()
    })
    .unwrap();
    let p = mqtt(m.addr(), &unique("pub"));
    assert!(p.connected(T));
    p.client
        .publish(
            "edgesync/v1/pump-2/ack",
            QoS::AtLeastOnce,
            true,
            b"wm=7".to_vec(),
        )
        .unwrap();
    assert!(p.puback(T));
    std::thread::sleep(Duration::from_millis(1_500)); // autosave runs every second
    m.process().restart().unwrap();
    let s = mqtt(m.addr(), &unique("sub"));
    assert!(s.connected(T));
    s.subscribe("edgesync/v1/pump-2/ack", T);
    assert_eq!(
        s.message("edgesync/v1/pump-2/ack", T),
        Some((b"wm=7".to_vec(), true))
    );
}

#[test]
fn a_cut_through_the_fault_proxy_is_seen_and_heal_restores_traffic() {
    let m = Mosquitto::start().unwrap();
    let proxy = FaultProxy::start(m.addr()).unwrap();
    let c = mqtt(proxy.addr(), &unique("c"));
    assert!(c.connected(T));
    c.subscribe("x/#", T);
    proxy.cut();
    let (_, errors) = c.wait_for(Duration::from_secs(3), |_| false);
    assert!(!errors.is_empty(), "the client saw the cut");
    let accepted = proxy.accepted();
    assert!(
        !c.connected(Duration::from_secs(2)),
        "no reconnect while cut"
    );
    assert!(
        proxy.accepted() > accepted,
        "reconnect attempts were refused"
    );
    proxy.heal();
    assert!(c.connected(T), "reconnected after heal");
    c.subscribe("x/#", T);
    c.client
        .publish("x/y", QoS::AtLeastOnce, false, b"after".to_vec())
        .unwrap();
    assert_eq!(c.message("x/y", T).map(|m| m.0), Some(b"after".to_vec()));
    assert!(proxy.bytes_up() > 0 && proxy.bytes_down() > 0);
}

#[test]
fn blackhole_stalls_until_healed_and_reset_drops_connections() {
    let m = Mosquitto::start().unwrap();
    let proxy = FaultProxy::start(m.addr()).unwrap();
    proxy.blackhole();
    let c = mqtt(proxy.addr(), &unique("c"));
    assert!(
        !c.connected(Duration::from_secs(2)),
        "no CONNACK through a blackhole"
    );
    proxy.heal();
    assert!(c.connected(T), "held data went through after heal");
    proxy.reset();
    let (reconnected, errors) = c.wait_for(T, |e| matches!(e, Event::Incoming(Packet::ConnAck(_))));
    assert!(!errors.is_empty(), "the reset was seen");
    assert!(
        reconnected.is_some(),
        "new connections are accepted after a reset"
    );
}

#[test]
fn latency_and_throttle_slow_traffic_down() {
    let m = Mosquitto::start().unwrap();
    let proxy = FaultProxy::start(m.addr()).unwrap();
    proxy.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    let c = mqtt(proxy.addr(), &unique("c"));
    assert!(c.connected(T));
    // CONNECT up and CONNACK down each waited 300 ms.
    assert!(started.elapsed() >= Duration::from_millis(600));
    proxy.set_latency(Duration::ZERO);
    proxy.set_bandwidth(Some(20_000));
    c.subscribe("big", T);
    let before = Instant::now();
    c.client
        .publish("big", QoS::AtLeastOnce, false, vec![7u8; 40_000])
        .unwrap();
    assert_eq!(c.message("big", T).map(|m| m.0.len()), Some(40_000));
    // 40 kB up and 40 kB down at 20 kB/s each: at least 2 s.
    assert!(
        before.elapsed() >= Duration::from_secs(2),
        "{:?}",
        before.elapsed()
    );
    assert!(proxy.bytes_up() >= 40_000 && proxy.bytes_down() >= 40_000);
}

#[test]
fn processes_die_with_their_handles_and_with_a_panicking_test() {
    let (mp, kp) = {
        let mut m = Mosquitto::start().unwrap();
        let mut k = Kafka::start().unwrap();
        (m.process().pid().unwrap(), k.process().pid().unwrap())
    };
    assert!(gone_within(mp, Duration::from_secs(5)));
    assert!(gone_within(kp, Duration::from_secs(5)));
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let mut m = Mosquitto::start().unwrap();
        tx.send(m.process().pid().unwrap()).unwrap();
        panic!("a failing test");
    });
    assert!(r.is_err());
    assert!(gone_within(rx.recv().unwrap(), Duration::from_secs(5)));
}

/// Helper for the next test: only does something when run as a child with the variable set
/// (to the file where it reports its broker's pid).
#[test]
fn helper_holds_a_broker_until_killed() {
    let Some(report) = std::env::var_os("EDGESYNC_TESTKIT_HOLD") else {
        return;
    };
    let mut m = Mosquitto::start().unwrap();
    std::fs::write(report, m.process().pid().unwrap().to_string()).unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn processes_die_with_a_killed_test_process() {
    let report = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_holds_a_broker_until_killed",
            "--test-threads=1",
        ])
        .env("EDGESYNC_TESTKIT_HOLD", report.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    let pid: u32 = loop {
        let text = std::fs::read_to_string(report.path()).unwrap_or_default();
        if let Ok(pid) = text.trim().parse() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "the helper never started its broker"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(alive(pid));
    child.kill().unwrap(); // kill -9 of the test process itself
    child.wait().unwrap();
    assert!(
        gone_within(pid, Duration::from_secs(5)),
        "the broker outlived its test"
    );
}

#[test]
fn any_process_can_be_awaited_by_health_endpoint_killed_and_restarted() {
    let port = free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("health"), "ok").unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut p = Managed::start(ProcessSpec {
        name: "http".into(),
        program: "python3".into(),
        args: vec![
            "-m".into(),
            "http.server".into(),
            port.to_string().into(),
            "--bind".into(),
            "127.0.0.1".into(),
        ],
        cwd: dir.path().to_path_buf(),
        env: Vec::new(),
        log: dir.path().join("log"),
        ready: Ready::Http {
            addr,
            path: "/health".into(),
        },
    })
    .unwrap();
    let first = p.pid().unwrap();
    p.kill9();
    assert!(!p.is_running() && gone_within(first, Duration::from_secs(5)));
    p.restart().unwrap();
    assert!(p.is_running() && p.pid() != Some(first));
    // A process that exits before it is ready is reported with its log.
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let bad = Managed::start(ProcessSpec {
        name: "false".into(),
        program: "sh".into(),
        args: vec!["-c".into(), "echo starting; exit 3".into()],
        cwd: dir.path().to_path_buf(),
        env: Vec::new(),
        log: dir.path().join("bad.log"),
        ready: Ready::Tcp(nobody),
    })
    .unwrap_err();
    let msg = bad.to_string();
    assert!(msg.contains("exited") && msg.contains("starting"), "{msg}");
}
