//! A TCP fault proxy for tests: sits between outboxd and PostgreSQL or Kafka and
//! breaks the connection on demand.
//!
//! Modes, switchable at any moment with [`FaultProxy::set_mode`]:
//!
//! - [`Mode::Pass`]: forwards both ways.
//! - [`Mode::Blackhole`]: a network partition. Open connections stay open but
//!   nothing moves either way (the proxy stops reading, as if packets were lost and
//!   retransmitted later: when the mode changes back, the bytes held by TCP flow
//!   again, unless a side gave up meanwhile). New connections are accepted and get
//!   no answer (bytes are read and dropped); they are reset when the mode changes.
//! - [`Mode::Reset`]: open connections are reset (RST on both sides), new ones are
//!   accepted and reset at once.
//! - [`Mode::Refuse`]: open connections are reset and the listening socket is
//!   closed, so connecting fails with "connection refused" (a host whose service is
//!   down). Leaving this mode listens again on the same port.
//! - [`Mode::Latency`]: forwards both ways, each chunk delayed by the given time.
//!
//! [`FaultProxy::cut_mid_frame`] resets the next connection that receives a chunk
//! from the upstream after forwarding only the first half of it, so the client sees
//! a frame cut in the middle.
//!
//! The proxy runs on a thread with its own runtime, so it works under any test
//! runtime and keeps running while a test blocks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Reset,
    Refuse,
    Latency(Duration),
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    resets: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    cut_next: AtomicBool,
    cuts: AtomicU64,
}

/// Counts of what the proxy did, for test reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections reset by the proxy (modes and cuts).
    pub resets: u64,
    /// Bytes forwarded client → upstream.
    pub to_upstream: u64,
    /// Bytes forwarded upstream → client.
    pub to_client: u64,
    /// Frames cut in the middle.
    pub cuts: u64,
}

/// A running proxy; stops (closing every connection) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1 forwarding to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        Self::start_on(0, upstream)
    }

    /// Starts a proxy on `127.0.0.1:port` (0: any free port) forwarding to `upstream`.
    pub fn start_on(port: u16, upstream: SocketAddr) -> FaultProxy {
        let std_listener =
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("proxy listen port");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy address");
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(accept_loop(
                    std_listener,
                    addr,
                    upstream,
                    mode_rx,
                    shutdown_rx,
                    c,
                ));
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("proxy thread");
        FaultProxy {
            addr,
            mode,
            counters,
            shutdown,
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches the mode; open connections follow at once.
    pub fn set_mode(&self, mode: Mode) {
        tracing::info!(proxy = %self.addr, ?mode, "fault proxy mode");
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Resets the next connection that receives a chunk from the upstream, after
    /// forwarding half of that chunk.
    pub fn cut_mid_frame(&self) {
        self.counters.cut_next.store(true, Ordering::SeqCst);
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            to_upstream: c.to_upstream.load(Ordering::Relaxed),
            to_client: c.to_client.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let mut listener = Some(TcpListener::from_std(std_listener).expect("tokio listener"));
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Refuse {
            listener = None;
        } else if listener.is_none() {
            // Rebind the same port (SO_REUSEADDR lets us despite TIME_WAIT).
            for _ in 0..100 {
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        listener = Some(l);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = async { listener.as_ref().expect("listening").accept().await }, if listener.is_some() => {
                let Ok((client, _)) = accepted else { continue };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                tokio::spawn(connection(client, upstream, mode.clone(), shutdown.clone(), counters.clone()));
            }
        }
    }
}

/// Sets SO_LINGER to 0 so that dropping the socket sends RST instead of FIN.
/// (Zero linger never blocks, which is what the deprecation is about.)
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn connection(
    mut client: TcpStream,
    upstream_addr: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let initial = *mode.borrow_and_update();
    match initial {
        Mode::Reset | Mode::Refuse => {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            return;
        }
        Mode::Blackhole => {
            // Swallow everything until the mode changes or the client leaves; a
            // connection accepted in a blackhole never reaches the upstream.
            let mut sink = vec![0u8; 64 << 10];
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    changed = mode.changed() => {
                        if changed.is_err() { return; }
                        if *mode.borrow_and_update() != Mode::Blackhole {
                            counters.resets.fetch_add(1, Ordering::Relaxed);
                            reset(client);
                            return;
                        }
                    }
                    n = client.read(&mut sink) => {
                        if matches!(n, Ok(0) | Err(_)) { return; }
                    }
                }
            }
        }
        Mode::Pass | Mode::Latency(_) => {}
    }
    let upstream = match tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(upstream_addr),
    )
    .await
    {
        Ok(Ok(s)) => s,
        _ => {
            reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    // Every close is a reset from here on (a FIN is still sent first on a clean end).
    zero_linger(&client);
    zero_linger(&upstream);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    // The directions are independent: a client that stops reading (backpressure)
    // must not hold up what it sends, e.g. standby status updates.
    let mut up = tokio::spawn(direction(
        cr,
        uw,
        mode.clone(),
        shutdown.clone(),
        counters.clone(),
        false,
    ));
    let mut down = tokio::spawn(direction(
        ur,
        cw,
        mode.clone(),
        shutdown.clone(),
        counters.clone(),
        true,
    ));
    let first = tokio::select! {
        r = &mut up => r,
        r = &mut down => r,
    };
    up.abort();
    down.abort();
    if matches!(first, Ok(End::Reset)) {
        counters.resets.fetch_add(1, Ordering::Relaxed);
    }
}

#[allow(deprecated)]
fn zero_linger(stream: &TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

#[derive(PartialEq, Eq)]
enum End {
    Closed,
    Reset,
}

/// Waits until the mode asks for open connections to be reset.
async fn reset_requested(mode: &mut watch::Receiver<Mode>) {
    loop {
        if matches!(*mode.borrow_and_update(), Mode::Reset | Mode::Refuse) {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}

/// Forwards one direction of a connection until either side closes or a mode
/// resets it. `from_upstream`: server → client (where frames are cut).
async fn direction(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    mut shutdown: watch::Receiver<bool>,
    counters: Arc<Counters>,
    from_upstream: bool,
) -> End {
    let counter = if from_upstream {
        &counters.to_client
    } else {
        &counters.to_upstream
    };
    let mut buf = vec![0u8; 64 << 10];
    // Chunks waiting for their delivery time (latency mode).
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let far = Instant::now() + Duration::from_secs(86_400);
    loop {
        let current = *mode.borrow_and_update();
        let delay = match current {
            Mode::Latency(d) => d,
            Mode::Reset | Mode::Refuse => return End::Reset,
            _ => Duration::ZERO,
        };
        let blackhole = current == Mode::Blackhole;
        let due = queue.front().map_or(far, |(t, _)| *t);
        let chunk: Option<Vec<u8>> = tokio::select! {
            _ = shutdown.changed() => return End::Reset,
            changed = mode.changed() => {
                if changed.is_err() { return End::Reset; }
                None
            }
            _ = tokio::time::sleep_until(due), if !queue.is_empty() && !blackhole => {
                queue.pop_front().map(|(_, c)| c)
            }
            n = from.read(&mut buf), if !blackhole => {
                let n = match n {
                    Ok(0) => {
                        let _ = to.shutdown().await;
                        return End::Closed;
                    }
                    Ok(n) => n,
                    Err(_) => return End::Reset,
                };
                if from_upstream && counters.cut_next.swap(false, Ordering::SeqCst) {
                    let half = (n / 2).max(1);
                    let _ = to.write_all(&buf[..half]).await;
                    counters.cuts.fetch_add(1, Ordering::Relaxed);
                    return End::Reset;
                }
                if delay.is_zero() && queue.is_empty() {
                    Some(buf[..n].to_vec())
                } else {
                    queue.push_back((Instant::now() + delay, buf[..n].to_vec()));
                    None
                }
            }
        };
        if let Some(chunk) = chunk {
            // A peer that does not read blocks the write; a reset must still happen.
            tokio::select! {
                written = to.write_all(&chunk) => {
                    if written.is_err() {
                        return End::Reset;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                _ = reset_requested(&mut mode) => return End::Reset,
                _ = shutdown.changed() => return End::Reset,
            }
        }
    }
}
