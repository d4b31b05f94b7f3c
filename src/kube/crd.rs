//! The `Rollout` custom resource (`tidegate.dev/v1alpha1`): which Deployment, which route,
//! and the same rollout spec as a local config's; its status is the same status record.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rollout::{RolloutSpec, RolloutStatus};

/// A rollout of a Deployment's new pod template, routed by tidegate's proxies.
#[derive(CustomResource, Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "tidegate.dev",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutResourceStatus",
    shortname = "tgr",
    category = "tidegate",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.stepOf"}"#,
    printcolumn = r#"{"name":"Canary weight","type":"number","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stableRevision"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canaryRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutResourceSpec {
    /// The Deployment whose pod template changes are rolled out.
    pub workload_ref: WorkloadRef,
    /// Where the proxies route this service's traffic.
    #[serde(default)]
    pub route: RouteRef,
    /// Steps, analysis, timings: the rollout spec of a local config's `rollout` section.
    #[serde(flatten)]
    pub strategy: RolloutSpec,
}

/// The workload a rollout drives.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// `apps/v1`.
    #[serde(default = "default_api_version")]
    #[schemars(regex(pattern = r"^apps/v1$"))]
    pub api_version: String,
    /// `Deployment`.
    #[serde(default = "default_kind")]
    #[schemars(regex(pattern = r"^Deployment$"))]
    pub kind: String,
    /// The Deployment's name, in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_api_version() -> String {
    "apps/v1".into()
}

fn default_kind() -> String {
    "Deployment".into()
}

/// Which requests are this service's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRef {
    /// Exact host (port ignored, case-insensitive) or `*.example.com`; any host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix, on whole segments; `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/"))]
    pub path_prefix: Option<String>,
    /// The pods' port the proxies send to; the Deployment's first container port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
}

/// A promotion in progress: its stage and since when (unix ms), and the new stable pods'
/// `pod-template-hash` once the Deployment has rolled.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    pub stage: super::plan::Stage,
    pub since: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_revision: Option<String>,
}

/// The annotation a command is asked for by (`tidegate promote --kube` and the others): a
/// JSON `CommandRequest`. Whichever controller leads handles it once.
pub const COMMAND_ANNOTATION: &str = "tidegate.dev/command";

/// A command asked of the controller.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRequest {
    /// Unique per request: a command is handled once.
    pub id: String,
    /// `promote`, `abort`, `pause`, `resume`, `retry` or `restart`.
    pub command: String,
    #[serde(default)]
    pub full: bool,
}

/// What came of a command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandOutcome {
    pub id: String,
    pub command: String,
    pub applied: bool,
    pub message: String,
}

/// What the controller records: the rollout's status record (the same as a local state
/// file's), the revisions it concerns, and the usual Kubernetes conditions.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutResourceStatus {
    /// The `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Progressing`, `Available`, `InvalidSpec`, `Aborted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// `pod-template-hash` of the stable pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The step the rollout is at, counted from 1 as the CLI counts, out of how many
    /// (`2/4`): what `kubectl get rollouts` shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_of: Option<String>,
    /// tidegate's identity of the stable pod template: a Deployment template that differs
    /// is a canary to roll out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_template: Option<String>,
    /// Where a promotion stands once the steps are done (see `plan::Stage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// The last command handled (`tidegate.dev/command`), and what came of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_command: Option<CommandOutcome>,
    /// Step, weights, timers, analysis tallies, draining versions, history.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
}

/// The CustomResourceDefinition as YAML, as `tidegate crdgen` prints it and
/// `deploy/kubernetes/crd.yaml` holds it.
pub fn definition_yaml() -> String {
    let crd = Rollout::crd();
    format!(
        "# Generated by `tidegate crdgen`; do not edit.\n{}",
        yaml_serde::to_string(&crd).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_definition_is_the_generated_one() {
        let committed = include_str!("../../deploy/kubernetes/crd.yaml");
        assert!(
            committed == definition_yaml(),
            "deploy/kubernetes/crd.yaml is stale: run `cargo run -- crdgen > deploy/kubernetes/crd.yaml`"
        );
    }

    #[test]
    fn a_rollout_reads_the_same_spec_as_a_local_config() {
        let r: RolloutResourceSpec = yaml_serde::from_str(
            r#"
workloadRef: {name: shop}
route: {host: shop.example.com, port: 8080}
steps:
  - setWeight: 10
  - pause: {duration: 2m}
analysis:
  metrics:
    - name: errors
      interval: 1s
      provider: {builtin: {metric: errorRate, compare: stable}}
drainTimeout: 45s
"#,
        )
        .expect("parses");
        assert_eq!(r.workload_ref.kind, "Deployment");
        assert_eq!(r.route.port, Some(8080));
        assert_eq!(r.strategy.steps.len(), 2);
        assert_eq!(r.strategy.drain_timeout, std::time::Duration::from_secs(45));
        let printed: Vec<String> = Rollout::crd().spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            printed,
            ["Phase", "Step", "Canary weight", "Stable", "Canary", "Age"]
        );
    }
}
