//! Micro benchmarks of the per-request hot path: route match + version pick, header rules, metrics.
//!
//! Run with `cargo bench --bench hot_path`; see docs/benchmarks.md for what each figure means.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{HeaderMap, HeaderValue};

use tidegate::clock;
use tidegate::config::Config;
use tidegate::health::{EndpointRegistry, pick_endpoint};
use tidegate::metrics::{Metrics, VersionStats};
use tidegate::proxy::forwarding::{Peer, TrustedProxies, add_forwarding};
use tidegate::proxy::headers::strip_hop_by_hop;
use tidegate::routing::{RouteTable, RouteWriter};

/// Six routes, matched in order; the benched request takes the third (`checkout`): the two
/// before it fail on host and on a header, the one it takes checks host, path and a header.
const ROUTES: &str = r#"
listeners:
  - name: web
    listen: 127.0.0.1:0
routes:
  - name: admin
    match: {host: admin.example.com, path_prefix: /}
    versions:
      - {name: stable, weight: 100, endpoints: [127.0.0.1:9101]}
      - {name: canary, weight: 0, endpoints: [127.0.0.1:9101]}
  - name: checkout-beta
    match:
      host: shop.example.com
      path_prefix: /checkout
      headers: [{name: x-beta, value: "1"}]
    versions:
      - {name: stable, weight: 50, endpoints: [127.0.0.1:9102]}
      - {name: canary, weight: 50, endpoints: [127.0.0.1:9103]}
  - name: checkout
    match:
      host: "*.example.com"
      path_prefix: /checkout
      headers: [{name: x-tenant, value: acme}]
    version_header: x-tidegate-version
    sticky: {cookie: tidegate-checkout}
    versions:
      - {name: stable, weight: 87.5, endpoints: [127.0.0.1:9104, 127.0.0.1:9105, 127.0.0.1:9106]}
      - {name: canary, weight: 12.5, endpoints: [127.0.0.1:9107]}
  - name: api
    match: {host: api.example.com, path_prefix: /v1}
    versions:
      - {name: stable, weight: 99.99, endpoints: [127.0.0.1:9108]}
      - {name: canary, weight: 0.01, endpoints: [127.0.0.1:9109]}
  - name: grpc
    match: {path_prefix: /grpc.health.v1.Health}
    versions:
      - {name: stable, weight: 99.5, protocol: http2, endpoints: [127.0.0.1:9110]}
      - {name: canary, weight: 0.5, protocol: http2, endpoints: [127.0.0.1:9113]}
  - name: fallback
    versions:
      - {name: stable, weight: 95, endpoints: [127.0.0.1:9111]}
      - {name: canary, weight: 5, endpoints: [127.0.0.1:9112]}
"#;

/// What a browser sends, as hyper hands it to the proxy.
fn browser_request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "shop.example.com:8080"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
        ("cookie", "session=4f2a9c0e17b3; theme=dark"),
        ("x-tenant", "acme"),
        ("x-forwarded-for", "203.0.113.7"),
        ("upgrade-insecure-requests", "1"),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("priority", "u=0, i"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn route_match_and_pick(c: &mut Criterion) {
    let config = Config::parse(ROUTES, Path::new("bench.yaml")).expect("bench config is valid");
    let table = RouteTable::from_config(
        &config.proxy,
        &EndpointRegistry::default(),
        &Metrics::default(),
        &Default::default(),
    );
    let (_writer, reader) = RouteWriter::new(table);
    let headers = browser_request_headers();
    let host = Some("shop.example.com:8080");
    let path = "/checkout/cart?item=42";
    {
        let t = reader.load();
        let r = t.find(host, path, &headers).expect("request matches");
        assert_eq!(
            &*r.name, "checkout",
            "the benched request takes the third route"
        );
    }

    let mut g = c.benchmark_group("route");
    // What the issue's 100 ns target is about: first matching route, then the weighted version.
    g.bench_function("match_and_pick", |b| {
        let t = reader.load_full();
        b.iter(|| {
            let route = t
                .find(black_box(host), black_box(path), black_box(&headers))
                .expect("matches");
            black_box(route.choose(&headers))
        })
    });
    // The two halves of the above, to see where the time goes.
    g.bench_function("match_only", |b| {
        let t = reader.load_full();
        b.iter(|| {
            t.find(black_box(host), black_box(path), black_box(&headers))
                .is_some()
        })
    });
    g.bench_function("pick_only", |b| {
        let t = reader.load_full();
        let route = t.find(host, path, &headers).expect("matches").clone();
        b.iter(|| black_box(route.choose(black_box(&headers))))
    });
    // What a request really does: load the arc-swap guard, match, pick the version and the
    // least-loaded healthy endpoint (power of two choices over three endpoints).
    g.bench_function("load_match_pick_endpoint", |b| {
        let now = clock::now_ms();
        b.iter(|| {
            let t = reader.load();
            let route = t
                .find(black_box(host), black_box(path), black_box(&headers))
                .expect("matches");
            let (i, _) = route.choose(&headers);
            black_box(pick_endpoint(&route.versions[i].endpoints, now).map(|e| e.addr))
        })
    });
    // The same request without a Cookie header (an API client, a first visit): `choose`
    // has no cookie to scan for the sticky pin.
    g.bench_function("match_and_pick_no_cookie", |b| {
        let t = reader.load_full();
        let mut bare = headers.clone();
        bare.remove("cookie");
        b.iter(|| {
            let route = t
                .find(black_box(host), black_box(path), black_box(&bare))
                .expect("matches");
            black_box(route.choose(&bare))
        })
    });
    // The version header forces the canary: the cheapest way through `choose`.
    g.bench_function("match_and_pick_forced", |b| {
        let t = reader.load_full();
        let mut forced = headers.clone();
        forced.insert("x-tidegate-version", HeaderValue::from_static("canary"));
        b.iter(|| {
            let route = t
                .find(black_box(host), black_box(path), black_box(&forced))
                .expect("matches");
            black_box(route.choose(&forced))
        })
    });
    // A returning client with its sticky cookie among others: parses the Cookie header.
    g.bench_function("match_and_pick_sticky", |b| {
        let t = reader.load_full();
        let mut sticky = headers.clone();
        sticky.insert(
            "cookie",
            HeaderValue::from_static("session=4f2a9c0e17b3; tidegate-checkout=canary; theme=dark"),
        );
        b.iter(|| {
            let route = t
                .find(black_box(host), black_box(path), black_box(&sticky))
                .expect("matches");
            black_box(route.choose(&sticky))
        })
    });
    g.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let peer = Peer::new(
        "10.1.2.3".parse().expect("ip"),
        &std::sync::Arc::new(TrustedProxies::default()),
    );
    let host = HeaderValue::from_static("shop.example.com:8080");
    let mut g = c.benchmark_group("headers");
    // The request-side rules: hop-by-hop removal (Connection, Keep-Alive, ...), then
    // X-Forwarded-For appended, X-Real-IP, -Proto and -Host set, x-request-id generated. The header
    // map is cloned outside the timed part.
    g.bench_function("strip_and_forward", |b| {
        let template = browser_request_headers();
        b.iter_batched_ref(
            || template.clone(),
            |h| {
                strip_hop_by_hop(h, false);
                add_forwarding(h, &peer, false, Some(&host));
            },
            BatchSize::SmallInput,
        )
    });
    // The response-side rule alone on a typical response head.
    g.bench_function("strip_response", |b| {
        let mut template = HeaderMap::new();
        for (k, v) in [
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "5120"),
            ("cache-control", "no-cache"),
            ("date", "Thu, 26 Nov 2026 23:00:00 GMT"),
            ("server", "nginx"),
            ("connection", "keep-alive"),
        ] {
            template.append(k, HeaderValue::from_static(v));
        }
        b.iter_batched_ref(
            || template.clone(),
            |h| strip_hop_by_hop(h, false),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn metrics_record(c: &mut Criterion) {
    let stats = VersionStats::new("checkout".into(), "canary".into());
    let stats = Arc::new(stats);
    let mut g = c.benchmark_group("metrics");
    // Counters, Prometheus histogram and the sliding window, one response of 200 at 420 µs.
    g.bench_function("version_record", |b| {
        b.iter(|| stats.record(black_box(200), black_box(Duration::from_micros(420))))
    });
    g.finish();
}

criterion_group!(
    benches,
    route_match_and_pick,
    header_rewrite,
    metrics_record
);
criterion_main!(benches);
