//! The controller's side effects: measurements, notifications, `onRemove` commands.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Inner, Rollout, Wake, unix_ms};
use crate::analysis::{self, MeasureContext, Reading, Vars, judge};
use crate::rollout::{Event, MeasureRequest, MeasurementResult};

/// Takes one measurement in the background and hands the result to the rollout's task.
pub(super) fn measure(
    inner: &Arc<Inner>,
    route: &str,
    r: &Rollout,
    ask: MeasureRequest,
    reply: mpsc::UnboundedSender<Wake>,
) {
    let MeasureRequest {
        run_id,
        index,
        metric,
        since,
    } = ask;
    let canary = r
        .status
        .canary
        .clone()
        .unwrap_or_else(|| r.spec.canary.clone());
    let stable = r.status.stable.clone();
    let canary_endpoints = inner
        .publisher
        .get()
        .and_then(|p| {
            let table = p.current();
            let route = table.route(route)?;
            let i = route.version_index(&canary)?;
            Some(route.versions[i].endpoints.to_vec())
        })
        .unwrap_or_default();
    let ctx = MeasureContext {
        vars: Vars {
            route: route.to_string(),
            canary: canary.clone(),
            stable: stable.clone(),
            namespace: String::new(),
        },
        canary: Some(inner.metrics.version(route, &canary)),
        stable: (stable != canary).then(|| inner.metrics.version(route, &stable)),
        canary_endpoints,
        // The run's start on the process clock the windows count in.
        since_ms: since.saturating_sub(crate::clock::unix_offset_ms()),
        unix_offset_ms: crate::clock::unix_offset_ms(),
    };
    tokio::spawn(async move {
        // The provider's own timeout applies inside; this one only guards against a hang.
        let limit = analysis::measure_timeout(&metric) + Duration::from_secs(1);
        let (reading, requests) =
            match tokio::time::timeout(limit, analysis::measure(&metric, &ctx)).await {
                Ok(r) => r,
                Err(_) => (Reading::Error(format!("no answer within {limit:?}")), None),
            };
        let measurement = judge(&metric, reading, unix_ms()).based_on(requests);
        let _ = reply.send(Wake::Measured(MeasurementResult {
            run_id,
            metric: index,
            measurement,
        }));
    });
}

/// Posts the event to the rollout's webhook in the background; failures are logged.
pub(super) fn notify(webhook: String, route: String, event: Event) {
    tokio::spawn(async move {
        let payload = crate::notify::NotifyPayload::new(&route, &event);
        if let Err(e) = crate::notify::post_event(&webhook, &payload).await {
            tracing::warn!(rollout = %route, %webhook, error = %e, "notification not delivered");
        }
    });
}

/// Runs the `onRemove` command for a removed version and logs how it went.
pub(super) fn on_remove(command: String, route: String, version: String) {
    let command = command
        .replace("{route}", &route)
        .replace("{version}", &version);
    tokio::spawn(async move {
        let run = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .env("TIDEGATE_ROUTE", &route)
            .env("TIDEGATE_VERSION", &version)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(300), run).await {
            Ok(Ok(out)) if out.status.success() => {
                tracing::info!(rollout = %route, %version, %command, "onRemove command succeeded");
            }
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr
                    .chars()
                    .rev()
                    .take(500)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                tracing::error!(rollout = %route, %version, %command, status = %out.status, stderr = %tail.trim(), "onRemove command failed");
            }
            Ok(Err(e)) => {
                tracing::error!(rollout = %route, %version, %command, error = %e, "onRemove command could not start")
            }
            Err(_) => {
                tracing::error!(rollout = %route, %version, %command, "onRemove command still running after 5 minutes; killed")
            }
        }
    });
}
