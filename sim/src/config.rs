//! Simulation parameters. Every one is printed with the results (JSON `config`), and the
//! defaults are plausible field conditions, not values tuned towards any result.

use edgesync_protocol::AgentConfig;
use serde::Serialize;

/// Everything a run depends on, besides the code.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SimConfig {
    /// Which link profile the parameters come from (see [`SimConfig::profile`]); printed with
    /// the results, like every parameter.
    pub profile: String,
    /// The one seed.
    pub seed: u64,
    /// Devices in the fleet.
    pub devices: usize,
    /// Length of the measured window (events are generated only inside it), hours.
    pub hours: f64,
    /// After the window the network heals and faults stop; the run continues until every
    /// approach is quiescent or this many more hours have passed.
    pub drain_hours: f64,
    /// What devices generate.
    pub fleet: FleetConfig,
    /// The link between each device and the server.
    pub link: LinkConfig,
    /// Crashes and restarts.
    pub faults: FaultConfig,
    /// edgesync's agent window.
    pub agent: AgentParams,
    /// The retry-based baseline.
    pub baseline: BaselineConfig,
    /// `Some` for a protocol-only run (`--protocol-only`): edgesync alone, without the
    /// baseline and without the batch codec; batches travel as values and their size on the
    /// wire comes from this model. Everything the protocol decides is still real and checked
    /// (the agent and server machines, every event's deltas joined into the server's state,
    /// release in dot order, the reference digest); what is modelled is only how many bytes a
    /// batch takes on the link (which sets its transmission time and the bandwidth column).
    /// Events then carry no field values (only the codec and the wire size look at them).
    pub protocol_only: Option<WireModel>,
}

/// The link profiles `--profile` names: every parameter but the link's is the default one.
pub const PROFILES: [&str; 3] = ["default", "cellular", "outage"];

impl SimConfig {
    /// The configuration of a named link profile, or `None` for an unknown name.
    ///
    /// - `default`: a fixed site on a mostly good link: up 2 h, down 20 min on average (about
    ///   ten outages a day, 14 % of the time down), 80 ms + exp(120 ms) one way, 1 % loss,
    ///   0.5 % duplicates, 1 % reordered by up to 2 s, 32 kB/s.
    /// - `cellular`: a device on a weak or moving cellular link (fringe coverage, handovers):
    ///   short, frequent drops (up 5 min, down 20 s on average: a drop every 5 min, 6 % of the
    ///   time down, most of them shorter than the 30 s keep-alive, so they are noticed only when
    ///   the link comes back), a slower and noisier radio path (150 ms + exp(250 ms) one way,
    ///   3 % loss, 1 % duplicates, 5 % reordered by up to 3 s, 16 kB/s) and a slower
    ///   reconnect (2 s: radio attach and TLS handshake).
    /// - `outage`: a remote site whose backhaul (satellite, microwave, a generator) fails for
    ///   hours: up 18 h, down 6 h on average (about one outage a day, a quarter of the time
    ///   down; exponential, so a quarter of the outages last over 8 h), otherwise the default
    ///   link. At one event a minute the baseline's retry queue of 500 holds 8.3 h: it
    ///   overflows in the longer outages, as in the article's retry-based client.
    ///
    /// The values are plausible field conditions chosen before running them, not tuned
    /// towards any result.
    pub fn profile(name: &str) -> Option<SimConfig> {
        let mut c = SimConfig {
            profile: name.to_owned(),
            ..SimConfig::default()
        };
        match name {
            "default" => {}
            "cellular" => {
                c.link = LinkConfig {
                    mean_up_s: 5.0 * 60.0,
                    mean_down_s: 20.0,
                    latency_ms: 150.0,
                    jitter_mean_ms: 250.0,
                    loss: 0.03,
                    duplicate: 0.01,
                    reorder: 0.05,
                    reorder_max_ms: 3_000.0,
                    bandwidth_bytes_per_s: 16_000.0,
                    detect_down_ms: 30_000,
                    connect_ms: 2_000,
                };
            }
            "outage" => {
                c.link.mean_up_s = 18.0 * 3600.0;
                c.link.mean_down_s = 6.0 * 3600.0;
            }
            _ => return None,
        }
        Some(c)
    }
}

/// Wire sizes for protocol-only runs, measured with the real codec (Avro + zstd level 3) on
/// the full default run (seed 1, 1,000 devices, 24 h): a batch of `n` events is
/// `first_event_bytes + further_event_bytes * (n - 1)` bytes; an event's Avro size is its
/// stream's mean. Acks are still sized by the real codec (they are cheap to encode).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct WireModel {
    /// A one-event batch: 215.7 B on average over the 1.27 M one-event batches of that run.
    pub first_event_bytes: f64,
    /// Each further event of a batch (23.5 B: batches of 2 to 78 events grow from 249 B to
    /// 2,029 B, nearly linearly; the state deltas of a batch are joined, so they add little).
    pub further_event_bytes: f64,
    /// Avro size of a telemetry event (mean 103.4 B).
    pub telemetry_event_bytes: u64,
    /// Avro size of a status event (mean 70.8 B).
    pub status_event_bytes: u64,
    /// Avro size of an alarm event (mean 70.5 B).
    pub alarm_event_bytes: u64,
}

impl WireModel {
    /// The sizes measured on the full default run (see the type's documentation).
    pub fn measured() -> Self {
        Self {
            first_event_bytes: 215.7,
            further_event_bytes: 23.5,
            telemetry_event_bytes: 103,
            status_event_bytes: 71,
            alarm_event_bytes: 70,
        }
    }

    /// Modelled compressed size of a batch of `events` events.
    pub fn batch_bytes(&self, events: usize) -> usize {
        let more = events.saturating_sub(1) as f64;
        (self.first_event_bytes + self.further_event_bytes * more).round() as usize
    }

    /// Modelled Avro size of an event of `stream`.
    pub fn event_bytes(&self, stream: &str) -> u64 {
        match stream {
            "pump.telemetry" => self.telemetry_event_bytes,
            "pump.status" => self.status_event_bytes,
            _ => self.alarm_event_bytes,
        }
    }
}

/// Event generation.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FleetConfig {
    /// One event per device every this many seconds (±10 % jitter).
    pub event_interval_s: f64,
    /// Every n-th event of a device is a status event (mode, firmware); the rest telemetry.
    pub status_every: u64,
    /// Chance that a telemetry tick raises an alarm (when none is active).
    pub alarm_probability: f64,
    /// Mean alarm duration, seconds (then a clear event).
    pub alarm_mean_s: f64,
    /// Devices per site (sites share registers, sets and rollups).
    pub devices_per_site: usize,
    /// Device clocks are off by up to ± this many ms (HLC physical time).
    pub clock_skew_ms: u64,
}

/// The network between a device and the server.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LinkConfig {
    /// Mean duration of an up period, seconds (exponential).
    pub mean_up_s: f64,
    /// Mean duration of a down period, seconds (exponential).
    pub mean_down_s: f64,
    /// Fixed one-way latency, ms.
    pub latency_ms: f64,
    /// Mean of the exponential extra one-way latency, ms.
    pub jitter_mean_ms: f64,
    /// Chance a message is lost while the link is up.
    pub loss: f64,
    /// Chance a message is delivered twice.
    pub duplicate: f64,
    /// Chance a message is held back by up to `reorder_max_ms` (reordering it).
    pub reorder: f64,
    /// Largest extra delay of a reordered message, ms.
    pub reorder_max_ms: f64,
    /// Bytes per second in each direction.
    pub bandwidth_bytes_per_s: f64,
    /// How long a client takes to notice a dead link (MQTT keep-alive), ms.
    pub detect_down_ms: u64,
    /// How long a (re)connect takes once the link is up, ms.
    pub connect_ms: u64,
}

/// Crashes and restarts (only inside the measured window).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FaultConfig {
    /// Mean time between crashes of one device, hours (0 = never).
    pub device_crash_mean_h: f64,
    /// Mean time a crashed device stays down, seconds.
    pub device_down_mean_s: f64,
    /// Mean time between server restarts, hours (0 = never).
    pub server_restart_mean_h: f64,
    /// How long the server is down per restart, seconds.
    pub server_down_s: f64,
}

/// edgesync's agent window (mirrors `edgesync_protocol::AgentConfig`).
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct AgentParams {
    /// Most events per batch.
    pub max_batch_events: usize,
    /// Most approximate event bytes per batch.
    pub max_batch_bytes: usize,
    /// Most batches in flight.
    pub max_inflight_batches: usize,
    /// Resend timeout, ms.
    pub resend_timeout_ms: u64,
    /// Wait for the retained ack after a connect, ms.
    pub resume_wait_ms: u64,
}

impl From<AgentConfig> for AgentParams {
    fn from(c: AgentConfig) -> Self {
        Self {
            max_batch_events: c.max_batch_events,
            max_batch_bytes: c.max_batch_bytes,
            max_inflight_batches: c.max_inflight_batches,
            resend_timeout_ms: c.resend_timeout_ms,
            resume_wait_ms: c.resume_wait_ms,
        }
    }
}

impl From<AgentParams> for AgentConfig {
    fn from(p: AgentParams) -> Self {
        Self {
            max_batch_events: p.max_batch_events,
            max_batch_bytes: p.max_batch_bytes,
            max_inflight_batches: p.max_inflight_batches,
            resend_timeout_ms: p.resend_timeout_ms,
            resume_wait_ms: p.resume_wait_ms,
        }
    }
}

/// The traditional client the article describes: every reading is a request carrying the event
/// and the device's full state snapshot; failed requests are retried with exponential backoff
/// from a bounded in-memory queue, replayed in full on reconnect; the server keeps the last
/// write per key by device timestamp.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct BaselineConfig {
    /// Messages the in-memory retry queue holds; when full the oldest is dropped.
    pub queue_capacity: usize,
    /// First retry delay, ms.
    pub initial_backoff_ms: f64,
    /// Largest retry delay, ms.
    pub max_backoff_ms: f64,
    /// Each delay is multiplied by a uniform factor in `[1 - jitter, 1 + jitter]`.
    pub backoff_jitter: f64,
    /// A message is dropped after this many failed attempts.
    pub max_attempts: u32,
    /// A request without a response after this long has failed, ms.
    pub request_timeout_ms: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            profile: "default".to_owned(),
            seed: 1,
            devices: 1000,
            hours: 24.0,
            drain_hours: 24.0,
            fleet: FleetConfig {
                event_interval_s: 60.0,
                status_every: 30,
                alarm_probability: 0.002,
                alarm_mean_s: 1800.0,
                devices_per_site: 10,
                clock_skew_ms: 5_000,
            },
            link: LinkConfig {
                mean_up_s: 2.0 * 3600.0,
                mean_down_s: 20.0 * 60.0,
                latency_ms: 80.0,
                jitter_mean_ms: 120.0,
                loss: 0.01,
                duplicate: 0.005,
                reorder: 0.01,
                reorder_max_ms: 2_000.0,
                bandwidth_bytes_per_s: 32_000.0,
                detect_down_ms: 30_000,
                connect_ms: 500,
            },
            faults: FaultConfig {
                device_crash_mean_h: 48.0,
                device_down_mean_s: 300.0,
                server_restart_mean_h: 12.0,
                server_down_s: 60.0,
            },
            agent: AgentConfig::default().into(),
            baseline: BaselineConfig {
                queue_capacity: 500,
                initial_backoff_ms: 1_000.0,
                max_backoff_ms: 300_000.0,
                backoff_jitter: 0.2,
                max_attempts: 8,
                request_timeout_ms: 10_000,
            },
            protocol_only: None,
        }
    }
}
