//! The agents of a run: each its own `edgesync-agent` process and spool behind its own fault
//! proxy, fed over HTTP at a steady rate while one link at a time is cut. What each agent
//! answered (durable at the edge) is kept per seq with the time of the answer, in
//! milliseconds since the epoch; that is where every latency of the report starts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgesync_servicekit::now_ms;
use edgesync_testkit::{FaultProxy, Service};

use crate::{err, Args};

/// Per device, what it answered: seq → when (ms since the epoch).
pub type Answers = BTreeMap<String, BTreeMap<u64, u64>>;

/// One agent of the fleet.
pub struct Agent {
    /// Its device id.
    pub device: String,
    proxy: FaultProxy,
    /// The running agent.
    pub service: Service,
    answered: Arc<Mutex<BTreeMap<u64, u64>>>,
}

impl Agent {
    fn answered(&self) -> BTreeMap<u64, u64> {
        self.answered
            .lock()
            .map(|x| x.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn acked(&self) -> f64 {
        self.service.metric("edgesync_agent_acked_watermark", "")
    }
}

/// The agents, and the warm-up events (delivered and counted, but not timed).
pub struct Fleet {
    /// Every agent.
    pub agents: Vec<Agent>,
    warm: BTreeSet<(String, u64)>,
}

impl Fleet {
    /// `args.agents` agents of the binary at `bin`, each behind a fault proxy to `mqtt` shaped
    /// by `args`' link latency and bandwidth.
    pub fn start(args: &Args, mqtt: SocketAddr, bin: &Path) -> Result<Self, String> {
        let mut agents = Vec::new();
        for i in 0..args.agents {
            let device = format!("pump-{i:04}");
            let proxy = FaultProxy::start(mqtt).map_err(err)?;
            proxy.set_latency(Duration::from_millis(args.link_latency_ms));
            if args.link_kib_per_s > 0 {
                proxy.set_bandwidth(Some(args.link_kib_per_s * 1024));
            }
            let sets = [
                format!("device.id={device}"),
                "spool.dir=\"{dir}/spool\"".into(),
                format!("uplink.port={}", proxy.addr().port()),
                "uplink.keep_alive_secs=5".into(),
                "uplink.backoff_min_ms=200".into(),
                "uplink.backoff_max_ms=2000".into(),
                "uplink.resend_timeout_ms=5000".into(),
            ];
            let service =
                Service::start(bin.to_owned(), Some("run"), &device, &sets).map_err(err)?;
            agents.push(Agent {
                device,
                proxy,
                service,
                answered: Arc::default(),
            });
        }
        Ok(Self {
            agents,
            warm: BTreeSet::new(),
        })
    }

    /// The agents' HTTP addresses (for Prometheus to scrape).
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.agents.iter().map(|a| a.service.http).collect()
    }

    /// One event through every agent, acknowledged, before the timed feed, so that the figures
    /// are the running pipeline's (consumer groups assigned, producers with ids) and not its
    /// start-up.
    pub fn warm_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        for a in &self.agents {
            let (seqs, t) = post_events(a.service.http, &events_body(&a.device, 0, 1))
                .map_err(|x| format!("{}: warm-up event refused: {x}", a.device))?;
            let mut ans = a.answered.lock().unwrap_or_else(|p| p.into_inner());
            for seq in seqs {
                self.warm.insert((a.device.clone(), seq));
                ans.insert(seq, t);
            }
        }
        while self.agents.iter().any(|a| a.acked() < 1.0) {
            if Instant::now() > deadline {
                return Err("warm-up: an agent was not acknowledged within 120 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Whether `seq` of `device` was a warm-up event.
    pub fn is_warm(&self, device: &str, seq: u64) -> bool {
        self.warm.contains(&(device.to_owned(), seq))
    }

    /// Feeds every agent at `args.rate` events/s for `args.seconds`, cutting one link at a time
    /// as `args` says and printing progress (`released`: events in Kafka so far); returns the
    /// number of cuts. Every link is healed at the end.
    pub fn feed(&self, args: &Args, released: impl Fn() -> f64, started: Instant) -> usize {
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = self
            .agents
            .iter()
            .map(|a| producer(a, args.rate.max(1), Arc::clone(&stop)))
            .collect();
        let until = Instant::now() + Duration::from_secs(args.seconds);
        let mut outage: Option<(usize, Instant)> = None;
        let mut next_cut = Instant::now() + Duration::from_secs(args.outage_every.max(1));
        let mut cuts = 0;
        let mut last_report = Instant::now();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
            if let Some((i, heal_at)) = outage {
                if Instant::now() >= heal_at {
                    self.agents[i].proxy.heal();
                    outage = None;
                }
            } else if args.outage_every > 0 && Instant::now() >= next_cut {
                let i = cuts % self.agents.len();
                self.agents[i].proxy.cut();
                cuts += 1;
                let heal_at = Instant::now() + Duration::from_secs(args.outage_secs);
                outage = Some((i, heal_at));
                next_cut = heal_at + Duration::from_secs(args.outage_every);
            }
            if last_report.elapsed() >= Duration::from_secs(3) {
                last_report = Instant::now();
                self.progress(released(), started, cuts);
            }
        }
        stop.store(true, Ordering::SeqCst);
        producers.into_iter().for_each(|p| {
            let _ = p.join();
        });
        self.agents.iter().for_each(|a| a.proxy.heal());
        cuts
    }

    fn progress(&self, released: f64, started: Instant, cuts: usize) {
        let answered: usize = self
            .agents
            .iter()
            .map(|a| a.answered.lock().map(|x| x.len()).unwrap_or(0))
            .sum();
        let acked: f64 = self.agents.iter().map(Agent::acked).sum();
        println!(
            "    t={:>3}s  answered {answered:>7}  in Kafka {released:>7.0}  acknowledged {acked:>7.0}  links cut so far {cuts}",
            started.elapsed().as_secs()
        );
    }

    /// Waits (up to 180 s) until every agent is acknowledged up to the last seq it answered
    /// and its spool is empty; whether all were.
    pub fn drain(&self) -> bool {
        let last: Vec<u64> = self
            .agents
            .iter()
            .map(|a| a.answered().keys().next_back().copied().unwrap_or(0))
            .collect();
        let drained = |a: &Agent, last: u64| {
            a.acked() as u64 >= last && a.service.metric("edgesync_agent_spool_events", "") == 0.0
        };
        let all = || self.agents.iter().zip(&last).all(|(a, l)| drained(a, *l));
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline && !all() {
            std::thread::sleep(Duration::from_millis(500));
        }
        all()
    }

    /// What every agent answered.
    pub fn answers(&self) -> Answers {
        self.agents
            .iter()
            .map(|a| (a.device.clone(), a.answered()))
            .collect()
    }

    /// The sum over the agents of metric `name`.
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.agents.iter().map(|a| a.service.metric(name, "")).sum()
    }
}

/// A thread posting ten requests a second to `a`, each with a tenth of `rate` events, until
/// `stop`; what the agent answers goes to its answers.
fn producer(a: &Agent, rate: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let (device, http, answered) = (a.device.clone(), a.service.http, Arc::clone(&a.answered));
    std::thread::spawn(move || {
        let per = rate.div_ceil(10);
        let mut next = 0u64;
        let mut tick = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if let Ok((seqs, t)) = post_events(http, &events_body(&device, next, per)) {
                let mut ans = answered.lock().unwrap_or_else(|p| p.into_inner());
                ans.extend(seqs.map(|s| (s, t)));
                next += per;
            }
            tick += Duration::from_millis(100);
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        }
    })
}

/// Posts NDJSON events to an agent; the seqs it answered (durable), now.
fn post_events(
    agent: SocketAddr,
    body: &[u8],
) -> Result<(std::ops::RangeInclusive<u64>, u64), String> {
    let (status, _, text) =
        edgesync_testkit::http(agent, "POST", "/v1/events", "application/x-ndjson", body)
            .map_err(err)?;
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(err)?;
    let (a, b) = (
        v["first_seq"].as_u64().unwrap_or(1),
        v["last_seq"].as_u64().unwrap_or(0),
    );
    Ok((a..=b, now_ms()))
}

/// `n` events of `device` from index `start`: +1 on the fleet's and the device's counters, and
/// the pressure into the device's max register.
fn events_body(device: &str, start: u64, n: u64) -> Vec<u8> {
    let mut out = String::new();
    for i in start..start + n {
        let p = 100.0 + (i % 17) as f64 / 10.0;
        out.push_str(&format!(
            "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{i},\"pressure_kpa\":{p}}},\"ops\":[\
             {{\"op\":\"inc\",\"key\":\"fleet/readings\",\"by\":1}},{{\"op\":\"inc\",\"key\":\"{device}/readings\",\"by\":1}},\
             {{\"op\":\"max\",\"key\":\"{device}/pressure-max\",\"value\":{p}}}]}}\n"
        ));
    }
    out.into_bytes()
}
