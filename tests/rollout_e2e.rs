//! Rollouts end to end, in-process over real loopback sockets: a full rollout under constant
//! load with long requests and an upgraded connection held across the switch and the drain,
//! removal at the drain timeout, automatic rollback of a failing canary, an inconclusive
//! analysis waiting for a human, and sticky sessions moving off the old version.

mod common;
mod rollout_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use common::{TestProxy, sample};
use rollout_support::*;
use tidegate::rollout::status::PauseReason;
use tidegate::rollout::{Command, EventKind, Phase};

const TOKEN: &str = "e2e-secret-token";

/// A config with one route `app` of versions `v1` (stable) and `v2` (canary) and the given
/// `rollout:` body (indented by 6). The admin token lives in `files`.
fn config(v1: SocketAddr, v2: SocketAddr, files: &Path, rollout: &str) -> String {
    let token_file = files.join("admin.token");
    std::fs::write(&token_file, TOKEN).expect("write token file");
    format!(
        r#"admin: {{listen: "127.0.0.1:0", token_file: "{}"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
routes:
  - name: app
    versions:
      - {{name: v1, endpoints: ["{v1}"]}}
      - {{name: v2, endpoints: ["{v2}"]}}
    rollout:
{rollout}"#,
        token_file.display()
    )
}

fn active_requests(scrape: &prometheus_parse::Scrape, version: &str) -> f64 {
    sample(
        scrape,
        "tidegate_version_active_requests",
        &[("route", "app"), ("version", version)],
    )
}

async fn wait_for_file(path: &Path, limit: Duration) {
    eventually(&format!("{} to exist", path.display()), limit, || async {
        path.exists()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_rollout_under_load_fails_no_request_and_drains_before_removal() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let files = tempfile::tempdir().expect("temp dir");
    let rollout = format!(
        r#"      canary: v2
      headerRoute: x-tidegate-version
      steps:
        - pause: {{}}
        - setWeight: 20
        - pause: {{duration: 1s}}
        - analysis:
            metrics:
              - name: canary-errors
                interval: 400ms
                count: 2
                minRequests: 5
                provider: {{builtin: {{metric: errorRate, window: 2s}}}}
                successCondition: result <= 0.01
        - setWeight: 50
        - pause: {{}}
      analysis:
        startingStep: 1
        metrics:
          - name: errors-vs-stable
            interval: 300ms
            minRequests: 5
            inconclusiveLimit: 3
            provider: {{builtin: {{metric: errorRate, window: 2s, compare: stable}}}}
            failureCondition: result > 0.02
      drainTimeout: 20s
      onRemove: "touch '{}/removed-{{version}}'"
"#,
        files.path().display()
    );
    let proxy = TestProxy::start(&config(v1.addr, v2.addr, files.path(), &rollout)).await;
    let p = &proxy.process;
    let limit = Duration::from_secs(10);
    wait_status(p, "app", "the first pause step", limit, |s| {
        s.phase == Phase::Paused && s.step == 0
    })
    .await;

    let epoch = Instant::now();
    let load = Load::start(
        proxy.addr(),
        epoch,
        4,
        Duration::from_millis(15),
        Some(Duration::from_millis(700)),
    );
    // The upgraded connection opens on the old stable version and talks all the way through.
    let tunnel = Tunnel::open(proxy.addr()).await;
    assert_eq!(
        tunnel.version, "v1",
        "the upgrade reached the stable version"
    );
    let talker = tunnel.keep_talking(Duration::from_millis(50));
    load.wait_answered_after(0, 50, limit).await;

    let s = p
        .controller
        .command("app", Command::Promote { full: false })
        .await
        .expect("promote ends the first pause");
    assert_eq!(s.canary_weight, 2000, "promote moved on to 20%: {s:#?}");
    let s = wait_status(p, "app", "the last pause step at 50%", limit, |s| {
        s.step == 5 || s.phase == Phase::Degraded
    })
    .await;
    assert_eq!(s.phase, Phase::Paused, "{s:#?}");
    assert_eq!(s.canary_weight, 5000);
    assert!(
        s.history
            .iter()
            .any(|e| e.kind == EventKind::StepCompleted && e.message.contains("analysis passed")),
        "the analysis step passed: {:#?}",
        s.history
    );
    let passed = s
        .background_analysis
        .as_ref()
        .expect("background analysis runs");
    assert!(passed.metrics[0].tally.successes >= 1, "{passed:#?}");
    assert_eq!(table_weight(p, "app", "v2"), Some(5000));
    load.wait_answered_after(micros_since(epoch), 40, limit)
        .await;
    assert!(v2.hits.load(SeqCst) > 0, "the canary served traffic");

    // A long request held by the old stable when the switch happens.
    let held = long_request(proxy.addr(), epoch, 2500, &[("x-tidegate-version", "v1")]);
    eventually("the held request to reach v1", limit, || async {
        v1.tagged_held.load(SeqCst) == 1
    })
    .await;

    let (code, body) = admin_command(p, "app", "promote", TOKEN).await;
    let completed_us = micros_since(epoch);
    assert_eq!(code, 200, "promote through the admin API: {body}");
    let s = p.controller.status("app").expect("status");
    assert_eq!(s.phase, Phase::Healthy, "{s:#?}");
    assert_eq!(s.stable, "v2");
    assert_eq!(s.canary, None);
    assert!(
        s.retiring.iter().any(|r| r.version == "v1"),
        "v1 drains: {s:#?}"
    );
    // v1 leaves the table at once: nothing new can reach it, not by cookie or header.
    assert_eq!(table_weight(p, "app", "v1"), None);
    assert_eq!(table_weight(p, "app", "v2"), Some(10000));

    // Draining: the held request and the tunnel keep v1 retiring.
    let scrape = proxy.metrics().await;
    assert!(
        active_requests(&scrape, "v1") >= 2.0,
        "the held request and the tunnel are active on v1"
    );
    talker.assert_alive();
    let outcome = tokio::time::timeout(limit, held)
        .await
        .expect("held request ends")
        .expect("held request task");
    assert!(outcome.ok(), "the held request succeeded: {outcome:?}");
    assert_eq!(outcome.version.as_deref(), Some("v1"));
    // Long requests of the load that v1 took before the switch end within 3 s; after that
    // only the tunnel holds the drain. Watch it hold for more than one drain check (1 s).
    let watch_until = Instant::now() + Duration::from_millis(3000 + 1500);
    let mut talked = talker.count();
    while Instant::now() < watch_until {
        let s = p.controller.status("app").expect("status");
        assert!(
            s.retiring.iter().any(|r| r.version == "v1") && s.retired.is_empty(),
            "v1 is removed only once the tunnel closes: {s:#?}"
        );
        talker.assert_alive();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(talker.count() > talked, "the tunnel kept talking");
    talked = talker.count();
    let scrape = proxy.metrics().await;
    assert!(
        active_requests(&scrape, "v1") >= 1.0,
        "the tunnel is still active on v1"
    );
    let tunnel = talker.stop().await;
    tunnel.close().await;
    assert!(talked > 20, "the tunnel exchanged {talked} messages");

    let s = wait_status(p, "app", "v1 to be removed", limit, |s| {
        s.retiring.is_empty() && s.retired.iter().any(|v| v == "v1")
    })
    .await;
    let removed_us = micros_since(epoch);
    let removal = s
        .history
        .iter()
        .find(|e| e.kind == EventKind::Removed)
        .expect("a Removed event");
    assert!(
        removal.message.contains("drained"),
        "removed because drained, not by timeout: {}",
        removal.message
    );
    assert_eq!(
        table_weight(p, "app", "v1"),
        None,
        "v1 left the route table"
    );
    let listed = admin_route_versions(p, "app").await;
    assert_eq!(listed, vec![("v2".to_string(), 100.0)], "/routes");
    wait_for_file(&files.path().join("removed-v1"), limit).await;
    assert!(!files.path().join("removed-v2").exists());

    load.wait_answered_after(removed_us, 40, limit).await;
    let log = load.stop().await;
    let failed = failures(&log);
    assert!(
        failed.is_empty(),
        "{} of {} client requests failed, e.g. {:?}",
        failed.len(),
        log.len(),
        &failed[..failed.len().min(5)]
    );
    let longs = log.iter().filter(|o| o.long).count();
    assert!(longs >= 5, "only {longs} long requests ran");
    let by = |v: &str| {
        log.iter()
            .filter(|o| o.version.as_deref() == Some(v))
            .count()
    };
    assert!(by("v1") > 0 && by("v2") > 0, "both versions served");
    let last_to_v1 = v1.last_sent_us.load(SeqCst);
    assert!(
        last_to_v1 < completed_us,
        "v1 got a new request sent {}us after the promotion was in force",
        last_to_v1 - completed_us
    );
    let late_on_v1: Vec<_> = log
        .iter()
        .filter(|o| o.sent_us > completed_us && o.version.as_deref() != Some("v2"))
        .collect();
    assert!(
        late_on_v1.is_empty(),
        "requests sent after the promotion not answered by v2: {late_on_v1:?}"
    );
    eprintln!(
        "full rollout: {} requests ({} long), 0 failed; v1 {} / v2 {}",
        log.len(),
        longs,
        by("v1"),
        by("v2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_version_is_removed_at_the_drain_timeout_with_a_tunnel_still_open() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let files = tempfile::tempdir().expect("temp dir");
    let rollout = format!(
        r#"      canary: v2
      steps:
        - pause: {{}}
      drainTimeout: 1500ms
      onRemove: "touch '{}/removed-{{route}}-{{version}}'"
"#,
        files.path().display()
    );
    let proxy = TestProxy::start(&config(v1.addr, v2.addr, files.path(), &rollout)).await;
    let p = &proxy.process;
    let limit = Duration::from_secs(10);
    wait_status(p, "app", "the pause step", limit, |s| {
        s.phase == Phase::Paused
    })
    .await;
    let tunnel = Tunnel::open(proxy.addr()).await;
    assert_eq!(tunnel.version, "v1");
    let talker = tunnel.keep_talking(Duration::from_millis(50));

    let promoted = Instant::now();
    let s = p
        .controller
        .command("app", Command::Promote { full: false })
        .await
        .expect("promote");
    assert_eq!(s.stable, "v2");
    assert!(s.retiring.iter().any(|r| r.version == "v1"), "{s:#?}");
    let s = wait_status(p, "app", "v1 removed at the drain timeout", limit, |s| {
        s.retired.iter().any(|v| v == "v1")
    })
    .await;
    let took = promoted.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "removed after {took:?}, before the 1.5 s drain timeout"
    );
    let removal = s
        .history
        .iter()
        .find(|e| e.kind == EventKind::Removed)
        .expect("a Removed event");
    assert!(
        removal
            .message
            .contains("drain timeout reached with 1 still in flight"),
        "{}",
        removal.message
    );
    assert_eq!(table_weight(p, "app", "v1"), None);
    let listed = admin_route_versions(p, "app").await;
    assert_eq!(listed, vec![("v2".to_string(), 100.0)], "/routes");
    wait_for_file(&files.path().join("removed-app-v1"), limit).await;
    // New requests all go to v2.
    for _ in 0..10 {
        let (code, version, _) = fetch_version(&proxy.url("/"), &[], "none").await;
        assert_eq!((code, version.as_deref()), (200, Some("v2")));
    }
    // Past the drain timeout the tunnel to the removed version is closed.
    let exchanged = talker.broken().await;
    assert!(exchanged > 0, "the tunnel worked until the removal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_rolls_back_within_the_detection_window() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let files = tempfile::tempdir().expect("temp dir");
    let hook = webhook().await;
    let rollout = format!(
        r#"      canary: v2
      steps:
        - setWeight: 30
        - pause: {{duration: 60s}}
      analysis:
        metrics:
          - name: errors-vs-stable
            interval: 500ms
            minRequests: 10
            inconclusiveLimit: 4
            provider: {{builtin: {{metric: errorRate, window: 3s, compare: stable}}}}
            failureCondition: result > 0.05
      notify: {{webhook: "{}"}}
"#,
        hook.url
    );
    let proxy = TestProxy::start(&config(v1.addr, v2.addr, files.path(), &rollout)).await;
    let p = &proxy.process;
    let epoch = Instant::now();
    let load = Load::start(
        proxy.addr(),
        epoch,
        4,
        Duration::from_millis(10),
        Some(Duration::from_millis(800)),
    );
    let limit = Duration::from_secs(15);
    wait_status(
        p,
        "app",
        "two healthy background measurements",
        limit,
        |s| {
            s.phase == Phase::Degraded
                || s.background_analysis
                    .as_ref()
                    .is_some_and(|r| r.metrics[0].tally.successes >= 2)
        },
    )
    .await;
    assert_eq!(table_weight(p, "app", "v2"), Some(3000));

    let flip_us = micros_since(epoch);
    v2.failing.store(true, SeqCst);
    let s = wait_status(p, "app", "the automatic rollback", limit, |s| {
        s.phase == Phase::Degraded
    })
    .await;
    let seen_us = micros_since(epoch);
    let detection = Duration::from_micros(seen_us - flip_us);
    assert_eq!(s.canary_weight, 0);
    assert_eq!(
        table_weight(p, "app", "v2"),
        Some(0),
        "canary out of the table"
    );
    assert_eq!(table_weight(p, "app", "v1"), Some(10000));
    assert_eq!(
        s.canary.as_deref(),
        Some("v2"),
        "the canary is kept for inspection"
    );
    assert!(
        s.message.contains("errors-vs-stable")
            && s.message
                .contains("meets failure condition `result > 0.05`"),
        "the reason names metric and limit: {}",
        s.message
    );
    let value: f64 = s
        .message
        .split("result ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the reason names the value: {}", s.message));
    assert!(value > 0.05, "value {value} in {}", s.message);
    assert!(
        detection < Duration::from_secs(3),
        "rollback took {detection:?} (interval 500 ms)"
    );

    load.wait_answered_after(seen_us, 300, limit).await;
    let log = load.stop().await;
    let failed = failures(&log);
    // The client rate just before the flip (the load started at the epoch).
    let span_us = flip_us.min(2_000_000);
    let before = log
        .iter()
        .filter(|o| o.sent_us + span_us > flip_us && o.sent_us < flip_us)
        .count();
    let rate = before as f64 / (span_us as f64 / 1e6);
    // 30 % of the traffic failing for at most two intervals plus half a second of slack.
    let bound = (rate * 0.30 * 1.5).ceil() as usize;
    eprintln!(
        "rollback: detected in {detection:?}, {} client errors ({} of them 503), {rate:.0} req/s, bound {bound}",
        failed.len(),
        failed.iter().filter(|f| f.result == Ok(503)).count()
    );
    assert!(!failed.is_empty(), "the failing canary was seen by clients");
    assert!(
        failed.len() <= bound,
        "{} client errors, more than {bound} ({rate:.0} req/s x 30 % x 1.5 s)",
        failed.len()
    );
    for f in &failed {
        // 500 from the canary, or 503 once passive health ejected its only endpoint.
        assert!(
            matches!(f.result, Ok(500 | 503)),
            "errors are the canary's: {f:?}"
        );
        assert!(
            f.done_us >= flip_us && f.sent_us <= seen_us,
            "an error outside the detection window ({flip_us}..{seen_us}us): {f:?}"
        );
    }
    let after: Vec<_> = log.iter().filter(|o| o.sent_us > seen_us).collect();
    assert!(after.len() >= 300);
    assert!(
        after
            .iter()
            .all(|o| o.ok() && o.version.as_deref() == Some("v1")),
        "stable serves everything after the rollback"
    );

    let aborted = hook.wait_for("aborted", Duration::from_secs(5)).await;
    let events = hook.events();
    for kind in ["started", "stepCompleted", "aborted"] {
        let e = events
            .iter()
            .find(|e| e["event"] == kind)
            .unwrap_or_else(|| panic!("no `{kind}` notification in {events:#?}"));
        let text = e["text"].as_str().expect("a Slack-compatible `text`");
        assert!(text.starts_with("tidegate: rollout `app`"), "{text}");
        assert_eq!(e["route"], "app");
    }
    let text = aborted["text"].as_str().expect("text");
    assert!(text.contains("errors-vs-stable"), "{text}");
    assert_eq!(aborted["canaryWeight"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inconclusive_analysis_waits_for_a_human() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let files = tempfile::tempdir().expect("temp dir");
    let rollout = r#"      canary: v2
      steps:
        - setWeight: 20
        - analysis:
            metrics:
              - name: enough-traffic
                interval: 300ms
                count: 3
                minRequests: 100000
                provider: {builtin: {metric: errorRate, window: 2s}}
                successCondition: result < 0.05
        - setWeight: 60
        - pause: {}
"#;
    let proxy = TestProxy::start(&config(v1.addr, v2.addr, files.path(), rollout)).await;
    let p = &proxy.process;
    let epoch = Instant::now();
    let load = Load::start(proxy.addr(), epoch, 1, Duration::from_millis(20), None);
    let limit = Duration::from_secs(10);
    let s = wait_status(p, "app", "an inconclusive pause", limit, |s| {
        matches!(s.phase, Phase::Paused | Phase::Degraded)
    })
    .await;
    assert_eq!(s.phase, Phase::Paused, "{s:#?}");
    assert_eq!(
        s.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Inconclusive)
    );
    assert!(
        s.message.contains("inconclusive")
            && s.message.contains("enough-traffic")
            && s.message.contains("fewer than 100000"),
        "the reason says which metric and why: {}",
        s.message
    );
    assert_eq!((s.step, s.canary_weight), (1, 2000));

    // Many intervals later it has neither passed nor rolled back.
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        let now = p.controller.status("app").expect("status");
        assert_eq!(
            (now.phase, now.step, now.canary_weight),
            (Phase::Paused, 1, 2000),
            "an inconclusive analysis holds the rollout where it is"
        );
        assert_eq!(table_weight(p, "app", "v2"), Some(2000));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // `resume` measures again: still too little traffic, so it pauses again.
    let s = p
        .controller
        .command("app", Command::Resume)
        .await
        .expect("resume");
    assert_eq!(s.phase, Phase::Progressing);
    let s = wait_status(p, "app", "the second inconclusive pause", limit, |s| {
        s.history
            .iter()
            .filter(|e| e.kind == EventKind::Paused)
            .count()
            == 2
    })
    .await;
    assert_eq!((s.phase, s.step, s.canary_weight), (Phase::Paused, 1, 2000));

    // `promote` skips the analysis and goes on.
    let s = p
        .controller
        .command("app", Command::Promote { full: false })
        .await
        .expect("promote");
    assert_eq!((s.phase, s.step, s.canary_weight), (Phase::Paused, 3, 6000));
    assert_eq!(s.pause.as_ref().map(|p| p.reason), Some(PauseReason::Step));
    assert_eq!(table_weight(p, "app", "v2"), Some(6000));
    let log = load.stop().await;
    assert!(failures(&log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_stay_through_steps_and_leave_the_old_version_after_promotion() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let files = tempfile::tempdir().expect("temp dir");
    let rollout = r#"      canary: v2
      stickySessions: true
      headerRoute: x-tidegate-version
      steps:
        - setWeight: 50
        - pause: {}
        - setWeight: 80
        - pause: {}
      drainTimeout: 10s
"#;
    let proxy = TestProxy::start(&config(v1.addr, v2.addr, files.path(), rollout)).await;
    let p = &proxy.process;
    let limit = Duration::from_secs(10);
    wait_status(p, "app", "the 50% pause", limit, |s| {
        s.phase == Phase::Paused && s.step == 1
    })
    .await;
    let url = proxy.url("/");
    let cookie = "tidegate-app";

    // New clients are pinned to the version they got.
    let (mut on_v1, mut on_v2) = (None, None);
    for _ in 0..20 {
        let (code, version, set) = fetch_version(&url, &[], cookie).await;
        assert_eq!(code, 200);
        assert_eq!(version, set, "the cookie pins the version that answered");
        match version.as_deref() {
            Some("v1") => on_v1 = set,
            Some("v2") => on_v2 = set,
            other => panic!("answered by {other:?}"),
        }
    }
    let v1_cookie = format!("{cookie}={}", on_v1.expect("a client pinned to v1"));
    let v2_cookie = format!("{cookie}={}", on_v2.expect("a client pinned to v2"));

    let check = |pinned: &'static str, cookie_header: String| {
        let url = url.clone();
        async move {
            for _ in 0..20 {
                let (code, version, set) =
                    fetch_version(&url, &[("cookie", &cookie_header)], cookie).await;
                assert_eq!(code, 200);
                assert_eq!(
                    version.as_deref(),
                    Some(pinned),
                    "pinned by {cookie_header}"
                );
                assert_eq!(set, None, "a pinned client keeps its cookie");
            }
        }
    };
    check("v1", v1_cookie.clone()).await;
    check("v2", v2_cookie.clone()).await;

    let s = p
        .controller
        .command("app", Command::Promote { full: false })
        .await
        .expect("promote to 80%");
    assert_eq!((s.step, s.canary_weight), (3, 8000));
    check("v1", v1_cookie.clone()).await;
    check("v2", v2_cookie.clone()).await;

    // A request held on v1 across the promotion keeps it draining (in the table at weight 0).
    let held = long_request(
        proxy.addr(),
        Instant::now(),
        3000,
        &[("x-tidegate-version", "v1")],
    );
    eventually("the held request to reach v1", limit, || async {
        v1.tagged_held.load(SeqCst) == 1
    })
    .await;
    let s = p
        .controller
        .command("app", Command::Promote { full: false })
        .await
        .expect("promote to completion");
    assert_eq!((s.phase, s.stable.as_str()), (Phase::Healthy, "v2"));
    // The held request keeps v1 draining, out of the table.
    assert_eq!(table_weight(p, "app", "v1"), None);
    // The client pinned to the old version moves to the new stable and is re-pinned there.
    for _ in 0..20 {
        let (code, version, set) = fetch_version(&url, &[("cookie", &v1_cookie)], cookie).await;
        assert_eq!((code, version.as_deref()), (200, Some("v2")));
        assert_eq!(set.as_deref(), Some("v2"), "re-pinned to the new stable");
    }
    check("v2", v2_cookie).await;
    let s = p.controller.status("app").expect("status");
    assert!(
        s.retiring.iter().any(|r| r.version == "v1"),
        "v1 was still draining while the pinned client moved: {s:#?}"
    );
    let outcome = tokio::time::timeout(limit, held)
        .await
        .expect("held request ends")
        .expect("held request task");
    assert!(outcome.ok(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_analysis_going_inconclusive_at_a_pause_step_is_not_silent() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    let files = tempfile::tempdir().expect("temp dir");
    let rollout = r#"      canary: v2
      steps:
        - setWeight: 20
        - pause: {}
      analysis:
        metrics:
          - name: enough-traffic
            interval: 300ms
            minRequests: 100000
            inconclusiveLimit: 1
            provider: {builtin: {metric: errorRate, window: 2s, compare: stable}}
            failureCondition: result > 0.05
"#;
    let proxy = TestProxy::start(&config(v1.addr, v2.addr, files.path(), rollout)).await;
    let p = &proxy.process;
    let limit = Duration::from_secs(10);
    let s = wait_status(p, "app", "the pause step", limit, |s| {
        s.phase == Phase::Paused
    })
    .await;
    assert_eq!((s.step, s.canary_weight), (1, 2000));
    // While it waits for promote, the background analysis cannot judge: the human waiting
    // is told, rather than the canary silently going unwatched.
    let s = wait_status(p, "app", "an inconclusive pause", limit, |s| {
        s.pause.as_ref().map(|p| p.reason) == Some(PauseReason::Inconclusive)
    })
    .await;
    assert_eq!((s.phase, s.step, s.canary_weight), (Phase::Paused, 1, 2000));
    assert!(
        s.message.contains("background analysis inconclusive")
            && s.message.contains("enough-traffic"),
        "{}",
        s.message
    );
    assert_eq!(s.history.last().map(|e| e.kind), Some(EventKind::Paused));
    // `resume` watches again from scratch and goes back to waiting at the step.
    p.controller
        .command("app", Command::Resume)
        .await
        .expect("resume");
    let s = p.controller.status("app").expect("status");
    assert_eq!((s.phase, s.step), (Phase::Paused, 1));
    assert_eq!(s.pause.as_ref().map(|p| p.reason), Some(PauseReason::Step));
}

/// Rolls out revision 1 of `v2` (every request fails) until it is rolled back, then
/// revision 2 (new endpoints, healthy), with a reload in between or, with `restart`, a
/// stopped and restarted process. Revision 2 must be judged on its own requests only: the
/// failures of revision 1 are still inside the 10 s window when it starts.
async fn new_revision_after_a_failed_one(restart: bool) {
    let (v1, bad, good) = (app("v1").await, app("v2").await, app("v2").await);
    bad.failing.store(true, SeqCst);
    let files = tempfile::tempdir().expect("temp dir");
    let rollout = r#"      canary: v2
      steps:
        - setWeight: 50
        - pause: {}
      analysis:
        metrics:
          - name: errors-vs-stable
            interval: 300ms
            minRequests: 5
            inconclusiveLimit: 100
            provider: {builtin: {metric: errorRate, window: 10s, compare: stable}}
            failureCondition: result > 0.02
"#;
    let config_path = files.path().join("tidegate.yaml");
    let write_config = |canary: SocketAddr| {
        let text = config(v1.addr, canary, files.path(), rollout).replace(
            "workers: 2",
            &format!(
                "workers: 2\nstate_dir: \"{}\"",
                files.path().join("state").display()
            ),
        );
        std::fs::write(&config_path, text).expect("write config");
    };
    write_config(bad.addr);
    let mut p = tidegate::runtime::ProxyProcess::start(&config_path)
        .await
        .expect("proxy starts");
    let limit = Duration::from_secs(15);
    let load = Load::start(
        p.listeners[0].1,
        Instant::now(),
        4,
        Duration::from_millis(10),
        None,
    );
    let first = wait_status(&p, "app", "revision 1 rolled back", limit, |s| {
        s.phase == Phase::Degraded
    })
    .await;
    assert!(
        first.message.contains("errors-vs-stable"),
        "{}",
        first.message
    );

    write_config(good.addr);
    let load = if restart {
        load.stop().await;
        p.shutdown().await;
        p = tidegate::runtime::ProxyProcess::start(&config_path)
            .await
            .expect("proxy restarts");
        Load::start(
            p.listeners[0].1,
            Instant::now(),
            4,
            Duration::from_millis(10),
            None,
        )
    } else {
        p.reloader
            .reload()
            .expect("the new revision's config loads");
        load
    };
    let hits_before = good.hits.load(SeqCst);
    let s = wait_status(&p, "app", "revision 2 measured ten times", limit, |s| {
        s.canary_revision != first.canary_revision
            && (s.phase == Phase::Degraded
                || s.background_analysis
                    .as_ref()
                    .is_some_and(|r| r.metrics[0].tally.successes >= 10))
    })
    .await;
    assert_ne!(
        s.phase,
        Phase::Degraded,
        "revision 2 was rolled back on revision 1's failures: {}",
        s.message
    );
    let tally = &s
        .background_analysis
        .as_ref()
        .expect("background run")
        .metrics[0]
        .tally;
    assert_eq!(tally.failures, 0, "{tally:#?}");
    let last = tally.last.as_ref().expect("a measurement");
    let judged = last.requests.expect("the measurement says what it judged");
    assert!(
        judged.canary > 0 && judged.canary <= good.hits.load(SeqCst) - hits_before,
        "judged {judged:?}: only revision 2's requests ({} served)",
        good.hits.load(SeqCst) - hits_before
    );
    assert!(last.message.contains("canary and"), "{}", last.message);
    load.stop().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_is_judged_on_its_own_requests_only() {
    new_revision_after_a_failed_one(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_a_new_revision_starts_with_an_empty_window() {
    new_revision_after_a_failed_one(true).await;
}

/// The sequential judge on real traffic: a canary failing as often as stable is kept and its
/// step passes when its time is up; the same canary failing five times as often is rolled
/// back, with the statistic, its threshold and the counts in the reason and in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sequential_judge_keeps_a_canary_as_good_as_stable_and_rolls_back_a_worse_one() {
    let (v1, v2) = (app("v1").await, app("v2").await);
    // Both fail one request in twenty, in a fixed pattern.
    v1.fail_every.store(20, SeqCst);
    v2.fail_every.store(20, SeqCst);
    let files = tempfile::tempdir().expect("temp dir");
    let rollout = r#"      canary: v2
      steps:
        - setWeight: 20
        - analysis:
            metrics:
              - name: p99-vs-stable
                interval: 500ms
                count: 6
                minRequests: 50
                provider: {builtin: {metric: latency, quantile: 0.99, compare: stable, alpha: 0.001}}
        - setWeight: 30
        - pause: {duration: 60s}
      analysis:
        metrics:
          - name: errors-vs-stable
            interval: 500ms
            minRequests: 50
            provider: {builtin: {metric: errorRate, compare: stable, alpha: 0.001}}
"#;
    let proxy = TestProxy::start(&config(v1.addr, v2.addr, files.path(), rollout)).await;
    let p = &proxy.process;
    let load = Load::start(
        proxy.addr(),
        Instant::now(),
        4,
        Duration::from_millis(10),
        None,
    );
    let limit = Duration::from_secs(20);
    let s = wait_status(p, "app", "the latency step passed on time", limit, |s| {
        s.step >= 3 || s.phase == Phase::Degraded
    })
    .await;
    assert_eq!(s.phase, Phase::Progressing, "{}", s.message);
    let passed = s
        .history
        .iter()
        .find(|e| e.message.starts_with("step 2: analysis passed"))
        .unwrap_or_else(|| panic!("{:#?}", s.history));
    assert!(
        passed.message.contains("e-value") && passed.message.contains("canary and"),
        "{}",
        passed.message
    );

    // Ten more seconds as good as stable: kept, with the evidence shown.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let s = p.controller.status("app").expect("status");
    assert_eq!(s.phase, Phase::Progressing, "{}", s.message);
    let tally = &s
        .background_analysis
        .as_ref()
        .expect("background run")
        .metrics[0]
        .tally;
    let test = tally
        .sequential
        .as_ref()
        .expect("the sequential judge's state");
    assert!(test.requests.canary >= 200, "{test:?}");
    let m = proxy.metrics().await;
    let labels = [("route", "app"), ("metric", "errors-vs-stable")];
    assert!(sample(&m, "tidegate_analysis_evalue", &labels) < 1000.0);
    assert_eq!(
        sample(&m, "tidegate_analysis_evalue_threshold", &labels),
        1000.0
    );
    assert!(
        sample(
            &m,
            "tidegate_analysis_requests",
            &[("metric", "errors-vs-stable"), ("version", "v2")]
        ) >= 200.0
    );

    // Now the canary fails one request in four: rolled back within seconds.
    v2.fail_every.store(4, SeqCst);
    let s = wait_status(p, "app", "the rollback", limit, |s| {
        s.phase == Phase::Degraded
    })
    .await;
    assert!(
        s.message.contains("errors-vs-stable")
            && s.message
                .contains("the canary is worse than stable: e-value")
            && s.message.contains("(rollback at 1000, alpha 0.001)"),
        "{}",
        s.message
    );
    assert_eq!(table_weight(p, "app", "v2"), Some(0));
    load.stop().await;
    proxy.process.shutdown().await;
}
