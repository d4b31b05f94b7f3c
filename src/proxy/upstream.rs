//! Upstream connections, one set per worker thread: pooled HTTP/1.1 connections
//! (`upstream_h1`) and one multiplexed h2c connection per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::body::ResponseBody;
pub use super::upstream_h1::ExtraFields;
use super::upstream_h1::{self, H1Pool};

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
    Connect(ConnectFailure),
    /// The connection broke or the upstream answered with something that is not HTTP.
    Failed(ExchangeFailure),
}

/// Why no connection to an endpoint could be made. Its text is a one-line cause for logs.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    #[error("connect: {0}")]
    Io(#[source] std::io::Error),
    #[error("handshake: {}", root_cause(.0))]
    Handshake(#[source] hyper::Error),
}

/// What went wrong on an upstream connection once the request was on its way. Its text is
/// the one-line cause a client reads after `upstream ADDR failed:`.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeFailure {
    #[error("connection closed before a response")]
    ClosedBeforeResponse,
    #[error("connection closed in the response head")]
    ClosedInHead,
    #[error("invalid response: {0}")]
    InvalidHead(#[source] super::h1::HeadError),
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// hyper's own errors (HTTP/2 and upgrades), shown by their innermost cause, which
    /// says more than hyper's summary.
    #[error("{}", root_cause(.0))]
    Hyper(#[source] hyper::Error),
    #[error("switched protocols unasked")]
    SwitchedUnasked,
}

pub struct Upstreams {
    http1: Arc<H1Pool>,
    http2: H2Connections,
}

impl Upstreams {
    pub fn new(s: PoolSettings) -> Upstreams {
        Upstreams {
            http1: Arc::new(H1Pool::new(s)),
            http2: H2Connections {
                by_endpoint: Mutex::new(HashMap::new()),
                connect_timeout: s.connect_timeout,
            },
        }
    }

    /// Sends `req` to `endpoint` over a pooled HTTP/1.1 connection, its head written from
    /// the URI's path and its fields (the `Host` field names the site). A plain function: the
    /// pool's future is awaited by the caller with no layer between.
    pub fn send_http1<'a>(
        &'a self,
        endpoint: SocketAddr,
        req: &'a mut Request<UpstreamBody>,
        extra: ExtraFields<'a>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, UpstreamError>> + Send + 'a {
        H1Pool::send(&self.http1, endpoint, req, extra)
    }

    /// Sends `req` to `endpoint` over its h2c connection; the URI's authority becomes
    /// `:authority`.
    pub async fn send_http2(
        &self,
        endpoint: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.http2.send(endpoint, req).await.map(hyper_body)
    }

    /// Sends an HTTP/1.1 upgrade request on a connection of its own; hyper hands over the
    /// upgraded connection (`hyper::upgrade::on` on the response).
    pub async fn send_upgrade(
        &self,
        endpoint: SocketAddr,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        self.http1.send_upgrade(endpoint, req).await.map(hyper_body)
    }
}

fn hyper_body(resp: Response<Incoming>) -> Response<ResponseBody> {
    resp.map(Either::Right)
}

/// The innermost cause of `e`, as text.
fn root_cause(e: &dyn std::error::Error) -> String {
    match e.source() {
        Some(s) => root_cause(s),
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
            .map_err(|e| UpstreamError::Failed(ExchangeFailure::Hyper(e)))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Failed(ExchangeFailure::Hyper(e)))
    }

    async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let stream = upstream_h1::connect(endpoint, self.connect_timeout).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| UpstreamError::Connect(ConnectFailure::Handshake(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, error = %e, "h2 upstream connection closed");
            }
        });
        Ok(sender)
    }
}
