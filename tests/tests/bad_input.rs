//! Bad input at every edge of the running pipeline (`edgesync_tests::chaos::bad_input`): the
//! agents' HTTP ingest, the MQTT batch topics and the Kafka input topics, fed while the steady
//! load runs. Each bad input gets its 4xx or its dead letter with its reason and is counted;
//! nothing answered is lost or doubled; no process restarts.
#![allow(clippy::unwrap_used)]

use edgesync_tests::chaos::bad_input::run;

#[test]
fn bad_input_at_every_edge_is_refused_or_dead_lettered_and_nothing_answered_is_lost() {
    let report = run("bad-pump").unwrap();
    println!("{report}");
    assert!(report.held(), "{report}");
}
