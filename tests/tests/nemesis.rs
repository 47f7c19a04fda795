//! The nemesis, short: a minute of seeded faults on the real pipeline (3-node Apache Kafka,
//! Mosquitto, two bridges, two reconcilers, six agents), then the history check
//! (`edgesync_tests::chaos`). `scripts/chaos --minutes 10` is the long run.
//!
//! A seed that ever failed joins [`SEEDS`]: the same seed replays the same faults.

use std::time::Duration;

use edgesync_tests::chaos::{run, Options};
use edgesync_tests::nemesis::Shape;

/// The seeds CI runs, one after another.
const SEEDS: &[u64] = &[1];

#[test]
fn a_minute_of_faults_loses_nothing_doubles_nothing_and_converges() {
    for &seed in SEEDS {
        let options = Options {
            seed,
            duration: Duration::from_secs(60),
            shape: Shape::default(),
        };
        let report = run(options, "nemesis-pump").unwrap();
        println!("{report}");
        assert!(report.held(), "{report}");
        assert!(report.faults.values().sum::<usize>() >= 50, "{report}");
    }
}
