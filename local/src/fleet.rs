//! The agents of a run: each its own `edgesync-agent` process and spool behind its own fault
//! proxy, fed over HTTP at a steady rate while one link at a time is cut. What each agent
//! answered (durable at the edge) is kept per request: its seqs, when it was sent and when it
//! was answered (µs since the epoch). Every latency of the report starts at the send: the
//! append is part of what is measured, as the raw sum counts one fsync for it.
//!
//! The load generator is lean so that it is never what limits a run: one thread per agent
//! posting ten NDJSON requests a second (staggered over the agents) on one keep-alive
//! connection, with the request's body written into a reused buffer; its CPU is measured with
//! the rest (`usage`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgesync_testkit::{FaultProxy, Service};

use crate::{err, now_us, Args};

/// One answered request: seqs `first..=last`, sent and answered at (µs since the epoch).
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// First seq stored.
    pub first: u64,
    /// Last seq stored.
    pub last: u64,
    /// When the request was sent.
    pub sent_us: u64,
    /// When the durable answer came.
    pub answered_us: u64,
}

impl Request {
    /// Events it carried.
    pub fn len(&self) -> u64 {
        self.last + 1 - self.first
    }
}

/// Per device, its answered requests in seq order.
pub type Answers = BTreeMap<String, Vec<Request>>;

/// One agent of the fleet.
pub struct Agent {
    /// Its device id.
    pub device: String,
    proxy: FaultProxy,
    /// The running agent.
    pub service: Service,
    answered: Arc<Mutex<Vec<Request>>>,
    /// Events answered so far.
    answered_events: Arc<AtomicU64>,
    /// Requests that failed (no answer, or not 200).
    failed: Arc<AtomicU64>,
    /// The next event index of its feed (the `i` field).
    next: Arc<AtomicU64>,
}

impl Agent {
    fn answered(&self) -> Vec<Request> {
        self.answered
            .lock()
            .map(|x| x.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn acked(&self) -> f64 {
        self.service.metric("edgesync_agent_acked_watermark", "")
    }

    /// The last seq it answered, 0 if none.
    pub fn last_answered(&self) -> u64 {
        let a = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        a.last().map_or(0, |r| r.last)
    }
}

/// The agents, and the warm-up events (delivered and counted, but not timed).
pub struct Fleet {
    /// Every agent.
    pub agents: Vec<Agent>,
    /// Per device, the last seq of its warm-up (events up to it are not timed).
    warm: BTreeMap<String, u64>,
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
            let mut sets = vec![
                format!("device.id={device}"),
                "spool.dir=\"{dir}/spool\"".into(),
                format!("uplink.port={}", proxy.addr().port()),
                "uplink.keep_alive_secs=5".into(),
                "uplink.backoff_min_ms=200".into(),
                "uplink.backoff_max_ms=2000".into(),
                "uplink.resend_timeout_ms=5000".into(),
            ];
            sets.extend(args.agent_sets.iter().cloned());
            let service =
                Service::start(bin.to_owned(), Some("run"), &device, &sets).map_err(err)?;
            agents.push(Agent {
                device,
                proxy,
                service,
                answered: Arc::default(),
                answered_events: Arc::default(),
                failed: Arc::default(),
                next: Arc::default(),
            });
        }
        Ok(Self {
            agents,
            warm: BTreeMap::new(),
        })
    }

    /// The agents' HTTP addresses (for Prometheus to scrape).
    pub fn http_addrs(&self) -> Vec<SocketAddr> {
        self.agents.iter().map(|a| a.service.http).collect()
    }

    /// The agents' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.agents
            .iter()
            .filter_map(|a| a.service.process.pid())
            .collect()
    }

    /// One event through every agent, acknowledged, before the timed feed, so that the figures
    /// are the running pipeline's (consumer groups assigned, producers with ids) and not its
    /// start-up.
    pub fn warm_up(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        for a in &self.agents {
            let mut conn = Conn::new(a.service.http);
            let mut body = String::new();
            events_body(&mut body, &a.device, 0, 1);
            let r = conn
                .post_events(body.as_bytes())
                .map_err(|x| format!("{}: warm-up event refused: {x}", a.device))?;
            a.next.store(1, Ordering::SeqCst);
            self.warm.insert(a.device.clone(), r.last);
            a.answered_events.fetch_add(r.len(), Ordering::SeqCst);
            a.answered.lock().unwrap_or_else(|p| p.into_inner()).push(r);
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
        self.warm.get(device).is_some_and(|w| seq <= *w)
    }

    /// Feeds every agent `rate` events/s for `secs` (links up) and waits for the pipeline to
    /// drain: the warm-up of a measured run (a fresh JVM compiles for its first minute or so).
    /// Its events are delivered and checked like any, but not timed.
    pub fn warm_feed(&mut self, rate: u64, secs: u64, drain: Duration) {
        if secs == 0 {
            return;
        }
        let feed = self.start_feed(rate);
        std::thread::sleep(Duration::from_secs(secs));
        feed.stop();
        self.drain(drain);
        for a in &self.agents {
            self.warm.insert(a.device.clone(), a.last_answered());
        }
    }

    /// Starts feeding every agent `rate` events/s (ten requests a second, the agents' ticks
    /// staggered over the 100 ms) until the returned feed is stopped.
    pub fn start_feed(&self, rate: u64) -> Feed {
        let stop = Arc::new(AtomicBool::new(false));
        let n = self.agents.len().max(1) as u32;
        let start = Instant::now() + Duration::from_millis(20);
        let threads = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let first_tick = start + Duration::from_millis(100) * i as u32 / n;
                producer(a, rate.max(1), first_tick, Arc::clone(&stop))
            })
            .collect();
        Feed { stop, threads }
    }

    /// Feeds every agent at `args.rate` events/s for `args.seconds`, cutting one link at a time
    /// as `args` says and printing progress (`released`: events in Kafka so far); returns the
    /// number of cuts. Every link is healed at the end.
    pub fn feed(&self, args: &Args, released: impl Fn() -> f64, started: Instant) -> usize {
        let feed = self.start_feed(args.rate);
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
        feed.stop();
        self.agents.iter().for_each(|a| a.proxy.heal());
        cuts
    }

    fn progress(&self, released: f64, started: Instant, cuts: usize) {
        let answered = self.answered_events();
        let acked: f64 = self.agents.iter().map(Agent::acked).sum();
        println!(
            "    t={:>3}s  answered {answered:>7}  in Kafka {released:>7.0}  acknowledged {acked:>7.0}  links cut so far {cuts}",
            started.elapsed().as_secs()
        );
    }

    /// Events answered so far, over the fleet.
    pub fn answered_events(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| a.answered_events.load(Ordering::SeqCst))
            .sum()
    }

    /// Requests that failed so far, over the fleet.
    pub fn failed_requests(&self) -> u64 {
        self.agents
            .iter()
            .map(|a| a.failed.load(Ordering::SeqCst))
            .sum()
    }

    /// Whether every agent is acknowledged up to the last seq it answered, with an empty spool.
    pub fn drained_now(&self) -> bool {
        self.agents.iter().all(|a| {
            a.acked() as u64 >= a.last_answered()
                && a.service.metric("edgesync_agent_spool_events", "") == 0.0
        })
    }

    /// Waits (up to `timeout`) until [`Fleet::drained_now`]; whether it came.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !self.drained_now() {
            std::thread::sleep(Duration::from_millis(250));
        }
        self.drained_now()
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

/// The producer threads of a feed.
pub struct Feed {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Feed {
    /// Stops every producer and waits for its request in flight.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A thread posting ten requests a second to `a` from `first_tick`, each with a tenth of
/// `rate` events, until `stop`; what the agent answers goes to its answers. A request that
/// takes longer than its tick is followed at once by the next (the ticks are kept), so the
/// offered rate holds while the agent keeps up, and the shortfall shows when it does not.
fn producer(
    a: &Agent,
    rate: u64,
    first_tick: Instant,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let device = a.device.clone();
    let http = a.service.http;
    let (answered, count, failed, next) = (
        Arc::clone(&a.answered),
        Arc::clone(&a.answered_events),
        Arc::clone(&a.failed),
        Arc::clone(&a.next),
    );
    let name = format!("feed-{device}");
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let per = rate.div_ceil(10);
            let mut conn = Conn::new(http);
            let mut body = String::new();
            let mut tick = first_tick;
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
            while !stop.load(Ordering::SeqCst) {
                let i = next.fetch_add(per, Ordering::SeqCst);
                events_body(&mut body, &device, i, per);
                match conn.post_events(body.as_bytes()) {
                    Ok(r) => {
                        count.fetch_add(r.len(), Ordering::SeqCst);
                        answered.lock().unwrap_or_else(|p| p.into_inner()).push(r);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tick += Duration::from_millis(100);
                std::thread::sleep(tick.saturating_duration_since(Instant::now()));
            }
        })
        .unwrap_or_else(|e| panic!("spawn a producer thread: {e}"))
}

/// A keep-alive HTTP/1.1 connection to an agent: one request at a time, written in one
/// `write` (no Nagle delay), answered with a `Content-Length` body (axum's JSON).
struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    head: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            head: Vec::new(),
        }
    }

    /// Posts NDJSON events; the request with the seqs the agent answered (durable). Any
    /// failure drops the connection (the next request opens a new one); nothing is retried,
    /// since a request whose answer was lost may have been stored.
    fn post_events(&mut self, body: &[u8]) -> Result<Request, String> {
        let sent_us = now_us();
        let r = self.exchange(body);
        if r.is_err() {
            self.stream = None;
        }
        let (status, text) = r.map_err(err)?;
        if status != 200 {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&text)));
        }
        let answered_us = now_us();
        let v: serde_json::Value = serde_json::from_slice(&text).map_err(err)?;
        match (v["first_seq"].as_u64(), v["last_seq"].as_u64()) {
            (Some(first), Some(last)) if last >= first => Ok(Request {
                first,
                last,
                sent_us,
                answered_us,
            }),
            _ => Err(format!("no seqs in the answer: {v}")),
        }
    }

    fn exchange(&mut self, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.stream = Some(BufReader::with_capacity(16 << 10, s));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::Error::other("no connection"));
        };
        self.head.clear();
        write!(
            self.head,
            "POST /v1/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )?;
        self.head.extend_from_slice(body);
        stream.get_mut().write_all(&self.head)?;
        // Status line, then headers up to the blank line.
        let mut line = String::new();
        stream.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut close) = (None, false);
        loop {
            line.clear();
            if stream.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("connection closed in the headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    len = v.parse::<usize>().ok();
                } else if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let len = len.ok_or_else(|| std::io::Error::other("no content-length"))?;
        let mut text = vec![0; len];
        stream.read_exact(&mut text)?;
        if close {
            self.stream = None;
        }
        Ok((status, text))
    }
}

/// Writes into `out` (cleared) `n` events of `device` from index `start`: +1 on the fleet's
/// and the device's counters, and the pressure into the device's max register.
fn events_body(out: &mut String, device: &str, start: u64, n: u64) {
    out.clear();
    for i in start..start + n {
        let p = 100.0 + (i % 17) as f64 / 10.0;
        let _ = writeln!(
            out,
            "{{\"stream\":\"pump.telemetry\",\"fields\":{{\"i\":{i},\"pressure_kpa\":{p}}},\"ops\":[\
             {{\"op\":\"inc\",\"key\":\"fleet/readings\",\"by\":1}},{{\"op\":\"inc\",\"key\":\"{device}/readings\",\"by\":1}},\
             {{\"op\":\"max\",\"key\":\"{device}/pressure-max\",\"value\":{p}}}]}}"
        );
    }
}
