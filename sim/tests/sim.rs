//! The simulator's promises: determinism, and edgesync's completeness and convergence across
//! many seeds with crashes, partitions, server restarts, loss, duplication and reordering.

use edgesync_core::StateDigest;
use edgesync_sim::{edgesync, SimConfig};

/// A small fleet under much harsher conditions than the defaults.
fn harsh(seed: u64) -> SimConfig {
    let mut c = SimConfig {
        seed,
        devices: 6,
        hours: 6.0,
        ..SimConfig::default()
    };
    c.fleet.event_interval_s = 20.0;
    c.fleet.devices_per_site = 3;
    c.fleet.alarm_probability = 0.05;
    c.fleet.alarm_mean_s = 300.0;
    c.fleet.status_every = 7;
    c.link.mean_up_s = 15.0 * 60.0;
    c.link.mean_down_s = 10.0 * 60.0;
    c.link.loss = 0.05;
    c.link.duplicate = 0.05;
    c.link.reorder = 0.10;
    c.link.bandwidth_bytes_per_s = 4_000.0;
    c.faults.device_crash_mean_h = 3.0;
    c.faults.device_down_mean_s = 120.0;
    c.faults.server_restart_mean_h = 1.5;
    c.faults.server_down_s = 90.0;
    c.agent.max_batch_events = 50;
    c
}

/// Seeds that once failed; each stays here as a regression test (see also `edgesync_converges`).
const REGRESSION_SEEDS: &[u64] = &[];

fn check_edgesync(cfg: &SimConfig) {
    let o = edgesync::run(cfg);
    let seed = cfg.seed;
    assert!(o.metrics.generated > 0, "seed {seed}: nothing generated");
    assert_eq!(o.decode_errors, 0, "seed {seed}: undecodable batches");
    assert_eq!(
        o.order_violations, 0,
        "seed {seed}: released out of order or twice"
    );
    assert_eq!(o.unsynced, 0, "seed {seed}: spools not drained");
    assert_eq!(
        o.metrics.delivered, o.metrics.generated,
        "seed {seed}: completeness below 100 %"
    );
    assert!(
        o.metrics.dropped.is_empty(),
        "seed {seed}: dropped {:?}",
        o.metrics.dropped
    );
    assert_eq!(
        StateDigest::of_map(&o.state),
        StateDigest::of_map(&o.reference),
        "seed {seed}: server state differs from the reference"
    );
}

macro_rules! seed_block {
    ($($name:ident: $range:expr),* $(,)?) => {$(
        #[test]
        fn $name() {
            for seed in $range {
                check_edgesync(&harsh(seed));
            }
        }
    )*};
}

// 240 seeds, in blocks so that the test harness runs them on every core.
seed_block! {
    edgesync_is_complete_and_converges_seeds_0_to_59: 0..60,
    edgesync_is_complete_and_converges_seeds_60_to_119: 60..120,
    edgesync_is_complete_and_converges_seeds_120_to_179: 120..180,
    edgesync_is_complete_and_converges_seeds_180_to_239: 180..240,
}

#[test]
fn regression_seeds_stay_fixed() {
    for &seed in REGRESSION_SEEDS {
        check_edgesync(&harsh(seed));
    }
}

#[test]
fn the_harsh_conditions_really_are_harsh() {
    // Guards the seed tests against silently testing an easy world: faults must bite.
    let r = edgesync_sim::run(&harsh(7)).unwrap();
    let (e, b) = (&r.results[0], &r.results[1]);
    assert!(e.sync_failures > 0, "edgesync never had to resend");
    assert!(
        e.completeness_in_window < 1.0,
        "nothing was pending at the end of the window"
    );
    assert!(b.completeness_final < 1.0, "the baseline lost nothing");
    assert!(!b.converged, "last-write-wins happened to be right");
}

#[test]
fn same_seed_gives_byte_identical_output() {
    let cfg = SimConfig {
        devices: 20,
        hours: 4.0,
        ..SimConfig::default()
    };
    let a = edgesync_sim::run(&cfg).unwrap();
    let b = edgesync_sim::run(&cfg).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.to_markdown(), b.to_markdown());
    let other = edgesync_sim::run(&SimConfig { seed: 2, ..cfg }).unwrap();
    assert_ne!(a.to_json(), other.to_json(), "the seed must matter");
}

#[test]
fn the_report_does_not_depend_on_how_the_fleet_is_split_over_threads() {
    let cfg = SimConfig {
        devices: 13,
        hours: 3.0,
        ..harsh(5)
    };
    let one = edgesync_sim::run_on(&cfg, 1).unwrap().to_json();
    for threads in [2, 3, 5] {
        assert_eq!(
            edgesync_sim::run_on(&cfg, threads).unwrap().to_json(),
            one,
            "{threads} threads"
        );
    }
}

/// A small fleet over a whole day of a named link profile.
fn profile_fleet(name: &str, seed: u64) -> SimConfig {
    SimConfig {
        seed,
        devices: 16,
        ..SimConfig::profile(name).unwrap_or_else(|| panic!("no profile {name}"))
    }
}

/// edgesync on a profile: everything delivered once, in order, converged; of the sync attempts
/// it gave up on, those the server had anyway (what the protocol, not the link, could avoid)
/// stay below 0.5 % of all attempts; and fewer attempts fail than the baseline's.
fn check_profile(name: &str, seed: u64) -> edgesync_sim::Report {
    let cfg = profile_fleet(name, seed);
    let r = edgesync_sim::run(&cfg).unwrap_or_else(|e| panic!("{name}: {e}"));
    let (e, b) = (&r.results[0], &r.results[1]);
    assert_eq!(e.completeness_final, 1.0, "{name}: {e:?}");
    assert!(e.converged && e.dropped.is_empty(), "{name}: {e:?}");
    assert_eq!(e.duplicates_applied, 0, "{name}");
    let avoidable = e.sync_failures_reached_server as f64 / e.sync_attempts as f64;
    assert!(
        avoidable < 0.005,
        "{name}: {avoidable} of attempts abandoned though delivered"
    );
    assert!(
        e.sync_failure_rate < b.sync_failure_rate,
        "{name}: edgesync {} vs baseline {}",
        e.sync_failure_rate,
        b.sync_failure_rate
    );
    assert_eq!(
        edgesync_sim::run_on(&cfg, 3)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .to_json(),
        r.to_json(),
        "{name}: not deterministic"
    );
    r
}

#[test]
fn default_profile_delivers_everything_and_gives_up_only_on_what_the_link_lost() {
    check_profile("default", 11);
}

#[test]
fn cellular_profile_delivers_everything_and_gives_up_only_on_what_the_link_lost() {
    check_profile("cellular", 12);
}

#[test]
fn outage_profile_delivers_everything_and_gives_up_only_on_what_the_link_lost() {
    let r = check_profile("outage", 13);
    // The baseline's retry queue overflows in multi-hour outages: it loses events for good.
    assert!(r.results[1].dropped.contains_key("retry queue full"));
    assert!(r.results[1].completeness_final < 0.99);
}

#[test]
fn protocol_only_runs_check_the_same_protocol() {
    let mut cfg = profile_fleet("cellular", 14);
    cfg.hours = 6.0;
    let full = edgesync_sim::run(&cfg).unwrap();
    cfg.protocol_only = Some(edgesync_sim::config::WireModel::measured());
    let light = edgesync_sim::run(&cfg).unwrap();
    assert_eq!(light.results.len(), 1, "no baseline");
    let (f, l) = (&full.results[0], &light.results[0]);
    assert_eq!(l.completeness_final, 1.0);
    assert!(l.converged);
    assert_eq!(l.state_digest, f.state_digest, "the same converged state");
    assert_eq!(
        light.reference_digest, full.reference_digest,
        "the same trace"
    );
}
