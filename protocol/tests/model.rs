//! Model-based test of the protocol: one agent and one server over an adversarial network that
//! drops, duplicates and reorders anything, with agent crashes and server restarts, driven by
//! generated action lists. After the chaos the network heals and the test runs to quiescence.
//!
//! Checked by history: the server releases exactly 1, 2, 3, ... (each dot once, in order);
//! acks never go backwards; the agent never trims past what the server has released; at the
//! end every appended event is released and the agent's spool is empty.

#![allow(clippy::unwrap_used)] // test driver: a failed call is a test failure

use std::collections::VecDeque;

use edgesync_core::arbitrary::{self, replica};
use edgesync_core::{BatchBuilder, DeltaBatch, Dot, Event, EventLimits, Hlc};
use edgesync_protocol::agent::AckEffect;
use edgesync_protocol::{Agent, AgentConfig, AgentDurable, Server, ServerConfig};
use proptest::prelude::*;
use proptest::test_runner::Config;

#[derive(Debug, Clone)]
enum Action {
    Append(u8),
    Connect,
    Disconnect,
    Pump,
    /// Deliver in-flight message `i` (mod len) and keep (`true`) or consume it.
    Deliver(prop::sample::Index, bool),
    Drop(prop::sample::Index),
    Advance(u16),
    CrashAgent,
    RestartServer,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (1u8..6).prop_map(Action::Append),
        1 => Just(Action::Connect),
        1 => Just(Action::Disconnect),
        3 => Just(Action::Pump),
        6 => (any::<prop::sample::Index>(), prop::bool::weighted(0.1)).prop_map(|(i, k)| Action::Deliver(i, k)),
        2 => any::<prop::sample::Index>().prop_map(Action::Drop),
        2 => (1u16..3000).prop_map(Action::Advance),
        1 => Just(Action::CrashAgent),
        1 => Just(Action::RestartServer),
    ]
}

enum Msg {
    Batch(DeltaBatch),
    Ack(u64),
}

struct World {
    cfg: AgentConfig,
    agent: Agent,
    durable: AgentDurable,
    connected: bool,
    spool: VecDeque<Event>,
    spool_first: u64,
    server: Server,
    net: Vec<Msg>,
    now: u64,
    released: u64,
    last_ack: u64,
}

impl World {
    fn new() -> Self {
        let cfg = AgentConfig {
            max_batch_events: 3,
            max_batch_bytes: 1 << 20,
            max_inflight_batches: 3,
            resend_timeout_ms: 1_000,
            resume_wait_ms: 200,
        };
        Self {
            cfg,
            agent: Agent::new(cfg, AgentDurable::default()).unwrap(),
            durable: AgentDurable::default(),
            connected: false,
            spool: VecDeque::new(),
            spool_first: 1,
            server: Server::new(ServerConfig::default()),
            net: Vec::new(),
            now: 0,
            released: 0,
            last_ack: 0,
        }
    }

    fn append(&mut self) {
        let seq = self.durable.last_seq + 1;
        self.spool.push_back(Event {
            dot: Dot::new(replica(0), seq),
            hlc: Hlc::new(self.now, 0),
            stream: "s".into(),
            schema_version: 1,
            fields: Default::default(),
            tags: Default::default(),
        });
        self.durable.last_seq = seq;
        self.agent.appended(seq).unwrap();
    }

    fn pump(&mut self) {
        while let Some(req) = self.agent.poll_send() {
            let start = (req.first_seq - self.spool_first) as usize;
            let mut b = BatchBuilder::new(replica(0), req.first_seq, EventLimits::default());
            for e in self.spool.range(start..).take(req.max_events) {
                b.push(e.clone(), []).unwrap();
            }
            let last = req.first_seq + b.len() as u64 - 1;
            self.agent.sent(req.first_seq, last, self.now).unwrap();
            self.net.push(Msg::Batch(b.finish().unwrap()));
        }
    }

    fn deliver(&mut self, m: &Msg) -> Result<(), TestCaseError> {
        match m {
            Msg::Batch(b) => {
                let a = self.server.apply(b.clone(), self.now);
                for e in &a.released {
                    prop_assert_eq!(
                        e.dot.seq,
                        self.released + 1,
                        "released out of order or twice"
                    );
                    self.released = e.dot.seq;
                }
                prop_assert!(a.watermark >= self.last_ack, "ack went backwards");
                prop_assert_eq!(a.watermark, self.released);
                self.last_ack = a.watermark;
                self.net.push(Msg::Ack(a.watermark));
            }
            Msg::Ack(w) => {
                if self.connected {
                    if let AckEffect::Advanced { trim_to } = self.agent.on_ack(*w, self.now) {
                        prop_assert!(trim_to <= self.released, "trimmed what the server lacks");
                        self.durable.acked = trim_to;
                        while self.spool_first <= trim_to {
                            self.spool.pop_front();
                            self.spool_first += 1;
                        }
                    }
                    self.pump();
                }
            }
        }
        Ok(())
    }

    /// Time passes for the agent; if it asks for the server's watermark, the broker hands
    /// the retained ack over (through the same adversarial network).
    fn tick(&mut self) {
        self.agent.on_tick(self.now);
        if self.agent.take_ack_request() && self.connected && self.last_ack > 0 {
            self.net.push(Msg::Ack(self.last_ack));
        }
        self.pump();
    }

    fn step(&mut self, a: &Action) -> Result<(), TestCaseError> {
        match a {
            Action::Append(n) => (0..*n).for_each(|_| self.append()),
            Action::Connect if !self.connected => {
                self.connected = true;
                self.agent.connected(self.now);
                // The broker hands over the retained ack, if the server ever acked.
                if self.last_ack > 0 {
                    self.net.push(Msg::Ack(self.last_ack));
                }
            }
            Action::Disconnect if self.connected => {
                self.connected = false;
                self.agent.disconnected();
            }
            Action::Pump => self.pump(),
            Action::Deliver(i, keep) if !self.net.is_empty() => {
                let at = i.index(self.net.len());
                let m = if *keep {
                    match &self.net[at] {
                        Msg::Batch(b) => Msg::Batch(b.clone()),
                        Msg::Ack(w) => Msg::Ack(*w),
                    }
                } else {
                    self.net.swap_remove(at)
                };
                self.deliver(&m)?;
            }
            Action::Drop(i) if !self.net.is_empty() => {
                let at = i.index(self.net.len());
                self.net.swap_remove(at);
            }
            Action::Advance(ms) => {
                self.now += u64::from(*ms);
                self.tick();
            }
            Action::CrashAgent => {
                self.agent = Agent::new(self.cfg, self.durable).unwrap();
                self.connected = false;
            }
            Action::RestartServer => {
                self.server = self.server.reloaded();
            }
            _ => {}
        }
        Ok(())
    }

    /// The network heals: deliver everything in order, tick, until nothing is left to do.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        if !self.connected {
            self.step(&Action::Connect)?;
        }
        for _ in 0..10_000 {
            if self.net.is_empty() {
                if self.agent.unacked() == 0 {
                    return Ok(());
                }
                self.now += 5_000;
                self.tick();
                continue;
            }
            let m = self.net.remove(0);
            self.deliver(&m)?;
        }
        Err(TestCaseError::fail(
            "no quiescence after the network healed",
        ))
    }
}

proptest! {
    #![proptest_config(Config { cases: arbitrary::cases(), failure_persistence: None, ..Config::default() })]

    #[test]
    fn every_event_is_released_once_in_order_whatever_the_network_does(
        actions in prop::collection::vec(action(), 0..120)
    ) {
        let mut w = World::new();
        for a in &actions {
            w.step(a)?;
        }
        w.drain()?;
        prop_assert_eq!(w.released, w.durable.last_seq, "not everything was delivered");
        prop_assert!(w.spool.is_empty(), "the spool was not trimmed");
        let st = w.server.status(&replica(0));
        if let Some(st) = st {
            prop_assert!(st.missing.is_empty() && st.pending == 0);
        }
    }
}
