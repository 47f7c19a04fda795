//! The uplink against a real Mosquitto, with a test subscriber playing the server: it decodes
//! batches, applies them to the protocol's server and publishes the retained ack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{fill, replica_of, serve, Seen};
use edgesync_agent::lanes::OpenLane;
use edgesync_agent::metrics::AgentMetrics;
use edgesync_agent::spool::{Spool, SpoolConfig};
use edgesync_agent::uplink::{self, UplinkConfig, UplinkDeps};
use edgesync_core::DeviceId;
use edgesync_protocol::AgentConfig;
use edgesync_schemas::{Codec, Limits};
use edgesync_testkit::{wait_until, FaultProxy, Mosquitto};
use tokio_util::sync::CancellationToken;

fn cfg(device: &str, addr: std::net::SocketAddr) -> UplinkConfig {
    UplinkConfig {
        keep_alive: Duration::from_secs(5),
        agent: AgentConfig {
            resend_timeout_ms: 5_000,
            resume_wait_ms: 3_000,
            ..AgentConfig::default()
        },
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        ..UplinkConfig::new(
            DeviceId::new(device).unwrap(),
            addr.ip().to_string(),
            addr.port(),
        )
    }
}

/// An uplink running on its own runtime until `finish`.
struct Running {
    rt: tokio::runtime::Runtime,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), uplink::UplinkError>>,
    metrics: Arc<AgentMetrics>,
}

impl Running {
    fn start(
        device: &str,
        broker: std::net::SocketAddr,
        spool: &Arc<Spool>,
        codec: Arc<Codec>,
    ) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let stop = CancellationToken::new();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(AgentMetrics::register(&mut registry));
        let deps = UplinkDeps {
            lanes: vec![OpenLane::single(Arc::clone(spool))],
            codec,
            appended: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::clone(&metrics),
        };
        let task = rt.spawn(uplink::run(cfg(device, broker), deps, stop.clone()));
        Self {
            rt,
            stop,
            task,
            metrics,
        }
    }

    /// Stops the uplink; what it counted.
    fn finish(self) -> Arc<AgentMetrics> {
        self.stop.cancel();
        self.rt.block_on(self.task).unwrap().unwrap();
        self.metrics
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
    let m = running.finish();
    assert!(done, "not synced: {:?}", spool.meta());
    let s = seen.lock().unwrap();
    assert_eq!(
        s.released,
        (1..=100_000).collect::<Vec<_>>(),
        "each event once, in order"
    );
    let (batches, acks) = (m.batches.get(), m.acks.get());
    assert!(batches >= 200 && acks > 0, "{batches} batches, {acks} acks");
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
    let m = running.finish();
    assert!(done, "not synced: {:?}", spool.meta());
    assert!(acked_at_cut < 60_000, "the cut came too late to matter");
    assert!(m.disconnects.get() >= 1, "the uplink saw the cut");
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
