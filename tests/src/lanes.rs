//! Priority lanes after an outage on a thin link, as a scenario the lane test checks and the
//! lanes bench times: an agent's link is cut while a backlog builds (telemetry at a steady
//! rate with an alarm a minute among it), then heals throttled (the fault proxy's bandwidth);
//! while the backlog drains, fresh alarms come. Each event's time to acknowledgement is read
//! from the agent's status (the server acknowledges an event once it is in `edgesync.events`).
//!
//! With lanes, alarms go on their own lane ([`ALARM_LANE`]); without, the same events share
//! the `default` lane, alarms behind telemetry in seq order.

use std::time::{Duration, Instant};

use crate::{events_with, status, Fleet, DEFAULT_LANE, TELEMETRY};

/// The stream alarms are on.
pub const ALARM: &str = "pump.alarm";
/// The lane that carries it, when lanes are on.
pub const ALARM_LANE: &str = "alarm";

/// The agent settings that put [`ALARM`] on its own lane, nine times the weight of the
/// `default` lane, past a spent daily budget.
pub fn alarm_lane_sets() -> Vec<String> {
    vec![format!(
        "lanes=[{{name=\"{ALARM_LANE}\",streams=[\"{ALARM}\"],weight=9,bypass_daily_budget=true}}]"
    )]
}

/// NDJSON telemetry as a pump sends it: four readings with sensor noise (pseudo-random from
/// the index, so a run is repeatable), which compress about as real readings do, not to
/// nothing as a constant would.
pub fn pump_readings(device: &str, start: u64, n: u64) -> Vec<u8> {
    events_with(TELEMETRY, device, start, n, |i| {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut noise = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 10_000) as f64 / 10_000.0
        };
        format!(
            "\"i\":{i},\"pressure_kpa\":{:.3},\"temp_c\":{:.2},\"flow_lpm\":{:.2},\"vibration_mm_s\":{:.3}",
            101.0 + noise(),
            40.0 + 5.0 * noise(),
            120.0 + 10.0 * noise(),
            2.0 * noise()
        )
    })
}

/// The scenario's size.
#[derive(Clone, Copy, Debug)]
pub struct Backlog {
    /// Minutes of outage the backlog stands for.
    pub minutes: u64,
    /// Telemetry events per second of outage.
    pub telemetry_per_sec: u64,
    /// The link's bandwidth after the heal, each way.
    pub bytes_per_sec: u64,
    /// Fresh alarms posted while the backlog drains.
    pub fresh_alarms: usize,
}

/// What the drain took, from the heal.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    /// Until every alarm of the backlog was acknowledged.
    pub backlog_alarms: Duration,
    /// Until everything was acknowledged.
    pub everything: Duration,
    /// Each fresh alarm's time from its post to its acknowledgement.
    pub fresh_alarms: Vec<Duration>,
    /// Fresh alarms acknowledged while telemetry of the backlog was still unacknowledged.
    pub fresh_ahead_of_backlog: usize,
    /// Share of the telemetry backlog (what was answered while the link was cut) still
    /// unacknowledged when the backlog's alarms were all acknowledged.
    pub telemetry_left_at_alarms: f64,
    /// Bytes the agent sent up through the proxy during the drain.
    pub bytes_up: u64,
}

/// The last seq agent 0 answered on `lane`.
fn last_on(f: &Fleet, lane: &str) -> u64 {
    f.answered_on(&f.devices[0], lane)
        .last()
        .copied()
        .unwrap_or(0)
}

fn acked(s: &serde_json::Value, lane: &str) -> u64 {
    s["lanes"][lane]["acked_watermark"].as_u64().unwrap_or(0)
}

/// Runs the scenario on agent 0 of `f` (lanes on or not, as it was started): builds the
/// backlog behind a cut link, heals it at `b.bytes_per_sec` and times the drain. The link is
/// left throttled; the fleet's answers are recorded for its history check.
pub fn drain_after_outage(f: &mut Fleet, b: Backlog, lanes: bool) -> Drain {
    let alarm_lane = if lanes { ALARM_LANE } else { DEFAULT_LANE };
    // The pipeline first carries both streams end to end (the reconciler has its partitions).
    f.send_made(1, pump_readings);
    f.send_stream(ALARM, 1);
    let (telemetry, alarm) = (last_on(f, DEFAULT_LANE), last_on(f, alarm_lane));
    let synced = edgesync_testkit::wait_until(Duration::from_secs(120), || {
        let s = status(&f.agents[0]);
        acked(&s, DEFAULT_LANE) >= telemetry && acked(&s, alarm_lane) >= alarm
    });
    assert!(
        synced,
        "the pipeline does not carry events: {}",
        status(&f.agents[0])
    );
    f.links[0].cut();
    let before = last_on(f, DEFAULT_LANE);
    let per_minute = b.telemetry_per_sec * 60;
    for _ in 0..b.minutes {
        let mut left = per_minute;
        while left > 0 {
            let n = left.min(1000);
            f.send_made(n, pump_readings);
            left -= n;
        }
        f.send_stream(ALARM, 1);
    }
    let backlog_alarm = last_on(f, alarm_lane);
    let telemetry_total = last_on(f, DEFAULT_LANE);
    let up = f.links[0].bytes_up();
    f.links[0].set_bandwidth(Some(b.bytes_per_sec));
    f.links[0].heal();
    let healed = Instant::now();
    let mut d = Drain::default();
    let mut fresh: Vec<(u64, Instant)> = Vec::new();
    let mut next_fresh = healed + Duration::from_secs(2);
    let deadline = healed + Duration::from_secs(600);
    loop {
        let s = status(&f.agents[0]);
        let now = Instant::now();
        if d.backlog_alarms.is_zero() && acked(&s, alarm_lane) >= backlog_alarm {
            d.backlog_alarms = now - healed;
            let done = acked(&s, DEFAULT_LANE).clamp(before, telemetry_total) - before;
            let backlog = (telemetry_total - before).max(1);
            d.telemetry_left_at_alarms = 1.0 - done as f64 / backlog as f64;
        }
        let backlog_left = acked(&s, DEFAULT_LANE) < telemetry_total;
        fresh.retain(|&(seq, posted)| {
            let done = acked(&s, alarm_lane) >= seq;
            if done {
                d.fresh_alarms.push(now - posted);
                d.fresh_ahead_of_backlog += usize::from(backlog_left);
            }
            !done
        });
        let all = s["unacked_seqs"] == 0 && s["spool_events"] == 0;
        if all && fresh.is_empty() && d.fresh_alarms.len() == b.fresh_alarms {
            d.everything = now - healed;
            break;
        }
        assert!(now < deadline, "the backlog did not drain: {s}");
        if d.fresh_alarms.len() + fresh.len() < b.fresh_alarms && now >= next_fresh {
            f.send_stream(ALARM, 1);
            fresh.push((last_on(f, alarm_lane), Instant::now()));
            next_fresh = now + Duration::from_secs(3);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    d.bytes_up = f.links[0].bytes_up() - up;
    d
}
