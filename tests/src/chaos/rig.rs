//! The nemesis's pipeline as processes, and how each [`Fault`] is applied to it and healed.
//!
//! Shape: a 3-node Apache Kafka cluster (4 partitions, replication factor 3; one node of the
//! suite's broker when the shape says 1, as the crash-point run does), Mosquitto, the
//! bridges sharing one MQTT subscription (distinct client ids), the reconcilers in one group
//! (each a pinned static member, as a fixed deployment runs them), and the agents, each behind
//! its own fault proxy and on its own quota policy (block, drop-oldest, drop-newest in turn)
//! with a small spool quota so that a quota fault reaches it within seconds.
//!
//! Every process is restarted without waiting for it to be ready (`Managed::relaunch`): the
//! schedule keeps its pace, and a process that cannot come back is found by
//! [`Rig::revive`] at the end. Processes are started from the runner's own thread: they die
//! with it (`setpriv --pdeathsig`), so none outlives a run.

use std::time::Duration;

use edgesync_servicekit::CLOCK_OFFSET_ENV;
use edgesync_testkit::{partition_for, Error, FaultProxy, Kafka, Managed, Mosquitto, Service};

use super::feed::Feeder;
use crate::nemesis::{processes, Fault, Shape, Step, Target};
use crate::{agent_sets, binary};

/// Partitions of every topic.
pub const PARTITIONS: u32 = 4;
/// The agents' spool quota: small, so a quota fault fills it within seconds.
pub const SPOOL_QUOTA_BYTES: u64 = 1 << 20;
/// The quota policies, assigned to agents in turn.
pub const POLICIES: [&str; 3] = ["block", "drop-oldest", "drop-newest"];
/// Events per request of the steady load, and the pause between requests (20 events/s per
/// agent).
pub const PER_POST: u64 = 10;
/// See [`PER_POST`].
pub const POST_EVERY: Duration = Duration::from_millis(500);

const DAY_MS: i64 = 86_400_000;

/// The running pipeline.
#[derive(Debug)]
pub struct Rig {
    /// What it is made of.
    pub shape: Shape,
    /// The cluster.
    pub kafka: Kafka,
    /// The MQTT broker.
    pub mosquitto: Mosquitto,
    /// MQTT → Kafka.
    pub bridges: Vec<Service>,
    /// Kafka → events, state, acks.
    pub reconcilers: Vec<Service>,
    /// Device id per agent.
    pub devices: Vec<String>,
    /// Agent `i`'s uplink.
    pub links: Vec<FaultProxy>,
    /// The agents.
    pub agents: Vec<Service>,
    /// The steady load, one per agent.
    pub feeders: Vec<Feeder>,
}

impl Rig {
    /// Starts every process of `shape`, agents named `<prefix>-1`…, and the load.
    pub fn start(shape: Shape, prefix: &str) -> Result<Self, Error> {
        let kafka = match shape.kafka {
            1 => Kafka::start()?,
            _ => Kafka::cluster()?,
        };
        let mosquitto = Mosquitto::start()?;
        let common = [
            format!("kafka.bootstrap_servers={}", kafka.bootstrap()),
            format!("kafka.partitions={PARTITIONS}"),
            format!("kafka.replication_factor={}", kafka.len()),
        ];
        let with = |extra: &[String]| [common.to_vec(), extra.to_vec()].concat();
        let reconcilers = (1..=shape.reconcilers)
            .map(|i| {
                let sets = with(&[
                    "state_dir=\"{dir}/state\"".into(),
                    format!("kafka.group_instance_id=\"{prefix}-reconciler-{i}\""),
                ]);
                let name = format!("reconciler-{i}");
                Service::start(binary("edgesync-reconciler"), None, &name, &sets)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bridges = (1..=shape.bridges)
            .map(|i| {
                let sets = with(&[
                    format!("mqtt.port={}", mosquitto.port()),
                    "mqtt.keep_alive_secs=5".into(),
                    format!("mqtt.client_id=\"{prefix}-bridge-{i}\""),
                ]);
                Service::start(
                    binary("edgesync-bridge"),
                    None,
                    &format!("bridge-{i}"),
                    &sets,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let devices = spread_devices(prefix, shape.agents);
        let links = devices
            .iter()
            .map(|_| FaultProxy::start(mosquitto.addr()))
            .collect::<Result<Vec<_>, _>>()?;
        let agents = devices
            .iter()
            .zip(&links)
            .enumerate()
            .map(|(i, (d, link))| {
                let mut sets = agent_sets(d, link);
                sets.push(format!("spool.policy=\"{}\"", POLICIES[i % POLICIES.len()]));
                sets.push(format!("spool.max_bytes={SPOOL_QUOTA_BYTES}"));
                Service::start(binary("edgesync-agent"), Some("run"), d, &sets)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let feeders = devices
            .iter()
            .zip(&agents)
            .map(|(d, a)| Feeder::start(a.http, d.clone(), PER_POST, POST_EVERY))
            .collect();
        Ok(Self {
            shape,
            kafka,
            mosquitto,
            bridges,
            reconcilers,
            devices,
            links,
            agents,
            feeders,
        })
    }

    /// The process a target names (links have none).
    pub fn process(&mut self, t: Target) -> Option<&mut Managed> {
        Some(match t {
            Target::Agent(i) => &mut self.agents[i].process,
            Target::Bridge(i) => &mut self.bridges[i].process,
            Target::Reconciler(i) => &mut self.reconcilers[i].process,
            Target::Mosquitto => self.mosquitto.process(),
            Target::Kafka(i) => self.kafka.node(i),
            Target::Link(_) => return None,
        })
    }

    /// Applies `step`'s fault.
    pub fn apply(&mut self, step: &Step) -> Result<(), Error> {
        match (step.target, step.fault) {
            (Target::Link(i), f) => apply_link(&self.links[i], f),
            (Target::Agent(i), Fault::Quota) => {
                self.links[i].cut();
                self.feeders[i].set_burst(true);
            }
            (Target::Agent(i), Fault::Clock(days)) => {
                let p = &mut self.agents[i].process;
                p.set_env(
                    CLOCK_OFFSET_ENV,
                    Some(&(i64::from(days) * DAY_MS).to_string()),
                );
                p.relaunch()?;
            }
            (Target::Reconciler(i), Fault::StateLoss) => {
                let r = &mut self.reconcilers[i];
                r.process.kill9();
                let state = r.dir().join("state");
                // Absent already: the process restarted from the last loss has not made it yet.
                match std::fs::remove_dir_all(&state) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::Io {
                            what: format!("remove {}", state.display()),
                            source: e,
                        })
                    }
                    _ => {}
                }
            }
            (t, Fault::Kill) => {
                if let Some(p) = self.process(t) {
                    p.kill9();
                }
            }
            (t, Fault::Hang) => self.process(t).map_or(Ok(()), Managed::pause)?,
            (t, f) => unreachable!("the schedule never draws {f:?} for {t:?}"),
        }
        Ok(())
    }

    /// Heals `step`'s fault.
    pub fn heal(&mut self, step: &Step) -> Result<(), Error> {
        match (step.target, step.fault) {
            (Target::Link(i), _) => heal_link(&self.links[i]),
            (Target::Agent(i), Fault::Quota) => {
                self.feeders[i].set_burst(false);
                self.links[i].heal();
            }
            (Target::Agent(i), Fault::Clock(_)) => {
                let p = &mut self.agents[i].process;
                p.set_env(CLOCK_OFFSET_ENV, None);
                p.relaunch()?;
            }
            (t, Fault::Kill | Fault::StateLoss) => {
                self.process(t).map_or(Ok(()), Managed::relaunch)?;
            }
            (t, Fault::Hang) => self.process(t).map_or(Ok(()), Managed::resume)?,
            (t, f) => unreachable!("the schedule never draws {f:?} for {t:?}"),
        }
        Ok(())
    }

    /// Every process that is not running (it could not come back from a fault) is named in
    /// the result, with its log's tail, and started again so the run can drain.
    pub fn revive(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for t in processes(self.shape) {
            let Some(p) = self.process(t) else { continue };
            if !p.is_running() {
                dead.push(format!("{t:?} had exited:\n{}", p.log_tail(20)));
                if let Err(e) = p.relaunch() {
                    dead.push(format!("{t:?} could not be started again: {e}"));
                }
            }
        }
        dead
    }
}

impl Rig {
    /// Copies every process's log into `dir` (for the diagnosis of a failed run).
    pub fn save_logs(&mut self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for t in processes(self.shape) {
            if let Some(p) = self.process(t) {
                std::fs::write(dir.join(format!("{t:?}.log")), p.log_tail(usize::MAX))?;
            }
        }
        for (name, svc) in [&self.reconcilers, &self.bridges]
            .into_iter()
            .flatten()
            .map(|s| (s.process.spec().name.clone(), s))
        {
            if let Ok((_, text)) = svc.get("/metrics") {
                std::fs::write(dir.join(format!("{name}.metrics")), text)?;
            }
            if let Ok((_, text)) = svc.get("/v1/status") {
                std::fs::write(dir.join(format!("{name}.status")), text)?;
            }
        }
        Ok(())
    }
}

/// `n` device ids `<prefix>-1`… (or `<prefix><k>-1`… for the first `k` that works) whose
/// records cover every one of the [`PARTITIONS`] (as far as `n` allows): every consumer of the
/// device-keyed topics then has devices, so a fault on any of them is felt.
pub fn spread_devices(prefix: &str, n: usize) -> Vec<String> {
    let want = n.min(PARTITIONS as usize);
    (0..)
        .map(|k| {
            let p = if k == 0 {
                prefix.to_owned()
            } else {
                format!("{prefix}{k}")
            };
            (1..=n).map(|i| format!("{p}-{i}")).collect::<Vec<_>>()
        })
        .find(|names| {
            let hit: std::collections::BTreeSet<u32> = names
                .iter()
                .map(|d| partition_for(d.as_bytes(), PARTITIONS))
                .collect();
            hit.len() == want
        })
        .expect("some prefix spreads")
}

fn apply_link(link: &FaultProxy, fault: Fault) {
    match fault {
        Fault::Cut => link.cut(),
        Fault::Blackhole => link.blackhole(),
        Fault::Latency(ms) => link.set_latency(Duration::from_millis(ms)),
        Fault::Throttle(bps) => link.set_bandwidth(Some(bps)),
        Fault::Reset => link.reset(),
        f => unreachable!("the schedule never draws {f:?} for a link"),
    }
}

fn heal_link(link: &FaultProxy) {
    link.heal();
    link.set_latency(Duration::ZERO);
    link.set_bandwidth(None);
}
