//! The engine on a fake clock: every step kind, verdict and command, odd states included.

use std::collections::BTreeMap;

use super::*;
use crate::analysis::{Reading, judge};
use crate::rollout::status::{PauseReason, Phase};

const SEC: u64 = 1000;

fn spec(yaml: &str) -> RolloutSpec {
    yaml_serde::from_str(yaml).expect("spec parses")
}

const STEPS: &str = r#"
canary: v2
steps:
  - setWeight: 10
  - pause: {duration: 1m}
  - setWeight: 50
  - pause: {}
  - analysis:
      metrics:
        - name: errors
          interval: 10s
          count: 2
          provider: {builtin: {metric: errorRate, window: 10s}}
          successCondition: result < 0.01
  - setWeight: 80
drainTimeout: 30s
"#;

/// A driver on a fake clock: keeps status, applies decisions, remembers effects.
struct Sim {
    spec: RolloutSpec,
    status: RolloutStatus,
    now: u64,
    revision: String,
    effects: Vec<Effect>,
    events: Vec<Event>,
    active: BTreeMap<String, u64>,
    last_requeue: Option<std::time::Duration>,
}

impl Sim {
    fn new(yaml: &str) -> Sim {
        let spec = spec(yaml);
        let now = 1_000_000;
        Sim {
            status: RolloutStatus::new("app", "v1", now),
            spec,
            now,
            revision: "r1".into(),
            effects: Vec::new(),
            events: Vec::new(),
            active: BTreeMap::new(),
            last_requeue: None,
        }
    }

    fn obs(&self, measurements: Vec<MeasurementResult>) -> Observations {
        Observations {
            now: self.now,
            canary_revision: self.revision.clone(),
            measurements,
            active: self.active.clone(),
        }
    }

    fn apply(&mut self, d: Decision) {
        self.status = d.status;
        self.last_requeue = d.requeue_after;
        self.effects.extend(d.effects);
        self.events.extend(d.events);
    }

    fn tick(&mut self) {
        let d = decide(&self.spec, &self.status, &self.obs(vec![]));
        self.apply(d);
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.tick();
    }

    fn cmd(&mut self, c: Command) -> Result<(), CommandError> {
        let d = command(&self.spec, &self.status, c, &self.obs(vec![]))?;
        self.apply(d);
        Ok(())
    }

    /// Answers every pending Measure effect with `reading`.
    fn measure(&mut self, reading: Reading) -> usize {
        let asks: Vec<_> = self
            .effects
            .drain(..)
            .filter_map(|e| match e {
                Effect::Measure(ask) => Some((ask.run_id, ask.metric, ask.index)),
                _ => None,
            })
            .collect();
        let n = asks.len();
        let results = asks
            .into_iter()
            .map(|(run_id, metric, index)| MeasurementResult {
                run_id,
                metric: index,
                measurement: judge(&metric, reading.clone(), self.now),
            })
            .collect();
        let d = decide(&self.spec, &self.status, &self.obs(results));
        self.apply(d);
        n
    }

    fn weight(&self) -> u16 {
        self.status.canary_weight
    }

    fn kinds(&self) -> Vec<EventKind> {
        self.status.history.iter().map(|e| e.kind).collect()
    }
}

#[test]
fn a_new_canary_starts_and_walks_the_steps() {
    let mut s = Sim::new(STEPS);
    s.active.insert("v1".into(), 5);
    s.tick();
    assert_eq!(s.status.phase, Phase::Progressing);
    assert_eq!(s.status.canary.as_deref(), Some("v2"));
    assert_eq!(s.weight(), 1000, "setWeight 10 applies at once");
    assert_eq!(s.status.step, 1);
    assert_eq!(
        s.last_requeue,
        Some(std::time::Duration::from_secs(60)),
        "wakes when the pause ends"
    );

    s.advance(59 * SEC);
    assert_eq!((s.status.step, s.weight()), (1, 1000), "pause not over");
    s.advance(SEC);
    assert_eq!(
        (s.status.step, s.weight()),
        (3, 5000),
        "pause over, setWeight 50 done, waiting at the promote pause"
    );
    assert_eq!(s.status.phase, Phase::Paused);
    assert_eq!(
        s.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Step)
    );

    s.advance(3600 * SEC);
    assert_eq!(
        s.status.phase,
        Phase::Paused,
        "an indefinite pause waits for a human"
    );
    s.cmd(Command::Promote { full: false }).unwrap();
    assert_eq!((s.status.phase, s.status.step), (Phase::Progressing, 4));
    assert_eq!(
        s.measure(Reading::Value(0.0)),
        0,
        "first measurement waits one interval"
    );
    s.advance(10 * SEC);
    assert_eq!(s.measure(Reading::Value(0.001)), 1);
    s.advance(10 * SEC);
    assert_eq!(s.measure(Reading::Value(0.002)), 1);
    assert_eq!(
        s.status.phase,
        Phase::Healthy,
        "analysis passed, setWeight 80, all steps done"
    );
    assert_eq!(s.status.stable, "v2");
    assert_eq!(s.status.canary, None);
    assert_eq!(
        s.status.weights(["v1", "v2"]),
        vec![("v2", 10_000)],
        "the draining version leaves the table at once"
    );
    assert_eq!(s.status.retiring.len(), 1);
    let kinds = s.kinds();
    assert!(kinds.starts_with(&[EventKind::Started, EventKind::StepCompleted]));
    assert_eq!(kinds.last(), Some(&EventKind::Completed));
    let completed = s.status.history.last().unwrap();
    assert!(
        completed.message.contains("`v2` promoted to stable"),
        "{}",
        completed.message
    );
}

#[test]
fn the_old_version_drains_then_is_removed() {
    let mut s =
        Sim::new("canary: v2\nsteps: [{setWeight: 50}]\ndrainTimeout: 30s\nscaleDownDelay: 5s");
    s.active.insert("v1".into(), 3);
    s.tick();
    assert_eq!(s.status.phase, Phase::Healthy);
    assert_eq!(s.status.retiring[0].version, "v1");
    s.effects.clear();
    s.active.insert("v1".into(), 0);
    s.advance(4 * SEC);
    assert!(
        s.status.retired.is_empty(),
        "kept for scaleDownDelay even when drained"
    );
    s.advance(SEC);
    assert_eq!(s.status.retired, vec!["v1".to_string()]);
    assert!(s.effects.contains(&Effect::Remove {
        version: "v1".into()
    }));
    assert_eq!(
        s.status.weights(["v1", "v2"]),
        vec![("v2", 10_000)],
        "removed from the table"
    );
    assert!(
        s.status
            .history
            .last()
            .unwrap()
            .message
            .contains("(drained)")
    );
}

#[test]
fn drain_timeout_removes_a_version_that_still_has_requests() {
    let mut s = Sim::new("canary: v2\nsteps: []\ndrainTimeout: 30s");
    s.active.insert("v1".into(), 2);
    s.tick();
    s.advance(29 * SEC);
    assert!(s.status.retired.is_empty());
    assert!(
        s.last_requeue.unwrap() <= std::time::Duration::from_secs(1),
        "polls while draining"
    );
    s.advance(SEC);
    assert_eq!(s.status.retired, vec!["v1".to_string()]);
    assert!(
        s.status
            .history
            .last()
            .unwrap()
            .message
            .contains("drain timeout reached with 2 still in flight")
    );
}

const ANALYSIS: &str = r#"
canary: v2
steps:
  - setWeight: 20
  - analysis:
      metrics:
        - name: errors
          interval: 1s
          count: 3
          failureLimit: 1
          provider: {builtin: {metric: errorRate, window: 5s}}
          successCondition: result < 0.05
  - setWeight: 60
"#;

#[test]
fn failed_analysis_rolls_back_at_once_with_the_reason() {
    let mut s = Sim::new(ANALYSIS);
    s.tick();
    assert_eq!(s.weight(), 2000);
    s.advance(SEC);
    s.measure(Reading::Value(0.5));
    assert_eq!(
        s.status.phase,
        Phase::Progressing,
        "one failure is within failureLimit 1"
    );
    s.advance(SEC);
    s.measure(Reading::Value(0.4));
    assert_eq!(s.status.phase, Phase::Degraded);
    assert_eq!(s.weight(), 0, "canary weight goes to 0 at once");
    assert_eq!(
        s.status.weights(["v1", "v2"]),
        vec![("v1", 10_000), ("v2", 0)]
    );
    assert_eq!(
        s.status.canary.as_deref(),
        Some("v2"),
        "canary kept for inspection"
    );
    assert!(
        s.status.message.contains("metric `errors`: 2 failed measurement(s), limit 1: result 0.4 does not meet success condition `result < 0.05`"),
        "{}",
        s.status.message
    );
    assert_eq!(s.events.last().map(|e| e.kind), Some(EventKind::Aborted));
}

#[test]
fn inconclusive_pauses_for_a_human_never_passes_or_rolls_back() {
    let mut s = Sim::new(ANALYSIS);
    s.tick();
    s.advance(SEC);
    s.measure(Reading::NoData(
        "3 requests in the last 5s, fewer than 50".into(),
    ));
    assert_eq!(s.status.phase, Phase::Paused);
    assert_eq!(
        s.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Inconclusive)
    );
    assert_eq!(s.weight(), 2000, "weight stays where it was");
    s.advance(600 * SEC);
    assert_eq!(
        s.status.phase,
        Phase::Paused,
        "waits for a human however long"
    );
    assert_eq!(s.status.step, 1);

    // resume measures again from scratch
    s.cmd(Command::Resume).unwrap();
    assert_eq!(s.status.phase, Phase::Progressing);
    for _ in 0..3 {
        s.advance(SEC);
        s.measure(Reading::Value(0.0));
    }
    assert_eq!(s.status.phase, Phase::Healthy);
    assert_eq!(s.status.stable, "v2");
}

#[test]
fn provider_errors_past_the_limit_are_inconclusive() {
    let mut s = Sim::new(ANALYSIS);
    s.tick();
    for i in 0..5 {
        s.advance(SEC);
        s.measure(Reading::Error("connection refused".into()));
        let expect = if i < 4 {
            Phase::Progressing
        } else {
            Phase::Paused
        };
        assert_eq!(s.status.phase, expect, "after {} errors", i + 1);
    }
    assert!(
        s.status
            .message
            .contains("5 provider errors in a row, limit 4"),
        "{}",
        s.status.message
    );
}

#[test]
fn late_measurements_of_an_ended_run_are_dropped() {
    let mut s = Sim::new(ANALYSIS);
    s.tick();
    s.advance(SEC);
    let asks: Vec<_> = s.effects.drain(..).collect();
    // A human promotes past the analysis before the measurement returns.
    s.cmd(Command::Promote { full: false }).unwrap();
    assert_eq!(s.status.phase, Phase::Healthy);
    let late: Vec<_> = asks
        .into_iter()
        .filter_map(|e| match e {
            Effect::Measure(ask) => Some(MeasurementResult {
                run_id: ask.run_id,
                metric: ask.index,
                measurement: judge(&ask.metric, Reading::Value(1.0), s.now),
            }),
            _ => None,
        })
        .collect();
    assert_eq!(late.len(), 1);
    let d = decide(&s.spec, &s.status, &s.obs(late));
    assert_eq!(
        d.status.phase,
        Phase::Healthy,
        "a failing late measurement does not abort a finished rollout"
    );
}

const BACKGROUND: &str = r#"
canary: v2
steps:
  - setWeight: 5
  - pause: {duration: 10m}
  - setWeight: 50
  - pause: {}
analysis:
  startingStep: 1
  metrics:
    - name: errors
      interval: 1s
      provider: {builtin: {metric: errorRate, window: 5s, compare: stable}}
      failureCondition: result > 0.005
"#;

#[test]
fn background_analysis_watches_from_its_starting_step_and_through_pauses() {
    let mut s = Sim::new(BACKGROUND);
    s.tick();
    assert_eq!(s.status.step, 1);
    assert!(s.status.background_analysis.is_some());
    for _ in 0..30 {
        s.advance(SEC);
        s.measure(Reading::Value(0.0));
    }
    assert_eq!(s.status.phase, Phase::Progressing);
    assert_eq!(
        s.status.background_analysis.as_ref().unwrap().metrics[0]
            .tally
            .successes,
        30,
        "never passes by count"
    );
    s.advance(600 * SEC);
    s.measure(Reading::Value(0.0));
    assert_eq!((s.status.phase, s.weight()), (Phase::Paused, 5000));
    // Still measured while waiting for promote: a bad canary rolls back without a human.
    s.advance(SEC);
    assert_eq!(s.measure(Reading::Value(0.02)), 1);
    assert_eq!((s.status.phase, s.weight()), (Phase::Degraded, 0));
    assert!(
        s.status
            .message
            .starts_with("background analysis failed: metric `errors`"),
        "{}",
        s.status.message
    );
}

#[test]
fn measurements_judge_only_traffic_since_their_run_began() {
    let since = |s: &Sim| -> Vec<u64> {
        s.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Measure(ask) => Some(ask.since),
                _ => None,
            })
            .collect()
    };
    let mut s = Sim::new(BACKGROUND);
    s.tick();
    let first_start = s.now;
    s.advance(SEC);
    assert_eq!(since(&s), [first_start]);
    s.measure(Reading::Value(0.02));
    assert_eq!(s.status.phase, Phase::Degraded);
    // A new revision of the same version name: its run starts now, not with the old one.
    s.advance(3 * SEC);
    s.revision = "r2".into();
    s.tick();
    let second_start = s.now;
    s.advance(SEC);
    assert_eq!(since(&s), [second_start]);
}

#[test]
fn background_analysis_going_inconclusive_at_a_pause_step_tells_the_human() {
    let mut s = Sim::new(BACKGROUND);
    s.tick();
    s.advance(600 * SEC);
    s.measure(Reading::Value(0.0));
    assert_eq!(
        s.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Step)
    );
    s.advance(SEC);
    s.measure(Reading::NoData("0 requests in the last 5s".into()));
    assert_eq!((s.status.phase, s.weight()), (Phase::Paused, 5000));
    assert_eq!(
        s.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Inconclusive),
        "the canary is no longer watched: say so"
    );
    assert!(
        s.status
            .message
            .starts_with("background analysis inconclusive, waiting for a human"),
        "{}",
        s.status.message
    );
    assert_eq!(s.kinds().last(), Some(&EventKind::Paused));
    let events = s.status.history.len();
    s.advance(SEC);
    assert_eq!(s.status.history.len(), events, "told once");

    // resume watches again and goes back to waiting at the step
    s.cmd(Command::Resume).unwrap();
    assert_eq!(
        s.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Step)
    );
    s.advance(SEC);
    s.measure(Reading::Value(0.02));
    assert_eq!((s.status.phase, s.weight()), (Phase::Degraded, 0));
}

#[test]
fn analysis_with_no_measurements_hits_the_progress_deadline() {
    let mut s = Sim::new(&format!("{ANALYSIS}progressDeadline: 1m\n"));
    s.tick();
    s.effects.clear();
    s.advance(59 * SEC);
    assert_eq!(s.status.phase, Phase::Progressing);
    s.advance(SEC);
    assert_eq!(s.status.phase, Phase::Degraded);
    assert!(
        s.status.message.contains("no progress for 1m"),
        "{}",
        s.status.message
    );
}

#[test]
fn max_weight_caps_steps_and_promote_full_goes_to_100() {
    let mut s = Sim::new("canary: v2\nmaxWeight: 25\nsteps: [{setWeight: 50}, {pause: {}}]");
    s.tick();
    assert_eq!(s.weight(), 2500);
    s.cmd(Command::Promote { full: true }).unwrap();
    assert_eq!(s.status.phase, Phase::Healthy);
    assert_eq!(
        s.status.weights(["v1", "v2"]),
        vec![("v2", 10_000)],
        "v1 had nothing in flight: removed at once"
    );
}

#[test]
fn abort_retry_and_restart() {
    let mut s = Sim::new(STEPS);
    s.tick();
    s.advance(60 * SEC);
    assert_eq!(s.weight(), 5000);
    s.cmd(Command::Abort).unwrap();
    assert_eq!((s.status.phase, s.weight()), (Phase::Degraded, 0));
    assert_eq!(s.status.message, "aborted by hand");

    let before = s.status.clone();
    for c in [
        Command::Abort,
        Command::Promote { full: false },
        Command::Promote { full: true },
        Command::Pause,
        Command::Resume,
    ] {
        let e = s.cmd(c).unwrap_err();
        assert_eq!(e.phase, "Degraded", "{e}");
        assert_eq!(s.status, before, "a refused command changes nothing");
    }
    assert!(
        s.cmd(Command::Promote { full: false })
            .unwrap_err()
            .to_string()
            .contains("`retry` starts it again")
    );

    s.cmd(Command::Retry).unwrap();
    assert_eq!(
        (s.status.phase, s.status.step, s.weight()),
        (Phase::Progressing, 1, 1000)
    );
    s.advance(60 * SEC);
    s.cmd(Command::Restart).unwrap();
    assert_eq!(
        (s.status.step, s.weight()),
        (1, 1000),
        "restart goes back to step 1"
    );
    assert!(s.kinds().contains(&EventKind::Retried) && s.kinds().contains(&EventKind::Restarted));
}

#[test]
fn commands_in_odd_states_are_refused_clearly() {
    let mut s = Sim::new("canary: v1\nsteps: [{setWeight: 10}]");
    s.tick();
    assert_eq!(
        s.status.phase,
        Phase::Healthy,
        "canary is the stable version: nothing to roll out"
    );
    for c in [
        Command::Promote { full: false },
        Command::Abort,
        Command::Pause,
        Command::Resume,
        Command::Retry,
        Command::Restart,
    ] {
        let e = s.cmd(c).unwrap_err();
        assert_eq!(e.phase, "Healthy", "{e}");
    }
    assert_eq!(
        s.cmd(Command::Restart).unwrap_err().to_string(),
        "cannot restart rollout `app` (Healthy): nothing to roll out: `v1` is already stable"
    );

    let mut s = Sim::new(STEPS);
    s.tick();
    assert!(
        s.cmd(Command::Resume)
            .unwrap_err()
            .why
            .contains("not paused")
    );
    assert!(
        s.cmd(Command::Retry)
            .unwrap_err()
            .why
            .contains("only an aborted rollout")
    );
    s.cmd(Command::Pause).unwrap();
    assert!(
        s.cmd(Command::Pause)
            .unwrap_err()
            .why
            .contains("already paused")
    );
    s.advance(3600 * SEC);
    assert_eq!(
        (s.status.phase, s.status.step),
        (Phase::Paused, 1),
        "a manual pause holds timed pauses too"
    );
    s.cmd(Command::Resume).unwrap();
    assert_eq!(
        s.status.step, 3,
        "the timed pause had run out: resume moves on"
    );
    assert!(
        s.cmd(Command::Resume)
            .unwrap_err()
            .why
            .contains("`promote` continues")
    );
}

#[test]
fn a_changed_canary_definition_restarts_the_rollout() {
    let mut s = Sim::new(STEPS);
    s.tick();
    s.advance(60 * SEC);
    assert_eq!(s.weight(), 5000);
    s.revision = "r2".into();
    s.tick();
    assert_eq!((s.status.step, s.weight()), (1, 1000));
    assert!(
        s.status
            .history
            .iter()
            .any(|e| e.kind == EventKind::Started && e.message.contains("its definition changed"))
    );
    // An aborted rollout stays aborted until the canary changes again.
    s.cmd(Command::Abort).unwrap();
    s.advance(SEC);
    assert_eq!(s.status.phase, Phase::Degraded);
    s.revision = "r3".into();
    s.tick();
    assert_eq!(s.status.phase, Phase::Progressing);
    // Naming the stable version as canary cancels the rollout.
    s.spec.canary = "v1".into();
    s.tick();
    assert_eq!((s.status.phase, s.weight()), (Phase::Healthy, 0));
    assert_eq!(s.kinds().last(), Some(&EventKind::Cancelled));
}

#[test]
fn pause_timers_are_start_times_and_survive_a_restart() {
    let mut s = Sim::new(STEPS);
    s.tick();
    s.advance(30 * SEC);
    // The process dies; a new one loads the status from disk 20 s later.
    let json = serde_json::to_string(&s.status).unwrap();
    let mut status: RolloutStatus = serde_json::from_str(&json).unwrap();
    status.forget_pending();
    assert_eq!(status, s.status);
    s.status = status;
    s.advance(20 * SEC);
    assert_eq!(s.status.step, 1, "50 s into a 60 s pause");
    assert_eq!(
        s.last_requeue,
        Some(std::time::Duration::from_secs(10)),
        "the timer did not reset"
    );
    s.advance(10 * SEC);
    assert_eq!(s.weight(), 5000);
}

#[test]
fn pending_measurements_are_asked_again_after_a_restart() {
    let mut s = Sim::new(ANALYSIS);
    s.tick();
    s.advance(SEC);
    assert!(s.effects.iter().any(|e| matches!(e, Effect::Measure(_))));
    s.effects.clear();
    s.tick();
    assert!(
        !s.effects.iter().any(|e| matches!(e, Effect::Measure(_))),
        "pending: not asked twice"
    );
    s.status.forget_pending();
    s.tick();
    assert!(
        s.effects.iter().any(|e| matches!(e, Effect::Measure(_))),
        "asked again after a restart"
    );
    assert_eq!(s.measure(Reading::Value(0.0)), 1);
    let tally = &s.status.step_analysis.as_ref().unwrap().metrics[0].tally;
    assert_eq!(tally.successes, 1);
}

#[test]
fn history_is_bounded() {
    let mut s = Sim::new(STEPS);
    s.tick();
    for _ in 0..80 {
        s.cmd(Command::Restart).unwrap();
    }
    assert_eq!(s.status.history.len(), crate::rollout::status::HISTORY_LEN);
    assert_eq!(s.kinds().last(), Some(&EventKind::StepCompleted));
}

const SEQUENTIAL: &str = r#"
canary: v2
steps:
  - setWeight: 10
  - analysis:
      metrics:
        - name: errors
          interval: 1s
          count: 30
          provider: {builtin: {metric: errorRate, compare: stable}}
  - setWeight: 50
analysis:
  metrics:
    - name: errors-bg
      interval: 1s
      minRequests: 500
      provider: {builtin: {metric: errorRate, compare: stable}}
progressDeadline: 2m
"#;

/// One second of traffic per pending Measure effect: `canary`/`stable` requests and errors.
fn seconds(s: &mut Sim, canary: (u64, u64), stable: (u64, u64)) -> usize {
    use crate::analysis::sequential::{Pair, Slice};
    let start = s.now - SEC;
    let slice = Slice {
        start,
        running: false,
        requests: Pair {
            canary: canary.0,
            stable: stable.0,
        },
        events: vec![Pair {
            canary: canary.1,
            stable: stable.1,
        }],
    };
    s.measure(Reading::Slices(vec![slice]))
}

#[test]
fn the_sequential_judge_rolls_back_a_canary_failing_more_than_stable() {
    let mut s = Sim::new(SEQUENTIAL);
    s.tick();
    assert_eq!(s.weight(), 1000);
    let mut looks = 0;
    while s.status.phase == Phase::Progressing && looks < 60 {
        s.advance(SEC);
        // 10 % canary at 200 req/s: the canary fails 10 % of its requests, stable 1 %.
        seconds(&mut s, (20, 2), (180, 2));
        looks += 1;
    }
    assert_eq!(s.status.phase, Phase::Degraded, "{}", s.status.message);
    assert!(looks <= 20, "caught after {looks} s");
    let m = &s.status.message;
    assert!(
        m.contains("e-value") && m.contains("rollback at 100") && m.contains("canary and"),
        "the reason gives the statistic, its threshold and the counts: {m}"
    );
}

#[test]
fn a_sequential_step_passes_when_its_time_is_up_with_enough_requests() {
    let mut s = Sim::new(SEQUENTIAL);
    s.tick();
    for _ in 0..30 {
        s.advance(SEC);
        seconds(&mut s, (20, 0), (180, 2));
    }
    let passed = s
        .status
        .history
        .iter()
        .find(|e| e.message.starts_with("step 2: analysis passed"));
    assert!(
        passed.is_some_and(|e| e.message.contains("600 canary")),
        "{:#?}",
        s.status.history
    );
    assert_eq!(s.status.phase, Phase::Healthy, "{}", s.status.message);
}

#[test]
fn a_sequential_step_with_too_few_canary_requests_waits_for_a_human() {
    let mut s = Sim::new(SEQUENTIAL);
    s.tick();
    for _ in 0..30 {
        s.advance(SEC);
        seconds(&mut s, (2, 0), (180, 2));
    }
    assert_eq!(s.status.phase, Phase::Paused);
    assert_eq!(
        s.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Inconclusive)
    );
    assert!(
        s.status
            .message
            .contains("60 canary requests judged, fewer than minRequests 100"),
        "{}",
        s.status.message
    );
}

#[test]
fn the_rollout_completes_only_once_the_background_judge_saw_enough_of_the_canary() {
    let mut s = Sim::new(SEQUENTIAL);
    s.tick();
    s.cmd(Command::Promote { full: false }).unwrap();
    assert_eq!(s.weight(), 5000);
    // 5 canary requests a second: 500 take 100 s.
    for _ in 0..60 {
        s.advance(SEC);
        seconds(&mut s, (5, 0), (5, 0));
    }
    assert_eq!(s.status.phase, Phase::Progressing);
    assert!(
        s.status
            .message
            .contains("completing once the background analysis"),
        "{}",
        s.status.message
    );
    for _ in 0..45 {
        s.advance(SEC);
        seconds(&mut s, (5, 0), (5, 0));
    }
    assert_eq!(s.status.phase, Phase::Healthy, "{}", s.status.message);
    assert_eq!(s.status.stable, "v2");
}

#[test]
fn without_enough_evidence_by_the_deadline_a_human_decides() {
    let mut s = Sim::new(SEQUENTIAL);
    s.tick();
    s.cmd(Command::Promote { full: false }).unwrap();
    for _ in 0..121 {
        s.advance(SEC);
        seconds(&mut s, (1, 0), (1, 0));
    }
    assert_eq!(
        s.status.pause.as_ref().map(|p| p.reason),
        Some(PauseReason::Inconclusive),
        "{}",
        s.status.message
    );
    s.cmd(Command::Promote { full: false }).unwrap();
    assert_eq!(s.status.phase, Phase::Healthy);
    assert_eq!(s.status.stable, "v2");
}
