//! Per-version sliding window: one-second slots over the last minute of requests, status classes and latency.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Slots kept; the window answers questions about at most this many past seconds.
pub const WINDOW_SECONDS: usize = 60;

/// Latency buckets: four per power of two of microseconds, so a quantile is within about 19 %.
const SUB_BUCKETS: usize = 4;
pub const LATENCY_BUCKETS: usize = 27 * SUB_BUCKETS;

/// Index of the latency bucket for `micros`.
pub fn latency_bucket(micros: u64) -> usize {
    if micros < 8 {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros() as usize;
    let sub = ((micros >> (octave - 2)) & 3) as usize;
    (octave * SUB_BUCKETS + sub).min(LATENCY_BUCKETS - 1)
}

/// Upper bound in microseconds of latency bucket `i`.
pub fn bucket_upper_micros(i: usize) -> u64 {
    if i < 8 {
        return i as u64;
    }
    let octave = i / SUB_BUCKETS;
    let sub = (i % SUB_BUCKETS) as u64;
    ((5 + sub) << (octave - 2)) - 1
}

/// Client and server error codes counted one by one (400-431 and 500-511); other codes
/// are counted by class only.
pub const DETAIL_CODES: usize = 44;

/// Index of `status` among the codes counted one by one.
pub fn detail_index(status: u16) -> Option<usize> {
    match status {
        400..=431 => Some(usize::from(status - 400)),
        500..=511 => Some(32 + usize::from(status - 500)),
        _ => None,
    }
}

/// The status code counted at `detail_index` `i`.
pub fn detail_code(i: usize) -> u16 {
    if i < 32 {
        400 + i as u16
    } else {
        500 + (i - 32) as u16
    }
}

/// Responses counted elsewhere (by the proxies of a fleet), added to a window as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServedCounts {
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    pub by_class: [u64; 5],
    /// (status code, responses) for the codes counted one by one.
    pub by_code: Vec<(u16, u64)>,
    /// (latency in µs, responses).
    pub latencies: Vec<(u64, u64)>,
}

impl ServedCounts {
    pub fn is_empty(&self) -> bool {
        self.by_class.iter().all(|n| *n == 0)
    }
}

struct Slot {
    /// The second (since process start) this slot currently counts.
    second: AtomicU64,
    by_class: [AtomicU64; 5],
    by_code: [AtomicU64; DETAIL_CODES],
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// Lock-free ring of one-second slots. A writer that finds a slot from an older second
/// claims it with a compare-and-swap and clears it; a few counts racing with the clear may
/// be lost, which is fine for judging rates.
pub struct Window {
    slots: Box<[Slot]>,
}

impl Default for Window {
    fn default() -> Self {
        let slots = (0..WINDOW_SECONDS)
            .map(|_| Slot {
                second: AtomicU64::new(u64::MAX),
                by_class: Default::default(),
                by_code: std::array::from_fn(|_| AtomicU64::new(0)),
                latency: std::array::from_fn(|_| AtomicU64::new(0)),
            })
            .collect();
        Window { slots }
    }
}

impl Window {
    /// Counts one response in the slot of `now_ms`.
    pub fn record(&self, now_ms: u64, status: u16, latency_micros: u64) {
        let slot = self.slot(now_ms);
        slot.by_class[class_index(status)].fetch_add(1, Relaxed);
        if let Some(i) = detail_index(status) {
            slot.by_code[i].fetch_add(1, Relaxed);
        }
        slot.latency[latency_bucket(latency_micros)].fetch_add(1, Relaxed);
    }

    /// Adds responses counted elsewhere (by the proxies of a fleet) to the slot of `now_ms`.
    pub fn add(&self, now_ms: u64, served: &ServedCounts) {
        let slot = self.slot(now_ms);
        for (c, n) in slot.by_class.iter().zip(&served.by_class) {
            c.fetch_add(*n, Relaxed);
        }
        for &(code, n) in &served.by_code {
            if let Some(i) = detail_index(code) {
                slot.by_code[i].fetch_add(n, Relaxed);
            }
        }
        for &(micros, n) in &served.latencies {
            slot.latency[latency_bucket(micros)].fetch_add(n, Relaxed);
        }
    }

    /// The slot of `now_ms`'s second, claimed and cleared when it still held an older one.
    fn slot(&self, now_ms: u64) -> &Slot {
        let second = now_ms / 1000;
        let slot = &self.slots[(second % WINDOW_SECONDS as u64) as usize];
        let seen = slot.second.load(Relaxed);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Relaxed, Relaxed)
                .is_ok()
        {
            for c in slot.by_class.iter().chain(&slot.by_code) {
                c.store(0, Relaxed);
            }
            for b in &slot.latency {
                b.store(0, Relaxed);
            }
        }
        slot
    }

    /// Sums the slots of the last `span` (whole seconds, at most a minute) ending at `now_ms`,
    /// the current, partly filled second included, leaving out every second that began before
    /// `since_ms` (what an earlier revision served).
    pub fn snapshot(&self, now_ms: u64, span: Duration, since_ms: u64) -> WindowSnapshot {
        let now_s = now_ms / 1000;
        let first_s = since_ms.div_ceil(1000);
        let seconds = (span.as_secs() as usize)
            .min((now_s + 1).saturating_sub(first_s) as usize)
            .clamp(1, WINDOW_SECONDS);
        let mut snap = WindowSnapshot {
            span: Duration::from_secs(seconds as u64),
            by_class: [0; 5],
            by_code: [0; DETAIL_CODES],
            latency: vec![0; LATENCY_BUCKETS],
        };
        for slot in self.slots.iter() {
            let s = slot.second.load(Relaxed);
            if s == u64::MAX || s > now_s || now_s - s >= seconds as u64 || s < first_s {
                continue;
            }
            for (acc, c) in snap.by_class.iter_mut().zip(&slot.by_class) {
                *acc += c.load(Relaxed);
            }
            for (acc, c) in snap.by_code.iter_mut().zip(&slot.by_code) {
                *acc += c.load(Relaxed);
            }
            for (acc, b) in snap.latency.iter_mut().zip(&slot.latency) {
                *acc += b.load(Relaxed);
            }
        }
        snap
    }
}

impl Window {
    /// What was counted in `second` (process clock), once it is over: all zeros when nothing
    /// was, None when its slot has been reused for a later second (more than a minute ago).
    pub fn second(&self, second: u64) -> Option<SecondCounts> {
        let slot = &self.slots[(second % WINDOW_SECONDS as u64) as usize];
        let held = slot.second.load(Relaxed);
        if held != second && held != u64::MAX && held > second {
            return None;
        }
        let mut counts = SecondCounts {
            second,
            by_class: [0; 5],
            by_code: [0; DETAIL_CODES],
            latency: [0; LATENCY_BUCKETS],
        };
        if held == second {
            load_into(&mut counts.by_class, &slot.by_class);
            load_into(&mut counts.by_code, &slot.by_code);
            load_into(&mut counts.latency, &slot.latency);
            // Cleared for a new second while we read: the counts are not this second's.
            if slot.second.load(Relaxed) != second {
                return None;
            }
        }
        Some(counts)
    }
}

fn load_into(out: &mut [u64], from: &[AtomicU64]) {
    for (o, c) in out.iter_mut().zip(from) {
        *o = c.load(Relaxed);
    }
}

/// Responses counted by status: what error rates are read from.
pub trait StatusCounts {
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    fn by_class(&self) -> &[u64; 5];
    /// Responses with status `code` (one of the codes counted one by one: 400-431, 500-511).
    fn with_code(&self, code: u16) -> u64;
}

impl StatusCounts for SecondCounts {
    fn by_class(&self) -> &[u64; 5] {
        &self.by_class
    }
    fn with_code(&self, code: u16) -> u64 {
        detail_index(code).map_or(0, |i| self.by_code[i])
    }
}

impl StatusCounts for WindowSnapshot {
    fn by_class(&self) -> &[u64; 5] {
        &self.by_class
    }
    fn with_code(&self, code: u16) -> u64 {
        detail_index(code).map_or(0, |i| self.by_code[i])
    }
}

/// What one version did in one second.
#[derive(Debug, Clone, PartialEq)]
pub struct SecondCounts {
    /// The second, on the process clock.
    pub second: u64,
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    pub by_class: [u64; 5],
    by_code: [u64; DETAIL_CODES],
    /// Responses by latency bucket (`latency_bucket`).
    pub latency: [u64; LATENCY_BUCKETS],
}

impl SecondCounts {
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }
}

fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// What one version did over a span of the window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSnapshot {
    pub span: Duration,
    /// Responses by status class: index 0 is 1xx, 4 is 5xx.
    pub by_class: [u64; 5],
    by_code: [u64; DETAIL_CODES],
    latency: Vec<u64>,
}

impl WindowSnapshot {
    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.by_class[4]
    }

    /// Share of 5xx responses, None with no requests.
    pub fn error_rate(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.server_errors() as f64 / n as f64)
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests() as f64 / self.span.as_secs_f64()
    }

    /// Latency at quantile `q` (0..=1), as the upper bound of its bucket; None with no requests.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_upper_micros(i)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_at_a_time() {
        let w = Window::default();
        w.record(7_100, 200, 10);
        w.record(7_900, 503, 1000);
        w.record(9_000, 200, 10);
        let s = w.second(7).expect("kept");
        assert_eq!((s.requests(), s.by_class[4], s.with_code(503)), (2, 1, 1));
        assert_eq!(s.latency[latency_bucket(1000)], 1);
        assert_eq!(w.second(8).expect("a quiet second").requests(), 0);
        // 60 s later slot 7 holds second 67: second 7 is gone, not reported as quiet.
        w.record(67_000, 200, 10);
        assert_eq!(w.second(7), None);
        assert_eq!(w.second(67).expect("kept").requests(), 1);
    }

    #[test]
    fn seconds_before_since_are_left_out() {
        let w = Window::default();
        // An earlier revision's errors, then the new one's successes from 12.3 s on.
        for t in [10_100, 11_200, 12_100] {
            w.record(t, 503, 10);
        }
        for t in [12_400, 13_100, 14_900] {
            w.record(t, 200, 10);
        }
        let s = w.snapshot(15_000, Duration::from_secs(10), 12_300);
        // The second that began at 12 s mixes both: left out with the rest before 12.3 s.
        assert_eq!((s.requests(), s.server_errors()), (2, 0));
        assert_eq!(s.span, Duration::from_secs(3), "13 s through 15 s");
        let s = w.snapshot(15_000, Duration::from_secs(10), 12_000);
        assert_eq!((s.requests(), s.server_errors()), (4, 1));
        assert_eq!(w.snapshot(15_000, Duration::from_secs(10), 0).requests(), 6);
    }

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        for micros in [
            1u64, 3, 5, 100, 999, 1000, 1001, 25_000, 1_000_000, 30_000_000,
        ] {
            let b = latency_bucket(micros);
            assert!(bucket_upper_micros(b) >= micros, "{micros} -> {b}");
            if b > 0 {
                assert!(bucket_upper_micros(b - 1) < micros, "{micros} -> {b}");
            }
            assert!(
                bucket_upper_micros(b) as f64 <= micros as f64 * 1.26 + 1.0,
                "{micros}"
            );
        }
    }

    #[test]
    fn rates_and_quantiles_over_the_span() {
        let w = Window::default();
        let t0 = 100_000;
        for i in 0..100 {
            let status = if i < 5 { 503 } else { 200 };
            w.record(t0 + i * 10, status, 1000 + i * 100);
        }
        let s = w.snapshot(t0 + 1500, Duration::from_secs(10), 0);
        assert_eq!(s.requests(), 100);
        assert_eq!(s.error_rate(), Some(0.05));
        let p99 = s.latency_quantile(0.99).unwrap().as_micros() as u64;
        assert!((10_000..=13_000).contains(&p99), "{p99}");
        let p50 = s.latency_quantile(0.5).unwrap().as_micros() as u64;
        assert!((5_900..=7_500).contains(&p50), "{p50}");
    }

    #[test]
    fn old_seconds_fall_out_and_reused_slots_start_empty() {
        let w = Window::default();
        w.record(5_000, 500, 10);
        assert_eq!(w.snapshot(6_000, Duration::from_secs(5), 0).requests(), 1);
        assert_eq!(w.snapshot(20_000, Duration::from_secs(5), 0).requests(), 0);
        // 65 s later the same slot is reused for a new second.
        w.record(65_000, 200, 10);
        let s = w.snapshot(65_500, Duration::from_secs(60), 0);
        assert_eq!(s.requests(), 1);
        assert_eq!(s.error_rate(), Some(0.0));
        assert_eq!(
            w.snapshot(65_500, Duration::from_secs(5), 0)
                .latency_quantile(0.5),
            Some(Duration::from_micros(11))
        );
    }
}
