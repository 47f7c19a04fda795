//! Apache Kafka in KRaft mode, from the Maven Central jars `scripts/setup` installs.
//!
//! Every node is a combined broker + controller (`process.roles=broker,controller`) and a
//! voter of a static quorum (`controller.quorum.voters`), so one node is a whole cluster and
//! three nodes tolerate the loss of one. Each node's directory holds `server.properties`,
//! `log4j2.properties`, its log and `data/` (the log dirs and the metadata log); a restart
//! reuses all of it. Sizing for a 2-core, 24 GiB machine: a 512 MiB heap per node (768 MiB
//! when alone) and 5 partitions for `__consumer_offsets` and `__transaction_state` instead of
//! 50. Everything else is the broker's default, so the tests see what users' brokers do:
//! `group.initial.rebalance.delay.ms` stays 3 s, `auto.create.topics.enable` stays true.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::process::{free_port, ProcessSpec, Ready};
use crate::{io, Error};

/// The pinned version, read from the POM `scripts/setup` installs from (its one place).
pub fn version() -> &'static str {
    const POM: &str = include_str!("../../../scripts/kafka/pom.xml");
    POM.split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .unwrap_or("unknown")
}

/// The broker's jars: `EDGESYNC_KAFKA_LIBS`, or where `scripts/setup` puts them
/// (`$EDGESYNC_HOME/kafka-<version>/libs`).
pub fn libs() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGESYNC_KAFKA_LIBS") {
        return PathBuf::from(p);
    }
    crate::names::tools_home().join(format!("kafka-{}/libs", version()))
}

pub(crate) fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("java"))
}

/// Every test cluster is its own (own directories, own ports); the id only has to be the same
/// on its nodes. Base64url of the 16 bytes "edgesync-testkit".
const CLUSTER_ID: &str = "ZWRnZXN5bmMtdGVzdGtpdA";

/// The broker's logging: the Maven artifacts bring no configuration. INFO to standard output
/// (the node's log file), without the full config dump every client and server prints.
const LOG4J2: &str = "\
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
";

/// Ports and ids of one node.
#[derive(Clone, Copy, Debug)]
pub(super) struct NodeAddr {
    /// `node.id` (1-based).
    pub id: i32,
    /// Client listener.
    pub port: u16,
    /// Controller listener.
    pub controller_port: u16,
}

/// Picks ports for `n` nodes.
pub(super) fn plan(n: usize) -> Result<Vec<NodeAddr>, Error> {
    (1..=n as i32)
        .map(|id| {
            Ok(NodeAddr {
                id,
                port: free_port()?,
                controller_port: free_port()?,
            })
        })
        .collect()
}

fn server_properties(node: NodeAddr, all: &[NodeAddr], data: &Path) -> String {
    let voters: Vec<String> = all
        .iter()
        .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
        .collect();
    let replicas = all.len().min(3);
    let min_isr = if replicas >= 3 { 2 } else { 1 };
    format!(
        "process.roles=broker,controller\n\
         node.id={id}\n\
         controller.quorum.voters={voters}\n\
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         log.dirs={data}\n\
         default.replication.factor={replicas}\n\
         min.insync.replicas={min_isr}\n\
         offsets.topic.replication.factor={replicas}\n\
         offsets.topic.num.partitions=5\n\
         transaction.state.log.replication.factor={replicas}\n\
         transaction.state.log.min.isr={min_isr}\n\
         transaction.state.log.num.partitions=5\n",
        id = node.id,
        voters = voters.join(","),
        port = node.port,
        cport = node.controller_port,
        data = data.display(),
    )
}

/// Writes a node's files under `dir` and starts formatting its storage (once: a restart keeps
/// it); [`formatted`] waits for the format to finish.
pub(super) fn prepare(node: NodeAddr, all: &[NodeAddr], dir: &Path) -> Result<Child, Error> {
    let libs = libs();
    if !libs.join(format!("kafka_2.13-{}.jar", version())).exists() {
        return Err(Error::Missing {
            program: format!("Apache Kafka {} in {}", version(), libs.display()),
            hint: "run scripts/setup",
        });
    }
    std::fs::create_dir_all(dir).map_err(io("create node dir"))?;
    let props = dir.join("server.properties");
    std::fs::write(&props, server_properties(node, all, &dir.join("data")))
        .map_err(io("write server.properties"))?;
    std::fs::write(dir.join("log4j2.properties"), LOG4J2).map_err(io("write log4j2.properties"))?;
    Command::new(java())
        .args(jvm_args(dir, "128m"))
        .arg("kafka.tools.StorageTool")
        .args(["format", "--ignore-formatted", "-t", CLUSTER_ID, "-c"])
        .arg(&props)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run kafka.tools.StorageTool"))
}

/// Waits for a format started by [`prepare`].
pub(super) fn formatted(format: Child) -> Result<(), Error> {
    let out = format
        .wait_with_output()
        .map_err(io("wait for kafka.tools.StorageTool"))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: "kafka.tools.StorageTool format".into(),
            output: String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned(),
        });
    }
    Ok(())
}

fn jvm_args(dir: &Path, heap: &str) -> Vec<OsString> {
    let mut cp = libs().into_os_string();
    cp.push("/*");
    vec![
        format!("-Xmx{heap}").into(),
        "-Xms128m".into(),
        "-XX:+ExitOnOutOfMemoryError".into(),
        "-Djava.awt.headless=true".into(),
        {
            let mut s = OsString::from("-Dlog4j2.configurationFile=");
            s.push(dir.join("log4j2.properties"));
            s
        },
        "-cp".into(),
        cp,
    ]
}

/// How to run node `node` of a cluster of `nodes` from its directory.
pub(super) fn spec(node: NodeAddr, nodes: usize, dir: &Path) -> ProcessSpec {
    let heap = if nodes == 1 { "768m" } else { "512m" };
    let mut args = jvm_args(dir, heap);
    args.push("kafka.Kafka".into());
    args.push(dir.join("server.properties").into());
    let bootstrap = format!("127.0.0.1:{}", node.port);
    ProcessSpec {
        name: format!("kafka node {} :{}", node.id, node.port),
        program: java(),
        args,
        cwd: dir.to_path_buf(),
        env: Vec::new(),
        log: dir.join("kafka.log"),
        ready: Ready::Probe(Box::new(move || serves_metadata(&bootstrap, node.id))),
    }
}

/// Ready when the node answers metadata and lists itself among the brokers: it has registered
/// with the controllers and opened its client listener.
fn serves_metadata(bootstrap: &str, id: i32) -> bool {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create();
    consumer
        .ok()
        .and_then(|c| c.fetch_metadata(None, Duration::from_secs(2)).ok())
        .is_some_and(|md| md.brokers().iter().any(|b| b.id() == id))
}
