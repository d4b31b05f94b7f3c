//! Annotated Deployments on a real API server (k8s-testenv: Rollouts and Events are real; the
//! server has no `apps` group, so the Deployment is an object the test hands to the
//! adoption as the watch would, and the controller's look uses the simulated cluster). An
//! annotated Deployment gets a Rollout it owns; a bad annotation leaves that Rollout's spec
//! as it was, puts a Warning Event on the Deployment and shows as `InvalidSpec` on the
//! Rollout; fixing the annotation clears it.

mod kube_support;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Recorder, Reporter};
use kube_support::sim::{FollowingFleet, SimCluster, SimWorkloads};
use tidegate::kube::Rollout;
use tidegate::kube::adopt::{INVALID_ANNOTATION, sync};
use tidegate::kube::controller::{Context, reconcile};

fn deployment(ns: &str, steps: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns, "uid": "0b6f1c1e-1111-4222-8333-944445555666",
                     "annotations": {"tidegate.dev/steps": steps, "tidegate.dev/host": "web.example.com"}},
    }))
    .expect("deployment")
}

fn invalid_spec(r: &Rollout) -> Option<(String, String)> {
    let c = r
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "InvalidSpec")?;
    Some((c.status.clone(), c.message.clone()))
}

#[tokio::test]
async fn an_annotated_deployment_gets_an_owned_rollout_and_a_bad_annotation_changes_nothing_that_runs()
 {
    let client = kube_support::client().await;
    kube_support::install_crd(&client).await;
    kube_support::install_event_crd(&client).await;
    let ns = kube_support::namespace("kube-adopt");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tidegate-controller".into(),
            instance: None,
        },
    );
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns);

    sync(&client, &recorder, &deployment(&ns, "10,pause:1m,50"))
        .await
        .expect("adopted");
    let r = rollouts.get("web").await.expect("the Rollout exists");
    let owner = &r.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(r.spec.route.host.as_deref(), Some("web.example.com"));
    assert_eq!(r.spec.strategy.steps.len(), 3);

    // A typo in the steps: the Rollout keeps its spec, the Deployment gets a Warning Event.
    sync(&client, &recorder, &deployment(&ns, "10,pause:1m,fifty"))
        .await
        .expect("synced");
    let after = rollouts.get("web").await.expect("rollout");
    assert_eq!(after.spec, r.spec, "the last good spec stays");
    let why = after
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INVALID_ANNOTATION));
    assert!(
        why.is_some_and(|w| w.contains("tidegate.dev/steps")),
        "{why:?}"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warnings: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|o| o.kind.as_deref()) == Some("Deployment"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert_eq!(warnings[0].reason.as_deref(), Some("InvalidAnnotation"));
    assert!(warnings[0].note.as_deref().unwrap_or("").contains("fifty"));

    // The controller's next look shows it as InvalidSpec, and goes on with the good spec.
    let (_, leading) = tokio::sync::watch::channel(true);
    let ctx = Context::new(
        client.clone(),
        SimWorkloads::new(&SimCluster::new("v1", 2)),
        Arc::new(FollowingFleet),
        "test",
        leading,
        None,
    );
    reconcile(Arc::new(after), ctx.clone())
        .await
        .expect("looked");
    let looked = rollouts.get("web").await.expect("rollout");
    let (status, message) = invalid_spec(&looked).expect("condition");
    assert_eq!(status, "True");
    assert!(message.contains("fifty"), "{message}");
    assert!(
        looked
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .is_some(),
        "still runs"
    );

    // Fixed: the mark goes, and so does the condition.
    sync(&client, &recorder, &deployment(&ns, "10,pause:1m,50"))
        .await
        .expect("synced");
    let fixed = rollouts.get("web").await.expect("rollout");
    assert!(
        fixed
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INVALID_ANNOTATION))
            .is_none()
    );
    reconcile(Arc::new(fixed), ctx).await.expect("looked");
    let looked = rollouts.get("web").await.expect("rollout");
    assert_eq!(invalid_spec(&looked).expect("condition").0, "False");
}
