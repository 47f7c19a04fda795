//! edgesync's own binaries as managed processes for integration tests: each configured by
//! `--set` flags only, with its HTTP endpoint on a free port and readiness on `/healthz`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, Managed, ProcessSpec, Ready};
use crate::{io, Error};

/// The path of workspace binary `name`, next to the running test's `deps` directory (cargo
/// builds every binary of the packages under test there).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .map(PathBuf::from)
        .unwrap_or_default();
    dir.join(name)
}

/// A running edgesync service with its own directory and HTTP address.
#[derive(Debug)]
pub struct Service {
    /// The process (kill -9, restart on the same directory, log).
    pub process: Managed,
    /// Its HTTP endpoint.
    pub http: SocketAddr,
    dir: TempDir,
}

impl Service {
    /// Starts `program` (`run` first when `subcommand` is given) with `--set http.listen=...`
    /// and every `sets` flag (`{dir}` in them is the service's directory), logging at `info`;
    /// ready when `/healthz` answers.
    pub fn start(
        program: PathBuf,
        subcommand: Option<&str>,
        name: &str,
        sets: &[String],
    ) -> Result<Self, Error> {
        Self::start_with_env(program, subcommand, name, sets, &[])
    }

    /// [`Service::start`] with extra environment variables (applied last: `RUST_LOG` here
    /// replaces the default).
    pub fn start_with_env(
        program: PathBuf,
        subcommand: Option<&str>,
        name: &str,
        sets: &[String],
        env: &[(String, String)],
    ) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("edgesync-service-")
            .tempdir()
            .map_err(io("create service dir"))?;
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let mut args: Vec<OsString> = subcommand.map(OsString::from).into_iter().collect();
        let listen = format!("http.listen=\"{http}\"");
        for s in std::iter::once(&listen).chain(sets) {
            args.push("--set".into());
            args.push(s.replace("{dir}", &dir.path().display().to_string()).into());
        }
        let process = Managed::start(ProcessSpec {
            name: name.to_owned(),
            program,
            args,
            cwd: dir.path().to_owned(),
            env: [("RUST_LOG".to_owned(), "info,rdkafka=warn".to_owned())]
                .iter()
                .chain(env)
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            log: dir.path().join("service.log"),
            ready: Ready::Http {
                addr: http,
                path: "/healthz".into(),
            },
        })?;
        Ok(Self { process, http, dir })
    }

    /// The service's directory (`{dir}` in its flags).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// GET `path`: status and body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http(self.http, "GET", path, "text/plain", b"").map(|(c, _, b)| (c, b))
    }

    /// POST `body` to `path`.
    pub fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        http(self.http, "POST", path, content_type, body).map(|(c, _, b)| (c, b))
    }

    /// The sum of the samples of metric `name` whose line contains `labels`.
    pub fn metric(&self, name: &str, labels: &str) -> f64 {
        let Ok((200, text)) = self.get("/metrics") else {
            return f64::NAN;
        };
        metric_in(&text, name, labels)
    }
}

/// The sum of the samples of metric `name` in a `/metrics` text whose line contains `labels`.
pub fn metric_in(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // Not `sum()`: an empty float sum is -0.0, which prints as "-0".
        .fold(0.0, |a, x| a + x)
}

/// One request (30 s at most); returns status, headers (`name: value` lines, names lower case)
/// and body. A GET sends no body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String, String)> {
    let body = (method != "GET").then_some((content_type, body));
    let a = edgesync_servicekit::http::request(addr, method, path, body, Duration::from_secs(30))?;
    Ok((a.status, a.head, a.body))
}
