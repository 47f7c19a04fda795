//! The uplink against a real Mosquitto, with a test subscriber playing the server: it decodes
//! batches, applies them to the protocol's server and publishes the retained ack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fill, replica_of};
use edgesync_agent::spool::{Spool, SpoolConfig};
use edgesync_agent::uplink::{self, UplinkConfig};
use edgesync_core::DeviceId;
use edgesync_protocol::{AgentConfig, Server, ServerConfig};
use edgesync_schemas::{Ack, Codec, Limits};
use edgesync_testkit::{unique, FaultProxy, Mosquitto};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

#[derive(Default)]
struct Seen {
    released: Vec<u64>,
    batches: u64,
    /// Batches that arrived wholly at or below the watermark already acknowledged.
    stale_batches: u64,
}

/// The test's stand-in for bridge + reconciler: apply and acknowledge, retained.
fn serve(addr: std::net::SocketAddr, seen: Arc<Mutex<Seen>>) {
    let mut o = MqttOptions::new(unique("server"), addr.ip().to_string(), addr.port());
    o.set_max_packet_size(4 << 20, 4 << 20);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(o, 64);
    client
        .subscribe("edgesync/v1/+/batch", QoS::AtLeastOnce)
        .unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let mut server = Server::new(ServerConfig::default());
    std::thread::spawn(move || {
        for ev in conn.iter() {
            let Ok(Event::Incoming(Packet::Publish(p))) = ev else {
                continue;
            };
            let Ok(batch) = codec.decode_batch(&p.payload) else {
                continue;
            };
            let replica = batch.replica().clone();
            let before = server.watermark(&replica);
            let stale = batch.last_seq() <= before;
            let a = server.apply(batch, 0);
            {
                let mut s = seen.lock().unwrap();
                s.batches += 1;
                s.stale_batches += u64::from(stale);
                s.released.extend(a.released.iter().map(|e| e.dot.seq));
            }
            let ack = Ack {
                replica: replica.clone(),
                watermark: a.watermark,
                acked_at_ms: 0,
            };
            let topic = format!("edgesync/v1/{}/ack", replica.device);
            let _ = client.publish(
                topic,
                QoS::AtLeastOnce,
                true,
                codec.encode_ack(&ack).unwrap(),
            );
        }
    });
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

fn cfg(device: &str, addr: std::net::SocketAddr) -> UplinkConfig {
    UplinkConfig {
        device: DeviceId::new(device).unwrap(),
        host: addr.ip().to_string(),
        port: addr.port(),
        keep_alive: Duration::from_secs(5),
        agent: AgentConfig {
            resend_timeout_ms: 5_000,
            resume_wait_ms: 3_000,
            ..AgentConfig::default()
        },
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
    }
}

/// An uplink running on its own runtime until `finish`.
struct Running {
    rt: tokio::runtime::Runtime,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<uplink::UplinkStats, uplink::UplinkError>>,
}

impl Running {
    fn start(
        device: &str,
        broker: std::net::SocketAddr,
        spool: &Arc<Spool>,
        codec: Arc<Codec>,
    ) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = rt.spawn(uplink::run(
            cfg(device, broker),
            Arc::clone(spool),
            codec,
            Arc::new(tokio::sync::Notify::new()),
            stopped,
        ));
        Self { rt, stop, task }
    }

    fn finish(self) -> uplink::UplinkStats {
        self.stop.send(true).unwrap();
        self.rt.block_on(self.task).unwrap().unwrap()
    }
}

#[test]
fn events_appended_offline_are_all_delivered_once_and_trimmed_after_connect() {
    let m = Mosquitto::start().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen));
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), SpoolConfig::default()).unwrap());
    let codec = Arc::new(Codec::new(Limits::default()).unwrap());
    let replica = replica_of(&spool, "pump-7");
    fill(&spool, &codec, &replica, 100_000);

    let running = Running::start("pump-7", m.addr(), &spool, codec);
    let done = wait_until(Duration::from_secs(120), || {
        let meta = spool.meta();
        meta.events == 0 && meta.acked == 100_000
    });
    let stats = running.finish();
    assert!(done, "not synced: {:?}", spool.meta());
    let s = seen.lock().unwrap();
    assert_eq!(
        s.released,
        (1..=100_000).collect::<Vec<_>>(),
        "each event once, in order"
    );
    assert!(stats.batches >= 200 && stats.acks > 0, "{stats:?}");
}

#[test]
fn a_cut_mid_send_resumes_from_the_watermark_with_no_gap() {
    let m = Mosquitto::start().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    serve(m.addr(), Arc::clone(&seen));
    let proxy = FaultProxy::start(m.addr()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), SpoolConfig::default()).unwrap());
    let codec = Arc::new(Codec::new(Limits::default()).unwrap());
    let replica = replica_of(&spool, "pump-8");
    fill(&spool, &codec, &replica, 60_000);
    proxy.set_bandwidth(Some(400_000)); // slow enough to cut in the middle

    let running = Running::start("pump-8", proxy.addr(), &spool, codec);
    assert!(wait_until(Duration::from_secs(60), || spool.meta().acked > 5_000));
    let acked_at_cut = spool.meta().acked;
    proxy.cut();
    std::thread::sleep(Duration::from_secs(2));
    proxy.heal();
    proxy.set_bandwidth(None);
    let done = wait_until(Duration::from_secs(120), || spool.meta().events == 0);
    let stats = running.finish();
    assert!(done, "not synced: {:?}", spool.meta());
    assert!(acked_at_cut < 60_000, "the cut came too late to matter");
    assert!(stats.disconnects >= 1, "the uplink saw the cut: {stats:?}");
    let s = seen.lock().unwrap();
    assert_eq!(
        s.released,
        (1..=60_000).collect::<Vec<_>>(),
        "no gap, nothing twice"
    );
    // The agent resumed at the server's retained watermark: nothing acknowledged went again.
    assert_eq!(
        s.stale_batches, 0,
        "acknowledged data was re-sent ({} batches)",
        s.batches
    );
}
