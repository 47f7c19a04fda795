//! tansu, a Kafka-protocol broker in Rust (crates.io), the second broker the tests check.

use std::path::{Path, PathBuf};

use crate::process::{free_port, ProcessSpec, Ready};
use crate::Error;

/// Where tansu keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// SQLite file in the broker's directory: survives `kill -9` and restarts.
    Sqlite,
    /// In memory: fast, gone on restart.
    Memory,
}

/// Where `scripts/setup` installs tansu (or `EDGESYNC_TANSU`, or `tansu` on the PATH).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGESYNC_TANSU") {
        return PathBuf::from(p);
    }
    let p = crate::names::tools_home().join("tools/bin/tansu");
    if p.exists() {
        p
    } else {
        PathBuf::from("tansu")
    }
}

/// What the installed binary says it is (`tansu --version`), e.g. "tansu 0.6.0".
pub fn version() -> String {
    std::process::Command::new(binary())
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "tansu (version unknown)".to_owned())
}

/// How to run tansu on `storage` from `dir`, on a free port (returned with the spec).
pub(super) fn spec(storage: Storage, dir: &Path) -> Result<(ProcessSpec, u16), Error> {
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
        program: binary(),
        args: vec![
            "broker".into(),
            "--listener-url".into(),
            url.clone().into(),
            "--advertised-listener-url".into(),
            url.into(),
            "--storage-engine".into(),
            engine.into(),
        ],
        cwd: dir.to_path_buf(),
        env: vec![("RUST_LOG".into(), "warn".into())],
        log: dir.join("tansu.log"),
        ready: Ready::Probe(Box::new(move || super::metadata_ok(&bootstrap))),
    };
    Ok((spec, port))
}
