//! The control side seen from a client: weight changes under load, exact split, sticky and
//! header routing, least-loaded endpoints, passive and active health, config reload, metrics.

mod common;
mod control_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::*;
use control_support::*;

const WAIT: Duration = Duration::from_secs(10);

/// A proxy config with one route `app` of two versions; `stable` and `canary` are YAML
/// flow sequences of endpoints, weights are written as given.
fn app_config(
    stable: &str,
    stable_weight: &str,
    canary: &str,
    canary_weight: &str,
    route_extra: &str,
    top_extra: &str,
) -> String {
    format!(
        r#"admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
{top_extra}
routes:
  - name: app
{route_extra}
    versions:
      - name: stable
        weight: {stable_weight}
        endpoints: {stable}
      - name: canary
        weight: {canary_weight}
        endpoints: {canary}
"#
    )
}

fn eps(addrs: &[SocketAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", list.join(", "))
}

/// Current weight (basis points) of `version` in route `app` of the running table.
fn weight_now(proxy: &TestProxy, version: &str) -> u16 {
    let table = proxy.process.routes.load();
    let route = table.route("app").expect("route app");
    let i = route.version_index(version).expect("version");
    route.versions[i].weight
}

/// The version that holds all the weight in table generation `g` of the churn test.
fn churn_owner(g: u64) -> &'static str {
    if g % 2 == 1 { "canary" } else { "stable" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_churn_under_load_fails_nothing_and_never_uses_a_weightless_version() {
    const CHANGES: u64 = 250;
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    // Generation 0 (the config) gives stable everything; generation g > 0 gives everything
    // to `churn_owner(g)`, so consecutive tables never share a version with weight.
    let proxy = TestProxy::start(&config_two_versions(stable.addr, canary.addr, 0.0)).await;

    // `started` is bumped before a table is stored, `published` after. A request that read
    // `published == lo` before sending and `started == hi` after its response was routed by
    // a table of generation in lo..=hi: tables are stored in order by one writer.
    let started = Arc::new(AtomicU64::new(0));
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (w, started, published, done) = (
            proxy.process.publisher.clone(),
            started.clone(),
            published.clone(),
            done.clone(),
        );
        std::thread::spawn(move || {
            let begin = Instant::now();
            for g in 1..=CHANGES {
                let weights = if churn_owner(g) == "canary" {
                    [("stable", 0), ("canary", 10_000)]
                } else {
                    [("stable", 10_000), ("canary", 0)]
                };
                let weights = weights.map(|(n, w)| (n.to_string(), w)).to_vec();
                started.store(g, SeqCst);
                let result = w.set_weights("app", weights);
                published.store(g, SeqCst);
                if let Err(e) = result {
                    done.store(true, SeqCst);
                    panic!("set_weights failed: {e}");
                }
                // 100 changes a second, paced against the start so delays do not add up.
                let next = begin + Duration::from_millis(10 * g);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            done.store(true, SeqCst);
        })
    };

    let mut loops = Vec::new();
    for _ in 0..4 {
        let (url, started, published, done) = (
            proxy.url("/"),
            started.clone(),
            published.clone(),
            done.clone(),
        );
        loops.push(tokio::spawn(async move {
            let client = client();
            let mut seen = Vec::new();
            while !done.load(SeqCst) {
                let lo = published.load(SeqCst);
                let reply = fetch(&client, &url, &[]).await;
                let hi = started.load(SeqCst);
                seen.push((lo, hi, reply));
            }
            seen
        }));
    }
    let writer_result = tokio::task::spawn_blocking(move || writer.join())
        .await
        .expect("join");
    assert!(writer_result.is_ok(), "the weight writer panicked");
    let mut results = Vec::new();
    for l in loops {
        results.extend(l.await.expect("client loop"));
    }

    let mut failures = Vec::new();
    let mut strays = Vec::new();
    let (mut decisive, mut decisive_canary) = (0, 0);
    for (lo, hi, reply) in &results {
        let reply = match reply {
            Ok(r) if r.status == 200 => r,
            other => {
                failures.push(format!("{other:?}"));
                continue;
            }
        };
        let served = reply.body.as_str();
        if !(*lo..=*hi).any(|g| churn_owner(g) == served) {
            strays.push(format!(
                "served by {served} while only tables {lo}..={hi} were live"
            ));
        }
        if lo == hi {
            decisive += 1;
            if served == "canary" {
                decisive_canary += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failures.len(),
        results.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(
        strays.is_empty(),
        "{} requests went to a version without weight: {:?}",
        strays.len(),
        &strays[..strays.len().min(5)]
    );
    // The check above only bites on requests that lived within one table: make sure most did,
    // and that both versions took such requests.
    assert!(
        decisive >= 200 && decisive * 4 >= results.len(),
        "only {decisive} of {} requests lived within a single table",
        results.len()
    );
    assert!(
        decisive_canary >= 50 && decisive - decisive_canary >= 50,
        "single-table requests: {decisive_canary} canary, {} stable",
        decisive - decisive_canary
    );
    assert_eq!(published.load(SeqCst), CHANGES);
    let last = churn_owner(CHANGES);
    assert_eq!(weight_now(&proxy, last), 10_000);
    let m = proxy.metrics().await;
    assert_eq!(
        sample(&m, "tidegate_route_weight_percent", &[("version", last)]),
        100.0
    );
    assert_eq!(
        sample(&m, "tidegate_requests_total", &[("route", "app")]),
        results.len() as f64,
        "every request is counted once"
    );
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_at_12_34_percent_give_canary_exactly_its_share() {
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    let proxy = TestProxy::start(&app_config(
        &eps(&[stable.addr]),
        "87.66",
        &eps(&[canary.addr]),
        "12.34",
        "",
        "",
    ))
    .await;
    let client = client();
    let url = proxy.url("/");
    let mut canary_seen = 0u32;
    for i in 0..10_000 {
        let reply = fetch(&client, &url, &[]).await.expect("request");
        assert_eq!(reply.status, 200, "request {i}");
        if reply.body == "canary" {
            canary_seen += 1;
        }
    }
    let share = f64::from(canary_seen) / 100.0;
    assert!(
        (share - 12.34).abs() <= 0.1,
        "canary share {share}% is not within 0.1 point of 12.34%"
    );
    assert_eq!(
        canary_seen, 1234,
        "the schedule is exact over 10,000 consecutive picks"
    );
    assert_eq!(canary.hits.load(SeqCst), 1234);
    assert_eq!(stable.hits.load(SeqCst), 8766);
    let m = proxy.metrics().await;
    assert_eq!(
        sample(
            &m,
            "tidegate_requests_total",
            &[("version", "canary"), ("class", "2xx")]
        ),
        1234.0
    );
    assert_eq!(
        sample(
            &m,
            "tidegate_route_weight_percent",
            &[("version", "canary")]
        ),
        12.34
    );
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_the_version_until_it_loses_its_weight() {
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    let proxy = TestProxy::start(&app_config(
        &eps(&[stable.addr]),
        "50",
        &eps(&[canary.addr]),
        "50",
        "    sticky: {cookie: tg}",
        "",
    ))
    .await;
    let client = client();
    let url = proxy.url("/");

    // Fresh clients get a cookie naming the version that answered them.
    let mut cookies = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let r = fetch(&client, &url, &[]).await.expect("request");
        assert_eq!(r.status, 200);
        let cookie = r
            .set_cookie("tg")
            .expect("first response sets the sticky cookie");
        assert_eq!(cookie, r.body, "the cookie names the version that answered");
        cookies.insert(cookie, ());
    }
    assert_eq!(cookies.len(), 2, "at 50/50 both versions hand out cookies");

    // With the cookie, every request stays on that version and no new cookie is set.
    for version in ["canary", "stable"] {
        let cookie = format!("tg={version}");
        for _ in 0..50 {
            let r = fetch(&client, &url, &[("cookie", &cookie)])
                .await
                .expect("request");
            assert_eq!(r.body, version, "cookie {cookie} pins the version");
            assert_eq!(r.set_cookie("tg"), None, "a pinned client keeps its cookie");
        }
    }
    // Other cookies around it do not confuse the pin.
    let r = fetch(&client, &url, &[("cookie", "a=1; tg=canary; b=2")])
        .await
        .expect("request");
    assert_eq!(r.body, "canary");

    // The canary loses its weight: pinned clients move to stable and are re-pinned there.
    proxy
        .process
        .publisher
        .set_weights("app", vec![("stable".into(), 10_000), ("canary".into(), 0)])
        .expect("set weights");
    for _ in 0..20 {
        let r = fetch(&client, &url, &[("cookie", "tg=canary")])
            .await
            .expect("request");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "stable", "a weightless version keeps no clients");
        assert_eq!(r.set_cookie("tg").as_deref(), Some("stable"));
    }
    let r = fetch(&client, &url, &[("cookie", "tg=stable")])
        .await
        .expect("request");
    assert_eq!((r.body.as_str(), r.set_cookie("tg")), ("stable", None));
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_header_forces_the_canary_even_at_weight_zero() {
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    // Route `dark` comes first and has a canary without endpoints.
    let yaml = format!(
        r#"admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
routes:
  - name: dark
    match: {{path_prefix: /dark}}
    version_header: x-tidegate-version
    versions:
      - {{name: stable, weight: 100, endpoints: ["{s}"]}}
      - {{name: canary, weight: 0, endpoints: []}}
  - name: app
    version_header: x-tidegate-version
    sticky: {{cookie: tg}}
    versions:
      - {{name: stable, weight: 100, endpoints: ["{s}"]}}
      - {{name: canary, weight: 0, endpoints: ["{c}"]}}
"#,
        s = stable.addr,
        c = canary.addr
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = client();
    let url = proxy.url("/");
    for _ in 0..20 {
        let forced = fetch(&client, &url, &[("x-tidegate-version", "canary")])
            .await
            .expect("request");
        assert_eq!((forced.status, forced.body.as_str()), (200, "canary"));
        assert_eq!(forced.set_cookie("tg"), None, "a forced pick pins nobody");
        let plain = fetch(&client, &url, &[]).await.expect("request");
        assert_eq!(plain.body, "stable");
    }
    // The header beats a sticky cookie.
    let r = fetch(
        &client,
        &url,
        &[("x-tidegate-version", "canary"), ("cookie", "tg=stable")],
    )
    .await
    .expect("request");
    assert_eq!(r.body, "canary");
    // Naming an unknown version or one without endpoints falls back to the weights.
    for (path, version) in [("/", "nightly"), ("/dark", "canary")] {
        let r = fetch(
            &client,
            &proxy.url(path),
            &[("x-tidegate-version", version)],
        )
        .await
        .expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, "stable"), "{path}");
    }
    assert_eq!(canary.hits.load(SeqCst), 21);
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_matching_on_a_request_field_sees_it_in_any_case_and_order() {
    let stable = named_backend("stable").await;
    let beta = named_backend("beta").await;
    let yaml = format!(
        r#"admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
routes:
  - name: beta
    match: {{headers: [{{name: x-beta, value: "yes"}}]}}
    versions:
      - {{name: beta, weight: 100, endpoints: ["{b}"]}}
  - name: app
    versions:
      - {{name: stable, weight: 100, endpoints: ["{s}"]}}
"#,
        s = stable.addr,
        b = beta.addr
    );
    let proxy = TestProxy::start(&yaml).await;
    let client = client();
    let url = proxy.url("/");
    for (fields, want) in [
        (&[("X-Beta", "yes"), ("accept", "*/*")][..], "beta"),
        (
            &[("accept", "*/*"), ("user-agent", "t"), ("x-beta", "yes")],
            "beta",
        ),
        // Any of several values may match.
        (&[("x-beta", "no"), ("x-beta", "yes")], "beta"),
        (&[("x-beta", "no")], "stable"),
        (&[("x-betas", "yes")], "stable"),
        (&[], "stable"),
    ] {
        let r = fetch(&client, &url, fields).await.expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, want), "{fields:?}");
    }
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_a_version_the_less_loaded_endpoint_gets_more() {
    let (slow, slow_hits) = slow_backend("slow", Duration::from_millis(50)).await;
    let (fast, fast_hits) = slow_backend("fast", Duration::ZERO).await;
    let proxy = TestProxy::start(&app_config(&eps(&[slow, fast]), "100", "[]", "0", "", "")).await;
    let mut loops = Vec::new();
    for _ in 0..8 {
        let url = proxy.url("/");
        loops.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..40 {
                let r = fetch(&client, &url, &[]).await.expect("request");
                assert_eq!(r.status, 200);
            }
        }));
    }
    for l in loops {
        l.await.expect("client loop");
    }
    let (slow_n, fast_n) = (slow_hits.load(SeqCst), fast_hits.load(SeqCst));
    assert_eq!(slow_n + fast_n, 320);
    // A blind 50/50 split would give each about 160.
    assert!(
        fast_n >= 4 * slow_n,
        "the fast endpoint got {fast_n}, the slow one {slow_n}"
    );
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_eject_an_endpoint_for_the_backoff_then_it_is_retried() {
    let bad = flaky_backend("bad").await;
    let good = flaky_backend("good").await;
    bad.failing.store(true, SeqCst);
    let proxy = TestProxy::start(&app_config(
        &eps(&[bad.addr, good.addr]),
        "100",
        "[]",
        "0",
        "",
        "passive_health: {consecutive_failures: 3, ejection: 1s, max_ejection: 10s}",
    ))
    .await;
    let client = client();
    let url = proxy.url("/");

    // Until `bad` has failed three times in a row, it shares the traffic.
    let mut third_failure_sent = None;
    for _ in 0..500 {
        let sent = Instant::now();
        let r = fetch(&client, &url, &[]).await.expect("request");
        match r.body.as_str() {
            "broken" => assert_eq!(r.status, 500, "the upstream's 5xx is relayed"),
            body => assert_eq!((r.status, body), (200, "good")),
        }
        if bad.hits.load(SeqCst) == 3 {
            third_failure_sent = Some(sent);
            break;
        }
    }
    let t3 = third_failure_sent.expect("the bad endpoint got three requests");
    // It would answer well now: only the ejection keeps traffic away from it.
    bad.failing.store(false, SeqCst);

    // The proxy ejected it no earlier than `t3`, for 1 s: what it routed before
    // t3 + 1 s could not go to `bad`, and nothing reaches `bad` again before then.
    let m = proxy.metrics().await;
    assert!(
        t3.elapsed() < Duration::from_millis(900),
        "scraping took too long to judge"
    );
    let bad_label = bad.addr.to_string();
    assert_eq!(
        sample(
            &m,
            "tidegate_endpoint_healthy",
            &[("endpoint", bad_label.as_str())]
        ),
        0.0,
        "an ejected endpoint is reported unhealthy"
    );

    let mut within_backoff = 0;
    let mut back = None;
    let deadline = t3 + Duration::from_secs(6);
    while Instant::now() < deadline {
        let r = fetch(&client, &url, &[]).await.expect("request");
        let received = t3.elapsed();
        assert_eq!(r.status, 200);
        if r.body == "bad" {
            back = Some(received);
            break;
        }
        if received < Duration::from_millis(950) {
            within_backoff += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let back = back.expect("the ejected endpoint is retried after the back-off");
    assert!(
        back >= Duration::from_millis(990),
        "the endpoint got traffic {back:?} after its third failure, inside the 1 s ejection"
    );
    // Once the back-off is over it takes half the picks again, so a request every few ms
    // finds it well within 0.9 s more; later means the ejection lasted too long.
    assert!(
        back < Duration::from_millis(1900),
        "the endpoint came back only {back:?} after its third failure (ejection: 1 s)"
    );
    assert!(
        within_backoff >= 20,
        "only {within_backoff} requests went out during the ejection"
    );
    assert_eq!(bad.hits.load(SeqCst), 4);
    let m = proxy.metrics().await;
    assert_eq!(
        sample(
            &m,
            "tidegate_endpoint_healthy",
            &[("endpoint", bad_label.as_str())]
        ),
        1.0
    );
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_checks_take_an_endpoint_out_and_recovery_brings_it_back() {
    let a = checked_backend("a").await;
    let b = checked_backend("b").await;
    let proxy = TestProxy::start(&app_config(
        &format!(
            "{}\n        health_check: {{path: /healthz, interval: 100ms, unhealthy_threshold: 2, healthy_threshold: 1}}",
            eps(&[a.addr, b.addr])
        ),
        "100",
        "[]",
        "0",
        "",
        "",
    ))
    .await;
    let client = client();
    let url = proxy.url("/");
    let a_label = a.addr.to_string();
    let healthy = |m: &prometheus_parse::Scrape, label: &str| {
        sample(m, "tidegate_endpoint_healthy", &[("endpoint", label)])
    };

    for _ in 0..40 {
        assert_eq!(
            fetch(&client, &url, &[]).await.expect("request").status,
            200
        );
    }
    assert!(
        a.hits.load(SeqCst) > 0,
        "both endpoints take traffic at first"
    );

    a.sick.store(true, SeqCst);
    eventually("endpoint a reported unhealthy", WAIT, || async {
        healthy(&proxy.metrics().await, &a_label) == 0.0
    })
    .await;
    let m = proxy.metrics().await;
    assert_eq!(healthy(&m, &b.addr.to_string()), 1.0);
    let before = a.hits.load(SeqCst);
    for _ in 0..50 {
        let r = fetch(&client, &url, &[]).await.expect("request");
        assert_eq!((r.status, r.body.as_str()), (200, "b"));
    }
    assert_eq!(
        a.hits.load(SeqCst),
        before,
        "an unhealthy endpoint gets nothing"
    );

    a.sick.store(false, SeqCst);
    eventually("endpoint a reported healthy again", WAIT, || async {
        healthy(&proxy.metrics().await, &a_label) == 1.0
    })
    .await;
    for _ in 0..100 {
        fetch(&client, &url, &[]).await.expect("request");
    }
    assert!(
        a.hits.load(SeqCst) > before,
        "a recovered endpoint takes traffic again"
    );
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_changes_apply_valid_weights_and_reject_invalid_ones() {
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    let (s, c) = (eps(&[stable.addr]), eps(&[canary.addr]));
    let proxy = TestProxy::start(&app_config(&s, "100", &c, "0", "", "")).await;
    let client = client();
    let url = proxy.url("/");
    let count_canary = |n: usize| {
        let (client, url) = (&client, &url);
        async move {
            let mut canary = 0;
            for _ in 0..n {
                let r = fetch(client, url, &[]).await.expect("request");
                assert_eq!(r.status, 200);
                canary += usize::from(r.body == "canary");
            }
            canary
        }
    };
    assert_eq!(count_canary(20).await, 0);

    write_atomically(&proxy.config_path, &app_config(&s, "25", &c, "75", "", ""));
    eventually("the new weights from the edited file", WAIT, || async {
        weight_now(&proxy, "canary") == 7_500
    })
    .await;
    assert_eq!(count_canary(400).await, 300);
    let m = proxy.metrics().await;
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

    // Weights adding up to 90: rejected, counted, and the running table stays.
    let bad = app_config(&s, "25", &c, "65", "", "");
    write_atomically(&proxy.config_path, &bad);
    eventually("the rejected reload counted", WAIT, || async {
        sample(
            &proxy.metrics().await,
            "tidegate_config_reloads_total",
            &[("result", "failure")],
        ) == 1.0
    })
    .await;
    assert_eq!(weight_now(&proxy, "canary"), 7_500);
    assert_eq!(count_canary(400).await, 300);

    let err = proxy
        .process
        .reloader
        .reload()
        .expect_err("an invalid file is rejected");
    let line = line_of(&bad, "    versions:");
    assert_eq!(err.file, proxy.config_path);
    assert_eq!(err.line, Some(line));
    assert_eq!(err.field, "routes[0].versions");
    let shown = err.to_string();
    let want = format!(
        "{}:{line}: routes[0].versions: weights add up to 90%",
        proxy.config_path.display()
    );
    assert!(shown.starts_with(&want), "{shown}");
    let m = proxy.metrics().await;
    assert_eq!(
        sample(
            &m,
            "tidegate_config_reloads_total",
            &[("result", "failure")]
        ),
        2.0
    );
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
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lets_a_request_in_flight_finish_on_its_old_upstream() {
    let old = gated_backend("old").await;
    let new = named_backend("new").await;
    let proxy = TestProxy::start(&app_config(&eps(&[old.addr]), "100", "[]", "0", "", "")).await;

    let slow = tokio::spawn(fetch_owned(proxy.url("/slow")));
    tokio::time::timeout(WAIT, old.arrived.notified())
        .await
        .expect("the slow request reaches the old upstream");

    // The new config no longer knows the old upstream at all.
    write_atomically(
        &proxy.config_path,
        &app_config(&eps(&[new.addr]), "100", "[]", "0", "", ""),
    );
    proxy.process.reloader.reload().expect("valid config");
    let r = fetch(&client(), &proxy.url("/"), &[])
        .await
        .expect("request");
    assert_eq!(r.body, "new", "new requests use the new table");
    assert!(!slow.is_finished(), "the slow request is still in flight");

    old.release.send_replace(true);
    let r = tokio::time::timeout(WAIT, slow)
        .await
        .expect("the slow request finishes")
        .expect("join")
        .expect("the slow request survives the reload");
    assert_eq!((r.status, r.body.as_str()), (200, "old slow"));
    proxy.process.shutdown().await;
}

async fn fetch_owned(url: String) -> Result<Reply, String> {
    fetch(&client(), &url, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_latency_connections_weights_and_reloads() {
    let stable = named_backend("stable").await;
    let canary = serve(|req: hyper::Request<hyper::body::Incoming>| async move {
        let mut resp =
            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from("canary")));
        if req.uri().path() == "/boom" {
            *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        resp
    })
    .await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let yaml = format!(
        r#"admin: {{listen: "127.0.0.1:0"}}
listeners: [{{name: web, listen: "127.0.0.1:0"}}]
workers: 2
passive_health: {{consecutive_failures: 0}}
routes:
  - name: gone
    match: {{path_prefix: /gone}}
    versions:
      - {{name: stable, weight: 100, endpoints: ["{dead}"]}}
      - {{name: canary, weight: 0, endpoints: []}}
  - name: app
    version_header: x-tidegate-version
    versions:
      - {{name: stable, weight: 50, endpoints: ["{s}"]}}
      - {{name: canary, weight: 50, endpoints: ["{canary}"]}}
"#,
        s = stable.addr
    );
    let proxy = TestProxy::start(&yaml).await;

    for _ in 0..40 {
        assert_eq!(get(&proxy.url("/")).await.0, 200);
    }
    for _ in 0..5 {
        let r = fetch(
            &client(),
            &proxy.url("/boom"),
            &[("x-tidegate-version", "canary")],
        )
        .await
        .expect("request");
        assert_eq!(r.status, 503);
    }
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/gone")).await.0, 502);
    }

    let m = proxy.metrics().await;
    let requests = |version: &str, class: &str| {
        sample(
            &m,
            "tidegate_requests_total",
            &[("route", "app"), ("version", version), ("class", class)],
        )
    };
    assert_eq!(requests("stable", "2xx"), 20.0);
    assert_eq!(requests("canary", "2xx"), 20.0);
    assert_eq!(requests("canary", "5xx"), 5.0);
    assert_eq!(requests("stable", "5xx"), 0.0);
    assert_eq!(requests("canary", "4xx"), 0.0);
    assert_eq!(
        sample(
            &m,
            "tidegate_requests_total",
            &[("route", "gone"), ("version", "stable"), ("class", "5xx")]
        ),
        3.0,
        "tidegate's own 502s count for the version"
    );
    assert_eq!(
        sample(
            &m,
            "tidegate_upstream_connect_errors_total",
            &[("route", "gone"), ("version", "stable")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &m,
            "tidegate_proxy_errors_total",
            &[("kind", "upstream_unreachable")]
        ),
        3.0
    );

    // The latency histogram holds one observation per request.
    for (route, version, n) in [
        ("app", "stable", 20.0),
        ("app", "canary", 25.0),
        ("gone", "stable", 3.0),
    ] {
        let labels = [("route", route), ("version", version)];
        assert_eq!(
            sample(&m, "tidegate_request_duration_seconds_count", &labels),
            n,
            "{route}/{version}"
        );
        assert!(sample(&m, "tidegate_request_duration_seconds_sum", &labels) > 0.0);
        let hist = m
            .samples
            .iter()
            .find(|s| {
                s.metric == "tidegate_request_duration_seconds"
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .expect("histogram buckets");
        let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
            panic!("not a histogram: {:?}", hist.value);
        };
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "buckets are cumulative"
        );
        let inf = buckets.last().expect("buckets");
        assert!(inf.less_than.is_infinite());
        assert_eq!(inf.count, n, "{route}/{version} +Inf bucket");
    }

    // Weights as the table has them now.
    assert_eq!(
        sample(
            &m,
            "tidegate_route_weight_percent",
            &[("route", "app"), ("version", "canary")]
        ),
        50.0
    );
    proxy
        .process
        .publisher
        .set_weights(
            "app",
            vec![("stable".into(), 8_766), ("canary".into(), 1_234)],
        )
        .expect("set weights");
    let m = proxy.metrics().await;
    for (version, want) in [("stable", 87.66), ("canary", 12.34)] {
        let got = sample(
            &m,
            "tidegate_route_weight_percent",
            &[("route", "app"), ("version", version)],
        );
        assert!((got - want).abs() < 1e-9, "{version}: {got}");
    }

    // Open client connections, exactly.
    let active = || async { sample(&proxy.metrics().await, "tidegate_active_connections", &[]) };
    eventually("all test clients disconnected", WAIT, || async {
        active().await == 0.0
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(proxy.addr())
                .await
                .expect("connect"),
        );
    }
    eventually("three open connections", WAIT, || async {
        active().await == 3.0
    })
    .await;
    drop(held);
    eventually("connections closed", WAIT, || async {
        active().await == 0.0
    })
    .await;

    // Reloads by result.
    proxy.process.reloader.reload().expect("same file reloads");
    std::fs::write(&proxy.config_path, yaml.replace("weight: 50", "weight: 45"))
        .expect("write bad config");
    proxy
        .process
        .reloader
        .reload()
        .expect_err("weights add up to 90");
    let m = proxy.metrics().await;
    for (result, want) in [("success", 1.0), ("failure", 1.0)] {
        assert_eq!(
            sample(&m, "tidegate_config_reloads_total", &[("result", result)]),
            want,
            "{result}"
        );
    }
    proxy.process.shutdown().await;
}
