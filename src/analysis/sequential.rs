//! The sequential judge: an anytime-valid test of the canary against stable on the exact split.
//!
//! tidegate knows how many requests each version served in every second. If the canary is as
//! good as stable, whether a request fails (or is slow) does not depend on the version that
//! served it, so each error of a second came from the canary with probability equal to the
//! canary's share of that second's requests. Each second multiplies, for each regression size
//! `ρ` on a grid (the canary fails `ρ` times as often as stable), the likelihood ratio of its
//! errors' versions under "`ρ` times worse" against "as good". Under "as good" every product
//! is a nonnegative martingale with mean 1, and so is their average (the e-value): by Ville's
//! inequality it ever reaches `1/alpha` with probability at most `alpha`, however often it is
//! looked at and however long the rollout runs. That bounds false rollbacks (Lindon & Malek,
//! NeurIPS 2022; Lindon, Sanden & Shirikian, KDD 2022).
//!
//! Latency is judged the same way on "slow" responses: those slower than the pooled
//! quantile of the seconds before (both versions together), so a canary as fast as stable
//! gets its share of them.
//!
//! The null hypothesis is not quite "as good": a canary worse by less than a quarter of
//! `minEffect` counts as good too, so a difference that small is not rolled back however
//! much traffic shows it.
//!
//! Pass: a second e-value, "as good" against "`1 + minEffect` times worse", rules out a
//! regression of that size when it reaches `1/alpha`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A canary worse than stable by less than this share of `minEffect` counts as good: the
/// rollback test weighs each regression size against "this much worse", not against "as
/// good". By monotone likelihood ratios every product stays a fair (or losing) bet for any
/// canary up to that much worse, so however much traffic shows such a trivial difference it
/// is rolled back with chance at most alpha. A quarter: a larger share slows the detection
/// of real regressions (2x errors caught in 143 s instead of 105 s at a half, 124 s here).
const TRIVIAL_SHARE: f64 = 0.25;

/// Regression sizes (canary event rate over stable's) the rollback test weighs; those at
/// least `1 + minEffect` count, with equal weight.
const EFFECTS: [f64; 12] = [
    1.1, 1.2, 1.4, 1.7, 2.0, 2.5, 3.2, 4.5, 7.0, 12.0, 25.0, 60.0,
];

/// A number of responses of each version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Pair {
    pub canary: u64,
    pub stable: u64,
}

impl Pair {
    fn add(&mut self, other: Pair) {
        self.canary += other.canary;
        self.stable += other.stable;
    }
}

/// One second of both versions' traffic, as the judge sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// Unix ms the second began.
    pub start: u64,
    /// The second is still running: weighed for this look only, and again once it is over.
    pub running: bool,
    pub requests: Pair,
    /// Per stream (see `SequentialState::streams`): the responses that count against a version.
    pub events: Vec<Pair>,
}

/// What the judge weighs: the names of its streams and its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub alpha: f64,
    pub min_effect: f64,
    pub min_requests: u64,
    /// How much more often than stable the canary may err and still count as good: this
    /// share of requests on top of stable's error rate (`maxIncrease`). 0 for none.
    pub max_increase: f64,
}

/// A sequential test in progress, kept in the rollout status so it survives restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SequentialState {
    /// Unix ms up to which seconds have been judged: a later look starts there.
    pub through: u64,
    /// Requests judged, per version.
    pub requests: Pair,
    pub streams: Vec<StreamState>,
}

/// The test on one kind of event: errors, or responses slower than a pooled quantile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamState {
    /// What counts as an event, e.g. `errors` or `slower than p99`.
    pub name: String,
    pub events: Pair,
    /// Canary events expected if it were as good as stable.
    pub expected: f64,
    /// ln of the e-value of each regression size in `EFFECTS`.
    pub log_e: Vec<f64>,
    /// ln of the e-value against a regression of `1 + minEffect`.
    pub log_pass: f64,
    #[serde(default)]
    pub dispersion: Dispersion,
}

/// How much more the canary's excess of events varies from one 10 s block to the next than
/// independent requests would make it vary. Noise each version has on its own (a pause, a
/// slow moment of one process) makes it grow; each second's evidence is divided by it
/// (quasi-likelihood), so such noise is not taken for a regression. It is estimated from
/// finished blocks only, around the excess they show, so a steady regression does not
/// inflate it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dispersion {
    /// The block in progress (start / 10 s), its canary excess over the expected share,
    /// its binomial variance, and its events.
    block: u64,
    excess: f64,
    variance: f64,
    events: f64,
    /// Finished blocks and their sums.
    blocks: u32,
    sum_excess: f64,
    sum_events: f64,
    sum_variance: f64,
    sum_excess2: f64,
    sum_excess_events: f64,
    sum_events2: f64,
}

const BLOCK_MS: u64 = 10_000;
/// Blocks of plain binomial variation assumed before any is seen, so that a few noisy blocks
/// do not swing the estimate.
const PRIOR_BLOCKS: f64 = 5.0;
const PRIOR_DISPERSION: f64 = 1.1;

impl Dispersion {
    /// The current estimate, at least 1.
    pub fn factor(&self) -> f64 {
        if self.blocks == 0 || self.sum_variance <= 0.0 {
            return PRIOR_DISPERSION;
        }
        let mean = self.sum_excess / self.sum_events.max(1.0);
        let deviation =
            self.sum_excess2 - 2.0 * mean * self.sum_excess_events + mean * mean * self.sum_events2;
        let prior = PRIOR_BLOCKS * self.sum_variance / f64::from(self.blocks);
        ((deviation + PRIOR_DISPERSION * prior) / (self.sum_variance + prior)).max(1.0)
    }

    fn add(&mut self, start: u64, share: f64, canary: f64, events: f64) {
        let block = start / BLOCK_MS;
        if block != self.block {
            if self.events > 0.0 {
                self.blocks += 1;
                self.sum_excess += self.excess;
                self.sum_events += self.events;
                self.sum_variance += self.variance;
                self.sum_excess2 += self.excess * self.excess;
                self.sum_excess_events += self.excess * self.events;
                self.sum_events2 += self.events * self.events;
            }
            (self.block, self.excess, self.variance, self.events) = (block, 0.0, 0.0, 0.0);
        }
        self.excess += canary - share * events;
        self.variance += share * (1.0 - share) * events;
        self.events += events;
    }
}

impl SequentialState {
    /// A test over streams named `names`.
    pub fn new(names: &[String]) -> SequentialState {
        SequentialState {
            through: 0,
            requests: Pair::default(),
            streams: names
                .iter()
                .map(|n| StreamState {
                    name: n.clone(),
                    log_e: vec![0.0; EFFECTS.len()],
                    ..StreamState::default()
                })
                .collect(),
        }
    }

    /// Weighs the whole seconds not judged yet.
    pub fn update(&mut self, slices: &[Slice], settings: &Settings) {
        self.weigh(slices.iter().filter(|s| !s.running), settings);
    }

    /// The test as it stands with the running second weighed too: each second's factor is a
    /// fair bet event by event, so looking in the middle of one keeps the guarantee, and a
    /// canary that starts failing is caught within the second.
    pub fn with_running_second(&self, slices: &[Slice], settings: &Settings) -> SequentialState {
        let mut now = self.clone();
        now.weigh(slices.iter().filter(|s| s.running), settings);
        now
    }

    fn weigh<'a>(&mut self, slices: impl Iterator<Item = &'a Slice>, settings: &Settings) {
        for slice in slices {
            if slice.start < self.through || slice.events.len() != self.streams.len() {
                continue;
            }
            self.through = slice.start + 1000;
            self.requests.add(slice.requests);
            let Pair { canary, stable } = slice.requests;
            if canary == 0 || stable == 0 {
                continue;
            }
            let share = canary as f64 / (canary + stable) as f64;
            let stable_requests = self.requests.stable as f64;
            for (stream, events) in self.streams.iter_mut().zip(&slice.events) {
                let tolerated = stream.tolerated(settings.max_increase, stable_requests);
                stream.weigh(slice.start, share, tolerated, *events, settings.min_effect);
            }
        }
    }

    /// The rollback e-value: the average over streams and regression sizes of at least
    /// `1 + min_effect`.
    pub fn e_value(&self, min_effect: f64) -> f64 {
        let sizes = EFFECTS.iter().filter(|&&r| r >= 1.0 + min_effect - 1e-9);
        let n = sizes.clone().count() * self.streams.len();
        if n == 0 {
            return 1.0;
        }
        let sum: f64 = self
            .streams
            .iter()
            .flat_map(|s| {
                sizes
                    .clone()
                    .zip(EFFECTS.iter().zip(&s.log_e))
                    .map(|(_, (_, l))| l)
            })
            .map(|l| l.exp())
            .sum();
        sum / n as f64
    }

    /// The canary is worse than stable: the rollback e-value reached `1/alpha`.
    pub fn regressed(&self, s: &Settings) -> bool {
        self.e_value(s.min_effect) >= 1.0 / s.alpha
    }

    /// Every stream rules out a regression of `1 + min_effect`.
    pub fn cleared(&self, s: &Settings) -> bool {
        !self.streams.is_empty()
            && self
                .streams
                .iter()
                .all(|st| st.log_pass >= (1.0 / s.alpha).ln())
    }

    /// The statistic, its threshold and the counts behind them, in a sentence.
    pub fn summary(&self, s: &Settings) -> String {
        let streams: Vec<String> = self
            .streams
            .iter()
            .map(|st| {
                format!(
                    "{}: canary {} where {:.1} were expected if as good as stable, stable {}",
                    st.name, st.events.canary, st.expected, st.events.stable
                )
            })
            .collect();
        format!(
            "e-value {} (rollback at {}, alpha {}) over {} canary and {} stable requests; {}",
            show_e(self.e_value(s.min_effect)),
            super::verdict::show(1.0 / s.alpha),
            s.alpha,
            self.requests.canary,
            self.requests.stable,
            streams.join("; ")
        )
    }
}

/// An e-value for people: `0.42`, `153.7`, `7.76e6`.
pub fn show_e(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{v:.2e}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl StreamState {
    /// The ratio of the canary's event rate to stable's still counted as good: 1, or with
    /// `max_increase` points on top of stable's rate as seen so far (the seconds before this
    /// one, so the ratio is fixed before its events are).
    fn tolerated(&self, max_increase: f64, stable_requests: f64) -> f64 {
        if max_increase <= 0.0 {
            return 1.0;
        }
        let stable_rate = (self.events.stable as f64 + 0.5) / (stable_requests + 1.0);
        (stable_rate + max_increase) / stable_rate
    }

    /// Weighs one second's events: `share` of the requests went to the canary, and a canary
    /// erring `tolerated` times as often as stable is still good.
    fn weigh(&mut self, start: u64, share: f64, tolerated: f64, events: Pair, min_effect: f64) {
        let (x, y) = (events.canary as f64, events.stable as f64);
        if x + y == 0.0 {
            return;
        }
        // The canary's share of the events if its rate is `rho` times stable's.
        let shifted = |rho: f64| share * rho / (share * rho + 1.0 - share);
        let good = shifted(tolerated);
        // Tempered by what finished blocks showed, before this second joins its block.
        let temper = 1.0 / self.dispersion.factor();
        self.dispersion.add(start, share, x, x + y);
        self.events.add(events);
        self.expected += good * (x + y);
        // ln of the likelihood ratio of these events' versions: canary share `a` against `b`.
        let ln_ratio =
            |a: f64, b: f64| temper * (x * (a / b).ln() + y * ((1.0 - a) / (1.0 - b)).ln());
        if self.log_e.len() != EFFECTS.len() {
            self.log_e = vec![0.0; EFFECTS.len()];
        }
        let trivial = shifted(tolerated * (1.0 + TRIVIAL_SHARE * min_effect));
        for (l, rho) in self.log_e.iter_mut().zip(EFFECTS) {
            *l += ln_ratio(shifted(tolerated * rho), trivial);
        }
        self.log_pass += ln_ratio(good, shifted(tolerated * (1.0 + min_effect)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Settings = Settings {
        alpha: 0.01,
        min_effect: 0.2,
        min_requests: 100,
        max_increase: 0.0,
    };

    fn slice(start: u64, requests: (u64, u64), errors: (u64, u64)) -> Slice {
        Slice {
            start,
            running: false,
            requests: Pair {
                canary: requests.0,
                stable: requests.1,
            },
            events: vec![Pair {
                canary: errors.0,
                stable: errors.1,
            }],
        }
    }

    fn state() -> SequentialState {
        SequentialState::new(&["errors".to_string()])
    }

    #[test]
    fn a_canary_failing_five_times_as_often_is_caught() {
        let mut st = state();
        // 10 % canary; stable fails 1 % of its requests, the canary 5 %.
        for t in 0..30 {
            st.update(&[slice(t * 1000, (20, 180), (1, 2))], &SETTINGS);
        }
        assert!(st.regressed(&SETTINGS), "{}", st.summary(&SETTINGS));
        assert!(!st.cleared(&SETTINGS));
        let summary = st.summary(&SETTINGS);
        assert!(
            summary.contains("over 600 canary and 5400 stable requests")
                && summary.contains("errors: canary 30 where 9.0 were expected"),
            "{summary}"
        );
    }

    #[test]
    fn a_canary_as_good_as_stable_builds_no_case_and_is_cleared_in_time() {
        let mut st = state();
        for t in 0..2000 {
            // Errors split exactly by the traffic share.
            st.update(&[slice(t * 1000, (100, 100), (5, 5))], &SETTINGS);
        }
        assert!(st.e_value(0.2) < 1.0, "{}", st.summary(&SETTINGS));
        assert!(st.cleared(&SETTINGS), "{}", st.summary(&SETTINGS));
    }

    #[test]
    fn a_tolerated_increase_is_not_a_regression_and_more_is() {
        let tolerant = Settings {
            max_increase: 0.005,
            ..SETTINGS
        };
        // Stable fails 1.1 % of its 180 requests a second, the canary 1.4 % of its 20: 0.3
        // points worse, within the 0.5 tolerated, though a regression without a tolerance.
        let (mut within, mut strict) = (state(), state());
        for t in 0..3000u64 {
            let second = [slice(
                t * 1000,
                (20, 180),
                (u64::from((t * 28) % 100 < 28), 2),
            )];
            within.update(&second, &tolerant);
            strict.update(&second, &SETTINGS);
        }
        assert!(
            !within.regressed(&tolerant),
            "{}",
            within.summary(&tolerant)
        );
        assert!(strict.regressed(&SETTINGS), "{}", strict.summary(&SETTINGS));
        // 3 points worse: caught.
        let mut st = state();
        for t in 0..300u64 {
            st.update(
                &[slice(t * 1000, (20, 180), (u64::from(t % 5 < 4), 2))],
                &tolerant,
            );
        }
        assert!(st.regressed(&tolerant), "{}", st.summary(&tolerant));
    }

    #[test]
    fn seconds_already_judged_are_skipped() {
        let mut st = state();
        st.update(&[slice(5000, (20, 180), (3, 0))], &SETTINGS);
        let once = st.clone();
        st.update(
            &[
                slice(4000, (20, 180), (3, 0)),
                slice(5000, (20, 180), (3, 0)),
            ],
            &SETTINGS,
        );
        assert_eq!(st, once);
        assert_eq!(st.through, 6000);
    }

    #[test]
    fn a_running_second_counts_for_the_look_only() {
        let mut st = state();
        let mut running = slice(1000, (10, 90), (10, 0));
        running.running = true;
        st.update(&[slice(0, (20, 180), (0, 2)), running.clone()], &SETTINGS);
        assert_eq!((st.through, st.requests.canary), (1000, 20));
        let now = st.with_running_second(&[running], &SETTINGS);
        assert!(now.regressed(&SETTINGS), "{}", now.summary(&SETTINGS));
        assert!(!st.regressed(&SETTINGS));
        // Once over, the second is weighed for good.
        st.update(&[slice(1000, (20, 180), (10, 0))], &SETTINGS);
        assert!(st.regressed(&SETTINGS));
    }

    #[test]
    fn seconds_without_both_versions_weigh_nothing() {
        let mut st = state();
        st.update(
            &[slice(0, (0, 200), (0, 50)), slice(1000, (20, 0), (20, 0))],
            &SETTINGS,
        );
        assert_eq!(st.e_value(0.2), 1.0);
        assert_eq!(
            st.requests,
            Pair {
                canary: 20,
                stable: 200
            }
        );
    }

    /// Under "as good as stable" the e-value crosses 1/alpha in at most alpha of runs,
    /// whatever the traffic share and however long it is watched.
    #[test]
    fn false_alarms_stay_under_alpha() {
        let mut rng = fastrand::Rng::with_seed(7);
        let runs = 400;
        let mut alarms = 0;
        for _ in 0..runs {
            let mut st = state();
            for t in 0..600 {
                let requests = (20 + rng.u64(0..5), 180 + rng.u64(0..20));
                let share = requests.0 as f64 / (requests.0 + requests.1) as f64;
                // Two errors a second on average, each on the canary with its traffic share.
                let errors: u64 = (0..4).filter(|_| rng.f64() < 0.5).count() as u64;
                let canary = (0..errors).filter(|_| rng.f64() < share).count() as u64;
                st.update(
                    &[slice(t * 1000, requests, (canary, errors - canary))],
                    &SETTINGS,
                );
                if st.regressed(&SETTINGS) {
                    alarms += 1;
                    break;
                }
            }
        }
        assert!(alarms <= runs / 100 + 2, "{alarms} false alarms in {runs}");
    }

    /// A canary erring 5 % more often than stable (a quarter of `minEffect`) is not worth a
    /// rollback, however much traffic shows the difference: half of 2,000 req/s at 1 %
    /// errors for ten minutes, 12,000 errors a run.
    #[test]
    fn a_trivially_worse_canary_is_not_rolled_back_at_any_volume() {
        let mut rng = fastrand::Rng::with_seed(11);
        let share = 1.05 / 2.05;
        let runs = 200;
        let mut alarms = 0;
        for _ in 0..runs {
            let mut st = state();
            for t in 0..600 {
                let canary = (0..20).filter(|_| rng.f64() < share).count() as u64;
                st.update(
                    &[slice(t * 1000, (1000, 1000), (canary, 20 - canary))],
                    &SETTINGS,
                );
                if st.regressed(&SETTINGS) {
                    alarms += 1;
                    break;
                }
            }
        }
        assert!(alarms <= runs / 100 + 2, "{alarms} false alarms in {runs}");
        // Twice the error rate at that volume is caught.
        let mut st = state();
        for t in 0..60 {
            let canary = (0..20).filter(|_| rng.f64() < 2.0 / 3.0).count() as u64;
            st.update(
                &[slice(t * 1000, (1000, 1000), (canary, 20 - canary))],
                &SETTINGS,
            );
        }
        assert!(st.regressed(&SETTINGS), "{}", st.summary(&SETTINGS));
    }
}
