//! The real `tidegate` binary as a subprocess: `validate`, reload on SIGHUP, drain on SIGTERM.

mod common;
mod control_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use common::*;
use control_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");
const WAIT: Duration = Duration::from_secs(10);

/// A `tidegate proxy` child process; killed if a test fails before it exits.
struct Running {
    child: Child,
    log: PathBuf,
    admin: SocketAddr,
}

impl Running {
    fn start(config: &Path, admin: SocketAddr) -> Running {
        let log = config.with_extension("log");
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(["proxy", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .expect("start tidegate");
        Running { child, log, admin }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the admin listener answers. The binary's single-threaded runtime first
    /// runs the admin task when `run_until_signal` awaits, so its signal handlers are set by then.
    async fn wait_ready(&mut self) {
        let url = format!("http://{}/healthz", self.admin);
        let client = client();
        let ready = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(status);
                }
                if matches!(fetch(&client, &url, &[]).await, Ok(r) if r.status == 200) {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!("tidegate exited early ({status}):\n{}", self.log()),
            Err(_) => panic!("tidegate did not come up:\n{}", self.log()),
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let exited = tokio::time::timeout(limit, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match exited {
            Ok(status) => status,
            Err(_) => panic!("tidegate still running after {limit:?}:\n{}", self.log()),
        }
    }

    async fn routes_json(&self) -> serde_json::Value {
        let text = get_text(&format!("http://{}/routes", self.admin)).await;
        serde_json::from_str(&text).expect("/routes is JSON")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn proxy_config(
    listen: SocketAddr,
    admin: SocketAddr,
    stable: SocketAddr,
    canary: SocketAddr,
    canary_weight: &str,
    stable_weight: &str,
) -> String {
    format!(
        r#"admin: {{listen: "{admin}"}}
listeners: [{{name: web, listen: "{listen}"}}]
workers: 1
timeouts: {{drain: 10s}}
routes:
  - name: app
    versions:
      - {{name: stable, weight: {stable_weight}, endpoints: ["{stable}"]}}
      - {{name: canary, weight: {canary_weight}, endpoints: ["{canary}"]}}
"#
    )
}

/// Weight of `version` of route `app` in the admin `/routes` JSON.
fn json_weight(routes: &serde_json::Value, version: &str) -> Option<f64> {
    routes["routes"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == "app")?["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == version)?["weight"]
        .as_f64()
}

#[test]
fn validate_accepts_the_example_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tidegate.yaml");
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&example)
        .output()
        .expect("run tidegate validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid"), "{stdout}");
}

/// Runs `tidegate validate` on `yaml`; expects exit 1 and `file:line: message` on stderr,
/// with the line of the first line of `yaml` containing `line_text`.
fn expect_rejected(yaml: &str, line_text: &str, message: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .expect("run tidegate validate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let want = format!("{}:{}: {message}", path.display(), line_of(yaml, line_text));
    assert!(stderr.contains(&want), "expected `{want}` in:\n{stderr}");
}

#[test]
fn validate_names_file_line_and_field_of_bad_weights() {
    let any = loopback(1);
    expect_rejected(
        &proxy_config(any, loopback(2), any, any, "10", "80"),
        "    versions:",
        "routes[0].versions: weights add up to 90%",
    );
    expect_rejected(
        &proxy_config(any, loopback(2), any, any, "10.005", "89.995"),
        "name: stable",
        "routes[0].versions[0].weight: weight `89.995` has more than two decimals",
    );
}

#[test]
fn validate_names_the_line_and_field_of_a_bad_duration() {
    let any = loopback(1);
    let yaml = proxy_config(any, loopback(2), any, any, "0", "100").replace(
        "timeouts: {drain: 10s}",
        "timeouts:\n  connect: 2s\n  drain: 10 parsecs",
    );
    expect_rejected(
        &yaml,
        "drain: 10 parsecs",
        "timeouts.drain: `10 parsecs` is not a duration",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_edited_weights() {
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    let (listen, admin) = (loopback(free_port()), loopback(free_port()));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tidegate.yaml");
    std::fs::write(
        &config,
        proxy_config(listen, admin, stable.addr, canary.addr, "0", "100"),
    )
    .expect("write config");
    let mut proxy = Running::start(&config, admin);
    proxy.wait_ready().await;
    let url = format!("http://{listen}/");
    for _ in 0..8 {
        assert_eq!(get(&url).await, (200, "stable".to_string()));
    }
    assert_eq!(json_weight(&proxy.routes_json().await, "canary"), Some(0.0));

    // Same length and same modification time: the file watcher cannot tell it changed,
    // so only SIGHUP can apply it.
    let edited = proxy_config(listen, admin, stable.addr, canary.addr, "75", "25");
    let before = std::fs::metadata(&config).expect("metadata");
    assert_eq!(before.len(), edited.len() as u64);
    let tmp = dir.path().join("tidegate.yaml.new");
    std::fs::write(&tmp, &edited).expect("write edit");
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(before.modified()?))
        .expect("keep the modification time");
    std::fs::rename(&tmp, &config).expect("replace config");

    proxy.signal("HUP");
    eventually("SIGHUP applies the new weights", WAIT, || async {
        json_weight(&proxy.routes_json().await, "canary") == Some(75.0)
    })
    .await;
    let mut canary_seen = 0;
    for _ in 0..8 {
        let (status, body) = get(&url).await;
        assert_eq!(status, 200);
        canary_seen += usize::from(body == "canary");
    }
    assert_eq!(canary_seen, 6, "75 % of 8 requests");
    let text = get_text(&format!("http://{admin}/metrics")).await;
    let m = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse");
    assert_eq!(
        sample(
            &m,
            "tidegate_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "tidegate_route_weight_percent",
            &[("version", "canary")]
        ),
        75.0
    );

    proxy.signal("TERM");
    let status = proxy.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    // A log file gets plain text: no terminal colour codes around levels and fields.
    let log = proxy.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "colour codes in a log file:\n{log:?}"
    );
}

/// A backend whose `/slow` announces itself and waits for `release`, and whose `/ws`
/// upgrades to an echo tunnel.
struct DrainBackend {
    addr: SocketAddr,
    arrived: Arc<Notify>,
    release: watch::Sender<bool>,
}

async fn drain_backend() -> DrainBackend {
    let arrived = Arc::new(Notify::new());
    let (release, released) = watch::channel(false);
    let a = arrived.clone();
    let addr = serve(move |mut req: Request<Incoming>| {
        let (a, mut released) = (a.clone(), released.clone());
        async move {
            match req.uri().path() {
                "/ws" => {
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = [0u8; 1024];
                        loop {
                            match io.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    });
                    Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .body(Full::new(Bytes::new()))
                        .expect("response")
                }
                "/slow" => {
                    a.notify_one();
                    // Bounded, so a broken test cannot hang the backend.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), released.wait_for(|r| *r))
                            .await;
                    Response::new(Full::new(Bytes::from("slow done")))
                }
                _ => Response::new(Full::new(Bytes::from("app"))),
            }
        }
    })
    .await;
    DrainBackend {
        addr,
        arrived,
        release,
    }
}

/// Reads one HTTP response head from a raw connection.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert_eq!(n, 1, "connection closed inside the response head");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn echo(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.expect("write to tunnel");
    let mut back = vec![0u8; message.len()];
    stream
        .read_exact(&mut back)
        .await
        .expect("read from tunnel");
    assert_eq!(back, message, "the tunnel echoes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_requests_and_tunnels_then_exits_0() {
    let backend = drain_backend().await;
    let (listen, admin) = (loopback(free_port()), loopback(free_port()));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tidegate.yaml");
    // Header and drain timeouts far beyond the test's waits: only the start of the drain
    // can close an idle connection.
    let yaml = proxy_config(listen, admin, backend.addr, backend.addr, "0", "100").replace(
        "timeouts: {drain: 10s}",
        "timeouts: {drain: 60s, request_header: 300s}",
    );
    std::fs::write(&config, yaml).expect("write config");
    let mut proxy = Running::start(&config, admin);
    proxy.wait_ready().await;

    // An upgraded connection through the proxy.
    let mut tunnel = TcpStream::connect(listen).await.expect("connect");
    tunnel
        .write_all(b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("send upgrade");
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo(&mut tunnel, b"before").await;

    // A request the upstream holds until the test releases it.
    let slow = tokio::spawn(async move { get(&format!("http://{listen}/slow")).await });
    tokio::time::timeout(WAIT, backend.arrived.notified())
        .await
        .expect("the slow request reaches the upstream");

    // A keep-alive connection that has been served and sits idle.
    let mut idle = TcpStream::connect(listen).await.expect("connect");
    idle.write_all(b"GET /app HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .expect("send request");
    let head = read_head(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 3];
    idle.read_exact(&mut body).await.expect("read body");

    proxy.signal("TERM");
    // The idle connection is closed when the drain begins; it holds nothing up.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, idle.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "idle connection closed at the start of the drain: {read:?} {rest:?}"
    );
    eventually("the listener refuses new connections", WAIT, || async {
        matches!(
            TcpStream::connect(listen).await,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    })
    .await;
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "tidegate must wait for the work in flight:\n{}",
        proxy.log()
    );
    echo(&mut tunnel, b"during drain").await;
    assert!(!slow.is_finished());

    backend.release.send_replace(true);
    let reply = tokio::time::timeout(WAIT, slow)
        .await
        .expect("the slow request finishes")
        .expect("the slow request succeeds");
    assert_eq!(reply, (200, "slow done".to_string()));
    echo(&mut tunnel, b"still open").await;
    assert!(
        proxy.child.try_wait().expect("try_wait").is_none(),
        "an open tunnel holds the drain"
    );
    drop(tunnel);

    // With nothing left in flight the drain ends, not its 60 s timeout (the wait only
    // guards against a hang).
    let status = proxy.wait_exit(Duration::from_secs(90)).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    assert!(
        !proxy.log().contains("drain timeout reached"),
        "the drain ended on its own:\n{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_a_tunnel_that_outlives_the_drain_timeout_and_exits_0() {
    let backend = drain_backend().await;
    let (listen, admin) = (loopback(free_port()), loopback(free_port()));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tidegate.yaml");
    std::fs::write(
        &config,
        proxy_config(listen, admin, backend.addr, backend.addr, "0", "100")
            .replace("drain: 10s", "drain: 500ms"),
    )
    .expect("write config");
    let mut proxy = Running::start(&config, admin);
    proxy.wait_ready().await;
    let mut tunnel = TcpStream::connect(listen).await.expect("connect");
    tunnel
        .write_all(b"GET /ws HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("send upgrade");
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo(&mut tunnel, b"hello").await;

    let term = std::time::Instant::now();
    proxy.signal("TERM");
    let status = proxy.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    assert!(
        proxy.log().contains("drain timeout reached"),
        "the exit says the drain timed out:\n{}",
        proxy.log()
    );
    assert!(
        term.elapsed() >= Duration::from_millis(450),
        "the open tunnel should hold the exit for the 500 ms drain timeout, it took {:?}",
        term.elapsed()
    );
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, tunnel.read(&mut buf))
        .await
        .expect("the tunnel is closed at exit");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

/// nginx as the backend, trusting tidegate's address (127.0.0.1) for the client address,
/// which it answers with: `by_forwarded_for` takes it from `X-Forwarded-For`, `by_real_ip`
/// from `X-Real-IP`.
struct Nginx {
    child: Child,
    by_forwarded_for: SocketAddr,
    by_real_ip: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx is not installed: scripts/test.sh installs it (apt nginx-light)");
        let dir = tempfile::tempdir().expect("temp dir");
        let (by_forwarded_for, by_real_ip) = (loopback(free_port()), loopback(free_port()));
        let d = dir.path().display();
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d};
  set_real_ip_from 127.0.0.1;
  server {{
    listen {by_forwarded_for};
    real_ip_header X-Forwarded-For;
    location / {{ return 200 "$remote_addr"; }}
  }}
  server {{
    listen {by_real_ip};
    real_ip_header X-Real-IP;
    location / {{ return 200 "$remote_addr"; }}
  }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx {
            child,
            by_forwarded_for,
            by_real_ip,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET from the loopback address 127.0.0.2 carrying two `X-Forwarded-For` lines; the
/// status and body of the answer. Route `app` sends `/` to nginx's `X-Forwarded-For` server
/// and `/real-ip` to its `X-Real-IP` one.
async fn get_from_second_address(to: SocketAddr, path: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
        .expect("bind 127.0.0.2");
    let mut stream = socket.connect(to).await.expect("connect to tidegate");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 192.0.2.1\r\n\
         X-Forwarded-For: 192.0.2.2\r\nX-Real-IP: 192.0.2.9\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut resp = String::new();
    stream.read_to_string(&mut resp).await.expect("read");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_trusting_tidegate_sees_the_real_client_address() {
    let nginx = Nginx::start();
    let (listen, admin) = (loopback(free_port()), loopback(free_port()));
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tidegate.yaml");
    let yaml = format!(
        r#"admin: {{listen: "{admin}"}}
listeners: [{{name: web, listen: "{listen}"}}]
workers: 1
routes:
  - name: real-ip
    match: {{path_prefix: /real-ip}}
    versions: [{{name: nginx, weight: 100, endpoints: ["{}"]}}]
  - name: app
    versions: [{{name: nginx, weight: 100, endpoints: ["{}"]}}]
"#,
        nginx.by_real_ip, nginx.by_forwarded_for
    );
    std::fs::write(&config, &yaml).expect("write config");
    eventually("nginx answers", WAIT, || async {
        TcpStream::connect(nginx.by_real_ip).await.is_ok()
    })
    .await;

    let mut proxy = Running::start(&config, admin);
    proxy.wait_ready().await;
    // The client at 127.0.0.2 claims to be 192.0.2.2 in a second line: nginx must see 127.0.0.2.
    for path in ["/", "/real-ip"] {
        assert_eq!(
            get_from_second_address(listen, path).await,
            (200, "127.0.0.2".to_string()),
            "{path}"
        );
    }
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(WAIT).await.code(), Some(0));

    // With the client listed as a trusted proxy, its account is believed: X-Real-IP carries
    // the address it forwarded for, while X-Forwarded-For still ends with the address it has.
    let trusting = yaml.replace(
        &format!(r#"listen: "{listen}"}}"#),
        &format!(r#"listen: "{listen}", trusted_proxies: [127.0.0.2]}}"#),
    );
    assert_ne!(trusting, yaml);
    std::fs::write(&config, &trusting).expect("write config");
    let mut proxy = Running::start(&config, admin);
    proxy.wait_ready().await;
    assert_eq!(
        get_from_second_address(listen, "/real-ip").await,
        (200, "192.0.2.2".to_string())
    );
    assert_eq!(
        get_from_second_address(listen, "/").await,
        (200, "127.0.0.2".to_string())
    );
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(WAIT).await.code(), Some(0));
}

#[test]
fn validate_names_a_bad_trusted_proxy_range() {
    let any = loopback(1);
    let yaml = proxy_config(any, loopback(2), any, any, "0", "100").replace(
        r#"listen: "127.0.0.1:1"}]"#,
        r#"listen: "127.0.0.1:1", trusted_proxies: [10.0.0.0/8, 10.0.0/33]}]"#,
    );
    expect_rejected(
        &yaml,
        "trusted_proxies",
        "listeners[0].trusted_proxies[1]: `10.0.0/33` is not an IP address or CIDR range (e.g. 10.0.0.0/8)",
    );
}
