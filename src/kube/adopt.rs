//! Annotated Deployments: each gets a Rollout it owns, made from its annotations, so a
//! rollout's state has one home whichever way it was described. A bad annotation changes
//! nothing that runs: a Warning Event on the Deployment says what is wrong, and the Rollout
//! (when there is one) keeps its spec and carries the reason for its `InvalidSpec` condition.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use super::annotations::{AnnotationError, rollout_of};
use super::crd::Rollout;

/// The field manager of the Rollouts made from annotations.
pub const ADOPTION_MANAGER: &str = "tidegate-annotations";
/// On a Rollout made from annotations: why the Deployment's current annotations could not
/// be used (the Rollout keeps its last good spec meanwhile).
pub const INVALID_ANNOTATION: &str = "tidegate.dev/invalid-annotation";

/// What an annotated Deployment's Rollout should be.
#[derive(Debug, Clone, PartialEq)]
pub enum Adoption {
    /// No rollout annotation: nothing to do.
    None,
    /// The Rollout to apply: owned by the Deployment, same name and namespace.
    Apply(serde_json::Value),
    Invalid(AnnotationError),
}

/// The Rollout a Deployment's annotations ask for. Pure.
pub fn adoption(d: &Deployment) -> Adoption {
    let name = d.name_any();
    match rollout_of(&name, d.annotations()) {
        Ok(None) => Adoption::None,
        Err(e) => Adoption::Invalid(e),
        Ok(Some(spec)) => Adoption::Apply(serde_json::json!({
            "apiVersion": "tidegate.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {
                "name": name,
                "ownerReferences": d.controller_owner_ref(&()).into_iter().collect::<Vec<_>>(),
                "labels": {"app.kubernetes.io/managed-by": "tidegate"},
            },
            "spec": spec,
        })),
    }
}

/// Brings the Deployment's Rollout in line with its annotations.
pub async fn sync(client: &Client, recorder: &Recorder, d: &Deployment) -> Result<(), kube::Error> {
    let api: Api<Rollout> = Api::namespaced(client.clone(), &d.namespace().unwrap_or_default());
    let name = d.name_any();
    match adoption(d) {
        Adoption::None => Ok(()),
        Adoption::Apply(rollout) => {
            api.patch(
                &name,
                &PatchParams::apply(ADOPTION_MANAGER).force(),
                &Patch::Apply(&rollout),
            )
            .await?;
            mark_invalid(&api, &name, None).await
        }
        Adoption::Invalid(e) => {
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidAnnotation".into(),
                note: Some(
                    format!("{e}; the rollout keeps its last good spec")
                        .chars()
                        .take(1000)
                        .collect(),
                ),
                action: "Adopt".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&event, &d.object_ref(&())).await {
                tracing::warn!(deployment = %name, error = %err, "event not recorded");
            }
            mark_invalid(&api, &name, Some(&e.to_string())).await
        }
    }
}

/// Sets or clears the annotation error on an existing Rollout; the controller shows it as
/// `InvalidSpec`.
async fn mark_invalid(
    api: &Api<Rollout>,
    name: &str,
    why: Option<&str>,
) -> Result<(), kube::Error> {
    let Some(rollout) = api.get_opt(name).await? else {
        return Ok(());
    };
    if rollout
        .annotations()
        .get(INVALID_ANNOTATION)
        .map(String::as_str)
        == why
    {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"annotations": {INVALID_ANNOTATION: why}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Follows every Deployment (in `namespace`, or all) until dropped; the controller runs it
/// only while this process leads.
pub async fn run(client: Client, namespace: Option<String>, recorder: Recorder) {
    let api: Api<Deployment> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let context = Arc::new((client, recorder));
    Controller::new(api, watcher::Config::default())
        .run(
            |d: Arc<Deployment>, ctx: Arc<(Client, Recorder)>| async move {
                sync(&ctx.0, &ctx.1, &d).await?;
                Ok::<_, kube::Error>(Requeue::await_change())
            },
            |_, _: &kube::Error, _| Requeue::requeue(std::time::Duration::from_secs(10)),
            context,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "annotated Deployment not synced");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(annotations: &[(&str, &str)]) -> Deployment {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
        }))
        .unwrap();
        d.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        d
    }

    #[test]
    fn an_annotated_deployment_gets_a_rollout_it_owns() {
        let d = deployment(&[
            ("tidegate.dev/steps", "10,pause:1m,50"),
            ("tidegate.dev/host", "web.example.com"),
        ]);
        let Adoption::Apply(r) = adoption(&d) else {
            panic!("{:?}", adoption(&d))
        };
        assert_eq!(r["metadata"]["name"], "web");
        let owner = &r["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("Deployment"), Some("u-1"))
        );
        assert_eq!(owner["controller"], true);
        assert_eq!(r["spec"]["workloadRef"]["name"], "web");
        assert_eq!(r["spec"]["route"]["host"], "web.example.com");
        assert_eq!(r["spec"]["steps"].as_array().map(Vec::len), Some(3));
        // It parses back as a Rollout: what the API server will be sent is one.
        let _: Rollout = serde_json::from_value(r).unwrap();
    }

    #[test]
    fn a_deployment_without_rollout_annotations_is_left_alone_and_a_bad_one_is_named() {
        assert_eq!(adoption(&deployment(&[("other", "x")])), Adoption::None);
        let Adoption::Invalid(e) = adoption(&deployment(&[("tidegate.dev/steps", "10,fifty")]))
        else {
            panic!()
        };
        assert_eq!(e.annotation, "tidegate.dev/steps");
    }
}
