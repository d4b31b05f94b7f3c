//! Pooled upstream clients (HTTP/1.1 and h2c), one set per worker thread.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamProtocol;

/// Body sent upstream: the client's, streamed, or an empty one for a retried bodiless request.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

pub type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// How upstream connections are made and kept.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

pub struct Upstreams {
    http1: UpstreamClient,
    http2: UpstreamClient,
}

impl Upstreams {
    pub fn new(s: PoolSettings) -> Upstreams {
        let mut connector = HttpConnector::new();
        // hyper's connector leaves Nagle on; a proxy must not add 40 ms stalls.
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(s.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let build = |http2: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(s.idle_timeout)
                .pool_max_idle_per_host(s.max_idle_per_endpoint)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new());
            if http2 {
                b.http2_only(true);
            }
            b.build(connector.clone())
        };
        Upstreams {
            http1: build(false),
            http2: build(true),
        }
    }

    #[inline]
    pub fn client(&self, protocol: UpstreamProtocol) -> &UpstreamClient {
        match protocol {
            UpstreamProtocol::Http1 => &self.http1,
            UpstreamProtocol::Http2 => &self.http2,
        }
    }
}
