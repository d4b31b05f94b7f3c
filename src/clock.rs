//! A monotonic millisecond clock counted from process start, cheap to store in atomics.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};

/// The process clock's zero, unix time (ms) then, and the monotonic clock (ms) then: read
/// together, once.
static START: OnceLock<(Instant, u64, u64)> = OnceLock::new();

fn started() -> &'static (Instant, u64, u64) {
    START.get_or_init(|| {
        let monotonic = timespec_ms(clock_gettime(ClockId::Monotonic));
        (Instant::now(), unix_now_ms(), monotonic)
    })
}

fn start() -> Instant {
    started().0
}

fn timespec_ms(t: rustix::time::Timespec) -> u64 {
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
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
    started().1
}

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    Instant::now()
        .saturating_duration_since(start())
        .as_millis() as u64
}

/// Milliseconds since the process started, by the kernel's coarse monotonic clock: as fresh
/// as its last tick (a few ms behind `now_ms` at most), at a fraction of a precise read's
/// cost. For deadlines and idle times on the request path; latencies use `Instant`.
pub fn coarse_now_ms() -> u64 {
    timespec_ms(clock_gettime(ClockId::MonotonicCoarse)).saturating_sub(started().2)
}

/// Milliseconds since process start at `at`.
pub fn ms_at(at: Instant) -> u64 {
    at.saturating_duration_since(start()).as_millis() as u64
}

/// Converts a duration to whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_counts_from_the_same_zero_and_never_runs_ahead() {
        let before = now_ms();
        // Longer than a kernel tick (at most 10 ms): the coarse clock must have moved past it.
        std::thread::sleep(Duration::from_millis(30));
        let coarse = coarse_now_ms();
        let after = now_ms();
        // Both are whole milliseconds from slightly different zeros: one apart at most.
        assert!(
            before < coarse,
            "coarse {coarse} ms, {before} ms read 30 ms earlier"
        );
        assert!(
            coarse <= after + 1,
            "coarse {coarse} ms ahead of {after} ms"
        );
    }
}
