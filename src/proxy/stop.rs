//! The worker's signal to stop as its own HTTP/1.1 connections wait on it: each connection's
//! waker is kept once, in a slab, instead of a waiter registered (and a future kept) for
//! every wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

#[derive(Default)]
pub(super) struct StopSignal {
    stopping: AtomicBool,
    wakers: Mutex<Slab<Waker>>,
}

/// Where a connection's waker is kept; given back with `StopSignal::forget`.
#[derive(Default)]
pub(super) struct StopKey(Option<u32>);

impl StopSignal {
    pub fn is_set(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sets the signal and wakes every connection that has waited on it.
    pub fn set(&self) {
        // Set before the wake-ups: a connection registering meanwhile sees it in `poll`.
        self.stopping.store(true, Ordering::SeqCst);
        for (_, waker) in self.lock().iter() {
            waker.wake_by_ref();
        }
    }

    /// Ready once the signal is set; until then the task is woken when it is.
    pub fn poll(&self, key: &mut StopKey, cx: &Context<'_>) -> Poll<()> {
        if self.is_set() {
            return Poll::Ready(());
        }
        {
            let mut wakers = self.lock();
            match key.0.and_then(|k| wakers.get_mut(k as usize)) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => *w = cx.waker().clone(),
                None => key.0 = Some(wakers.insert(cx.waker().clone()) as u32),
            }
        }
        // Looked at again after the waker is in: `set` may have run in between.
        if self.is_set() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Drops the waker kept under `key`, if any.
    pub fn forget(&self, key: &mut StopKey) {
        if let Some(k) = key.0.take() {
            self.lock().try_remove(k as usize);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_each_waiting_connection_once_and_forgets_closed_ones() {
        let signal = StopSignal::default();
        let (a, b) = (Arc::new(Counter(0.into())), Arc::new(Counter(0.into())));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let (mut ka, mut kb) = (StopKey::default(), StopKey::default());
        // Waiting again keeps one waker per connection.
        for _ in 0..3 {
            assert!(signal.poll(&mut ka, &Context::from_waker(&wa)).is_pending());
        }
        assert!(signal.poll(&mut kb, &Context::from_waker(&wb)).is_pending());
        signal.forget(&mut kb);
        assert_eq!(signal.lock().len(), 1);
        signal.set();
        assert_eq!(a.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            b.0.load(Ordering::SeqCst),
            0,
            "a closed connection is not woken"
        );
        assert!(signal.poll(&mut ka, &Context::from_waker(&wa)).is_ready());
        signal.forget(&mut ka);
        assert_eq!(signal.lock().len(), 0);
    }
}
