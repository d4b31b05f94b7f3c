//! Helpers for the control-plane and process tests: waiting on conditions, atomic config
//! writes, requests with headers, and backends that fail, stall or answer health checks.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::{Notify, watch};

use crate::common::serve;

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Replaces `path` in one rename, so a file watcher never reads a half-written file.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("writing");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

/// 1-based line of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` is not in the text"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// What came back for a request.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The value of cookie `name` set by this response, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let first = v.split(';').next()?;
                let (k, val) = first.trim().split_once('=')?;
                (k == name).then(|| val.to_string())
            })
    }
}

/// GET `url` with extra request headers; transport errors come back as text.
pub async fn fetch(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    send(client, Method::GET, url, headers).await
}

/// A request with an empty body and extra headers; transport errors come back as text.
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn text(status: u16, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("status code");
    resp
}

/// A backend that answers `name` (200), or 500 while `failing` is set; counts requests.
pub struct FlakyBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub failing: Arc<AtomicBool>,
}

pub async fn flaky_backend(name: &'static str) -> FlakyBackend {
    let hits = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (h, f) = (hits.clone(), failing.clone());
    let addr = serve(move |_req: Request<Incoming>| {
        let (h, f) = (h.clone(), f.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            if f.load(Ordering::SeqCst) {
                text(500, "broken")
            } else {
                text(200, name)
            }
        }
    })
    .await;
    FlakyBackend {
        addr,
        hits,
        failing,
    }
}

/// A backend with `/healthz` (503 while `sick`, else 200) that answers everything else with
/// `name` and counts those requests only.
pub struct CheckedBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    pub sick: Arc<AtomicBool>,
}

pub async fn checked_backend(name: &'static str) -> CheckedBackend {
    let hits = Arc::new(AtomicU64::new(0));
    let sick = Arc::new(AtomicBool::new(false));
    let (h, s) = (hits.clone(), sick.clone());
    let addr = serve(move |req: Request<Incoming>| {
        let (h, s) = (h.clone(), s.clone());
        async move {
            if req.uri().path() == "/healthz" {
                return if s.load(Ordering::SeqCst) {
                    text(503, "sick")
                } else {
                    text(200, "ok")
                };
            }
            h.fetch_add(1, Ordering::SeqCst);
            text(200, name)
        }
    })
    .await;
    CheckedBackend { addr, hits, sick }
}

/// A backend that answers after `delay`, counting requests.
pub async fn slow_backend(name: &'static str, delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let addr = serve(move |_req: Request<Incoming>| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            text(200, name)
        }
    })
    .await;
    (addr, hits)
}

/// A backend whose `/slow` requests announce their arrival and then wait until released;
/// other paths answer `name` at once.
pub struct GatedBackend {
    pub addr: SocketAddr,
    pub arrived: Arc<Notify>,
    pub release: watch::Sender<bool>,
}

pub async fn gated_backend(name: &'static str) -> GatedBackend {
    let arrived = Arc::new(Notify::new());
    let (release, released) = watch::channel(false);
    let a = arrived.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let (a, mut released) = (a.clone(), released.clone());
        async move {
            if req.uri().path() == "/slow" {
                a.notify_one();
                // A bound so a broken test cannot hang the backend forever.
                let _ =
                    tokio::time::timeout(Duration::from_secs(30), released.wait_for(|r| *r)).await;
                return text(200, format!("{name} slow"));
            }
            text(200, name)
        }
    })
    .await;
    GatedBackend {
        addr,
        arrived,
        release,
    }
}
