//! Crash points: named places at the persistence steps of every service where a test can make
//! the process die on the spot (`abort`, as abrupt as `kill -9`, mid-step), to prove that a
//! restart loses nothing answered and doubles nothing.
//!
//! Compiled in only with the `failpoints` feature, which only the test suite turns on (a
//! dev-dependency of `edgesync-tests`, so `cargo build --release` never has it); without it
//! [`crash_point`] is an empty inline function. With it, points are armed by the `fail` crate
//! from the `FAILPOINTS` environment variable, e.g. `FAILPOINTS='spool.after_fsync=20*off->return'`
//! (pass the 20 first hits, abort on the 21st). The names are the [`POINTS`] list, so a test
//! can go through all of them.

/// Every crash point: `(name, service)`.
pub const POINTS: &[(&str, &str)] = &[
    ("spool.before_write", "agent"),
    ("spool.after_fsync", "agent"),
    ("spool.trim.after_fsync", "agent"),
    ("ingest.after_append", "agent"),
    ("uplink.after_publish", "agent"),
    ("uplink.after_ack", "agent"),
    ("bridge.after_delivery", "bridge"),
    ("bridge.after_puback", "bridge"),
    ("bridge.ack.after_publish", "bridge"),
    ("device.after_produce", "reconciler"),
    ("device.after_checkpoint", "reconciler"),
    ("device.after_commit", "reconciler"),
    ("acks.after_produce", "reconciler"),
    ("key.after_store_write", "reconciler"),
    ("key.after_produce", "reconciler"),
    ("key.after_commit", "reconciler"),
];

/// Dies here if the test armed point `name` and its count is reached.
#[inline]
pub fn crash_point(name: &'static str) {
    debug_assert!(
        POINTS.iter().any(|(n, _)| *n == name),
        "unlisted crash point {name}"
    );
    #[cfg(feature = "failpoints")]
    fail::eval(name, |_| std::process::abort());
}

/// Reads `FAILPOINTS` once at start (with the feature; nothing without it). The scenario is
/// never torn down: the process ends with its points armed.
pub fn arm_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
