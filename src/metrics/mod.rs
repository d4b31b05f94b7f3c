//! Data-plane metrics: atomics on the request path, Prometheus text rendering, per-version windows.

mod exposition;
pub mod version;
pub mod window;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

pub use exposition::Family;
pub use version::{ActiveGuard, LATENCY_BOUNDS, VersionStats, VersionTotals};
pub use window::WindowSnapshot;

/// Why tidegate answered a request itself instead of relaying the upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NoRoute,
    NoHealthyUpstream,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamError,
    HeaderTooLarge,
    HeaderTimeout,
    BadRequest,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::NoRoute,
        ErrorKind::NoHealthyUpstream,
        ErrorKind::UpstreamUnreachable,
        ErrorKind::UpstreamTimeout,
        ErrorKind::UpstreamError,
        ErrorKind::HeaderTooLarge,
        ErrorKind::HeaderTimeout,
        ErrorKind::BadRequest,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NoRoute => "no_route",
            ErrorKind::NoHealthyUpstream => "no_healthy_upstream",
            ErrorKind::UpstreamUnreachable => "upstream_unreachable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::HeaderTooLarge => "header_too_large",
            ErrorKind::HeaderTimeout => "header_timeout",
            ErrorKind::BadRequest => "bad_request",
        }
    }
}

/// Outcome of a reload (of the config file or of TLS certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    Failure,
}

/// (route, version)
type VersionKey = (Arc<str>, Arc<str>);

/// All counters of one tidegate process.
#[derive(Default)]
pub struct Metrics {
    versions: Mutex<BTreeMap<VersionKey, Arc<VersionStats>>>,
    active_connections: AtomicI64,
    connections_total: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    config_reloads: [AtomicU64; 2],
    tls_reloads: [AtomicU64; 2],
}

impl Metrics {
    /// The stats of (route, version), created on first use and kept for the process lifetime
    /// so that counters stay monotonic across reloads.
    pub fn version(&self, route: &str, version: &str) -> Arc<VersionStats> {
        let mut map = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let (r, v): (Arc<str>, Arc<str>) = (route.into(), version.into());
        map.entry((r.clone(), v.clone()))
            .or_insert_with(|| Arc::new(VersionStats::new(r, v)))
            .clone()
    }

    /// A client connection opened; `connection_closed` must follow once.
    pub fn connection_opened(&self) {
        self.active_connections.fetch_add(1, Relaxed);
        self.connections_total.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.active_connections.fetch_sub(1, Relaxed);
    }

    pub fn active_connections(&self) -> i64 {
        self.active_connections.load(Relaxed)
    }

    pub fn count_error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind as usize].load(Relaxed)
    }

    pub fn count_config_reload(&self, result: ReloadResult) {
        self.config_reloads[result as usize].fetch_add(1, Relaxed);
    }

    pub fn count_tls_reload(&self, result: ReloadResult) {
        self.tls_reloads[result as usize].fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition of everything counted here. With `fine_latency`, also
    /// each version's latency in the analysis window's fine buckets (four per doubling),
    /// which a controller reads to judge a fleet as finely as a proxy judges itself; too
    /// many series for a dashboard, so only on request.
    pub fn render(&self, out: &mut String, fine_latency: bool) {
        let versions: Vec<Arc<VersionStats>> = {
            let map = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            map.values().cloned().collect()
        };
        let totals: Vec<_> = versions.iter().map(|v| (v, v.totals())).collect();
        fn labels(v: &VersionStats) -> [(&'static str, &str); 2] {
            [("route", &v.route), ("version", &v.version)]
        }

        let mut f = Family::new(
            out,
            "tidegate_requests_total",
            "counter",
            "Responses sent to clients, by route, version and status class.",
        );
        for (v, t) in &totals {
            for (i, n) in t.by_class.iter().enumerate() {
                let class = format!("{}xx", i + 1);
                let [route, version] = labels(v);
                f.sample(&[route, version, ("class", &class)], n);
            }
        }
        let mut f = Family::new(
            out,
            "tidegate_responses_by_code_total",
            "counter",
            "Error responses sent to clients (400-431, 500-511), by route, version and code.",
        );
        for (v, t) in &totals {
            for (code, n) in &t.by_code {
                let [route, version] = labels(v);
                f.sample(&[route, version, ("code", &code.to_string())], n);
            }
        }
        if fine_latency {
            let mut f = Family::new(
                out,
                FINE_LATENCY,
                "histogram",
                "Time to response headers in fine buckets (four per doubling), for the controller's judge.",
            );
            // Only the buckets that counted something: cumulative counts stay exact.
            for (v, t) in &totals {
                let mut cumulative = 0;
                let mut buckets: Vec<_> = t
                    .latency_fine
                    .iter()
                    .map(|(micros, n)| {
                        cumulative += n;
                        (Some(*micros as f64 / 1e6), cumulative)
                    })
                    .collect();
                buckets.push((None, cumulative));
                f.histogram(&labels(v), buckets, t.latency_sum.as_secs_f64());
            }
        }
        let mut f = Family::new(
            out,
            "tidegate_request_duration_seconds",
            "histogram",
            "Time from receiving a request to relaying the response headers.",
        );
        for (v, t) in &totals {
            let mut cumulative = 0;
            let buckets = t.latency_buckets.iter().enumerate().map(|(i, n)| {
                cumulative += n;
                (LATENCY_BOUNDS.get(i).copied(), cumulative)
            });
            f.histogram(&labels(v), buckets, t.latency_sum.as_secs_f64());
        }
        let mut f = Family::new(
            out,
            "tidegate_upstream_connect_errors_total",
            "counter",
            "Failed TCP connects to upstream endpoints.",
        );
        for (v, t) in &totals {
            f.sample(&labels(v), t.connect_errors);
        }
        let mut f = Family::new(
            out,
            "tidegate_version_active_requests",
            "gauge",
            "Requests streaming and upgraded connections open now, by version: what a drain waits for.",
        );
        for v in &versions {
            f.sample(&labels(v), v.active());
        }
        let mut f = Family::new(
            out,
            "tidegate_proxy_errors_total",
            "counter",
            "Requests tidegate answered itself, by cause.",
        );
        for kind in ErrorKind::ALL {
            f.sample(&[("kind", kind.label())], self.errors(kind));
        }
        Family::new(
            out,
            "tidegate_active_connections",
            "gauge",
            "Client connections open now.",
        )
        .sample(&[], self.active_connections());
        Family::new(
            out,
            "tidegate_connections_total",
            "counter",
            "Client connections accepted.",
        )
        .sample(&[], self.connections_total.load(Relaxed));
        for (name, help, counts) in [
            (
                "tidegate_config_reloads_total",
                "Config reloads, by result.",
                &self.config_reloads,
            ),
            (
                "tidegate_tls_reloads_total",
                "TLS certificate reloads, by result.",
                &self.tls_reloads,
            ),
        ] {
            let mut f = Family::new(out, name, "counter", help);
            for (i, result) in ["success", "failure"].iter().enumerate() {
                f.sample(&[("result", result)], counts[i].load(Relaxed));
            }
        }
    }
}

/// The histogram `render` adds on request (`fine_latency`).
pub const FINE_LATENCY: &str = "tidegate_request_duration_fine_seconds";
