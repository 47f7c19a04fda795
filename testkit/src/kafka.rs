//! The Kafka-protocol broker (tansu) on a free port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tempfile::TempDir;

use crate::process::{free_port, Managed, ProcessSpec, Ready};
use crate::{io, Error};

/// Where the broker keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// SQLite file in the broker's directory: survives `kill -9` and restarts.
    Sqlite,
    /// In memory: fast, gone on restart.
    Memory,
}

/// A running broker. Dropping it kills the broker and removes its directory.
#[derive(Debug)]
pub struct Kafka {
    process: Managed,
    port: u16,
    dir: TempDir,
}

/// Where `scripts/setup` installs tansu (or `EDGESYNC_TANSU`, or `tansu` on the PATH).
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGESYNC_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("EDGESYNC_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgesync")));
    match home.map(|h| h.join("tools/bin/tansu")) {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("tansu"),
    }
}

fn metadata_ok(bootstrap: &str) -> bool {
    let consumer: Result<BaseConsumer, _> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0")
        .create();
    consumer
        .map(|c| c.fetch_metadata(None, Duration::from_secs(2)).is_ok())
        .unwrap_or(false)
}

impl Kafka {
    /// On durable (SQLite) storage.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(Storage::Sqlite)
    }

    /// On the given storage.
    pub fn start_with(storage: Storage) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("edgesync-kafka-")
            .tempdir()
            .map_err(io("create broker dir"))?;
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu resolves sqlite:// paths against its working directory: the broker's dir.
        let engine = match storage {
            Storage::Sqlite => "sqlite://tansu.db".to_owned(),
            Storage::Memory => "memory://tansu/".to_owned(),
        };
        let bootstrap = format!("127.0.0.1:{port}");
        let spec = ProcessSpec {
            name: format!("tansu :{port}"),
            program: tansu_binary(),
            args: vec![
                "broker".into(),
                "--listener-url".into(),
                url.clone().into(),
                "--advertised-listener-url".into(),
                url.into(),
                "--storage-engine".into(),
                engine.into(),
            ],
            cwd: dir.path().to_path_buf(),
            env: vec![("RUST_LOG".into(), "warn".into())],
            log: dir.path().join("tansu.log"),
            ready: Ready::Probe(Box::new(move || metadata_ok(&bootstrap))),
        };
        let process = Managed::start(spec)?;
        Ok(Self { process, port, dir })
    }

    /// `bootstrap.servers` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A client config pointing at this broker.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        c
    }

    /// Creates a topic through the Kafka admin API (tansu does not create topics on first use).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
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

    /// Reads `topic` from the start, as a fresh consumer group, until `done` says the records
    /// so far are enough or `timeout` passes.
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
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        c.subscribe(&[topic])?;
        let deadline = std::time::Instant::now() + timeout;
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

    /// The process (kill -9, restart on the same storage, pid, log).
    pub fn process(&mut self) -> &mut Managed {
        &mut self.process
    }

    /// The broker's directory (storage, log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
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
