//! The workloads a rollout drives: the user's Deployment, `<name>-canary` and the two
//! Services, as the planner sees them and as its actions change them. `KubeWorkloads` does it
//! through the Kubernetes API; tests put a simulated cluster behind the same trait.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};

use super::crd::Rollout;
use super::plan::{CanaryView, DeploymentView};

/// The field manager of every object tidegate's controller writes.
pub const FIELD_MANAGER: &str = "tidegate-controller";
/// Label on the canary's pods (`canary`), and annotation with tidegate's template identity.
pub const TRACK: &str = "tidegate.dev/track";
pub const TEMPLATE: &str = "tidegate.dev/template";

pub type WorkloadFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, kube::Error>> + Send + 'a>>;

/// What was observed of a rollout's workloads.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub deployment: DeploymentView,
    pub canary: Option<CanaryView>,
    /// The `pod-template-hash` the stable Service selects.
    pub stable_service: Option<String>,
}

/// What a rollout's actions are carried out on.
pub trait Workloads: Send + Sync + 'static {
    /// The Deployment named by the rollout and what tidegate made for it; None when the
    /// Deployment does not exist.
    fn observe<'a>(&'a self, rollout: &'a Rollout) -> WorkloadFuture<'a, Option<Workload>>;
    /// Sets `spec.paused` of the rollout's Deployment, and nothing else of it.
    fn set_paused<'a>(&'a self, rollout: &'a Rollout, paused: bool) -> WorkloadFuture<'a, ()>;
    /// Creates or updates `<name>-canary` from the Deployment's template, at this size.
    fn apply_canary<'a>(&'a self, rollout: &'a Rollout, replicas: i32) -> WorkloadFuture<'a, ()>;
    fn delete_canary<'a>(&'a self, rollout: &'a Rollout) -> WorkloadFuture<'a, ()>;
    /// Creates or updates `<name>-stable` (pinned to `stable_hash`) and `<name>-canary`.
    fn apply_services<'a>(
        &'a self,
        rollout: &'a Rollout,
        stable_hash: &'a str,
    ) -> WorkloadFuture<'a, ()>;
}

/// tidegate's identity of a pod template: FNV-1a over its JSON, without the
/// `pod-template-hash` label the Deployment controller adds to ReplicaSets.
pub fn template_identity(template: &PodTemplateSpec) -> String {
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove("pod-template-hash");
    }
    let text = serde_json::to_string(&t).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The Kubernetes API.
pub struct KubeWorkloads {
    client: Client,
}

impl KubeWorkloads {
    pub fn new(client: Client) -> KubeWorkloads {
        KubeWorkloads { client }
    }

    fn api<K>(&self, rollout: &Rollout) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(
            self.client.clone(),
            &rollout.namespace().unwrap_or_default(),
        )
    }

    async fn deployment(&self, rollout: &Rollout) -> Result<Option<Deployment>, kube::Error> {
        self.api::<Deployment>(rollout)
            .get_opt(&rollout.spec.workload_ref.name)
            .await
    }
}

fn canary_name(rollout: &Rollout) -> String {
    format!("{}-canary", rollout.spec.workload_ref.name)
}

fn selector(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default()
}

fn owner(rollout: &Rollout) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    rollout.controller_owner_ref(&()).into_iter().collect()
}

impl Workloads for KubeWorkloads {
    fn observe<'a>(&'a self, rollout: &'a Rollout) -> WorkloadFuture<'a, Option<Workload>> {
        Box::pin(async move {
            let Some(d) = self.deployment(rollout).await? else {
                return Ok(None);
            };
            let spec = d.spec.clone().unwrap_or_default();
            let status = d.status.clone().unwrap_or_default();
            let template = template_identity(&spec.template);
            // The ReplicaSet running this template carries its pod-template-hash.
            let labels = selector(&d)
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let sets = self
                .api::<ReplicaSet>(rollout)
                .list(&ListParams::default().labels(&labels))
                .await?;
            let template_hash = sets.items.iter().find_map(|rs| {
                let t = rs.spec.as_ref()?.template.as_ref()?;
                (template_identity(t) == template)
                    .then(|| rs.labels().get("pod-template-hash").cloned())
                    .flatten()
            });
            let canary = self
                .api::<Deployment>(rollout)
                .get_opt(&canary_name(rollout))
                .await?
                .map(|c| CanaryView {
                    template: c.annotations().get(TEMPLATE).cloned().unwrap_or_default(),
                    replicas: c.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                    ready_replicas: c
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0),
                });
            let stable_service = self
                .api::<Service>(rollout)
                .get_opt(&format!("{}-stable", rollout.spec.workload_ref.name))
                .await?
                .and_then(|s| s.spec?.selector?.get("pod-template-hash").cloned());
            Ok(Some(Workload {
                deployment: DeploymentView {
                    generation: d.metadata.generation.unwrap_or(0),
                    observed_generation: status.observed_generation.unwrap_or(0),
                    paused: spec.paused.unwrap_or(false),
                    replicas: spec.replicas.unwrap_or(1),
                    updated_replicas: status.updated_replicas.unwrap_or(0),
                    available_replicas: status.available_replicas.unwrap_or(0),
                    template,
                    template_hash,
                },
                canary,
                stable_service,
            }))
        })
    }

    fn set_paused<'a>(&'a self, rollout: &'a Rollout, paused: bool) -> WorkloadFuture<'a, ()> {
        Box::pin(async move {
            // A merge patch of one field: nothing else of the user's Deployment is touched,
            // and no field of it comes under tidegate's management.
            let patch = serde_json::json!({"spec": {"paused": paused}});
            self.api::<Deployment>(rollout)
                .patch(
                    &rollout.spec.workload_ref.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            Ok(())
        })
    }

    fn apply_canary<'a>(&'a self, rollout: &'a Rollout, replicas: i32) -> WorkloadFuture<'a, ()> {
        Box::pin(async move {
            let Some(d) = self.deployment(rollout).await? else {
                return Ok(());
            };
            let spec = d.spec.clone().unwrap_or_default();
            let mut template = spec.template.clone();
            let identity = template_identity(&template);
            let meta = template.metadata.get_or_insert_with(Default::default);
            meta.labels
                .get_or_insert_with(Default::default)
                .insert(TRACK.into(), "canary".into());
            let mut match_labels = selector(&d);
            match_labels.insert(TRACK.into(), "canary".into());
            let canary = serde_json::json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": canary_name(rollout),
                    "annotations": {TEMPLATE: identity},
                    "labels": {"app.kubernetes.io/managed-by": "tidegate"},
                    "ownerReferences": owner(rollout),
                },
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": match_labels},
                    "template": template,
                },
            });
            self.api::<Deployment>(rollout)
                .patch(
                    &canary_name(rollout),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&canary),
                )
                .await?;
            Ok(())
        })
    }

    fn delete_canary<'a>(&'a self, rollout: &'a Rollout) -> WorkloadFuture<'a, ()> {
        Box::pin(async move {
            match self
                .api::<Deployment>(rollout)
                .delete(&canary_name(rollout), &DeleteParams::default())
                .await
            {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e),
            }
        })
    }

    fn apply_services<'a>(
        &'a self,
        rollout: &'a Rollout,
        stable_hash: &'a str,
    ) -> WorkloadFuture<'a, ()> {
        Box::pin(async move {
            let Some(d) = self.deployment(rollout).await? else {
                return Ok(());
            };
            let name = &rollout.spec.workload_ref.name;
            let port = rollout.spec.route.port.map(i32::from).unwrap_or_else(|| {
                d.spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|p| p.containers.first())
                    .and_then(|c| c.ports.as_ref()?.first().map(|p| p.container_port))
                    .unwrap_or(80)
            });
            let base = selector(&d);
            for (suffix, extra) in [
                ("stable", ("pod-template-hash", stable_hash)),
                ("canary", (TRACK, "canary")),
            ] {
                let mut select = base.clone();
                select.insert(extra.0.into(), extra.1.into());
                let service = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {
                        "name": format!("{name}-{suffix}"),
                        "labels": {"app.kubernetes.io/managed-by": "tidegate"},
                        "ownerReferences": owner(rollout),
                    },
                    "spec": {
                        "selector": select,
                        "ports": [{"name": "http", "port": port, "targetPort": port}],
                    },
                });
                self.api::<Service>(rollout)
                    .patch(
                        &format!("{name}-{suffix}"),
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&service),
                    )
                    .await?;
            }
            Ok(())
        })
    }
}
