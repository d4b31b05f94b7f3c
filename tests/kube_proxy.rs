//! `tidegate proxy --kube` on a real API server (k8s-testenv: Rollouts and EndpointSlices are
//! real objects, EndpointSlices served as a CRD in their own group). The server runs no
//! kubelet and no EndpointSlice controller, so the test writes the slices that controller
//! would, pointing at loopback backends. Real requests through the proxy follow the
//! Rollout's status weight and the slices' ready endpoints (a terminating endpoint gets no
//! new request and answers the one it has); the controller's fleet finds the
//! proxy by the EndpointSlice of its admin port and reads the weight it applied and the
//! requests it served.

mod common;
mod kube_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::Notify;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tidegate::kube::controller::Fleet;
use tidegate::kube::fleet::{DEFAULT_PROXY_SELECTOR, ProxyFleet};
use tidegate::kube::proxy::ClusterProxy;
use tidegate::kube::{Rollout, RolloutResourceStatus};
use tidegate::rollout::RolloutStatus;

const WAIT: Duration = Duration::from_secs(30);

async fn set_canary_weight(rollouts: &Api<Rollout>, bps: u16) {
    let mut record = RolloutStatus::new("web", "stable", 0);
    record.canary_weight = bps;
    let status = RolloutResourceStatus {
        rollout: Some(record),
        ..Default::default()
    };
    let patch = serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1", "kind": "Rollout", "status": status,
    });
    rollouts
        .patch_status(
            "web",
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("status written");
}

/// The slice an EndpointSlice controller would write for `service`, one endpoint at `addr`.
async fn put_slice(client: &Client, ns: &str, service: &str, addr: SocketAddr, ready: bool) {
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-abcde"), "labels": {
            "kubernetes.io/service-name": service,
            "app.kubernetes.io/managed-by": "tidegate",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [addr.ip().to_string()],
                       "conditions": {"ready": ready, "serving": true, "terminating": !ready}}],
    }))
    .expect("slice");
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .patch(
            &format!("{service}-abcde"),
            &PatchParams::apply("tests").force(),
            &Patch::Apply(&slice),
        )
        .await
        .expect("slice written");
}

/// A proxy file with one listener and the admin listener, both on free loopback ports.
fn proxy_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("proxy.yaml");
    std::fs::write(
        &config,
        "listeners:\n  - name: http\n    listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n",
    )
    .expect("config written");
    config
}

async fn canary_weight_served(admin: SocketAddr, route: &str) -> f64 {
    let text = common::get_text(&format!("http://{admin}/metrics")).await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("metrics parse");
    let labels = [("route", route), ("version", "canary")];
    if scrape.samples.iter().any(|s| {
        s.metric == "tidegate_route_weight_percent"
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    }) {
        common::sample(&scrape, "tidegate_route_weight_percent", &labels)
    } else {
        -1.0
    }
}

/// How many of `n` requests in a row the canary answered.
async fn canary_share(listener: SocketAddr, n: usize) -> usize {
    let mut canary = 0;
    for _ in 0..n {
        let (status, body) = common::get(&format!("http://{listener}/")).await;
        assert_eq!(status, 200, "{body}");
        canary += usize::from(body == "canary");
    }
    canary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_the_status_weight_and_ready_endpoints_and_the_fleet_reads_it() {
    let client = kube_support::client().await;
    kube_support::install_crd(&client).await;
    kube_support::install_endpointslice_crd(&client).await;
    let ns = kube_support::namespace("kube-proxy");
    let route = format!("{ns}.web");
    let stable = common::named_backend("stable").await;
    // The canary answers `/slow` only when the test lets it: a request in flight.
    let (arrived, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let canary_addr = {
        let (arrived, release) = (arrived.clone(), release.clone());
        common::serve(move |req: Request<Incoming>| {
            let (arrived, release) = (arrived.clone(), release.clone());
            async move {
                if req.uri().path() == "/slow" {
                    arrived.notify_one();
                    release.notified().await;
                }
                Response::new(Full::new(Bytes::from("canary")))
            }
        })
        .await
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = proxy_config(dir.path());
    let proxy = ClusterProxy::start(&config, client.clone(), Some(ns.clone()))
        .await
        .expect("proxy starts");
    let listener = proxy.listener("http").expect("listener");
    let admin = proxy.admin_addr;

    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns);
    let rollout: Rollout = serde_json::from_value(serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "web"},
        "spec": {"workloadRef": {"name": "web"}, "steps": [{"setWeight": 20}]},
    }))
    .expect("rollout");
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .expect("rollout created");
    set_canary_weight(&rollouts, 2000).await;
    put_slice(&client, &ns, "web-stable", stable.addr, true).await;
    put_slice(&client, &ns, "web-canary", canary_addr, true).await;

    let r = route.clone();
    common::eventually("the proxy serves the status weight", WAIT, || {
        let r = r.clone();
        async move { canary_weight_served(admin, &r).await == 20.0 }
    })
    .await;
    assert_eq!(
        common::get(&format!("http://{admin}/readyz")).await.0,
        200,
        "ready once the cluster's table is in force"
    );
    // The split is exact: 20 of every 100 requests in a row.
    assert_eq!(canary_share(listener, 100).await, 20);

    set_canary_weight(&rollouts, 10_000).await;
    let r = route.clone();
    common::eventually("the proxy follows a new status weight", WAIT, || {
        let r = r.clone();
        async move { canary_weight_served(admin, &r).await == 100.0 }
    })
    .await;
    assert_eq!(canary_share(listener, 20).await, 20);

    // The canary's only pod terminates (not ready, still serving) with a request in flight:
    // no new requests go to it, stable takes them, and the one in flight is answered.
    let slow = format!("http://{listener}/slow");
    let in_flight = tokio::spawn(async move { common::get(&slow).await });
    arrived.notified().await;
    put_slice(&client, &ns, "web-canary", canary_addr, false).await;
    let r = route.clone();
    common::eventually("a terminating endpoint gets no new requests", WAIT, || {
        let r = r.clone();
        async move { canary_weight_served(admin, &r).await == 0.0 }
    })
    .await;
    assert_eq!(canary_share(listener, 20).await, 0);
    release.notify_one();
    assert_eq!(
        in_flight.await.expect("the request in flight"),
        (200, "canary".to_string()),
        "a request in flight on a terminating endpoint is answered"
    );

    // The controller's view: this proxy, found by its admin port's EndpointSlice.
    put_proxy_slice(&client, &ns, admin).await;
    let fleet = ProxyFleet::new(client.clone(), Some(ns.clone()), DEFAULT_PROXY_SELECTOR);
    let before_first_look = tidegate::clock::unix_now_ms();
    fleet.scrape().await;
    let after_first_look = tidegate::clock::unix_now_ms();
    assert_eq!(canary_share(listener, 30).await, 0);
    fleet.scrape().await;
    let rollout = rollouts.get("web").await.expect("rollout");
    let view = fleet.observe(&rollout);
    assert_eq!(
        view.applied_weight,
        Some(0),
        "what the proxy serves, not what status asks"
    );
    assert_eq!(view.stable_endpoints, 1);
    assert_eq!(view.active.get("canary"), Some(&0));
    let counts = fleet.windows(&rollout).expect("the fleet counts");
    let now = tidegate::clock::now_ms();
    let window = |s: &tidegate::metrics::VersionStats| s.window(now, Duration::from_secs(60), 0);
    assert_eq!(window(&counts.stable).requests(), 30);
    assert_eq!(window(&counts.canary).requests(), 0);
    // Every proxy has served 0 % to the canary since the first look (not the second): an
    // analysis window of this weight starts no earlier than that.
    assert!(
        (before_first_look..=after_first_look).contains(&counts.applied_since),
        "{} not within {before_first_look}..={after_first_look}",
        counts.applied_since
    );

    proxy.shutdown().await;
}

async fn put_proxy_slice(client: &Client, ns: &str, admin: SocketAddr) {
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "tidegate-proxy-admin-xyz", "labels": {
            "kubernetes.io/service-name": "tidegate-proxy-admin",
            "tidegate.dev/proxy-admin": "true",
        }},
        "addressType": "IPv4",
        "ports": [{"name": "admin", "port": admin.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [admin.ip().to_string()], "conditions": {"ready": true}}],
    }))
    .expect("slice");
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &slice)
        .await
        .expect("proxy slice written");
}

/// A proxy that cannot reach the API server has no routes: it is alive but kept out of its
/// Service until its first table from the cluster is in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_its_first_table_from_the_cluster_is_alive_but_not_ready() {
    let nowhere = kube::Config::new("http://127.0.0.1:1".parse().expect("url"));
    let client = Client::try_from(nowhere).expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = proxy_config(dir.path());
    let proxy = ClusterProxy::start(&config, client, None)
        .await
        .expect("proxy starts");
    let admin = proxy.admin_addr;
    assert_eq!(common::get(&format!("http://{admin}/healthz")).await.0, 200);
    let (status, body) = common::get(&format!("http://{admin}/readyz")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no route table yet"), "{body}");
    proxy.shutdown().await;
}
