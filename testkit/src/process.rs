//! Starting, watching, killing and restarting processes.

use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io, Error};

/// Listener ports come from below Linux's default ephemeral range (32768-60999): a port the
/// OS hands out for `bind(0)` can just as well become the local port of some outgoing
/// connection while a killed broker restarts, and the restart then fails with "Address
/// already in use" (seen on a 3-node cluster restart while other tests ran).
const LISTENER_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A free TCP port on 127.0.0.1 for a listener: a random one of [`LISTENER_PORTS`] that binds.
pub fn free_port() -> Result<u16, Error> {
    use std::hash::{BuildHasher, Hasher};
    let span = u64::from(LISTENER_PORTS.end - LISTENER_PORTS.start);
    for _ in 0..1_000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(u64::from(std::process::id()));
        let port = LISTENER_PORTS.start + (h.finish() % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("bind a free port"))?;
    Ok(l.local_addr().map_err(io("read the bound port"))?.port())
}

/// When a process counts as ready.
pub enum Ready {
    /// Accepts TCP connections.
    Tcp(SocketAddr),
    /// Answers `GET path` with HTTP 200.
    Http {
        /// Where.
        addr: SocketAddr,
        /// Which path, e.g. `/health`.
        path: String,
    },
    /// A custom probe returns true.
    Probe(Box<dyn Fn() -> bool + Send + Sync>),
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ready::Tcp(a) => write!(f, "Tcp({a})"),
            Ready::Http { addr, path } => write!(f, "Http({addr}{path})"),
            Ready::Probe(_) => f.write_str("Probe"),
        }
    }
}

/// How to start a process.
#[derive(Debug)]
pub struct ProcessSpec {
    /// Name in messages.
    pub name: String,
    /// Program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Working directory (its data lives here; a restart reuses it).
    pub cwd: PathBuf,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// Where stdout and stderr go (appended across restarts).
    pub log: PathBuf,
    /// When it is ready.
    pub ready: Ready,
}

/// A running (or killed) process under test control.
#[derive(Debug)]
pub struct Managed {
    spec: ProcessSpec,
    child: Option<Child>,
}

fn http_ok(addr: SocketAddr, path: &str) -> bool {
    let timeout = Duration::from_secs(2);
    edgesync_servicekit::http::request(addr, "GET", path, None, timeout)
        .is_ok_and(|a| a.status == 200)
}

impl Managed {
    /// Starts the process and waits until it is ready.
    pub fn start(spec: ProcessSpec) -> Result<Self, Error> {
        let mut m = Self::launch(spec)?;
        m.wait_ready()?;
        Ok(m)
    }

    /// Starts the process without waiting until it is ready (for processes that become ready
    /// only together, like the voters of a Kafka quorum); [`Managed::wait_ready`] waits.
    pub fn launch(spec: ProcessSpec) -> Result<Self, Error> {
        let mut m = Self { spec, child: None };
        m.relaunch()?;
        Ok(m)
    }

    /// Starts the process again with the same spec (same data directory), without waiting;
    /// kills it first if it runs.
    pub fn relaunch(&mut self) -> Result<(), Error> {
        self.kill9();
        let s = &self.spec;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&s.log)
            .map_err(io(format!("open log {}", s.log.display())))?;
        let err = log.try_clone().map_err(io("clone log handle"))?;
        // setpriv: the child gets SIGKILL when the thread that started it ends, so nothing
        // outlives a test, not even one that was killed.
        let mut cmd = if std::path::Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&s.program);
            c
        } else {
            Command::new(&s.program)
        };
        cmd.args(&s.args)
            .current_dir(&s.cwd)
            .envs(s.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing {
                program: s.program.display().to_string(),
                hint: "run scripts/setup",
            },
            _ => Error::Io {
                what: format!("spawn {}", s.program.display()),
                source: e,
            },
        })?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the process is ready, or fails if it exits first or takes longer than
    /// [`crate::READY_TIMEOUT`].
    pub fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + crate::READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(self.not_ready(format!("exited with {status}")));
            }
            let ready = match &self.spec.ready {
                Ready::Tcp(a) => TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok(),
                Ready::Http { addr, path } => http_ok(*addr, path),
                Ready::Probe(p) => p(),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.not_ready(format!("not ready after {:?}", crate::READY_TIMEOUT)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn not_ready(&self, reason: String) -> Error {
        Error::NotReady {
            name: self.spec.name.clone(),
            reason,
            log: self.log_tail(40),
        }
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (setpriv execs the program, so the child's pid is the program's), then waits
    /// up to `timeout` for it to exit; returns its exit status, or `None` if it had to be
    /// killed.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts the process again with the same spec (same data directory) and waits until ready.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.relaunch()?;
        self.wait_ready()
    }

    /// SIGSTOP: the process hangs (holds its sockets, answers nothing) until
    /// [`Managed::resume`].
    pub fn pause(&mut self) -> Result<(), Error> {
        self.signal("STOP")
    }

    /// SIGCONT after [`Managed::pause`].
    pub fn resume(&mut self) -> Result<(), Error> {
        self.signal("CONT")
    }

    fn signal(&mut self, name: &str) -> Result<(), Error> {
        let pid = self.pid().ok_or_else(|| Error::Command {
            command: format!("kill -{name}"),
            output: format!("{} is not running", self.spec.name),
        })?;
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .map_err(io(format!("kill -{name} {pid}")))?;
        if !status.success() {
            return Err(Error::Command {
                command: format!("kill -{name} {pid}"),
                output: status.to_string(),
            });
        }
        Ok(())
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.spec.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The spec it runs with.
    pub fn spec(&self) -> &ProcessSpec {
        &self.spec
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next (re)launch.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.spec.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.spec.env.push((key.into(), v.into()));
        }
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} log (last 40 lines) ---\n{}\n--- end of {} log ---",
                self.spec.name,
                self.log_tail(40),
                self.spec.name
            );
        }
        self.kill9();
    }
}
