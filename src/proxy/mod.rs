//! The data plane: listeners and worker threads, client connections, graceful drain.
//!
//! Request phases, in order: accept (connection limit) -> TLS handshake (optional, SNI) ->
//! HTTP/1.1 or HTTP/2 framing -> header size check -> route match -> version choice
//! (version header, sticky cookie, weighted schedule) -> endpoint choice (healthy, least
//! loaded of two) -> header rules -> upstream request (timeout, one retry on connect failure
//! for bodiless idempotent requests) -> passive health + metrics -> response header rules
//! -> streamed body, or a tunnel after `101 Switching Protocols`.

mod body;
mod drain;
pub mod error;
pub mod forwarding;
pub mod h1;
pub mod headers;
mod http1;
mod idle;
mod raw_fields;
mod service;
mod spares;
pub mod tls;
pub mod upstream;
mod upstream_fields;
mod upstream_h1;
mod wakeups;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

pub use drain::DrainTracker;
use forwarding::Peer;
pub use forwarding::TrustedProxies;
use idle::{IdleCheck, IdleState};
use service::ServedBy;
pub use service::{ConnInfo, Worker};
pub use tls::{CertStore, TlsError};
pub use upstream::PoolSettings;
use upstream_fields::UpstreamFields;
use wakeups::{Wake, WakeKey, Wakeups};

use crate::clock;
use crate::metrics::{ErrorKind, Metrics};
use crate::proxy_config::ProxyConfig;
use crate::routing::RouteReader;

/// Response body: the upstream's, streamed, or tidegate's own short one.
pub type ProxyBody = Either<body::TrackedBody, Full<Bytes>>;

/// The fields of an HTTP/1.1 upstream's response, carried by its body until a client
/// connection's writer takes them (see `upstream_fields`).
fn take_upstream_fields(body: &mut ProxyBody) -> Option<UpstreamFields> {
    match body {
        Either::Left(tracked) => tracked.take_upstream_fields(),
        Either::Right(_) => None,
    }
}

/// Process-level settings of the data plane (a change needs a restart).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub workers: usize,
    pub pool: PoolSettings,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
}

impl ProxySettings {
    pub fn from_config(c: &ProxyConfig) -> ProxySettings {
        ProxySettings {
            workers: c
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            pool: PoolSettings {
                connect_timeout: c.timeouts.connect,
                idle_timeout: c.timeouts.upstream_idle,
                max_idle_per_endpoint: c.limits.max_idle_per_endpoint,
            },
            max_connections: c.limits.max_connections,
            max_header_bytes: c.limits.max_header_bytes,
            header_read_timeout: c.timeouts.request_header,
            drain_timeout: c.timeouts.drain,
        }
    }
}

/// A listener bound once per worker (SO_REUSEPORT), so each worker accepts on its own socket.
pub struct BoundListener {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: Option<Arc<CertStore>>,
    pub trusted_proxies: Arc<TrustedProxies>,
    sockets: Vec<std::net::TcpListener>,
}

impl BoundListener {
    /// Binds `addr` `workers` times; port 0 picks a port once and reuses it for every socket.
    pub fn bind(
        name: &str,
        addr: SocketAddr,
        workers: usize,
        tls: Option<Arc<CertStore>>,
        trusted_proxies: Arc<TrustedProxies>,
    ) -> std::io::Result<BoundListener> {
        let first = reuseport_socket(addr)?;
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(reuseport_socket(addr)?);
        }
        Ok(BoundListener {
            name: name.to_string(),
            addr,
            tls,
            trusted_proxies,
            sockets,
        })
    }
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// The running data plane.
pub struct ProxyHandle {
    shutdown: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ProxyHandle {
    /// Stops accepting; connections finish their requests (and tunnels their traffic) up to
    /// the drain timeout. `wait` returns when every worker is done.
    pub fn begin_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Blocks until every worker thread has drained and stopped.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts one worker thread per socket set, each with its own single-threaded runtime.
pub fn start(
    listeners: Vec<BoundListener>,
    settings: ProxySettings,
    routes: RouteReader,
    metrics: Arc<Metrics>,
) -> std::io::Result<ProxyHandle> {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let limit = Arc::new(Semaphore::new(settings.max_connections));
    let mut per_worker: Vec<Vec<(std::net::TcpListener, Arc<ListenerSide>)>> =
        (0..settings.workers).map(|_| Vec::new()).collect();
    for l in listeners {
        let side = Arc::new(ListenerSide {
            tls: match &l.tls {
                Some(store) => Some(store.acceptor().map_err(std::io::Error::other)?),
                None => None,
            },
            trusted_proxies: l.trusted_proxies,
            name: l.name,
        });
        for (i, s) in l.sockets.into_iter().enumerate() {
            per_worker[i % settings.workers].push((s, side.clone()));
        }
    }
    let mut threads = Vec::new();
    for (i, sockets) in per_worker.into_iter().enumerate() {
        let ctx = WorkerCtx {
            settings: settings.clone(),
            routes: routes.clone(),
            metrics: metrics.clone(),
            limit: limit.clone(),
            shutdown: shutdown_rx.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("tidegate-worker-{i}"))
                .spawn(move || ctx.run(sockets))?,
        );
    }
    Ok(ProxyHandle { shutdown, threads })
}

struct WorkerCtx {
    settings: ProxySettings,
    routes: RouteReader,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// What every connection task of a worker borrows.
struct ConnCtx {
    worker: Arc<Worker>,
    http: auto::Builder<TokioExecutor>,
    limit: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    /// The TLS handshake, and then the first request head, must each arrive within this.
    header_timeout: Duration,
    /// The own HTTP/1.1 connections' wake-ups: idle ones close when the worker begins to stop
    /// (smaller to wait on than a clone of `shutdown`, which each would hold), and every
    /// timeout of theirs is a deadline kept there.
    wakeups: Wakeups,
}

impl WorkerCtx {
    fn run(self, sockets: Vec<(std::net::TcpListener, Arc<ListenerSide>)>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start worker runtime");
                return;
            }
        };
        rt.block_on(async move {
            let drain = DrainTracker::default();
            let worker = Arc::new(Worker {
                routes: self.routes,
                metrics: self.metrics,
                upstreams: upstream::Upstreams::new(self.settings.pool),
                max_header_bytes: self.settings.max_header_bytes,
                drain: drain.clone(),
            });
            let mut http = auto::Builder::new(TokioExecutor::new());
            http.http1()
                // The header timeout is kept per connection (see `idle`), not per request head.
                .header_read_timeout(None)
                .max_buf_size(self.settings.max_header_bytes + 4096)
                // Heads and small bodies copied into one buffer: measured cheaper per request
                // than vectored writes of many small pieces.
                .writev(false)
                .keep_alive(true);
            http.http2()
                .timer(TokioTimer::new())
                .max_header_list_size((self.settings.max_header_bytes + 4096) as u32)
                .max_concurrent_streams(256);
            let ctx = Arc::new(ConnCtx {
                worker,
                http,
                limit: self.limit,
                shutdown: self.shutdown.clone(),
                header_timeout: self.settings.header_read_timeout,
                wakeups: Wakeups::default(),
            });
            for (socket, side) in sockets {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(listener) => {
                        tokio::spawn(accept_loop(listener, side, ctx.clone()));
                    }
                    Err(e) => {
                        tracing::error!(listener = %side.name, error = %e, "cannot use listening socket")
                    }
                }
            }
            // Kept through the drain: requests in flight keep their response timeouts.
            let sweeping = ctx.clone();
            tokio::spawn(async move { sweeping.wakeups.sweep().await });
            let mut shutdown = self.shutdown;
            let _ = stopped(&mut shutdown).await;
            ctx.wakeups.stop();
            drop(ctx);
            if tokio::time::timeout(self.settings.drain_timeout, drain.wait_idle())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = drain.active(),
                    "drain timeout reached, closing remaining connections"
                );
            }
        });
    }
}

/// What the connections of one listener share, whichever worker accepts them.
struct ListenerSide {
    name: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    trusted_proxies: Arc<TrustedProxies>,
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    side: Arc<ListenerSide>,
    ctx: Arc<ConnCtx>,
) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %side.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        // The slot is taken after accept, not before: every worker has its own socket, and a
        // slot held by a worker waiting on a quiet socket would leave a connection queued on
        // another worker's socket unserved below the limit. At the limit this connection
        // waits here unserved (at most one per worker); the rest stay in the accept queue.
        let permit = tokio::select! {
            p = ctx.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped(&mut shutdown) => return,
        };
        let _ = stream.set_nodelay(true);
        spawn_connection(stream, peer, &side, ConnSlot::open(&ctx, permit));
    }
}

/// An open client connection's hold on its worker: a place under the connection limit and
/// its count for the drain and the metrics, released when the connection's task ends. One
/// pointer in every connection's task, instead of a guard for each, and where the worker's
/// wake-ups keep the connection's waker.
struct ConnSlot(Arc<ConnCtx>, WakeKey);

impl ConnSlot {
    fn open(ctx: &Arc<ConnCtx>, permit: tokio::sync::OwnedSemaphorePermit) -> ConnSlot {
        // Given back in `drop`.
        permit.forget();
        ctx.worker.drain.arrive();
        ctx.worker.metrics.connection_opened();
        ConnSlot(ctx.clone(), WakeKey::default())
    }

    /// Ready once `deadline_ms` has passed or, if `until_stop`, the worker begins to stop.
    fn poll_wake(
        &mut self,
        deadline_ms: u64,
        until_stop: bool,
        cx: &std::task::Context<'_>,
    ) -> Poll<Wake> {
        self.0
            .wakeups
            .poll(&mut self.1, deadline_ms, until_stop, cx)
    }
}

impl std::ops::Deref for ConnSlot {
    type Target = ConnCtx;

    fn deref(&self) -> &ConnCtx {
        &self.0
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.worker.metrics.connection_closed();
        self.0.limit.add_permits(1);
        self.0.worker.drain.leave();
        self.0.wakeups.forget(&mut self.1);
    }
}

/// Starts the task of one client connection: plaintext ones run tidegate's HTTP/1.1 loop,
/// spawned as it is (a wrapper around it would make every idle connection's task larger).
fn spawn_connection(stream: TcpStream, peer: SocketAddr, side: &ListenerSide, ctx: ConnSlot) {
    let info = |tls| ConnInfo {
        peer: Peer::new(peer.ip(), &side.trusted_proxies),
        tls,
    };
    let Some(acceptor) = side.tls.clone() else {
        tokio::spawn(http1::serve(stream, info(false), ctx));
        return;
    };
    let info = info(true);
    // Boxed: a TLS connection's task is as large as the handshake and hyper's connection.
    tokio::spawn(Box::pin(async move {
        match tokio::time::timeout(ctx.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls_stream)) => serve_http(TokioIo::new(tls_stream), info, &ctx).await,
            Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
        }
    }));
}

/// For hyper's writer: the fields an HTTP/1.1 upstream's response came with, in its head.
fn upstream_fields_in_head(resp: http::Response<ProxyBody>) -> http::Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    if let Some(fields) = take_upstream_fields(&mut body) {
        parts.headers = fields.into_map(&parts.headers);
    }
    http::Response::from_parts(parts, body)
}

/// Serves a connection through hyper (HTTP/2, and TLS), from the moment it is ready: the
/// first request head gets its full header timeout.
async fn serve_http<I>(io: I, info: ConnInfo, ctx: &ConnCtx)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let worker = ctx.worker.clone();
    let idle = Arc::new(IdleState::new(clock::now_ms()));
    let conn = Arc::new((info, idle.clone()));
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let worker = worker.clone();
        let conn = conn.clone();
        let mut req = req.map(body::RequestBody::Hyper);
        async move {
            let resp = worker
                .handle(&conn.0, ServedBy::Hyper(&conn.1), &mut req)
                .await;
            Ok::<_, Infallible>(upstream_fields_in_head(resp))
        }
    });
    let conn = ctx.http.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    // The slow-header and keep-alive guard: an idle HTTP/1.1 connection (and any connection
    // before its first request: nothing, part of the HTTP/2 preface, a preface and no
    // request) must bring a request head within the header timeout. See `idle`.
    let timeout_ms = clock::millis(ctx.header_timeout);
    let idle_timer = tokio::time::sleep(ctx.header_timeout);
    tokio::pin!(idle_timer);
    let mut guarding = true;
    let mut shutdown = ctx.shutdown.clone();
    let shutdown_seen = ctx.shutdown.clone();
    let stop = stopped(&mut shutdown);
    tokio::pin!(stop);
    // The timer and the shutdown signal, once polled, hold this task's waker and wake it when
    // due. The connection wakes the task a few times per request; on those wake-ups asking
    // the two whether they are due is cheaper than polling them.
    let (mut timer_armed, mut stop_armed) = (false, false);
    let result = loop {
        let event = poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(ConnEvent::Closed(r));
            }
            if guarding && (!timer_armed || idle_timer.is_elapsed()) {
                timer_armed = true;
                if idle_timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(ConnEvent::IdleCheck);
                }
            }
            if !stop_armed || shutdown_seen.has_changed().unwrap_or(true) {
                stop_armed = true;
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(ConnEvent::Stop);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            ConnEvent::Closed(r) => break r,
            ConnEvent::IdleCheck => {
                let now = clock::now_ms();
                match idle.check(now, timeout_ms) {
                    IdleCheck::LookAgainAt(at) => {
                        idle_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + Duration::from_millis(at - now));
                        // Polled again so that it holds the waker for its new deadline.
                        timer_armed = false;
                    }
                    IdleCheck::Http2 => guarding = false,
                    IdleCheck::TimedOut => {
                        // Closing an idle keep-alive connection is no error; a connection
                        // whose first request never came is a slow client.
                        if !idle.got_request() {
                            ctx.worker.metrics.count_error(ErrorKind::HeaderTimeout);
                        }
                        tracing::debug!("no request head within the header timeout, closing");
                        return;
                    }
                }
            }
            ConnEvent::Stop => {
                conn.as_mut().graceful_shutdown();
                break conn.as_mut().await;
            }
        }
    };
    if let Err(e) = result
        && let Some(e) = e.downcast_ref::<hyper::Error>()
    {
        if e.is_parse_too_large() {
            ctx.worker.metrics.count_error(ErrorKind::HeaderTooLarge);
        } else if e.is_parse() {
            ctx.worker.metrics.count_error(ErrorKind::BadRequest);
        }
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// What ends one wait in `serve_http`.
enum ConnEvent<R> {
    Closed(R),
    IdleCheck,
    Stop,
}

/// Resolves once shutdown has begun.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The borrow guard `wait_for` returns must not live across an await point.
    let _ = rx.wait_for(|stop| *stop).await.map(|_| ());
}
