//! A TCP fault proxy: sits between a client and a broker and breaks the network on command.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::{io, Error};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Traffic flows.
    Pass,
    /// Every connection is dropped; new ones are closed as soon as they are accepted.
    Cut,
    /// Connections are accepted but nothing is forwarded (data waits, as TCP would retransmit).
    Blackhole,
}

struct Shared {
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Bumped to drop every open connection.
    generation: watch::Sender<u64>,
    latency_ms: AtomicU64,
    bytes_per_s: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    accepted: AtomicU64,
}

/// The proxy. Controlled from any thread (tests need not be async); runs its own runtime.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("mode", &*self.shared.mode.borrow())
            .finish()
    }
}

impl FaultProxy {
    /// A proxy on a free port of 127.0.0.1 forwarding to `target`.
    pub fn start(target: SocketAddr) -> Result<Self, Error> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind proxy"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("set proxy listener non-blocking"))?;
        let addr = listener.local_addr().map_err(io("read proxy address"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .map_err(io("start proxy runtime"))?;
        let shared = Arc::new(Shared {
            target,
            mode: watch::channel(Mode::Pass).0,
            generation: watch::channel(0).0,
            latency_ms: AtomicU64::new(0),
            bytes_per_s: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        rt.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((inbound, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::Relaxed);
                if *s.mode.borrow() == Mode::Cut {
                    reset(inbound);
                    continue;
                }
                tokio::spawn(connection(inbound, Arc::clone(&s)));
            }
        });
        Ok(Self {
            addr,
            shared,
            rt: Some(rt),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every connection and refuses new ones until [`FaultProxy::heal`].
    pub fn cut(&self) {
        self.shared.mode.send_replace(Mode::Cut);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Keeps connections open but forwards nothing, and accepts new ones that hang.
    pub fn blackhole(&self) {
        self.shared.mode.send_replace(Mode::Blackhole);
    }

    /// Traffic flows again (held data is delivered).
    pub fn heal(&self) {
        self.shared.mode.send_replace(Mode::Pass);
    }

    /// Resets every open connection once (new ones are accepted).
    pub fn reset(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Adds `d` before each forwarded chunk, both directions.
    pub fn set_latency(&self, d: Duration) {
        self.shared
            .latency_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// Limits each direction of each connection to `bytes_per_s` (`None`: unlimited).
    pub fn set_bandwidth(&self, bytes_per_s: Option<u64>) {
        self.shared
            .bytes_per_s
            .store(bytes_per_s.unwrap_or(0), Ordering::Relaxed);
    }

    /// Bytes forwarded client to broker.
    pub fn bytes_up(&self) -> u64 {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Bytes forwarded broker to client.
    pub fn bytes_down(&self) -> u64 {
        self.shared.down.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background(); // closes every socket; allowed inside async tests too
        }
    }
}

/// Closes with RST rather than FIN, as a dead peer or middlebox would.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Waits while the proxy is blackholed. `false` if the connection must be dropped instead.
async fn passable(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Pass => return true,
            Mode::Cut => return false,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

async fn connection(inbound: TcpStream, s: Arc<Shared>) {
    let mut generation = s.generation.subscribe();
    generation.borrow_and_update();
    let mut mode = s.mode.subscribe();
    let outbound = tokio::select! {
        ok = passable(&mut mode) => if ok { TcpStream::connect(s.target).await.ok() } else { None },
        _ = generation.changed() => None,
    };
    let Some(outbound) = outbound else {
        reset(inbound);
        return;
    };
    let (mut inbound, mut outbound) = (inbound, outbound);
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let cut = {
        let (ri, wi) = inbound.split();
        let (ro, wo) = outbound.split();
        let up = pipe(ri, wo, &s, true);
        let down = pipe(ro, wi, &s, false);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if r.is_none() || down_done { break r.is_none(); }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    if r.is_none() || up_done { break r.is_none(); }
                }
                _ = generation.changed() => break true,
            }
        }
    };
    if cut {
        reset(inbound);
        reset(outbound);
    }
}

/// Copies one direction; returns `Some(())` on a clean end of stream.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    s: &Shared,
    upstream: bool,
) -> Option<()> {
    let mut mode = s.mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.ok()?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Some(());
        }
        if !passable(&mut mode).await {
            return None;
        }
        let latency = s.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let bps = s.bytes_per_s.load(Ordering::Relaxed);
        if bps > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / bps as f64)).await;
        }
        to.write_all(&buf[..n]).await.ok()?;
        let counter = if upstream { &s.up } else { &s.down };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
