//! Synthetic traffic: how many requests arrive, and how each one turns out on each version.

use std::f64::consts::PI;

/// Which version served a request.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Stable,
    Canary,
}

/// Requests per second, total, over time.
#[derive(Clone, Copy)]
pub enum Rate {
    Constant(f64),
    /// `mean` swinging by `swing` (a share of it) over `period` seconds.
    Diurnal {
        mean: f64,
        swing: f64,
        period: f64,
    },
    /// A rate drawn once per run, uniformly between the two.
    PerRun(f64, f64),
}

/// Response times of a healthy version.
#[derive(Clone, Copy)]
pub enum Latency {
    /// Log-normal with this median (ms) and sigma.
    LogNormal { median_ms: f64, sigma: f64 },
    /// Log-normal body with a Pareto tail on `tail` of the requests.
    HeavyTail {
        median_ms: f64,
        sigma: f64,
        tail: f64,
        alpha: f64,
    },
}

/// How the canary differs from stable.
#[derive(Clone, Copy)]
pub enum Change {
    None,
    /// Error rate plus this many percentage points.
    ErrorsPlus(f64),
    /// Error rate times this.
    ErrorsTimes(f64),
    /// One of `of` endpoints fails this share of its requests on top of the base rate.
    BadEndpoint {
        of: u32,
        rate: f64,
    },
    /// Error rate growing by this many points per minute.
    Leak {
        points_per_minute: f64,
    },
    /// The slowest tenth stretched so that p99 is this much slower (0.2 = +20 %).
    P99Slower(f64),
    /// Every response this much slower (0.5 = +50 %).
    AllSlower(f64),
    /// This error rate from `from` s for `seconds`, the base rate otherwise.
    Burst {
        from: f64,
        seconds: f64,
        rate: f64,
    },
}

/// What a right judge does with a canary.
#[derive(Clone, Copy, PartialEq)]
pub enum Expect {
    Keep,
    /// The canary is worse, but by less than `minEffect`: either verdict is right.
    Either,
    RollBack,
}

#[derive(Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub rate: Rate,
    pub base_errors: f64,
    pub latency: Latency,
    /// Bursts hitting both versions: every `every` s on average, `seconds` long, at `rate`
    /// errors and twice the latency.
    pub common_bursts: Option<(f64, f64, f64)>,
    /// Each of the ten processes (nine stable, one canary, a tenth of the traffic each) has
    /// its own error rate and latency wandering in 5 s blocks, all alike.
    pub independent_noise: bool,
    pub change: Change,
    /// The canary's share of the requests, in percent.
    pub canary_percent: u16,
    /// Set when the canary is worse, but by less than `minEffect`: what a right judge does.
    pub small: Option<Expect>,
    pub seconds: u64,
}

impl Scenario {
    pub fn expect(&self) -> Expect {
        match (self.small, self.change) {
            (Some(e), _) => e,
            (None, Change::None) => Expect::Keep,
            (None, _) => Expect::RollBack,
        }
    }

    /// A rollback would be a false one.
    pub fn healthy(&self) -> bool {
        self.expect() == Expect::Keep
    }

    pub fn canary_share(&self) -> f64 {
        f64::from(self.canary_percent) / 100.0
    }

    /// When the regression begins: detection times count from here.
    pub fn onset_ms(&self) -> u64 {
        match self.change {
            Change::Burst { from, .. } => (from * 1000.0) as u64,
            _ => 0,
        }
    }

    /// Responses slower than this count as bad: the healthy p99.
    pub fn slow_us(&self) -> u64 {
        let (median, sigma) = match self.latency {
            Latency::LogNormal { median_ms, sigma }
            | Latency::HeavyTail {
                median_ms, sigma, ..
            } => (median_ms, sigma),
        };
        (median * (2.326 * sigma).exp() * 1000.0) as u64
    }
}

pub const MINUTES_10: u64 = 600;

fn base(name: &'static str, what: &'static str) -> Scenario {
    Scenario {
        name,
        what,
        rate: Rate::Constant(200.0),
        base_errors: 0.01,
        latency: Latency::LogNormal {
            median_ms: 20.0,
            sigma: 0.5,
        },
        common_bursts: None,
        independent_noise: false,
        change: Change::None,
        canary_percent: 10,
        small: None,
        seconds: MINUTES_10,
    }
}

/// The healthy scenarios: the canary is as good as stable.
pub fn healthy() -> Vec<Scenario> {
    vec![
        base("steady", "200 req/s, 1 % errors on both"),
        Scenario {
            base_errors: 0.001,
            ..base("steady-0.1%", "200 req/s, 0.1 % errors on both")
        },
        Scenario {
            rate: Rate::Diurnal {
                mean: 200.0,
                swing: 0.6,
                period: 300.0,
            },
            common_bursts: Some((90.0, 10.0, 0.2)),
            ..base(
                "diurnal+bursts",
                "80-320 req/s in 5 min waves; every ~90 s a 10 s burst of 20 % errors and 2x latency on both",
            )
        },
        Scenario {
            independent_noise: true,
            ..base(
                "noisy pods",
                "each of 10 processes (9 stable, 1 canary) has its own error rate (x0-2) and latency (x0.8-1.25), redrawn every 5 s",
            )
        },
        Scenario {
            rate: Rate::PerRun(10.0, 50.0),
            ..base(
                "low-traffic",
                "10-50 req/s: 1-5 req/s to the canary, 1 % errors",
            )
        },
        Scenario {
            latency: Latency::HeavyTail {
                median_ms: 20.0,
                sigma: 0.5,
                tail: 0.03,
                alpha: 1.2,
            },
            ..base(
                "heavy-tail",
                "3 % of responses from a Pareto tail (alpha 1.2)",
            )
        },
        Scenario {
            small: Some(Expect::Keep),
            ..big_canary(
                "big, +5% errors",
                "1,000 req/s, 50 % canary erring 1.05 % (stable 1 %)",
                1.05,
            )
        },
        Scenario {
            small: Some(Expect::Either),
            ..big_canary(
                "big, +10% errors",
                "1,000 req/s, 50 % canary erring 1.1 % (stable 1 %)",
                1.1,
            )
        },
    ]
}

/// A canary taking half of 1,000 req/s whose error rate is `times` stable's.
fn big_canary(name: &'static str, what: &'static str, times: f64) -> Scenario {
    Scenario {
        rate: Rate::Constant(1000.0),
        canary_percent: 50,
        change: Change::ErrorsTimes(times),
        ..base(name, what)
    }
}

/// The regressions, each on its own canary.
pub fn regressions() -> Vec<Scenario> {
    vec![
        Scenario {
            base_errors: 0.001,
            change: Change::ErrorsPlus(0.005),
            ..base("+0.5pp on 0.1%", "canary 0.6 % errors, stable 0.1 %")
        },
        Scenario {
            change: Change::ErrorsTimes(2.0),
            ..base("2x errors", "canary 2 % errors, stable 1 %")
        },
        Scenario {
            change: Change::BadEndpoint { of: 5, rate: 0.1 },
            ..base(
                "1 of 5 endpoints",
                "one of the canary's five endpoints fails 10 % more of its requests",
            )
        },
        Scenario {
            change: Change::Leak {
                points_per_minute: 0.2,
            },
            ..base(
                "slow leak",
                "canary errors grow by 2 points over ten minutes",
            )
        },
        Scenario {
            change: Change::P99Slower(0.2),
            ..base(
                "+20% p99",
                "the canary's slowest tenth stretched: p99 20 % slower",
            )
        },
        Scenario {
            change: Change::AllSlower(0.5),
            ..base("+50% p50", "every canary response 50 % slower")
        },
        Scenario {
            change: Change::Burst {
                from: 30.0,
                seconds: 10.0,
                rate: 0.3,
            },
            ..base(
                "10 s burst",
                "canary fails 30 % of requests for 10 s at 30 s, then healthy",
            )
        },
        big_canary(
            "big, +30% errors",
            "1,000 req/s, 50 % canary erring 1.3 % (stable 1 %)",
            1.3,
        ),
    ]
}

/// Processes serving each version when `independent_noise` is on: the canary is one of ten.
const STABLE_PODS: usize = 9;

/// Per-run randomness that is not per request: noise blocks, burst times, the rate.
pub struct World {
    rate: f64,
    /// Per 5 s block: (error factor, latency factor) of each process, the canary's last.
    noise: Vec<[(f64, f64); STABLE_PODS + 1]>,
    bursts: Vec<(f64, f64)>,
}

impl World {
    pub fn new(s: &Scenario, rng: &mut fastrand::Rng) -> World {
        let rate = match s.rate {
            Rate::PerRun(lo, hi) => lo + rng.f64() * (hi - lo),
            Rate::Constant(r) => r,
            Rate::Diurnal { mean, .. } => mean,
        };
        let blocks = (s.seconds / 5 + 1) as usize;
        let noise = (0..blocks)
            .map(|_| {
                std::array::from_fn(|_| {
                    if s.independent_noise {
                        (
                            rng.f64() * 2.0,
                            (rng.f64() * 0.45 - 0.2).exp().clamp(0.8, 1.25),
                        )
                    } else {
                        (1.0, 1.0)
                    }
                })
            })
            .collect();
        let mut bursts = Vec::new();
        if let Some((every, len, _)) = s.common_bursts {
            let mut t = exponential(rng, every);
            while t < s.seconds as f64 {
                bursts.push((t, t + len));
                t += len + exponential(rng, every);
            }
        }
        World {
            rate,
            noise,
            bursts,
        }
    }

    /// Requests per second at `t` s.
    pub fn rate(&self, s: &Scenario, t: f64) -> f64 {
        match s.rate {
            Rate::Diurnal {
                mean,
                swing,
                period,
            } => mean * (1.0 + swing * (2.0 * PI * t / period).sin()),
            _ => self.rate,
        }
    }

    /// Status and latency (µs) of one request served by `v` at `t` s.
    pub fn outcome(&self, s: &Scenario, v: Version, t: f64, rng: &mut fastrand::Rng) -> (u16, u64) {
        let pod = match v {
            Version::Stable if s.independent_noise => rng.usize(0..STABLE_PODS),
            Version::Stable => 0,
            Version::Canary => STABLE_PODS,
        };
        let (err_factor, lat_factor) = self.noise[(t / 5.0) as usize][pod];
        let burst = s
            .common_bursts
            .filter(|_| self.bursts.iter().any(|&(a, b)| t >= a && t < b));
        let mut p = burst.map_or(s.base_errors, |(_, _, rate)| rate) * err_factor;
        let mut latency = sample_latency(s.latency, rng) * lat_factor;
        if burst.is_some() {
            latency *= 2.0;
        }
        if v == Version::Canary {
            match s.change {
                Change::None => {}
                Change::ErrorsPlus(pp) => p += pp,
                Change::ErrorsTimes(x) => p *= x,
                Change::BadEndpoint { of, rate } => {
                    if rng.u32(0..of) == 0 {
                        p += rate;
                    }
                }
                Change::Leak { points_per_minute } => p += points_per_minute / 100.0 * t / 60.0,
                Change::P99Slower(x) => latency = stretch_tail(s, latency, x),
                Change::AllSlower(x) => latency *= 1.0 + x,
                Change::Burst {
                    from,
                    seconds,
                    rate,
                } => {
                    if t >= from && t < from + seconds {
                        p = rate;
                    }
                }
            }
        }
        let status = if rng.f64() < p { 503 } else { 200 };
        (status, (latency * 1000.0) as u64)
    }
}

impl Scenario {
    /// The best any test at level 0.01 could do with one look at 60 s on the events this
    /// regression adds (errors, or responses over the healthy p99), knowing stable's rate
    /// exactly and the size of the regression: the chance it catches it. None if healthy.
    pub fn bound_at_60s(&self) -> Option<f64> {
        let (median, sigma) = match self.latency {
            Latency::LogNormal { median_ms, sigma }
            | Latency::HeavyTail {
                median_ms, sigma, ..
            } => (median_ms, sigma),
        };
        let p = self.base_errors;
        // Canary event probability over the minute after the onset, and stable's.
        let (canary, stable) = match self.change {
            Change::None => return None,
            Change::ErrorsPlus(pp) => (p + pp, p),
            Change::ErrorsTimes(x) => (p * x, p),
            Change::BadEndpoint { of, rate } => (p + rate / f64::from(of), p),
            Change::Leak { points_per_minute } => (p + points_per_minute / 200.0, p),
            Change::Burst { seconds, rate, .. } => {
                ((seconds * rate + (60.0 - seconds) * p) / 60.0, p)
            }
            Change::P99Slower(x) => {
                let p90 = median * (1.2816 * sigma).exp();
                let p99 = median * (2.3263 * sigma).exp();
                let k = ((1.0 + x) * p99 - p90) / (p99 - p90);
                let z = ((p90 + (p99 - p90) / k) / median).ln() / sigma;
                (1.0 - crate::judges::phi(z), 0.01)
            }
            Change::AllSlower(x) => (
                1.0 - crate::judges::phi(2.3263 - (1.0 + x).ln() / sigma),
                0.01,
            ),
        };
        let rate = match self.rate {
            Rate::Constant(r) | Rate::Diurnal { mean: r, .. } => r,
            Rate::PerRun(lo, hi) => (lo + hi) / 2.0,
        };
        let requests = 60.0 * rate * self.canary_share();
        let (l0, l1) = (requests * stable, requests * canary);
        let mut k = 0;
        while poisson_at_least(l0, k) > 0.01 {
            k += 1;
        }
        Some(poisson_at_least(l1, k))
    }
}

/// P(X >= k) for X ~ Poisson(lambda).
fn poisson_at_least(lambda: f64, k: u64) -> f64 {
    let mut term = (-lambda).exp();
    let mut below = 0.0;
    for i in 0..k {
        below += term;
        term *= lambda / (i + 1) as f64;
    }
    (1.0 - below).max(0.0)
}

/// Stretches latencies above the healthy p90 so that the p99 grows by `x`.
fn stretch_tail(s: &Scenario, ms: f64, x: f64) -> f64 {
    let (median, sigma) = match s.latency {
        Latency::LogNormal { median_ms, sigma }
        | Latency::HeavyTail {
            median_ms, sigma, ..
        } => (median_ms, sigma),
    };
    let p90 = median * (1.2816 * sigma).exp();
    let p99 = median * (2.3263 * sigma).exp();
    if ms <= p90 {
        return ms;
    }
    let k = ((1.0 + x) * p99 - p90) / (p99 - p90);
    p90 + (ms - p90) * k
}

fn sample_latency(l: Latency, rng: &mut fastrand::Rng) -> f64 {
    match l {
        Latency::LogNormal { median_ms, sigma } => median_ms * (sigma * normal(rng)).exp(),
        Latency::HeavyTail {
            median_ms,
            sigma,
            tail,
            alpha,
        } => {
            if rng.f64() < tail {
                // Pareto from the body's p99 up, capped at 30 s.
                let scale = median_ms * (2.326 * sigma).exp();
                (scale * (1.0 - rng.f64()).powf(-1.0 / alpha)).min(30_000.0)
            } else {
                median_ms * (sigma * normal(rng)).exp()
            }
        }
    }
}

pub fn normal(rng: &mut fastrand::Rng) -> f64 {
    let (u1, u2) = (1.0 - rng.f64(), rng.f64());
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

pub fn exponential(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    -(1.0 - rng.f64()).ln() * mean
}
