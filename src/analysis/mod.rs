//! Canary analysis: metric specs, conditions, providers, and the Pass / Fail / Inconclusive verdict.

pub mod builtin;
pub mod codes;
pub mod condition;
pub mod http;
pub mod prometheus;
pub mod sequential;
pub mod spec;
pub mod verdict;

use std::sync::Arc;
use std::time::Duration;

pub use condition::Condition;
use sequential::Slice;
pub use spec::{AnalysisSpec, BackgroundAnalysis, MetricSpec, ProviderSpec};
pub use verdict::{Measurement, MetricTally, Outcome, Reading, RequestCounts, Verdict, judge};

use crate::health::Endpoint;
use crate::metrics::VersionStats;

/// What a measurement may look at, and the variables queries may use.
#[derive(Clone)]
pub struct MeasureContext {
    pub vars: Vars,
    pub canary: Option<Arc<VersionStats>>,
    pub stable: Option<Arc<VersionStats>>,
    pub canary_endpoints: Vec<Arc<Endpoint>>,
    /// Where the analysis run began on the process clock (`clock::now_ms`): builtin windows
    /// leave out what was served before, by an earlier revision among others.
    pub since_ms: u64,
    /// Unix ms at process clock 0 (`clock::unix_offset_ms`): stamps seconds in unix time.
    pub unix_offset_ms: u64,
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

/// Takes one measurement of `metric`; a builtin one also says how many requests it judged.
pub async fn measure(
    metric: &MetricSpec,
    ctx: &MeasureContext,
) -> (Reading, Option<RequestCounts>) {
    match &metric.provider {
        ProviderSpec::Builtin(b) if metric.sequential().is_some() => {
            measure_seconds(b, ctx, crate::clock::now_ms())
        }
        ProviderSpec::Builtin(b) => {
            measure_window(b, metric.min_requests, ctx, crate::clock::now_ms())
        }
        ProviderSpec::Prometheus(p) => (prometheus::measure(p, &ctx.vars).await, None),
        ProviderSpec::Http(h) => (http::measure(h, &ctx.vars).await, None),
        ProviderSpec::Healthcheck(_) => (healthy_share(&ctx.canary_endpoints), None),
    }
}

/// One value over the builtin metric's window ending at `now_ms`.
pub fn measure_window(
    b: &spec::BuiltinMetric,
    min_requests: Option<u64>,
    ctx: &MeasureContext,
    now_ms: u64,
) -> (Reading, Option<RequestCounts>) {
    let Some(canary) = &ctx.canary else {
        let why = "the canary has no traffic counters yet";
        return (Reading::NoData(why.into()), None);
    };
    let canary = canary.window(now_ms, b.window, ctx.since_ms);
    let stable = ctx
        .stable
        .as_ref()
        .map(|s| s.window(now_ms, b.window, ctx.since_ms));
    let counts = RequestCounts {
        canary: canary.requests(),
        stable: stable.as_ref().map(|s| s.requests()),
    };
    let reading = builtin::read(b, min_requests, &canary, stable.as_ref());
    (reading, Some(counts))
}

/// The whole seconds since the run began (or the judge last looked), up to `now_ms`, for
/// the sequential judge.
pub fn measure_seconds(
    b: &spec::BuiltinMetric,
    ctx: &MeasureContext,
    now_ms: u64,
) -> (Reading, Option<RequestCounts>) {
    let (Some(canary), Some(stable)) = (&ctx.canary, &ctx.stable) else {
        let why = "no stable version to compare with";
        return (Reading::NoData(why.into()), None);
    };
    let now_s = now_ms / 1000;
    let seconds = ctx.since_ms.div_ceil(1000)..now_s;
    let mut slices = builtin::slices(b, canary, stable, seconds, ctx.unix_offset_ms);
    if ctx.since_ms <= now_s * 1000 {
        let running = builtin::slices(b, canary, stable, now_s..now_s + 1, ctx.unix_offset_ms);
        slices.extend(running.into_iter().map(|s| Slice { running: true, ..s }));
    }
    (Reading::Slices(slices), None)
}

/// The share of the canary's endpoints its active health checks find healthy.
fn healthy_share(endpoints: &[Arc<Endpoint>]) -> Reading {
    if endpoints.is_empty() {
        return Reading::NoData("the canary has no endpoints".into());
    }
    let now = crate::clock::now_ms();
    let healthy = endpoints.iter().filter(|e| e.is_healthy(now)).count();
    Reading::Value(healthy as f64 / endpoints.len() as f64)
}

/// How long a measurement may take before it counts as a provider error.
pub fn measure_timeout(metric: &MetricSpec) -> Duration {
    match &metric.provider {
        ProviderSpec::Prometheus(p) => p.timeout,
        ProviderSpec::Http(h) => h.timeout,
        _ => Duration::from_secs(5),
    }
}
