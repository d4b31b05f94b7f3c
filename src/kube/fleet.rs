//! The proxies as the controller sees them. Every second it finds them (the ready endpoints
//! of the EndpointSlices matching the proxy selector, port `admin`), scrapes their /metrics
//! and keeps what a rollout needs: the weight each proxy applied, requests in flight per
//! version, ready stable endpoints, and the fleet's summed per-second counts, which the
//! builtin analysis judges like a local proxy's windows.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use prometheus_parse::{Scrape, Value};

use super::controller::{Fleet, FleetWindows};
use super::crd::Rollout;
use super::plan::{CANARY, FleetView, STABLE};
use super::routes::{ready_addresses, route_name};
use crate::httpclient::{HttpClient, HttpRequest};
use crate::metrics::window::ServedCounts;
use crate::metrics::{FINE_LATENCY, VersionStats};

/// The label selector that finds the proxies' admin endpoints by default.
pub const DEFAULT_PROXY_SELECTOR: &str = "tidegate.dev/proxy-admin=true";
/// The EndpointSlice port a proxy serves /metrics on.
const ADMIN_PORT: &str = "admin";
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);

/// What one proxy reported of one version of one route.
#[derive(Debug, Clone, Default, PartialEq)]
struct VersionReport {
    /// Percent of the route's traffic this proxy sends to the version.
    weight: Option<f64>,
    active: u64,
    healthy_endpoints: u32,
    /// Responses since the proxy started, by status class.
    by_class: [u64; 5],
    /// Error responses since the proxy started, by code.
    by_code: BTreeMap<u16, u64>,
    /// Cumulative latency histogram: (upper bound in µs, responses at or under it), the fine
    /// one when the proxy serves it.
    latency: Vec<(u64, u64)>,
}

/// One proxy's scrape: by (route, version).
type ProxyReport = HashMap<(String, String), VersionReport>;

#[derive(Default)]
struct FleetState {
    /// The last scrape of every proxy that answered.
    proxies: BTreeMap<SocketAddr, ProxyReport>,
    /// Proxies found but not scraped at the last look: their weights are unknown.
    unreachable: usize,
    /// The fleet's summed counts, by (route, version).
    stats: HashMap<(String, String), Arc<VersionStats>>,
    /// By route: the canary weight every proxy serves (None while they differ), and since
    /// when (unix ms).
    applied: HashMap<String, (Option<u16>, u64)>,
}

/// The proxies found by a label selector, scraped every second.
pub struct ProxyFleet {
    client: Client,
    namespace: Option<String>,
    selector: String,
    http: HttpClient,
    state: Mutex<FleetState>,
}

impl ProxyFleet {
    pub fn new(client: Client, namespace: Option<String>, selector: &str) -> Arc<ProxyFleet> {
        Arc::new(ProxyFleet {
            client,
            namespace,
            selector: selector.to_string(),
            http: HttpClient::new(),
            state: Mutex::default(),
        })
    }

    /// Scrapes every second until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SCRAPE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.scrape().await;
        }
    }

    /// One look at the fleet: finds the proxies, scrapes them, adds what they served since
    /// the last look to the fleet's counts.
    pub async fn scrape(&self) {
        let addrs = match self.find().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the proxies' EndpointSlices");
                return;
            }
        };
        let scrapes = futures::future::join_all(addrs.iter().map(|a| self.scrape_one(*a))).await;
        let now = crate::clock::now_ms();
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut proxies = BTreeMap::new();
        let mut unreachable = 0;
        for (addr, report) in addrs.into_iter().zip(scrapes) {
            let Some(report) = report else {
                unreachable += 1;
                continue;
            };
            if let Some(before) = state.proxies.get(&addr) {
                for (key, now_seen) in &report {
                    let before = before.get(key).cloned().unwrap_or_default();
                    let served = served_since(&before, now_seen);
                    if !served.is_empty() {
                        let stats = state.stats.entry(key.clone()).or_insert_with(|| {
                            Arc::new(VersionStats::new(
                                key.0.as_str().into(),
                                key.1.as_str().into(),
                            ))
                        });
                        stats.add_counts(now, &served);
                    }
                }
            }
            proxies.insert(addr, report);
        }
        state.proxies = proxies;
        state.unreachable = unreachable;
        let routes: std::collections::BTreeSet<String> = state
            .proxies
            .values()
            .flat_map(|p| p.keys().map(|(route, _)| route.clone()))
            .collect();
        let unix_now = crate::clock::unix_now_ms();
        for route in routes {
            let weight = view(&state.proxies, unreachable, &route).applied_weight;
            let entry = state.applied.entry(route).or_insert((weight, unix_now));
            if entry.0 != weight {
                *entry = (weight, unix_now);
            }
        }
    }

    /// The admin addresses of the ready proxies.
    async fn find(&self) -> Result<Vec<SocketAddr>, kube::Error> {
        let api: Api<EndpointSlice> = match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let slices = api
            .list(&ListParams::default().labels(&self.selector))
            .await?;
        let mut addrs: Vec<SocketAddr> = slices
            .items
            .iter()
            .flat_map(|s| ready_addresses(s, Some(ADMIN_PORT)))
            .collect();
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }

    async fn scrape_one(&self, addr: SocketAddr) -> Option<ProxyReport> {
        let url = format!("http://{addr}/metrics?latency=fine");
        let req = HttpRequest::get(url).timeout(SCRAPE_TIMEOUT);
        match self.http.send(req).await.and_then(|r| r.error_for_status()) {
            Ok(r) => parse_report(&String::from_utf8_lossy(&r.body)),
            Err(e) => {
                tracing::debug!(proxy = %addr, error = %e, "proxy not scraped");
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Fleet for ProxyFleet {
    fn observe(&self, rollout: &Rollout) -> FleetView {
        let route = route_name(rollout);
        let state = self.lock();
        view(&state.proxies, state.unreachable, &route)
    }

    fn windows(&self, rollout: &Rollout) -> Option<FleetWindows> {
        let route = route_name(rollout);
        let mut state = self.lock();
        let mut stats = |version: &str| {
            state
                .stats
                .entry((route.clone(), version.to_string()))
                .or_insert_with(|| {
                    Arc::new(VersionStats::new(route.as_str().into(), version.into()))
                })
                .clone()
        };
        let (canary, stable) = (stats(CANARY), stats(STABLE));
        let applied_since = state.applied.get(&route).map_or(0, |(_, since)| *since);
        Some(FleetWindows {
            canary,
            stable,
            applied_since,
        })
    }
}

/// What the fleet reports of one route. Only the proxies that route it count: a sidecar
/// fleet limited to its own namespace says nothing of another namespace's rollouts.
fn view(proxies: &BTreeMap<SocketAddr, ProxyReport>, unreachable: usize, route: &str) -> FleetView {
    let get = |p: &ProxyReport, v: &str| p.get(&(route.to_string(), v.to_string())).cloned();
    let routing: Vec<&ProxyReport> = proxies
        .values()
        .filter(|p| get(p, CANARY).is_some_and(|r| r.weight.is_some()))
        .collect();
    let weights: Vec<Option<u16>> = routing
        .iter()
        .map(|p| get(p, CANARY)?.weight.map(|w| (w * 100.0).round() as u16))
        .collect();
    let applied_weight = match weights.first() {
        Some(first) if unreachable == 0 && weights.iter().all(|w| w == first) => *first,
        _ => None,
    };
    let mut active = BTreeMap::new();
    for v in [STABLE, CANARY] {
        let n = proxies
            .values()
            .filter_map(|p| get(p, v))
            .map(|r| r.active)
            .sum();
        active.insert(v.to_string(), n);
    }
    let stable_endpoints = routing
        .iter()
        .map(|p| get(p, STABLE).map_or(0, |r| r.healthy_endpoints))
        .min()
        .unwrap_or(0);
    FleetView {
        applied_weight,
        active,
        stable_endpoints,
    }
}

/// Parses a proxy's /metrics into what the fleet keeps; None when it is not Prometheus text.
fn parse_report(text: &str) -> Option<ProxyReport> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
    let mut report = ProxyReport::new();
    let mut fine = HashMap::new();
    for s in scrape.samples {
        let (Some(route), Some(version)) = (s.labels.get("route"), s.labels.get("version")) else {
            continue;
        };
        let r = report
            .entry((route.to_string(), version.to_string()))
            .or_default();
        match (s.metric.as_str(), &s.value) {
            ("tidegate_route_weight_percent", Value::Gauge(w)) => r.weight = Some(*w),
            ("tidegate_version_active_requests", Value::Gauge(n)) => r.active = *n as u64,
            ("tidegate_endpoint_healthy", Value::Gauge(h)) if *h >= 1.0 => r.healthy_endpoints += 1,
            ("tidegate_requests_total", Value::Counter(n)) => {
                let class = s
                    .labels
                    .get("class")
                    .and_then(|c| c[..1].parse::<usize>().ok());
                if let Some(i) = class.filter(|c| (1..=5).contains(c)) {
                    r.by_class[i - 1] = *n as u64;
                }
            }
            ("tidegate_responses_by_code_total", Value::Counter(n)) => {
                if let Some(code) = s.labels.get("code").and_then(|c| c.parse().ok()) {
                    r.by_code.insert(code, *n as u64);
                }
            }
            ("tidegate_request_duration_seconds", Value::Histogram(buckets)) => {
                r.latency = cumulative_micros(buckets);
            }
            (FINE_LATENCY, Value::Histogram(buckets)) => {
                fine.insert(
                    (route.to_string(), version.to_string()),
                    cumulative_micros(buckets),
                );
            }
            _ => {}
        }
    }
    for (key, latency) in fine {
        report.entry(key).or_default().latency = latency;
    }
    Some(report)
}

/// A histogram's buckets as (upper bound in µs, cumulative count); +Inf is `u64::MAX`.
fn cumulative_micros(buckets: &[prometheus_parse::HistogramCount]) -> Vec<(u64, u64)> {
    buckets
        .iter()
        .map(|b| {
            let micros = if b.less_than.is_finite() {
                (b.less_than * 1e6).round() as u64
            } else {
                u64::MAX
            };
            (micros, b.count as u64)
        })
        .collect()
}

/// What a proxy served between two scrapes: responses by class and by code, and latencies
/// as (upper bound in µs, responses) for the buckets that grew. A proxy that restarted
/// counts from 0.
fn served_since(before: &VersionReport, now: &VersionReport) -> ServedCounts {
    let restarted = now
        .by_class
        .iter()
        .zip(&before.by_class)
        .any(|(n, b)| n < b);
    let base = |b: u64| if restarted { 0 } else { b };
    let by_class =
        std::array::from_fn(|i| now.by_class[i] - base(before.by_class[i]).min(now.by_class[i]));
    let by_code = now
        .by_code
        .iter()
        .map(|(code, n)| {
            let was = before.by_code.get(code).map_or(0, |b| base(*b));
            (*code, n - was.min(*n))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    // The fine histogram lists only the buckets that counted something: a bound missing
    // before held what the nearest bound below it held.
    let cumulative_before = |bound: u64| {
        before
            .latency
            .iter()
            .take_while(|(b, _)| *b <= bound)
            .last()
            .map_or(0, |(_, n)| base(*n))
    };
    let mut latencies = Vec::new();
    let mut below = 0;
    for &(bound, cumulative) in &now.latency {
        let grew = cumulative.saturating_sub(cumulative_before(bound));
        let n = grew.saturating_sub(below);
        below = grew;
        if n > 0 {
            // The +Inf bucket: slower than the largest bound; counted just past it.
            let micros = if bound == u64::MAX {
                now.latency
                    .iter()
                    .rev()
                    .nth(1)
                    .map_or(u64::MAX / 2, |(b, _)| b * 2)
            } else {
                bound
            };
            latencies.push((micros, n));
        }
    }
    ServedCounts {
        by_class,
        by_code,
        latencies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE tidegate_requests_total counter
tidegate_requests_total{route="shop.web",version="canary",class="2xx"} 90
tidegate_requests_total{route="shop.web",version="canary",class="5xx"} 10
# TYPE tidegate_request_duration_seconds histogram
tidegate_request_duration_seconds_bucket{route="shop.web",version="canary",le="0.001"} 50
tidegate_request_duration_seconds_bucket{route="shop.web",version="canary",le="0.01"} 95
tidegate_request_duration_seconds_bucket{route="shop.web",version="canary",le="+Inf"} 100
tidegate_request_duration_seconds_sum{route="shop.web",version="canary"} 0.3
tidegate_request_duration_seconds_count{route="shop.web",version="canary"} 100
# TYPE tidegate_version_active_requests gauge
tidegate_version_active_requests{route="shop.web",version="stable"} 3
# TYPE tidegate_route_weight_percent gauge
tidegate_route_weight_percent{route="shop.web",version="stable"} 75
tidegate_route_weight_percent{route="shop.web",version="canary"} 25
# TYPE tidegate_endpoint_healthy gauge
tidegate_endpoint_healthy{route="shop.web",version="stable",endpoint="10.0.0.1:80"} 1
tidegate_endpoint_healthy{route="shop.web",version="stable",endpoint="10.0.0.2:80"} 0
"#;

    fn key(v: &str) -> (String, String) {
        ("shop.web".into(), v.into())
    }

    #[test]
    fn a_scrape_reads_weights_in_flight_endpoints_and_counts() {
        let r = parse_report(METRICS).unwrap();
        let canary = &r[&key("canary")];
        assert_eq!(canary.weight, Some(25.0));
        assert_eq!(canary.by_class, [0, 90, 0, 0, 10]);
        assert_eq!(canary.latency, [(1000, 50), (10_000, 95), (u64::MAX, 100)]);
        assert_eq!(r[&key("stable")].active, 3);
        assert_eq!(r[&key("stable")].healthy_endpoints, 1);
    }

    #[test]
    fn the_fleet_applied_a_weight_only_when_every_proxy_serves_it() {
        let one = parse_report(METRICS).unwrap();
        let mut other = one.clone();
        let mut proxies = BTreeMap::new();
        proxies.insert("10.1.0.1:9901".parse().unwrap(), one.clone());
        proxies.insert("10.1.0.2:9901".parse().unwrap(), other.clone());
        let v = view(&proxies, 0, "shop.web");
        assert_eq!(v.applied_weight, Some(2500));
        assert_eq!(v.active["stable"], 6);
        assert_eq!(v.stable_endpoints, 1);
        // A proxy still at the old weight, or one that did not answer: not applied yet.
        assert_eq!(view(&proxies, 1, "shop.web").applied_weight, None);
        other.get_mut(&key("canary")).unwrap().weight = Some(10.0);
        proxies.insert("10.1.0.2:9901".parse().unwrap(), other);
        assert_eq!(view(&proxies, 0, "shop.web").applied_weight, None);
        // No proxy at all: nothing is applied.
        assert_eq!(view(&BTreeMap::new(), 0, "shop.web").applied_weight, None);
        // A proxy that does not route this rollout (a sidecar of another namespace) has no say.
        let mut proxies = BTreeMap::new();
        proxies.insert("10.1.0.1:9901".parse().unwrap(), one);
        proxies.insert("10.2.0.1:9901".parse().unwrap(), ProxyReport::new());
        assert_eq!(view(&proxies, 0, "shop.web").applied_weight, Some(2500));
        assert_eq!(view(&proxies, 0, "shop.web").stable_endpoints, 1);
    }

    #[test]
    fn what_was_served_between_scrapes_is_the_growth_of_the_counters() {
        let before = parse_report(METRICS).unwrap()[&key("canary")].clone();
        let mut now = before.clone();
        now.by_class = [0, 100, 0, 0, 12];
        now.latency = vec![(1000, 55), (10_000, 106), (u64::MAX, 112)];
        now.by_code.insert(503, 2);
        let served = served_since(&before, &now);
        assert_eq!(served.by_class, [0, 10, 0, 0, 2]);
        assert_eq!(served.by_code, [(503, 2)]);
        assert_eq!(served.latencies, [(1000, 5), (10_000, 6), (20_000, 1)]);
        // Counters that went down: the proxy restarted, and everything it counted is new.
        let restarted = VersionReport {
            by_class: [0, 4, 0, 0, 0],
            latency: vec![(1000, 4), (10_000, 4), (u64::MAX, 4)],
            ..Default::default()
        };
        let served = served_since(&before, &restarted);
        assert_eq!(served.by_class, [0, 4, 0, 0, 0]);
        assert_eq!(served.latencies, [(1000, 4)]);
    }

    #[test]
    fn the_fleet_counts_codes_and_latencies_as_finely_as_the_proxy_that_served_them() {
        let proxy = crate::metrics::Metrics::default();
        let served = proxy.version("shop.web", "canary");
        let start = 5_000;
        for i in 0..1000u64 {
            let status = if i % 50 == 0 { 503 } else { 200 };
            served.record_at(status, Duration::from_micros(900 + i * 7), start);
        }
        let scrape = |m: &crate::metrics::Metrics| {
            let mut out = String::new();
            m.render(&mut out, true);
            parse_report(&out).unwrap()[&key("canary")].clone()
        };
        let first = scrape(&proxy);
        served.record_at(429, Duration::from_micros(40_000), start);
        let second = scrape(&proxy);

        let fleet = VersionStats::new("shop.web".into(), "canary".into());
        fleet.add_counts(start, &served_since(&VersionReport::default(), &first));
        fleet.add_counts(start, &served_since(&first, &second));
        let (theirs, ours) = (
            served.window(start, Duration::from_secs(1), 0),
            fleet.window(start, Duration::from_secs(1), 0),
        );
        use crate::metrics::window::StatusCounts;
        for code in [503, 429, 500] {
            assert_eq!(ours.with_code(code), theirs.with_code(code), "{code}");
        }
        assert_eq!(ours.with_code(503), 20);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(ours.latency_quantile(q), theirs.latency_quantile(q), "q{q}");
        }
    }
}
