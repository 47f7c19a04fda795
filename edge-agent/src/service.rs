//! The agent as a service: spool, ingest, uplink, HTTP and the local MQTT subscription wired
//! together, running until a cancellation token fires, then stopping within a grace period.
//!
//! Each lane (`lanes.rs`) has its own spool and ingest thread; one uplink serves them all.
//!
//! Shutdown order: stop taking new work (HTTP, local MQTT), let the ingest thread answer what
//! is queued, stop the uplink (it disconnects cleanly), then close the spool. Every answered
//! event is durable before its answer, so a shutdown that overruns the grace period, or a
//! `kill -9`, loses nothing that was acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesync_schemas::{Codec, Limits};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::budget::Spent;
use crate::config::{Config, ConfigError};
use crate::http::{router, HttpState};
use crate::ingest::sparkplug::Sparkplug;
use crate::ingest::{DeviceShared, Ingest, StartError};
use crate::lanes::{Intake, LaneSection, OpenLane, Router};
use crate::metrics::AgentMetrics;
use crate::mqtt_ingest::{self, MqttIngestConfig};
use crate::spool::{system_clock, Clock, Spool, SpoolError};
use crate::uplink::{self, UplinkConfig, UplinkDeps, UplinkError};
use edgesync_servicekit::mqtt::MqttSecurity;
use edgesync_servicekit::security::SecurityFiles;

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad configuration (including unreadable TLS or password files).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The spool could not be opened.
    #[error("spool {dir}: {source}")]
    Spool {
        /// Its directory.
        dir: String,
        /// Why.
        source: SpoolError,
    },
    /// Ingest could not start.
    #[error("ingest: {0}")]
    Ingest(#[from] StartError),
    /// The uplink stopped with an error.
    #[error("uplink: {0}")]
    Uplink(#[from] uplink::UplinkError),
    /// The codec could not be built.
    #[error("codec: {0}")]
    Codec(#[source] edgesync_schemas::SchemaError),
    /// The HTTP server failed.
    #[error("http: {0}")]
    Http(#[source] std::io::Error),
    /// The blocking task opening the spool panicked or was cancelled.
    #[error("opening the spool: {0}")]
    SpoolTask(#[source] tokio::task::JoinError),
}

/// The uplink settings of a configuration, with TLS and password files read.
pub fn uplink_config(cfg: &Config) -> Result<UplinkConfig, ConfigError> {
    let u = &cfg.uplink;
    let tls = u.tls.as_ref();
    let security = MqttSecurity::load(&SecurityFiles {
        username: u.username.as_deref(),
        password_file: u.password_file.as_deref(),
        ca_file: tls.map(|t| t.ca_file.as_path()),
        client_cert_file: tls.and_then(|t| t.client_cert_file.as_deref()),
        client_key_file: tls.and_then(|t| t.client_key_file.as_deref()),
    })?;
    Ok(UplinkConfig {
        device: cfg.device_id()?,
        host: u.host.clone(),
        port: u.port,
        keep_alive: Duration::from_secs(u.keep_alive_secs.max(1)),
        agent: cfg.agent_config(),
        backoff_min: Duration::from_millis(u.backoff_min_ms),
        backoff_max: Duration::from_millis(u.backoff_max_ms),
        security,
        max_bytes_per_sec: u.max_bytes_per_sec,
        daily_budget_bytes: u.daily_budget_bytes,
        budget_file: (u.daily_budget_bytes > 0).then(|| Spent::file_beside(&cfg.spool.dir)),
    })
}

/// Opens lane `lane`'s spool on the blocking pool, with `clock` and the write-latency
/// histogram.
async fn open_spool(
    cfg: &Config,
    lane: &LaneSection,
    metrics: &Arc<AgentMetrics>,
    clock: Clock,
) -> Result<OpenLane, ServiceError> {
    let lane_cfg = cfg.for_lane(&lane.name)?;
    let mut spool_cfg = lane_cfg.spool_config();
    spool_cfg.clock = clock;
    let observed = Arc::clone(metrics);
    spool_cfg.observer = Some(Arc::new(move |w| {
        observed.spool_write.observe(w.write.as_secs_f64())
    }));
    let dir = lane_cfg.spool.dir.clone();
    let spool = tokio::task::spawn_blocking(move || Spool::open(&dir, spool_cfg))
        .await
        .map_err(ServiceError::SpoolTask)?
        .map_err(|source| ServiceError::Spool {
            dir: lane_cfg.spool.dir.display().to_string(),
            source,
        })?;
    let meta = spool.meta();
    tracing::info!(
        device = %cfg.device.id,
        lane = %lane.name,
        incarnation = meta.incarnation.get(),
        next_seq = meta.next_seq,
        acked = meta.acked,
        events = meta.events,
        "spool open"
    );
    let salvage = spool.salvage();
    if salvage.found_damage() {
        // Counted with the records the uplink finds undecodable: both reach the server as
        // dropped ranges with reason `Corrupt`.
        metrics.corrupt(salvage.corrupt_seqs());
        tracing::error!(
            lane = %lane.name,
            repaired = salvage.repaired,
            rebuilt = salvage.rebuilt,
            failed_reads = salvage.failed_reads,
            corrupt_seqs = salvage.corrupt_seqs(),
            corrupt_ranges = ?salvage.corrupt,
            states_lost = salvage.states_lost,
            set_aside = salvage.set_aside,
            "spool was damaged: salvaged"
        );
    }
    Ok(OpenLane::new(lane, Arc::new(spool), lane_cfg.spool.policy))
}

/// Opens every lane's spool, in plan order.
async fn open_lanes(
    cfg: &Config,
    metrics: &Arc<AgentMetrics>,
    clock: &Clock,
) -> Result<Vec<OpenLane>, ServiceError> {
    let mut lanes = Vec::new();
    for lane in cfg.lanes() {
        lanes.push(open_spool(cfg, &lane, metrics, clock.clone()).await?);
    }
    Ok(lanes)
}

/// What runs while the agent runs. Intake (HTTP, local MQTT, the ingest thread) stops first,
/// so that everything answered is in the spool; the uplink last.
struct Running {
    http: JoinHandle<std::io::Result<()>>,
    mqtt: Option<JoinHandle<()>>,
    ingest: Vec<std::thread::JoinHandle<()>>,
    intake_stop: CancellationToken,
    uplink: JoinHandle<Result<(), UplinkError>>,
    metrics: Arc<AgentMetrics>,
    uplink_stop: CancellationToken,
}

impl Running {
    /// Stops intake, lets the ingest thread answer what is queued, then stops the uplink
    /// (unless it already ended with `uplink_early`).
    async fn stop(
        self,
        uplink_early: Option<Result<Result<(), UplinkError>, JoinError>>,
    ) -> (
        std::io::Result<()>,
        Result<Result<(), UplinkError>, JoinError>,
    ) {
        self.intake_stop.cancel();
        let http = self.http.await.unwrap_or(Ok(()));
        if let Some(t) = self.mqtt {
            let _ = t.await;
        }
        // The HTTP router and the MQTT task held the last ingest handles: each lane's thread
        // now answers what is queued and exits.
        let ingest = self.ingest;
        let _ = tokio::task::spawn_blocking(move || {
            ingest.into_iter().for_each(|t| {
                let _ = t.join();
            })
        })
        .await;
        self.uplink_stop.cancel();
        let up = match uplink_early {
            Some(r) => r,
            None => self.uplink.await,
        };
        (http, up)
    }
}

/// The local MQTT intake, when configured.
fn mqtt_intake(
    cfg: &Config,
    intake: &Intake,
    metrics: &Arc<AgentMetrics>,
    sparkplug: Option<&Arc<Mutex<Sparkplug>>>,
    stop: &CancellationToken,
) -> Option<JoinHandle<()>> {
    cfg.ingest_mqtt.as_ref().map(|m| {
        let mut topics = m.topics.clone();
        topics.extend(m.sparkplug.iter().flat_map(|s| s.topics.iter().cloned()));
        tokio::spawn(mqtt_ingest::run(
            MqttIngestConfig {
                host: m.host.clone(),
                port: m.port,
                topics,
                client_id: m.client_id.clone(),
                sparkplug: sparkplug.cloned(),
            },
            intake.clone(),
            Arc::clone(metrics),
            stop.clone(),
        ))
    })
}

/// What the parts of a running agent share.
struct Shared {
    lanes: Vec<OpenLane>,
    clock: Clock,
    registry: Registry,
    metrics: Arc<AgentMetrics>,
}

/// Starts one ingest thread per lane, all notifying `appended`, and the intake over them.
fn start_intake(
    cfg: &Config,
    shared: &Shared,
    codec: &Arc<Codec>,
    appended: &Arc<Notify>,
) -> Result<(Intake, Vec<std::thread::JoinHandle<()>>), ServiceError> {
    let device = cfg.device_id()?;
    let (mut handles, mut threads) = (Vec::new(), Vec::new());
    let one_device = Arc::new(DeviceShared::default());
    for lane in &shared.lanes {
        let (ingest, thread) = Ingest::start(
            Arc::clone(&lane.spool),
            Arc::clone(codec),
            device.clone(),
            cfg.ingest_config(),
            shared.clock.clone(),
            Arc::clone(&shared.metrics),
            Arc::clone(appended),
            Arc::clone(&one_device),
        )?;
        handles.push((lane.clone(), ingest));
        threads.push(thread);
    }
    let router = Router::new(&cfg.lanes());
    let intake = Intake::new(handles, router, Arc::clone(&shared.metrics));
    Ok((intake, threads))
}

/// Starts ingest, the uplink, the local MQTT intake and the HTTP endpoint on `listener`.
fn start(cfg: &Config, listener: TcpListener, shared: Shared) -> Result<Running, ServiceError> {
    let codec = Arc::new(Codec::new(Limits::default()).map_err(ServiceError::Codec)?);
    let appended = Arc::new(Notify::new());
    let (intake, ingest_threads) = start_intake(cfg, &shared, &codec, &appended)?;
    let Shared {
        lanes,
        clock,
        registry,
        metrics,
    } = shared;
    let uplink_stop = CancellationToken::new();
    let deps = UplinkDeps {
        lanes: lanes.clone(),
        codec: Arc::clone(&codec),
        appended,
        metrics: Arc::clone(&metrics),
    };
    let uplink = tokio::spawn(uplink::run(uplink_config(cfg)?, deps, uplink_stop.clone()));
    let intake_stop = CancellationToken::new();
    let sparkplug = cfg
        .ingest_mqtt
        .as_ref()
        .and_then(|m| m.sparkplug.clone())
        .map(|c| Arc::new(Mutex::new(Sparkplug::new(c, &cfg.ingest_config()))));
    let mqtt = mqtt_intake(cfg, &intake, &metrics, sparkplug.as_ref(), &intake_stop);
    let state = HttpState {
        sparkplug,
        intake,
        lanes: lanes.into(),
        registry: Arc::new(registry),
        metrics,
        clock,
        device: cfg.device.id.clone(),
        codec,
    };
    let metrics = Arc::clone(&state.metrics);
    let app = router(state, cfg.http.max_body_bytes);
    Ok(Running {
        metrics,
        http: edgesync_servicekit::ops::serve(listener, app, intake_stop.clone()),
        mqtt,
        ingest: ingest_threads,
        intake_stop,
        uplink,
        uplink_stop,
    })
}

/// Runs the agent on `listener` (the HTTP endpoint) until `shutdown` is cancelled.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(AgentMetrics::register(&mut registry));
    let clock = system_clock();
    let lanes = open_lanes(&cfg, &metrics, &clock).await?;
    let shared = Shared {
        lanes,
        clock,
        registry,
        metrics,
    };
    let mut running = start(&cfg, listener, shared)?;
    // An uplink that fails is fatal: without it nothing leaves the device.
    let uplink_early = tokio::select! {
        _ = shutdown.cancelled() => None,
        r = &mut running.uplink => Some(r),
    };
    tracing::info!("stopping");
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let metrics = Arc::clone(&running.metrics);
    match tokio::time::timeout(grace, running.stop(uplink_early)).await {
        Ok((http, up)) => {
            http.map_err(ServiceError::Http)?;
            match up {
                Ok(Ok(())) => {
                    let (batches, acks) = (metrics.batches.get(), metrics.acks.get());
                    tracing::info!(batches, acks, "uplink stopped");
                }
                Ok(Err(e)) => return Err(ServiceError::Uplink(e)),
                Err(e) => tracing::error!(error = %e, "uplink task failed"),
            }
        }
        Err(_) => tracing::warn!(
            grace_ms = cfg.shutdown_grace_ms,
            "shutdown grace period over; every answered event is already durable"
        ),
    }
    Ok(())
}
