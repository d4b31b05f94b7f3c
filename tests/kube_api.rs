//! The `Rollout` resource on a real Kubernetes API server (k8s-testenv: the apiextensions
//! apiserver with etcd; it serves CRDs only, which is all these tests use): the CRD made from
//! the Rust types installs, keeps a valid spec as written, refuses an invalid one at
//! admission (422) naming the field, and takes the status through its subresource by
//! server-side apply.

mod kube_support;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use tidegate::kube::{Rollout, RolloutResourceStatus};
use tidegate::rollout::RolloutStatus;

/// A Rollout as the API server would get it from `kubectl apply`, checked by nothing on our side.
fn object(name: &str, spec: serde_json::Value) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("an object")
}

fn rollout(name: &str, spec: serde_json::Value) -> Rollout {
    serde_json::from_value(serde_json::to_value(object(name, spec)).expect("json"))
        .expect("a Rollout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_crd_installs_keeps_valid_specs_and_refuses_invalid_ones() {
    let client = kube_support::client().await;
    kube_support::install_crd(&client).await;
    let ns = kube_support::namespace("crd");
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns);
    let untyped: Api<DynamicObject> =
        Api::namespaced_with(client, &ns, &ApiResource::erase::<Rollout>(&()));

    let spec = serde_json::json!({
        "workloadRef": {"name": "shop"},
        "route": {"host": "shop.example.com", "port": 8080},
        "steps": [{"setWeight": 10}, {"pause": {"duration": "2m"}}, {"analysis": {"metrics": [
            {"name": "errors", "interval": "1s", "provider": {"builtin": {"metric": "errorRate", "compare": "stable"}}}
        ]}}],
        "drainTimeout": "45s",
    });
    let created = rollouts
        .create(&PostParams::default(), &rollout("shop", spec))
        .await
        .expect("a valid Rollout is accepted");
    let back = rollouts.get("shop").await.expect("read back");
    assert_eq!(back.spec, created.spec);
    assert_eq!(back.spec.strategy.steps.len(), 3);
    assert_eq!(back.spec.route.port, Some(8080));

    // Refused at admission with the field named, and nothing is stored.
    for (name, spec, field) in [
        (
            "no-workload",
            serde_json::json!({"steps": [{"setWeight": 10}]}),
            "spec.workloadRef",
        ),
        (
            "bad-port",
            serde_json::json!({"workloadRef": {"name": "shop"}, "route": {"port": 70000}}),
            "spec.route.port",
        ),
        (
            "bad-kind",
            serde_json::json!({"workloadRef": {"name": "shop", "kind": "StatefulSet"}}),
            "spec.workloadRef.kind",
        ),
        (
            "bad-path",
            serde_json::json!({"workloadRef": {"name": "shop"}, "route": {"pathPrefix": "shop"}}),
            "spec.route.pathPrefix",
        ),
    ] {
        let err = untyped
            .create(&PostParams::default(), &object(name, spec))
            .await
            .expect_err("an invalid Rollout is refused");
        let kube::Error::Api(status) = err else {
            panic!("not an API error: {err}");
        };
        assert_eq!(status.code, 422, "{name}: {status:?}");
        assert!(status.message.contains(field), "{name}: {}", status.message);
        assert!(rollouts.get_opt(name).await.expect("get").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_record_goes_through_the_status_subresource() {
    let client = kube_support::client().await;
    kube_support::install_crd(&client).await;
    let ns = kube_support::namespace("status");
    let rollouts: Api<Rollout> = Api::namespaced(client, &ns);
    rollouts
        .create(
            &PostParams::default(),
            &rollout("shop", serde_json::json!({"workloadRef": {"name": "shop"}})),
        )
        .await
        .expect("create");
    let mut record = RolloutStatus::new("shop", "stable", 1_700_000_000_000);
    record.canary = Some("canary".into());
    record.canary_revision = "7d9f8c6b5".into();
    record.canary_weight = 1250;
    let status = RolloutResourceStatus {
        observed_generation: Some(1),
        stable_revision: Some("5c4b3a2f1".into()),
        rollout: Some(record.clone()),
        ..Default::default()
    };
    let patch = serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1",
        "kind": "Rollout",
        "status": status,
    });
    rollouts
        .patch_status(
            "shop",
            &PatchParams::apply("tidegate").force(),
            &Patch::Apply(&patch),
        )
        .await
        .expect("status by server-side apply");
    let back = rollouts.get("shop").await.expect("read back");
    let got = back.status.expect("a status");
    assert_eq!(
        got.rollout.as_ref(),
        Some(&record),
        "the status record round-trips"
    );
    assert_eq!(got.stable_revision.as_deref(), Some("5c4b3a2f1"));
    let raw = serde_json::to_value(rollouts.get("shop").await.expect("get")).expect("json");
    assert_eq!(
        raw["status"]["canaryWeight"], 12.5,
        "the printer column's field"
    );
    assert_eq!(raw["status"]["phase"], "Healthy");
}
