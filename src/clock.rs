//! A monotonic millisecond clock counted from process start, cheap to store in atomics.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The process clock's zero, and unix time (ms) then: read together, once.
static START: OnceLock<(Instant, u64)> = OnceLock::new();

fn start() -> Instant {
    START.get_or_init(|| (Instant::now(), unix_now_ms())).0
}

/// Unix milliseconds now (wall clock).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix milliseconds at the process clock's zero: process time plus this is unix time, with
/// one fixed offset for the whole process (wall clock steps after start do not move it).
pub fn unix_offset_ms() -> u64 {
    start();
    START.get().map_or(0, |s| s.1)
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
