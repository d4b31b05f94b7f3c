//! Rollouts described by annotations on a user's own Deployment: the full rollout spec as
//! YAML, or short forms for the common case.
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     tidegate.dev/steps: "10,pause:2m,25,analysis,50,pause"
//!     tidegate.dev/max-error-rate: "0.5%"     # tolerated over stable's error rate
//!     tidegate.dev/max-p99-ratio: "1.2"       # tolerated p99 against stable's
//!     tidegate.dev/host: shop.example.com
//!     tidegate.dev/port: "8080"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use super::crd::{RolloutResourceSpec, RouteRef, WorkloadRef};
use crate::analysis::{AnalysisSpec, BackgroundAnalysis, MetricSpec};
use crate::rollout::spec::PauseStep;
use crate::rollout::{RolloutSpec, Step};
use crate::units::{parse_duration, parse_weight};

pub const ROLLOUT: &str = "tidegate.dev/rollout";
pub const STEPS: &str = "tidegate.dev/steps";
pub const MAX_ERROR_RATE: &str = "tidegate.dev/max-error-rate";
pub const MAX_P99_RATIO: &str = "tidegate.dev/max-p99-ratio";
pub const HOST: &str = "tidegate.dev/host";
pub const PATH_PREFIX: &str = "tidegate.dev/path-prefix";
pub const PORT: &str = "tidegate.dev/port";

/// How long an `analysis` item of `tidegate.dev/steps` looks, unless it says (`analysis:5m`).
const ANALYSIS_STEP: Duration = Duration::from_secs(60);
/// The judge's false-rollback chance per metric: errors and p99 make 0.01 for the rollout.
const ALPHA_PER_METRIC: f64 = 0.005;

/// An annotation that cannot be used: which one, where in it, and why. Nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub message: String,
}

fn bad(annotation: &'static str, message: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation,
        message: message.into(),
    }
}

/// The rollout a Deployment named `deployment` asks for by its annotations; None when it
/// carries neither `tidegate.dev/rollout` nor `tidegate.dev/steps`.
pub fn rollout_of(
    deployment: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<RolloutResourceSpec>, AnnotationError> {
    let get = |key: &str| annotations.get(key).map(|v| v.trim());
    let strategy = match (get(ROLLOUT), get(STEPS)) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(bad(
                STEPS,
                format!("give either {ROLLOUT} (the whole spec) or {STEPS}, not both"),
            ));
        }
        (Some(yaml), None) => {
            for short in [MAX_ERROR_RATE, MAX_P99_RATIO] {
                if get(short).is_some() {
                    return Err(bad(
                        short,
                        format!("goes with {STEPS}; with {ROLLOUT} put the analysis in the spec"),
                    ));
                }
            }
            let spec: RolloutSpec =
                yaml_serde::from_str(yaml).map_err(|e| bad(ROLLOUT, e.to_string()))?;
            spec.validate_for_cluster()
                .map_err(|e| bad(ROLLOUT, e.to_string()))?;
            spec
        }
        (None, Some(steps)) => {
            let judge = Judge {
                max_increase: get(MAX_ERROR_RATE).map(parse_error_rate).transpose()?,
                max_ratio: get(MAX_P99_RATIO).map(parse_ratio).transpose()?,
            };
            short_form(steps, &judge)?
        }
    };
    let port = get(PORT)
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(PORT, format!("`{p}` is not a port (1-65535)")))
        })
        .transpose()?;
    let path_prefix = get(PATH_PREFIX).map(str::to_string);
    if let Some(p) = &path_prefix
        && !p.starts_with('/')
    {
        return Err(bad(PATH_PREFIX, format!("`{p}` must start with `/`")));
    }
    Ok(Some(RolloutResourceSpec {
        workload_ref: WorkloadRef {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: deployment.to_string(),
        },
        route: RouteRef {
            host: get(HOST).map(str::to_string),
            path_prefix,
            port,
        },
        strategy,
    }))
}

/// The tolerances of the short form's judge.
struct Judge {
    max_increase: Option<f64>,
    max_ratio: Option<f64>,
}

impl Judge {
    /// Errors and p99 against stable, by the sequential judge.
    fn metrics(&self, count: Option<u32>) -> Vec<MetricSpec> {
        let metric = |name: &str, provider: String| -> MetricSpec {
            let mut m: MetricSpec = yaml_serde::from_str(&format!(
                "{{name: {name}, interval: 1s, provider: {{builtin: {provider}}}}}"
            ))
            .unwrap_or_else(|e| unreachable!("the short form's metric parses: {e}"));
            m.count = count;
            m
        };
        let increase = self
            .max_increase
            .map_or(String::new(), |d| format!(", maxIncrease: {d}"));
        let ratio = self
            .max_ratio
            .map_or(String::new(), |r| format!(", maxRatio: {r}"));
        vec![
            metric(
                "errors-vs-stable",
                format!(
                    "{{metric: errorRate, compare: stable, alpha: {ALPHA_PER_METRIC}{increase}}}"
                ),
            ),
            metric(
                "p99-vs-stable",
                format!(
                    "{{metric: latency, quantile: 0.99, compare: stable, alpha: {ALPHA_PER_METRIC}{ratio}}}"
                ),
            ),
        ]
    }
}

/// `10,pause:2m,25,analysis,50,pause`: weights in percent, `pause` (for `promote`) or
/// `pause:DURATION`, `analysis` or `analysis:DURATION`. The judge watches throughout.
fn short_form(steps: &str, judge: &Judge) -> Result<RolloutSpec, AnnotationError> {
    let mut spec: RolloutSpec = yaml_serde::from_str("{}")
        .unwrap_or_else(|e| unreachable!("an empty rollout spec parses: {e}"));
    for (i, item) in steps.split(',').enumerate() {
        let item = item.trim();
        let at = |why: String| bad(STEPS, format!("item {} `{item}`: {why}", i + 1));
        let (word, arg) = match item.split_once(':') {
            Some((w, a)) => (w.trim(), Some(a.trim())),
            None => (item, None),
        };
        let duration = |a: &str| parse_duration(a).map_err(&at);
        let step = match (word, arg) {
            ("pause", None) => Step::Pause(PauseStep { duration: None }),
            ("pause", Some(d)) => Step::Pause(PauseStep {
                duration: Some(duration(d)?),
            }),
            ("analysis", arg) => {
                let length = arg.map(duration).transpose()?.unwrap_or(ANALYSIS_STEP);
                let looks = (length.as_secs().max(1)).min(u64::from(u32::MAX)) as u32;
                Step::Analysis(AnalysisSpec {
                    metrics: judge.metrics(Some(looks)),
                })
            }
            (w, None) => {
                let percent: f64 = w.trim_end_matches('%').parse().map_err(|_| {
                    at(
                        "not a weight in percent, `pause`, `pause:2m`, `analysis` or `analysis:5m`"
                            .into(),
                    )
                })?;
                Step::SetWeight(parse_weight(percent).map_err(&at)?)
            }
            (_, Some(_)) => return Err(at("only `pause` and `analysis` take a duration".into())),
        };
        spec.steps.push(step);
    }
    spec.analysis = Some(BackgroundAnalysis {
        starting_step: 0,
        metrics: judge.metrics(None),
    });
    spec.validate_for_cluster()
        .map_err(|e| bad(STEPS, e.to_string()))?;
    Ok(spec)
}

/// `0.5%` or `0.005`: a share of requests.
fn parse_error_rate(text: &str) -> Result<f64, AnnotationError> {
    let value = match text.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => text.parse::<f64>(),
    };
    value
        .ok()
        .filter(|v| (0.0..1.0).contains(v))
        .ok_or_else(|| {
            bad(
                MAX_ERROR_RATE,
                format!("`{text}` is not an error rate like 0.5% (tolerated over stable's)"),
            )
        })
}

/// `1.2`: how many times slower than stable's p99.
fn parse_ratio(text: &str) -> Result<f64, AnnotationError> {
    text.parse::<f64>()
        .ok()
        .filter(|r| (1.0..=10.0).contains(r))
        .ok_or_else(|| {
            bad(
                MAX_P99_RATIO,
                format!("`{text}` is not a ratio in 1..10 like 1.2"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_deployment_without_rollout_annotations_is_not_a_rollout() {
        let a = annotations(&[(HOST, "shop.example.com"), ("other/x", "1")]);
        assert_eq!(rollout_of("shop", &a), Ok(None));
    }

    #[test]
    fn the_short_form_reads_steps_tolerances_and_route() {
        let a = annotations(&[
            (STEPS, "10, pause:2m, 25, analysis, 50, pause"),
            (MAX_ERROR_RATE, "0.5%"),
            (MAX_P99_RATIO, "1.2"),
            (HOST, "shop.example.com"),
            (PORT, "8080"),
        ]);
        let r = rollout_of("shop", &a).unwrap().expect("a rollout");
        assert_eq!(r.workload_ref.name, "shop");
        assert_eq!(
            (r.route.host.as_deref(), r.route.port),
            (Some("shop.example.com"), Some(8080))
        );
        let s = &r.strategy;
        assert_eq!(s.steps.len(), 6);
        assert_eq!(s.steps[0], Step::SetWeight(1000));
        assert_eq!(
            s.steps[1],
            Step::Pause(PauseStep {
                duration: Some(Duration::from_secs(120))
            })
        );
        let Step::Analysis(step) = &s.steps[3] else {
            panic!("{:?}", s.steps[3]);
        };
        assert_eq!(step.metrics[0].count, Some(60), "a minute of looks");
        assert_eq!(s.steps[5], Step::Pause(PauseStep { duration: None }));
        let background = &s
            .analysis
            .as_ref()
            .expect("the judge watches throughout")
            .metrics;
        let errors = background[0].sequential().expect("the sequential judge");
        assert_eq!((errors.alpha, errors.max_increase), (0.005, 0.005));
        let crate::analysis::ProviderSpec::Builtin(p99) = &background[1].provider else {
            panic!("builtin");
        };
        assert_eq!(p99.max_ratio, Some(1.2));
    }

    #[test]
    fn the_whole_spec_as_yaml() {
        let a = annotations(&[(
            ROLLOUT,
            "steps:\n  - setWeight: 20\n  - pause: {duration: 30s}\ndrainTimeout: 1m\n",
        )]);
        let r = rollout_of("api", &a).unwrap().expect("a rollout");
        assert_eq!(r.strategy.steps.len(), 2);
        assert_eq!(r.strategy.drain_timeout, Duration::from_secs(60));
    }

    #[test]
    fn bad_annotations_say_which_and_what() {
        // (annotations, the one blamed, what the message says)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 8] = [
            (
                &[(STEPS, "10,pause:2x")],
                STEPS,
                "item 2 `pause:2x`: `2x` is not a duration",
            ),
            (&[(STEPS, "10,wait")], STEPS, "item 2 `wait`: not a weight"),
            (
                &[(STEPS, "10,120")],
                STEPS,
                "item 2 `120`: weight `120` is outside 0..100",
            ),
            (
                &[(STEPS, "10"), (MAX_ERROR_RATE, "lots")],
                MAX_ERROR_RATE,
                "`lots` is not an error rate",
            ),
            (
                &[(STEPS, "10"), (MAX_P99_RATIO, "0.5")],
                MAX_P99_RATIO,
                "`0.5` is not a ratio",
            ),
            (
                &[(STEPS, "10"), (PORT, "http")],
                PORT,
                "`http` is not a port",
            ),
            (&[(STEPS, "10"), (ROLLOUT, "steps: []")], STEPS, "not both"),
            (
                &[(ROLLOUT, "steps:\n  - setWeigh: 10\n")],
                ROLLOUT,
                "unknown variant `setWeigh`",
            ),
        ];
        for (pairs, annotation, message) in cases {
            let e = rollout_of("shop", &annotations(pairs)).unwrap_err();
            assert_eq!(e.annotation, annotation, "{e}");
            assert!(e.message.contains(message), "{e}");
        }
        let e =
            rollout_of("shop", &annotations(&[(ROLLOUT, "canary: v2\nsteps: []")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("canary: not for a Kubernetes rollout"),
            "{e}"
        );
    }

    #[test]
    fn local_only_settings_are_refused_on_a_cluster_with_their_field() {
        let healthcheck = "steps:\n- setWeight: 10\n- analysis: {metrics: [{name: up, provider: {healthcheck: {}}}]}\n";
        let e = rollout_of("shop", &annotations(&[(ROLLOUT, healthcheck)])).unwrap_err();
        assert!(
            e.message.starts_with(
                "steps[1].analysis.metrics[0].provider: healthcheck is for local mode"
            ),
            "{e}"
        );
        let delay = "steps:\n- setWeight: 10\nscaleDownDelay: 5m\n";
        let e = rollout_of("shop", &annotations(&[(ROLLOUT, delay)])).unwrap_err();
        assert!(
            e.message
                .starts_with("scaleDownDelay: not for a Kubernetes rollout"),
            "{e}"
        );
    }
}
