//! Canary analysis: metric specs, conditions, providers, and the Pass / Fail / Inconclusive verdict.

pub mod builtin;
pub mod condition;
pub mod http;
pub mod prometheus;
pub mod spec;
pub mod verdict;

use std::sync::Arc;
use std::time::Duration;

pub use condition::Condition;
pub use spec::{AnalysisSpec, BackgroundAnalysis, MetricSpec, ProviderSpec};
pub use verdict::{Measurement, MetricTally, Outcome, Reading, Verdict, judge};

use crate::health::Endpoint;
use crate::metrics::VersionStats;

/// What a measurement may look at, and the variables queries may use.
#[derive(Clone)]
pub struct MeasureContext {
    pub vars: Vars,
    pub canary: Option<Arc<VersionStats>>,
    pub stable: Option<Arc<VersionStats>>,
    pub canary_endpoints: Vec<Arc<Endpoint>>,
}

/// Values filled into `{{route}}`, `{{version}}` (the canary), `{{canary}}`, `{{stable}}`,
/// `{{namespace}}` in PromQL queries, webhook URLs and bodies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vars {
    pub route: String,
    pub canary: String,
    pub stable: String,
    /// Kubernetes namespace; empty in local mode.
    pub namespace: String,
}

impl Vars {
    pub fn fill(&self, template: &str) -> String {
        template
            .replace("{{route}}", &self.route)
            .replace("{{version}}", &self.canary)
            .replace("{{canary}}", &self.canary)
            .replace("{{stable}}", &self.stable)
            .replace("{{namespace}}", &self.namespace)
    }
}

/// Takes one measurement of `metric`.
pub async fn measure(metric: &MetricSpec, ctx: &MeasureContext) -> Reading {
    match &metric.provider {
        ProviderSpec::Builtin(b) => {
            let Some(canary) = &ctx.canary else {
                return Reading::NoData("the canary has no traffic counters yet".into());
            };
            let span = b.window;
            let stable = ctx.stable.as_ref().map(|s| s.window(span));
            builtin::read(
                b,
                metric.min_requests,
                &canary.window(span),
                stable.as_ref(),
            )
        }
        ProviderSpec::Prometheus(p) => prometheus::measure(p, &ctx.vars).await,
        ProviderSpec::Http(h) => http::measure(h, &ctx.vars).await,
        ProviderSpec::Healthcheck(_) => {
            let now = crate::clock::now_ms();
            let total = ctx.canary_endpoints.len();
            if total == 0 {
                return Reading::NoData("the canary has no endpoints".into());
            }
            let healthy = ctx
                .canary_endpoints
                .iter()
                .filter(|e| e.is_healthy(now))
                .count();
            Reading::Value(healthy as f64 / total as f64)
        }
    }
}

/// How long a measurement may take before it counts as a provider error.
pub fn measure_timeout(metric: &MetricSpec) -> Duration {
    match &metric.provider {
        ProviderSpec::Prometheus(p) => p.timeout,
        ProviderSpec::Http(h) => h.timeout,
        _ => Duration::from_secs(5),
    }
}
