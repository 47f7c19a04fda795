//! A real Mosquitto broker on a free port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{free_port, Managed, ProcessSpec, Ready};
use crate::{io, Error};

/// Options for the generated config.
#[derive(Debug, Default, Clone)]
pub struct MosquittoOptions {
    /// Users and passwords; when non-empty, anonymous clients are refused.
    pub users: Vec<(String, String)>,
    /// ACL file contents (Mosquitto syntax, e.g. `pattern write edgesync/v1/%c/batch`).
    pub acl: Option<String>,
    /// A second listener, TLS with these files (see [`Mosquitto::tls_addr`]);
    /// `require_client_cert` makes it mutual TLS.
    pub tls: Option<(crate::TestPki, bool)>,
    /// Save the persistence database after every change, so that a test can kill -9 the
    /// broker and find what it had. Off by default: the shipped `deploy/mosquitto.conf` keeps
    /// Mosquitto's own autosave, and saving after every change rewrites the whole database
    /// each time, which with thousands of queued messages stalls the broker for seconds
    /// (its clients then miss keep-alives and reconnect over and over).
    pub save_every_change: bool,
    /// Nagle's algorithm left on for client sockets, Mosquitto's own default. Off by default
    /// (`set_tcp_nodelay true`), as the shipped `deploy/mosquitto.conf` sets it: with it on, a
    /// small packet the broker sends after another that the client has not acknowledged yet
    /// (an ack after a PUBACK, a batch to the bridge after the last) waits for the client's
    /// delayed TCP acknowledgement, about 40 ms on Linux, and request-and-answer traffic such
    /// as an agent's window and its acks stalls on it.
    pub nagle: bool,
}

/// A running Mosquitto. Dropping it kills the broker and removes its directory.
#[derive(Debug)]
pub struct Mosquitto {
    process: Managed,
    port: u16,
    tls_port: Option<u16>,
    dir: TempDir,
}

/// Sends an MQTT 3.1.1 CONNECT and waits for any CONNACK: the broker is really serving.
fn mqtt_handshake(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let id = b"edgesync-ready-probe";
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        10,
        0,
        id.len() as u8,
    ];
    body.extend_from_slice(id);
    let mut pkt = vec![0x10, body.len() as u8];
    pkt.extend_from_slice(&body);
    let mut ack = [0u8; 4];
    s.write_all(&pkt).is_ok() && s.read_exact(&mut ack).is_ok() && ack[0] == 0x20
}

/// The broker's configuration: a plain listener on `port`, TLS on `tls_port` when asked,
/// persistence in `d`, and the options' users and ACL (their files written into `d`).
fn config(
    opts: &MosquittoOptions,
    d: &Path,
    port: u16,
    tls_port: Option<u16>,
) -> Result<String, Error> {
    let mut conf = format!("listener {port} 127.0.0.1\n");
    if let (Some((pki, require_client_cert)), Some(tls_port)) = (&opts.tls, tls_port) {
        // Security settings apply to the listener defined last.
        conf.push_str(&format!(
            "listener {tls_port} 127.0.0.1\n\
             cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_client_cert}\n",
            pki.ca.display(),
            pki.server_cert.display(),
            pki.server_key.display()
        ));
    }
    conf.push_str(&format!(
        "\
         persistence true\n\
         persistence_location {}/\n\
         log_dest stdout\n\
         log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         connection_messages true\n\
         max_inflight_messages 100\n\
         max_queued_messages 100000\n",
        d.display(),
    ));
    if !opts.nagle {
        conf.push_str("set_tcp_nodelay true\n");
    }
    if opts.save_every_change {
        conf.push_str("autosave_interval 1\nautosave_on_changes true\n");
    }
    if running_as_root() {
        // Mosquitto started as root switches to the `mosquitto` user, which cannot write to
        // this root-owned directory: stay root (a test broker on 127.0.0.1 only).
        conf.push_str("user root\n");
    }
    if opts.users.is_empty() {
        conf.push_str("allow_anonymous true\n");
    } else {
        let pwfile = password_file(d, &opts.users)?;
        conf.push_str(&format!(
            "allow_anonymous false\npassword_file {}\n",
            pwfile.display()
        ));
    }
    if let Some(acl) = &opts.acl {
        let aclfile = d.join("acl");
        std::fs::write(&aclfile, acl).map_err(io("write ACL file"))?;
        conf.push_str(&format!("acl_file {}\n", aclfile.display()));
    }
    Ok(conf)
}

/// A password file in `d` holding `users` (name, password), written by `mosquitto_passwd`.
fn password_file(d: &Path, users: &[(String, String)]) -> Result<PathBuf, Error> {
    let pwfile = d.join("passwd");
    std::fs::write(&pwfile, "").map_err(io("create password file"))?;
    for (user, pass) in users {
        let out = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&pwfile)
            .arg(user)
            .arg(pass)
            .output()
            .map_err(io("run mosquitto_passwd"))?;
        if !out.status.success() {
            return Err(Error::Command {
                command: "mosquitto_passwd".into(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
    }
    Ok(pwfile)
}

impl Mosquitto {
    /// Anonymous access, persistence on.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(MosquittoOptions::default())
    }

    /// With the given options.
    pub fn start_with(opts: MosquittoOptions) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("edgesync-mosquitto-")
            .tempdir()
            .map_err(io("create mosquitto dir"))?;
        let port = free_port()?;
        let d = dir.path();
        let tls_port = match opts.tls {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let conf = config(&opts, d, port, tls_port)?;
        let conf_path = d.join("mosquitto.conf");
        std::fs::write(&conf_path, conf).map_err(io("write mosquitto.conf"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let spec = ProcessSpec {
            name: format!("mosquitto :{port}"),
            program: PathBuf::from(mosquitto_binary()),
            args: vec!["-c".into(), conf_path.into_os_string()],
            cwd: d.to_path_buf(),
            env: Vec::new(),
            log: d.join("mosquitto.log"),
            ready: Ready::Probe(Box::new(move || mqtt_handshake(addr))),
        };
        let process = Managed::start(spec)?;
        Ok(Self {
            process,
            port,
            tls_port,
            dir,
        })
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The TLS listener's address, when configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }

    /// The process (kill -9, restart on the same persistence directory, pid, log).
    pub fn process(&mut self) -> &mut Managed {
        &mut self.process
    }

    /// The broker's directory (config, persistence, log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn mosquitto_binary() -> &'static str {
    // Debian installs the broker in /usr/sbin, which is not on every user's PATH.
    if std::path::Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}
