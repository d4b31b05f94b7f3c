//! Canary analysis: metric specs, conditions, providers, and the Pass / Fail / Inconclusive verdict.

pub mod builtin;
pub mod codes;
pub mod condition;
pub mod http;
pub mod json_path;
pub mod prometheus;
pub mod sequential;
pub mod spec;
pub mod verdict;

use std::sync::Arc;
use std::time::Duration;

pub use condition::Condition;
use sequential::Slice;
pub use spec::{AnalysisSpec, BackgroundAnalysis, MetricSpec, ProviderSpec, http_url};
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
            let wait = window_wait(ctx.since_ms, crate::clock::now_ms());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            measure_window(b, metric.min_requests, ctx, crate::clock::now_ms())
        }
        ProviderSpec::Prometheus(p) => (prometheus::measure(p, &ctx.vars).await, None),
        ProviderSpec::Http(h) => (http::measure(h, &ctx.vars).await, None),
        ProviderSpec::Healthcheck(_) => (healthy_share(&ctx.canary_endpoints), None),
    }
}

/// How long a window measurement taken at `now_ms` waits for its window to hold traffic.
/// Windows count whole seconds and leave out the second the run began in (it may hold an
/// earlier revision's requests), so a look 400 ms into a run would read an empty window:
/// it waits until the window covers as much of the run as it would with exact bounds, up to
/// one second. Later looks wait less, and none once the run is a second past that second.
pub fn window_wait(since_ms: u64, now_ms: u64) -> Duration {
    let first_whole_ms = since_ms.div_ceil(1000) * 1000;
    let looked = now_ms.saturating_sub(since_ms);
    let wanted_until = first_whole_ms + looked.min(1000);
    Duration::from_millis(wanted_until.saturating_sub(now_ms))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_early_look_waits_until_its_window_holds_the_run() {
        // The run began at 12.9 s; the first look, 400 ms later, would see no whole second.
        assert_eq!(window_wait(12_900, 13_300), Duration::from_millis(100));
        // A run that began on a second boundary loses nothing: no wait.
        assert_eq!(window_wait(13_000, 13_400), Duration::ZERO);
        // Started at 12.1 s: a look at 12.5 s waits for 13.4 s, one at 13.5 s for 14.0 s.
        assert_eq!(window_wait(12_100, 12_500), Duration::from_millis(900));
        assert_eq!(window_wait(12_100, 13_500), Duration::from_millis(500));
        // From one second past the first whole second on, looks are never held back.
        assert_eq!(window_wait(12_100, 14_000), Duration::ZERO);
        assert_eq!(window_wait(12_100, 60_000), Duration::ZERO);
    }

    #[test]
    fn a_look_after_its_wait_reads_the_runs_requests_only() {
        let canary = Arc::new(VersionStats::new("app".into(), "v2".into()));
        // An earlier revision's errors in the second the run began in, then the run's own.
        canary.record_at(503, Duration::from_millis(5), 12_100);
        for t in [12_950, 13_050, 13_150, 13_250, 13_350] {
            canary.record_at(200, Duration::from_millis(5), t);
        }
        let ctx = MeasureContext {
            vars: Vars::default(),
            canary: Some(canary),
            stable: None,
            canary_endpoints: Vec::new(),
            since_ms: 12_900,
            unix_offset_ms: 0,
        };
        let b: spec::BuiltinMetric =
            yaml_serde::from_str("{metric: errorRate, window: 2s}").expect("metric");
        let early = 13_300;
        let (reading, _) = measure_window(&b, Some(3), &ctx, early - 400);
        assert!(matches!(reading, Reading::NoData(_)), "{reading:?}");
        let at = early + window_wait(ctx.since_ms, early).as_millis() as u64;
        let (reading, counts) = measure_window(&b, Some(3), &ctx, at);
        assert_eq!(reading, Reading::Value(0.0));
        assert_eq!(counts.map(|c| c.canary), Some(4), "13.0 s through 13.4 s");
    }
}
