//! Helpers for the rollout end-to-end tests: app versions that fail on demand, hold requests
//! and echo over upgraded connections; a load of client loops that logs every request; a raw
//! upgraded-connection client; a webhook receiver; waiting on rollout status with deadlines.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tidegate::rollout::RolloutStatus;
use tidegate::runtime::ProxyProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use crate::common::eventually;
use tokio::task::JoinHandle;

use crate::common::serve;

/// Header carrying when the client sent a request (microseconds since the test's epoch).
pub const SENT_HEADER: &str = "x-sent-us";

/// Microseconds from `epoch` to now.
pub fn micros_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// One app version on loopback. `GET /slow?ms=N` answers after N ms; `GET /ws` with
/// `Upgrade: websocket` switches protocols, greets with the version name and echoes;
/// anything else answers the name (200), or 500 while `failing` is set or when it is the
/// `fail_every`-th request (0: never).
pub struct App {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Requests received (upgrades included).
    pub hits: Arc<AtomicU64>,
    pub failing: Arc<AtomicBool>,
    pub fail_every: Arc<AtomicU64>,
    /// Latest `x-sent-us` seen on a request that is not held open (`/slow`, `/ws` excluded):
    /// when the last short request that reached this version was sent.
    pub last_sent_us: Arc<AtomicU64>,
    /// `/slow` requests with a `tag` parameter being held now.
    pub tagged_held: Arc<AtomicU64>,
}

pub async fn app(name: &'static str) -> App {
    let hits = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let last_sent_us = Arc::new(AtomicU64::new(0));
    let tagged_held = Arc::new(AtomicU64::new(0));
    let fail_every = Arc::new(AtomicU64::new(0));
    let (h, f, l, t, e) = (
        hits.clone(),
        failing.clone(),
        last_sent_us.clone(),
        tagged_held.clone(),
        fail_every.clone(),
    );
    let addr = serve(move |req: Request<Incoming>| {
        let (h, f, l, t, e) = (h.clone(), f.clone(), l.clone(), t.clone(), e.clone());
        async move {
            let hit = h.fetch_add(1, SeqCst) + 1;
            let path = req.uri().path().to_string();
            if path == "/ws" && req.headers().contains_key(http::header::UPGRADE) {
                return switch_to_echo(name, req);
            }
            if path == "/slow" {
                let query = req.uri().query().unwrap_or("");
                let param = |key: &str| {
                    query
                        .split('&')
                        .find_map(|p| p.strip_prefix(key)?.strip_prefix('='))
                };
                let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                let tagged = param("tag").is_some();
                if tagged {
                    t.fetch_add(1, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if tagged {
                    t.fetch_sub(1, SeqCst);
                }
                return reply(StatusCode::OK, name);
            }
            if let Some(sent) = req
                .headers()
                .get(SENT_HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                l.fetch_max(sent, SeqCst);
            }
            let every = e.load(SeqCst);
            if f.load(SeqCst) || (every > 0 && hit % every == 0) {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "broken")
            } else {
                reply(StatusCode::OK, name)
            }
        }
    })
    .await;
    App {
        name,
        addr,
        hits,
        failing,
        fail_every,
        last_sent_us,
        tagged_held,
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    if status == StatusCode::OK {
        resp.headers_mut()
            .insert("x-version", http::HeaderValue::from_static(body));
    }
    resp
}

/// Answers 101 and, once upgraded, writes `name\n` and echoes every byte back.
fn switch_to_echo(name: &'static str, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        if io.write_all(format!("{name}\n").as_bytes()).await.is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if io.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    resp.headers_mut().insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    resp
}

/// What one client request came to.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Microseconds since the epoch when the request was sent and when it was answered.
    pub sent_us: u64,
    pub done_us: u64,
    /// Status, or the transport error.
    pub result: Result<u16, String>,
    /// The `x-version` header of the answer.
    pub version: Option<String>,
    /// A long request (`/slow`).
    pub long: bool,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.result == Ok(200)
    }
}

type Log = Arc<Mutex<Vec<Outcome>>>;
type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// Sends one GET and logs what came of it.
async fn logged_get(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    epoch: Instant,
    long: bool,
    log: &Log,
) -> Outcome {
    let sent_us = micros_since(epoch);
    let mut req = Request::get(url).header(SENT_HEADER, sent_us.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::new()).expect("request");
    let result = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let version = resp
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?;
        Ok::<_, String>((status, version))
    }
    .await;
    let (result, version) = match result {
        Ok((s, v)) => (Ok(s), v),
        Err(e) => (Err(e), None),
    };
    let outcome = Outcome {
        sent_us,
        done_us: micros_since(epoch),
        result,
        version,
        long,
    };
    log.lock().expect("log").push(outcome.clone());
    outcome
}

/// Client traffic through the proxy: `loops` client loops each sending a GET every `period`
/// (one at a time, on their own connection pool), plus, with `long_every`, a request held
/// 1-3 s by the backend started that often. Every request is logged.
pub struct Load {
    pub epoch: Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    log: Log,
}

impl Load {
    pub fn start(
        proxy: SocketAddr,
        epoch: Instant,
        loops: usize,
        period: Duration,
        long_every: Option<Duration>,
    ) -> Load {
        let (stop, stopped) = watch::channel(false);
        let log: Log = Arc::default();
        let mut tasks = Vec::new();
        for _ in 0..loops {
            let (log, stopped) = (log.clone(), stopped.clone());
            let url = format!("http://{proxy}/");
            tasks.push(tokio::spawn(async move {
                let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !*stopped.borrow() {
                    tick.tick().await;
                    logged_get(&client, &url, &[], epoch, false, &log).await;
                }
            }));
        }
        if let Some(every) = long_every {
            let (log, stopped) = (log.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                let mut held = Vec::new();
                let mut tick = tokio::time::interval(every);
                while !*stopped.borrow() {
                    tick.tick().await;
                    let url = format!("http://{proxy}/slow?ms={}", fastrand::u64(1000..=3000));
                    let (client, log) = (client.clone(), log.clone());
                    held.push(tokio::spawn(async move {
                        logged_get(&client, &url, &[], epoch, true, &log).await;
                    }));
                }
                for h in held {
                    let _ = h.await;
                }
            }));
        }
        Load {
            epoch,
            stop,
            tasks,
            log,
        }
    }

    /// Requests answered so far.
    pub fn snapshot(&self) -> Vec<Outcome> {
        self.log.lock().expect("log").clone()
    }

    /// Waits until `n` more requests sent after `after_us` have been answered.
    pub async fn wait_answered_after(&self, after_us: u64, n: usize, limit: Duration) {
        let what = format!("{n} requests sent after {after_us}us to be answered");
        eventually(&what, limit, || async {
            self.snapshot()
                .iter()
                .filter(|o| o.sent_us > after_us)
                .count()
                >= n
        })
        .await;
    }

    /// Stops the loops, lets requests in flight (long ones included) finish, returns the log.
    pub async fn stop(self) -> Vec<Outcome> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("load tasks end within 10s")
                .expect("load task");
        }
        self.log.lock().expect("log").clone()
    }
}

/// A GET through the proxy that the backend holds for `ms` (counted in `App::tagged_held`
/// while held), logged like the load's.
pub fn long_request(
    proxy: SocketAddr,
    epoch: Instant,
    ms: u64,
    headers: &'static [(&'static str, &'static str)],
) -> JoinHandle<Outcome> {
    tokio::spawn(async move {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let log: Log = Arc::default();
        let url = format!("http://{proxy}/slow?ms={ms}&tag=held");
        logged_get(&client, &url, headers, epoch, true, &log).await
    })
}

/// A client on an upgraded (WebSocket-style) connection through the proxy, raw TCP.
pub struct Tunnel {
    stream: TcpStream,
    /// The version that answered the upgrade (its greeting).
    pub version: String,
}

impl Tunnel {
    pub async fn open(proxy: SocketAddr) -> Tunnel {
        let mut stream = TcpStream::connect(proxy).await.expect("connect to proxy");
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            )
            .await
            .expect("send upgrade request");
        let head = read_until(&mut stream, b"\r\n\r\n").await;
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused:\n{head}");
        let greeting = read_until(&mut stream, b"\n").await;
        let version = String::from_utf8_lossy(&greeting).trim().to_string();
        Tunnel { stream, version }
    }

    /// Sends `msg` and reads it back.
    pub async fn echo(&mut self, msg: &str) -> Result<(), String> {
        self.stream
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), self.stream.read_exact(&mut back))
            .await
            .map_err(|_| "no echo within 5s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if back != msg.as_bytes() {
            return Err(format!(
                "echo garbled: sent {msg:?}, got {:?}",
                String::from_utf8_lossy(&back)
            ));
        }
        Ok(())
    }

    /// Keeps exchanging messages every `every` in the background until `stop` is called.
    pub fn keep_talking(self, every: Duration) -> Talker {
        let (stop, mut stopped) = watch::channel(false);
        let exchanged = Arc::new(AtomicU64::new(0));
        let count = exchanged.clone();
        let task = tokio::spawn(async move {
            let mut tunnel = self;
            let mut n = 0u64;
            loop {
                tunnel.echo(&format!("ping {n}\n")).await?;
                n += 1;
                count.store(n, SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
            }
            tunnel.echo("last\n").await?;
            Ok(tunnel)
        });
        Talker {
            stop,
            task,
            exchanged,
        }
    }

    /// Closes the connection from the client side.
    pub async fn close(mut self) {
        let _ = self.stream.shutdown().await;
        drop(self.stream);
    }
}

/// A tunnel exchanging messages in the background.
pub struct Talker {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<Tunnel, String>>,
    /// Messages echoed intact so far.
    pub exchanged: Arc<AtomicU64>,
}

impl Talker {
    /// Messages echoed so far.
    pub fn count(&self) -> u64 {
        self.exchanged.load(SeqCst)
    }

    /// Fails the test if the exchange broke so far.
    pub fn assert_alive(&self) {
        assert!(
            !self.task.is_finished(),
            "the upgraded connection broke after {} messages",
            self.count()
        );
    }

    /// Waits for the tunnel to be closed by the proxy; returns the messages echoed before.
    pub async fn broken(self) -> u64 {
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the proxy closes the tunnel within 10 s")
            .expect("tunnel task");
        assert!(
            result.is_err(),
            "the tunnel was expected to be closed by the proxy"
        );
        self.exchanged.load(SeqCst)
    }

    /// Stops talking; the tunnel must have stayed intact throughout.
    pub async fn stop(self) -> Tunnel {
        let _ = self.stop.send(true);
        let n = self.count();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("tunnel talker stops")
            .expect("tunnel task")
            .unwrap_or_else(|e| panic!("upgraded connection broke after {n} messages: {e}"))
    }
}

async fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(5), async {
        while !buf.ends_with(end) {
            let n = stream.read(&mut byte).await.expect("read from proxy");
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
    })
    .await
    .expect("answer within 5s");
    buf
}

/// A loopback webhook receiver keeping every JSON body posted to it.
pub struct Webhook {
    pub url: String,
    pub received: Arc<Mutex<Vec<serde_json::Value>>>,
}

pub async fn webhook() -> Webhook {
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let r = received.clone();
    let addr = serve(move |req: Request<Incoming>| {
        let r = r.clone();
        async move {
            let body = req.into_body().collect().await.expect("body").to_bytes();
            let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                serde_json::Value::String(format!(
                    "not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                ))
            });
            r.lock().expect("webhook log").push(value);
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    Webhook {
        url: format!("http://{addr}/hooks/T000/secret"),
        received,
    }
}

impl Webhook {
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("webhook log").clone()
    }

    /// Waits for an event of `kind` (`started`, `stepCompleted`, `aborted`, ...) and returns it.
    pub async fn wait_for(&self, kind: &str, limit: Duration) -> serde_json::Value {
        eventually(&format!("a `{kind}` notification"), limit, || async {
            self.events().iter().any(|e| e["event"] == kind)
        })
        .await;
        self.events()
            .into_iter()
            .find(|e| e["event"] == kind)
            .expect("event")
    }
}

/// Waits until the rollout of `route` satisfies `cond`, and returns that status. On timeout
/// the test fails showing the last status seen.
pub async fn wait_status(
    proxy: &ProxyProcess,
    route: &str,
    what: &str,
    limit: Duration,
    cond: impl Fn(&RolloutStatus) -> bool,
) -> RolloutStatus {
    let waited = tokio::time::timeout(limit, async {
        loop {
            if let Some(s) = proxy.controller.status(route)
                && cond(&s)
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    match waited {
        Ok(s) => s,
        Err(_) => panic!(
            "timed out after {limit:?} waiting for {what}; last status: {:#?}",
            proxy.controller.status(route)
        ),
    }
}

/// The weight (basis points) of `version` in the live route table; None when not in it.
pub fn table_weight(proxy: &ProxyProcess, route: &str, version: &str) -> Option<u16> {
    let table = proxy.routes.load_full();
    let r = table.route(route)?;
    let i = r.version_index(version)?;
    Some(r.versions[i].weight)
}

/// The versions of `route` listed by the admin `/routes` page.
pub async fn admin_route_versions(proxy: &ProxyProcess, route: &str) -> Vec<(String, f64)> {
    let text = crate::common::get_text(&format!("http://{}/routes", proxy.admin_addr)).await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("/routes is JSON");
    json["routes"]
        .as_array()
        .expect("routes array")
        .iter()
        .filter(|r| r["name"] == route)
        .flat_map(|r| r["versions"].as_array().cloned().unwrap_or_default())
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                v["weight"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect()
}

/// POSTs an admin command (`promote`, `abort`, ...) with a bearer token; returns status and body.
pub async fn admin_command(
    proxy: &ProxyProcess,
    rollout: &str,
    verb: &str,
    token: &str,
) -> (u16, String) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!(
        "http://{}/api/v1/rollouts/{rollout}/{verb}",
        proxy.admin_addr
    ))
    .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
    .body(Empty::new())
    .expect("request");
    let resp = client.request(req).await.expect("admin answers");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Failures among `log`, shown briefly for assertion messages.
pub fn failures(log: &[Outcome]) -> Vec<&Outcome> {
    log.iter().filter(|o| !o.ok()).collect()
}

/// GET `url` with extra headers: status, the answering version (`x-version`) and the
/// `Set-Cookie` value of cookie `cookie`, if set.
pub async fn fetch_version(
    url: &str,
    headers: &[(&str, &str)],
    cookie: &str,
) -> (u16, Option<String>, Option<String>) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).expect("request"))
        .await
        .expect("proxy answers");
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let set = resp
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (k, val) = v.split(';').next()?.trim().split_once('=')?;
            (k == cookie).then(|| val.to_string())
        });
    let _ = resp.into_body().collect().await;
    (status, version, set)
}
