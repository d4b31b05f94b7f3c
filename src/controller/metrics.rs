//! Rollout metrics: phase, weights, step, analysis verdicts by outcome, and the sequential
//! judge's statistic with the counts behind it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::analysis::Outcome;
use crate::metrics::{esc, header};
use crate::rollout::{MeasurementResult, Phase, RolloutSpec, RolloutStatus, Step};

/// What the metrics page shows of one rollout.
pub(crate) struct RolloutView<'a> {
    pub status: &'a RolloutStatus,
    pub versions: &'a [String],
    pub spec: &'a RolloutSpec,
}

#[derive(Default)]
pub(crate) struct RolloutCounters {
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
    /// Counts a measurement by its outcome; the sequential judge decides that outcome when
    /// it weighs the measurement into the metric's tally, so weigh it here the same way.
    pub(crate) fn count_verdict(
        &self,
        route: &str,
        spec: &RolloutSpec,
        status: &RolloutStatus,
        m: &MeasurementResult,
    ) {
        let step_specs = match spec.steps.get(status.step) {
            Some(Step::Analysis(a)) => Some(a.metrics.as_slice()),
            _ => None,
        };
        let bg_specs = spec.analysis.as_ref().map(|a| a.metrics.as_slice());
        let found = [
            (&status.step_analysis, step_specs),
            (&status.background_analysis, bg_specs),
        ]
        .into_iter()
        .find_map(|(run, specs)| {
            let run = run.as_ref().filter(|run| run.id == m.run_id)?;
            Some((run.metrics.get(m.metric)?, specs?.get(m.metric)?))
        });
        let (name, outcome) = match found {
            Some((run, metric)) if metric.sequential().is_some() => {
                let mut tally = run.tally.clone();
                tally.add(m.measurement.clone(), metric);
                let outcome = tally.last.map_or(m.measurement.outcome, |l| l.outcome);
                (run.name.clone(), outcome)
            }
            Some((run, _)) => (run.name.clone(), m.measurement.outcome),
            None => ("unknown".to_string(), m.measurement.outcome),
        };
        let mut v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        *v.entry((route.to_string(), name, outcome_label(outcome)))
            .or_default() += 1;
    }

    pub(crate) fn render(&self, rollouts: &[RolloutView<'_>], out: &mut String) {
        header(
            out,
            "tidegate_rollout_phase",
            "gauge",
            "1 for the phase each rollout is in.",
        );
        for RolloutView { status: s, .. } in rollouts {
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
        for RolloutView {
            status: s,
            versions,
            ..
        } in rollouts
        {
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
        for RolloutView { status: s, .. } in rollouts {
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
        drop(v);
        render_sequential(rollouts, out);
    }
}

/// The sequential judge of every running analysis: e-value, threshold, and what it weighed.
fn render_sequential(rollouts: &[RolloutView<'_>], out: &mut String) {
    let mut evalue = String::new();
    let mut threshold = String::new();
    let mut requests = String::new();
    let mut events = String::new();
    let mut expected = String::new();
    for r in rollouts {
        let step_specs = match r.spec.steps.get(r.status.step) {
            Some(Step::Analysis(a)) => Some(a.metrics.as_slice()),
            _ => None,
        };
        let bg_specs = r.spec.analysis.as_ref().map(|a| a.metrics.as_slice());
        let runs = [
            (&r.status.step_analysis, step_specs),
            (&r.status.background_analysis, bg_specs),
        ];
        for (run, specs) in runs {
            let (Some(run), Some(specs)) = (run, specs) else {
                continue;
            };
            for (m, spec) in run.metrics.iter().zip(specs) {
                let (Some(test), Some(settings)) = (&m.tally.sequential, spec.sequential()) else {
                    continue;
                };
                let labels = format!(
                    "route=\"{}\",metric=\"{}\"",
                    esc(&r.status.route),
                    esc(&m.name)
                );
                let _ = writeln!(
                    evalue,
                    "tidegate_analysis_evalue{{{labels}}} {}",
                    test.e_value(settings.min_effect)
                );
                let _ = writeln!(
                    threshold,
                    "tidegate_analysis_evalue_threshold{{{labels}}} {}",
                    1.0 / settings.alpha
                );
                let canary = r.status.canary.as_deref().unwrap_or("");
                for (version, n) in [
                    (canary, test.requests.canary),
                    (r.status.stable.as_str(), test.requests.stable),
                ] {
                    let _ = writeln!(
                        requests,
                        "tidegate_analysis_requests{{{labels},version=\"{}\"}} {n}",
                        esc(version)
                    );
                }
                for st in &test.streams {
                    let stream = format!("{labels},stream=\"{}\"", esc(&st.name));
                    for (version, n) in [
                        (canary, st.events.canary),
                        (r.status.stable.as_str(), st.events.stable),
                    ] {
                        let _ = writeln!(
                            events,
                            "tidegate_analysis_events{{{stream},version=\"{}\"}} {n}",
                            esc(version)
                        );
                    }
                    let _ = writeln!(
                        expected,
                        "tidegate_analysis_expected_events{{{stream}}} {}",
                        st.expected
                    );
                }
            }
        }
    }
    for (name, kind, help, body) in [
        (
            "tidegate_analysis_evalue",
            "gauge",
            "Sequential judge: the evidence that the canary is worse than stable; it rolls back at the threshold.",
            evalue,
        ),
        (
            "tidegate_analysis_evalue_threshold",
            "gauge",
            "Sequential judge: the e-value that rolls back (1/alpha).",
            threshold,
        ),
        (
            "tidegate_analysis_requests",
            "gauge",
            "Sequential judge: requests weighed in the current analysis run, per version.",
            requests,
        ),
        (
            "tidegate_analysis_events",
            "gauge",
            "Sequential judge: events (errors, slow responses) weighed, per stream and version.",
            events,
        ),
        (
            "tidegate_analysis_expected_events",
            "gauge",
            "Sequential judge: canary events expected if it were as good as stable.",
            expected,
        ),
    ] {
        header(out, name, kind, help);
        out.push_str(&body);
    }
}
