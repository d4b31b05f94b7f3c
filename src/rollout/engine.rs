//! The pure rollout engine: `decide(spec, status, observations) -> Decision` and `command(...)`.
//! No I/O, no clock, no sleeping: drivers apply the effects and call again when `requeue_after` says.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::analysis::{MetricSpec, MetricTally, Verdict, verdict::show};
use crate::units::{WeightBps, format_percent};

use super::spec::{RolloutSpec, Step};
use super::status::{
    AnalysisRun, Event, EventKind, HISTORY_LEN, MetricRun, Pause, PauseReason, Phase, Retiring,
    RolloutStatus,
};

/// A measurement that came back, for the run and metric it was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasurementResult {
    pub run_id: u64,
    pub metric: usize,
    pub measurement: crate::analysis::Measurement,
}

/// What the driver saw since the last decision.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Unix milliseconds.
    pub now: u64,
    /// Identity of the canary's definition as configured now (endpoints, revision): a change
    /// starts a new rollout.
    pub canary_revision: String,
    pub measurements: Vec<MeasurementResult>,
    /// Requests in flight and upgraded connections open, per version.
    pub active: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Take one measurement and report it.
    Measure(MeasureRequest),
    /// Drop the drained version from the route table (and run `onRemove`).
    Remove { version: String },
}

/// One measurement to take: metric `index` of run `run_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureRequest {
    pub run_id: u64,
    pub index: usize,
    pub metric: Box<MetricSpec>,
    /// Unix ms the run began: only traffic served since then is judged, never an earlier
    /// revision's.
    pub since: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: RolloutStatus,
    /// Transitions made by this decision, oldest first (also appended to the status history).
    pub events: Vec<Event>,
    pub effects: Vec<Effect>,
    /// Call `decide` again after this long at the latest (a pause ends, a measurement is due).
    pub requeue_after: Option<Duration>,
}

/// A manual command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// End the current step (or pause) and go on; `full` skips to 100 %.
    Promote {
        full: bool,
    },
    /// Send everything to stable, keep the canary for inspection.
    Abort,
    Pause,
    Resume,
    /// Start an aborted rollout again from step 0.
    Retry,
    /// Start the current rollout again from step 0, whatever its phase.
    Restart,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Command::Promote { full: false } => "promote",
            Command::Promote { full: true } => "promote --full",
            Command::Abort => "abort",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Retry => "retry",
            Command::Restart => "restart",
        }
    }
}

/// A command that does not apply in the rollout's state; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} rollout `{route}` ({phase}): {why}")]
pub struct CommandError {
    pub command: &'static str,
    pub route: String,
    pub phase: &'static str,
    pub why: String,
}

/// Moves a rollout as far as the observations allow.
pub fn decide(spec: &RolloutSpec, status: &RolloutStatus, obs: &Observations) -> Decision {
    let mut e = Engine::new(status, obs.now);
    e.record(spec, &obs.measurements);
    e.follow_canary(spec, &obs.canary_revision);
    e.progress(spec);
    e.retire(spec, &obs.active);
    e.schedule_measurements(spec);
    e.finish()
}

/// Applies a manual command, then moves the rollout as far as it can go.
pub fn command(
    spec: &RolloutSpec,
    status: &RolloutStatus,
    cmd: Command,
    obs: &Observations,
) -> Result<Decision, CommandError> {
    let mut e = Engine::new(status, obs.now);
    let refuse = |why: String| CommandError {
        command: cmd.name(),
        route: status.route.clone(),
        phase: status.phase.as_str(),
        why,
    };
    let st = &e.st;
    let rolling = st.canary.is_some() && matches!(st.phase, Phase::Progressing | Phase::Paused);
    match cmd {
        Command::Promote { .. } | Command::Abort | Command::Pause if st.phase == Phase::Healthy => {
            return Err(refuse(format!(
                "no rollout in progress: `{}` is stable",
                st.stable
            )));
        }
        Command::Promote { .. } | Command::Pause | Command::Resume
            if st.phase == Phase::Degraded =>
        {
            return Err(refuse(format!(
                "it was aborted ({}); `retry` starts it again",
                st.message
            )));
        }
        Command::Promote { full } if rolling => {
            // Past the last step only the evidence gate holds the rollout: promote lifts it.
            e.promoted_by_hand = full || st.step >= spec.steps.len();
            if full {
                e.event(EventKind::Promoted, "promoted to 100% by hand".into());
                e.complete();
            } else {
                let step = e.st.step;
                e.st.phase = Phase::Progressing;
                e.st.pause = None;
                e.event(
                    EventKind::Promoted,
                    format!("step {} ended by promote", step + 1),
                );
                e.advance();
            }
        }
        Command::Abort if rolling => e.abort("aborted by hand".into()),
        Command::Abort => return Err(refuse("it is already aborted".into())),
        Command::Pause if st.phase == Phase::Paused => {
            return Err(refuse("it is already paused".into()));
        }
        Command::Pause => e.pause(PauseReason::Manual, "paused by hand".into()),
        Command::Resume => match st.pause.as_ref().map(|p| p.reason) {
            Some(PauseReason::Step) => {
                return Err(refuse(
                    "it waits at a pause step: `promote` continues".into(),
                ));
            }
            Some(reason) => {
                if reason == PauseReason::Inconclusive {
                    // Measure again from scratch rather than re-reading the inconclusive tally.
                    e.st.step_analysis = None;
                    e.st.background_analysis = None;
                }
                e.st.phase = Phase::Progressing;
                e.st.pause = None;
                e.st.last_progress_at = e.now;
                if e.st.step >= spec.steps.len() {
                    // Waiting for evidence at the end: the wait starts again.
                    e.st.step_started_at = e.now;
                }
                e.event(EventKind::Resumed, "resumed by hand".into());
            }
            None => return Err(refuse("it is not paused".into())),
        },
        Command::Retry if st.phase == Phase::Degraded && st.canary.is_some() => {
            e.restart(EventKind::Retried, "retried from step 1".into());
        }
        Command::Retry => return Err(refuse("only an aborted rollout can be retried".into())),
        Command::Restart if st.canary.is_some() => {
            e.restart(EventKind::Restarted, "restarted from step 1".into())
        }
        Command::Restart => {
            return Err(refuse(format!(
                "nothing to roll out: `{}` is already stable",
                st.stable
            )));
        }
        Command::Promote { .. } => {
            return Err(refuse("no rollout in progress".into()));
        }
    }
    e.progress(spec);
    e.retire(spec, &obs.active);
    e.schedule_measurements(spec);
    Ok(e.finish())
}

struct Engine {
    st: RolloutStatus,
    now: u64,
    events: Vec<Event>,
    effects: Vec<Effect>,
    wake_at: Option<u64>,
    /// A human promoted past the end of the steps: the rollout may complete on less evidence.
    promoted_by_hand: bool,
}

impl Engine {
    fn new(status: &RolloutStatus, now: u64) -> Engine {
        Engine {
            st: status.clone(),
            now,
            events: Vec::new(),
            effects: Vec::new(),
            wake_at: None,
            promoted_by_hand: false,
        }
    }

    fn finish(self) -> Decision {
        Decision {
            requeue_after: self
                .wake_at
                .map(|at| Duration::from_millis(at.saturating_sub(self.now))),
            status: self.st,
            events: self.events,
            effects: self.effects,
        }
    }

    fn wake(&mut self, at: u64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    fn event(&mut self, kind: EventKind, message: String) {
        let event = Event {
            at: self.now,
            kind,
            message,
            step: self.st.step,
            canary_weight: self.st.canary_weight,
        };
        self.events.push(event.clone());
        self.st.history.push(event);
        if self.st.history.len() > HISTORY_LEN {
            let extra = self.st.history.len() - HISTORY_LEN;
            self.st.history.drain(..extra);
        }
    }

    fn set_weight(&mut self, w: WeightBps) {
        self.st.canary_weight = w;
    }

    /// Files measurements under their runs; late ones for runs that ended are dropped.
    fn record(&mut self, spec: &RolloutSpec, results: &[MeasurementResult]) {
        let step_specs = step_metrics(spec, self.st.step);
        let bg_specs = spec.analysis.as_ref().map(|a| a.metrics.as_slice());
        let mut recorded = false;
        for r in results {
            for (run, specs) in [
                (&mut self.st.step_analysis, step_specs),
                (&mut self.st.background_analysis, bg_specs),
            ] {
                let (Some(run), Some(specs)) = (run.as_mut(), specs) else {
                    continue;
                };
                if run.id != r.run_id {
                    continue;
                }
                if let (Some(m), Some(metric)) =
                    (run.metrics.get_mut(r.metric), specs.get(r.metric))
                {
                    m.tally.add(r.measurement.clone(), metric);
                    m.pending = false;
                    m.next_at = r.measurement.at.max(self.now) + millis(metric.interval);
                    recorded = true;
                }
            }
        }
        if recorded {
            self.st.last_progress_at = self.now;
        }
    }

    /// Starts a rollout when the configured canary is new or changed; cancels one whose
    /// canary became the stable version in the config.
    fn follow_canary(&mut self, spec: &RolloutSpec, revision: &str) {
        if spec.canary == self.st.stable {
            if let Some(old) = self.st.canary.take() {
                self.st.canary_weight = 0;
                self.st.phase = Phase::Healthy;
                self.st.pause = None;
                self.st.step_analysis = None;
                self.st.background_analysis = None;
                self.st.message = format!("`{}` is stable", self.st.stable);
                self.event(EventKind::Cancelled, format!("rollout of `{old}` cancelled: the config names the stable version as canary"));
            }
            return;
        }
        if self.st.canary.as_deref() == Some(spec.canary.as_str())
            && self.st.canary_revision == revision
        {
            return;
        }
        let superseded = self.st.canary.replace(spec.canary.clone());
        self.st.canary_revision = revision.to_string();
        self.st.retired.retain(|v| *v != spec.canary);
        self.st.retiring.retain(|r| r.version != spec.canary);
        let why = match superseded {
            Some(old) if old != spec.canary => format!(
                "rolling out `{}` (replaces the rollout of `{old}`)",
                spec.canary
            ),
            Some(_) => format!("rolling out `{}` (its definition changed)", spec.canary),
            None => format!("rolling out `{}` over `{}`", spec.canary, self.st.stable),
        };
        self.restart(EventKind::Started, why);
    }

    /// Back to step 0 with the canary at weight 0 and fresh analysis.
    fn restart(&mut self, kind: EventKind, why: String) {
        self.st.canary_weight = 0;
        self.st.step = 0;
        self.st.step_started_at = self.now;
        self.st.last_progress_at = self.now;
        self.st.phase = Phase::Progressing;
        self.st.pause = None;
        self.st.step_analysis = None;
        self.st.background_analysis = None;
        self.st.message = why.clone();
        self.event(kind, why);
    }

    fn advance(&mut self) {
        self.st.step += 1;
        self.st.step_started_at = self.now;
        self.st.last_progress_at = self.now;
        self.st.step_analysis = None;
    }

    fn abort(&mut self, why: String) {
        self.st.canary_weight = 0;
        self.st.phase = Phase::Degraded;
        self.st.pause = None;
        self.st.step_analysis = None;
        self.st.background_analysis = None;
        self.st.message = why.clone();
        self.event(EventKind::Aborted, why);
    }

    fn pause(&mut self, reason: PauseReason, why: String) {
        self.st.phase = Phase::Paused;
        self.st.pause = Some(Pause {
            reason,
            since: self.now,
        });
        self.st.message = why.clone();
        self.event(EventKind::Paused, why);
    }

    /// The canary becomes stable; the old stable drains, then is removed.
    fn complete(&mut self) {
        let Some(canary) = self.st.canary.take() else {
            return;
        };
        let old = std::mem::replace(&mut self.st.stable, canary.clone());
        self.st.canary_weight = 0;
        self.st.phase = Phase::Healthy;
        self.st.pause = None;
        self.st.step_analysis = None;
        self.st.background_analysis = None;
        if old != canary && !self.st.retiring.iter().any(|r| r.version == old) {
            self.st.retiring.push(Retiring {
                version: old.clone(),
                since: self.now,
            });
        }
        self.st.message = format!("`{canary}` is stable; `{old}` drains");
        self.event(EventKind::Completed, format!("`{canary}` promoted to stable with 100% of traffic; `{old}` gets no new requests and drains"));
    }

    fn progress(&mut self, spec: &RolloutSpec) {
        // Each pass completes a step or returns; bound the loop by the number of steps.
        for _ in 0..=spec.steps.len() + 1 {
            if self.st.canary.is_none()
                || !matches!(self.st.phase, Phase::Progressing | Phase::Paused)
            {
                return;
            }
            if self.judge_background(spec) || self.st.phase == Phase::Paused {
                return;
            }
            let Some(step) = spec.steps.get(self.st.step) else {
                if !self.promoted_by_hand && self.await_background_evidence(spec) {
                    return;
                }
                self.complete();
                return;
            };
            let n = self.st.step + 1;
            match step {
                Step::SetWeight(w) => {
                    let w = (*w).min(spec.max_weight);
                    self.set_weight(w);
                    self.event(
                        EventKind::StepCompleted,
                        format!(
                            "step {n}: canary weight set to {}%",
                            format_percent(w.into())
                        ),
                    );
                    self.advance();
                }
                Step::Pause(p) => match p.duration {
                    Some(d) => {
                        let end = self.st.step_started_at + millis(d);
                        if self.now < end {
                            self.st.message = format!(
                                "step {n}: pausing for {}",
                                crate::units::format_duration(d)
                            );
                            self.wake(end);
                            return;
                        }
                        self.event(
                            EventKind::StepCompleted,
                            format!(
                                "step {n}: pause of {} over",
                                crate::units::format_duration(d)
                            ),
                        );
                        self.advance();
                    }
                    None => {
                        self.pause(PauseReason::Step, format!("step {n}: waiting for promote"));
                        return;
                    }
                },
                Step::Analysis(a) => {
                    let run = self.ensure_run(RunSlot::Step, &a.metrics);
                    match overall(&a.metrics, &run.metrics, false) {
                        Verdict::Pass => {
                            let summary = summarize(&run.metrics);
                            self.event(
                                EventKind::StepCompleted,
                                format!("step {n}: analysis passed ({summary})"),
                            );
                            self.advance();
                        }
                        Verdict::Fail(why) => {
                            self.abort(format!("step {n}: analysis failed: {why}"));
                            return;
                        }
                        Verdict::Inconclusive(why) => {
                            self.pause(
                                PauseReason::Inconclusive,
                                format!(
                                    "step {n}: analysis inconclusive, waiting for a human: {why}"
                                ),
                            );
                            return;
                        }
                        Verdict::Running => {
                            let deadline =
                                self.st.last_progress_at + millis(spec.progress_deadline);
                            if self.now >= deadline {
                                self.abort(format!(
                                    "step {n}: no progress for {} (progress deadline): analysis got no measurement",
                                    crate::units::format_duration(spec.progress_deadline)
                                ));
                            } else {
                                self.st.message = format!("step {n}: analysis running");
                                self.wake(deadline);
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// With the steps done, holds the rollout at its weight until every sequential
    /// background metric has judged `minRequests` canary requests: never a pass on no data.
    /// Past the progress deadline it pauses for a human. True while it holds.
    fn await_background_evidence(&mut self, spec: &RolloutSpec) -> bool {
        let (Some(bg), Some(run)) = (&spec.analysis, &self.st.background_analysis) else {
            return false;
        };
        let short = bg
            .metrics
            .iter()
            .zip(&run.metrics)
            .find_map(|(metric, m)| m.tally.short_of_requests(metric));
        let Some(why) = short else { return false };
        let deadline = self.st.step_started_at + millis(spec.progress_deadline);
        if self.now >= deadline {
            self.pause(
                PauseReason::Inconclusive,
                format!("background analysis inconclusive at the end of the steps, waiting for a human: {why}"),
            );
        } else {
            self.st.message = format!(
                "steps done; completing once the background analysis has judged enough of the canary: {why}"
            );
            self.wake(deadline);
        }
        true
    }

    /// Judges the background analysis; true when it aborted or paused the rollout.
    fn judge_background(&mut self, spec: &RolloutSpec) -> bool {
        let Some(bg) = &spec.analysis else {
            return false;
        };
        if self.st.step < bg.starting_step {
            return false;
        }
        let run = self.ensure_run(RunSlot::Background, &bg.metrics);
        match overall(&bg.metrics, &run.metrics, true) {
            Verdict::Fail(why) => {
                self.abort(format!("background analysis failed: {why}"));
                true
            }
            // Also when already paused at a step or by hand: an inconclusive metric stops being
            // measured, so the human waiting there must hear that nothing watches the canary.
            Verdict::Inconclusive(why)
                if self.st.pause.as_ref().map(|p| p.reason) != Some(PauseReason::Inconclusive) =>
            {
                self.pause(
                    PauseReason::Inconclusive,
                    format!("background analysis inconclusive, waiting for a human: {why}"),
                );
                true
            }
            _ => false,
        }
    }

    fn ensure_run(&mut self, slot: RunSlot, metrics: &[MetricSpec]) -> AnalysisRun {
        let now = self.now;
        let next_id = &mut self.st.next_run_id;
        let run = match slot {
            RunSlot::Step => &mut self.st.step_analysis,
            RunSlot::Background => &mut self.st.background_analysis,
        };
        if run
            .as_ref()
            .is_none_or(|r| r.metrics.len() != metrics.len())
        {
            let id = *next_id;
            *next_id += 1;
            *run = Some(AnalysisRun {
                id,
                started_at: now,
                metrics: metrics
                    .iter()
                    .map(|m| MetricRun {
                        name: m.name.clone(),
                        tally: MetricTally::default(),
                        // The first look comes one interval in, when the window holds traffic
                        // seen at the current weight.
                        next_at: now + millis(m.interval),
                        pending: false,
                    })
                    .collect(),
            });
        }
        run.clone().unwrap_or_else(|| AnalysisRun {
            id: 0,
            started_at: now,
            metrics: Vec::new(),
        })
    }

    /// Removes retiring versions once drained (and kept for `scaleDownDelay`), or at the drain timeout.
    fn retire(&mut self, spec: &RolloutSpec, active: &BTreeMap<String, u64>) {
        let delay = millis(spec.scale_down_delay);
        let limit = millis(spec.drain_timeout).max(delay);
        let mut keep = Vec::new();
        for r in std::mem::take(&mut self.st.retiring) {
            let elapsed = self.now.saturating_sub(r.since);
            let in_flight = active.get(&r.version).copied().unwrap_or(0);
            if (in_flight == 0 && elapsed >= delay) || elapsed >= limit {
                let how = if in_flight == 0 {
                    "drained".to_string()
                } else {
                    format!("drain timeout reached with {in_flight} still in flight")
                };
                self.effects.push(Effect::Remove {
                    version: r.version.clone(),
                });
                if !self.st.retired.contains(&r.version) {
                    self.st.retired.push(r.version.clone());
                }
                self.event(
                    EventKind::Removed,
                    format!("`{}` removed from the route ({how})", r.version),
                );
                if self.st.phase == Phase::Healthy && self.st.canary.is_none() {
                    self.st.message = format!("`{}` is stable", self.st.stable);
                }
            } else {
                // Poll while requests drain; wake exactly at the deadlines.
                self.wake(
                    (self.now + 1000)
                        .min(r.since + limit)
                        .max(r.since + delay.min(limit)),
                );
                keep.push(r);
            }
        }
        self.st.retiring = keep;
    }

    fn schedule_measurements(&mut self, spec: &RolloutSpec) {
        if self.st.canary.is_none() {
            return;
        }
        let step_specs = match (self.st.phase, spec.steps.get(self.st.step)) {
            (Phase::Progressing, Some(Step::Analysis(a))) => Some(a.metrics.as_slice()),
            _ => None,
        };
        let bg_specs = match self.st.phase {
            Phase::Progressing | Phase::Paused => spec
                .analysis
                .as_ref()
                .filter(|bg| self.st.step >= bg.starting_step)
                .map(|bg| bg.metrics.as_slice()),
            _ => None,
        };
        let now = self.now;
        let mut wake = None::<u64>;
        let mut effects = Vec::new();
        for (run, specs, background) in [
            (&mut self.st.step_analysis, step_specs, false),
            (&mut self.st.background_analysis, bg_specs, true),
        ] {
            let (Some(run), Some(specs)) = (run.as_mut(), specs) else {
                continue;
            };
            for (index, (m, metric)) in run.metrics.iter_mut().zip(specs).enumerate() {
                let count = if background {
                    None
                } else {
                    Some(metric.count.unwrap_or(1))
                };
                if m.pending || m.tally.verdict(metric, count) != Verdict::Running {
                    continue;
                }
                if m.next_at <= now {
                    m.pending = true;
                    effects.push(Effect::Measure(MeasureRequest {
                        run_id: run.id,
                        index,
                        metric: Box::new(metric.clone()),
                        // The sequential judge looks on from the seconds it weighed last.
                        since: run
                            .started_at
                            .max(m.tally.sequential.as_ref().map_or(0, |t| t.through)),
                    }));
                } else {
                    wake = Some(wake.map_or(m.next_at, |w| w.min(m.next_at)));
                }
            }
        }
        self.effects.extend(effects);
        if let Some(w) = wake {
            self.wake(w);
        }
    }
}

#[derive(Clone, Copy)]
enum RunSlot {
    Step,
    Background,
}

fn step_metrics(spec: &RolloutSpec, step: usize) -> Option<&[MetricSpec]> {
    match spec.steps.get(step) {
        Some(Step::Analysis(a)) => Some(&a.metrics),
        _ => None,
    }
}

/// The worst verdict of a run's metrics: Fail, then Inconclusive, then Running; Pass when all pass.
fn overall(specs: &[MetricSpec], runs: &[MetricRun], background: bool) -> Verdict {
    let mut result = Verdict::Pass;
    for (metric, run) in specs.iter().zip(runs) {
        let count = if background {
            None
        } else {
            Some(metric.count.unwrap_or(1))
        };
        match run.tally.verdict(metric, count) {
            v @ Verdict::Fail(_) => return v,
            v @ Verdict::Inconclusive(_) => result = v,
            Verdict::Running if result == Verdict::Pass => result = Verdict::Running,
            _ => {}
        }
    }
    result
}

fn summarize(runs: &[MetricRun]) -> String {
    runs.iter()
        .map(|m| {
            if let (Some(_), Some(last)) = (&m.tally.sequential, &m.tally.last) {
                return format!("{}: {}", m.name, last.message);
            }
            let last = m
                .tally
                .last
                .as_ref()
                .and_then(|l| l.value)
                .map_or("-".to_string(), show);
            format!("{}: {} ok, last {last}", m.name, m.tally.successes)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn millis(d: Duration) -> u64 {
    crate::clock::millis(d)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
