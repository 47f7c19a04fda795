//! Kafka brokers on free ports: Apache Kafka (KRaft; one node, or a cluster of three) and
//! tansu, behind one handle.
//!
//! Apache Kafka is the reference broker: [`Kafka::start`] starts it unless
//! `EDGESYNC_TEST_BROKER=tansu` says otherwise, so every test that needs "a Kafka" runs on it by
//! default and the whole suite can be pointed at tansu. Tests that must hold on both brokers
//! (the compatibility record, a subset of the service tests) name each with
//! [`Kafka::start_on`]. A [`Kafka`] owns its nodes: node `i` can be killed, hung (SIGSTOP),
//! resumed and restarted on its own data through [`Kafka::node`]; dropping the handle kills
//! every node and removes their directories.

pub(crate) mod apache;
mod tansu;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};
use tempfile::TempDir;

pub use tansu::Storage;

use crate::process::Managed;
use crate::{io, Error};

/// A producer context that counts delivery reports: the leanest client a benchmark can time
/// a broker with (no per-record future).
#[derive(Debug, Default)]
pub struct CountingDeliveries {
    /// Records confirmed.
    pub ok: AtomicU64,
    /// Records that failed.
    pub failed: AtomicU64,
}

impl CountingDeliveries {
    /// Reports so far, confirmed or failed.
    pub fn reported(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

impl ClientContext for CountingDeliveries {}

impl ProducerContext for CountingDeliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let n = if r.is_ok() { &self.ok } else { &self.failed };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which broker to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// Apache Kafka in KRaft mode, from its Maven Central jars.
    Apache,
    /// tansu on the given storage.
    Tansu(Storage),
}

impl Broker {
    /// The broker the suite runs on: `EDGESYNC_TEST_BROKER` (`apache`, `tansu` for SQLite,
    /// `tansu-memory`), Apache Kafka when unset.
    pub fn from_env() -> Result<Self, Error> {
        match std::env::var("EDGESYNC_TEST_BROKER").as_deref() {
            Err(_) | Ok("" | "apache") => Ok(Broker::Apache),
            Ok(other) => other.parse(),
        }
    }

    /// Name and version, e.g. "Apache Kafka 4.4.0" or "tansu 0.6.0".
    pub fn version(&self) -> String {
        match self {
            Broker::Apache => format!("Apache Kafka {}", apache::version()),
            Broker::Tansu(_) => tansu::version(),
        }
    }
}

impl std::str::FromStr for Broker {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "apache" => Ok(Broker::Apache),
            "tansu" => Ok(Broker::Tansu(Storage::Sqlite)),
            "tansu-memory" => Ok(Broker::Tansu(Storage::Memory)),
            other => Err(Error::Command {
                command: format!("choose broker {other:?}"),
                output: "expected apache, tansu or tansu-memory".into(),
            }),
        }
    }
}

/// One broker process.
#[derive(Debug)]
struct Node {
    id: i32,
    port: u16,
    process: Managed,
}

/// A running broker or cluster. Dropping it kills every node and removes its directory.
#[derive(Debug)]
pub struct Kafka {
    broker: Broker,
    nodes: Vec<Node>,
    dir: TempDir,
}

pub(crate) fn metadata_ok(bootstrap: &str) -> bool {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create();
    consumer
        .map(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
        .unwrap_or(false)
}

impl Kafka {
    /// The suite's broker ([`Broker::from_env`]), one node on durable storage.
    pub fn start() -> Result<Self, Error> {
        Self::start_on(Broker::from_env()?)
    }

    /// `broker`, one node.
    pub fn start_on(broker: Broker) -> Result<Self, Error> {
        match broker {
            Broker::Apache => Self::apache(1),
            Broker::Tansu(storage) => {
                let dir = broker_dir()?;
                let (spec, port) = tansu::spec(storage, dir.path())?;
                let process = Managed::start(spec)?;
                let nodes = vec![Node {
                    id: 0,
                    port,
                    process,
                }];
                Ok(Self { broker, nodes, dir })
            }
        }
    }

    /// An Apache Kafka cluster of three voters (replication factor 3, `min.insync.replicas=2`).
    pub fn cluster() -> Result<Self, Error> {
        Self::apache(3)
    }

    fn apache(n: usize) -> Result<Self, Error> {
        let dir = broker_dir()?;
        let plan = apache::plan(n)?;
        let node_dir = |id: i32| dir.path().join(format!("node-{id}"));
        // Formatted side by side (a JVM start each), then launched together: no node is ready
        // before a quorum of voters runs.
        let formats = plan
            .iter()
            .map(|a| apache::prepare(*a, &plan, &node_dir(a.id)))
            .collect::<Result<Vec<_>, _>>()?;
        for f in formats {
            apache::formatted(f)?;
        }
        let mut nodes = Vec::with_capacity(n);
        for addr in &plan {
            let process = Managed::launch(apache::spec(*addr, n, &node_dir(addr.id)))?;
            nodes.push(Node {
                id: addr.id,
                port: addr.port,
                process,
            });
        }
        for node in &mut nodes {
            node.process.wait_ready()?;
        }
        Ok(Self {
            broker: Broker::Apache,
            nodes,
            dir,
        })
    }

    /// Which broker this is.
    pub fn broker(&self) -> Broker {
        self.broker
    }

    /// `bootstrap.servers` for clients: every node.
    pub fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        addrs.join(",")
    }

    /// The first node's listener.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[0].port))
    }

    /// A client config pointing at this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a handle has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s process (0-based): kill -9, pause (SIGSTOP), resume, restart on its data.
    pub fn node(&mut self, i: usize) -> &mut Managed {
        &mut self.nodes[i].process
    }

    /// The first node's process.
    pub fn process(&mut self) -> &mut Managed {
        self.node(0)
    }

    /// Kills every node, then starts them all again on their data and waits until each serves
    /// (a restart of the whole cluster).
    pub fn restart_all(&mut self) -> Result<(), Error> {
        for n in &mut self.nodes {
            n.process.kill9();
        }
        for n in &mut self.nodes {
            n.process.relaunch()?;
        }
        for n in &mut self.nodes {
            n.process.wait_ready()?;
        }
        Ok(())
    }

    /// The index (for [`Kafka::node`]) of the node leading `topic`'s `partition`, as the
    /// cluster's metadata says now.
    pub fn leader(&self, topic: &str, partition: i32) -> Result<usize, Error> {
        let c: BaseConsumer = self.client_config().create()?;
        let md = c.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let leader = md
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .find(|p| p.id() == partition)
            .map(|p| p.leader());
        leader
            .and_then(|id| self.nodes.iter().position(|n| n.id == id))
            .ok_or_else(|| Error::Command {
                command: format!("find the leader of {topic}/{partition}"),
                output: format!("metadata names leader {leader:?}"),
            })
    }

    /// The smallest in-sync replica set over every partition of `topics`, as metadata says now.
    pub fn in_sync_replicas(&self, topics: &[&str]) -> Result<usize, Error> {
        let c: BaseConsumer = self.client_config().create()?;
        let mut smallest = usize::MAX;
        for topic in topics {
            let md = c.fetch_metadata(Some(topic), Duration::from_secs(5))?;
            let partitions = md.topics().iter().flat_map(|t| t.partitions());
            smallest = partitions.map(|p| p.isr().len()).fold(smallest, usize::min);
        }
        Ok(smallest)
    }

    /// Waits until every partition of `topics` has all its replicas (one per node, up to three)
    /// in sync again, e.g. after a node was restarted.
    pub fn wait_in_sync(&self, topics: &[&str], timeout: Duration) -> Result<(), Error> {
        let replicas = self.nodes.len().min(3);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Metadata errors while a node restarts are part of what is waited out.
            match self.in_sync_replicas(topics) {
                Ok(n) if n >= replicas => return Ok(()),
                _ if std::time::Instant::now() > deadline => {
                    return Err(Error::Command {
                        command: format!("wait for {topics:?} to be in sync"),
                        output: format!("{:?} after {timeout:?}", self.in_sync_replicas(topics)),
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Creates a topic through the Kafka admin API, replicated on up to three nodes.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let replication = self.nodes.len().min(3) as i32;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        for (k, v) in config {
            topic = topic.set(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("build a runtime for the admin client"))?;
        let results = rt.block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))?;
        for r in results {
            if let Err((topic, code)) = r {
                return Err(Error::Command {
                    command: format!("create topic {topic}"),
                    output: code.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Reads every partition of `topic` from the start (by assignment: no group, so no
    /// rebalance delay) until `done` says the records so far are enough or `timeout` passes.
    /// Reads committed records only (`isolation.level=read_committed`, librdkafka's default).
    pub fn read_topic(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[Record]) -> bool,
    ) -> Result<Vec<Record>, Error> {
        use rdkafka::Message;
        let c: BaseConsumer = self
            .client_config()
            .set("group.id", crate::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let deadline = std::time::Instant::now() + timeout;
        let partitions = loop {
            let md = c.fetch_metadata(Some(topic), Duration::from_secs(5))?;
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n > 0 || std::time::Instant::now() >= deadline {
                break n;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions as i32 {
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let mut out = Vec::new();
        while std::time::Instant::now() < deadline && !done(&out) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                out.push(Record {
                    key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    partition: m.partition(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// The broker's directory (each node's storage and log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn broker_dir() -> Result<TempDir, Error> {
    tempfile::Builder::new()
        .prefix("edgesync-kafka-")
        .tempdir()
        .map_err(io("create broker dir"))
}

/// One record read by [`Kafka::read_topic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Key (lossy UTF-8).
    pub key: String,
    /// Partition.
    pub partition: i32,
    /// Value.
    pub payload: Vec<u8>,
}

/// The partition Kafka's default partitioner (and librdkafka's `murmur2_random`, which the
/// services' producers use) gives a non-empty `key` among `partitions`: Java's `murmur2`,
/// made positive, modulo the count. Lets a test choose keys that cover every partition.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    (h & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    /// Java's `Utils.murmur2` on the vectors of Kafka's own `UtilsTest`.
    #[test]
    fn partition_for_is_kafkas_murmur2() {
        let java = |s: &str, h: i32| {
            let want = (h & 0x7fff_ffff) as u32 % 1000;
            assert_eq!(super::partition_for(s.as_bytes(), 1000), want, "{s}");
        };
        java("21", -973_932_308);
        java("foobar", -790_332_482);
        java("a-little-bit-long-string", -985_981_536);
        java("a-little-bit-longer-string", -1_486_304_829);
        java(
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        );
        java("abc", 479_470_107);
    }
}
