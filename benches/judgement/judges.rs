//! The judges compared: tidegate's sequential judge and today's fixed conditions run through
//! the real rollout engine and builtin provider; a Flagger-like rule (also as a tidegate spec)
//! and a Kayenta-like Mann-Whitney test at each interval's end.

use std::sync::Arc;

use tidegate::analysis::{self, MeasureContext, ProviderSpec, Vars, judge};
use tidegate::metrics::VersionStats;
use tidegate::metrics::window::{LATENCY_BUCKETS, SecondCounts, bucket_upper_micros};
use tidegate::rollout::{
    Decision, Effect, MeasurementResult, Observations, Phase, RolloutSpec, RolloutStatus, decide,
};

/// What a judge concluded, and when (ms since the rollout began).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Call {
    RolledBack(u64),
    /// Paused for a human (inconclusive).
    Paused(u64),
}

pub trait Judge: Send {
    /// Looks at the whole seconds before `now_ms`; Some once it has decided.
    fn look(
        &mut self,
        now_ms: u64,
        canary: &Arc<VersionStats>,
        stable: &Arc<VersionStats>,
    ) -> Option<Call>;
}

/// The judges, fresh for one run at a canary weight of `percent`, in the order of `NAMES`.
pub fn all(percent: u16) -> Vec<Box<dyn Judge>> {
    vec![
        Box::new(EngineJudge::new(percent, SEQUENTIAL)),
        Box::new(EngineJudge::new(percent, FIXED)),
        Box::new(EngineJudge::new(percent, FLAGGER)),
        Box::new(Kayenta::new(0.02)),
        Box::new(EngineJudge::new(percent, FIXED_CALIBRATED)),
        Box::new(Kayenta::new(0.0002)),
    ]
}

pub const NAMES: [&str; 6] = [
    "sequential",
    "fixed (rollout.yaml)",
    "flagger-like",
    "kayenta-like",
    "fixed, calibrated",
    "kayenta, calibrated",
];

/// A rollout held at `percent` for an hour, judged by background analysis only.
fn spec(percent: u16, metrics: &str) -> String {
    format!(
        "canary: v2\nsteps:\n  - setWeight: {percent}\n  - pause: {{duration: 1h}}\nanalysis:\n  metrics:\n{metrics}"
    )
}

/// tidegate's sequential judge as the example configs use it: errors and p99 against
/// stable, alpha 0.005 each (0.01 for the rollout), minEffect 0.2.
const SEQUENTIAL: &str = "
    - name: errors
      interval: 1s
      provider: {builtin: {metric: errorRate, compare: stable, alpha: 0.005}}
    - name: latency
      interval: 1s
      provider: {builtin: {metric: latency, quantile: 0.99, compare: stable, alpha: 0.005}}
";

/// Today's config/rollout.yaml: errors against stable every second over 10 s, and its
/// p99-against-stable rule (a step analysis there, watched throughout here).
const FIXED: &str = "
    - name: errors-vs-stable
      interval: 1s
      minRequests: 20
      inconclusiveLimit: 30
      provider: {builtin: {metric: errorRate, window: 10s, compare: stable}}
      failureCondition: result > 0.005
    - name: p99-vs-stable
      interval: 20s
      failureLimit: 1
      inconclusiveLimit: 30
      provider: {builtin: {metric: latency, quantile: 0.99, window: 30s, compare: stable}}
      successCondition: result <= 1.2
";

/// Today's rule with its limits widened until it rolls back at most 1 % of the healthy
/// canaries here: what it would take to use it without false rollbacks.
const FIXED_CALIBRATED: &str = "
    - name: errors-vs-stable
      interval: 1s
      minRequests: 20
      inconclusiveLimit: 30
      provider: {builtin: {metric: errorRate, window: 10s, compare: stable}}
      failureCondition: result > 0.1
    - name: p99-vs-stable
      interval: 20s
      failureLimit: 1
      inconclusiveLimit: 30
      provider: {builtin: {metric: latency, quantile: 0.99, window: 30s, compare: stable}}
      successCondition: result <= 3
";

/// Flagger's defaults: request success rate of at least 99 % and p99 under a fixed limit
/// (here 1.5x the healthy p99, 96 ms) over a minute, checked every minute; the fifth failed
/// check rolls back.
const FLAGGER: &str = "
    - name: request-success-rate
      interval: 60s
      failureLimit: 4
      inconclusiveLimit: 30
      provider: {builtin: {metric: errorRate, window: 60s}}
      successCondition: result <= 0.01
    - name: request-duration
      interval: 60s
      failureLimit: 4
      inconclusiveLimit: 30
      provider: {builtin: {metric: latency, quantile: 0.99, window: 60s}}
      successCondition: result <= 0.096
";

/// A rollout run by the real engine, its measurements taken by the real builtin provider.
pub struct EngineJudge {
    spec: RolloutSpec,
    status: RolloutStatus,
    pending: Vec<Effect>,
}

impl EngineJudge {
    pub fn new(percent: u16, metrics: &str) -> EngineJudge {
        let spec: RolloutSpec =
            yaml_serde::from_str(&spec(percent, metrics)).expect("bench spec parses");
        spec.validate(&["v1", "v2"]).expect("bench spec is valid");
        EngineJudge {
            spec,
            status: RolloutStatus::new("app", "v1", 0),
            pending: Vec::new(),
        }
    }

    fn decide(&mut self, now: u64, measurements: Vec<MeasurementResult>) {
        let obs = Observations {
            now,
            canary_revision: "r1".into(),
            measurements,
            active: Default::default(),
        };
        let Decision {
            status, effects, ..
        } = decide(&self.spec, &self.status, &obs);
        self.status = status;
        self.pending.extend(effects);
    }
}

impl Judge for EngineJudge {
    fn look(
        &mut self,
        now: u64,
        canary: &Arc<VersionStats>,
        stable: &Arc<VersionStats>,
    ) -> Option<Call> {
        self.decide(now, Vec::new());
        let results: Vec<MeasurementResult> = self
            .pending
            .drain(..)
            .filter_map(|e| match e {
                Effect::Measure(ask) => Some(ask),
                _ => None,
            })
            .map(|ask| {
                let ctx = MeasureContext {
                    vars: Vars::default(),
                    canary: Some(canary.clone()),
                    stable: Some(stable.clone()),
                    canary_endpoints: Vec::new(),
                    since_ms: ask.since,
                    unix_offset_ms: 0,
                };
                let ProviderSpec::Builtin(b) = &ask.metric.provider else {
                    unreachable!("bench metrics are builtin")
                };
                let (reading, requests) = if ask.metric.sequential().is_some() {
                    analysis::measure_seconds(b, &ctx, now)
                } else {
                    analysis::measure_window(b, ask.metric.min_requests, &ctx, now)
                };
                MeasurementResult {
                    run_id: ask.run_id,
                    metric: ask.index,
                    measurement: judge(&ask.metric, reading, now).based_on(requests),
                }
            })
            .collect();
        if !results.is_empty() {
            self.decide(now, results);
        }
        match self.status.phase {
            Phase::Degraded => Some(Call::RolledBack(now)),
            Phase::Paused => Some(Call::Paused(now)),
            _ => None,
        }
    }
}

/// Kayenta's NetflixACAJudge with its Mann-Whitney classifier: at the end of each one-minute
/// interval, each metric (error indicator, latency) of the interval is compared; a metric is
/// High when the two-sided test is significant at `1 - confidence` (0.02 by default) and the
/// canary's mean is more than 25 % (the tolerance) above stable's. Any High metric fails the
/// canary.
pub struct Kayenta {
    judged_through_s: u64,
    p_value: f64,
}

impl Kayenta {
    pub fn new(p_value: f64) -> Kayenta {
        Kayenta {
            judged_through_s: 0,
            p_value,
        }
    }
}

const KAYENTA_INTERVAL_S: u64 = 60;

impl Judge for Kayenta {
    fn look(
        &mut self,
        now: u64,
        canary: &Arc<VersionStats>,
        stable: &Arc<VersionStats>,
    ) -> Option<Call> {
        let now_s = now / 1000;
        if now_s < self.judged_through_s + KAYENTA_INTERVAL_S {
            return None;
        }
        let seconds = self.judged_through_s..self.judged_through_s + KAYENTA_INTERVAL_S;
        self.judged_through_s += KAYENTA_INTERVAL_S;
        let (c, s) = (sum(canary, seconds.clone()), sum(stable, seconds));
        let errors = |h: &Hist| {
            let mut binary = vec![0u64; 2];
            binary[0] = h.requests - h.errors;
            binary[1] = h.errors;
            binary
        };
        let high = |canary: &[u64], stable: &[u64], value: &dyn Fn(usize) -> f64| {
            let Some(z) = mann_whitney_z(canary, stable) else {
                return false;
            };
            let mean = |h: &[u64]| {
                let n: u64 = h.iter().sum();
                h.iter()
                    .enumerate()
                    .map(|(i, &k)| k as f64 * value(i))
                    .sum::<f64>()
                    / n as f64
            };
            let p = 2.0 * (1.0 - phi(z.abs()));
            p < self.p_value && z > 0.0 && mean(canary) > 1.25 * mean(stable)
        };
        let error_high = high(&errors(&c), &errors(&s), &|i| i as f64);
        let latency_high = high(&c.latency, &s.latency, &|i| bucket_upper_micros(i) as f64);
        (error_high || latency_high).then_some(Call::RolledBack(now))
    }
}

struct Hist {
    requests: u64,
    errors: u64,
    latency: Vec<u64>,
}

fn sum(v: &VersionStats, seconds: std::ops::Range<u64>) -> Hist {
    let mut h = Hist {
        requests: 0,
        errors: 0,
        latency: vec![0; LATENCY_BUCKETS],
    };
    for c in seconds.filter_map(|s| v.second(s)) {
        let c: SecondCounts = c;
        h.requests += c.requests();
        h.errors += c.by_class[4];
        for (a, b) in h.latency.iter_mut().zip(c.latency.iter()) {
            *a += b;
        }
    }
    h
}

/// The Mann-Whitney z of canary over stable for two histograms on the same ordered buckets,
/// ties corrected; None when either is empty or all values tie.
pub fn mann_whitney_z(canary: &[u64], stable: &[u64]) -> Option<f64> {
    let (n1, n2) = (
        canary.iter().sum::<u64>() as f64,
        stable.iter().sum::<u64>() as f64,
    );
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    let (mut u, mut below, mut ties) = (0.0, 0.0, 0.0);
    for (&c, &s) in canary.iter().zip(stable) {
        let (c, s) = (c as f64, s as f64);
        u += c * (below + 0.5 * s);
        below += s;
        let t = c + s;
        ties += t * t * t - t;
    }
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    (var > 0.0).then(|| (u - n1 * n2 / 2.0) / var.sqrt())
}

/// The standard normal distribution function.
pub fn phi(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// Abramowitz and Stegun 7.1.26 (error below 1.5e-7).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
            + 0.254_829_592)
            * t
            * (-x * x).exp();
    if x >= 0.0 { y } else { -y }
}
