//! The proxy relays to the weighted versions and reports it in /metrics.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_by_weight_and_counts_per_version() {
    let stable = named_backend("stable").await;
    let canary = named_backend("canary").await;
    let proxy = TestProxy::start(&config_two_versions(stable.addr, canary.addr, 25.0)).await;
    let mut canary_seen = 0;
    for _ in 0..400 {
        let (status, body) = get(&proxy.url("/")).await;
        assert_eq!(status, 200);
        if body == "canary" {
            canary_seen += 1;
        }
    }
    assert_eq!(canary_seen, 100, "25 % of 400 requests, exactly");
    let m = proxy.metrics().await;
    assert_eq!(
        sample(
            &m,
            "tidegate_requests_total",
            &[("version", "canary"), ("class", "2xx")]
        ),
        100.0
    );
    assert_eq!(
        sample(
            &m,
            "tidegate_route_weight_percent",
            &[("version", "stable")]
        ),
        75.0
    );
    proxy.process.shutdown().await;
}
