//! A client for the real Kubernetes API server `../shared/tools/k8s-testenv up` starts
//! (`TIDEGATE_TEST_KUBECONFIG`), with the Rollout CRD installed, and a namespace per test.
#![allow(dead_code)]

pub mod sim;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, CustomResourceExt};
use tidegate::kube::Rollout;

/// A client of the test API server. Panics with what to run when there is none: these tests
/// need a real server (scripts/test.sh starts one).
pub async fn client() -> Client {
    let path = std::env::var("TIDEGATE_TEST_KUBECONFIG").unwrap_or_else(|_| {
        panic!(
            "TIDEGATE_TEST_KUBECONFIG is not set: run `eval \"$(../shared/tools/k8s-testenv up)\"` (scripts/test.sh does)"
        )
    });
    let kubeconfig = Kubeconfig::read_from(&path).expect("read the test kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("test kubeconfig is usable");
    Client::try_from(config).expect("client")
}

/// Installs (or updates) the Rollout CRD from the Rust types and waits until it is served.
pub async fn install_crd(client: &Client) {
    apply_crd(client, Rollout::crd()).await;
}

/// A namespace name of its own for one test run.
pub fn namespace(test: &str) -> String {
    format!("{test}-{:08x}", fastrand::u32(..))
}

/// Serves `coordination.k8s.io/v1` Leases as a CRD (the test server has no built-in kinds),
/// so `Api<Lease>` works unchanged.
pub async fn install_lease_crd(client: &Client) {
    install_builtin_kind(client, "coordination.k8s.io", "Lease", "leases").await;
}

/// Serves `discovery.k8s.io/v1` EndpointSlices as a CRD, so `Api<EndpointSlice>` works; the
/// tests write the slices an EndpointSlice controller would.
pub async fn install_endpointslice_crd(client: &Client) {
    install_builtin_kind(
        client,
        "discovery.k8s.io",
        "EndpointSlice",
        "endpointslices",
    )
    .await;
}

/// Serves `events.k8s.io/v1` Events as a CRD, so the controller's event recorder works.
pub async fn install_event_crd(client: &Client) {
    install_builtin_kind(client, "events.k8s.io", "Event", "events").await;
}

/// A built-in kind (`<group>/v1`, namespaced) served as a schemaless CRD in its real group.
async fn install_builtin_kind(client: &Client, group: &str, kind: &str, plural: &str) {
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{group}"),
            "annotations": {"api-approved.kubernetes.io": "unapproved, test only"}
        },
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "singular": kind.to_lowercase(), "listKind": format!("{kind}List")},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .expect("CRD of a built-in kind");
    apply_crd(client, crd).await;
}

async fn apply_crd(client: &Client, crd: CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.metadata.name.clone().expect("a name");
    crds.patch(
        &name,
        &PatchParams::apply("tidegate-tests").force(),
        &Patch::Apply(crd),
    )
    .await
    .unwrap_or_else(|e| panic!("CRD {name} installs: {e}"));
    for _ in 0..100 {
        let crd = crds.get(&name).await.expect("get CRD");
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("CRD {name} was not established");
}
