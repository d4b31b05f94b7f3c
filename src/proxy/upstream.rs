//! Upstream connections, one set per worker thread: a pooled HTTP/1.1 client and one
//! multiplexed h2c connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::UpstreamProtocol;

/// Body sent upstream: the client's, streamed, or an empty one for a retried bodiless request.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

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
    http1: Client<HttpConnector, UpstreamBody>,
    http2: H2Connections,
}

impl Upstreams {
    pub fn new(s: PoolSettings) -> Upstreams {
        let mut connector = HttpConnector::new();
        // hyper's connector leaves Nagle on; a proxy must not add 40 ms stalls.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(s.connect_timeout));
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(s.idle_timeout)
            .pool_max_idle_per_host(s.max_idle_per_endpoint)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Upstreams {
            http1,
            http2: H2Connections {
                by_endpoint: Mutex::new(HashMap::new()),
                connect_timeout: s.connect_timeout,
            },
        }
    }

    /// Sends `req` to `endpoint`. For HTTP/1.1 the URI must carry the endpoint as authority;
    /// for HTTP/2 the URI authority becomes `:authority` (the client's host) and the
    /// connection is chosen by `endpoint`.
    #[inline]
    pub async fn send(
        &self,
        protocol: UpstreamProtocol,
        endpoint: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match protocol {
            UpstreamProtocol::Http1 => self.http1.request(req).await.map_err(|e| {
                if e.is_connect() {
                    UpstreamError::Connect(cause(&e))
                } else {
                    UpstreamError::Failed(cause(&e))
                }
            }),
            UpstreamProtocol::Http2 => self.http2.send(endpoint, req).await,
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
