//! A real Schema Registry on a free port: Apicurio Registry, as `scripts/setup` assembles it
//! from Maven Central (`scripts/schema-registry/pom.xml`), with its in-memory storage, so each
//! one starts empty. Clients use its Confluent-compatible API ([`SchemaRegistry::url`]).
//! Sized for a 2-core machine: a 256 MiB heap.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::process::{free_port, Managed, ProcessSpec, Ready};
use crate::{io, Error, TestPki};

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
    /// `http`, or `https` for [`SchemaRegistry::start_tls`].
    scheme: &'static str,
    _dir: TempDir,
}

/// Quarkus's settings for HTTPS only on `port` with `pki`'s server certificate, client
/// certificates required and checked against a trust store of `pki`'s CA written in `dir`.
fn tls_args(pki: &TestPki, port: u16, dir: &Path) -> Result<Vec<OsString>, Error> {
    let trust = dir.join("trust.p12");
    let out = Command::new("keytool")
        .args([
            "-importcert",
            "-noprompt",
            "-alias",
            "ca",
            "-storetype",
            "PKCS12",
        ])
        .args(["-storepass", "changeit", "-file"])
        .arg(&pki.ca)
        .arg("-keystore")
        .arg(&trust)
        .output()
        .map_err(io("run keytool"))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: "keytool -importcert".into(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let free = free_port()?;
    let setting = |k: &str, v: &dyn std::fmt::Display| OsString::from(format!("-D{k}={v}"));
    Ok(vec![
        setting("quarkus.http.port", &free),
        setting("quarkus.http.ssl-port", &port),
        setting("quarkus.http.insecure-requests", &"disabled"),
        setting(
            "quarkus.http.ssl.certificate.file",
            &pki.server_cert.display(),
        ),
        setting(
            "quarkus.http.ssl.certificate.key-file",
            &pki.server_key.display(),
        ),
        setting(
            "quarkus.http.ssl.certificate.trust-store-file",
            &trust.display(),
        ),
        setting(
            "quarkus.http.ssl.certificate.trust-store-password",
            &"changeit",
        ),
        setting("quarkus.http.ssl.client-auth", &"required"),
    ])
}

impl SchemaRegistry {
    /// Starts a registry and waits until its API answers.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(None)
    }

    /// Starts a registry that serves only HTTPS, with `pki`'s server certificate, and requires
    /// a client certificate signed by `pki`'s CA (its trust store is made with the JDK's
    /// `keytool`).
    pub fn start_tls(pki: &TestPki) -> Result<Self, Error> {
        Self::start_with(Some(pki))
    }

    fn start_with(tls: Option<&TestPki>) -> Result<Self, Error> {
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
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut args: Vec<OsString> = vec![
            "-Xmx256m".into(),
            "-XX:+ExitOnOutOfMemoryError".into(),
            "-Dquarkus.http.host=127.0.0.1".into(),
        ];
        let ready = match tls {
            None => {
                args.push(format!("-Dquarkus.http.port={port}").into());
                Ready::Http {
                    addr,
                    path: format!("{CCOMPAT_PATH}/subjects"),
                }
            }
            Some(pki) => {
                args.extend(tls_args(pki, port, dir.path())?);
                Ready::Tcp(addr)
            }
        };
        args.extend(["-jar".into(), jar.into()]);
        let process = Managed::start(ProcessSpec {
            name: format!("schema registry :{port}"),
            program: crate::kafka::apache::java(),
            args,
            cwd: dir.path().to_path_buf(),
            env: Vec::new(),
            log: dir.path().join("registry.log"),
            ready,
        })?;
        Ok(Self {
            process,
            port,
            scheme: if tls.is_some() { "https" } else { "http" },
            _dir: dir,
        })
    }

    /// The base URL of the Confluent-compatible API (what `[schema_registry] url` and
    /// Confluent's clients take).
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}{CCOMPAT_PATH}", self.scheme, self.port)
    }

    /// The base URL of its own (Apicurio v2) API, what Apicurio's serdes take.
    pub fn apicurio_url(&self) -> String {
        format!("{}://127.0.0.1:{}/apis/registry/v2", self.scheme, self.port)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}
