//! Crash points: every persistence step of agent, bridge and reconciler
//! (`edgesync_servicekit::crash::POINTS`) aborts its process 50 times under load; each is
//! started again on its data; then the history check (`edgesync_tests::chaos::crash`):
//! nothing answered lost, nothing doubled, state and digests equal.

use edgesync_servicekit::crash::POINTS;
use edgesync_tests::chaos::crash::run;

const PER_POINT: usize = 50;

#[test]
fn every_crash_point_fifty_times_loses_nothing_and_doubles_nothing() {
    let report = run(16, PER_POINT, "crash-pump").unwrap();
    println!("{report}");
    assert!(report.held(), "{report}");
    assert!(POINTS.len() >= 15);
    for (point, _) in POINTS {
        assert_eq!(
            report.faults.get(point),
            Some(&PER_POINT),
            "{point}\n{report}"
        );
    }
}
