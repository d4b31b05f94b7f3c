//! The planner against a simulated cluster on a fake clock: adoption, a rollout's start and
//! steps, every stage of a promotion, an abort, and a controller restart at each stage.

use std::collections::BTreeMap;

use super::*;
use crate::kube::crd::{CommandRequest, RolloutResourceSpec};

const SEC: u64 = 1000;

fn spec() -> RolloutResourceSpec {
    yaml_serde::from_str(
        r#"
workloadRef: {name: shop}
steps:
  - setWeight: 10
  - pause: {duration: 1m}
  - setWeight: 50
  - pause: {duration: 1m}
drainTimeout: 30s
abortScaleDownDelay: 20s
"#,
    )
    .expect("spec")
}

/// The cluster as the planner's actions leave it, moved along by `settle`.
struct Cluster {
    now: u64,
    spec: RolloutResourceSpec,
    status: RolloutResourceStatus,
    deployment: DeploymentView,
    /// The template the Deployment's pods run, and their hash.
    running: (String, String),
    canary: Option<CanaryView>,
    stable_service: Option<String>,
    fleet: FleetView,
    /// Everything the planner asked for, in order.
    log: Vec<Action>,
    /// Read the status back from JSON before each look, as a restarted controller would.
    restart_every_look: bool,
    /// The command annotation, if any.
    command: Option<CommandRequest>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            now: 1_000_000,
            spec: spec(),
            status: RolloutResourceStatus::default(),
            deployment: DeploymentView {
                generation: 1,
                observed_generation: 1,
                paused: false,
                replicas: 10,
                updated_replicas: 10,
                available_replicas: 10,
                template: "t1".into(),
                template_hash: Some("h1".into()),
            },
            running: ("t1".into(), "h1".into()),
            canary: None,
            stable_service: None,
            fleet: FleetView {
                applied_weight: Some(0),
                active: BTreeMap::new(),
                stable_endpoints: 10,
            },
            log: Vec::new(),
            restart_every_look: false,
            command: None,
        }
    }

    /// One look of the planner, then its actions carried out.
    fn look(&mut self) -> Plan {
        if self.restart_every_look {
            let json = serde_json::to_string(&self.status).expect("status serializes");
            self.status = serde_json::from_str(&json).expect("status deserializes");
        }
        let plan = plan(&Observed {
            now: self.now,
            name: "shop",
            spec: &self.spec,
            status: &self.status,
            deployment: &self.deployment,
            canary: self.canary.as_ref(),
            stable_service: self.stable_service.as_deref(),
            fleet: &self.fleet,
            measurements: Vec::new(),
            command: self.command.as_ref(),
        });
        self.status = plan.status.clone();
        for a in &plan.actions {
            match a {
                Action::PauseDeployment(p) => self.deployment.paused = *p,
                Action::ApplyCanary { replicas } => {
                    let ready = self.canary.as_ref().map_or(0, |c| c.ready_replicas);
                    self.canary = Some(CanaryView {
                        template: self.deployment.template.clone(),
                        replicas: *replicas,
                        ready_replicas: ready.min(*replicas),
                    });
                }
                Action::DeleteCanary => self.canary = None,
                Action::ApplyServices { stable_hash } => {
                    self.stable_service = Some(stable_hash.clone())
                }
                Action::Measure(_) | Action::Event { .. } | Action::Notify { .. } => {}
            }
            self.log.push(a.clone());
        }
        plan
    }

    /// Time passes: pods become ready, an unpaused Deployment rolls, proxies catch up.
    fn settle(&mut self, ms: u64) {
        self.now += ms;
        if let Some(c) = &mut self.canary {
            c.ready_replicas = c.replicas;
        }
        let d = &mut self.deployment;
        if !d.paused && self.running.0 != d.template {
            self.running = (d.template.clone(), format!("h-{}", d.template));
            d.template_hash = Some(self.running.1.clone());
            d.observed_generation = d.generation;
        }
        self.fleet.stable_endpoints = d.replicas as u32;
        self.fleet.applied_weight = self.status.rollout.as_ref().map(|r| r.canary_weight);
    }

    /// The user changes the pod template (a new image).
    fn new_template(&mut self, template: &str) {
        self.deployment.template = template.into();
        self.deployment.generation += 1;
        // A paused Deployment does not roll: its pods keep running the old template.
        self.deployment.template_hash = None;
    }

    fn record(&self) -> &RolloutStatus {
        self.status.rollout.as_ref().expect("a status record")
    }

    fn stage(&self) -> Option<Stage> {
        self.status.promotion.as_ref().map(|p| p.stage)
    }

    fn events(&self) -> Vec<String> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Action::Event { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn adoption_pauses_the_deployment_and_pins_the_stable_service() {
    let mut c = Cluster::new();
    let p = c.look();
    assert!(c.deployment.paused, "{:?}", p.actions);
    assert_eq!(c.status.stable_template.as_deref(), Some("t1"));
    assert_eq!(c.status.stable_revision.as_deref(), Some("h1"));
    assert_eq!(c.stable_service.as_deref(), Some("h1"));
    assert_eq!(c.events(), ["Adopted"]);
    assert_eq!(c.record().phase, Phase::Healthy);
    assert!(c.canary.is_none());
    // Nothing more to do: no action the second time.
    c.settle(SEC);
    assert!(c.look().actions.is_empty());
    // Someone unpauses it: paused again, nothing else touched.
    c.deployment.paused = false;
    assert_eq!(c.look().actions, [Action::PauseDeployment(true)]);
}

#[test]
fn a_new_template_starts_a_rollout_whose_canary_follows_the_weight() {
    let mut c = Cluster::new();
    c.look();
    c.new_template("t2");
    c.settle(SEC);
    c.look();
    assert_eq!(c.record().phase, Phase::Progressing);
    assert_eq!(c.record().canary_weight, 1000);
    assert_eq!(
        c.canary.as_ref().map(|k| (k.template.as_str(), k.replicas)),
        Some(("t2", 1)),
        "10 % of 10 pods"
    );
    assert!(c.deployment.paused, "the Deployment does not roll");
    assert_eq!(
        c.status.step_of.as_deref(),
        Some("2/4"),
        "in the pause after `setWeight: 10`, counted from 1 as the CLI counts"
    );
    c.settle(60 * SEC);
    c.look();
    assert_eq!(c.record().canary_weight, 5000);
    assert_eq!(c.status.step_of.as_deref(), Some("4/4"));
    assert_eq!(c.canary.as_ref().map(|k| k.replicas), Some(5));
    assert_eq!(canary_size(3, 1), 1, "at least one pod");
    assert_eq!(canary_size(10, 2500), 3, "rounded up");
}

/// Drives a rollout of `t2` to its promotion's end; returns the stages seen, in order.
fn promote(c: &mut Cluster) -> Vec<Stage> {
    c.look();
    c.new_template("t2");
    c.settle(SEC);
    c.look();
    c.settle(60 * SEC);
    c.look();
    c.settle(60 * SEC);
    let mut stages = Vec::new();
    for _ in 0..40 {
        c.look();
        if let Some(s) = c.stage()
            && stages.last() != Some(&s)
        {
            stages.push(s);
        }
        if c.stage().is_none() && !stages.is_empty() {
            break;
        }
        c.settle(SEC);
    }
    stages
}

#[test]
fn a_promotion_goes_through_every_stage_and_leaves_the_deployment_paused_on_the_new_template() {
    let mut c = Cluster::new();
    let stages = promote(&mut c);
    assert_eq!(
        stages,
        [
            Stage::ScaleUp,
            Stage::ShiftToCanary,
            Stage::RollDeployment,
            Stage::PinStable,
            Stage::ShiftToStable,
        ],
        "Cleanup is done within its first look"
    );
    assert!(c.canary.is_none(), "the canary Deployment is gone");
    assert!(c.deployment.paused);
    assert_eq!(
        c.running.0, "t2",
        "the Deployment rolled onto the new template"
    );
    assert_eq!(c.status.stable_template.as_deref(), Some("t2"));
    assert_eq!(c.status.stable_revision.as_deref(), Some("h-t2"));
    assert_eq!(c.stable_service.as_deref(), Some("h-t2"));
    let r = c.record();
    assert_eq!(
        (r.phase, r.canary.as_deref(), r.canary_weight),
        (Phase::Healthy, None, 0)
    );
    assert_eq!(r.stable, STABLE);
    assert_eq!(r.history.last().map(|e| e.kind), Some(EventKind::Completed));
    assert!(c.events().iter().filter(|e| *e == "Promoting").count() >= 5);
    let stages_in_history = r
        .history
        .iter()
        .filter(|e| e.kind == EventKind::Promoting)
        .count();
    assert_eq!(stages_in_history, 6, "every stage is in the status history");
    // The Deployment was unpaused exactly once, and only when all traffic was on the canary.
    let unpaused: Vec<usize> = c
        .log
        .iter()
        .enumerate()
        .filter(|(_, a)| **a == Action::PauseDeployment(false))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(unpaused.len(), 1, "{:?}", c.log);
}

#[test]
fn each_stage_waits_for_what_it_needs() {
    let mut c = Cluster::new();
    c.look();
    c.new_template("t2");
    c.settle(SEC);
    c.look();
    c.settle(60 * SEC);
    c.look();
    c.now += 60 * SEC;
    // ScaleUp: the canary's pods are not ready yet.
    c.look();
    assert_eq!(c.stage(), Some(Stage::ScaleUp));
    assert_eq!(c.canary.as_ref().map(|k| k.replicas), Some(10));
    assert_eq!(
        c.record().canary_weight,
        5000,
        "the weight holds while it scales"
    );
    c.look();
    assert_eq!(c.stage(), Some(Stage::ScaleUp));
    c.settle(SEC);
    // ShiftToCanary: proxies have not applied 100 % yet, and requests on stable are in flight.
    c.fleet.active.insert(STABLE.into(), 3);
    c.look();
    assert_eq!(c.stage(), Some(Stage::ShiftToCanary));
    assert_eq!(c.record().canary_weight, FULL_WEIGHT);
    c.look();
    assert_eq!(
        c.stage(),
        Some(Stage::ShiftToCanary),
        "the proxies still serve 50 %"
    );
    c.fleet.applied_weight = Some(FULL_WEIGHT);
    c.now += SEC;
    c.look();
    assert_eq!(
        c.stage(),
        Some(Stage::ShiftToCanary),
        "stable still has requests in flight"
    );
    c.now += 30 * SEC;
    c.look();
    assert_eq!(
        c.stage(),
        Some(Stage::RollDeployment),
        "the drain timeout passed"
    );
    assert!(!c.deployment.paused);
    // RollDeployment: not rolled yet.
    c.look();
    assert_eq!(c.stage(), Some(Stage::RollDeployment));
    c.settle(SEC);
    // PinStable: the proxies do not see the new stable pods yet.
    c.fleet.stable_endpoints = 0;
    c.look();
    assert_eq!(c.stage(), Some(Stage::PinStable));
    assert_eq!(c.stable_service.as_deref(), Some("h-t2"));
    assert_eq!(
        c.record().canary_weight,
        FULL_WEIGHT,
        "the canary still serves"
    );
    c.fleet.stable_endpoints = 10;
    c.fleet.active.insert(CANARY.into(), 1);
    c.look();
    // ShiftToStable: back to stable; the canary drains.
    assert_eq!(c.stage(), Some(Stage::ShiftToStable));
    assert_eq!(c.record().canary_weight, 0);
    c.fleet.applied_weight = Some(0);
    c.now += SEC;
    c.look();
    assert_eq!(
        c.stage(),
        Some(Stage::ShiftToStable),
        "a canary request is in flight"
    );
    assert!(c.canary.is_some(), "the canary's in-flight requests finish");
    c.fleet.active.insert(CANARY.into(), 0);
    c.now += SEC;
    c.look();
    assert_eq!(c.stage(), None);
    assert!(c.canary.is_none());
}

#[test]
fn an_abort_puts_all_traffic_on_stable_at_once_and_scales_the_canary_down_later() {
    let mut c = Cluster::new();
    c.look();
    c.new_template("t2");
    c.settle(SEC);
    c.look();
    let mut record = c.record().clone();
    let d = crate::rollout::command(
        &{
            let mut s = c.spec.strategy.clone();
            s.canary = CANARY.into();
            s
        },
        &record,
        crate::rollout::Command::Abort,
        &Observations {
            now: c.now,
            canary_revision: "t2".into(),
            ..Default::default()
        },
    )
    .expect("abort applies");
    record = d.status;
    c.status.rollout = Some(record);
    c.look();
    assert_eq!(
        (c.record().phase, c.record().canary_weight),
        (Phase::Degraded, 0)
    );
    assert_eq!(
        c.canary.as_ref().map(|k| k.replicas),
        Some(1),
        "kept for inspection"
    );
    c.settle(19 * SEC);
    c.look();
    assert_eq!(c.canary.as_ref().map(|k| k.replicas), Some(1));
    c.settle(2 * SEC);
    c.look();
    assert_eq!(
        c.canary.as_ref().map(|k| k.replicas),
        Some(0),
        "after abortScaleDownDelay"
    );
    let aborted = c
        .status
        .conditions
        .iter()
        .find(|k| k.type_ == "Aborted")
        .expect("an Aborted condition");
    assert_eq!(aborted.status, "True");
    assert!(c.deployment.paused, "the Deployment never rolled");
    assert_eq!(c.running.0, "t1");
}

#[test]
fn a_controller_restarted_at_any_stage_goes_on_from_the_status() {
    let mut straight = Cluster::new();
    let stages = promote(&mut straight);
    let mut restarted = Cluster::new();
    restarted.restart_every_look = true;
    assert_eq!(promote(&mut restarted), stages);
    assert_eq!(
        restarted.log, straight.log,
        "the same actions, look by look"
    );
    assert_eq!(restarted.status, straight.status);
}

#[test]
fn reverting_the_template_cancels_the_rollout_and_removes_the_canary() {
    let mut c = Cluster::new();
    c.look();
    c.new_template("t2");
    c.settle(SEC);
    c.look();
    assert!(c.canary.is_some());
    c.deployment.template = "t1".into();
    c.settle(SEC);
    c.look();
    assert_eq!(c.record().phase, Phase::Healthy);
    assert!(c.canary.is_none());
}

#[test]
fn commands_are_handled_once_and_refused_with_a_reason() {
    let mut c = Cluster::new();
    c.look();
    c.new_template("t2");
    c.settle(SEC);
    c.look();
    let ask = |id: &str, command: &str| CommandRequest {
        id: id.into(),
        command: command.into(),
        full: false,
    };
    c.command = Some(ask("1", "pause"));
    c.look();
    assert_eq!(c.record().phase, Phase::Paused);
    let last = c.status.last_command.clone().expect("answered");
    assert_eq!((last.id.as_str(), last.applied), ("1", true));
    // The same request again (the annotation stays): not handled twice.
    c.settle(SEC);
    c.look();
    assert_eq!(
        c.status.last_command.as_ref().map(|l| l.id.as_str()),
        Some("1")
    );
    // Pausing a paused rollout is refused, with the engine's reason, and changes nothing.
    c.command = Some(ask("2", "pause"));
    c.look();
    let last = c.status.last_command.clone().expect("answered");
    assert!(
        !last.applied && last.message.contains("already paused"),
        "{last:?}"
    );
    assert_eq!(c.record().phase, Phase::Paused);
    c.command = Some(ask("3", "resume"));
    c.look();
    assert_eq!(c.record().phase, Phase::Progressing);
    c.command = Some(ask("4", "fly"));
    c.look();
    assert!(
        c.status
            .last_command
            .as_ref()
            .is_some_and(|l| l.message == "`fly` is not a command")
    );
    // promote --full: straight to the promotion.
    c.command = Some(CommandRequest {
        id: "5".into(),
        command: "promote".into(),
        full: true,
    });
    c.look();
    assert!(c.stage().is_some(), "promoting");
    // During the promotion, commands are refused: it finishes on its own.
    c.command = Some(ask("6", "abort"));
    c.look();
    let last = c.status.last_command.clone().expect("answered");
    assert!(
        !last.applied && last.message.contains("promotion is under way"),
        "{last:?}"
    );
}

#[test]
fn transitions_users_are_told_of_go_to_the_webhook_as_in_local_mode() {
    let mut c = Cluster::new();
    c.spec.strategy.notify =
        yaml_serde::from_str("{webhook: 'http://hooks.example/tidegate'}").ok();
    c.look();
    c.new_template("t2");
    c.settle(SEC);
    let plan = c.look();
    let notified: Vec<_> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Notify { webhook, event } => Some((webhook.as_str(), event.kind)),
            _ => None,
        })
        .collect();
    // Started, and the first step (setWeight 10) done at once.
    let hook = "http://hooks.example/tidegate";
    assert_eq!(
        notified,
        [(hook, EventKind::Started), (hook, EventKind::StepCompleted)]
    );
    // Without a webhook, only the Kubernetes Events.
    let mut quiet = Cluster::new();
    quiet.look();
    quiet.new_template("t2");
    quiet.settle(SEC);
    let plan = quiet.look();
    assert!(
        plan.actions
            .iter()
            .all(|a| !matches!(a, Action::Notify { .. }))
    );
    assert!(
        plan.actions
            .iter()
            .any(|a| matches!(a, Action::Event { reason, .. } if reason == "Started"))
    );
}

#[test]
fn a_deployment_is_adopted_only_once_its_first_replicaset_exists() {
    let mut c = Cluster::new();
    c.deployment.template_hash = None;
    let plan = c.look();
    assert!(
        plan.actions.is_empty(),
        "not paused before its pods are being made: {:?}",
        plan.actions
    );
    assert!(!c.deployment.paused);
    c.deployment.template_hash = Some("h1".into());
    c.look();
    assert!(c.deployment.paused);
    assert_eq!(c.status.stable_revision.as_deref(), Some("h1"));
}
