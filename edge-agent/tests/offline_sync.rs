//! The agent side end to end on a real spool, without a broker: events appended while offline,
//! then synced through the protocol's agent state machine, the outbox and the real codec, to
//! the protocol's server over a lossy, duplicating link; acks trim the spool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::{fill, replica_of};
use edgesync_agent::outbox::build_batch;
use edgesync_agent::spool::{QuotaPolicy, Spool, SpoolConfig};
use edgesync_core::{Crdt, DropReason, ReplicaId};
use edgesync_protocol::agent::AckEffect;
use edgesync_protocol::{Agent, AgentConfig, AgentDurable, Server, ServerConfig};
use edgesync_schemas::{Codec, Limits};

struct Synced {
    released: Vec<u64>,
    state: BTreeMap<String, Crdt>,
    server: Server,
}

/// Syncs until the spool is empty; every `lose_every`-th batch is lost and every
/// `dup_every`-th delivered twice.
fn sync(
    spool: &Spool,
    codec: &Codec,
    replica: &ReplicaId,
    lose_every: u64,
    dup_every: u64,
) -> Synced {
    let m = spool.meta();
    let cfg = AgentConfig {
        max_batch_events: 500,
        ..AgentConfig::default()
    };
    let mut agent = Agent::new(
        cfg,
        AgentDurable {
            last_seq: m.next_seq - 1,
            acked: m.acked,
        },
    )
    .unwrap();
    let mut server = Server::new(ServerConfig::default());
    let (mut released, mut state) = (Vec::new(), BTreeMap::<String, Crdt>::new());
    let mut now = 0;
    agent.connected(now);
    now += cfg.resume_wait_ms;
    agent.on_tick(now);
    let mut sent = 0u64;
    for _ in 0..100_000 {
        if agent.unacked() == 0 {
            break;
        }
        let Some(req) = agent.poll_send() else {
            now += cfg.resend_timeout_ms;
            agent.on_tick(now);
            continue;
        };
        let built = build_batch(spool, codec, replica, &req).unwrap();
        let (batch, corrupt) = (built.batch, built.corrupt);
        assert_eq!(corrupt, 0);
        agent
            .sent(batch.first_seq(), batch.last_seq(), now)
            .unwrap();
        sent += 1;
        if sent.is_multiple_of(lose_every) {
            continue;
        }
        let bytes = codec.encode_batch(&batch).unwrap();
        let copies = if sent.is_multiple_of(dup_every) { 2 } else { 1 };
        for _ in 0..copies {
            let a = server.apply(codec.decode_batch(&bytes).unwrap(), now);
            released.extend(a.released.iter().map(|e| e.dot.seq));
            for (k, d) in a.deltas {
                match state.get_mut(&k) {
                    Some(s) => s.join(&d).unwrap(),
                    None => {
                        state.insert(k, d);
                    }
                }
            }
            if let AckEffect::Advanced { trim_to } = agent.on_ack(a.watermark, now) {
                spool.trim(trim_to).unwrap();
            }
        }
        now += 10;
    }
    Synced {
        released,
        state,
        server,
    }
}

#[test]
fn events_appended_offline_are_all_delivered_once_and_the_spool_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let replica = replica_of(&spool, "pump-1");
    fill(&spool, &codec, &replica, 20_000);
    let s = sync(&spool, &codec, &replica, 7, 5);
    assert_eq!(
        s.released,
        (1..=20_000).collect::<Vec<_>>(),
        "each once, in order"
    );
    let m = spool.meta();
    assert_eq!(
        (m.events, m.acked, m.bytes),
        (0, 20_000, 0),
        "trimmed behind the acks"
    );
    match &s.state["fleet/readings"] {
        Crdt::GCounter(g) => assert_eq!(g.value(), 20_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn events_dropped_by_the_quota_reach_the_server_as_dropped_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SpoolConfig {
        max_bytes: 200_000,
        policy: QuotaPolicy::DropOldest,
        ..SpoolConfig::default()
    };
    let spool = Spool::open(dir.path(), cfg).unwrap();
    let codec = Codec::new(Limits::default()).unwrap();
    let replica = replica_of(&spool, "pump-1");
    fill(&spool, &codec, &replica, 5_000);
    let dropped = spool.stats().dropped_oldest_quota;
    assert!(dropped > 0, "the quota had to drop");
    let s = sync(&spool, &codec, &replica, 9, 4);
    let kept: Vec<u64> = (dropped + 1..=5_000).collect();
    assert_eq!(s.released, kept, "every kept event once, in order");
    let status = s.server.status(&replica).unwrap();
    assert_eq!(
        status.watermark, 5_000,
        "the watermark moved over the dropped seqs"
    );
    assert_eq!(
        status.dropped,
        BTreeMap::from([(DropReason::Quota, dropped)])
    );
    assert_eq!(spool.meta().events, 0);
}
