//! Rollout metrics: phase, weights, step, analysis verdicts by outcome, and the sequential
//! judge's statistic with the counts behind it.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::analysis::Outcome;
use crate::metrics::Family;
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
        let mut f = Family::new(
            out,
            "tidegate_rollout_phase",
            "gauge",
            "1 for the phase each rollout is in.",
        );
        for RolloutView { status: s, .. } in rollouts {
            for phase in Phase::ALL {
                let labels = [("route", s.route.as_str()), ("phase", phase.as_str())];
                f.sample(&labels, u8::from(s.phase == phase));
            }
        }
        let mut f = Family::new(
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
                let labels = [("route", s.route.as_str()), ("version", v)];
                f.sample(&labels, f64::from(w) / 100.0);
            }
        }
        let mut f = Family::new(
            out,
            "tidegate_rollout_step",
            "gauge",
            "Index (from 1) of the step each rollout is at.",
        );
        for RolloutView { status: s, .. } in rollouts {
            f.sample(&[("route", &s.route)], s.step + 1);
        }
        let mut f = Family::new(
            out,
            "tidegate_analysis_verdicts_total",
            "counter",
            "Analysis measurements, by rollout, metric and outcome.",
        );
        let v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, metric, outcome), n) in v.iter() {
            let labels = [
                ("route", route.as_str()),
                ("metric", metric),
                ("outcome", outcome),
            ];
            f.sample(&labels, n);
        }
        drop(v);
        render_sequential(rollouts, out);
    }
}

/// The sequential judge of every running analysis: e-value, threshold, and what it weighed.
fn render_sequential(rollouts: &[RolloutView<'_>], out: &mut String) {
    // One buffer per family, filled in one pass over the analyses, then written in order.
    let mut buffers: [String; 5] = Default::default();
    let [evalue, threshold, requests, events, expected] = &mut buffers;
    let mut evalue = Family::new(
        evalue,
        "tidegate_analysis_evalue",
        "gauge",
        "Sequential judge: the evidence that the canary is worse than stable; it rolls back at the threshold.",
    );
    let mut threshold = Family::new(
        threshold,
        "tidegate_analysis_evalue_threshold",
        "gauge",
        "Sequential judge: the e-value that rolls back (1/alpha).",
    );
    let mut requests = Family::new(
        requests,
        "tidegate_analysis_requests",
        "gauge",
        "Sequential judge: requests weighed in the current analysis run, per version.",
    );
    let mut events = Family::new(
        events,
        "tidegate_analysis_events",
        "gauge",
        "Sequential judge: events (errors, slow responses) weighed, per stream and version.",
    );
    let mut expected = Family::new(
        expected,
        "tidegate_analysis_expected_events",
        "gauge",
        "Sequential judge: canary events expected if it were as good as stable.",
    );
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
                let labels = [("route", r.status.route.as_str()), ("metric", &m.name)];
                evalue.sample(&labels, test.e_value(settings.min_effect));
                threshold.sample(&labels, 1.0 / settings.alpha);
                let canary = r.status.canary.as_deref().unwrap_or("");
                let stable = r.status.stable.as_str();
                for (version, n) in [
                    (canary, test.requests.canary),
                    (stable, test.requests.stable),
                ] {
                    requests.sample(&[labels[0], labels[1], ("version", version)], n);
                }
                for st in &test.streams {
                    let stream = [labels[0], labels[1], ("stream", st.name.as_str())];
                    for (version, n) in [(canary, st.events.canary), (stable, st.events.stable)] {
                        events.sample(&[stream[0], stream[1], stream[2], ("version", version)], n);
                    }
                    expected.sample(&stream, st.expected);
                }
            }
        }
    }
    for b in buffers {
        out.push_str(&b);
    }
}
