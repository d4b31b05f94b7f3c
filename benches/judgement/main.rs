//! The judgement benchmark: simulated rollouts of healthy and regressed canaries, judged by
//! tidegate's sequential judge and three baselines side by side.
//!
//! Every request of a run is drawn from a scenario, sent to a version by tidegate's own
//! weighted schedule (a 10 % canary unless the scenario says otherwise), and counted in the
//! real per-version windows on a fake clock; every second each judge looks, through the real
//! builtin provider and the real rollout engine where it is tidegate's. Seeds are fixed: the same command prints the same
//! table.
//!
//! ```sh
//! cargo bench --bench judgement                 # 1000 runs a scenario, table + plots
//! cargo bench --bench judgement -- --runs 200 --only steady --no-plots
//! ```

mod judges;
mod plots;
mod scenarios;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use judges::Call;
use scenarios::{Expect, Scenario, Version, World};
use tidegate::metrics::VersionStats;
use tidegate::routing::WeightSchedule;

/// What one judge did in one run.
#[derive(Clone, Copy, Default)]
pub struct Verdict {
    /// ms from the start (or from the regression's onset) to the rollback.
    pub rolled_back_after: Option<u64>,
    /// Rolled back before the regression began: a false rollback, not a detection.
    pub rolled_back_early: bool,
    pub paused: bool,
    /// Bad canary responses (errors, or slower than the healthy p99) served before the
    /// canary's weight went to 0 (or by the end of the run).
    pub bad_served: u64,
}

/// Runs one rollout of `scenario` with `seed`; one verdict per judge.
pub fn simulate(scenario: &Scenario, seed: u64) -> Vec<Verdict> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let world = World::new(scenario, &mut rng);
    let canary = Arc::new(VersionStats::new("app".into(), "v2".into()));
    let stable = Arc::new(VersionStats::new("app".into(), "v1".into()));
    let canary_weight = scenario.canary_percent * 100;
    let schedule = WeightSchedule::new(&[10_000 - canary_weight, canary_weight]);
    let mut judges = judges::all(scenario.canary_percent);
    let mut verdicts = vec![Verdict::default(); judges.len()];
    let mut done = vec![false; judges.len()];
    let slow_us = scenario.slow_us();
    let mut bad = 0u64;
    let mut next_arrival = 0.0;
    for second in 0..scenario.seconds {
        let now_ms = second * 1000;
        for (i, j) in judges.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            if let Some(call) = j.look(now_ms, &canary, &stable) {
                done[i] = true;
                match call {
                    Call::RolledBack(at) if at < scenario.onset_ms() => {
                        verdicts[i].rolled_back_early = true
                    }
                    Call::RolledBack(at) => {
                        verdicts[i].rolled_back_after = Some(at - scenario.onset_ms())
                    }
                    Call::Paused(_) => verdicts[i].paused = true,
                }
                verdicts[i].bad_served = bad;
            }
        }
        if scenario.expect() == Expect::RollBack && done.iter().all(|d| *d) {
            break;
        }
        // This second's requests: a Poisson process at the scenario's rate.
        let end = (second + 1) as f64;
        while next_arrival < end {
            let t = next_arrival;
            next_arrival +=
                scenarios::exponential(&mut rng, 1.0 / world.rate(scenario, t).max(0.1));
            let version = if schedule.next() == 1 {
                Version::Canary
            } else {
                Version::Stable
            };
            let (status, latency_us) = world.outcome(scenario, version, t, &mut rng);
            let stats = match version {
                Version::Canary => {
                    bad += u64::from(status >= 500 || latency_us > slow_us);
                    &canary
                }
                Version::Stable => &stable,
            };
            stats.record_at(
                status,
                Duration::from_micros(latency_us),
                (t * 1000.0) as u64,
            );
        }
    }
    for (v, d) in verdicts.iter_mut().zip(&done) {
        if !d {
            v.bad_served = bad;
        }
    }
    verdicts
}

/// Runs `runs` rollouts of `scenario` on every core; verdicts per judge, in seed order.
pub fn run_many(scenario: &Scenario, runs: usize, seed_base: u64) -> Vec<Vec<Verdict>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let mut all: Vec<(usize, Vec<Verdict>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= runs {
                            return out;
                        }
                        out.push((i, simulate(scenario, seed_base + i as u64)));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread"))
            .collect()
    });
    all.sort_by_key(|(i, _)| *i);
    let mut by_judge = vec![Vec::with_capacity(runs); judges::NAMES.len()];
    for (_, verdicts) in all {
        for (j, v) in verdicts.into_iter().enumerate() {
            by_judge[j].push(v);
        }
    }
    by_judge
}

/// A scenario's figures for one judge.
pub struct Row {
    pub rolled_back: f64,
    pub rolled_back_early: f64,
    pub paused: f64,
    pub median_s: Option<f64>,
    pub p95_s: Option<f64>,
    pub within_60s: f64,
    pub bad_served: f64,
}

pub fn row(verdicts: &[Verdict]) -> Row {
    let n = verdicts.len() as f64;
    let mut times: Vec<f64> = verdicts
        .iter()
        .filter_map(|v| v.rolled_back_after)
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    // Quantiles over all runs: a run never caught counts as slower than any caught one.
    let quantile = |q: f64| {
        let rank = ((q * n).ceil() as usize).max(1);
        times.get(rank - 1).copied()
    };
    Row {
        rolled_back: times.len() as f64 / n,
        rolled_back_early: verdicts.iter().filter(|v| v.rolled_back_early).count() as f64 / n,
        paused: verdicts.iter().filter(|v| v.paused).count() as f64 / n,
        median_s: quantile(0.5),
        p95_s: quantile(0.95),
        within_60s: times.iter().filter(|&&t| t <= 60.0).count() as f64 / n,
        bad_served: verdicts.iter().map(|v| v.bad_served as f64).sum::<f64>() / n,
    }
}

struct Args {
    runs: usize,
    only: Option<String>,
    plots: bool,
    out: std::path::PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        runs: 1000,
        only: None,
        plots: true,
        out: std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/judgement")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.runs),
            "--only" => a.only = it.next(),
            "--no-plots" => a.plots = false,
            "--out" => a.out = it.next().map(Into::into).unwrap_or(a.out),
            _ => {} // `cargo bench` adds `--bench`
        }
    }
    a
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{s:.0} s"))
}

fn main() {
    let args = args();
    let started = Instant::now();
    let mut table = String::from(
        "| scenario | judge | rolled back | paused | detect median / p95 | within 60 s (bound) | bad canary responses |\n|---|---|---|---|---|---|---|\n",
    );
    let mut scenarios: Vec<Scenario> = scenarios::healthy();
    scenarios.extend(scenarios::regressions());
    for (k, s) in scenarios.iter().enumerate() {
        if args.only.as_deref().is_some_and(|o| !s.name.contains(o)) {
            continue;
        }
        let t = Instant::now();
        let by_judge = run_many(s, args.runs, 1_000_000 * (k as u64 + 1));
        for (name, verdicts) in judges::NAMES.iter().zip(&by_judge) {
            let r = row(verdicts);
            let line = if s.expect() != Expect::RollBack {
                let times: Vec<u64> = verdicts
                    .iter()
                    .filter_map(|v| v.rolled_back_after)
                    .map(|t| t / 1000)
                    .collect();
                if std::env::var_os("JUDGEMENT_TIMES").is_some() {
                    eprintln!("{name}: false rollbacks at {times:?}");
                }
                let called = if s.healthy() {
                    "false"
                } else {
                    "(either is right)"
                };
                format!(
                    "| {} | {name} | **{}** {called} | {} | | | {:.0} |\n",
                    s.name,
                    pct(r.rolled_back),
                    pct(r.paused),
                    r.bad_served
                )
            } else {
                let early = if r.rolled_back_early > 0.0 {
                    format!(" (+{} before it began)", pct(r.rolled_back_early))
                } else {
                    String::new()
                };
                let bound = s
                    .bound_at_60s()
                    .map_or(String::new(), |b| format!(" ({})", pct(b)));
                format!(
                    "| {} | {name} | {}{early} | {} | {} / {} | **{}**{bound} | {:.0} |\n",
                    s.name,
                    pct(r.rolled_back),
                    pct(r.paused),
                    secs(r.median_s),
                    secs(r.p95_s),
                    pct(r.within_60s),
                    r.bad_served
                )
            };
            print!("{line}");
            table.push_str(&line);
        }
        eprintln!(
            "{} ({}): {} runs in {:.1} s",
            s.name,
            s.what,
            args.runs,
            t.elapsed().as_secs_f64()
        );
    }
    let _ = std::fs::create_dir_all(&args.out);
    let _ = std::fs::write(args.out.join("results.md"), &table);
    if args.plots && args.only.is_none() {
        plots::draw(&args.out, (args.runs / 5).max(50));
    }
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
}
