//! Counts connections and upgraded tunnels so shutdown can wait for them to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct DrainTracker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    active: AtomicUsize,
    idle: Notify,
}

/// One connection or tunnel being tracked; leaving drops the count.
pub struct DrainGuard(Arc<Inner>);

impl DrainTracker {
    pub fn enter(&self) -> DrainGuard {
        self.arrive();
        DrainGuard(self.inner.clone())
    }

    /// Counts one in without a guard: the caller must `leave` once.
    pub(super) fn arrive(&self) {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn leave(&self) {
        self.inner.leave();
    }

    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Resolves once nothing is tracked.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Inner {
    fn leave(&self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.0.leave();
    }
}
