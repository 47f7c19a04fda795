//! A damaged spool on the real pipeline: an agent's table file gets flipped bits while it is
//! stopped with unsent events; started again it salvages the spool by itself, says so in its
//! log and metrics, sends what it could read and a dropped range with reason `Corrupt` for the
//! rest, and the server's ledger shows that range by its reason. Then the nemesis's history
//! check: nothing else lost, nothing doubled, state converged. (The spool-level cases, WAL
//! damage, a lost MANIFEST and a full disk, are in `edge-agent/tests/disk_faults.rs`.)
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use edgesync_testkit::{files_by_size, flip_bytes};
use edgesync_tests::chaos::rig::Rig;
use edgesync_tests::chaos::{drained, history};
use edgesync_tests::nemesis::Shape;
use edgesync_tests::status;

const SHAPE: Shape = Shape {
    agents: 1,
    bridges: 1,
    reconcilers: 1,
    kafka: 1,
};

#[test]
fn an_agent_salvages_a_damaged_table_by_itself_and_the_server_learns_the_corrupt_range() {
    let mut rig = Rig::start(SHAPE, "disk-pump").unwrap();
    let device = rig.devices[0].clone();
    rig.links[0].cut();
    std::thread::sleep(Duration::from_secs(8));
    let tally = rig.feeders[0].stop();
    assert!(tally.answered.len() > 100, "{tally:?}");
    // Into a table file: stop, start (recovery writes the WAL into a table), stop.
    let agent = &mut rig.agents[0];
    agent.process.terminate(Duration::from_secs(10));
    agent.process.restart().unwrap();
    agent.process.terminate(Duration::from_secs(10));
    let tables = files_by_size(&agent.dir().join("spool"), |n| n.ends_with(".sst"));
    flip_bytes(tables.last().expect("a table file"), 0.4, 16).unwrap();
    agent.process.restart().unwrap();
    let log = agent.process.log_tail(usize::MAX);
    assert!(log.contains("spool was damaged: salvaged"), "{log}");
    let corrupt = agent.metric("edgesync_agent_dropped_events_total", "reason=\"corrupt\"");
    assert!(corrupt > 0.0 && corrupt < 100.0, "{corrupt}");
    rig.links[0].heal();
    assert!(drained(&rig, std::slice::from_ref(&tally)), "not drained");
    let server = status(&rig.reconcilers[0]);
    let entry = server["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|e| e["device"] == device.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        entry["dropped_at_edge_by_reason"]["CORRUPT"].as_f64(),
        Some(corrupt),
        "{server}"
    );
    let h = history::check(&mut rig, &[tally], &[]);
    println!("corrupt seqs {corrupt}; {:?}", h.devices[&device]);
    assert!(h.problems.is_empty(), "{h:?}");
    assert_eq!(h.devices[&device].dropped_at_edge as f64, corrupt);
    assert_eq!(h.devices[&device].lost, 0);
}
