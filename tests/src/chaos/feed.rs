//! The steady load: one feeder thread per agent posting NDJSON at a fixed rate, recording what
//! each request's answer says happened to its events.
//!
//! Every event carries its feeder's index `i` (0, 1, 2, … per device, never reused), so the
//! history check can tell an event that was appended once from one appended twice or never
//! sent. A request without an answer (the agent was killed or cut mid-request) leaves its
//! events' fate unknown: they may have been appended, and then they must be in the output like
//! any other; they are never sent again under the same indices.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use edgesync_testkit::http;

use crate::events;

/// Events per request in a quota burst, and the pause between burst requests: about 1,000
/// events/s, enough to fill the nemesis's small spool quota within a few seconds.
const BURST_EVENTS: u64 = 100;
const BURST_PAUSE: Duration = Duration::from_millis(100);

/// What one agent answered its feeder.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Payload indices used so far (`0..sent`).
    pub sent: u64,
    /// Seqs answered 200 (appended and durable).
    pub answered: BTreeSet<u64>,
    /// Events answered 202: dropped on arrival by the drop-newest policy.
    pub dropped_newest: u64,
    /// Events answered 503: refused while the spool was full under the block policy (or the
    /// agent unavailable); never appended, the sender keeps them.
    pub refused_full: u64,
    /// Events whose request got no answer.
    pub unknown: u64,
    /// Any other answer: the agent refused well-formed events, which is a failure.
    pub unexpected: Vec<String>,
}

/// A feeder thread and its shared state.
#[derive(Debug)]
pub struct Feeder {
    tally: Arc<Mutex<Tally>>,
    burst: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Feeder {
    /// Starts posting `per_post` events of `device` to the agent at `addr` every `every`.
    pub fn start(addr: SocketAddr, device: String, per_post: u64, every: Duration) -> Self {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let burst = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, b, s) = (tally.clone(), burst.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let bursting = b.load(Ordering::Relaxed);
                let n = if bursting { BURST_EVENTS } else { per_post };
                post_once(addr, &device, n, &t);
                std::thread::sleep(if bursting { BURST_PAUSE } else { every });
            }
        });
        Self {
            tally,
            burst,
            stop,
            thread: Some(thread),
        }
    }

    /// Switches quota bursts on or off.
    pub fn set_burst(&self, on: bool) {
        self.burst.store(on, Ordering::Relaxed);
    }

    /// Stops posting (after the request in flight) and returns the tally.
    pub fn stop(&mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.tally.lock().unwrap().clone()
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request of `n` fresh events, its answer recorded in `tally`.
fn post_once(addr: SocketAddr, device: &str, n: u64, tally: &Mutex<Tally>) {
    let start = {
        let mut t = tally.lock().unwrap();
        t.sent += n;
        t.sent - n
    };
    let body = events(device, start, n);
    let answer = http(addr, "POST", "/v1/events", "application/x-ndjson", &body);
    let mut t = tally.lock().unwrap();
    match answer {
        Ok((200, _, text)) => match seqs(&text) {
            Some((first, last)) if last + 1 - first == n => t.answered.extend(first..=last),
            _ => t.unexpected.push(format!("200 with {text}")),
        },
        Ok((202, _, _)) => t.dropped_newest += n,
        Ok((503, _, _)) => t.refused_full += n,
        Ok((code, _, text)) => t.unexpected.push(format!("{code}: {text}")),
        Err(_) => t.unknown += n,
    }
}

fn seqs(text: &str) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    Some((v["first_seq"].as_u64()?, v["last_seq"].as_u64()?))
}
