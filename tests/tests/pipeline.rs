//! The whole pipeline as processes on real brokers: edge agents → Mosquitto → bridge → Kafka
//! (Apache Kafka, and again on tansu on SQLite) → reconciler → events and converged state,
//! acknowledgements back to the agents. Six agents reach Mosquitto through fault proxies that
//! add latency, throttle bandwidth and cut links, while the bridge, the reconciler, one agent,
//! Mosquitto and the Kafka broker are each killed with `kill -9` and restarted. Checked by
//! history ([`edgesync_tests::Fleet::assert_converged`]).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use edgesync_testkit::{on_both_brokers, Broker, Kafka};
use edgesync_tests::Fleet;

on_both_brokers!(agents_to_converged_state_through_kill_9_of_every_component);

/// The services run on their shipped group settings: a restarted reconciler or bridge is the
/// same static group member and takes its partitions back at once.
fn agents_to_converged_state_through_kill_9_of_every_component(b: Broker) {
    let mut k = Kafka::start_on(b).unwrap();
    let mut f = Fleet::start(&k, "e2e-pump", 6, &["partitions=4"]);
    // Link quality for the whole run: a slow link, a throttled one, one with both.
    f.links[1].set_latency(Duration::from_millis(80));
    f.links[2].set_bandwidth(Some(16 * 1024));
    f.links[4].set_latency(Duration::from_millis(40));
    f.links[4].set_bandwidth(Some(32 * 1024));
    // E2E_ONLY=bridge,reconciler,agent,mosquitto,kafka restricts the kills (diagnosis).
    let only = std::env::var("E2E_ONLY").ok();
    let kill = |what: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == what))
    };
    for round in 0..12u64 {
        // Cuts: link 3 down for rounds 1-3, link 5 for rounds 5-7.
        match round {
            1 => f.links[3].cut(),
            4 => f.links[3].heal(),
            5 => f.links[5].cut(),
            8 => f.links[5].heal(),
            _ => {}
        }
        f.send_round(30);
        match round {
            2 if kill("kafka") => k.process().restart().unwrap(),
            4 if kill("bridge") => f.bridge.process.restart().unwrap(),
            6 if kill("reconciler") => f.reconciler.process.restart().unwrap(),
            8 if kill("agent") => f.agents[0].process.restart().unwrap(),
            10 if kill("mosquitto") => f.mosquitto.process().restart().unwrap(),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    f.heal_links();
    f.assert_converged(&mut k, Duration::from_secs(180));
}
