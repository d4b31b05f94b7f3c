//! Counters, latency histogram and sliding window of one version of one route.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::window::{
    DETAIL_CODES, LATENCY_BUCKETS, SecondCounts, ServedCounts, Window, WindowSnapshot,
    bucket_upper_micros, detail_code, detail_index, latency_bucket,
};
use crate::clock;

/// Prometheus histogram bucket bounds, in seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BOUNDS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Everything tidegate counts about one version of one route. Shared by every route table
/// that names this (route, version), so counts survive reloads and weight changes.
pub struct VersionStats {
    pub route: Arc<str>,
    pub version: Arc<str>,
    by_class: [AtomicU64; 5],
    /// Responses by the codes counted one by one (`detail_index`).
    by_code: [AtomicU64; DETAIL_CODES],
    /// Responses by the window's fine latency buckets (`latency_bucket`), for a controller
    /// that judges a fleet as finely as one proxy judges itself.
    latency_fine: [AtomicU64; LATENCY_BUCKETS],
    /// Non-cumulative bucket counts; the last one is +Inf.
    latency_buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_micros: AtomicU64,
    connect_errors: AtomicU64,
    /// Requests whose response is still streaming, plus open upgraded connections: what a
    /// drain waits for.
    active: AtomicU64,
    /// Bumped when the version is removed with tunnels still open: they close.
    closing: tokio::sync::watch::Sender<u64>,
    window: Window,
}

/// Counts one request (or tunnel) as active on its version until dropped.
pub struct ActiveGuard(Arc<VersionStats>);

impl ActiveGuard {
    pub fn stats(&self) -> &Arc<VersionStats> {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// A point-in-time copy of the counters, for rendering.
pub struct VersionTotals {
    pub by_class: [u64; 5],
    /// (status code, responses) for the codes counted one by one that occurred.
    pub by_code: Vec<(u16, u64)>,
    /// (upper bound in µs, responses) for the fine latency buckets that are not empty.
    pub latency_fine: Vec<(u64, u64)>,
    pub latency_buckets: [u64; LATENCY_BOUNDS.len() + 1],
    pub latency_sum: Duration,
    pub connect_errors: u64,
}

impl VersionStats {
    pub fn new(route: Arc<str>, version: Arc<str>) -> Self {
        VersionStats {
            route,
            version,
            by_class: Default::default(),
            by_code: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_fine: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_buckets: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            active: AtomicU64::new(0),
            closing: tokio::sync::watch::Sender::new(0),
            window: Window::default(),
        }
    }

    /// Counts one response (from the upstream, or tidegate's own 5xx on its behalf).
    pub fn record(&self, status: u16, latency: Duration) {
        self.record_at(status, latency, clock::now_ms());
    }

    /// `record` with the clock already read (milliseconds since start, `clock::ms_at`): the
    /// request path reads the clock as few times as it can.
    #[inline]
    pub fn record_at(&self, status: u16, latency: Duration, now_ms: u64) {
        let micros = latency.as_micros() as u64;
        self.by_class[usize::from(status / 100).clamp(1, 5) - 1].fetch_add(1, Relaxed);
        if let Some(i) = detail_index(status) {
            self.by_code[i].fetch_add(1, Relaxed);
        }
        self.latency_fine[latency_bucket(micros)].fetch_add(1, Relaxed);
        let b = BOUNDS_MICROS.partition_point(|&bound| bound < micros);
        self.latency_buckets[b].fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(micros, Relaxed);
        self.window.record(now_ms, status, micros);
    }

    /// Adds responses the proxies of a fleet counted (the controller sums their scrapes).
    pub fn add_counts(&self, now_ms: u64, served: &ServedCounts) {
        for (c, n) in self.by_class.iter().zip(&served.by_class) {
            c.fetch_add(*n, Relaxed);
        }
        self.window.add(now_ms, served);
    }

    /// Marks a request active until the guard drops (with its response body or tunnel).
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Relaxed);
        ActiveGuard(self.clone())
    }

    /// Resolves when the version is removed (see `close_tunnels`).
    pub fn removed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.changed().await;
        }
    }

    /// Ends the upgraded connections still open on this version: it has been removed after
    /// its drain timeout.
    pub fn close_tunnels(&self) {
        self.closing.send_modify(|n| *n += 1);
    }

    /// Requests streaming and tunnels open on this version now.
    pub fn active(&self) -> u64 {
        self.active.load(Relaxed)
    }

    pub fn record_connect_error(&self) {
        self.connect_errors.fetch_add(1, Relaxed);
    }

    /// The last `span` (up to a minute) before `now_ms` of this version's traffic, from
    /// `since_ms` on (process clock, `clock::now_ms`).
    pub fn window(&self, now_ms: u64, span: Duration, since_ms: u64) -> WindowSnapshot {
        self.window.snapshot(now_ms, span, since_ms)
    }

    /// What this version did in `second` (process clock), once that second is over; None
    /// once it has left the window.
    pub fn second(&self, second: u64) -> Option<SecondCounts> {
        self.window.second(second)
    }

    pub fn totals(&self) -> VersionTotals {
        VersionTotals {
            by_class: std::array::from_fn(|i| self.by_class[i].load(Relaxed)),
            by_code: nonzero(&self.by_code, detail_code),
            latency_fine: nonzero(&self.latency_fine, bucket_upper_micros),
            latency_buckets: std::array::from_fn(|i| self.latency_buckets[i].load(Relaxed)),
            latency_sum: Duration::from_micros(self.latency_sum_micros.load(Relaxed)),
            connect_errors: self.connect_errors.load(Relaxed),
        }
    }
}

/// (key of index, count) for the counters that are not 0.
fn nonzero<K>(counters: &[AtomicU64], key: impl Fn(usize) -> K) -> Vec<(K, u64)> {
    counters
        .iter()
        .enumerate()
        .map(|(i, c)| (key(i), c.load(Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
}
