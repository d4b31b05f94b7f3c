//! Rollout metrics: phase, weights, step, and analysis verdicts by outcome.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use super::Rollout;
use crate::analysis::Outcome;
use crate::metrics::{esc, header};
use crate::rollout::{MeasurementResult, Phase, RolloutStatus};

#[derive(Default)]
pub(super) struct RolloutCounters {
    /// (route, metric, outcome) -> measurements.
    verdicts: Mutex<BTreeMap<(String, String, &'static str), u64>>,
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Successful => "successful",
        Outcome::Failed => "failed",
        Outcome::Inconclusive => "inconclusive",
        Outcome::Error => "error",
    }
}

impl RolloutCounters {
    pub(super) fn count_verdict(&self, route: &str, r: &Rollout, m: &MeasurementResult) {
        let name = [&r.status.step_analysis, &r.status.background_analysis]
            .into_iter()
            .flatten()
            .find(|run| run.id == m.run_id)
            .and_then(|run| run.metrics.get(m.metric))
            .map_or_else(|| "unknown".to_string(), |mr| mr.name.clone());
        let mut v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry((
            route.to_string(),
            name,
            outcome_label(m.measurement.outcome),
        ))
        .or_default() += 1;
    }

    pub(super) fn render(&self, rollouts: &[(&RolloutStatus, &[String])], out: &mut String) {
        header(
            out,
            "tidegate_rollout_phase",
            "gauge",
            "1 for the phase each rollout is in.",
        );
        for (s, _) in rollouts {
            for phase in Phase::ALL {
                let _ = writeln!(
                    out,
                    "tidegate_rollout_phase{{route=\"{}\",phase=\"{}\"}} {}",
                    esc(&s.route),
                    phase.as_str(),
                    u8::from(s.phase == phase)
                );
            }
        }
        header(
            out,
            "tidegate_rollout_weight",
            "gauge",
            "Weight the rollout gives each version, in percent.",
        );
        for (s, versions) in rollouts {
            for (v, w) in s.weights(versions.iter().map(String::as_str)) {
                let _ = writeln!(
                    out,
                    "tidegate_rollout_weight{{route=\"{}\",version=\"{}\"}} {}",
                    esc(&s.route),
                    esc(v),
                    f64::from(w) / 100.0
                );
            }
        }
        header(
            out,
            "tidegate_rollout_step",
            "gauge",
            "Index (from 1) of the step each rollout is at.",
        );
        for (s, _) in rollouts {
            let _ = writeln!(
                out,
                "tidegate_rollout_step{{route=\"{}\"}} {}",
                esc(&s.route),
                s.step + 1
            );
        }
        header(
            out,
            "tidegate_analysis_verdicts_total",
            "counter",
            "Analysis measurements, by rollout, metric and outcome.",
        );
        let v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, metric, outcome), n) in v.iter() {
            let _ = writeln!(
                out,
                "tidegate_analysis_verdicts_total{{route=\"{}\",metric=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(route),
                esc(metric)
            );
        }
    }
}
