//! A tiny HTTP app that says which version it is, and a steady load generator, for the demo and tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// How a demo app version behaves.
#[derive(Debug, Clone)]
pub struct AppVersion {
    pub name: String,
    /// Share of requests answered with 500 (0..=1).
    pub error_rate: f64,
    pub latency: Duration,
}

impl AppVersion {
    pub fn new(name: &str) -> AppVersion {
        AppVersion {
            name: name.to_string(),
            error_rate: 0.0,
            latency: Duration::ZERO,
        }
    }
}

/// Starts the app on a free loopback port and returns its address.
pub async fn start(app: AppVersion) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, app));
    Ok(addr)
}

/// Serves the app on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, app: AppVersion) {
    let app = Arc::new(app);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(app.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    app: Arc<AppVersion>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    if !app.latency.is_zero() {
        tokio::time::sleep(app.latency).await;
    }
    let fail = app.error_rate > 0.0 && fastrand::f64() < app.error_rate;
    let mut resp = Response::new(Full::new(Bytes::from(format!("hello from {}\n", app.name))));
    if fail {
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    }
    resp.headers_mut().insert(
        "x-app-version",
        http::HeaderValue::from_str(&app.name).unwrap_or(http::HeaderValue::from_static("unknown")),
    );
    Ok(resp)
}

/// What the demo's clients saw.
#[derive(Default)]
pub struct LoadTally {
    ok: AtomicU64,
    failed: AtomicU64,
    by_version: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl LoadTally {
    fn count(&self, version: Option<&str>, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Relaxed);
        let mut map = self.by_version.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(version.unwrap_or("none").to_string())
            .or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// (answered below 500, failed or 5xx)
    pub fn totals(&self) -> (u64, u64) {
        (self.ok.load(Relaxed), self.failed.load(Relaxed))
    }

    /// `v1: 1200 ok / 0 failed, v2: ...`
    pub fn by_version(&self) -> String {
        let map = self.by_version.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(v, (ok, failed))| format!("{v}: {ok} ok / {failed} failed"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Sends about `rate` GET requests per second to `target` until the task is dropped.
pub async fn steady_load(target: SocketAddr, rate: u32, tally: Arc<LoadTally>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = match format!("http://{target}/").parse() {
        Ok(u) => u,
        Err(_) => return,
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let client = client.clone();
        let uri = uri.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            match client.get(uri).await {
                Ok(resp) => {
                    let version = resp
                        .headers()
                        .get("x-app-version")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let ok = resp.status().as_u16() < 500;
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                    tally.count(version.as_deref(), ok);
                }
                Err(_) => tally.count(None, false),
            }
        });
    }
}
