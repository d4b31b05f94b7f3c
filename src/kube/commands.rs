//! `tidegate promote|abort|pause|resume|retry|restart|status --kube`: a command is asked of
//! whichever controller leads by an annotation on the Rollout, and its answer read back from
//! the Rollout's status; the same output and exit codes as local mode.

use std::time::Duration;

use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::crd::{COMMAND_ANNOTATION, CommandRequest, Rollout};
use crate::cli::{CliError, exit};
use crate::rollout::RolloutStatus;

/// How long a command waits for a controller to answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

fn api_error(e: kube::Error, what: &str) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 404 => CliError {
            message: format!("no {what}"),
            code: exit::REFUSED,
        },
        e => CliError {
            message: format!("Kubernetes API: {e}"),
            code: exit::UNREACHABLE,
        },
    }
}

/// A client from `KUBECONFIG`, `~/.kube/config` or the pod's service account.
pub async fn client() -> Result<Client, CliError> {
    Client::try_default().await.map_err(|e| CliError {
        message: format!("no Kubernetes cluster to talk to: {e}"),
        code: exit::UNREACHABLE,
    })
}

/// Asks for `command` on the Rollout `name` and waits for the controller's answer: the
/// rollout's status record once applied, or the refusal.
pub async fn ask(
    client: Client,
    namespace: &str,
    name: &str,
    command: &str,
    full: bool,
    within: Duration,
) -> Result<RolloutStatus, CliError> {
    let api: Api<Rollout> = Api::namespaced(client, namespace);
    let what = format!("Rollout `{name}` in namespace `{namespace}`");
    let request = CommandRequest {
        id: format!("{:032x}", fastrand::u128(..)),
        command: command.to_string(),
        full,
    };
    let text = serde_json::to_string(&request).unwrap_or_default();
    let patch = serde_json::json!({"metadata": {"annotations": {COMMAND_ANNOTATION: text}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| api_error(e, &what))?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let rollout = api.get(name).await.map_err(|e| api_error(e, &what))?;
        let status = rollout.status.unwrap_or_default();
        if let Some(answer) = status.last_command.filter(|l| l.id == request.id) {
            return match (answer.applied, status.rollout) {
                (true, Some(record)) => Ok(record),
                (_, _) => Err(CliError {
                    message: format!("cannot {command} {what}: {}", answer.message),
                    code: exit::REFUSED,
                }),
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError {
                message: format!(
                    "no controller answered within {}s: is `tidegate controller` running for namespace `{namespace}`?",
                    within.as_secs()
                ),
                code: exit::UNREACHABLE,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status record of one Rollout.
pub async fn status(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<RolloutStatus, CliError> {
    let api: Api<Rollout> = Api::namespaced(client, namespace);
    let what = format!("Rollout `{name}` in namespace `{namespace}`");
    let rollout = api.get(name).await.map_err(|e| api_error(e, &what))?;
    rollout.status.and_then(|s| s.rollout).ok_or(CliError {
        message: format!("{what} has no status yet: is `tidegate controller` running?"),
        code: exit::REFUSED,
    })
}

/// The status records of every Rollout of the namespace that has one.
pub async fn list(client: Client, namespace: &str) -> Result<Vec<RolloutStatus>, CliError> {
    let api: Api<Rollout> = Api::namespaced(client, namespace);
    let rollouts = api
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error(e, "Rollouts"))?;
    Ok(rollouts
        .items
        .into_iter()
        .filter_map(|r| r.status?.rollout)
        .collect())
}
