//! The builtin provider: reads the proxy's per-version sliding windows, optionally against stable.

use crate::metrics::WindowSnapshot;

use super::spec::{BuiltinKind, BuiltinMetric, CompareWith};
use super::verdict::Reading;

/// A status code (`503`; 400-431 and 500-511 are counted one by one) or class (`5xx`) that counts as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Class(u8),
    Code(u16),
}

pub fn parse_code(text: &str) -> Option<ErrorCode> {
    let t = text.trim().to_ascii_lowercase();
    if let Some(c) = t.strip_suffix("xx") {
        let class: u8 = c.parse().ok()?;
        return (1..=5).contains(&class).then_some(ErrorCode::Class(class));
    }
    let code: u16 = t.parse().ok()?;
    crate::metrics::window::detail_index(code).map(|_| ErrorCode::Code(code))
}

/// Reads one builtin metric from the canary's window (and the stable's, to compare).
pub fn read(
    metric: &BuiltinMetric,
    min_requests: Option<u64>,
    canary: &WindowSnapshot,
    stable: Option<&WindowSnapshot>,
) -> Reading {
    let min = min_requests.unwrap_or(1).max(1);
    let canary_value = match value(metric, canary, min) {
        Ok(v) => v,
        Err(why) => return Reading::NoData(format!("canary: {why}")),
    };
    match metric.compare {
        None => Reading::Value(canary_value),
        Some(CompareWith::Stable) => {
            let Some(stable) = stable else {
                return Reading::NoData("no stable version to compare with".into());
            };
            let stable_value = match value(metric, stable, min) {
                Ok(v) => v,
                Err(why) => return Reading::NoData(format!("stable: {why}")),
            };
            match metric.metric {
                BuiltinKind::ErrorRate => Reading::Value(canary_value - stable_value),
                BuiltinKind::Latency | BuiltinKind::RequestRate if stable_value > 0.0 => {
                    Reading::Value(canary_value / stable_value)
                }
                _ => Reading::NoData("stable's value is 0, no ratio".into()),
            }
        }
    }
}

fn value(metric: &BuiltinMetric, w: &WindowSnapshot, min: u64) -> Result<f64, String> {
    let n = w.requests();
    if metric.metric != BuiltinKind::RequestRate && n < min {
        return Err(format!(
            "{n} requests in the last {}s since the analysis began, fewer than {min}",
            w.span.as_secs()
        ));
    }
    Ok(match metric.metric {
        BuiltinKind::RequestRate => w.requests_per_second(),
        BuiltinKind::ErrorRate => {
            let codes: Vec<ErrorCode> = metric.codes.iter().filter_map(|c| parse_code(c)).collect();
            let errors = if codes.is_empty() {
                w.server_errors()
            } else {
                codes
                    .iter()
                    .map(|c| match *c {
                        ErrorCode::Class(class) => w.by_class[usize::from(class) - 1],
                        ErrorCode::Code(code) => w.with_code(code),
                    })
                    .sum()
            };
            errors as f64 / n as f64
        }
        BuiltinKind::Latency => w
            .latency_quantile(metric.quantile.unwrap_or(0.99))
            .map(|d| d.as_secs_f64())
            .ok_or("no latency samples")?,
    })
}
