//! `tidegate demo`: built-in app versions on loopback, the proxy in front, steady load, a live view.

pub mod backend;

use std::path::PathBuf;
use std::time::Duration;

use crate::runtime::ProxyProcess;

/// The demo's config, with `{STABLE}` and `{CANARY}` replaced by the backends' addresses.
const DEMO_CONFIG: &str = include_str!("../../config/demo.yaml");

pub async fn run(duration: Option<Duration>) -> Result<(), Box<dyn std::error::Error>> {
    let stable = backend::start(backend::AppVersion::new("v1")).await?;
    let canary = backend::start(backend::AppVersion::new("v2")).await?;
    let dir = std::env::temp_dir().join(format!("tidegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path: PathBuf = dir.join("tidegate.yaml");
    let text = DEMO_CONFIG
        .replace("{STABLE}", &stable.to_string())
        .replace("{CANARY}", &canary.to_string());
    std::fs::write(&path, text)?;
    let proxy = ProxyProcess::start(&path).await?;
    let web = proxy
        .listener("web")
        .ok_or("demo config has no `web` listener")?;
    println!("tidegate demo");
    println!(
        "  proxy      http://{web}/   (try: curl -i http://{web}/ ; curl -H 'x-tidegate-version: canary' http://{web}/)"
    );
    println!("  metrics    http://{}/metrics", proxy.admin_addr);
    println!(
        "  config     {}   (edit weights: the proxy reloads on save)",
        path.display()
    );
    println!("  stable v1  {stable}    canary v2  {canary}");
    println!("  sending 200 requests/s; Ctrl-C stops\n");
    let load = tokio::spawn(backend::steady_load(web, 200));
    let routes = proxy.routes.clone();
    let view = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(2));
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let table = routes.load_full();
            for r in &table.routes {
                let mut line = format!("  route {:<6}", r.name);
                for v in &r.versions {
                    let w = v.stats.window(Duration::from_secs(5));
                    line.push_str(&format!(
                        " | {} weight {:>5}%  {:>5.0} req/s  errors {:>4.1}%  p99 {:>6}",
                        v.name,
                        crate::config::format_percent(u32::from(v.weight)),
                        w.requests_per_second(),
                        w.error_rate().unwrap_or(0.0) * 100.0,
                        w.latency_quantile(0.99)
                            .map_or("-".to_string(), |d| format!(
                                "{:.1}ms",
                                d.as_secs_f64() * 1000.0
                            )),
                    ));
                }
                println!("{line}");
            }
        }
    });
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    load.abort();
    view.abort();
    proxy.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!("\ndemo stopped");
    Ok(())
}
