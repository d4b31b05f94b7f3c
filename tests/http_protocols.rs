//! HTTP protocol behaviour of the proxy over real loopback sockets: keep-alive, streaming
//! bodies, `Expect: 100-continue`, HTTP/2 and gRPC trailers, upgrades, hop-by-hop and
//! forwarding headers, failure answers with their metrics, slowloris and connection limits,
//! retries on another endpoint.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tidegate::metrics::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Upper bound for any single step; a hang fails the test instead of blocking it.
const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

/// Polls `cond` until it holds, failing after `STEP`.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Config text
// ---------------------------------------------------------------------------------------

/// A whole config: admin and one listener on loopback, two workers, `routes` and `extra`.
fn config(routes: &[String], extra: &str) -> String {
    format!(
        r#"
admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
routes:
{}
{extra}
"#,
        routes.concat()
    )
}

/// A route on `prefix` whose `stable` version (100 %) runs on `endpoints`; `canary` has no
/// weight and no endpoints. `version_opts` go into the stable version's flow map (", protocol:
/// http2"), `route_opts` is one more line of the route ("upstream_response_timeout: 200ms").
fn route(
    name: &str,
    prefix: &str,
    endpoints: &[SocketAddr],
    version_opts: &str,
    route_opts: &str,
) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
  - name: {name}
    match: {{path_prefix: "{prefix}"}}
    {route_opts}
    versions:
      - {{name: stable, weight: 100, endpoints: [{}]{version_opts}}}
      - {{name: canary, weight: 0, endpoints: []}}
"#,
        eps.join(", ")
    )
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr
}

// ---------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------

/// A body fed frame by frame from a channel (data and trailers), for streaming both ways.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, ChannelBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody(rx))
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// `left` bytes made on the fly, 64 KiB at a time, length unknown to the receiver (chunked).
struct Generated {
    left: u64,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// One HTTP/1.1 client connection to `addr`; every request sent on it uses that connection.
async fn h1_connection<B>(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect to proxy");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}

/// Sends `req` with a fresh pooled client; returns status, headers and body text.
async fn fetch<B>(req: Request<B>) -> (StatusCode, HeaderMap, String)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let resp = within("response", client.request(req))
        .await
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = within("body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get_req(url: &str) -> Request<Empty<Bytes>> {
    Request::get(url).body(Empty::new()).expect("request")
}

/// A plain TCP client for what hyper's client would not let us do byte by byte.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn head_status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response head: {head:?}"))
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes))
            .await
            .expect("write to proxy");
    }

    /// Reads more bytes into the buffer; false on EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = within("read", self.stream.read(&mut chunk))
            .await
            .expect("read from proxy");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads up to the end of a response head and returns it; what follows stays buffered.
    async fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(
                self.fill().await,
                "connection closed before a response head; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            assert!(self.fill().await, "connection closed inside a chunked body");
        }
    }

    async fn read_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection closed inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads until `needle` has arrived and returns everything up to and including it.
    async fn read_until(&mut self, needle: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = find(&self.buf, needle) {
                return self.buf.drain(..i + needle.len()).collect();
            }
            assert!(
                self.fill().await,
                "connection closed while waiting for {:?}; got {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// A whole response: head, then a body framed by Content-Length or chunked encoding.
    async fn read_response(&mut self) -> RawResponse {
        let head = self.read_head().await;
        let status = head_status(&head);
        let body = if let Some(len) = head_header(&head, "content-length") {
            self.read_n(len.parse().expect("content-length")).await
        } else if head_header(&head, "transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let size = self.read_line().await;
                let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.read_line().await.is_empty() {}
                    break;
                }
                body.extend(self.read_n(size).await);
                self.read_n(2).await;
            }
            body
        } else {
            Vec::new()
        };
        RawResponse { status, head, body }
    }

    /// Waits for the proxy to close the connection: EOF or reset. Returns what arrived before.
    async fn wait_closed(&mut self) -> Vec<u8> {
        let mut chunk = [0u8; 4096];
        loop {
            match within("connection close", self.stream.read(&mut chunk)).await {
                Ok(0) => return std::mem::take(&mut self.buf),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return std::mem::take(&mut self.buf);
                }
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// A HTTP/1.1 backend answering "ok" that counts TCP connections and requests.
struct CountingBackend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

async fn counting_backend() -> CountingBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (conns, reqs) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    reqs.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    CountingBackend {
        addr,
        connections,
        requests,
    }
}

/// A backend that hands every request's version and headers to the test, and answers with
/// `response_headers` and a body naming the protocol version it saw.
async fn recording_backend(
    response_headers: &'static [(&'static str, &'static str)],
) -> (SocketAddr, mpsc::UnboundedReceiver<(Version, HeaderMap)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let mut seen = req.headers().clone();
            // HTTP/2 carries the host as :authority, which hyper puts in the URI.
            if !seen.contains_key(header::HOST)
                && let Some(a) = req.uri().authority()
            {
                seen.insert(
                    header::HOST,
                    HeaderValue::from_str(a.as_str()).expect("host"),
                );
            }
            let _ = tx.send((req.version(), seen));
            let mut resp = Response::new(Full::new(Bytes::from(format!("{:?}", req.version()))));
            for (k, v) in response_headers {
                resp.headers_mut().append(*k, HeaderValue::from_static(v));
            }
            resp
        }
    })
    .await;
    (addr, rx)
}

/// Reads a request body to its end and returns how many bytes it had.
async fn count_body(body: Incoming) -> u64 {
    let mut body = body;
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    n
}

// ---------------------------------------------------------------------------------------
// 1. Keep-alive
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_the_client_and_the_upstream_connection() {
    let backend = counting_backend().await;
    let proxy = TestProxy::start(&config(&[route("app", "/", &[backend.addr], "", "")], "")).await;

    let mut conn = h1_connection::<Empty<Bytes>>(proxy.addr()).await;
    for i in 0..10 {
        within("connection ready", conn.ready())
            .await
            .expect("client connection still open");
        let req = Request::get(format!("/keep/{i}"))
            .header(header::HOST, "app.test")
            .body(Empty::new())
            .expect("request");
        let resp = within("response", conn.send_request(req))
            .await
            .expect("response on the same connection");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers().get(header::CONNECTION).is_none(),
            "the proxy must not announce a close: {:?}",
            resp.headers()
        );
        let body = within("body", resp.into_body().collect())
            .await
            .expect("body");
        assert_eq!(body.to_bytes(), "ok");
    }
    assert_eq!(backend.requests.load(Ordering::SeqCst), 10);
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "ten sequential requests must share one pooled upstream connection"
    );
    let m = proxy.metrics().await;
    assert_eq!(sample(&m, "tidegate_connections_total", &[]), 1.0);
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 2. Streaming bodies
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_before_the_backend_finishes() {
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let backend = serve(move |_req: Request<Incoming>| {
        let release = release.clone();
        async move {
            let (tx, body) = channel_body();
            let gate = release.lock().expect("lock").take();
            tokio::spawn(async move {
                let _ = tx.send(Frame::data(Bytes::from("first chunk;"))).await;
                // The last chunk waits until the client has seen the first one.
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                let _ = tx.send(Frame::data(Bytes::from("last chunk"))).await;
            });
            Response::new(body)
        }
    })
    .await;
    let proxy = TestProxy::start(&config(&[route("app", "/", &[backend], "", "")], "")).await;

    let client = common::client();
    let resp = within(
        "response head",
        client.get(proxy.url("/stream").parse().expect("url")),
    )
    .await
    .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get(header::TRANSFER_ENCODING)
            .map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );
    let mut body = resp.into_body();
    let first = within(
        "first chunk while the backend still holds the last one",
        body.frame(),
    )
    .await
    .expect("a frame")
    .expect("frame ok")
    .into_data()
    .expect("data frame");
    assert_eq!(first, "first chunk;");
    release_tx.send(()).expect("backend waits for the release");
    let rest = within("rest of the body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(rest, "last chunk");
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_before_the_client_finishes() {
    let (got_first_tx, got_first_rx) = oneshot::channel::<Bytes>();
    let got_first = Arc::new(Mutex::new(Some(got_first_tx)));
    let backend = serve(move |req: Request<Incoming>| {
        let got_first = got_first.clone();
        async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    all.extend_from_slice(d);
                    if let Some(tx) = got_first.lock().expect("lock").take() {
                        let _ = tx.send(d.clone());
                    }
                }
            }
            Response::new(Full::new(Bytes::from(all)))
        }
    })
    .await;
    let proxy = TestProxy::start(&config(&[route("app", "/", &[backend], "", "")], "")).await;

    let (tx, body) = channel_body();
    let req = Request::post(proxy.url("/upload"))
        .body(body)
        .expect("request");
    let response = tokio::spawn(fetch(req));
    tx.send(Frame::data(Bytes::from("part one;")))
        .await
        .expect("send");
    let first = within(
        "backend reads the first part while the client still sends",
        got_first_rx,
    )
    .await
    .expect("backend saw data");
    assert_eq!(first, "part one;");
    tx.send(Frame::data(Bytes::from("part two")))
        .await
        .expect("send");
    drop(tx);
    let (status, _, text) = within("response", response).await.expect("task");
    assert_eq!(status, 200);
    assert_eq!(text, "part one;part two");
    proxy.process.shutdown().await;
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_through_in_bounded_memory() {
    const UPLOAD: u64 = 1 << 30;
    const LIMIT_KIB: u64 = 200 * 1024;
    let backend = serve(|req: Request<Incoming>| async move {
        let n = count_body(req.into_body()).await;
        Response::new(Full::new(Bytes::from(n.to_string())))
    })
    .await;
    // The upstream response timeout runs while the body uploads; give it room.
    let proxy = TestProxy::start(&config(
        &[route(
            "app",
            "/",
            &[backend],
            "",
            "upstream_response_timeout: 10m",
        )],
        "",
    ))
    .await;

    // Peak RSS from here on: reset the high-water mark where the kernel allows it, and
    // sample the current RSS as well.
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = status_kib("VmRSS");
    let sampled_peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (sampled_peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(status_kib("VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let started = Instant::now();
    let client = Client::builder(TokioExecutor::new()).build_http::<Generated>();
    let req = Request::post(proxy.url("/upload"))
        .body(Generated { left: UPLOAD })
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(600), client.request(req))
        .await
        .expect("1 GiB upload finishes within 10 minutes")
        .expect("response");
    assert_eq!(resp.status(), 200);
    let counted = resp.into_body().collect().await.expect("body").to_bytes();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;

    assert_eq!(
        counted,
        UPLOAD.to_string(),
        "the backend received every byte"
    );
    let peak = if hwm_reset {
        status_kib("VmHWM").max(sampled_peak.load(Ordering::Relaxed))
    } else {
        sampled_peak.load(Ordering::Relaxed)
    };
    let growth = peak.saturating_sub(before);
    eprintln!(
        "1 GiB upload through the proxy: {elapsed:?}, peak RSS growth {} MiB (high-water mark reset: {hwm_reset})",
        growth / 1024
    );
    assert!(
        growth < LIMIT_KIB,
        "memory grew by {} MiB while 1 GiB streamed through; the body must not be buffered",
        growth / 1024
    );
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 3. Expect: 100-continue
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let backend = serve(|req: Request<Incoming>| async move {
        let body = req.into_body().collect().await.expect("body").to_bytes();
        Response::new(Full::new(body))
    })
    .await;
    let proxy = TestProxy::start(&config(&[route("app", "/", &[backend], "", "")], "")).await;

    let mut raw = Raw::connect(proxy.addr()).await;
    raw.send(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\n\
          Expect: 100-continue\r\n\r\n",
    )
    .await;
    // The body is not sent until the proxy says so.
    let interim = raw.read_head().await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "expected 100 Continue, got {interim:?}"
    );
    raw.send(b"hello world").await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.body, b"hello world");
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 4. HTTP/2
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_from_clients_and_to_upstreams_configured_for_it() {
    let (backend, mut seen) = recording_backend(&[]).await;
    let proxy = TestProxy::start(&config(
        &[
            route("h1-up", "/h1", &[backend], "", ""),
            route("h2-up", "/h2", &[backend], ", protocol: http2", ""),
        ],
        "",
    ))
    .await;
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();

    // h2c prior knowledge from the client, HTTP/1.1 to the upstream.
    let resp = within("h2 response", h2.request(get_req(&proxy.url("/h1/a"))))
        .await
        .expect("h2c request to the proxy");
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = within("body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "HTTP/1.1");
    let (version, headers) = seen.recv().await.expect("backend saw the request");
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(
        headers[header::HOST],
        proxy.addr().to_string().as_str(),
        "the client's :authority becomes the upstream Host"
    );

    // HTTP/2 on both sides.
    let resp = within("h2 response", h2.request(get_req(&proxy.url("/h2/b"))))
        .await
        .expect("h2c request to the proxy");
    assert_eq!(resp.version(), Version::HTTP_2);
    let body = within("body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "HTTP/2.0");
    let (version, headers) = seen.recv().await.expect("backend saw the request");
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(headers[header::HOST], proxy.addr().to_string().as_str());

    // HTTP/1.1 client, HTTP/2 upstream: the client's Host arrives as :authority, and every
    // end-to-end field arrives too.
    let req = Request::get(proxy.url("/h2/c"))
        .header(header::HOST, "shop.test")
        .header("X-End-To-End", "kept")
        .header(header::ACCEPT_LANGUAGE, "en")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let (status, _, body) = fetch(req).await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "HTTP/2.0"));
    let (version, headers) = seen.recv().await.expect("backend saw the request");
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(headers[header::HOST], "shop.test", "Host is preserved");
    assert_eq!(
        (&headers["x-end-to-end"], &headers[header::ACCEPT_LANGUAGE]),
        (&"kept".parse().unwrap(), &"en".parse().unwrap())
    );
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 5. gRPC-style passthrough with trailers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_passes_trailers_through() {
    let backend = serve(|req: Request<Incoming>| async move {
        let te = req.headers().get(header::TE).cloned();
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        let message = req.into_body().collect().await.expect("body").to_bytes();
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Frame::data(message)).await;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("fine"));
            trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
            let _ = tx.send(Frame::trailers(trailers)).await;
        });
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        if let Some(te) = te {
            resp.headers_mut().insert("x-saw-te", te);
        }
        if let Some(ct) = content_type {
            resp.headers_mut().insert("x-saw-content-type", ct);
        }
        resp
    })
    .await;
    let proxy = TestProxy::start(&config(
        &[route("grpc", "/", &[backend], ", protocol: http2", "")],
        "",
    ))
    .await;

    // A length-prefixed gRPC message: flag 0, length 5, "hello".
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::post(proxy.url("/test.Echo/Say"))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(Full::new(message.clone()))
        .expect("request");
    let resp = within("grpc response", h2.request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(
        resp.headers()["x-saw-te"],
        "trailers",
        "TE: trailers reaches gRPC upstreams"
    );
    assert_eq!(resp.headers()["x-saw-content-type"], "application/grpc");
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/grpc");
    let collected = within("body and trailers", resp.into_body().collect())
        .await
        .expect("body");
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(collected.to_bytes(), message);
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 6. Upgrade / WebSocket
// ---------------------------------------------------------------------------------------

/// After `101`, greets, then echoes upper-cased until the client closes or sends "bye"
/// (then the backend closes first). Reports how each tunnel ended.
async fn upgrade_backend() -> (SocketAddr, mpsc::UnboundedReceiver<&'static str>) {
    let (events, rx) = mpsc::unbounded_channel();
    let addr = serve(move |mut req: Request<Incoming>| {
        let events = events.clone();
        async move {
            if req.headers().get(header::UPGRADE).map(|v| v.as_bytes()) != Some(b"websocket") {
                let mut resp = Response::new(Empty::<Bytes>::new());
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                return resp;
            }
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    let _ = events.send("upgrade failed");
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let _ = io.write_all(b"welcome\n").await;
                let mut buf = [0u8; 1024];
                loop {
                    let n = match io.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = events.send("client closed");
                            return;
                        }
                        Ok(n) => n,
                    };
                    if find(&buf[..n], b"bye").is_some() {
                        let _ = events.send("backend closed");
                        return; // dropping the connection closes it
                    }
                    let _ = io.write_all(&buf[..n].to_ascii_uppercase()).await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .body(Empty::new())
                .expect("101")
        }
    })
    .await;
    (addr, rx)
}

async fn open_tunnel(proxy: SocketAddr) -> Raw {
    let mut raw = Raw::connect(proxy).await;
    raw.send(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    let head = raw.read_head().await;
    assert_eq!(head_status(&head), 101, "{head}");
    assert_eq!(head_header(&head, "upgrade").as_deref(), Some("websocket"));
    assert!(
        head_header(&head, "connection").is_some_and(|c| c.eq_ignore_ascii_case("upgrade")),
        "{head}"
    );
    // Upstream to client: the backend speaks first.
    assert_eq!(raw.read_until(b"\n").await, b"welcome\n");
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_tunnels_both_ways_until_either_side_closes() {
    let (backend, mut events) = upgrade_backend().await;
    // A drain timeout far above STEP: shutdown returns in time only if no tunnel is left.
    let proxy = TestProxy::start(&config(
        &[route("app", "/", &[backend], "", "")],
        "timeouts: {drain: 60s}",
    ))
    .await;

    // Client closes first.
    let mut raw = open_tunnel(proxy.addr()).await;
    for word in ["ping-1", "second message"] {
        raw.send(word.as_bytes()).await;
        let echoed = raw.read_n(word.len()).await;
        assert_eq!(echoed, word.to_ascii_uppercase().as_bytes());
    }
    within("client half-close", raw.stream.shutdown())
        .await
        .expect("shutdown");
    assert_eq!(
        within("backend sees the close", events.recv()).await,
        Some("client closed")
    );
    assert!(
        raw.wait_closed().await.is_empty(),
        "nothing after the close"
    );

    // Backend closes first: the client's side ends without the client closing.
    let mut raw = open_tunnel(proxy.addr()).await;
    raw.send(b"abc").await;
    assert_eq!(raw.read_n(3).await, b"ABC");
    raw.send(b"bye").await;
    assert!(raw.wait_closed().await.is_empty());
    assert_eq!(
        within("backend event", events.recv()).await,
        Some("backend closed")
    );
    drop(raw);
    within(
        "shutdown with both tunnels closed on both sides",
        proxy.process.shutdown(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 7. Hop-by-hop and forwarding headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_set() {
    let (backend, mut seen) = recording_backend(&[
        ("connection", "x-down-secret"),
        ("x-down-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("upgrade", "h2c"),
        ("x-down-kept", "yes"),
    ])
    .await;
    let proxy = TestProxy::start(&config(&[route("app", "/", &[backend], "", "")], "")).await;
    let mut conn = h1_connection::<Empty<Bytes>>(proxy.addr()).await;

    let req = Request::get("/hop")
        .header(header::HOST, "shop.test:8080")
        .header(header::CONNECTION, "keep-alive, x-secret")
        .header("x-secret", "s3cr3t")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header(header::TE, "trailers, deflate")
        // Upgrade without `Connection: upgrade` is no upgrade request: dropped.
        .header(header::UPGRADE, "websocket")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "req-abc-123")
        .header("x-end-to-end", "kept")
        .body(Empty::new())
        .expect("request");
    let resp = within("response", conn.send_request(req))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let down = resp.headers().clone();
    within("body", resp.into_body().collect())
        .await
        .expect("body");
    let (_, up) = seen.recv().await.expect("backend saw the request");

    for name in [
        "connection",
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !up.contains_key(name),
            "`{name}` must not reach the upstream: {up:?}"
        );
    }
    assert_eq!(up["te"], "trailers", "TE keeps only `trailers`");
    assert_eq!(up["x-end-to-end"], "kept");
    assert_eq!(up["host"], "shop.test:8080", "Host is preserved");
    assert_eq!(up["x-forwarded-host"], "shop.test:8080");
    assert_eq!(
        up["x-forwarded-proto"], "http",
        "set by the proxy, whatever the client claimed"
    );
    assert_eq!(
        up["x-forwarded-for"], "203.0.113.7, 127.0.0.1",
        "the client address is appended"
    );
    assert_eq!(
        up["x-request-id"], "req-abc-123",
        "a client request id is kept"
    );

    for name in [
        "connection",
        "x-down-secret",
        "keep-alive",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !down.contains_key(name),
            "`{name}` must not reach the client: {down:?}"
        );
    }
    assert_eq!(down["x-down-kept"], "yes");

    // Without forwarding headers or a request id, and with a TE the upstream must not see.
    let mut ids = Vec::new();
    for _ in 0..2 {
        within("connection ready", conn.ready())
            .await
            .expect("keep-alive");
        let req = Request::get("/hop")
            .header(header::HOST, "shop.test")
            .header(header::TE, "gzip")
            .body(Empty::new())
            .expect("request");
        let resp = within("response", conn.send_request(req))
            .await
            .expect("response");
        assert_eq!(resp.status(), 200);
        within("body", resp.into_body().collect())
            .await
            .expect("body");
        let (_, up) = seen.recv().await.expect("backend saw the request");
        assert!(
            !up.contains_key("te"),
            "TE without trailers is dropped: {up:?}"
        );
        assert_eq!(up["x-forwarded-for"], "127.0.0.1");
        assert_eq!(up["x-forwarded-host"], "shop.test");
        let id = up["x-request-id"].to_str().expect("ascii").to_string();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "generated request id is 32 hex digits: {id:?}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "every request gets its own id");
    proxy.process.shutdown().await;
}

/// Every value of header `name` the upstream received, in order.
fn values(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_string())
        .collect()
}

/// A client claiming forwarding headers of its own, several lines each.
const SPOOFED: &[(&str, &str)] = &[
    ("x-forwarded-for", "192.0.2.1"),
    ("x-forwarded-for", "192.0.2.2"),
    ("x-real-ip", "192.0.2.9"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-host", "evil.example"),
    ("forwarded", "for=192.0.2.3;proto=https"),
];

/// Sends a GET carrying `SPOOFED` over HTTP/1.1 (raw bytes: every line exactly as written)
/// and over h2c; returns the headers the upstream saw for each.
async fn spoofed_requests(
    proxy: &TestProxy,
    seen: &mut mpsc::UnboundedReceiver<(Version, HeaderMap)>,
) -> [HeaderMap; 2] {
    let mut raw = Raw::connect(proxy.addr()).await;
    let mut head = String::from("GET /xff HTTP/1.1\r\nHost: shop.test\r\n");
    for (k, v) in SPOOFED {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    raw.send(head.as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 200);
    let (_, h1) = seen.recv().await.expect("backend saw the HTTP/1.1 request");

    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let mut req = Request::get(proxy.url("/xff"));
    for (k, v) in SPOOFED {
        req = req.header(*k, *v);
    }
    let resp = within(
        "h2 response",
        h2.request(req.body(Empty::new()).expect("request")),
    )
    .await
    .expect("h2c request");
    assert_eq!(resp.version(), Version::HTTP_2);
    within("body", resp.into_body().collect())
        .await
        .expect("body");
    let (_, h2) = seen.recv().await.expect("backend saw the h2 request");
    [h1, h2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_forwarding_lines_cannot_spoof_the_client_address() {
    let (backend, mut seen) = recording_backend(&[]).await;
    let routes = [route("app", "/", &[backend], "", "")];
    let proxy = TestProxy::start(&config(&routes, "")).await;
    for (up, protocol) in spoofed_requests(&proxy, &mut seen)
        .await
        .iter()
        .zip(["HTTP/1.1", "h2c"])
    {
        assert_eq!(
            values(up, "x-forwarded-for"),
            ["192.0.2.1, 192.0.2.2, 127.0.0.1"],
            "{protocol}: one line, all values in order, the client's address last"
        );
        assert_eq!(values(up, "x-real-ip"), ["127.0.0.1"], "{protocol}");
        assert_eq!(values(up, "x-forwarded-proto"), ["http"], "{protocol}");
        assert_eq!(
            values(up, "x-forwarded-host").len(),
            1,
            "{protocol}: {up:?}"
        );
        assert_ne!(up["x-forwarded-host"], "evil.example", "{protocol}");
        assert!(!up.contains_key("forwarded"), "{protocol}: {up:?}");
    }
    // Two Host lines could be routed by one and served by the other: refused (RFC 9112 §3.2).
    let mut raw = Raw::connect(proxy.addr()).await;
    raw.send(b"GET /xff HTTP/1.1\r\nHost: shop.test\r\nHost: admin.test\r\n\r\n")
        .await;
    let resp = raw.read_response().await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        "tidegate: bad request: more than one Host header\n"
    );
    assert!(seen.try_recv().is_err(), "the upstream never saw it");
    proxy.process.shutdown().await;

    // The same client as a trusted proxy: its account of the client is believed.
    let trusting = config(&routes, "").replace(
        r#"listen: "127.0.0.1:0"}]"#,
        r#"listen: "127.0.0.1:0", trusted_proxies: [127.0.0.0/8]}]"#,
    );
    let proxy = TestProxy::start(&trusting).await;
    for (up, protocol) in spoofed_requests(&proxy, &mut seen)
        .await
        .iter()
        .zip(["HTTP/1.1", "h2c"])
    {
        assert_eq!(
            values(up, "x-forwarded-for"),
            ["192.0.2.1, 192.0.2.2, 127.0.0.1"],
            "{protocol}"
        );
        assert_eq!(
            values(up, "x-real-ip"),
            ["192.0.2.2"],
            "{protocol}: the rightmost address that is not a trusted proxy"
        );
        assert_eq!(
            values(up, "x-forwarded-proto"),
            ["https", "https"],
            "{protocol}"
        );
        assert_eq!(
            values(up, "x-forwarded-host"),
            ["evil.example"],
            "{protocol}"
        );
        assert_eq!(
            values(up, "forwarded"),
            ["for=192.0.2.3;proto=https"],
            "{protocol}"
        );
    }
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 8. Failure answers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_answer_with_a_status_a_plain_cause_and_a_metric() {
    let dead = closed_port().await;
    let slow = serve(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(Full::new(Bytes::from("too late")))
    })
    .await;
    let proxy = TestProxy::start(&config(
        &[
            route("dead", "/dead", &[dead], "", ""),
            route(
                "slow",
                "/slow",
                &[slow],
                "",
                "upstream_response_timeout: 200ms",
            ),
        ],
        "limits: {max_header_bytes: 8192}\n\
         passive_health: {consecutive_failures: 1, ejection: 60s}",
    ))
    .await;
    let plain = |h: &HeaderMap| {
        assert!(
            h.get(header::CONTENT_TYPE)
                .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/plain")),
            "{h:?}"
        )
    };

    // Unreachable upstream: 502, and the endpoint is ejected after that one failure.
    let (status, headers, body) = fetch(get_req(&proxy.url("/dead/x"))).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("unreachable") && body.contains(&dead.to_string()),
        "{body}"
    );
    plain(&headers);

    // No healthy endpoint left: 503.
    let (status, headers, body) = fetch(get_req(&proxy.url("/dead/x"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no healthy endpoint"), "{body}");
    plain(&headers);

    // Upstream too slow: 504 after the route's timeout, not after the backend's 30 s.
    let started = Instant::now();
    let (status, headers, body) = fetch(get_req(&proxy.url("/slow"))).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("did not answer within 200ms"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    plain(&headers);

    // No route: 404.
    let (status, headers, body) = fetch(get_req(&proxy.url("/elsewhere"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("no route"), "{body}");
    plain(&headers);

    // Headers over limits.max_header_bytes: 431, before any upstream is asked.
    let req = Request::get(proxy.url("/slow"))
        .header("x-big", "b".repeat(9000))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let (status, headers, body) = fetch(req).await;
    assert_eq!(
        status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{body}"
    );
    assert!(body.contains("larger than 8192 bytes"), "{body}");
    plain(&headers);

    // Far over the limit, past the read buffer: still 431.
    let mut raw = Raw::connect(proxy.addr()).await;
    let big = format!(
        "GET /slow HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    raw.send(big.as_bytes()).await;
    let head = raw.read_head().await;
    assert_eq!(head_status(&head), 431, "{head}");
    // hyper answers that one itself; the proxy counts it when the connection ends.
    let counted = proxy.process.metrics.clone();
    wait_until("the second 431 is counted", || {
        counted.errors(ErrorKind::HeaderTooLarge) == 2
    })
    .await;

    let m = proxy.metrics().await;
    let errors = |kind: &str| sample(&m, "tidegate_proxy_errors_total", &[("kind", kind)]);
    assert_eq!(errors("upstream_unreachable"), 1.0);
    assert_eq!(errors("no_healthy_upstream"), 1.0);
    assert_eq!(errors("upstream_timeout"), 1.0);
    assert_eq!(errors("no_route"), 1.0);
    assert_eq!(errors("header_too_large"), 2.0);
    assert_eq!(
        sample(
            &m,
            "tidegate_upstream_connect_errors_total",
            &[("route", "dead"), ("version", "stable")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "tidegate_requests_total",
            &[("route", "dead"), ("class", "5xx")]
        ),
        2.0
    );
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 9. Slow clients and the connection limit
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_headers_get_the_connection_closed() {
    let backend = named_backend("ok").await;
    // Answers after twice the header timeout, and then streams for as long again.
    let slow = serve(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(Frame::data(Bytes::from("slow "))).await;
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let _ = tx.send(Frame::data(Bytes::from("answer"))).await;
        });
        Response::new(body)
    })
    .await;
    let stuck = serve(|_req: Request<Incoming>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Response::new(Full::new(Bytes::from("too late")))
    })
    .await;
    let proxy = TestProxy::start(&config(
        &[
            route("slow", "/slow", &[slow], "", ""),
            route(
                "stuck",
                "/stuck",
                &[stuck],
                "",
                "upstream_response_timeout: 1500ms",
            ),
            route("app", "/", &[backend.addr], "", ""),
        ],
        "timeouts: {request_header: 500ms}",
    ))
    .await;

    // A slow answer is no slow client: the connection stays open while it is sent, and
    // serves the next request.
    let mut conn = h1_connection::<Empty<Bytes>>(proxy.addr()).await;
    let req = Request::get("/slow")
        .header(header::HOST, "app.test")
        .body(Empty::new())
        .expect("request");
    let resp = within("slow answer", conn.send_request(req))
        .await
        .expect("response");
    let body = within("slow body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "slow answer");
    assert_eq!(served(&mut conn).await, 200);

    // A connection that waited long for its answer idles out at the header timeout after it,
    // not at the 30 s response timeout the wait was under.
    let mut waited = Raw::connect(proxy.addr()).await;
    waited
        .send(b"GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    assert_eq!(waited.read_response().await.body, b"slow answer");
    assert!(waited.wait_closed().await.is_empty());

    // A response timeout longer than the header timeout still ends a wait that is too long.
    let started = Instant::now();
    let mut stuck = Raw::connect(proxy.addr()).await;
    stuck
        .send(b"GET /stuck HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await;
    let resp = stuck.read_response().await;
    assert_eq!(resp.status, 504, "{}", resp.head);
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Slow but in time: served.
    let mut idle = Raw::connect(proxy.addr()).await;
    idle.send(b"GET /ok HT").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    idle.send(b"TP/1.1\r\nHost: app.test\r\n\r\n").await;
    let resp = idle.read_response().await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));

    // Half a request line, then nothing: disconnected without an answer.
    let mut raw = Raw::connect(proxy.addr()).await;
    raw.send(b"GET /ok HT").await;
    let got = raw.wait_closed().await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{got:?}"
    );

    // Not a single byte: disconnected too.
    let mut raw = Raw::connect(proxy.addr()).await;
    assert!(raw.wait_closed().await.is_empty());

    // Half of the HTTP/2 preface, then nothing.
    let mut raw = Raw::connect(proxy.addr()).await;
    raw.send(b"PRI * HTTP/2.0\r\n").await;
    assert!(raw.wait_closed().await.is_empty());

    // The served connection, left idle, is closed as well, but that is no slow client.
    assert!(idle.wait_closed().await.is_empty());

    // Counted as the connections end, which may be just after the client saw them close.
    let counted = proxy.process.metrics.clone();
    wait_until("three header timeouts counted", || {
        counted.errors(ErrorKind::HeaderTimeout) == 3
    })
    .await;
    let m = proxy.metrics().await;
    assert_eq!(
        sample(
            &m,
            "tidegate_proxy_errors_total",
            &[("kind", "header_timeout")]
        ),
        3.0
    );
    // The request after the slow answer, and the slow-but-in-time one.
    assert_eq!(backend.hits.load(Ordering::SeqCst), 2);
    proxy.process.shutdown().await;
}

async fn served(conn: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> StatusCode {
    within("connection ready", conn.ready())
        .await
        .expect("ready");
    let req = Request::get("/")
        .header(header::HOST, "app.test")
        .body(Empty::new())
        .expect("request");
    let resp = within("served", conn.send_request(req))
        .await
        .expect("response");
    let status = resp.status();
    within("body", resp.into_body().collect())
        .await
        .expect("body");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_extra_clients_until_one_closes() {
    const LIMIT: usize = 2;
    let backend = counting_backend().await;
    let proxy = TestProxy::start(&config(
        &[route("app", "/", &[backend.addr], "", "")],
        "limits: {max_connections: 2}",
    ))
    .await;
    let metrics = proxy.process.metrics.clone();

    // Up to the limit, every connection is served, whichever worker socket it lands on.
    for _ in 0..10 {
        let mut conns = Vec::new();
        for _ in 0..LIMIT {
            let mut c = h1_connection::<Empty<Bytes>>(proxy.addr()).await;
            assert_eq!(served(&mut c).await, 200);
            conns.push(c);
        }
        drop(conns);
        wait_until("connections closed", || metrics.active_connections() == 0).await;
    }

    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut c = h1_connection::<Empty<Bytes>>(proxy.addr()).await;
        assert_eq!(served(&mut c).await, 200);
        held.push(c);
    }
    assert_eq!(metrics.active_connections(), LIMIT as i64);

    // One more: connected at the TCP level, but not served while the limit is reached.
    let mut extra = h1_connection::<Empty<Bytes>>(proxy.addr()).await;
    let req = Request::get("/")
        .header(header::HOST, "app.test")
        .body(Empty::new())
        .expect("request");
    let mut pending = Box::pin(extra.send_request(req));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut pending)
            .await
            .is_err(),
        "a connection over the limit must wait"
    );
    assert_eq!(metrics.active_connections(), LIMIT as i64);

    // A held connection closes: the waiting one is served.
    held.pop();
    let resp = within("served after a slot frees", pending)
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    proxy.process.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// 10. Retry on another endpoint
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_to_an_unreachable_endpoint_is_retried_on_a_live_one() {
    let dead = closed_port().await;
    let live = named_backend("live").await;
    let proxy = TestProxy::start(&config(
        &[route("app", "/", &[dead, live.addr], "", "")],
        // Keep the dead endpoint in rotation so that retries keep happening.
        "passive_health: {consecutive_failures: 0}",
    ))
    .await;

    for _ in 0..20 {
        let (status, _, body) = fetch(get_req(&proxy.url("/retry"))).await;
        assert_eq!((status.as_u16(), body.as_str()), (200, "live"));
    }
    assert_eq!(live.hits.load(Ordering::SeqCst), 20);
    let m = proxy.metrics().await;
    let connect_errors = sample(
        &m,
        "tidegate_upstream_connect_errors_total",
        &[("route", "app"), ("version", "stable")],
    );
    // Each request picks one of the two endpoints first: about half start on the dead one.
    assert!(
        connect_errors >= 1.0,
        "some requests must have tried the dead endpoint first"
    );
    assert_eq!(
        sample(
            &m,
            "tidegate_proxy_errors_total",
            &[("kind", "upstream_unreachable")]
        ),
        0.0
    );
    proxy.process.shutdown().await;
}
