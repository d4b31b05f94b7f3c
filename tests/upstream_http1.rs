//! tidegate's own HTTP/1.1 client towards upstreams, against scripted backends on real
//! loopback sockets: pooled connections the upstream closed, every response framing,
//! interim answers, bytes after a response, and an answer that comes before the upload ends.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const STEP: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

/// A backend that runs `script` on each connection it accepts, with the connection's number
/// (0 for the first); `conns` counts them.
struct Scripted {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
}

async fn scripted<F, Fut>(script: F) -> Scripted
where
    F: Fn(Conn, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let count = conns.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(script(Conn::new(stream), n));
        }
    });
    Scripted { addr, conns }
}

/// The backend's side of one connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next request head (request line first), or None when the proxy closed.
    async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }
}

fn config(backend: SocketAddr) -> String {
    format!(
        r#"
admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 1
routes:
  - name: app
    versions:
      - {{name: stable, weight: 100, endpoints: ["{backend}"]}}
"#
    )
}

/// One client connection to the proxy, driven by hyper's HTTP/1.1 client.
async fn client(proxy: &TestProxy) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Status, body text and trailers (as `name: value` lines) of one request on `sender`.
async fn fetch(
    sender: &mut SendRequest<Empty<Bytes>>,
    method: Method,
    path: &str,
) -> (u16, String, Vec<String>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app.test")
        .body(Empty::new())
        .expect("request");
    within(path, async {
        sender.ready().await.expect("connection ready");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let (mut text, mut trailers) = (Vec::new(), Vec::new());
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Some(d) = frame.data_ref() {
                text.extend_from_slice(d);
            } else if let Ok(t) = frame.into_trailers() {
                for (k, v) in &t {
                    trailers.push(format!("{k}: {}", v.to_str().unwrap_or("?")));
                }
            }
        }
        (
            status,
            String::from_utf8_lossy(&text).into_owned(),
            trailers,
        )
    })
    .await
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_never_the_answer() {
    // Connection 0 answers once and closes at once; connections 1 and 2 answer once, then
    // close when the next request reaches them (the keep-alive race); later ones answer all.
    let backend = scripted(|mut c, n| async move {
        match n {
            0 => {
                if c.head().await.is_some() {
                    c.send(OK).await;
                }
            }
            1 | 2 => {
                if c.head().await.is_some() {
                    c.send(OK).await;
                }
                let _ = c.head().await;
            }
            _ => {
                while c.head().await.is_some() {
                    c.send(OK).await;
                }
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&config(backend.addr)).await;
    let mut client = client(&proxy).await;

    assert_eq!(fetch(&mut client, Method::GET, "/a").await.0, 200);
    // The upstream's close reaches tidegate before the next request: a fresh connection.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fetch(&mut client, Method::GET, "/b").await.0, 200);
    assert_eq!(backend.conns.load(Ordering::SeqCst), 2);
    // The close crosses the request: nothing came back, so it goes again on a fresh one.
    let (status, text, _) = fetch(&mut client, Method::GET, "/c").await;
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert_eq!(backend.conns.load(Ordering::SeqCst), 3);
    // A POST may have been acted on: it is not sent twice, the client hears of the failure.
    let (status, text, _) = fetch(&mut client, Method::POST, "/d").await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("closed before a response"), "{text}");
    assert_eq!(
        backend.conns.load(Ordering::SeqCst),
        3,
        "no second connection for it"
    );
    assert_eq!(fetch(&mut client, Method::GET, "/e").await.0, 200);
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_framing_reaches_the_client_whole_over_one_upstream_connection() {
    let backend = scripted(|mut c, _| async move {
        while let Some(head) = c.head().await {
            let path = head.split(' ').nth(1).unwrap_or("/").to_string();
            let answer: &[u8] = match path.as_str() {
                "/length" => b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world",
                "/chunked" => {
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                      5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n"
                }
                "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n",
                "/interim" => {
                    b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
                      HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
                }
                "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n",
                _ => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            };
            c.send(answer).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&config(backend.addr)).await;
    let mut client = client(&proxy).await;

    let (status, text, _) = fetch(&mut client, Method::GET, "/length").await;
    assert_eq!((status, text.as_str()), (200, "hello world"));
    let (status, text, trailers) = fetch(&mut client, Method::GET, "/chunked").await;
    assert_eq!((status, text.as_str()), (200, "hello world"));
    assert_eq!(trailers, ["x-sum: 42"], "trailers pass through");
    let (status, text, _) = fetch(&mut client, Method::HEAD, "/head").await;
    assert_eq!(
        (status, text.as_str()),
        (200, ""),
        "a HEAD answer has no body"
    );
    let (status, text, _) = fetch(&mut client, Method::GET, "/interim").await;
    assert_eq!(
        (status, text.as_str()),
        (200, "final"),
        "1xx answers are skipped"
    );
    let (status, text, _) = fetch(&mut client, Method::GET, "/empty").await;
    assert_eq!((status, text.as_str()), (204, ""));
    let (status, text, _) = fetch(&mut client, Method::GET, "/length").await;
    assert_eq!((status, text.as_str()), (200, "hello world"));
    assert_eq!(
        backend.conns.load(Ordering::SeqCst),
        1,
        "every exchange reused the one upstream connection"
    );
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_to_the_close_and_bytes_after_a_response_are_not_reused() {
    // Connection 0: a response followed by a forged second one in the same write.
    // Connection 1: a body with no length, ended by closing. Then honest answers.
    let backend = scripted(|mut c, n| async move {
        while c.head().await.is_some() {
            match n {
                0 => {
                    c.send(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok\
                             HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
                    )
                    .await
                }
                1 => {
                    c.send(b"HTTP/1.1 200 OK\r\n\r\nuntil the close").await;
                    return;
                }
                _ => {
                    c.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh")
                        .await
                }
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&config(backend.addr)).await;
    let mut client = client(&proxy).await;

    assert_eq!(fetch(&mut client, Method::GET, "/1").await.1, "ok");
    let (status, text, _) = fetch(&mut client, Method::GET, "/2").await;
    assert_eq!((status, text.as_str()), (200, "until the close"));
    let (status, text, _) = fetch(&mut client, Method::GET, "/3").await;
    assert_eq!(
        (status, text.as_str()),
        (200, "fresh"),
        "never the forged answer"
    );
    assert_eq!(backend.conns.load(Ordering::SeqCst), 3);
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_ends_reaches_the_client_and_closes_its_connection() {
    let backend = scripted(|mut c, _| async move {
        if c.head().await.is_some() {
            c.send(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 8\r\n\r\ntoo big\n")
                .await;
            // Keeps the connection open without reading the body.
            tokio::time::sleep(STEP).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&config(backend.addr)).await;
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app.test\r\ncontent-length: 1000000\r\n\r\nfirst bytes")
        .await
        .expect("send the head and a first part");
    let mut answer = Vec::new();
    within(
        "the answer, then the close",
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.ends_with("too big\n"), "{answer}");
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_goes_upstream_as_its_path_with_the_site_as_host() {
    // The backend answers with the head it received as the body.
    let backend = scripted(|mut c, _| async move {
        while let Some(head) = c.head().await {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{head}",
                head.len()
            );
            c.send(answer.as_bytes()).await;
        }
    })
    .await;
    let proxy = TestProxy::start(&config(backend.addr)).await;
    let addr = proxy.addr();
    let upstream_head = |request: &'static str| async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        within(request, s.read_to_end(&mut answer))
            .await
            .expect("read");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        body.to_ascii_lowercase()
    };

    let head = upstream_head(
        "GET http://shop.example/b?x=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("get /b?x=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: shop.example\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-host: shop.example\r\n"),
        "{head}"
    );
    assert!(!head.contains("connection: close"), "hop-by-hop: {head}");

    // HTTP/1.0 needs no Host: the target's authority becomes the upstream's Host.
    let head = upstream_head("GET http://shop.example/c HTTP/1.0\r\n\r\n").await;
    assert!(head.starts_with("get /c http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: shop.example\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-host: shop.example\r\n"),
        "{head}"
    );
    proxy.process.shutdown().await;
}
