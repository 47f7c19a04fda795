//! A real Schema Registry on a free port: Apicurio Registry, as `scripts/setup` assembles it
//! from Maven Central (`scripts/schema-registry/pom.xml`), with its in-memory storage, so each
//! one starts empty. Clients use its Confluent-compatible API ([`SchemaRegistry::url`]).
//! Sized for a 2-core machine: a 256 MiB heap.

use std::path::PathBuf;

use tempfile::TempDir;

use crate::process::{free_port, Managed, ProcessSpec, Ready};
use crate::{io, Error};

/// The pinned version, read from the POM `scripts/setup` builds from (its one place).
pub fn version() -> &'static str {
    const POM: &str = include_str!("../../scripts/schema-registry/pom.xml");
    POM.split("<apicurio.version>")
        .nth(1)
        .and_then(|rest| rest.split("</apicurio.version>").next())
        .unwrap_or("unknown")
}

/// The runnable jar: in `EDGESYNC_SCHEMA_REGISTRY`, or where `scripts/setup` puts it
/// (`$EDGESYNC_HOME/apicurio-registry-<version>`).
pub fn jar() -> PathBuf {
    std::env::var_os("EDGESYNC_SCHEMA_REGISTRY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::names::tools_home().join(format!("apicurio-registry-{}", version()))
        })
        .join("apicurio-registry-runner.jar")
}

/// The path of the Confluent-compatible API under the registry's root.
pub const CCOMPAT_PATH: &str = "/apis/ccompat/v6";

/// A running registry. Dropping it kills it (its storage is in memory).
#[derive(Debug)]
pub struct SchemaRegistry {
    process: Managed,
    port: u16,
    _dir: TempDir,
}

impl SchemaRegistry {
    /// Starts a registry and waits until its API answers.
    pub fn start() -> Result<Self, Error> {
        let jar = jar();
        if !jar.exists() {
            return Err(Error::Missing {
                program: format!("Apicurio Registry {} in {}", version(), jar.display()),
                hint: "run scripts/setup",
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("edgesync-registry-")
            .tempdir()
            .map_err(io("create registry dir"))?;
        let port = free_port()?;
        let process = Managed::start(ProcessSpec {
            name: format!("schema registry :{port}"),
            program: crate::kafka::apache::java(),
            args: vec![
                "-Xmx256m".into(),
                "-XX:+ExitOnOutOfMemoryError".into(),
                format!("-Dquarkus.http.port={port}").into(),
                "-Dquarkus.http.host=127.0.0.1".into(),
                "-jar".into(),
                jar.into(),
            ],
            cwd: dir.path().to_path_buf(),
            env: Vec::new(),
            log: dir.path().join("registry.log"),
            ready: Ready::Http {
                addr: ([127, 0, 0, 1], port).into(),
                path: format!("{CCOMPAT_PATH}/subjects"),
            },
        })?;
        Ok(Self {
            process,
            port,
            _dir: dir,
        })
    }

    /// The base URL of the Confluent-compatible API (what `[schema_registry] url` and
    /// Confluent's clients take).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{CCOMPAT_PATH}", self.port)
    }

    /// The base URL of its own (Apicurio v2) API, what Apicurio's serdes take.
    pub fn apicurio_url(&self) -> String {
        format!("http://127.0.0.1:{}/apis/registry/v2", self.port)
    }

    /// Its HTTP address.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
