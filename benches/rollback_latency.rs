//! Rollback latency: how long a canary that starts failing keeps traffic, with the sequential
//! judge.
//!
//! Each run starts a proxy in-process with two loopback app versions and a rollout holding the
//! canary at 20 % under steady open-loop load, lets the background analysis (the sequential
//! judge on errorRate against stable, as config/rollout.yaml has it) look a few times, then makes the canary answer 500 at a random moment and times the
//! flip until the canary's weight is 0 in the live route table (polled every 2 ms). Client
//! errors are counted from the flip on. Run with `cargo bench --bench rollback_latency`;
//! `ROLLBACK_RUNS` (default 7), `ROLLBACK_RATE` (req/s, default 400) and
//! `ROLLBACK_INTERVALS_MS` (comma-separated, default `250,500`) change the setup.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tidegate::rollout::Phase;
use tidegate::runtime::ProxyProcess;
use tokio::net::TcpListener;

const CANARY_WEIGHT_BPS: u16 = 2000;

fn main() {
    let runs: usize = env_or("ROLLBACK_RUNS", 7);
    let rate: u32 = env_or("ROLLBACK_RATE", 400);
    let intervals: Vec<u64> = std::env::var("ROLLBACK_INTERVALS_MS")
        .unwrap_or_else(|_| "250,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "rollback latency: canary at {}%, {rate} req/s open-loop load, sequential judge on \
         errorRate vs stable (alpha 0.005); {runs} runs per interval",
        CANARY_WEIGHT_BPS / 100
    );
    for interval in intervals {
        let mut results = Vec::new();
        for run in 1..=runs {
            let r = rt.block_on(one_run(Duration::from_millis(interval), rate));
            println!(
                "  interval {interval:>3} ms  run {run}: weight 0 after {:>6.1} ms, {:>3} client errors \
                 ({} after the weight was 0), {} requests",
                r.latency.as_secs_f64() * 1000.0,
                r.errors,
                r.errors_after,
                r.requests
            );
            results.push(r);
        }
        let mut ms: Vec<f64> = results
            .iter()
            .map(|r| r.latency.as_secs_f64() * 1000.0)
            .collect();
        let mut errors: Vec<u64> = results.iter().map(|r| r.errors).collect();
        ms.sort_by(f64::total_cmp);
        errors.sort_unstable();
        println!(
            "interval {interval} ms: time to canary weight 0 min {:.0} / median {:.0} / max {:.0} ms; \
             client errors min {} / median {} / max {}; errors after weight 0: {}",
            ms[0],
            ms[ms.len() / 2],
            ms[ms.len() - 1],
            errors[0],
            errors[errors.len() / 2],
            errors[errors.len() - 1],
            results.iter().map(|r| r.errors_after).sum::<u64>()
        );
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct RunResult {
    latency: Duration,
    /// Client-visible errors (5xx or transport) of requests answered after the flip.
    errors: u64,
    /// Of those, requests sent after the canary's weight was seen at 0.
    errors_after: u64,
    requests: u64,
}

async fn one_run(interval: Duration, rate: u32) -> RunResult {
    let failing = Arc::new(AtomicBool::new(false));
    let stable = app("v1", Arc::new(AtomicBool::new(false))).await;
    let canary = app("v2", failing.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        r#"admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 1
routes:
  - name: app
    versions:
      - {{name: v1, endpoints: ["{stable}"]}}
      - {{name: v2, endpoints: ["{canary}"]}}
    rollout:
      canary: v2
      steps:
        - setWeight: {}
        - pause: {{}}
      analysis:
        metrics:
          - name: errors-vs-stable
            interval: {}ms
            provider: {{builtin: {{metric: errorRate, compare: stable, alpha: 0.005}}}}
"#,
        CANARY_WEIGHT_BPS / 100,
        interval.as_millis()
    );
    let path = dir.path().join("tidegate.yaml");
    std::fs::write(&path, config).expect("write config");
    let proxy = ProxyProcess::start(&path).await.expect("proxy starts");
    let web = proxy.listener("web").expect("web listener");

    let epoch = Instant::now();
    let load = Load::start(web, rate, epoch);
    // Healthy first: the canary takes its 20 % and is looked at a few times.
    wait(Duration::from_secs(20), || {
        proxy.controller.status("app").is_some_and(|s| {
            s.phase == Phase::Paused
                && s.background_analysis
                    .as_ref()
                    .is_some_and(|r| r.metrics[0].tally.successes >= 3)
        })
    })
    .await
    .expect("the healthy canary passes its analysis");
    assert_eq!(canary_weight(&proxy), Some(CANARY_WEIGHT_BPS));
    // Break at a random point of the measurement cycle, not right after a measurement.
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;

    let flip = Instant::now();
    failing.store(true, SeqCst);
    loop {
        if canary_weight(&proxy) == Some(0) {
            break;
        }
        assert!(
            flip.elapsed() < Duration::from_secs(30),
            "no rollback within 30 s: {:#?}",
            proxy.controller.status("app")
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let latency = flip.elapsed();
    let zero_at = epoch.elapsed();
    let status = proxy.controller.status("app").expect("status");
    assert_eq!(status.phase, Phase::Degraded, "{status:#?}");
    // Another second of traffic shows whether any error leaks past the rollback.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = load.stop().await;
    proxy.shutdown().await;

    let flip_at = flip - epoch;
    let failed = |o: &&Sample| !o.ok && o.done > flip_at;
    RunResult {
        latency,
        errors: log.iter().filter(failed).count() as u64,
        errors_after: log
            .iter()
            .filter(failed)
            .filter(|o| o.sent > zero_at)
            .count() as u64,
        requests: log.len() as u64,
    }
}

fn canary_weight(proxy: &ProxyProcess) -> Option<u16> {
    let table = proxy.routes.load_full();
    let route = table.route("app")?;
    let i = route.version_index("v2")?;
    Some(route.versions[i].weight)
}

async fn wait(limit: Duration, cond: impl Fn() -> bool) -> Result<(), ()> {
    tokio::time::timeout(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .map_err(|_| ())
}

/// An app version: answers its name, or 500 while `failing` is set.
async fn app(name: &'static str, failing: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("app addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let failing = failing.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let status = if failing.load(SeqCst) {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    };
                    async move {
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(name.as_bytes())));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One client request: when it was sent and answered (since the run's epoch), and whether it
/// got a non-5xx answer.
struct Sample {
    sent: Duration,
    done: Duration,
    ok: bool,
}

/// Open-loop load: a request every 1/rate seconds, whatever the answers take.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    log: Arc<Mutex<Vec<Sample>>>,
    in_flight: Arc<AtomicU64>,
}

impl Load {
    fn start(target: SocketAddr, rate: u32, epoch: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let in_flight = Arc::new(AtomicU64::new(0));
        let (s, l, n) = (stop.clone(), log.clone(), in_flight.clone());
        let task = tokio::spawn(async move {
            let client: Client<_, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build_http();
            let uri: http::Uri = format!("http://{target}/").parse().expect("uri");
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while !s.load(SeqCst) {
                tick.tick().await;
                let (client, uri, log, n) = (client.clone(), uri.clone(), l.clone(), n.clone());
                n.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let sent = epoch.elapsed();
                    let ok = match client.get(uri).await {
                        Ok(resp) => {
                            let ok = !resp.status().is_server_error();
                            ok && resp.into_body().collect().await.is_ok()
                        }
                        Err(_) => false,
                    };
                    let done = epoch.elapsed();
                    log.lock().expect("log").push(Sample { sent, done, ok });
                    n.fetch_sub(1, SeqCst);
                });
            }
        });
        Load {
            stop,
            task,
            log,
            in_flight,
        }
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, SeqCst);
        let _ = self.task.await;
        let in_flight = self.in_flight.clone();
        let _ = wait(Duration::from_secs(10), || in_flight.load(SeqCst) == 0).await;
        std::mem::take(&mut *self.log.lock().expect("log"))
    }
}
