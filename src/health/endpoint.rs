//! One upstream endpoint's live state (in-flight count, passive ejection, active verdict), shared across route tables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;

use crate::clock;

/// When consecutive failures take an endpoint out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassivePolicy {
    /// 0 turns passive ejection off.
    pub consecutive_failures: u32,
    pub ejection_ms: u64,
    pub max_ejection_ms: u64,
}

impl PassivePolicy {
    pub fn new(consecutive_failures: u32, ejection: Duration, max_ejection: Duration) -> Self {
        PassivePolicy {
            consecutive_failures,
            ejection_ms: clock::millis(ejection),
            max_ejection_ms: clock::millis(max_ejection),
        }
    }
}

pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port`, ready to put in an upstream URI.
    pub authority: Authority,
    in_flight: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Ejections in a row without a success between them; doubles the next ejection.
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Set by active health checks; passive ejection is separate.
    active_down: AtomicBool,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Self {
        let authority = Authority::try_from(addr.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("0.0.0.0:0"));
        Endpoint {
            addr,
            authority,
            in_flight: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            active_down: AtomicBool::new(false),
        }
    }

    /// Neither ejected by passive checks nor marked down by active ones.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        !self.active_down.load(Relaxed) && self.ejected_until_ms.load(Relaxed) <= now_ms
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request as in flight until the guard drops. The guard borrows: a request
    /// holds its endpoint anyway, and a clone would be two more atomic operations.
    pub fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self)
    }

    /// A response that was not a server error: the endpoint works.
    pub fn record_success(&self) {
        // Only write when there is something to clear: keeps the cache line shared on the hot path.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.ejections.load(Relaxed) != 0 {
            self.ejections.store(0, Relaxed);
        }
    }

    /// A failed connect or a 5xx. Returns true when this failure ejected the endpoint.
    pub fn record_failure(&self, policy: &PassivePolicy, now_ms: u64) -> bool {
        if policy.consecutive_failures == 0 {
            return false;
        }
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n < policy.consecutive_failures {
            return false;
        }
        self.consecutive_failures.store(0, Relaxed);
        let prior = self.ejections.fetch_add(1, Relaxed).min(20);
        let ms = policy
            .ejection_ms
            .saturating_mul(1 << prior)
            .min(policy.max_ejection_ms);
        self.ejected_until_ms.store(now_ms + ms, Relaxed);
        tracing::warn!(endpoint = %self.addr, failures = n, ejected_for_ms = ms, "endpoint ejected after consecutive failures");
        true
    }

    /// The active checker's verdict.
    pub fn set_active_down(&self, down: bool) {
        self.active_down.store(down, Relaxed);
    }

    pub fn is_active_down(&self) -> bool {
        self.active_down.load(Relaxed)
    }
}

/// A request in flight on an endpoint; decrements the count on drop.
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Hands out one `Endpoint` per address, so health and load survive route table rebuilds.
#[derive(Default)]
pub struct EndpointRegistry {
    map: Mutex<HashMap<SocketAddr, Weak<Endpoint>>>,
}

impl EndpointRegistry {
    pub fn get(&self, addr: SocketAddr) -> Arc<Endpoint> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get(&addr).and_then(Weak::upgrade) {
            return e;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let e = Arc::new(Endpoint::new(addr));
        map.insert(addr, Arc::downgrade(&e));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_consecutive_failures_with_doubling_backoff() {
        let policy = PassivePolicy::new(3, Duration::from_secs(10), Duration::from_secs(25));
        let e = Endpoint::new("127.0.0.1:1".parse().unwrap());
        assert!(!e.record_failure(&policy, 0));
        e.record_success();
        assert!(!e.record_failure(&policy, 0));
        assert!(!e.record_failure(&policy, 0));
        assert!(e.record_failure(&policy, 1_000));
        assert!(!e.is_healthy(10_999));
        assert!(e.is_healthy(11_000));
        for _ in 0..3 {
            e.record_failure(&policy, 11_000);
        }
        assert!(!e.is_healthy(30_999), "second ejection doubles to 20 s");
        assert!(e.is_healthy(31_000));
        for _ in 0..3 {
            e.record_failure(&policy, 31_000);
        }
        assert!(e.is_healthy(56_000), "third ejection is capped at 25 s");
    }

    #[test]
    fn registry_shares_state_by_address() {
        let r = EndpointRegistry::default();
        let a = r.get("127.0.0.1:1".parse().unwrap());
        a.set_active_down(true);
        assert!(r.get("127.0.0.1:1".parse().unwrap()).is_active_down());
        assert!(!r.get("127.0.0.1:2".parse().unwrap()).is_active_down());
    }
}
