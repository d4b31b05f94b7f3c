//! The builtin provider: reads the proxy's per-version sliding windows, optionally against
//! stable, as one value over a window or, for the sequential judge, second by second.

use crate::metrics::VersionStats;
use crate::metrics::WindowSnapshot;
use crate::metrics::window::{LATENCY_BUCKETS, SecondCounts, StatusCounts, bucket_upper_micros};

use super::codes::ErrorCode;
use super::sequential::{Pair, Slice};
use super::spec::{BuiltinKind, BuiltinMetric, CompareWith};
use super::verdict::Reading;

/// Reads one builtin metric from the canary's window (and the stable's, to compare).
pub fn read(
    metric: &BuiltinMetric,
    min_requests: Option<u64>,
    canary: &WindowSnapshot,
    stable: Option<&WindowSnapshot>,
) -> Reading {
    let min = min_requests.unwrap_or(1).max(1);
    let canary_value = match value(metric, canary, min) {
        Ok(v) => v,
        Err(why) => return Reading::NoData(format!("canary: {why}")),
    };
    match metric.compare {
        None => Reading::Value(canary_value),
        Some(CompareWith::Stable) => {
            let Some(stable) = stable else {
                return Reading::NoData("no stable version to compare with".into());
            };
            let stable_value = match value(metric, stable, min) {
                Ok(v) => v,
                Err(why) => return Reading::NoData(format!("stable: {why}")),
            };
            match metric.metric {
                BuiltinKind::ErrorRate => Reading::Value(canary_value - stable_value),
                BuiltinKind::Latency | BuiltinKind::RequestRate if stable_value > 0.0 => {
                    Reading::Value(canary_value / stable_value)
                }
                _ => Reading::NoData("stable's value is 0, no ratio".into()),
            }
        }
    }
}

fn value(metric: &BuiltinMetric, w: &WindowSnapshot, min: u64) -> Result<f64, String> {
    let n = w.requests();
    if metric.metric != BuiltinKind::RequestRate && n < min {
        return Err(format!(
            "{n} requests in the last {}s since the analysis began, fewer than {min}",
            w.span.as_secs()
        ));
    }
    Ok(match metric.metric {
        BuiltinKind::RequestRate => w.requests_per_second(),
        BuiltinKind::ErrorRate => errors(metric, w) as f64 / n as f64,
        BuiltinKind::Latency => w
            .latency_quantile(metric.quantile.unwrap_or(0.99))
            .map(|d| d.as_secs_f64())
            .ok_or("no latency samples")?,
    })
}

/// What the sequential judge counts against a version: errors, or for latency the
/// responses slower than the pooled `quantile` (both versions together) of the last seconds.
pub fn stream_names(metric: &BuiltinMetric) -> Vec<String> {
    match metric.metric {
        BuiltinKind::Latency => {
            let q = quantile_name(metric.quantile.unwrap_or(0.99));
            vec![match metric.max_ratio {
                Some(r) if r > 1.0 => format!("responses slower than {r}x the pooled {q}"),
                _ => format!("responses slower than the pooled {q}"),
            }]
        }
        _ => {
            let codes: Vec<String> = metric.codes.iter().map(|c| c.to_string()).collect();
            let codes = if codes.is_empty() {
                "5xx".to_string()
            } else {
                codes.join(", ")
            };
            vec![match metric.max_increase {
                Some(d) if d > 0.0 => format!(
                    "errors ({codes}), tolerating {} points over stable's rate",
                    super::verdict::show(d * 100.0)
                ),
                _ => format!("errors ({codes})"),
            }]
        }
    }
}

fn quantile_name(q: f64) -> String {
    let percent = q * 100.0;
    if (percent - percent.round()).abs() < 1e-9 {
        format!("p{}", percent.round())
    } else {
        format!("p{percent}")
    }
}

/// Seconds of pooled latency the slow-response threshold is read from.
const THRESHOLD_SECONDS: u64 = 30;

/// The whole seconds `from_s..to_s` (process clock) of both versions, for the sequential
/// judge, stamped in unix time (`unix_offset_ms` is unix time at process time 0). Seconds
/// that left the window are skipped.
pub fn slices(
    metric: &BuiltinMetric,
    canary: &VersionStats,
    stable: &VersionStats,
    seconds: std::ops::Range<u64>,
    unix_offset_ms: u64,
) -> Vec<Slice> {
    let latency = (metric.metric == BuiltinKind::Latency).then(|| {
        // The threshold of each second comes from the seconds before it: fixed before the
        // second's own responses, so a canary as fast as stable gets its share of the slow.
        let first = seconds.start.saturating_sub(THRESHOLD_SECONDS);
        PooledLatency::new(canary, stable, first..seconds.start)
    });
    let mut latency = latency;
    seconds
        .filter_map(|s| {
            let (c, st) = (canary.second(s), stable.second(s));
            let (Some(c), Some(st)) = (c, st) else {
                return None;
            };
            let events = match &mut latency {
                Some(pooled) => {
                    let q = metric.quantile.unwrap_or(0.99);
                    let slow = pooled.slower_than(q, metric.max_ratio.unwrap_or(1.0), &c, &st);
                    pooled.push(&c, &st);
                    slow
                }
                None => Pair {
                    canary: errors(metric, &c),
                    stable: errors(metric, &st),
                },
            };
            Some(Slice {
                start: unix_offset_ms + s * 1000,
                running: false,
                requests: Pair {
                    canary: c.requests(),
                    stable: st.requests(),
                },
                events: vec![events],
            })
        })
        .collect()
}

/// Responses that count as errors: the configured codes, or 5xx.
fn errors(metric: &BuiltinMetric, c: &impl StatusCounts) -> u64 {
    if metric.codes.is_empty() {
        return c.by_class()[4];
    }
    metric
        .codes
        .iter()
        .map(|code| match *code {
            ErrorCode::Class(class) => c.by_class()[usize::from(class) - 1],
            ErrorCode::Code(code) => c.with_code(code),
        })
        .sum()
}

/// Both versions' latency histograms over a sliding run of past seconds.
struct PooledLatency {
    seconds: std::collections::VecDeque<Vec<u64>>,
    sum: Vec<u64>,
}

impl PooledLatency {
    fn new(canary: &VersionStats, stable: &VersionStats, seconds: std::ops::Range<u64>) -> Self {
        let mut pooled = PooledLatency {
            seconds: Default::default(),
            sum: vec![0; LATENCY_BUCKETS],
        };
        for s in seconds {
            if let (Some(c), Some(st)) = (canary.second(s), stable.second(s)) {
                pooled.push(&c, &st);
            }
        }
        pooled
    }

    fn push(&mut self, canary: &SecondCounts, stable: &SecondCounts) {
        let both: Vec<u64> = canary
            .latency
            .iter()
            .zip(&stable.latency)
            .map(|(c, s)| c + s)
            .collect();
        for (sum, n) in self.sum.iter_mut().zip(&both) {
            *sum += n;
        }
        self.seconds.push_back(both);
        if self.seconds.len() > THRESHOLD_SECONDS as usize
            && let Some(old) = self.seconds.pop_front()
        {
            for (sum, n) in self.sum.iter_mut().zip(&old) {
                *sum -= n;
            }
        }
    }

    /// Responses of each version above the bucket holding pooled quantile `q` of the past
    /// seconds (of this second itself, both versions together, when there are none yet); the
    /// canary's only when surely above `ratio` times that bound (its tolerance), so a canary
    /// at most `ratio` times slower than stable gets at most its share of them.
    fn slower_than(
        &self,
        q: f64,
        ratio: f64,
        canary: &SecondCounts,
        stable: &SecondCounts,
    ) -> Pair {
        let own: Vec<u64>;
        let pooled = if self.sum.iter().any(|&n| n > 0) {
            &self.sum
        } else {
            own = canary
                .latency
                .iter()
                .zip(&stable.latency)
                .map(|(c, s)| c + s)
                .collect();
            &own
        };
        let total: u64 = pooled.iter().sum();
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        let mut threshold = pooled.len();
        for (i, n) in pooled.iter().enumerate() {
            seen += n;
            if seen >= rank {
                threshold = i;
                break;
            }
        }
        let above = |h: &[u64], from: usize| h.iter().skip(from).sum();
        // The first bucket whose every latency is above `ratio` times the threshold.
        let bound = bucket_upper_micros(threshold.min(LATENCY_BUCKETS - 1)) as f64 * ratio;
        let canary_from = (threshold + 1..LATENCY_BUCKETS)
            .find(|&b| (bucket_upper_micros(b - 1) + 1) as f64 >= bound)
            .unwrap_or(LATENCY_BUCKETS);
        Pair {
            canary: above(&canary.latency, canary_from),
            stable: above(&stable.latency, threshold + 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn metric(yaml: &str) -> BuiltinMetric {
        yaml_serde::from_str(yaml).expect("builtin metric parses")
    }

    fn stats(name: &str) -> VersionStats {
        VersionStats::new("app".into(), name.into())
    }

    #[test]
    fn seconds_carry_each_versions_requests_and_errors() {
        let (canary, stable) = (stats("v2"), stats("v1"));
        for (v, status, at) in [
            (&canary, 503, 2_100),
            (&canary, 200, 2_200),
            (&stable, 429, 2_300),
            (&stable, 200, 2_400),
            (&stable, 500, 3_100),
        ] {
            v.record_at(status, Duration::from_millis(5), at);
        }
        let errors = metric("{metric: errorRate, compare: stable}");
        let s = slices(&errors, &canary, &stable, 2..4, 1_000_000);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].start, 1_002_000, "stamped in unix time");
        assert_eq!(
            s[0].requests,
            Pair {
                canary: 2,
                stable: 2
            }
        );
        assert_eq!(
            s[0].events,
            [Pair {
                canary: 1,
                stable: 0
            }]
        );
        assert_eq!(
            s[1].events,
            [Pair {
                canary: 0,
                stable: 1
            }]
        );
        let with_429 = metric("{metric: errorRate, compare: stable, codes: [5xx, 429]}");
        let s = slices(&with_429, &canary, &stable, 2..3, 0);
        assert_eq!(
            s[0].events,
            [Pair {
                canary: 1,
                stable: 1
            }]
        );
        assert_eq!(stream_names(&with_429), ["errors (5xx, 429)"]);
    }

    #[test]
    fn slow_means_slower_than_the_pooled_quantile_of_the_seconds_before() {
        let (canary, stable) = (stats("v2"), stats("v1"));
        // Ten seconds of both versions at 10 ms, one response a second at 100 ms.
        for s in 0..10u64 {
            for i in 0..100 {
                let ms = if i == 0 { 100 } else { 10 };
                let v = if i % 10 == 0 { &canary } else { &stable };
                v.record_at(200, Duration::from_millis(ms), s * 1000 + i);
            }
        }
        // Second 10: the canary answers in 50 ms, stable as before.
        for i in 0..100 {
            let (v, ms) = if i % 10 == 0 {
                (&canary, 50)
            } else {
                (&stable, 10)
            };
            v.record_at(200, Duration::from_millis(ms), 10_000 + i);
        }
        let latency = metric("{metric: latency, quantile: 0.9, compare: stable}");
        assert_eq!(
            stream_names(&latency),
            ["responses slower than the pooled p90"]
        );
        let s = slices(&latency, &canary, &stable, 10..11, 0);
        // The pooled p90 of seconds 0-9 is 10 ms: all ten canary responses are slower.
        assert_eq!(
            s[0].events,
            [Pair {
                canary: 10,
                stable: 0
            }]
        );
        // With nothing before, the second's own pooled p90 (10 ms) is the threshold: only the
        // one 100 ms response, the canary's, is slower.
        let s = slices(&latency, &canary, &stable, 0..1, 0);
        assert_eq!(
            s[0].events,
            [Pair {
                canary: 1,
                stable: 0
            }]
        );
    }
}
