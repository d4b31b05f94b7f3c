//! When an HTTP/1.1 client connection sits idle: the slow-header and keep-alive guard, kept
//! with a few atomics per request instead of a timer per request head.
//!
//! A request is busy from its head until its response body has been sent. A connection with
//! no busy request must bring a complete request head within the header timeout of going
//! idle (or of opening), or it is closed. The connection's one timer is looked at only when
//! it fires, and is then moved to the new deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::clock;

/// The idleness of one client connection.
pub struct IdleState {
    busy: AtomicU32,
    /// `clock::now_ms` when the last busy request ended, or when the connection opened.
    idle_since_ms: AtomicU64,
    got_request: AtomicBool,
    http2: AtomicBool,
}

/// What the connection's timer finds when it fires.
#[derive(Debug, PartialEq, Eq)]
pub enum IdleCheck {
    /// Look again at this `clock::now_ms` time.
    LookAgainAt(u64),
    /// No request head within the timeout: close the connection.
    TimedOut,
    /// HTTP/2 streams have no head to wait for between requests: the guard stops.
    Http2,
}

impl IdleState {
    pub fn new(now_ms: u64) -> IdleState {
        IdleState {
            busy: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(now_ms),
            got_request: AtomicBool::new(false),
            http2: AtomicBool::new(false),
        }
    }

    /// Whether any request head has arrived on this connection.
    pub fn got_request(&self) -> bool {
        self.got_request.load(Relaxed)
    }

    pub fn check(&self, now_ms: u64, timeout_ms: u64) -> IdleCheck {
        if self.http2.load(Relaxed) {
            return IdleCheck::Http2;
        }
        if self.busy.load(Relaxed) > 0 {
            return IdleCheck::LookAgainAt(now_ms + timeout_ms);
        }
        let deadline = self.idle_since_ms.load(Relaxed) + timeout_ms;
        if now_ms >= deadline {
            IdleCheck::TimedOut
        } else {
            IdleCheck::LookAgainAt(deadline)
        }
    }
}

/// Holds its connection busy from a request head until the response has been sent.
pub struct BusyGuard(Arc<IdleState>);

impl BusyGuard {
    pub fn begin(idle: &Arc<IdleState>, http2: bool) -> BusyGuard {
        idle.busy.fetch_add(1, Relaxed);
        idle.got_request.store(true, Relaxed);
        if http2 {
            idle.http2.store(true, Relaxed);
        }
        BusyGuard(idle.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let idle = &self.0;
        // The time goes in before the count drops, so a check that sees no busy request
        // also sees when the last one ended.
        idle.idle_since_ms.store(clock::now_ms(), Relaxed);
        idle.busy.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_times_out_only_while_idle() {
        let now = clock::now_ms();
        let conn = Arc::new(IdleState::new(now));
        assert_eq!(
            conn.check(now + 100, 500),
            IdleCheck::LookAgainAt(now + 500)
        );
        assert_eq!(conn.check(now + 500, 500), IdleCheck::TimedOut);
        assert!(!conn.got_request());

        let busy = BusyGuard::begin(&conn, false);
        assert!(conn.got_request());
        // A slow response keeps its connection open however long it takes.
        assert_eq!(
            conn.check(now + 10_000, 500),
            IdleCheck::LookAgainAt(now + 10_500)
        );
        drop(busy);
        let idle_since = conn.idle_since_ms.load(Relaxed);
        assert!(idle_since >= now);
        assert_eq!(
            conn.check(idle_since + 499, 500),
            IdleCheck::LookAgainAt(idle_since + 500)
        );
        assert_eq!(conn.check(idle_since + 500, 500), IdleCheck::TimedOut);

        drop(BusyGuard::begin(&conn, true));
        assert_eq!(conn.check(idle_since + 10_000, 500), IdleCheck::Http2);
    }
}
