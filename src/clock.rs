//! A monotonic millisecond clock counted from process start, cheap to store in atomics.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

fn start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    Instant::now()
        .saturating_duration_since(start())
        .as_millis() as u64
}

/// Milliseconds since process start at `at`.
pub fn ms_at(at: Instant) -> u64 {
    at.saturating_duration_since(start()).as_millis() as u64
}

/// Converts a duration to whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}
