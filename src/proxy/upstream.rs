//! Upstream connections, one set per worker thread: pooled HTTP/1.1 connections and one
//! multiplexed h2c connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::proxy_config::UpstreamProtocol;

/// Body sent upstream: the client's, streamed, or an empty one for a retried bodiless request.
pub type UpstreamBody = super::body::RequestBody;

/// How upstream connections are made and kept.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

/// Why an upstream exchange failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made: the request was never sent.
    Connect(String),
    /// The connection broke or the upstream answered with something that is not HTTP.
    Failed(String),
}

pub struct Upstreams {
    http1: Arc<H1Pool>,
    http2: H2Connections,
}

impl Upstreams {
    pub fn new(s: PoolSettings) -> Upstreams {
        Upstreams {
            http1: Arc::new(H1Pool {
                idle: Mutex::new(IdleConnections::default()),
                settings: s,
            }),
            http2: H2Connections {
                by_endpoint: Mutex::new(HashMap::new()),
                connect_timeout: s.connect_timeout,
            },
        }
    }

    /// Sends `req` to `endpoint`. For HTTP/1.1 the URI must be in origin form (the `Host`
    /// header names the site); for HTTP/2 its authority becomes `:authority`.
    #[inline]
    pub async fn send(
        &self,
        protocol: UpstreamProtocol,
        endpoint: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match protocol {
            UpstreamProtocol::Http1 => H1Pool::send(&self.http1, endpoint, req).await,
            UpstreamProtocol::Http2 => self.http2.send(endpoint, req).await,
        }
    }
}

/// Idle HTTP/1.1 connections by endpoint, kept by hand: a request takes the most recently
/// used one (warm), hands it back when its response has been read, and connections idle
/// longer than `idle_timeout` are closed before the upstream's own keep-alive timeout can
/// race a request.
struct H1Pool {
    idle: Mutex<IdleConnections>,
    settings: PoolSettings,
}

#[derive(Default)]
struct IdleConnections {
    /// A worker talks to few endpoints: a short list beats hashing.
    by_endpoint: Vec<(SocketAddr, Vec<(H1Sender, Instant)>)>,
    last_sweep: Option<Instant>,
}

type H1Sender = hyper::client::conn::http1::SendRequest<UpstreamBody>;

/// Closed, or idle for longer than the idle timeout (a busy connection is never stale).
fn is_stale(sender: &H1Sender, since: Instant, now: Instant, timeout: Duration) -> bool {
    sender.is_closed() || (sender.is_ready() && now.duration_since(since) >= timeout)
}

impl H1Pool {
    /// A connection to `endpoint` that is idle now. Connections still reading a response
    /// stay listed (they turn idle on their own); closed or long-idle ones are dropped.
    fn take(&self, endpoint: SocketAddr) -> Option<H1Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let timeout = self.settings.idle_timeout;
        let list = &mut idle.by_endpoint.iter_mut().find(|(a, _)| *a == endpoint)?.1;
        let now = Instant::now();
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let (sender, since) = &list[i];
            if is_stale(sender, *since, now, timeout) {
                list.swap_remove(i);
            } else if sender.is_ready() {
                return Some(list.swap_remove(i).0);
            }
        }
        None
    }

    /// Lists a connection right after its response head arrived: `take` hands it out again
    /// once the body has been read, with no task per request waiting for that.
    fn put(&self, endpoint: SocketAddr, sender: H1Sender) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let timeout = self.settings.idle_timeout;
        // Now and then drop connections idle too long everywhere, endpoints gone from the
        // route table included: dropping the sender closes the connection.
        if idle
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            idle.last_sweep = Some(now);
            for (_, list) in &mut idle.by_endpoint {
                list.retain(|(s, since)| !is_stale(s, *since, now, timeout));
            }
            idle.by_endpoint.retain(|(_, list)| !list.is_empty());
        }
        match idle.by_endpoint.iter_mut().find(|(a, _)| *a == endpoint) {
            Some((_, list)) if list.len() < self.settings.max_idle_per_endpoint => {
                list.push((sender, now))
            }
            Some(_) => {}
            None if self.settings.max_idle_per_endpoint > 0 => {
                idle.by_endpoint.push((endpoint, vec![(sender, now)]))
            }
            None => {}
        }
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<H1Sender, UpstreamError> {
        let limit = self.settings.connect_timeout;
        let stream = tokio::time::timeout(limit, TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::Connect(format!("connect timed out after {limit:?}")))?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        // Nagle would add 40 ms stalls to small writes.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            // Small heads and bodies are copied into one buffer: fewer, cheaper writes.
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(format!("handshake: {}", cause(&e))))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream connection closed");
            }
        });
        Ok(sender)
    }

    async fn send(
        this: &Arc<H1Pool>,
        endpoint: SocketAddr,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (mut sender, mut reused) = match this.take(endpoint) {
            Some(s) => (s, true),
            None => (this.connect(endpoint).await?, false),
        };
        loop {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    this.put(endpoint, sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // A pooled connection the upstream closed as the request went to it: the
                    // request never left, so it goes out on a fresh connection.
                    Some(unsent) if reused => {
                        req = unsent;
                        sender = this.connect(endpoint).await?;
                        reused = false;
                    }
                    _ => return Err(UpstreamError::Failed(cause(e.error()))),
                },
            }
        }
    }
}

fn cause(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(s) => cause(s),
        None => e.to_string(),
    }
}

/// One shared h2c connection per endpoint; streams multiplex over it, a closed one is replaced.
struct H2Connections {
    by_endpoint: Mutex<HashMap<SocketAddr, SendRequest<UpstreamBody>>>,
    connect_timeout: Duration,
}

impl H2Connections {
    async fn send(
        &self,
        endpoint: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let cached = {
            let map = self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&endpoint).filter(|s| !s.is_closed()).cloned()
        };
        let mut sender = match cached {
            Some(s) => s,
            None => {
                let s = self.connect(endpoint).await?;
                self.by_endpoint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(endpoint, s.clone());
                s
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| UpstreamError::Failed(cause(&e)))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Failed(cause(&e)))
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| {
                UpstreamError::Connect(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(format!("h2 handshake: {}", cause(&e))))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "h2 upstream connection closed");
            }
        });
        Ok(sender)
    }
}
