//! CPU time of processes and their threads, from `/proc` (Linux), for benchmarks that say
//! where the time goes.
//!
//! Figures are user + system seconds. Threads are grouped by name with trailing digits
//! stripped (`rdk:broker1`, `rdk:broker2` → `rdk:broker`), so a table stays the same shape
//! whatever the broker ids are. A thread that exits between two readings takes its time with
//! it; the benchmarks read a window in which their threads live.

use std::collections::BTreeMap;

/// Linux's `USER_HZ`: the unit of the times in `/proc/*/stat`.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) of process `pid` so far, all its threads included.
pub fn process_secs(pid: u32) -> f64 {
    stat_secs(&format!("/proc/{pid}/stat")).unwrap_or(f64::NAN)
}

/// CPU seconds so far of each thread group (name without trailing digits) of process `pid`.
pub fn thread_secs(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let group = name.trim().trim_end_matches(|c: char| c.is_ascii_digit());
        if let Some(s) = stat_secs(&dir.join("stat").to_string_lossy()) {
            *out.entry(group.to_owned()).or_insert(0.0) += s;
        }
    }
    out
}

/// What each group used between two readings of [`thread_secs`].
pub fn since(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// The thread groups of a JVM that compile code (C1 and C2 compiler threads).
pub const JIT_THREADS: &[&str] = &["C1 CompilerThre", "C2 CompilerThre"];

/// Waits until the thread groups of `pid` named in `groups` used less than `share` of one core
/// over a `window`, or until `max` has passed; returns how long it waited. For benchmarks on a
/// JVM broker: a fresh JVM keeps compiling for a long while after its first load (its compile
/// queue outlives any short warm-up on 2 cores), and a broker in service has long finished.
pub fn wait_quiet(
    pid: u32,
    groups: &[&str],
    share: f64,
    window: std::time::Duration,
    max: std::time::Duration,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    let busy = || -> f64 {
        let t = thread_secs(pid);
        groups.iter().filter_map(|g| t.get(*g)).sum()
    };
    let mut last = busy();
    while started.elapsed() < max {
        std::thread::sleep(window);
        let now = busy();
        if now - last < share * window.as_secs_f64() {
            break;
        }
        last = now;
    }
    started.elapsed()
}

/// utime + stime of a `stat` file (`/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`), in
/// seconds: fields 14 and 15, counted after the parenthesised name (which may itself hold
/// spaces).
pub fn stat_secs(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = after.split(' ').collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SEC)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_cpu_time_and_threads() {
        let t0 = std::time::Instant::now();
        let mut x = 0u64;
        while t0.elapsed().as_millis() < 50 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let pid = std::process::id();
        assert!(super::process_secs(pid) > 0.0);
        let threads = super::thread_secs(pid);
        assert!(!threads.is_empty());
        assert!(threads.values().sum::<f64>() > 0.0);
    }
}
