//! Test support shared by the integration tests: a proxy started in-process from YAML text,
//! backends on real loopback sockets, a plain HTTP client, and a metrics reader.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tidegate::runtime::ProxyProcess;
use tokio::net::TcpListener;

/// A proxy running in this test process, with its config in a temp dir.
pub struct TestProxy {
    pub process: ProxyProcess,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestProxy {
    /// Starts a proxy from YAML text. Use `127.0.0.1:0` for listener and admin addresses.
    pub async fn start(yaml: &str) -> TestProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("tidegate.yaml");
        std::fs::write(&config_path, yaml).expect("write config");
        let process = ProxyProcess::start(&config_path)
            .await
            .expect("proxy starts");
        TestProxy {
            process,
            config_path,
            dir,
        }
    }

    /// Address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.process.listeners[0].1
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// The admin `/metrics` page, parsed.
    pub async fn metrics(&self) -> prometheus_parse::Scrape {
        let text = get_text(&format!("http://{}/metrics", self.process.admin_addr)).await;
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text")
    }
}

/// Value of the sample `name` whose labels include all of `labels`; 0 when absent.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A route config block with two versions, for `format!` into a full config.
pub fn config_two_versions(stable: SocketAddr, canary: SocketAddr, canary_weight: f64) -> String {
    format!(
        r#"
admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
routes:
  - name: app
    version_header: x-tidegate-version
    versions:
      - {{name: stable, weight: {}, endpoints: ["{stable}"]}}
      - {{name: canary, weight: {canary_weight}, endpoints: ["{canary}"]}}
"#,
        100.0 - canary_weight
    )
}

/// A backend that answers every request with `name` in the body and `x-version` header,
/// and counts requests.
pub struct NamedBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
}

pub async fn named_backend(name: &'static str) -> NamedBackend {
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let addr = serve(move |_req: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            let mut resp = Response::new(Full::new(Bytes::from(name)));
            resp.headers_mut()
                .insert("x-version", http::HeaderValue::from_static(name));
            resp
        }
    })
    .await;
    NamedBackend { addr, hits }
}

/// Serves `handler` on a fresh loopback port (HTTP/1.1 and h2c, upgrades allowed).
pub async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url`, returning status and body text.
pub async fn get(url: &str) -> (u16, String) {
    let resp = client()
        .get(url.parse().expect("url"))
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get_text(url: &str) -> String {
    get(url).await.1
}

/// Polls `check` every 5 ms until it holds; fails the test with `what` when `limit` passes first.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(limit, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out after {limit:?} waiting for {what}"
    );
}
