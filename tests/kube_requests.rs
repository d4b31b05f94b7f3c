//! The exact requests tidegate makes of the Kubernetes API where their shape matters, against
//! a scripted API server (tower-test): the pause touches only `spec.paused` by a merge patch;
//! `<name>-canary` and the Services go by server-side apply under tidegate's field manager,
//! owned by the Rollout; the status is applied on the status subresource, before the
//! Event that tells of the transition. A look reads the Deployment, its ReplicaSets (the
//! stable pods' hash), the canary and the stable Service, and takes what is missing as none.

mod kube_support;

use std::sync::Arc;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use kube_support::sim::{FollowingFleet, SimCluster, SimWorkloads};
use tidegate::kube::Rollout;
use tidegate::kube::controller::{self, Context};
use tidegate::kube::workloads::{KubeWorkloads, TEMPLATE, Workloads, template_identity};
use tower_test::mock;

fn rollout() -> Rollout {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "shop", "namespace": "prod", "uid": "r-123"},
        "spec": {"workloadRef": {"name": "shop"}, "route": {"port": 8080}},
    }))
    .expect("rollout")
}

fn deployment() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": "prod", "generation": 3},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "shop", "image": "shop:2", "ports": [{"containerPort": 8080}]}]}
            }
        }
    })
}

/// One request as the API server got it.
struct Seen {
    method: Method,
    path_and_query: String,
    content_type: String,
    body: serde_json::Value,
}

/// `seen` is a server-side apply of `path` under tidegate's field manager.
fn assert_applied(seen: &Seen, path: &str) {
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(
        seen.path_and_query,
        format!("{path}?&force=true&fieldManager=tidegate-controller")
    );
    assert_eq!(seen.content_type, "application/apply-patch+yaml");
}

/// Answers each request with the next of `answers` and hands back what it got.
async fn scripted(answers: Vec<serde_json::Value>) -> (Client, tokio::task::JoinHandle<Vec<Seen>>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for answer in answers {
            let (request, reply) = handle.next_request().await.expect("a request");
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap_or("").to_string())
                .unwrap_or_default();
            let method = request.method().clone();
            let path_and_query = request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let bytes = request
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body = if bytes.is_empty() {
                serde_json::Value::Null
            } else if content_type.contains("yaml") {
                yaml_serde::from_slice(&bytes).expect("yaml body")
            } else {
                serde_json::from_slice(&bytes).expect("json body")
            };
            seen.push(Seen {
                method,
                path_and_query,
                content_type,
                body,
            });
            // A `Status` answer carries its code, as the API server's errors do.
            let code = match answer["kind"].as_str() {
                Some("Status") => answer["code"].as_u64().unwrap_or(500) as u16,
                _ => 200,
            };
            let response = Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).expect("answer")))
                .expect("response");
            reply.send_response(response);
        }
        seen
    });
    (Client::new(service, "default"), server)
}

#[tokio::test]
async fn the_pause_is_a_merge_patch_of_spec_paused_alone() {
    let (client, server) = scripted(vec![deployment()]).await;
    KubeWorkloads::new(client)
        .set_paused(&rollout(), true)
        .await
        .expect("pause");
    let seen = server.await.expect("server");
    let s = &seen[0];
    assert_eq!(s.method, Method::PATCH);
    assert_eq!(
        s.path_and_query,
        "/apis/apps/v1/namespaces/prod/deployments/shop?"
    );
    assert_eq!(s.content_type, "application/merge-patch+json");
    assert_eq!(s.body, serde_json::json!({"spec": {"paused": true}}));
}

#[tokio::test]
async fn the_canary_and_services_are_applied_under_tidegates_field_manager_owned_by_the_rollout() {
    let service =
        serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    let (client, server) = scripted(vec![
        deployment(),
        deployment(),
        deployment(),
        service.clone(),
        service,
    ])
    .await;
    let w = KubeWorkloads::new(client);
    w.apply_canary(&rollout(), 2).await.expect("canary");
    w.apply_services(&rollout(), "5c4b3a2f1")
        .await
        .expect("services");
    let seen = server.await.expect("server");
    let canary = &seen[1];
    assert_applied(
        canary,
        "/apis/apps/v1/namespaces/prod/deployments/shop-canary",
    );
    let b = &canary.body;
    assert_eq!(b["spec"]["replicas"], 2);
    assert_eq!(
        b["spec"]["selector"]["matchLabels"]["tidegate.dev/track"],
        "canary"
    );
    assert_eq!(b["spec"]["selector"]["matchLabels"]["app"], "shop");
    assert_eq!(
        b["spec"]["template"]["metadata"]["labels"]["tidegate.dev/track"],
        "canary"
    );
    assert_eq!(
        b["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop:2"
    );
    assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "Rollout");
    assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "r-123");
    assert_eq!(b["metadata"]["ownerReferences"][0]["controller"], true);
    let stable = &seen[3];
    assert_eq!(
        stable.path_and_query,
        "/api/v1/namespaces/prod/services/shop-stable?&force=true&fieldManager=tidegate-controller"
    );
    assert_eq!(
        stable.body["spec"]["selector"]["pod-template-hash"],
        "5c4b3a2f1"
    );
    assert_eq!(stable.body["spec"]["ports"][0]["port"], 8080);
    let canary_service = &seen[4];
    assert_eq!(
        canary_service.body["spec"]["selector"]["tidegate.dev/track"],
        "canary"
    );
}

#[tokio::test]
async fn the_status_is_applied_on_its_subresource_under_the_controllers_field_manager() {
    // The API server here serves Rollouts and Events; the Deployment and Services are the
    // simulated cluster, which makes no request.
    let event = serde_json::json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "e", "namespace": "prod"}, "eventTime": null});
    let mut seen_rollout = serde_json::to_value(rollout()).expect("rollout");
    seen_rollout["metadata"]["generation"] = 4.into();
    let (client, server) = scripted(vec![seen_rollout.clone(), event]).await;
    let cluster = SimCluster::new("t1", 4);
    let (_leading, leads) = tokio::sync::watch::channel(true);
    let ctx = Context::new(
        client,
        SimWorkloads::new(&cluster),
        Arc::new(FollowingFleet),
        "controller-a",
        leads,
        None,
    );
    let rollout: Rollout = serde_json::from_value(seen_rollout).expect("rollout");
    controller::reconcile(Arc::new(rollout), ctx)
        .await
        .expect("adoption");
    let seen = server.await.expect("server");

    let status = &seen[0];
    assert_applied(
        status,
        "/apis/tidegate.dev/v1alpha1/namespaces/prod/rollouts/shop/status",
    );
    let b = &status.body;
    assert_eq!(b["apiVersion"], "tidegate.dev/v1alpha1");
    assert_eq!(b["kind"], "Rollout");
    assert!(b.get("spec").is_none(), "the status alone: {b}");
    assert_eq!(b["status"]["observedGeneration"], 4);
    assert_eq!(b["status"]["stableTemplate"], "t1");
    assert!(
        cluster.get().deployment.paused,
        "and the Deployment adopted"
    );

    let event = &seen[1];
    assert_eq!(event.method, Method::POST);
    assert_eq!(
        event.path_and_query,
        "/apis/events.k8s.io/v1/namespaces/prod/events?"
    );
    let e = &event.body;
    assert_eq!(e["reason"], "Adopted");
    assert_eq!(e["type"], "Normal");
    assert_eq!(e["regarding"]["kind"], "Rollout");
    assert_eq!(e["regarding"]["name"], "shop");
    assert_eq!(e["reportingController"], "tidegate-controller");
    assert_eq!(e["reportingInstance"], "controller-a");
}

fn not_found() -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
        "reason": "NotFound", "code": 404, "message": "not found"})
}

#[tokio::test]
async fn a_look_finds_the_stable_pods_hash_the_canary_and_the_stable_services_selector() {
    let mut d = deployment();
    d["spec"]["paused"] = true.into();
    d["status"] = serde_json::json!({"observedGeneration": 3, "updatedReplicas": 1,
        "availableReplicas": 4});
    let template: k8s_openapi::api::core::v1::PodTemplateSpec =
        serde_json::from_value(d["spec"]["template"].clone()).expect("template");
    // As Kubernetes makes them: each ReplicaSet's template carries its pod-template-hash.
    let replica_set = |hash: &str, image: &str| {
        let mut t = d["spec"]["template"].clone();
        t["metadata"]["labels"]["pod-template-hash"] = hash.into();
        t["spec"]["containers"][0]["image"] = image.into();
        serde_json::json!({"metadata": {"name": format!("shop-{hash}"),
            "labels": {"app": "shop", "pod-template-hash": hash}},
            "spec": {"selector": {"matchLabels": {"app": "shop"}}, "template": t}})
    };
    let sets = serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList",
        "metadata": {}, "items": [replica_set("old1", "shop:1"), replica_set("cur2", "shop:2")]});
    let canary = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop-canary", "annotations": {TEMPLATE: "abc"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "shop"}},
            "template": d["spec"]["template"].clone()},
        "status": {"readyReplicas": 1}});
    let stable = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "shop-stable"},
        "spec": {"selector": {"app": "shop", "pod-template-hash": "old1"}}});
    let (client, server) = scripted(vec![d, sets, canary, stable]).await;
    let w = KubeWorkloads::new(client)
        .observe(&rollout())
        .await
        .expect("a look")
        .expect("the Deployment");
    let seen = server.await.expect("server");
    let paths: Vec<&str> = seen.iter().map(|s| s.path_and_query.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/apis/apps/v1/namespaces/prod/deployments/shop",
            "/apis/apps/v1/namespaces/prod/replicasets?&labelSelector=app%3Dshop",
            "/apis/apps/v1/namespaces/prod/deployments/shop-canary",
            "/api/v1/namespaces/prod/services/shop-stable",
        ]
    );
    assert!(seen.iter().all(|s| s.method == Method::GET));
    let dv = &w.deployment;
    assert!(dv.paused);
    assert_eq!((dv.generation, dv.observed_generation), (3, 3));
    assert_eq!(
        (dv.replicas, dv.updated_replicas, dv.available_replicas),
        (4, 1, 4)
    );
    assert_eq!(dv.template, template_identity(&template));
    assert_eq!(
        dv.template_hash.as_deref(),
        Some("cur2"),
        "the ReplicaSet of the current template, its own hash label aside"
    );
    let c = w.canary.expect("the canary");
    assert_eq!(
        (c.template.as_str(), c.replicas, c.ready_replicas),
        ("abc", 2, 1)
    );
    assert_eq!(w.stable_service.as_deref(), Some("old1"));
}

#[tokio::test]
async fn a_look_without_a_canary_or_services_sees_none_and_deleting_a_gone_canary_succeeds() {
    let sets = serde_json::json!({"apiVersion": "apps/v1", "kind": "ReplicaSetList",
        "metadata": {}, "items": []});
    let (client, server) = scripted(vec![
        deployment(),
        sets,
        not_found(),
        not_found(),
        not_found(),
    ])
    .await;
    let workloads = KubeWorkloads::new(client);
    let w = workloads
        .observe(&rollout())
        .await
        .expect("a look")
        .expect("the Deployment");
    assert!(w.canary.is_none() && w.stable_service.is_none());
    assert_eq!(w.deployment.template_hash, None, "no ReplicaSet yet");
    workloads
        .delete_canary(&rollout())
        .await
        .expect("a canary already gone is deleted");
    let seen = server.await.expect("server");
    assert_eq!(seen[4].method, Method::DELETE);
    assert_eq!(
        seen[4].path_and_query,
        "/apis/apps/v1/namespaces/prod/deployments/shop-canary?"
    );
}
