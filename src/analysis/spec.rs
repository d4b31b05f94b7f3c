//! What an analysis measures: metrics, their providers, conditions and limits (the YAML schema).

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::codes::ErrorCode;
use super::condition::Condition;
use super::sequential::Settings;
use crate::units::{FieldError, serde_duration};

/// A set of metrics judged together: a step analysis or the background analysis.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisSpec {
    pub metrics: Vec<MetricSpec>,
}

/// Analysis that runs through the whole rollout, from `startingStep` on.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackgroundAnalysis {
    /// Index of the step from which the background analysis runs (0 = from the start).
    #[serde(default)]
    pub starting_step: usize,
    pub metrics: Vec<MetricSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricSpec {
    pub name: String,
    // A one-key map (`builtin: {...}`), not a YAML tag.
    #[serde(with = "yaml_serde::with::singleton_map")]
    #[schemars(with = "ProviderSpec")]
    pub provider: ProviderSpec,
    /// Time between measurements.
    #[serde(default = "default_interval", with = "serde_duration")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Measurements to take; a step analysis completes after this many (default 1). The
    /// background analysis ignores it and measures until the rollout ends.
    #[serde(default)]
    pub count: Option<u32>,
    /// e.g. `result < 0.01`. When it does not hold, the measurement fails.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub success_condition: Option<Condition>,
    /// e.g. `result >= 0.05`. When it holds, the measurement fails.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub failure_condition: Option<Condition>,
    /// Failed measurements tolerated; one more fails the metric.
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated; one more makes the metric inconclusive.
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// Provider errors in a row tolerated; one more makes the metric inconclusive.
    #[serde(default = "default_error_limit")]
    pub consecutive_error_limit: u32,
    /// Builtin provider: fewer requests than this in the window is inconclusive (no data).
    #[serde(default)]
    pub min_requests: Option<u64>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_error_limit() -> u32 {
    4
}

/// Where a metric's value comes from. Written as a one-key map: `provider: {builtin: {...}}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum ProviderSpec {
    Builtin(BuiltinMetric),
    Prometheus(PrometheusMetric),
    Http(HttpMetric),
    /// The proxy's active health checks of the canary's endpoints: the share of healthy ones.
    Healthcheck(HealthcheckMetric),
}

/// The proxy's own per-version sliding windows.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuiltinMetric {
    pub metric: BuiltinKind,
    /// For `latency`: the quantile, e.g. 0.99.
    #[serde(default)]
    pub quantile: Option<f64>,
    /// How far back the window looks (1s..60s).
    #[serde(default = "default_window", with = "serde_duration")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// For `errorRate`: status codes or classes that count as errors (`5xx`, `429`).
    /// Default: 5xx.
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    pub codes: Vec<ErrorCode>,
    /// Judge the canary against this version. With no `successCondition` or
    /// `failureCondition`, `errorRate` and `latency` are judged by the sequential test
    /// (`analysis::sequential`); with one, the result becomes canary minus stable for
    /// `errorRate`, canary divided by stable for `latency` and `requestRate`, over `window`.
    #[serde(default)]
    pub compare: Option<CompareWith>,
    /// Sequential judge: the chance, over the whole analysis run however often it looks, of
    /// rolling back a canary as good as stable. Default 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Sequential judge: the smallest regression worth acting on, as a ratio of event rates:
    /// 0.2 = the canary errs (or is slow) 20 % more often than stable. A canary worse by
    /// less than a quarter of it counts as good: rolled back with chance at most `alpha`,
    /// however much traffic it serves. Default 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_effect: Option<f64>,
    /// Sequential judge, `errorRate`: the canary may fail this share of requests more than
    /// stable and still count as good (0.005 = half a percentage point). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<f64>,
    /// Sequential judge, `latency`: the canary's responses may be this many times slower
    /// than stable's and still count as good (1.2 = 20 % slower). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
}

/// Sequential judge defaults.
pub const DEFAULT_ALPHA: f64 = 0.01;
pub const DEFAULT_MIN_EFFECT: f64 = 0.2;
/// Canary requests a sequential judge needs before a step's time may pass it.
pub const DEFAULT_SEQUENTIAL_MIN_REQUESTS: u64 = 100;

fn default_window() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuiltinKind {
    /// Share of responses that are errors (0..1).
    ErrorRate,
    /// A latency quantile, in seconds.
    Latency,
    /// Requests per second.
    RequestRate,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CompareWith {
    Stable,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusMetric {
    /// Base URL of the Prometheus server, e.g. `http://127.0.0.1:9090`. On a cluster it may
    /// be left out for the controller's own (`--prometheus`, the chart's `prometheus.address`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// PromQL; `{{route}}`, `{{version}}`, `{{canary}}`, `{{stable}}`, `{{namespace}}` are filled in.
    pub query: String,
    #[serde(default = "default_timeout", with = "serde_duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    #[serde(default)]
    pub bearer_token_file: Option<String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicAuth {
    pub username: String,
    /// A file holding the password (kept out of the config).
    pub password_file: String,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A webhook: 2xx passes; with `jsonPath` the named field becomes the result.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMetric {
    pub url: String,
    #[serde(default)]
    pub method: HttpMethod,
    /// JSON body for POST; the same variables as PromQL queries are filled in.
    #[serde(default)]
    #[schemars(schema_with = "any_json")]
    pub body: Option<serde_json::Value>,
    /// Dotted path to a number or boolean in the JSON response, e.g. `data.errorRate`.
    #[serde(default)]
    pub json_path: Option<String>,
    #[serde(default = "default_timeout", with = "serde_duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Any JSON value, as Kubernetes takes one in a schema (it needs a type or this marker).
fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-preserve-unknown-fields": true, "nullable": true})
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthcheckMetric {}

impl MetricSpec {
    /// The sequential judge's settings, when this metric is judged by it: a builtin
    /// `errorRate` or `latency` compared with stable, with no condition.
    pub fn sequential(&self) -> Option<Settings> {
        match &self.provider {
            ProviderSpec::Builtin(b)
                if b.compare == Some(CompareWith::Stable)
                    && b.metric != BuiltinKind::RequestRate
                    && self.success_condition.is_none()
                    && self.failure_condition.is_none() =>
            {
                Some(Settings {
                    alpha: b.alpha.unwrap_or(DEFAULT_ALPHA),
                    min_effect: b.min_effect.unwrap_or(DEFAULT_MIN_EFFECT),
                    min_requests: self.min_requests.unwrap_or(DEFAULT_SEQUENTIAL_MIN_REQUESTS),
                    max_increase: b.max_increase.unwrap_or(0.0),
                })
            }
            _ => None,
        }
    }

    /// Checks what serde cannot; returns a field path relative to the metric and what is wrong.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.name.is_empty() {
            return Err(FieldError::new("name", "a metric needs a name"));
        }
        if self.interval.is_zero() {
            return Err(FieldError::new("interval", "must be above zero"));
        }
        if self.count == Some(0) {
            return Err(FieldError::new("count", "must be at least 1"));
        }
        match &self.provider {
            ProviderSpec::Builtin(b) => {
                if !(1..=60).contains(&b.window.as_secs()) {
                    return Err(FieldError::new(
                        "provider.builtin.window",
                        "must be between 1s and 60s",
                    ));
                }
                match (b.metric, b.quantile) {
                    (BuiltinKind::Latency, None) => {
                        return Err(FieldError::new(
                            "provider.builtin.quantile",
                            "latency needs a quantile, e.g. 0.99",
                        ));
                    }
                    (_, Some(q)) if !(0.0..=1.0).contains(&q) || q == 0.0 => {
                        return Err(FieldError::new(
                            "provider.builtin.quantile",
                            format!("`{q}` is not in (0, 1]"),
                        ));
                    }
                    _ => {}
                }
                if let Some(a) = b.alpha
                    && !(a > 0.0 && a <= 0.5)
                {
                    return Err(FieldError::new(
                        "provider.builtin.alpha",
                        format!("`{a}` is not in (0, 0.5]"),
                    ));
                }
                if let Some(m) = b.min_effect
                    && !(0.1..=10.0).contains(&m)
                {
                    return Err(FieldError::new(
                        "provider.builtin.minEffect",
                        format!("`{m}` is not in 0.1..10 (0.2 = 20 % worse than stable)"),
                    ));
                }
                let sequential = self.sequential().is_some();
                let judge_fields = [b.alpha, b.min_effect, b.max_increase, b.max_ratio];
                if !sequential && judge_fields.iter().any(Option::is_some) {
                    return Err(FieldError::new(
                        "provider.builtin",
                        "alpha, minEffect, maxIncrease and maxRatio belong to the sequential judge: errorRate or latency with `compare: stable` and no successCondition or failureCondition",
                    ));
                }
                match (b.metric, b.max_increase, b.max_ratio) {
                    (BuiltinKind::ErrorRate, Some(d), _) if !(0.0..1.0).contains(&d) => {
                        return Err(FieldError::new(
                            "provider.builtin.maxIncrease",
                            format!(
                                "`{d}` is not a share of requests in 0..1 (0.005 = half a point)"
                            ),
                        ));
                    }
                    (BuiltinKind::Latency, _, Some(r)) if !(1.0..=10.0).contains(&r) => {
                        return Err(FieldError::new(
                            "provider.builtin.maxRatio",
                            format!("`{r}` is not a ratio in 1..10 (1.2 = 20 % slower)"),
                        ));
                    }
                    (BuiltinKind::Latency, Some(_), _) => {
                        return Err(FieldError::new(
                            "provider.builtin.maxIncrease",
                            "maxIncrease is for errorRate; latency takes maxRatio",
                        ));
                    }
                    (BuiltinKind::ErrorRate, _, Some(_)) => {
                        return Err(FieldError::new(
                            "provider.builtin.maxRatio",
                            "maxRatio is for latency; errorRate takes maxIncrease",
                        ));
                    }
                    _ => {}
                }
                // The windows keep a minute: a look must come before its seconds are gone.
                if sequential && self.interval > Duration::from_secs(30) {
                    return Err(FieldError::new(
                        "interval",
                        "the sequential judge looks at least every 30s",
                    ));
                }
            }
            ProviderSpec::Prometheus(p) => {
                // Empty: the controller's default, which a local config has not (see
                // `RolloutSpec::default_prometheus_at`).
                if !p.address.is_empty() {
                    http_url(&p.address)
                        .map_err(|e| FieldError::new("provider.prometheus.address", e))?;
                }
                if p.query.trim().is_empty() {
                    return Err(FieldError::new("provider.prometheus.query", "empty query"));
                }
            }
            ProviderSpec::Http(h) => {
                if let Some(path) = &h.json_path {
                    super::json_path::to_pointer(path)
                        .map_err(|e| FieldError::new("provider.http.jsonPath", e))?;
                }
                http_url(&h.url).map_err(|e| FieldError::new("provider.http.url", e))?;
            }
            ProviderSpec::Healthcheck(_) => {}
        }
        Ok(())
    }
}

/// An http(s) URL, as a Prometheus server, an `http` metric's URL and a notification webhook
/// must be; else what is wrong with `text`.
pub fn http_url(text: &str) -> Result<(), String> {
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("`{text}` is not an http(s) URL"))
    }
}
