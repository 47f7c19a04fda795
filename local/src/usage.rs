//! CPU of the pipeline's processes over a window, from `/proc` (Linux): per component (the
//! agents summed, the bridge, the reconciler, Mosquitto, the Kafka broker, Prometheus, and
//! this process: the load generator, the observers and the agents' link proxies), the
//! busiest single thread of each (a single-threaded stage at ~100 % of a core is at its
//! ceiling whatever the machine has left), and the machine as a whole (other users of a
//! shared machine show as the difference).

use std::collections::BTreeMap;
use std::time::Instant;

use edgesync_testkit::cpu::stat_secs;

/// A component: a name and its processes.
#[derive(Clone, Debug)]
pub struct Component {
    /// Its name in the report.
    pub name: String,
    /// Its processes.
    pub pids: Vec<u32>,
}

/// One reading of every thread of every component, and of the machine.
#[derive(Clone, Debug)]
pub struct Reading {
    at: Instant,
    /// Per component, per thread (pid, tid): name and CPU seconds.
    threads: Vec<BTreeMap<(u32, u32), (String, f64)>>,
    /// The machine: busy and total jiffies over every CPU.
    machine: (f64, f64),
}

/// Takes a reading of `components`.
pub fn read(components: &[Component]) -> Reading {
    Reading {
        at: Instant::now(),
        threads: components
            .iter()
            .map(|c| {
                let mut m = BTreeMap::new();
                for pid in &c.pids {
                    threads_of(*pid, &mut m);
                }
                m
            })
            .collect(),
        machine: machine(),
    }
}

fn threads_of(pid: u32, out: &mut BTreeMap<(u32, u32), (String, f64)>) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if let Some(s) = stat_secs(&dir.join("stat").to_string_lossy()) {
            out.insert((pid, tid), (name.trim().to_owned(), s));
        }
    }
}

/// Busy and total jiffies of the machine (`/proc/stat`, first line; idle and iowait are not
/// busy).
fn machine() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// CPU used by one component over a window.
#[derive(Clone, Debug)]
pub struct Used {
    /// The component.
    pub name: String,
    /// Cores (CPU seconds per second of the window), all its threads.
    pub cores: f64,
    /// Its busiest thread: name and cores.
    pub busiest: (String, f64),
    /// Cores by thread name (trailing digits and `-N` suffixes folded), largest first.
    pub by_thread: Vec<(String, f64)>,
}

/// What every component and the machine used between two readings.
#[derive(Clone, Debug)]
pub struct Window {
    /// Per component.
    pub components: Vec<Used>,
    /// The machine's busy cores (every process, ours or not).
    pub machine_cores: f64,
    /// The machine's cores.
    pub machine_of: f64,
}

impl Used {
    /// As JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "cores": round3(self.cores),
            "busiest_thread": self.busiest.0,
            "busiest_thread_cores": round3(self.busiest.1),
            "by_thread": self.by_thread.iter().take(8).map(|(n, v)| serde_json::json!([n, round3(*v)])).collect::<Vec<_>>(),
        })
    }
}

/// `x` to three decimals (for JSON).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What each of `components` (same order as the readings) used from `a` to `b`.
pub fn between(components: &[Component], a: &Reading, b: &Reading) -> Window {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let cores_of = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let used = components
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (before, after) = (&a.threads[i], &b.threads[i]);
            let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
            let mut busiest = (String::new(), 0.0);
            let mut total = 0.0;
            for (id, (name, s)) in after {
                let d = (s - before.get(id).map_or(0.0, |x| x.1)).max(0.0) / secs;
                total += d;
                *by_name.entry(fold(name)).or_default() += d;
                if d > busiest.1 {
                    busiest = (name.clone(), d);
                }
            }
            let mut by_thread: Vec<(String, f64)> = by_name.into_iter().collect();
            by_thread.sort_by(|x, y| y.1.total_cmp(&x.1));
            Used {
                name: c.name.clone(),
                cores: total,
                busiest,
                by_thread,
            }
        })
        .collect();
    let (busy, total) = (b.machine.0 - a.machine.0, b.machine.1 - a.machine.1);
    Window {
        components: used,
        machine_cores: if total > 0.0 {
            busy / total * cores_of
        } else {
            0.0
        },
        machine_of: cores_of,
    }
}

/// A thread name without its instance number (`rdk:broker3` → `rdk:broker`,
/// `feed-pump-0003` → `feed`, `tokio-runtime-worker` stays).
fn fold(name: &str) -> String {
    if name.starts_with("feed-") {
        return "feed".into();
    }
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '#')
        .to_owned()
}

impl Window {
    /// Cores used by all the named components together.
    pub fn ours(&self) -> f64 {
        self.components.iter().map(|c| c.cores).sum()
    }

    /// The component whose busiest thread is at its ceiling (≥ 90 % of a core), if any: the
    /// busiest such.
    pub fn thread_at_ceiling(&self) -> Option<&Used> {
        self.components
            .iter()
            .filter(|c| c.busiest.1 >= 0.9)
            .max_by(|a, b| a.busiest.1.total_cmp(&b.busiest.1))
    }

    /// Whether the machine's cores are all busy (≥ 95 %).
    pub fn machine_full(&self) -> bool {
        self.machine_cores >= 0.95 * self.machine_of
    }

    /// Prints a Markdown table: component, cores, CPU per event at `events_per_s`, busiest
    /// thread, top thread groups.
    pub fn print(&self, events_per_s: f64) {
        println!("| process | CPU (cores) | µs CPU per event | busiest thread (cores) | by thread (cores) |");
        println!("|---|---|---|---|---|");
        let per_event = |cores: f64| {
            if events_per_s > 0.0 {
                format!("{:.1}", cores / events_per_s * 1e6)
            } else {
                "–".into()
            }
        };
        for c in &self.components {
            let top: Vec<String> = c
                .by_thread
                .iter()
                .take(4)
                .filter(|(_, v)| *v >= 0.005)
                .map(|(n, v)| format!("{n} {v:.2}"))
                .collect();
            println!(
                "| {} | {:.2} | {} | {} {:.2} | {} |",
                c.name,
                c.cores,
                per_event(c.cores),
                c.busiest.0,
                c.busiest.1,
                top.join(", ")
            );
        }
        println!(
            "| all of the above | {:.2} | {} | | machine: {:.2} of {:.0} cores busy ({:.2} by other processes) |",
            self.ours(),
            per_event(self.ours()),
            self.machine_cores,
            self.machine_of,
            (self.machine_cores - self.ours()).max(0.0)
        );
    }
}
