//! The status record: everything a rollout knows, persisted on every transition. Times are
//! unix milliseconds, so timers survive restarts as start times, not countdowns.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::MetricTally;
use crate::units::{FULL_WEIGHT, WeightBps, serde_weight};

/// Events kept in the status (older ones are dropped).
pub const HISTORY_LEN: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// No rollout in progress: the stable version takes all traffic.
    Healthy,
    /// Steps are being worked through.
    Progressing,
    /// Waiting for a human: a pause step without duration, a manual pause, or an inconclusive analysis.
    Paused,
    /// Aborted (by analysis, deadline or hand): all traffic on stable, the canary kept for inspection.
    Degraded,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Healthy,
        Phase::Progressing,
        Phase::Paused,
        Phase::Degraded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Healthy => "Healthy",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Degraded => "Degraded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PauseReason {
    /// A `pause: {}` step: `promote` continues.
    Step,
    /// `tidegate pause`: `resume` continues.
    Manual,
    /// An analysis could not decide: `resume` measures again, `promote` skips, `abort` rolls back.
    Inconclusive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    pub reason: PauseReason,
    pub since: u64,
}

/// One analysis run (a step's, or the background one) and its metrics' tallies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRun {
    /// Unique within the rollout; late measurements of an older run are dropped.
    pub id: u64,
    pub started_at: u64,
    pub metrics: Vec<MetricRun>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricRun {
    pub name: String,
    pub tally: MetricTally,
    /// When the next measurement is due.
    pub next_at: u64,
    /// A measurement was asked for and has not come back.
    #[serde(default)]
    pub pending: bool,
}

/// A version taken out of rotation after a promotion, waiting to drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retiring {
    pub version: String,
    pub since: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    Started,
    StepCompleted,
    Paused,
    Resumed,
    Promoted,
    Aborted,
    Retried,
    Restarted,
    Completed,
    Cancelled,
    Removed,
    /// Kubernetes: a promotion stage began (`kube::plan::Stage`).
    Promoting,
}

impl EventKind {
    /// Events a notification webhook hears about.
    pub fn is_notified(self) -> bool {
        matches!(
            self,
            EventKind::Started
                | EventKind::StepCompleted
                | EventKind::Paused
                | EventKind::Aborted
                | EventKind::Completed
        )
    }
}

/// A transition, with its reason and the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub at: u64,
    pub kind: EventKind,
    pub message: String,
    pub step: usize,
    #[serde(with = "serde_weight")]
    #[schemars(with = "f64")]
    pub canary_weight: WeightBps,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub route: String,
    pub phase: Phase,
    /// Why the rollout is in this phase, in a sentence.
    pub message: String,
    pub stable: String,
    /// The version being rolled out; None when nothing is (Healthy).
    #[serde(default)]
    pub canary: Option<String>,
    /// Identity of the canary's definition the rollout started with.
    #[serde(default)]
    pub canary_revision: String,
    #[serde(with = "serde_weight")]
    #[schemars(with = "f64")]
    pub canary_weight: WeightBps,
    /// Index of the current step; equal to the number of steps once all are done.
    pub step: usize,
    pub step_started_at: u64,
    /// Last time the rollout moved: a step completed or a measurement came in.
    pub last_progress_at: u64,
    #[serde(default)]
    pub pause: Option<Pause>,
    #[serde(default)]
    pub step_analysis: Option<AnalysisRun>,
    #[serde(default)]
    pub background_analysis: Option<AnalysisRun>,
    #[serde(default)]
    pub next_run_id: u64,
    #[serde(default)]
    pub retiring: Vec<Retiring>,
    /// Versions removed from the route table.
    #[serde(default)]
    pub retired: Vec<String>,
    #[serde(default)]
    pub history: Vec<Event>,
}

impl RolloutStatus {
    /// The status of a route seen for the first time: `stable` takes all traffic, nothing rolls.
    pub fn new(route: &str, stable: &str, now: u64) -> RolloutStatus {
        RolloutStatus {
            route: route.to_string(),
            phase: Phase::Healthy,
            message: format!("`{stable}` is stable"),
            stable: stable.to_string(),
            canary: None,
            canary_revision: String::new(),
            canary_weight: 0,
            step: 0,
            step_started_at: now,
            last_progress_at: now,
            pause: None,
            step_analysis: None,
            background_analysis: None,
            next_run_id: 1,
            retiring: Vec::new(),
            retired: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Weight of each version in `versions` (basis points): stable and canary share the
    /// route, every other version gets 0. Draining and removed versions are left out.
    pub fn weights<'a>(
        &self,
        versions: impl IntoIterator<Item = &'a str>,
    ) -> Vec<(&'a str, WeightBps)> {
        let canary = self.canary.as_deref().filter(|c| *c != self.stable);
        let canary_weight = if canary.is_some() {
            self.canary_weight
        } else {
            0
        };
        versions
            .into_iter()
            // Versions draining or removed leave the route table at once: no new request can
            // reach them, not even by cookie or version header; in-flight ones finish.
            .filter(|v| {
                !self.retired.iter().any(|r| r == v)
                    && !self.retiring.iter().any(|r| r.version == *v)
            })
            .map(|v| {
                let w = if v == self.stable {
                    FULL_WEIGHT - canary_weight
                } else if Some(v) == canary {
                    canary_weight
                } else {
                    0
                };
                (v, w)
            })
            .collect()
    }

    /// Measurements asked for by a process that is gone will never come back: ask again.
    pub fn forget_pending(&mut self) {
        for run in [&mut self.step_analysis, &mut self.background_analysis]
            .into_iter()
            .flatten()
        {
            for m in &mut run.metrics {
                m.pending = false;
            }
        }
    }
}
