//! The prometheus analysis provider against a real Prometheus server scraping a real proxy's
//! /metrics, and against loopback stand-ins for what a real server cannot show.

mod common;
mod support_prometheus;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use tidegate::analysis::spec::PrometheusMetric;
use tidegate::analysis::{Reading, Vars, prometheus};

use common::{TestProxy, config_two_versions, get, serve};
use support_prometheus::Prometheus;

/// Share of 5xx among a version's responses over the last 30 s, as a user would write it.
const ERROR_RATE: &str = r#"sum(rate(tidegate_requests_total{route="{{route}}",version="{{version}}",class="5xx"}[30s])) / sum(rate(tidegate_requests_total{route="{{route}}",version="{{version}}"}[30s]))"#;

fn metric(address: String, query: &str) -> PrometheusMetric {
    PrometheusMetric {
        address,
        query: query.into(),
        timeout: Duration::from_secs(5),
        bearer_token_file: None,
        basic_auth: None,
        headers: BTreeMap::new(),
    }
}

fn vars(version: &str) -> Vars {
    Vars {
        route: "app".into(),
        canary: version.into(),
        stable: "stable".into(),
        namespace: String::new(),
    }
}

/// Sends requests through the proxy until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let _ = get(&url).await;
                n.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Load { stop, sent }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn text(body: &'static str, status: u16) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_of_each_version_comes_from_a_real_prometheus() {
    let good = serve(|_req| async { text("ok", 200) }).await;
    // Every 4th request fails: the canary's error rate is 0.25.
    let count = Arc::new(AtomicU64::new(0));
    let bad = serve(move |_req| {
        let n = count.fetch_add(1, Ordering::Relaxed);
        async move {
            if n % 4 == 0 {
                text("broken", 500)
            } else {
                text("ok", 200)
            }
        }
    })
    .await;
    let proxy = TestProxy::start(&config_two_versions(good, bad, 50.0)).await;
    let prom = Prometheus::start(&[proxy.process.admin_addr]).await;
    let load = Load::start(proxy.url("/"));
    prom.wait_for_first_scrape(1).await;

    // Wait for enough scrapes of both versions for rate() over 30s; the value itself is
    // not part of the wait, so a wrong figure fails below rather than being waited out.
    prom.wait_until("5 scrapes with traffic on both versions", || async {
        let r = prom
            .query(r#"count_over_time(tidegate_requests_total{route="app",class="5xx"}[30s])"#)
            .await
            .ok()?;
        let counts: Vec<f64> = r
            .as_array()?
            .iter()
            .filter_map(|s| s["value"][1].as_str()?.parse().ok())
            .collect();
        (counts.len() == 2 && counts.iter().all(|c| *c >= 5.0)).then_some(())
    })
    .await;
    assert!(load.sent.load(Ordering::Relaxed) > 0);

    let m = metric(prom.url(), ERROR_RATE);
    let stable = prometheus::measure(&m, &vars("stable")).await;
    assert_eq!(
        stable,
        Reading::Value(0.0),
        "the stable version never fails"
    );
    match prometheus::measure(&m, &vars("canary")).await {
        Reading::Value(v) => assert!(
            (0.2..=0.3).contains(&v),
            "canary error rate {v}, expected about 0.25"
        ),
        other => panic!("canary: expected a value, got {other:?}"),
    }

    // A version nobody requested: both sums are empty, so is the quotient.
    let none = prometheus::measure(&m, &vars("v-unknown")).await;
    assert_eq!(
        none,
        Reading::NoData(format!(
            "query returned no samples: {}",
            vars("v-unknown").fill(ERROR_RATE)
        ))
    );

    // Not aggregated: one sample per version and class.
    let per_series = metric(prom.url(), r#"tidegate_requests_total{route="{{route}}"}"#);
    let r = prometheus::measure(&per_series, &vars("canary")).await;
    assert!(
        matches!(&r, Reading::Error(e) if e.starts_with("query returned 10 samples") && e.contains("must aggregate")),
        "{r:?}"
    );
    let range = metric(
        prom.url(),
        r#"tidegate_requests_total{route="{{route}}"}[1m]"#,
    );
    let r = prometheus::measure(&range, &vars("canary")).await;
    assert!(
        matches!(&r, Reading::Error(e) if e.starts_with("query returned a matrix")),
        "{r:?}"
    );

    // The figure agrees with what the proxy itself counted.
    let scrape = proxy.metrics().await;
    let errors = common::sample(
        &scrape,
        "tidegate_requests_total",
        &[("version", "canary"), ("class", "5xx")],
    );
    assert!(errors > 0.0, "the proxy counted canary 5xx responses");
    drop(load);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_rejects_a_bad_query_and_finds_nothing_for_an_unknown_series() {
    let prom = Prometheus::start(&[]).await;

    let bad = metric(prom.url(), "sum(rate(tidegate_requests_total[30s]");
    let r = prometheus::measure(&bad, &vars("canary")).await;
    assert!(
        matches!(&r, Reading::Error(e)
            if e.starts_with(&format!("prometheus at {} rejected the query (HTTP 400, bad_data): ", prom.url()))
            && e.contains("parse error")),
        "{r:?}"
    );

    let empty = metric(
        prom.url(),
        r#"sum(tidegate_requests_total{route="{{route}}"})"#,
    );
    assert_eq!(
        prometheus::measure(&empty, &vars("canary")).await,
        Reading::NoData(
            r#"query returned no samples: sum(tidegate_requests_total{route="app"})"#.into()
        )
    );

    // A scalar is a value too.
    let scalar = metric(prom.url(), "scalar(vector(0.125))");
    assert_eq!(
        prometheus::measure(&scalar, &vars("canary")).await,
        Reading::Value(0.125)
    );
    // 0/0: no traffic is no data, not a pass.
    let nan = metric(prom.url(), "vector(0) / vector(0)");
    assert!(matches!(
        prometheus::measure(&nan, &vars("canary")).await,
        Reading::NoData(e) if e.starts_with("query result is NaN")
    ));
}

#[tokio::test]
async fn unreachable_or_silent_prometheus_is_an_error() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let r = prometheus::measure(
        &metric(format!("http://{closed}"), ERROR_RATE),
        &vars("canary"),
    )
    .await;
    assert!(
        matches!(&r, Reading::Error(e)
            if e.starts_with(&format!("GET http://{closed}/api/v1/query?…: "))
            && e.to_lowercase().contains("refused")),
        "{r:?}"
    );

    // Accepts the connection, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let mut m = metric(format!("http://{addr}"), ERROR_RATE);
    m.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let r = prometheus::measure(&m, &vars("canary")).await;
    assert_eq!(
        r,
        Reading::Error(format!(
            "GET http://{addr}/api/v1/query?…: no complete answer within 300ms"
        ))
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn bearer_token_is_read_from_its_file_on_every_query() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let stand_in = serve(move |req: http::Request<hyper::body::Incoming>| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        log.lock().expect("log").push(auth);
        async {
            text(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.5"]}]}}"#,
                200,
            )
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").expect("write token");
    let mut m = metric(format!("http://{stand_in}"), ERROR_RATE);
    m.bearer_token_file = Some(token.display().to_string());

    assert_eq!(
        prometheus::measure(&m, &vars("canary")).await,
        Reading::Value(0.5)
    );
    // Rotated on disk: the next query carries the new one, no restart.
    std::fs::write(&token, "second-token").expect("rotate token");
    assert_eq!(
        prometheus::measure(&m, &vars("canary")).await,
        Reading::Value(0.5)
    );
    assert_eq!(
        *seen.lock().expect("seen"),
        vec!["Bearer first-token", "Bearer second-token"]
    );
}
