//! Priority lanes: streams assigned to lanes, each lane its own replica of the device.
//!
//! A lane has its own spool (RocksDB directory), so its own incarnation and dense seq space: to
//! the server it is one more replica of the device, de-duplicated, ordered, acknowledged and
//! accounted for in the ledger on its own. One lane's backlog or gap never holds another's
//! events back, and nothing on the server changes. The lanes share the device's MQTT
//! connection, batch topic and ack topic (acks name their replica), and the uplink picks which
//! lane's batch goes next by weight (`uplink.rs`).
//!
//! Invariants, checked when the configuration loads ([`plan`]):
//! - lane names follow `[a-z0-9][a-z0-9_-]{0,31}` (no `.`: a lane's directory must not look
//!   like another's set-aside copy, `<dir>.corrupt`) and are unique;
//! - a stream belongs to at most one lane; the lane `default` names none and takes every
//!   stream no other lane names; it always exists (last, weight 1, unless listed);
//! - the `default` lane's spool is `spool.dir` itself, so turning lanes on keeps an existing
//!   spool as the default lane; lane `x` lives beside it in `{spool.dir}-lane-x`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::config::PolicyName;
use crate::ingest::{Accepted, Ingest, IngestError, IngestEvent};
use crate::metrics::AgentMetrics;
use crate::spool::Spool;

/// The lane every stream no other lane names goes to.
pub const DEFAULT_LANE: &str = "default";

const NAME_MAX: usize = 32;

/// `[[lanes]]`: one lane, highest priority first.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LaneSection {
    /// `[a-z0-9][a-z0-9_-]{0,31}`.
    pub name: String,
    /// The event streams this lane carries (none for `default`).
    #[serde(default)]
    pub streams: Vec<String>,
    /// Its share of the uplink while other lanes have batches waiting too: weight / the sum of
    /// the waiting lanes' weights (1..=1000).
    #[serde(default = "one")]
    pub weight: u32,
    /// Keeps sending when the daily byte budget is spent (the rate cap still applies).
    #[serde(default)]
    pub bypass_daily_budget: bool,
    /// The lane's spool quota in bytes (default: `spool.max_bytes`).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// The lane's age limit (default: `spool.max_age_secs`).
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// The lane's quota policy (default: `spool.policy`).
    #[serde(default)]
    pub policy: Option<PolicyName>,
}

fn one() -> u32 {
    1
}

impl LaneSection {
    /// The implicit `default` lane.
    pub fn default_lane() -> Self {
        Self {
            name: DEFAULT_LANE.into(),
            streams: Vec::new(),
            weight: 1,
            bypass_daily_budget: false,
            max_bytes: None,
            max_age_secs: None,
            policy: None,
        }
    }
}

/// The lanes in priority order, `default` included, or why the sections are not a plan.
pub fn plan(sections: &[LaneSection]) -> Result<Vec<LaneSection>, String> {
    let mut lanes = sections.to_vec();
    if !lanes.iter().any(|l| l.name == DEFAULT_LANE) {
        lanes.push(LaneSection::default_lane());
    }
    let mut streams: HashMap<&str, &str> = HashMap::new();
    for (i, l) in lanes.iter().enumerate() {
        check_name(&l.name)?;
        if lanes[..i].iter().any(|o| o.name == l.name) {
            return Err(format!("lanes: {:?} is listed twice", l.name));
        }
        if !(1..=1000).contains(&l.weight) {
            return Err(format!("lanes.{}: weight must be 1..=1000", l.name));
        }
        if l.name == DEFAULT_LANE && !l.streams.is_empty() {
            return Err(
                "lanes.default takes every stream no other lane names: it lists none".into(),
            );
        }
        if l.max_bytes == Some(0) {
            return Err(format!("lanes.{}: max_bytes must be > 0", l.name));
        }
        for s in &l.streams {
            if let Some(other) = streams.insert(s, &l.name) {
                return Err(format!(
                    "stream {s:?} is in lanes {other:?} and {:?}",
                    l.name
                ));
            }
        }
    }
    Ok(lanes)
}

fn check_name(name: &str) -> Result<(), String> {
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok_start && ok_rest && name.len() <= NAME_MAX {
        Ok(())
    } else {
        Err(format!(
            "lane name {name:?}: [a-z0-9][a-z0-9_-]{{0,{}}}",
            NAME_MAX - 1
        ))
    }
}

/// Where lane `lane`'s spool lives, given `spool.dir`.
pub fn spool_dir(base: &Path, lane: &str) -> PathBuf {
    if lane == DEFAULT_LANE {
        return base.to_path_buf();
    }
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-lane-{lane}"));
    base.with_file_name(name)
}

/// A lane whose spool is open: what the uplink, status and metrics read.
#[derive(Clone, Debug)]
pub struct OpenLane {
    /// Its name.
    pub name: Arc<str>,
    /// Its spool.
    pub spool: Arc<Spool>,
    /// Its share of the uplink (see [`LaneSection::weight`]).
    pub weight: u32,
    /// See [`LaneSection::bypass_daily_budget`].
    pub bypass_daily_budget: bool,
    /// Its quota policy, resolved.
    pub policy: PolicyName,
}

impl OpenLane {
    /// Lane `lane` on its opened `spool`, whose quota policy is `policy`.
    pub fn new(lane: &LaneSection, spool: Arc<Spool>, policy: PolicyName) -> Self {
        Self {
            name: lane.name.as_str().into(),
            spool,
            weight: lane.weight,
            bypass_daily_budget: lane.bypass_daily_budget,
            policy,
        }
    }

    /// The `default` lane alone, on `spool` (an agent without lanes; tests and benches).
    pub fn single(spool: Arc<Spool>) -> Self {
        Self {
            name: DEFAULT_LANE.into(),
            spool,
            weight: 1,
            bypass_daily_budget: false,
            policy: PolicyName::Block,
        }
    }

    /// Whether this is the `default` lane.
    pub fn is_default(&self) -> bool {
        &*self.name == DEFAULT_LANE
    }
}

/// The lanes' spools added up: what the agent-wide status and metrics show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Event records held.
    pub events: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Seqs not acknowledged.
    pub unacked: u64,
    /// The oldest held event's age, over the lanes.
    pub oldest_age_ms: Option<u64>,
    /// The writers' counters, summed.
    pub stats: crate::spool::SpoolStats,
}

impl Totals {
    /// Over `lanes` at `now_ms`.
    pub fn of(lanes: &[OpenLane], now_ms: u64) -> Self {
        let mut t = Totals::default();
        for l in lanes {
            let (m, st) = (l.spool.meta(), l.spool.stats());
            t.events += m.events;
            t.bytes += m.bytes;
            t.unacked += m.unacked();
            t.oldest_age_ms = t.oldest_age_ms.max(m.oldest_age_ms(now_ms));
            t.stats.groups += st.groups;
            t.stats.appends += st.appends;
            t.stats.events += st.events;
            t.stats.refused += st.refused;
            t.stats.dropped_newest += st.dropped_newest;
            t.stats.dropped_oldest_quota += st.dropped_oldest_quota;
            t.stats.dropped_oldest_age += st.dropped_oldest_age;
        }
        t
    }
}

/// Which lane (index in the plan) carries each stream.
#[derive(Clone, Debug)]
pub struct Router {
    by_stream: HashMap<String, usize>,
    default: usize,
}

impl Router {
    /// The router of a plan (see [`plan`]).
    pub fn new(lanes: &[LaneSection]) -> Self {
        let mut by_stream = HashMap::new();
        for (i, l) in lanes.iter().enumerate() {
            for s in &l.streams {
                by_stream.insert(s.clone(), i);
            }
        }
        let default = lanes
            .iter()
            .position(|l| l.name == DEFAULT_LANE)
            .unwrap_or(lanes.len().saturating_sub(1));
        Self { by_stream, default }
    }

    /// The lane of `stream`.
    pub fn lane_of(&self, stream: &str) -> usize {
        self.by_stream.get(stream).copied().unwrap_or(self.default)
    }
}

/// A request's events of one lane, with their places in the request.
#[derive(Clone, Debug)]
pub struct Part {
    /// The lane's index.
    pub lane: usize,
    /// Its events, in request order.
    pub events: Vec<IngestEvent>,
    /// Where each was in the request.
    indices: Vec<usize>,
}

/// What one lane's part of a request became.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaneAccepted {
    /// The lane.
    pub lane: Arc<str>,
    /// Stored (its seqs), dropped or empty.
    pub accepted: Accepted,
}

/// A refused request: why, and what of it was stored before (lanes earlier in the request,
/// when it spans several; empty otherwise).
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: IngestError,
    /// The parts already stored.
    pub stored: Vec<LaneAccepted>,
}

/// Every source's way in: splits requests by lane and appends each part to its lane's ingest.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Intake {
    lanes: Arc<[(OpenLane, Ingest)]>,
    router: Arc<Router>,
    metrics: Arc<AgentMetrics>,
}

impl Intake {
    /// Over the lanes (each with its ingest handle), in plan order; at least one.
    pub fn new(lanes: Vec<(OpenLane, Ingest)>, router: Router, metrics: Arc<AgentMetrics>) -> Self {
        assert!(!lanes.is_empty(), "a plan always has the default lane");
        Self {
            lanes: lanes.into(),
            router: Arc::new(router),
            metrics,
        }
    }

    /// Most events one request may carry.
    pub fn max_request_events(&self) -> usize {
        self.first().max_request_events()
    }

    fn first(&self) -> &Ingest {
        &self.lanes[0].1
    }

    /// The name of lane `i`.
    pub fn name(&self, i: usize) -> &Arc<str> {
        &self.lanes[i].0.name
    }

    /// `events` by lane, lanes in the order their first event comes.
    pub fn by_lane(&self, events: Vec<IngestEvent>) -> Vec<Part> {
        let mut parts: Vec<Part> = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let lane = self.router.lane_of(&e.stream);
            match parts.iter_mut().find(|p| p.lane == lane) {
                Some(p) => {
                    p.events.push(e);
                    p.indices.push(i);
                }
                None => parts.push(Part {
                    lane,
                    events: vec![e],
                    indices: vec![i],
                }),
            }
        }
        parts
    }

    /// Whether `events` go to more than one lane.
    pub fn spans_lanes(&self, events: &[IngestEvent]) -> bool {
        let mut lanes = events.iter().map(|e| self.router.lane_of(&e.stream));
        lanes.next().is_some_and(|first| lanes.any(|l| l != first))
    }

    /// Validates a whole request (counted for `source` when refused).
    pub fn validate(
        &self,
        source: &'static str,
        events: &[IngestEvent],
    ) -> Result<(), IngestError> {
        let r = self.first().validate(events);
        if let Err(e) = &r {
            self.metrics
                .refused(source, e.reason(), events.len() as u64);
        }
        r
    }

    /// Checks a whole request before any lane stores a part of it: bad input, and a lane's
    /// spool full under the block policy, refuse all of it (counted for `source`).
    pub fn check(&self, source: &'static str, events: &[IngestEvent]) -> Result<(), IngestError> {
        self.validate(source, events)?;
        let mut lanes = events.iter().map(|e| self.router.lane_of(&e.stream));
        match lanes.find_map(|l| self.lanes[l].0.spool.refusal()) {
            None => Ok(()),
            Some(full) => {
                let e = crate::ingest::refused(&full);
                self.metrics
                    .refused(source, e.reason(), events.len() as u64);
                Err(e)
            }
        }
    }

    /// Appends one part; an error's event index is the request's.
    pub async fn append_part(
        &self,
        source: &'static str,
        part: &Part,
    ) -> Result<Accepted, IngestError> {
        let ingest = &self.lanes[part.lane].1;
        ingest
            .append(source, part.events.clone())
            .await
            .map_err(|e| match e {
                IngestError::Invalid { index, reason } => IngestError::Invalid {
                    index: part.indices.get(index).copied().unwrap_or(index),
                    reason,
                },
                e => e,
            })
    }

    /// Appends a request lane by lane: one answer per lane part. A request of one lane (the
    /// usual case) is all or nothing, as before lanes. One that spans lanes is checked whole
    /// first ([`Intake::check`]), so bad input or a full lane refuses all of it; what only
    /// storing can find (a lane filling up meanwhile, a disk error) leaves the parts before it
    /// stored, and says so.
    pub async fn append(
        &self,
        source: &'static str,
        events: Vec<IngestEvent>,
    ) -> Result<Vec<LaneAccepted>, Refused> {
        if self.spans_lanes(&events) {
            self.check(source, &events).map_err(|error| Refused {
                error,
                stored: Vec::new(),
            })?;
        }
        let parts = self.by_lane(events);
        let mut stored = Vec::with_capacity(parts.len());
        for part in &parts {
            match self.append_part(source, part).await {
                Ok(accepted) => stored.push(LaneAccepted {
                    lane: Arc::clone(self.name(part.lane)),
                    accepted,
                }),
                Err(error) => return Err(Refused { error, stored }),
            }
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(name: &str, streams: &[&str]) -> LaneSection {
        LaneSection {
            name: name.into(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
            ..LaneSection::default_lane()
        }
    }

    #[test]
    fn the_default_lane_is_added_last_and_takes_the_rest() {
        let p = plan(&[lane("alarm", &["alarm", "trip"])]).unwrap();
        assert_eq!(
            p.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["alarm", "default"]
        );
        let r = Router::new(&p);
        assert_eq!((r.lane_of("trip"), r.lane_of("temp")), (0, 1));
        // Listed, it keeps its place.
        let p = plan(&[lane("default", &[]), lane("bulk", &["logs"])]).unwrap();
        assert_eq!(Router::new(&p).lane_of("x"), 0);
        assert_eq!(plan(&[]).unwrap().len(), 1);
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        for (lanes, why) in [
            (vec![lane("a", &["s"]), lane("b", &["s"])], "is in lanes"),
            (vec![lane("a", &[]), lane("a", &[])], "twice"),
            (vec![lane("default", &["s"])], "lists none"),
            (vec![lane("Alarm", &[])], "lane name"),
            (vec![lane("a.b", &[])], "lane name"),
            (vec![lane(&"x".repeat(33), &[])], "lane name"),
            (
                vec![LaneSection {
                    weight: 0,
                    ..lane("a", &[])
                }],
                "weight",
            ),
        ] {
            let e = plan(&lanes).unwrap_err();
            assert!(e.contains(why), "{lanes:?}: {e}");
        }
    }

    #[test]
    fn a_lane_s_spool_sits_beside_the_default_one() {
        let base = Path::new("/var/lib/edgesync/spool");
        assert_eq!(spool_dir(base, DEFAULT_LANE), base);
        assert_eq!(
            spool_dir(base, "alarm"),
            Path::new("/var/lib/edgesync/spool-lane-alarm")
        );
    }
}
