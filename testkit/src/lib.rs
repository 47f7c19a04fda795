//! # edgesync-testkit: real brokers and real faults for tests
//!
//! Dev-dependency only. Everything here starts real things on this machine — no mocks:
//!
//! - [`Mosquitto`]: a Mosquitto broker from a generated config (listener on a free port,
//!   persistence directory, optional password and ACL files).
//! - [`Kafka`]: a Kafka broker on free ports, with topic creation through the admin API and a
//!   reader: Apache Kafka in KRaft mode from the jars `scripts/setup` installs (one node by
//!   default, or a 3-node cluster whose nodes can be killed, hung and restarted), or tansu
//!   (durable SQLite storage or in memory), the second broker the suite checks.
//! - [`FaultProxy`]: a TCP proxy between a client and a broker that can cut, blackhole, reset,
//!   delay and throttle traffic, and counts bytes in each direction.
//! - [`Prometheus`]: Prometheus on the project's own `deploy/prometheus/` config and alert
//!   rules, pointed at the services under test.
//! - [`SchemaRegistry`]: Apicurio Registry (assembled from Maven Central by `scripts/setup`)
//!   with in-memory storage, its Confluent-compatible API on a free port; [`analytics`]: the
//!   analytics team's tools that read through it (kafka-console-consumer, Kafka Streams).
//! - [`Managed`]: process control for any of these and for the project's own binaries — start,
//!   wait until really ready, `kill -9`, restart on the same data directory.
//!
//! Every process is started under `setpriv --pdeathsig KILL`, so it dies with the test that
//! started it even when that test is killed; dropping a handle kills the process; a handle
//! dropped while its test panics prints the tail of the process's log first.

pub mod analytics;
pub mod broker_requests;
pub mod cpu;
mod kafka;
pub mod mem;
mod mosquitto;
mod names;
mod process;
mod prometheus;
mod proxy;
mod registry;
mod services;
mod tls;

pub use kafka::{partition_for, Broker, CountingDeliveries, Kafka, Record, Storage};
pub use mosquitto::{Mosquitto, MosquittoOptions};
pub use names::{
    deploy, files_by_size, flip_bytes, knob, outside_python, read_outputs, read_outputs_from,
    tools_home, unique,
};
pub use process::{free_port, Managed, ProcessSpec, Ready};
pub use prometheus::{Prometheus, View as PrometheusView};
pub use proxy::FaultProxy;
pub use registry::{SchemaRegistry, CCOMPAT_PATH};
pub use services::{http, metric_in, workspace_binary, Service};
pub use tls::TestPki;

use std::time::{Duration, Instant};

/// How long anything may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `f` every 100 ms until it holds or `timeout` passes; whether it held (asked once more
/// at the deadline, so a condition that came true during the last sleep counts).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// What went wrong while setting up a test fixture.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A program the fixture needs is not installed.
    #[error("{program} not found ({hint})")]
    Missing {
        /// The program.
        program: String,
        /// How to get it.
        hint: &'static str,
    },
    /// A process did not become ready in time, or exited while starting.
    #[error("{name} not ready: {reason}\n--- last lines of its log ---\n{log}")]
    NotReady {
        /// The process.
        name: String,
        /// Why.
        reason: String,
        /// The tail of its log.
        log: String,
    },
    /// A Kafka client call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Prometheus refused a request or a setting.
    #[error("prometheus: {0}")]
    Prometheus(String),
    /// A helper command failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command.
        command: String,
        /// What it printed.
        output: String,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Defines one test per broker for each named function `fn name(broker: Broker)` in scope:
/// `name::apache` (Apache Kafka, the reference) and `name::tansu` (tansu on SQLite), so a
/// regression on either broker fails the suite.
#[macro_export]
macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn apache() {
                super::$name($crate::Broker::Apache)
            }
            #[test]
            fn tansu() {
                super::$name($crate::Broker::Tansu($crate::Storage::Sqlite))
            }
        }
    )*};
}
