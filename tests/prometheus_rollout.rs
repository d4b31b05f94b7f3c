//! Rollouts judged by PromQL: a real Prometheus scrapes tidegate's own /metrics, and a step
//! analysis asks it for the canary's error rate. One rollout passes, one rolls back, and a
//! query with no samples pauses the rollout for a human.

mod common;
mod control_support;
mod support_prometheus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use tidegate::rollout::status::PauseReason;
use tidegate::rollout::{Command, EventKind, Phase, RolloutStatus};

use common::{TestProxy, client, config_two_versions, get, sample, serve};
use control_support::write_atomically;
use support_prometheus::{Prometheus, first_value};

/// The canary's share of 5xx over the last 10 s, as a user would write it.
const CANARY_ERROR_RATE: &str = r#"sum(rate(tidegate_requests_total{route="{{route}}",version="{{canary}}",class="5xx"}[10s])) / sum(rate(tidegate_requests_total{route="{{route}}",version="{{canary}}"}[10s]))"#;

/// How long a rollout may take to reach the state a test waits for.
const WAIT: Duration = Duration::from_secs(60);

const METRIC: &str = "canary-errors";

fn text(body: &'static str, status: u16) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
    resp
}

/// Sends requests through the proxy, one after another, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
}

impl Load {
    fn start(url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let uri: http::Uri = url.parse().expect("proxy url");
        tokio::spawn(async move {
            // Not `get`: it panics on a refused connection, as when the proxy stops first.
            let client = client();
            while !s.load(Ordering::Relaxed) {
                if let Ok(resp) = client.get(uri.clone()).await {
                    let _ = resp.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Load { stop }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A proxy with route `app` (versions `stable` and `canary`), a real Prometheus scraping its
/// admin /metrics every second, and steady load through it.
struct Rig {
    proxy: TestProxy,
    prom: Prometheus,
    stable: SocketAddr,
    canary: SocketAddr,
    _load: Load,
}

impl Rig {
    /// Starts with all traffic on `stable` and no rollout yet: the rollout names the
    /// Prometheus address, known only once Prometheus runs, so it comes in by a reload.
    async fn start(canary: SocketAddr) -> Rig {
        let stable = serve(|_req| async { text("stable", 200) }).await;
        let proxy = TestProxy::start(&config_two_versions(stable, canary, 0.0)).await;
        let prom = Prometheus::start(&[proxy.process.admin_addr]).await;
        let load = Load::start(proxy.url("/"));
        prom.wait_for_first_scrape(1).await;
        Rig {
            proxy,
            prom,
            stable,
            canary,
            _load: load,
        }
    }

    /// Puts a rollout of `canary` with these steps (YAML list items, indented for `steps:`)
    /// in force; `PROMETHEUS` in them becomes the server's URL.
    fn roll_out(&self, steps: &str) {
        let config = format!(
            r#"admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
routes:
  - name: app
    versions:
      - {{name: stable, endpoints: ["{}"]}}
      - {{name: canary, endpoints: ["{}"]}}
    rollout:
      canary: canary
      drainTimeout: 2s
      steps:
{}"#,
            self.stable,
            self.canary,
            steps.replace("PROMETHEUS", &self.prom.url())
        );
        write_atomically(&self.proxy.config_path, &config);
        self.proxy
            .process
            .reloader
            .reload()
            .expect("the rollout config is valid");
    }

    fn status(&self) -> RolloutStatus {
        self.proxy
            .process
            .controller
            .status("app")
            .expect("route `app` has a rollout")
    }

    /// Polls the rollout status until `done` holds; panics after [`WAIT`] with the status.
    async fn wait_status(
        &self,
        what: &str,
        done: impl Fn(&RolloutStatus) -> bool,
    ) -> RolloutStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited {WAIT:?} for {what}; rollout status: {s:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits at the `pause: {}` step until Prometheus can answer `query` for the canary with a
    /// number (whatever it is), then promotes past the pause, so the analysis that follows
    /// finds data from its first measurement.
    async fn promote_once_prometheus_has(&self, query: &str) {
        self.wait_status("the pause step waiting for promote", |s| {
            s.phase == Phase::Paused
                && s.pause.as_ref().map(|p| p.reason) == Some(PauseReason::Step)
        })
        .await;
        let promql = fill(query);
        self.prom
            .wait_until(
                "Prometheus to have a value for the canary query",
                || async {
                    let r = self.prom.query(&promql).await.ok()?;
                    first_value(&r).filter(|v| v.is_finite())
                },
            )
            .await;
        self.proxy
            .process
            .controller
            .command("app", Command::Promote { full: false })
            .await
            .expect("promote ends the pause step");
    }

    /// Waits until the rollout has started and its analysis step is over, whichever way it went.
    async fn wait_analysis_over(&self) -> RolloutStatus {
        self.wait_status("the analysis step to end the rollout or pause it", |s| {
            let started = s.history.iter().any(|e| e.kind == EventKind::Started);
            started && s.phase != Phase::Progressing
        })
        .await
    }

    async fn verdicts(&self, outcome: &str) -> f64 {
        sample(
            &self.proxy.metrics().await,
            "tidegate_analysis_verdicts_total",
            &[("route", "app"), ("metric", METRIC), ("outcome", outcome)],
        )
    }

    /// Current weight (basis points) of `version` in the running route table.
    fn weight_now(&self, version: &str) -> u16 {
        let table = self.proxy.process.routes.load();
        let route = table.route("app").expect("route app");
        let i = route.version_index(version).expect("version");
        route.versions[i].weight
    }
}

/// `query` with the variables tidegate fills in for this rollout.
fn fill(query: &str) -> String {
    query
        .replace("{{route}}", "app")
        .replace("{{canary}}", "canary")
}

/// setWeight 50, wait for promote, then a step analysis of `query` in Prometheus.
fn steps_with_analysis(query: &str, count: u32) -> String {
    format!(
        r#"        - setWeight: 50
        - pause: {{}}
        - analysis:
            metrics:
              - name: {METRIC}
                interval: 1s
                count: {count}
                successCondition: result < 0.05
                provider:
                  prometheus:
                    address: PROMETHEUS
                    timeout: 5s
                    query: '{query}'
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_passes_the_promql_analysis_and_becomes_stable() {
    let canary = serve(|_req| async { text("canary", 200) }).await;
    let rig = Rig::start(canary).await;
    rig.roll_out(&steps_with_analysis(CANARY_ERROR_RATE, 3));
    rig.promote_once_prometheus_has(CANARY_ERROR_RATE).await;

    let s = rig.wait_analysis_over().await;
    assert_eq!(s.phase, Phase::Healthy, "{s:#?}");
    assert_eq!(s.stable, "canary", "the canary is the new stable: {s:#?}");
    assert_eq!(s.canary, None);
    let passed = s
        .history
        .iter()
        .find(|e| e.kind == EventKind::StepCompleted && e.message.starts_with("step 3:"))
        .unwrap_or_else(|| panic!("no event for the analysis step: {:#?}", s.history));
    assert_eq!(
        passed.message,
        format!("step 3: analysis passed ({METRIC}: 3 ok, last 0)"),
        "three measurements, each an error rate of 0 read from Prometheus"
    );
    assert!(
        s.history.iter().any(|e| e.kind == EventKind::Completed),
        "{:#?}",
        s.history
    );
    assert!(
        !s.history.iter().any(|e| e.kind == EventKind::Aborted),
        "{:#?}",
        s.history
    );
    assert_eq!(rig.verdicts("successful").await, 3.0);
    assert_eq!(rig.verdicts("inconclusive").await, 0.0);
    assert_eq!(rig.verdicts("failed").await, 0.0);

    // All new requests go to the new stable.
    assert_eq!(rig.weight_now("canary"), 10_000);
    for _ in 0..20 {
        assert_eq!(get(&rig.proxy.url("/")).await, (200, "canary".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_on_the_promql_verdict() {
    // Every other request to the canary fails: its error rate is 0.5.
    let n = Arc::new(AtomicU64::new(0));
    let canary = serve(move |_req| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        async move {
            if i % 2 == 0 {
                text("broken", 500)
            } else {
                text("canary", 200)
            }
        }
    })
    .await;
    let rig = Rig::start(canary).await;
    rig.roll_out(&steps_with_analysis(CANARY_ERROR_RATE, 3));
    rig.promote_once_prometheus_has(CANARY_ERROR_RATE).await;

    let s = rig.wait_analysis_over().await;
    assert_eq!(s.phase, Phase::Degraded, "{s:#?}");
    assert_eq!(s.canary_weight, 0);
    assert_eq!(s.stable, "stable");
    assert_eq!(
        s.canary.as_deref(),
        Some("canary"),
        "kept for inspection: {s:#?}"
    );
    // The reason names the metric, the value Prometheus gave and the condition it missed.
    let prefix = format!(
        "step 3: analysis failed: metric `{METRIC}`: 1 failed measurement(s), limit 0: result "
    );
    let suffix = " does not meet success condition `result < 0.05`";
    assert!(
        s.message.starts_with(&prefix) && s.message.ends_with(suffix),
        "{}",
        s.message
    );
    let value: f64 = s.message[prefix.len()..s.message.len() - suffix.len()]
        .parse()
        .unwrap_or_else(|e| panic!("no value in `{}`: {e}", s.message));
    assert!(
        (0.3..=0.7).contains(&value),
        "canary error rate {value}, expected about 0.5"
    );
    assert!(
        s.history
            .iter()
            .any(|e| e.kind == EventKind::Aborted && e.message == s.message),
        "{:#?}",
        s.history
    );
    assert_eq!(rig.verdicts("failed").await, 1.0);
    assert_eq!(rig.verdicts("successful").await, 0.0);

    // Traffic is back on stable.
    assert_eq!(rig.weight_now("canary"), 0);
    for _ in 0..20 {
        assert_eq!(get(&rig.proxy.url("/")).await, (200, "stable".to_string()));
    }
    // And the Prometheus that judged the canary sees the rollback in tidegate's metrics.
    rig.prom
        .wait_until(
            "Prometheus to see the canary at weight 0, rollout Degraded",
            || async {
                let w = rig
                    .prom
                    .query(r#"tidegate_rollout_weight{route="app",version="canary"}"#)
                    .await
                    .ok()?;
                let p = rig
                    .prom
                    .query(r#"tidegate_rollout_phase{route="app",phase="Degraded"}"#)
                    .await
                    .ok()?;
                (first_value(&w)? == 0.0 && first_value(&p)? == 1.0).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_with_no_samples_pauses_the_rollout_instead_of_judging_it() {
    let canary = serve(|_req| async { text("canary", 200) }).await;
    let rig = Rig::start(canary).await;
    // The canary has traffic, but the query selects a version nobody has requested.
    let nobody = CANARY_ERROR_RATE.replace("{{canary}}", "{{canary}}-next");
    rig.roll_out(&format!(
        r#"        - setWeight: 20
        - analysis:
            metrics:
              - name: {METRIC}
                interval: 1s
                count: 2
                successCondition: result < 0.05
                provider:
                  prometheus:
                    address: PROMETHEUS
                    query: '{nobody}'
"#
    ));

    let s = rig.wait_analysis_over().await;
    assert_eq!(s.phase, Phase::Paused, "{s:#?}");
    assert_eq!(
        s.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Inconclusive)
    );
    let want = format!(
        "step 2: analysis inconclusive, waiting for a human: metric `{METRIC}`: 1 inconclusive measurement(s), limit 0: no data: query returned no samples: {}",
        fill(&nobody)
    );
    assert_eq!(s.message, want);
    assert_eq!(rig.verdicts("inconclusive").await, 1.0);
    assert_eq!(rig.verdicts("successful").await, 0.0);
    assert_eq!(rig.verdicts("failed").await, 0.0);
    // Neither rolled back nor promoted: the canary keeps its weight while a human decides.
    assert_eq!(s.canary_weight, 2_000);
    assert_eq!(rig.weight_now("canary"), 2_000);
    assert_eq!(s.stable, "stable");
}
