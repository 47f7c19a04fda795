//! Memory and disk a process under test uses: its resident set from `/proc` (Linux), and the
//! bytes of the files in its data directory.

use std::path::Path;

/// `VmRSS` and `VmHWM` (the peak) of process `pid`, in bytes. Panics if the process is gone:
/// a benchmark reads a process it keeps running.
pub fn rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes of the files directly in `dir` (a RocksDB directory is flat); 0 if it is missing.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// `b` bytes in MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_resident_set_within_its_peak() {
        let (rss, hwm) = super::rss(std::process::id());
        assert!(rss > 0 && rss <= hwm, "VmRSS {rss}, VmHWM {hwm}");
    }
}
