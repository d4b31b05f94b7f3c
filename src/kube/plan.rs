//! The Kubernetes driver's planner: what was observed of a rollout's Deployment, its canary
//! Deployment, Services and proxies, with the Rollout's status, in; the status to record and
//! the actions to take, out. Pure: no I/O, no clock.
//!
//! It touches the user's Deployment only through `spec.paused`: paused at adoption, so a new
//! pod template does not roll its pods; unpaused once, at promotion, when all traffic is on
//! the canary, to roll onto the new template; paused again after. If tidegate dies at any
//! point the Deployment is either paused or rolling to the template its owner asked for.
//!
//! A promotion, once the steps are done:
//! 1. `ScaleUp`: `<name>-canary` to the Deployment's size, until all its pods are ready;
//! 2. `ShiftToCanary`: 100 % to the canary, until the proxies applied it and the stable pods
//!    drained (no request in flight, or `drainTimeout`);
//! 3. `RollDeployment`: unpause the Deployment until it runs the new template, all available;
//! 4. `PinStable`: the stable Service selects the new pods, until the proxies see them;
//! 5. `ShiftToStable`: 100 % to stable, until applied and the canary pods drained;
//! 6. `Cleanup`: delete `<name>-canary`, pause the Deployment: done.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::crd::{
    CommandOutcome, CommandRequest, Promotion, RolloutResourceSpec, RolloutResourceStatus,
};
use crate::rollout::status::Event;
use crate::rollout::{
    Command, Decision, Effect, EventKind, MeasureRequest, MeasurementResult, Observations, Phase,
    RolloutStatus, command, decide,
};
use crate::units::{FULL_WEIGHT, WeightBps};

/// The engine's names for the two tracks.
pub const STABLE: &str = "stable";
pub const CANARY: &str = "canary";

/// How often the planner wants to look while it waits on the cluster.
const POLL: Duration = Duration::from_secs(2);

/// The stages of a promotion (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    ScaleUp,
    ShiftToCanary,
    RollDeployment,
    PinStable,
    ShiftToStable,
    Cleanup,
}

/// The user's Deployment as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentView {
    pub generation: i64,
    pub observed_generation: i64,
    pub paused: bool,
    pub replicas: i32,
    pub updated_replicas: i32,
    pub available_replicas: i32,
    /// tidegate's identity of its pod template.
    pub template: String,
    /// `pod-template-hash` of the ReplicaSet running that template, once there is one.
    pub template_hash: Option<String>,
}

/// `<name>-canary`, the Deployment tidegate owns, as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryView {
    pub template: String,
    pub replicas: i32,
    pub ready_replicas: i32,
}

/// What the proxies report, summed over the fleet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    /// The canary weight every proxy serves; None while they differ.
    pub applied_weight: Option<WeightBps>,
    /// Requests in flight and tunnels open, per track.
    pub active: BTreeMap<String, u64>,
    /// Ready endpoints of the stable Service every proxy routes to.
    pub stable_endpoints: u32,
}

/// Everything the planner sees.
#[derive(Debug, Clone)]
pub struct Observed<'a> {
    /// Unix ms.
    pub now: u64,
    pub name: &'a str,
    pub spec: &'a RolloutResourceSpec,
    pub status: &'a RolloutResourceStatus,
    pub deployment: &'a DeploymentView,
    pub canary: Option<&'a CanaryView>,
    /// The `pod-template-hash` the stable Service selects; None when it does not exist.
    pub stable_service: Option<&'a str>,
    pub fleet: &'a FleetView,
    pub measurements: Vec<MeasurementResult>,
    /// A command asked for (`tidegate.dev/command`); handled once, by its id.
    pub command: Option<&'a CommandRequest>,
}

/// What to do to the cluster, after the status is recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set `spec.paused` of the user's Deployment, and nothing else of it.
    PauseDeployment(bool),
    /// Create or update `<name>-canary` from the Deployment's pod template, at this size.
    ApplyCanary {
        replicas: i32,
    },
    DeleteCanary,
    /// Create or update `<name>-stable` (selecting this `pod-template-hash`) and `<name>-canary`.
    ApplyServices {
        stable_hash: String,
    },
    Measure(MeasureRequest),
    /// A Kubernetes Event on the Rollout.
    Event {
        warning: bool,
        reason: String,
        message: String,
    },
    /// The transition posted to the rollout's `notify.webhook`, as in local mode.
    Notify {
        webhook: String,
        event: Event,
    },
}

/// The planner's answer: record `status` first, then act.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub status: RolloutResourceStatus,
    pub actions: Vec<Action>,
    pub requeue_after: Option<Duration>,
}

/// Plans one look at a rollout.
pub fn plan(o: &Observed) -> Plan {
    if o.status.stable_template.is_none() && o.deployment.template_hash.is_none() {
        // Paused before its first ReplicaSet exists, a Deployment would never get one: it is
        // adopted once its pods are being made.
        let mut status = o.status.clone();
        let why = "waiting for the Deployment's first ReplicaSet before adopting it";
        set_condition(
            &mut status.conditions,
            "Progressing",
            false,
            "WaitingForReplicaSet",
            why,
            o.now,
        );
        return Plan {
            status,
            actions: Vec::new(),
            requeue_after: Some(POLL),
        };
    }
    let mut p = Planner {
        o,
        st: o.status.clone(),
        actions: Vec::new(),
        wake: None,
    };
    p.adopt();
    match p.st.promotion.clone() {
        Some(promotion) => {
            if let Some(asked) = o
                .command
                .filter(|c| p.st.last_command.as_ref().is_none_or(|l| l.id != c.id))
            {
                let why = format!(
                    "the promotion is under way ({:?}); it finishes on its own",
                    promotion.stage
                );
                p.answer(asked, false, why);
            }
            p.promote(promotion)
        }
        None => p.steps(),
    }
    p.services();
    p.conditions();
    p.st.step_of = p.st.rollout.as_ref().map(|r| {
        let steps = o.spec.strategy.steps.len();
        format!("{}/{steps}", (r.step + 1).min(steps))
    });
    Plan {
        status: p.st,
        actions: p.actions,
        requeue_after: p.wake,
    }
}

struct Planner<'a, 'o> {
    o: &'a Observed<'o>,
    st: RolloutResourceStatus,
    actions: Vec<Action>,
    wake: Option<Duration>,
}

impl Planner<'_, '_> {
    fn record(&self) -> RolloutStatus {
        self.st
            .rollout
            .clone()
            .unwrap_or_else(|| RolloutStatus::new(self.o.name, STABLE, self.o.now))
    }

    fn wake(&mut self, after: Duration) {
        self.wake = Some(self.wake.map_or(after, |w| w.min(after)));
    }

    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.actions.push(Action::Event {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    /// A transition: an Event on the Rollout, and the webhook's notification when it is one
    /// users are told of.
    fn transition(&mut self, e: &Event) {
        let warning = matches!(e.kind, EventKind::Aborted | EventKind::Paused);
        self.event(warning, &format!("{:?}", e.kind), e.message.clone());
        if let Some(n) = &self.o.spec.strategy.notify
            && e.kind.is_notified()
        {
            self.actions.push(Action::Notify {
                webhook: n.webhook.clone(),
                event: e.clone(),
            });
        }
    }

    /// The Deployment's running template is the stable one; the Deployment stays paused.
    fn adopt(&mut self) {
        let d = self.o.deployment;
        if self.st.stable_template.is_none() {
            self.st.stable_template = Some(d.template.clone());
            self.event(
                false,
                "Adopted",
                "the Deployment is paused: tidegate rolls its new pod templates out as canaries"
                    .into(),
            );
        }
        let rolling = self
            .st
            .promotion
            .as_ref()
            .is_some_and(|p| p.stage == Stage::RollDeployment);
        if !d.paused && !rolling {
            self.actions.push(Action::PauseDeployment(true));
        }
        if self.st.stable_revision.is_none()
            && self.st.stable_template.as_deref() == Some(&d.template)
        {
            self.st.stable_revision = d.template_hash.clone();
        }
    }

    /// The engine's steps; a completion starts the promotion instead of ending the rollout.
    fn steps(&mut self) {
        let o = self.o;
        let record = self.record();
        let wanted = self.st.stable_template.as_deref() != Some(o.deployment.template.as_str());
        let mut spec = o.spec.strategy.clone();
        spec.canary = if wanted { CANARY } else { STABLE }.to_string();
        let obs = Observations {
            now: o.now,
            canary_revision: o.deployment.template.clone(),
            measurements: o.measurements.clone(),
            active: o.fleet.active.clone(),
        };
        let asked = o
            .command
            .filter(|c| self.st.last_command.as_ref().is_none_or(|l| l.id != c.id));
        let d = match asked {
            None => decide(&spec, &record, &obs),
            Some(asked) => match parse_command(asked)
                .and_then(|cmd| command(&spec, &record, cmd, &obs).map_err(|e| e.to_string()))
            {
                Ok(d) => {
                    self.answer(asked, true, "applied".into());
                    d
                }
                Err(why) => {
                    self.answer(asked, false, why);
                    decide(&spec, &record, &obs)
                }
            },
        };
        if d.status.stable == CANARY {
            // The steps are done: hold the weight and promote, stage by stage.
            for e in d
                .events
                .iter()
                .filter(|e| e.kind == EventKind::StepCompleted)
            {
                self.event(false, "StepCompleted", e.message.clone());
            }
            let mut held = d.status.clone();
            held.stable = STABLE.to_string();
            held.canary = Some(CANARY.to_string());
            held.canary_weight = record.canary_weight;
            held.phase = Phase::Progressing;
            held.retiring.clear();
            held.history.retain(|e| {
                !matches!(e.kind, EventKind::Completed | EventKind::Removed) || e.at < o.now
            });
            self.st.rollout = Some(held);
            self.start_stage(Stage::ScaleUp, None);
            return;
        }
        self.apply(d);
        let record = self.record();
        match (record.phase, record.canary.is_some()) {
            (Phase::Progressing | Phase::Paused, true) => {
                let replicas = canary_size(o.deployment.replicas, record.canary_weight);
                self.ensure_canary(replicas);
            }
            (Phase::Degraded, true) => {
                let aborted = last_event(&record, EventKind::Aborted).unwrap_or(o.now);
                let delay = crate::clock::millis(o.spec.strategy.abort_scale_down_delay);
                if o.now >= aborted + delay {
                    self.ensure_canary(0);
                } else {
                    self.wake(Duration::from_millis(aborted + delay - o.now));
                }
            }
            _ => {
                if o.canary.is_some() {
                    self.actions.push(Action::DeleteCanary);
                }
            }
        }
    }

    /// Records what came of a command, for the one who asked.
    fn answer(&mut self, asked: &CommandRequest, applied: bool, message: String) {
        if !applied {
            self.event(
                true,
                "CommandRefused",
                format!("{}: {message}", asked.command),
            );
        }
        self.st.last_command = Some(CommandOutcome {
            id: asked.id.clone(),
            command: asked.command.clone(),
            applied,
            message,
        });
    }

    /// Takes an engine decision: its status, its measurements and its events.
    fn apply(&mut self, d: Decision) {
        for e in &d.events {
            self.transition(e);
        }
        for effect in d.effects {
            // Removal is the promotion's business here, stage by stage.
            if let Effect::Measure(ask) = effect {
                self.actions.push(Action::Measure(ask));
            }
        }
        if let Some(after) = d.requeue_after {
            self.wake(after);
        }
        self.st.rollout = Some(d.status);
    }

    fn ensure_canary(&mut self, replicas: i32) {
        let current = self.o.canary;
        let up_to_date = current
            .is_some_and(|c| c.replicas == replicas && c.template == self.o.deployment.template);
        if !up_to_date {
            self.actions.push(Action::ApplyCanary { replicas });
        }
    }

    fn start_stage(&mut self, stage: Stage, new_revision: Option<String>) {
        let message = match stage {
            Stage::ScaleUp => "promoting: the canary scales to full size",
            Stage::ShiftToCanary => "promoting: all traffic to the canary; the stable pods drain",
            Stage::RollDeployment => {
                "promoting: the Deployment rolls onto the new template while the canary serves"
            }
            Stage::PinStable => "promoting: the stable Service selects the new pods",
            Stage::ShiftToStable => "promoting: traffic back to the stable pods; the canary drains",
            Stage::Cleanup => "promoting: the canary Deployment goes away",
        };
        let promotion = Promotion {
            stage,
            since: self.o.now,
            new_revision,
        };
        self.event(false, "Promoting", message.to_string());
        let now = self.o.now;
        if let Some(r) = &mut self.st.rollout {
            r.message = message.to_string();
            let event = Event {
                at: now,
                kind: EventKind::Promoting,
                message: message.to_string(),
                step: r.step,
                canary_weight: r.canary_weight,
            };
            r.history.push(event);
            let extra = r
                .history
                .len()
                .saturating_sub(crate::rollout::status::HISTORY_LEN);
            r.history.drain(..extra);
        }
        self.st.promotion = Some(promotion.clone());
        // Go on at once: the next stage may already be satisfied.
        self.promote(promotion);
    }

    fn set_weight(&mut self, weight: WeightBps) {
        if let Some(r) = &mut self.st.rollout {
            r.canary_weight = weight;
        }
    }

    /// One look at the promotion in progress: wait, or move to the next stage.
    fn promote(&mut self, p: Promotion) {
        let o = self.o;
        let d = o.deployment;
        let drain = crate::clock::millis(o.spec.strategy.drain_timeout);
        let drained = |track: &str| {
            o.fleet.active.get(track).copied().unwrap_or(0) == 0 || o.now >= p.since + drain
        };
        match p.stage {
            Stage::ScaleUp => {
                self.ensure_canary(d.replicas);
                if o.canary.is_some_and(|c| c.ready_replicas >= d.replicas) {
                    return self.start_stage(Stage::ShiftToCanary, None);
                }
            }
            Stage::ShiftToCanary => {
                self.set_weight(FULL_WEIGHT);
                if o.fleet.applied_weight == Some(FULL_WEIGHT) && drained(STABLE) {
                    return self.start_stage(Stage::RollDeployment, None);
                }
            }
            Stage::RollDeployment => {
                self.set_weight(FULL_WEIGHT);
                if d.paused {
                    self.actions.push(Action::PauseDeployment(false));
                }
                let rolled = d.observed_generation >= d.generation
                    && d.updated_replicas >= d.replicas
                    && d.available_replicas >= d.replicas;
                if let (true, Some(hash)) = (rolled, &d.template_hash) {
                    return self.start_stage(Stage::PinStable, Some(hash.clone()));
                }
            }
            Stage::PinStable => {
                self.set_weight(FULL_WEIGHT);
                let hash = p.new_revision.clone().unwrap_or_default();
                self.st.stable_revision = Some(hash.clone());
                if o.stable_service == Some(hash.as_str())
                    && o.fleet.stable_endpoints >= d.replicas.max(1) as u32
                {
                    return self.start_stage(Stage::ShiftToStable, p.new_revision);
                }
            }
            Stage::ShiftToStable => {
                self.set_weight(0);
                if o.fleet.applied_weight == Some(0) && drained(CANARY) {
                    return self.start_stage(Stage::Cleanup, p.new_revision);
                }
            }
            Stage::Cleanup => return self.finish_promotion(),
        }
        self.wake(POLL);
    }

    /// The new template is stable: the canary Deployment goes, the Deployment pauses again.
    fn finish_promotion(&mut self) {
        let o = self.o;
        if o.canary.is_some() {
            self.actions.push(Action::DeleteCanary);
        }
        if !o.deployment.paused {
            self.actions.push(Action::PauseDeployment(true));
        }
        let mut record = self.record();
        record.phase = Phase::Healthy;
        record.canary = None;
        record.canary_weight = 0;
        record.stable = STABLE.to_string();
        record.pause = None;
        record.step_analysis = None;
        record.background_analysis = None;
        record.retiring.clear();
        record.message = "the new template is stable; the canary Deployment is gone".into();
        let message = format!(
            "promoted: the Deployment runs the new template (pod-template-hash {}), the old pods drained and were replaced",
            self.st.stable_revision.as_deref().unwrap_or("?")
        );
        let completed = Event {
            at: o.now,
            kind: EventKind::Completed,
            message,
            step: record.step,
            canary_weight: FULL_WEIGHT,
        };
        self.transition(&completed);
        record.history.push(completed);
        self.st.rollout = Some(record);
        self.st.stable_template = Some(o.deployment.template.clone());
        self.st.promotion = None;
    }

    /// The stable Service selects the stable pods; the canary Service exists with it.
    fn services(&mut self) {
        let Some(hash) = self.st.stable_revision.clone() else {
            return;
        };
        if self.o.stable_service != Some(hash.as_str()) {
            self.actions
                .push(Action::ApplyServices { stable_hash: hash });
        }
    }

    /// `Progressing`, `Available` and `Aborted` from where the rollout stands.
    fn conditions(&mut self) {
        let record = self.record();
        let (progressing, why) = match (&self.st.promotion, record.phase) {
            (Some(p), _) => (true, format!("{:?}", p.stage)),
            (None, Phase::Progressing | Phase::Paused) => (true, record.phase.as_str().into()),
            (None, phase) => (false, phase.as_str().into()),
        };
        let available = self.o.deployment.available_replicas >= self.o.deployment.replicas;
        let aborted = record.phase == Phase::Degraded;
        let now = self.o.now;
        for (kind, on, reason) in [
            ("Progressing", progressing, why.as_str()),
            (
                "Available",
                available,
                if available {
                    "PodsAvailable"
                } else {
                    "PodsUnavailable"
                },
            ),
            (
                "Aborted",
                aborted,
                if aborted { "Aborted" } else { "NotAborted" },
            ),
        ] {
            set_condition(
                &mut self.st.conditions,
                kind,
                on,
                reason,
                &record.message,
                now,
            );
        }
    }
}

fn parse_command(asked: &CommandRequest) -> Result<Command, String> {
    Ok(match asked.command.as_str() {
        "promote" => Command::Promote { full: asked.full },
        "abort" => Command::Abort,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "retry" => Command::Retry,
        "restart" => Command::Restart,
        other => return Err(format!("`{other}` is not a command")),
    })
}

/// The canary's share of the Deployment's pods, at least one.
pub fn canary_size(replicas: i32, weight: WeightBps) -> i32 {
    let share = u64::from(replicas.max(0) as u32) * u64::from(weight);
    (share.div_ceil(u64::from(FULL_WEIGHT)) as i32).max(1)
}

fn last_event(record: &RolloutStatus, kind: EventKind) -> Option<u64> {
    record
        .history
        .iter()
        .rev()
        .find(|e| e.kind == kind)
        .map(|e| e.at)
}

/// Sets a condition, keeping its transition time while its status stays.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    kind: &str,
    on: bool,
    reason: &str,
    message: &str,
    now: u64,
) {
    let status = if on { "True" } else { "False" }.to_string();
    let reason: String = reason
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let time = Time(k8s_openapi::jiff::Timestamp::from_millisecond(now as i64).unwrap_or_default());
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = time;
            }
            c.status = status;
            c.reason = reason;
            c.message = message.to_string();
        }
        None => conditions.push(Condition {
            type_: kind.to_string(),
            status,
            reason,
            message: message.to_string(),
            last_transition_time: time,
            observed_generation: None,
        }),
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
