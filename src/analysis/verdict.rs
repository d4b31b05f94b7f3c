//! Judging measurements against conditions and limits: Pass, Fail or Inconclusive, never a silent pass.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::sequential::{SequentialState, Slice};
use super::spec::{MetricSpec, ProviderSpec};

/// What a provider returned for one measurement.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Value(f64),
    /// Whole seconds of both versions' traffic, for the sequential judge.
    Slices(Vec<Slice>),
    /// The provider answered but had nothing to judge (empty result, too few requests).
    NoData(String),
    /// The provider could not be asked (unreachable, timeout, bad answer).
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    Successful,
    Failed,
    Inconclusive,
    Error,
}

/// One judged measurement, kept in the rollout status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Unix milliseconds.
    pub at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub outcome: Outcome,
    pub message: String,
    /// The requests a builtin measurement judged: served since its analysis run began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestCounts>,
    /// Seconds for the sequential judge to weigh; consumed by `MetricTally::add`.
    #[serde(skip)]
    pub slices: Option<Vec<Slice>>,
}

/// Requests behind a builtin measurement, per version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestCounts {
    pub canary: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<u64>,
}

impl Measurement {
    /// Records (and says in the message) how many requests the measurement judged.
    pub fn based_on(mut self, requests: Option<RequestCounts>) -> Measurement {
        if let Some(n) = requests {
            self.message.push_str(&match n.stable {
                Some(stable) => format!(" ({} canary and {stable} stable requests)", n.canary),
                None => format!(" ({} canary requests)", n.canary),
            });
        }
        self.requests = requests;
        self
    }
}

/// The state of a metric over its measurements so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", tag = "phase", content = "reason")]
pub enum Verdict {
    Running,
    Pass,
    Fail(String),
    Inconclusive(String),
}

/// Judges one reading against the metric's conditions.
pub fn judge(metric: &MetricSpec, reading: Reading, at: u64) -> Measurement {
    match reading {
        Reading::Value(v) if !v.is_finite() => Measurement {
            at,
            value: None,
            outcome: Outcome::Inconclusive,
            message: format!("result is {v}, not a number to judge"),
            requests: None,
            slices: None,
        },
        Reading::Value(v) => {
            let (outcome, message) = match (&metric.failure_condition, &metric.success_condition) {
                (Some(f), _) if f.holds(v) => (
                    Outcome::Failed,
                    format!("result {} meets failure condition `{f}`", show(v)),
                ),
                (_, Some(s)) if !s.holds(v) => (
                    Outcome::Failed,
                    format!("result {} does not meet success condition `{s}`", show(v)),
                ),
                (_, Some(s)) => (
                    Outcome::Successful,
                    format!("result {} meets `{s}`", show(v)),
                ),
                (Some(f), None) => (
                    Outcome::Successful,
                    format!("result {} is clear of `{f}`", show(v)),
                ),
                (None, None) => (Outcome::Successful, format!("result {}", show(v))),
            };
            Measurement {
                at,
                value: Some(v),
                outcome,
                message,
                requests: None,
                slices: None,
            }
        }
        Reading::Slices(slices) => Measurement {
            at,
            value: None,
            // Decided by `MetricTally::add`, which weighs the seconds.
            outcome: Outcome::Successful,
            message: String::new(),
            requests: None,
            slices: Some(slices),
        },
        Reading::NoData(why) => Measurement {
            at,
            value: None,
            outcome: Outcome::Inconclusive,
            message: format!("no data: {why}"),
            requests: None,
            slices: None,
        },
        Reading::Error(why) => Measurement {
            at,
            value: None,
            outcome: Outcome::Error,
            message: format!("provider error: {why}"),
            requests: None,
            slices: None,
        },
    }
}

/// Figures like 0.0123 or 153.2 with no float noise.
pub fn show(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Counts of a metric's measurements, kept in the rollout status.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricTally {
    pub successes: u32,
    pub failures: u32,
    pub inconclusives: u32,
    pub errors: u32,
    pub consecutive_errors: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<Measurement>,
    /// The sequential judge's test so far, for a metric it judges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential: Option<SequentialState>,
}

impl MetricTally {
    pub fn add(&mut self, mut m: Measurement, metric: &MetricSpec) {
        if let (Some(slices), Some(settings), ProviderSpec::Builtin(b)) =
            (m.slices.take(), metric.sequential(), &metric.provider)
        {
            let test = self
                .sequential
                .get_or_insert_with(|| SequentialState::new(&super::builtin::stream_names(b)));
            test.update(&slices, &settings);
            let now = test.with_running_second(&slices, &settings);
            m.value = Some(now.e_value(settings.min_effect));
            m.outcome = if now.regressed(&settings) {
                Outcome::Failed
            } else {
                Outcome::Successful
            };
            m.message = now.summary(&settings);
            m.requests = Some(RequestCounts {
                canary: now.requests.canary,
                stable: Some(now.requests.stable),
            });
        }
        match m.outcome {
            Outcome::Successful => self.successes += 1,
            Outcome::Failed => self.failures += 1,
            Outcome::Inconclusive => self.inconclusives += 1,
            Outcome::Error => self.errors += 1,
        }
        if m.outcome == Outcome::Error {
            self.consecutive_errors += 1;
        } else {
            self.consecutive_errors = 0;
        }
        self.last = Some(m);
    }

    /// The metric's verdict. `count` is None for a background metric (it never passes by count).
    pub fn verdict(&self, metric: &MetricSpec, count: Option<u32>) -> Verdict {
        let last = self
            .last
            .as_ref()
            .map_or(String::new(), |m| m.message.clone());
        if self.failures > metric.failure_limit && self.sequential.is_some() {
            return Verdict::Fail(format!(
                "metric `{}`: the canary is worse than stable: {last}",
                metric.name
            ));
        }
        if self.failures > metric.failure_limit {
            return Verdict::Fail(format!(
                "metric `{}`: {} failed measurement(s), limit {}: {last}",
                metric.name, self.failures, metric.failure_limit
            ));
        }
        if self.consecutive_errors > metric.consecutive_error_limit {
            return Verdict::Inconclusive(format!(
                "metric `{}`: {} provider errors in a row, limit {}: {last}",
                metric.name, self.consecutive_errors, metric.consecutive_error_limit
            ));
        }
        if self.inconclusives > metric.inconclusive_limit {
            return Verdict::Inconclusive(format!(
                "metric `{}`: {} inconclusive measurement(s), limit {}: {last}",
                metric.name, self.inconclusives, metric.inconclusive_limit
            ));
        }
        if let (Some(test), Some(settings)) = (&self.sequential, metric.sequential()) {
            return match count {
                Some(_) if test.cleared(&settings) => Verdict::Pass,
                Some(n) if self.successes >= n => match self.short_of_requests(metric) {
                    None => Verdict::Pass,
                    Some(why) => Verdict::Inconclusive(format!("{why}: {last}")),
                },
                _ => Verdict::Running,
            };
        }
        match count {
            // Only measurements with a verdict count towards `count`, and a pass needs at
            // least one success: a run of "no data" never adds up to a pass.
            Some(n) if self.successes + self.failures >= n && self.successes > 0 => Verdict::Pass,
            _ => Verdict::Running,
        }
    }

    /// For a metric of the sequential judge: why it has not seen enough of the canary to
    /// let it pass (fewer canary requests than `minRequests`), if it has not.
    pub fn short_of_requests(&self, metric: &MetricSpec) -> Option<String> {
        let settings = metric.sequential()?;
        let judged = self.sequential.as_ref().map_or(0, |t| t.requests.canary);
        (judged < settings.min_requests).then(|| {
            format!(
                "metric `{}`: {judged} canary requests judged, fewer than minRequests {}",
                metric.name, settings.min_requests
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::condition::Condition;
    use crate::analysis::spec::{BuiltinKind, BuiltinMetric, ProviderSpec};
    use std::time::Duration;

    fn metric() -> MetricSpec {
        MetricSpec {
            name: "errors".into(),
            provider: ProviderSpec::Builtin(BuiltinMetric {
                metric: BuiltinKind::ErrorRate,
                quantile: None,
                window: Duration::from_secs(10),
                codes: vec![],
                compare: None,
                alpha: None,
                min_effect: None,
                max_increase: None,
                max_ratio: None,
            }),
            interval: Duration::from_secs(1),
            count: Some(3),
            success_condition: Some(Condition::parse("result < 0.01").unwrap()),
            failure_condition: None,
            failure_limit: 1,
            inconclusive_limit: 0,
            consecutive_error_limit: 2,
            min_requests: None,
        }
    }

    #[test]
    fn judging_readings() {
        let m = metric();
        assert_eq!(
            judge(&m, Reading::Value(0.001), 0).outcome,
            Outcome::Successful
        );
        let failed = judge(&m, Reading::Value(0.2), 0);
        assert_eq!(failed.outcome, Outcome::Failed);
        assert_eq!(
            failed.message,
            "result 0.2 does not meet success condition `result < 0.01`"
        );
        assert_eq!(
            judge(&m, Reading::NoData("empty".into()), 0).outcome,
            Outcome::Inconclusive
        );
        assert_eq!(
            judge(&m, Reading::Error("refused".into()), 0).outcome,
            Outcome::Error
        );
        assert_eq!(
            judge(&m, Reading::Value(f64::NAN), 0).outcome,
            Outcome::Inconclusive
        );
    }

    #[test]
    fn limits_decide_the_verdict() {
        let m = metric();
        let mut t = MetricTally::default();
        t.add(judge(&m, Reading::Value(0.5), 0), &m);
        assert_eq!(
            t.verdict(&m, Some(3)),
            Verdict::Running,
            "one failure is within the limit of 1"
        );
        t.add(judge(&m, Reading::Value(0.0), 0), &m);
        t.add(judge(&m, Reading::Value(0.0), 0), &m);
        assert_eq!(t.verdict(&m, Some(3)), Verdict::Pass);
        assert_eq!(
            t.verdict(&m, None),
            Verdict::Running,
            "background metrics never pass by count"
        );
        t.add(judge(&m, Reading::Value(0.5), 0), &m);
        assert!(
            matches!(t.verdict(&m, Some(3)), Verdict::Fail(r) if r.contains("2 failed measurement(s), limit 1"))
        );
    }

    #[test]
    fn inconclusive_measurements_never_add_up_to_a_pass() {
        let mut m = metric();
        m.inconclusive_limit = 5;
        let mut t = MetricTally::default();
        for _ in 0..4 {
            t.add(judge(&m, Reading::NoData("empty".into()), 0), &m);
            assert_eq!(t.verdict(&m, Some(2)), Verdict::Running);
        }
        t.add(judge(&m, Reading::Value(0.0), 0), &m);
        assert_eq!(
            t.verdict(&m, Some(2)),
            Verdict::Running,
            "one judged measurement of two"
        );
        t.add(judge(&m, Reading::Value(0.0), 0), &m);
        assert_eq!(t.verdict(&m, Some(2)), Verdict::Pass);
    }

    #[test]
    fn errors_and_no_data_are_inconclusive_never_a_pass() {
        let m = metric();
        let mut t = MetricTally::default();
        for _ in 0..3 {
            t.add(
                judge(&m, Reading::Error("connection refused".into()), 0),
                &m,
            );
        }
        assert!(
            matches!(t.verdict(&m, Some(1)), Verdict::Inconclusive(r) if r.contains("3 provider errors in a row"))
        );
        let mut t = MetricTally::default();
        t.add(judge(&m, Reading::NoData("empty result".into()), 0), &m);
        assert!(
            matches!(t.verdict(&m, Some(1)), Verdict::Inconclusive(r) if r.contains("no data: empty result"))
        );
    }
}
