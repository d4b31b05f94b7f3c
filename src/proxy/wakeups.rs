//! What wakes a worker's own HTTP/1.1 connections: its stop signal, and each connection's
//! deadline (header, idle or response timeout). Each connection's waker and deadline are kept
//! once, in a slab, and one sweep per worker wakes those past their deadline: an idle
//! connection holds no timer of its own, and a request registers none.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use slab::Slab;

use crate::clock;

/// Sweeps are at least this far apart: deadlines close together are handled in one.
const SWEEP_GAP_MS: u64 = 10;

#[derive(Default)]
pub(super) struct Wakeups {
    stopping: AtomicBool,
    state: Mutex<State>,
}

struct State {
    /// Each waiting connection's waker and deadline (process milliseconds; `u64::MAX` for
    /// none, or once woken for it).
    waiting: Slab<(Waker, u64)>,
    /// When the sweep runs next (`u64::MAX`: no deadline to watch), and its waker while it
    /// waits, woken when a connection's deadline comes before that.
    sweep_at: u64,
    sweeper: Option<Waker>,
}

/// Where a connection's waker is kept; given back with `Wakeups::forget`. Eight bytes, and
/// it is part of every idle connection's task: a few more would move the task into the next
/// 128-byte size of tokio's cells.
#[derive(Default)]
pub(super) struct WakeKey(Option<u32>);

/// How far the kernel's coarse clock may lag the precise one, in `clock`'s milliseconds: a
/// tick (10 ms at most: HZ >= 100) and a millisecond between the two clocks' zeros.
const COARSE_LAG_MS: u64 = 20;

/// What ended a connection's wait.
#[derive(Debug, PartialEq)]
pub(super) enum Wake {
    /// The worker began to stop.
    Stopped,
    /// The deadline passed.
    Expired,
}

impl Wakeups {
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sets the stop signal and wakes every connection that waits.
    pub fn stop(&self) {
        // Set before the wake-ups: a connection registering meanwhile sees it in `poll`.
        self.stopping.store(true, Ordering::SeqCst);
        for (_, (waker, _)) in self.lock().waiting.iter() {
            waker.wake_by_ref();
        }
    }

    /// Ready once `deadline_ms` has passed or, if `until_stop`, the worker stops; until then
    /// the task is woken when either happens.
    pub fn poll(
        &self,
        key: &mut WakeKey,
        deadline_ms: u64,
        until_stop: bool,
        cx: &Context<'_>,
    ) -> Poll<Wake> {
        if until_stop && self.is_stopping() {
            return Poll::Ready(Wake::Stopped);
        }
        // Far from the deadline by the coarse clock, a connection is not past it by the
        // precise one (which the sweep reads) either: the precise read is only paid near it.
        if clock::coarse_now_ms() + COARSE_LAG_MS >= deadline_ms && clock::now_ms() >= deadline_ms {
            return Poll::Ready(Wake::Expired);
        }
        {
            let mut state = self.lock();
            match key.0.and_then(|k| state.waiting.get_mut(k as usize)) {
                Some((waker, deadline)) => {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                    *deadline = deadline_ms;
                }
                None => {
                    key.0 = Some(state.waiting.insert((cx.waker().clone(), deadline_ms)) as u32)
                }
            }
            if deadline_ms < state.sweep_at {
                state.sweep_at = deadline_ms;
                if let Some(sweeper) = state.sweeper.take() {
                    sweeper.wake();
                }
            }
        }
        // Looked at again after the waker is in: `stop` may have run in between. A deadline
        // passing meanwhile is the sweep's to see.
        if until_stop && self.is_stopping() {
            Poll::Ready(Wake::Stopped)
        } else {
            Poll::Pending
        }
    }

    /// Drops the waker kept under `key`, if any.
    pub fn forget(&self, key: &mut WakeKey) {
        if let Some(k) = key.0.take() {
            self.lock().waiting.try_remove(k as usize);
        }
    }

    /// Wakes the connections past their deadline, as long as the worker runs.
    pub async fn sweep(&self) {
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        loop {
            let at = self.sweep_once(clock::now_ms());
            // Without a deadline to watch, a day: the next connection to wait wakes the sweep.
            let wait = Duration::from_millis(at.saturating_sub(clock::now_ms()).min(86_400_000));
            timer.as_mut().reset(tokio::time::Instant::now() + wait);
            SweepWait {
                wakeups: self,
                at,
                timer: timer.as_mut(),
            }
            .await;
        }
    }

    /// Wakes the connections due at `now_ms`; when the next sweep is to run.
    fn sweep_once(&self, now_ms: u64) -> u64 {
        let mut state = self.lock();
        let mut next = u64::MAX;
        for (_, (waker, deadline)) in state.waiting.iter_mut() {
            if *deadline <= now_ms {
                waker.wake_by_ref();
                // Woken once; a connection that waits again sets its deadline anew.
                *deadline = u64::MAX;
            } else {
                next = next.min(*deadline);
            }
        }
        state.sweep_at = next.max(now_ms + SWEEP_GAP_MS);
        state.sweep_at
    }

    /// `key`'s deadline, lent to a request in flight, which the stop signal does not end.
    pub fn deadline<'a>(&'a self, key: &'a mut WakeKey) -> Deadline<'a> {
        Deadline { wakeups: self, key }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for State {
    fn default() -> State {
        State {
            waiting: Slab::new(),
            sweep_at: u64::MAX,
            sweeper: None,
        }
    }
}

/// A connection's deadline, lent to its request in flight; see `Wakeups::deadline`.
pub struct Deadline<'a> {
    wakeups: &'a Wakeups,
    key: &'a mut WakeKey,
}

impl Deadline<'_> {
    /// Ready once `deadline_ms` has passed.
    pub fn poll(&mut self, deadline_ms: u64, cx: &Context<'_>) -> Poll<()> {
        self.wakeups
            .poll(self.key, deadline_ms, false, cx)
            .map(|_| ())
    }
}

/// The sweep's wait: until its timer fires or a connection's deadline comes before `at`.
struct SweepWait<'a, T> {
    wakeups: &'a Wakeups,
    at: u64,
    timer: Pin<&'a mut T>,
}

impl<T: Future> Future for SweepWait<'_, T> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut state = self.wakeups.lock();
        if state.sweep_at < self.at {
            return Poll::Ready(());
        }
        state.sweeper = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    struct Counter(AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(0.into()));
        (c.clone(), Waker::from(c))
    }

    fn woken(c: &Counter) -> usize {
        c.0.load(Ordering::SeqCst)
    }

    #[test]
    fn stopping_wakes_each_waiting_connection_once_and_forgets_closed_ones() {
        let wakeups = Wakeups::default();
        let ((a, wa), (b, wb)) = (counter(), counter());
        let (mut ka, mut kb) = (WakeKey::default(), WakeKey::default());
        let later = clock::now_ms() + 60_000;
        // Waiting again keeps one waker per connection.
        for _ in 0..3 {
            let poll = wakeups.poll(&mut ka, later, true, &Context::from_waker(&wa));
            assert!(poll.is_pending());
        }
        let poll = wakeups.poll(&mut kb, later, true, &Context::from_waker(&wb));
        assert!(poll.is_pending());
        wakeups.forget(&mut kb);
        assert_eq!(wakeups.lock().waiting.len(), 1);
        wakeups.stop();
        assert_eq!(woken(&a), 1);
        assert_eq!(woken(&b), 0, "a closed connection is not woken");
        let cx = Context::from_waker(&wa);
        assert_eq!(
            wakeups.poll(&mut ka, later, true, &cx),
            Poll::Ready(Wake::Stopped)
        );
        // A request in flight is not ended by the stop, only by its deadline.
        assert!(wakeups.poll(&mut ka, later, false, &cx).is_pending());
        wakeups.forget(&mut ka);
        assert_eq!(wakeups.lock().waiting.len(), 0);
    }

    #[test]
    fn the_sweep_wakes_connections_past_their_deadline_and_plans_the_next() {
        let wakeups = Wakeups::default();
        let ((soon, ws), (late, wl)) = (counter(), counter());
        let (mut ks, mut kl) = (WakeKey::default(), WakeKey::default());
        let now = clock::now_ms();
        let (soon_at, late_at) = (now + 1_000, now + 5_000);
        let _ = wakeups.poll(&mut ks, soon_at, true, &Context::from_waker(&ws));
        let _ = wakeups.poll(&mut kl, late_at, true, &Context::from_waker(&wl));
        assert_eq!(
            wakeups.lock().sweep_at,
            soon_at,
            "the earliest deadline is watched"
        );
        assert_eq!(wakeups.sweep_once(soon_at - 100), soon_at);
        assert_eq!((woken(&soon), woken(&late)), (0, 0));
        assert_eq!(wakeups.sweep_once(soon_at), late_at);
        assert_eq!((woken(&soon), woken(&late)), (1, 0));
        // Woken once only, though its task has not looked yet.
        assert_eq!(wakeups.sweep_once(soon_at + 1), late_at);
        assert_eq!(woken(&soon), 1);
        // Sweeps close together are merged.
        assert_eq!(wakeups.sweep_once(late_at - 2), late_at - 2 + SWEEP_GAP_MS);
        assert_eq!(wakeups.sweep_once(late_at), u64::MAX);
        assert_eq!(woken(&late), 1);
    }

    #[test]
    fn an_earlier_deadline_wakes_the_waiting_sweep() {
        let wakeups = Wakeups::default();
        let ((sweeper, ws), (_, wc)) = (counter(), counter());
        let mut wait = std::pin::pin!(SweepWait {
            wakeups: &wakeups,
            at: u64::MAX,
            timer: std::pin::pin!(std::future::pending::<()>()),
        });
        let mut cx = Context::from_waker(&ws);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        let mut key = WakeKey::default();
        let deadline = clock::now_ms() + 1_000;
        let _ = wakeups.poll(&mut key, deadline, true, &Context::from_waker(&wc));
        assert_eq!(woken(&sweeper), 1);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_passed_deadline_is_ready_at_once() {
        let wakeups = Wakeups::default();
        let (_, w) = counter();
        let mut key = WakeKey::default();
        let past = clock::now_ms().saturating_sub(1);
        let poll = wakeups.poll(&mut key, past, false, &Context::from_waker(&w));
        assert_eq!(poll, Poll::Ready(Wake::Expired));
    }
}
