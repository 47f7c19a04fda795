//! A real Prometheus (Debian's, installed by `scripts/setup`) on a free port, running the
//! project's own `deploy/prometheus/prometheus.yml` pointed at the services under test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, Managed, ProcessSpec, Ready};
use crate::{io, Error};

/// `deploy/prometheus/` of this repository.
pub fn deploy_dir() -> PathBuf {
    crate::deploy("prometheus")
}

/// What Prometheus reports of its targets, rules and alerts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Scrape targets.
    pub targets: usize,
    /// Of which up.
    pub targets_up: usize,
    /// Alerting and recording rules loaded.
    pub rules: usize,
    /// Those whose last evaluation failed (or never ran), with the error.
    pub unhealthy_rules: Vec<String>,
    /// Names of the alerts firing.
    pub firing: Vec<String>,
    /// Names of the alerts pending (condition true, `for` not yet over).
    pub pending: Vec<String>,
}

/// A running Prometheus. Dropping it kills it and removes its data.
#[derive(Debug)]
pub struct Prometheus {
    process: Managed,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus on the shipped config and rules, scraping and evaluating every
    /// second, with each job's target replaced by `targets` (job name, addresses).
    pub fn start(targets: &[(&str, Vec<SocketAddr>)]) -> Result<Self, Error> {
        let deploy = deploy_dir();
        let mut config = std::fs::read_to_string(deploy.join("prometheus.yml"))
            .map_err(io("read deploy/prometheus/prometheus.yml"))?
            .replace("15s", "1s")
            .replace(
                "- edgesync-rules.yml",
                &format!("- {}", deploy.join("edgesync-rules.yml").display()),
            );
        for (job, addrs) in targets {
            // The shipped config has one default target per job, on the service's default port.
            let default = match *job {
                "edgesync-agent" => "\"127.0.0.1:9464\"",
                "edgesync-bridge" => "\"127.0.0.1:9465\"",
                "edgesync-reconciler" => "\"127.0.0.1:9466\"",
                other => return Err(Error::Prometheus(format!("unknown job {other}"))),
            };
            let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
            config = config.replace(default, &list.join(", "));
        }
        let dir = tempfile::Builder::new()
            .prefix("edgesync-prometheus-")
            .tempdir()
            .map_err(io("create prometheus dir"))?;
        std::fs::write(dir.path().join("prometheus.yml"), config)
            .map_err(io("write prometheus.yml"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let process = Managed::start(ProcessSpec {
            name: format!("prometheus :{}", addr.port()),
            program: "prometheus".into(),
            args: vec![
                "--config.file=prometheus.yml".into(),
                "--storage.tsdb.path=data".into(),
                format!("--web.listen-address={addr}").into(),
            ],
            cwd: dir.path().to_owned(),
            env: vec![],
            log: dir.path().join("prometheus.log"),
            ready: Ready::Http {
                addr,
                path: "/-/ready".into(),
            },
        })?;
        Ok(Self {
            process,
            addr,
            _dir: dir,
        })
    }

    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process.
    pub fn process(&mut self) -> &mut Managed {
        &mut self.process
    }

    /// A GET on the HTTP API (`/api/v1/...`): the JSON body as text.
    fn get(&self, path: &str) -> Result<String, Error> {
        let what = "prometheus API";
        let timeout = Duration::from_secs(10);
        let a = edgesync_servicekit::http::request(self.addr, "GET", path, None, timeout)
            .map_err(io(what))?;
        if a.status != 200 {
            return Err(Error::Prometheus(format!(
                "{path}: {} {}",
                a.status, a.body
            )));
        }
        Ok(a.body)
    }

    /// A GET on the HTTP API, parsed.
    pub fn json(&self, path: &str) -> Result<serde_json::Value, Error> {
        let body = self.get(path)?;
        serde_json::from_str(&body).map_err(|e| Error::Prometheus(format!("{path}: {e}: {body}")))
    }

    /// Its targets, rules and alerts as it reports them now.
    pub fn view(&self) -> Result<View, Error> {
        let list = |v: &serde_json::Value| v.as_array().cloned().unwrap_or_default();
        let targets = list(&self.json("/api/v1/targets")?["data"]["activeTargets"]);
        let rules: Vec<serde_json::Value> = list(&self.json("/api/v1/rules")?["data"]["groups"])
            .iter()
            .flat_map(|g| list(&g["rules"]))
            .collect();
        let alerts = list(&self.json("/api/v1/alerts")?["data"]["alerts"]);
        let named = |state: &str| -> Vec<String> {
            let names: std::collections::BTreeSet<String> = alerts
                .iter()
                .filter(|a| a["state"] == state)
                .map(|a| a["labels"]["alertname"].as_str().unwrap_or("?").to_owned())
                .collect();
            names.into_iter().collect()
        };
        Ok(View {
            targets: targets.len(),
            targets_up: targets.iter().filter(|t| t["health"] == "up").count(),
            rules: rules.len(),
            unhealthy_rules: rules
                .iter()
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{}: {}", r["name"], r["lastError"]))
                .collect(),
            firing: named("firing"),
            pending: named("pending"),
        })
    }

    /// The path of an instant query of `expr`.
    pub fn query_path(expr: &str) -> String {
        format!("/api/v1/query?query={}", urlencode(expr))
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
