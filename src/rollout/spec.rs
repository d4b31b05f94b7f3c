//! The rollout spec: which version rolls out, its steps, analysis, and what happens to the old version.
//!
//! camelCase, like the Kubernetes `Rollout` resource these same types back.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::{AnalysisSpec, BackgroundAnalysis, MetricSpec, ProviderSpec, http_url};
use crate::units::{
    FULL_WEIGHT, FieldError, WeightBps, serde_duration, serde_opt_duration, serde_weight,
};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Local mode: the version to roll out. Changing it (or its endpoints or revision) starts
    /// a rollout. Kubernetes mode leaves it out: the Deployment's new pod template is the canary.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub canary: String,
    /// The version serving before the first rollout; later the last promoted canary is stable.
    /// Default: the first version that is not the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    // Steps are one-key maps (`setWeight: 10`), not YAML tags.
    #[serde(default, with = "yaml_serde::with::singleton_map_recursive")]
    #[schemars(with = "Vec<Step>")]
    pub steps: Vec<Step>,
    /// Analysis running through the rollout, from `startingStep` on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
    /// Highest canary weight a `setWeight` step may set (promotion still goes to 100).
    #[serde(default = "full_weight", with = "serde_weight")]
    #[schemars(with = "f64")]
    pub max_weight: WeightBps,
    /// Pin clients to the version they got (cookie `tidegate-<route>`), while it has weight.
    #[serde(default)]
    pub sticky_sessions: bool,
    /// A header testers send to force a version, e.g. `x-tidegate-version` with value `canary`
    /// (the version's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_route: Option<String>,
    /// After promotion, how long requests and upgraded connections in flight on the old version
    /// may take to finish before it is removed anyway.
    #[serde(default = "default_drain", with = "serde_duration")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// After promotion, keep the old version at least this long before removing it (a quick
    /// way back while it still runs).
    #[serde(default, with = "serde_duration")]
    #[schemars(with = "String")]
    pub scale_down_delay: Duration,
    /// Kubernetes: after an abort, how long the canary's pods stay up (for inspection, or a
    /// quick retry) before `<name>-canary` is scaled to zero.
    #[serde(default = "default_drain", with = "serde_duration")]
    #[schemars(with = "String")]
    pub abort_scale_down_delay: Duration,
    /// A step (other than a pause waiting for a human) taking longer than this aborts the rollout.
    #[serde(default = "default_deadline", with = "serde_duration")]
    #[schemars(with = "String")]
    pub progress_deadline: Duration,
    /// Local mode: a shell command run when an old version is removed, e.g.
    /// `systemctl stop app@{version}`; `{route}` and `{version}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_remove: Option<String>,
    /// A webhook told (JSON with a Slack-compatible `text`) when a rollout starts, completes a
    /// step, pauses, aborts or completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifySpec>,
}

fn full_weight() -> WeightBps {
    FULL_WEIGHT
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_deadline() -> Duration {
    Duration::from_secs(600)
}

/// One step, written as a one-key map: `setWeight: 12.5`, `pause: {duration: 2m}`,
/// `pause: {}` (wait for promote), `analysis: {metrics: [...]}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Step {
    SetWeight(
        #[serde(with = "serde_weight")]
        #[schemars(with = "f64")]
        WeightBps,
    ),
    Pause(PauseStep),
    Analysis(AnalysisSpec),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PauseStep {
    /// Without a duration the rollout waits for `promote`.
    #[serde(
        default,
        with = "serde_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifySpec {
    pub webhook: String,
}

impl RolloutSpec {
    /// The stable version before any rollout, of a route with `versions`: `stable` if given,
    /// else the first version that is not the canary, else the canary itself (a route with
    /// one version has nothing to roll out).
    pub fn initial_stable<'a>(&'a self, versions: &[&'a str]) -> &'a str {
        self.stable.as_deref().unwrap_or_else(|| {
            versions
                .iter()
                .copied()
                .find(|v| *v != self.canary)
                .unwrap_or(&self.canary)
        })
    }

    /// Checks what serde cannot, given the route's version names; returns a field path
    /// relative to the rollout and what is wrong.
    pub fn validate(&self, versions: &[&str]) -> Result<(), FieldError> {
        if self.canary.is_empty() {
            return Err(FieldError::new(
                "canary",
                "which version to roll out is needed, e.g. `canary: v2`",
            ));
        }
        if !versions.contains(&self.canary.as_str()) {
            return Err(FieldError::new(
                "canary",
                format!("no version named `{}` in this route", self.canary),
            ));
        }
        if let Some(stable) = &self.stable
            && !versions.contains(&stable.as_str())
        {
            return Err(FieldError::new(
                "stable",
                format!("no version named `{stable}` in this route"),
            ));
        }
        if let Some(at) = self.default_prometheus_at() {
            return Err(FieldError::new(
                at,
                "the Prometheus server's URL is needed, e.g. http://127.0.0.1:9090",
            ));
        }
        self.validate_strategy()
    }

    /// Every analysis's metrics, with where they are: `steps[i].analysis` or `analysis`.
    fn analyses(&self) -> impl Iterator<Item = (String, &[MetricSpec])> {
        let steps = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, step)| match step {
                Step::Analysis(a) => Some((format!("steps[{i}].analysis"), a.metrics.as_slice())),
                _ => None,
            });
        let background = self
            .analysis
            .iter()
            .map(|a| ("analysis".to_string(), a.metrics.as_slice()));
        steps.chain(background)
    }

    /// The field of the first Prometheus metric that leaves its address to the controller's
    /// default: refused in a local config, filled in on a cluster.
    pub fn default_prometheus_at(&self) -> Option<String> {
        self.analyses().find_map(|(at, metrics)| {
            metrics
                .iter()
                .position(
                    |m| matches!(&m.provider, ProviderSpec::Prometheus(p) if p.address.is_empty()),
                )
                .map(|j| format!("{at}.metrics[{j}].provider.prometheus.address"))
        })
    }

    /// Checks a rollout of a Kubernetes workload: its versions are the Deployment's pod
    /// templates, so it names none, and nothing runs commands on the controller's host.
    pub fn validate_for_cluster(&self) -> Result<(), FieldError> {
        for (field, set) in [
            ("canary", !self.canary.is_empty()),
            ("stable", self.stable.is_some()),
            ("onRemove", self.on_remove.is_some()),
        ] {
            if set {
                return Err(FieldError::new(
                    field,
                    "not for a Kubernetes rollout: the Deployment's pod templates are its versions",
                ));
            }
        }
        if !self.scale_down_delay.is_zero() {
            return Err(FieldError::new(
                "scaleDownDelay",
                "not for a Kubernetes rollout: the old pods are replaced once drained (drainTimeout)",
            ));
        }
        for (at, metrics) in self.analyses() {
            if let Some(j) = metrics
                .iter()
                .position(|m| matches!(m.provider, ProviderSpec::Healthcheck(_)))
            {
                return Err(FieldError::new(
                    format!("{at}.metrics[{j}].provider"),
                    "healthcheck is for local mode: on a cluster the pods' readiness already decides which endpoints get traffic",
                ));
            }
        }
        self.validate_strategy()
    }

    /// What both modes check: steps, analysis, limits, header and webhook.
    fn validate_strategy(&self) -> Result<(), FieldError> {
        if self.max_weight == 0 {
            return Err(FieldError::new("maxWeight", "must be above 0"));
        }
        for (i, step) in self.steps.iter().enumerate() {
            if let Step::Analysis(a) = step {
                if a.metrics.is_empty() {
                    return Err(FieldError::new(
                        format!("steps[{i}].analysis.metrics"),
                        "at least one metric is needed",
                    ));
                }
                for (j, m) in a.metrics.iter().enumerate() {
                    m.validate()
                        .map_err(|e| e.under(&format!("steps[{i}].analysis.metrics[{j}]")))?;
                }
            }
        }
        if let Some(bg) = &self.analysis {
            if bg.starting_step > self.steps.len() {
                return Err(FieldError::new(
                    "analysis.startingStep",
                    format!("there are only {} steps", self.steps.len()),
                ));
            }
            if bg.metrics.is_empty() {
                return Err(FieldError::new(
                    "analysis.metrics",
                    "at least one metric is needed",
                ));
            }
            for (j, m) in bg.metrics.iter().enumerate() {
                m.validate()
                    .map_err(|e| e.under(&format!("analysis.metrics[{j}]")))?;
            }
        }
        if let Some(h) = &self.header_route
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(FieldError::new(
                "headerRoute",
                format!("`{h}` is not a header name"),
            ));
        }
        if let Some(n) = &self.notify {
            http_url(&n.webhook).map_err(|e| FieldError::new("notify.webhook", e))?;
        }
        Ok(())
    }
}
