//! Exact weighted selection: a precomputed smooth weighted round-robin cycle walked by one atomic counter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::units::{FULL_WEIGHT, WeightBps};

/// One cycle of smooth weighted round-robin over versions with the given weights (basis
/// points adding up to 10000), shortened by their greatest common divisor. Each version
/// appears exactly weight/gcd times per cycle, spread evenly; since the cycle length divides
/// 10000, any 10000 consecutive picks hold exactly `weight` picks of each version.
pub struct WeightSchedule {
    cycle: Box<[u8]>,
    next: AtomicU64,
}

impl WeightSchedule {
    /// `weights` must add up to 10000 and hold at most 255 entries (checked by the caller).
    pub fn new(weights: &[WeightBps]) -> WeightSchedule {
        debug_assert_eq!(
            weights.iter().map(|&w| u32::from(w)).sum::<u32>(),
            u32::from(FULL_WEIGHT)
        );
        let g = weights
            .iter()
            .fold(0u32, |g, &w| gcd(g, u32::from(w)))
            .max(1);
        let reduced: Vec<i64> = weights
            .iter()
            .map(|&w| i64::from(u32::from(w) / g))
            .collect();
        let total: i64 = reduced.iter().sum();
        let mut current = vec![0i64; reduced.len()];
        let mut cycle = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&reduced) {
                *c += w;
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
                .unwrap_or((0, &0));
            current[best] -= total;
            cycle.push(best as u8);
        }
        WeightSchedule {
            cycle: cycle.into_boxed_slice(),
            next: AtomicU64::new(0),
        }
    }

    /// Index of the version that takes the next request.
    #[inline]
    pub fn next(&self) -> usize {
        let n = self.next.fetch_add(1, Relaxed);
        usize::from(self.cycle[(n % self.cycle.len() as u64) as usize])
    }

    pub fn cycle_len(&self) -> usize {
        self.cycle.len()
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share_in_every_window(
        weights: &[WeightBps],
        window: usize,
        picks: usize,
    ) -> Vec<(usize, usize)> {
        let s = WeightSchedule::new(weights);
        let seq: Vec<usize> = (0..picks).map(|_| s.next()).collect();
        let mut worst = vec![(usize::MAX, 0usize); weights.len()];
        for start in (0..picks - window).step_by(37) {
            let mut counts = vec![0usize; weights.len()];
            for &v in &seq[start..start + window] {
                counts[v] += 1;
            }
            for (w, c) in worst.iter_mut().zip(counts) {
                w.0 = w.0.min(c);
                w.1 = w.1.max(c);
            }
        }
        worst
    }

    #[test]
    fn any_ten_thousand_consecutive_picks_are_exact() {
        for weights in [
            [9999u16, 1],
            [8750, 1250],
            [5000, 5000],
            [10000, 0],
            [6667, 3333],
        ] {
            let worst = share_in_every_window(&weights, 10_000, 30_000);
            for (i, &(min, max)) in worst.iter().enumerate() {
                assert_eq!(
                    (min, max),
                    (weights[i] as usize, weights[i] as usize),
                    "{weights:?}"
                );
            }
        }
    }

    #[test]
    fn picks_are_spread_not_bunched() {
        // 10 % canary: in any 100 consecutive picks the canary gets 10, never a burst.
        let worst = share_in_every_window(&[9000, 1000], 100, 5_000);
        assert_eq!(worst[1], (10, 10));
        let three = share_in_every_window(&[5000, 2500, 2500], 4, 1_000);
        assert_eq!(three, vec![(2, 2), (1, 1), (1, 1)]);
    }

    #[test]
    fn cycle_is_short_for_round_weights() {
        assert_eq!(WeightSchedule::new(&[5000, 5000]).cycle_len(), 2);
        assert_eq!(WeightSchedule::new(&[9000, 1000]).cycle_len(), 10);
        assert_eq!(WeightSchedule::new(&[9999, 1]).cycle_len(), 10_000);
    }
}
