//! `tidegate demo`: two app versions on loopback, the proxy and rollout engine in front,
//! steady load, a live view of the rollout, and a summary.

pub mod backend;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::rollout::{Phase, RolloutStatus};
use crate::runtime::ProxyProcess;
use crate::units::format_percent;

/// The demo's config; `{STABLE}`, `{CANARY}` become the backends' addresses.
const DEMO_CONFIG: &str = include_str!("../../config/demo.yaml");

/// What the demo should show.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// The canary answers 30 % of requests with 500: watch the automatic rollback.
    pub bad_canary: bool,
    /// Keep serving after the rollout ends, until Ctrl-C.
    pub keep_running: bool,
}

pub async fn run(options: DemoOptions) -> Result<(), Box<dyn std::error::Error>> {
    // A couple of milliseconds of work per request, like a real app: latency ratios between
    // versions then mean something even on a busy machine.
    let mut v1 = backend::AppVersion::new("v1");
    v1.latency = Duration::from_millis(2);
    let stable = backend::start(v1).await?;
    let mut v2 = backend::AppVersion::new("v2");
    v2.latency = Duration::from_millis(2);
    if options.bad_canary {
        v2.error_rate = 0.3;
    }
    let canary = backend::start(v2).await?;

    let dir = std::env::temp_dir().join(format!("tidegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let token = format!("{:032x}", fastrand::u128(..));
    std::fs::write(dir.join("admin.token"), &token)?;
    let path: PathBuf = dir.join("tidegate.yaml");
    let text = DEMO_CONFIG
        .replace("{STABLE}", &stable.to_string())
        .replace("{CANARY}", &canary.to_string())
        .replace("127.0.0.1:8080", &free_or_any("127.0.0.1:8080").to_string())
        .replace("127.0.0.1:9901", &free_or_any("127.0.0.1:9901").to_string());
    std::fs::write(&path, text)?;

    let proxy = ProxyProcess::start(&path).await?;
    let web = proxy
        .listener("web")
        .ok_or("demo config has no `web` listener")?;
    let admin = proxy.admin_addr;
    println!(
        "tidegate demo: rolling out v2 over v1{}",
        if options.bad_canary {
            " (a bad v2: 30% errors)"
        } else {
            ""
        }
    );
    println!("  traffic   http://{web}/      200 requests/s of built-in load");
    println!("  canary    curl -H 'x-tidegate-version: v2' http://{web}/");
    println!("  metrics   http://{admin}/metrics");
    println!(
        "  commands  TIDEGATE_ADMIN=http://{admin} TIDEGATE_ADMIN_TOKEN={token} tidegate status app --watch"
    );
    println!("  config    {}\n", path.display());

    let tally = Arc::new(backend::LoadTally::default());
    let load = tokio::spawn(backend::steady_load(web, 200, tally.clone()));
    let started = Instant::now();
    let mut shown = 0;
    let mut finished_at: Option<Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => break None,
        }
        let Some(status) = proxy.controller.status("app") else {
            continue;
        };
        for e in status.history.iter().skip(shown) {
            println!(
                "  {:>5.1}s  ** {}",
                started.elapsed().as_secs_f64(),
                e.message
            );
        }
        shown = status.history.len();
        println!(
            "  {:>5.1}s  {}",
            started.elapsed().as_secs_f64(),
            live_line(&proxy, &status)
        );
        let done = (status.phase == Phase::Healthy
            && status.canary.is_none()
            && status.retiring.is_empty())
            || status.phase == Phase::Degraded;
        if done && !options.keep_running {
            // A few more seconds of traffic show where it settled.
            match finished_at {
                None => finished_at = Some(Instant::now()),
                Some(t) if t.elapsed() >= Duration::from_secs(2) => break Some(status),
                Some(_) => {}
            }
        }
    };
    load.abort();
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("\n{}", summary(outcome.as_ref(), &tally, started.elapsed()));
    Ok(())
}

/// The configured address if it is free, else any free loopback port.
fn free_or_any(addr: &str) -> SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => l
            .local_addr()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

fn live_line(proxy: &ProxyProcess, status: &RolloutStatus) -> String {
    let table = proxy.routes.load_full();
    let mut line = format!("{:<11}", status.phase.as_str());
    if let Some(route) = table.route("app") {
        for v in &route.versions {
            let w = v
                .stats
                .window(crate::clock::now_ms(), Duration::from_secs(3), 0);
            line.push_str(&format!(
                " | {} {:>3}% {:>4.0} req/s err {:>5.1}% p99 {:>6}",
                v.name,
                format_percent(u32::from(v.weight)),
                w.requests_per_second(),
                w.error_rate().unwrap_or(0.0) * 100.0,
                w.latency_quantile(0.99)
                    .map_or("-".to_string(), |d| format!(
                        "{:.1}ms",
                        d.as_secs_f64() * 1000.0
                    )),
            ));
        }
    }
    line
}

fn summary(outcome: Option<&RolloutStatus>, tally: &backend::LoadTally, took: Duration) -> String {
    let (ok, failed) = tally.totals();
    let head = match outcome {
        Some(s) if s.phase == Phase::Degraded => format!(
            "rolled back automatically after {:.1}s: {}",
            took.as_secs_f64(),
            s.message
        ),
        Some(s) => format!(
            "rollout completed in {:.1}s: {} is stable, the old version drained and was removed",
            took.as_secs_f64(),
            s.stable
        ),
        None => "demo stopped".to_string(),
    };
    format!(
        "{head}\n  client requests: {ok} answered 2xx-4xx, {failed} answered 5xx or failed\n  by version: {}",
        tally.by_version()
    )
}
