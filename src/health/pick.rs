//! Least-loaded endpoint choice within a version: power of two random choices on in-flight requests.

use std::sync::Arc;

use super::Endpoint;

/// Picks a healthy endpoint, preferring the less loaded of two random ones; None when none is healthy.
pub fn pick_endpoint(endpoints: &[Arc<Endpoint>], now_ms: u64) -> Option<&Arc<Endpoint>> {
    match endpoints.len() {
        0 => None,
        1 => endpoints.first().filter(|e| e.is_healthy(now_ms)),
        n => {
            let i = fastrand::usize(..n);
            let j = (i + 1 + fastrand::usize(..n - 1)) % n;
            let (a, b) = (&endpoints[i], &endpoints[j]);
            match (a.is_healthy(now_ms), b.is_healthy(now_ms)) {
                (true, true) => Some(if b.in_flight() < a.in_flight() { b } else { a }),
                (true, false) => Some(a),
                (false, true) => Some(b),
                (false, false) => endpoints
                    .iter()
                    .filter(|e| e.is_healthy(now_ms))
                    .min_by_key(|e| e.in_flight()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(([127, 0, 0, 1], 1000 + i).into())))
            .collect()
    }

    #[test]
    fn skips_unhealthy_and_returns_none_when_all_are_down() {
        let eps = endpoints(3);
        eps[0].set_active_down(true);
        eps[2].set_active_down(true);
        for _ in 0..50 {
            assert_eq!(pick_endpoint(&eps, 0).unwrap().addr.port(), 1001);
        }
        eps[1].set_active_down(true);
        assert!(pick_endpoint(&eps, 0).is_none());
    }

    #[test]
    fn prefers_the_less_loaded_endpoint() {
        let eps = endpoints(2);
        let _busy: Vec<_> = (0..5).map(|_| eps[0].begin()).collect();
        for _ in 0..50 {
            assert_eq!(pick_endpoint(&eps, 0).unwrap().addr.port(), 1001);
        }
    }
}
