//! The prometheus provider: an instant PromQL query against `/api/v1/query`.

use super::Vars;
use super::spec::PrometheusMetric;
use super::verdict::Reading;

/// Runs the query; one scalar or one-sample vector is the result, an empty result is no data.
pub async fn measure(spec: &PrometheusMetric, vars: &Vars) -> Reading {
    let _ = (spec, vars);
    Reading::Error("prometheus provider not built yet".into())
}
