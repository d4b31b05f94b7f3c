//! The upstream's response body, relayed as it streams, keeping its version counted as active
//! and its client connection busy until done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::idle::BusyGuard;
use crate::metrics::ActiveGuard;

/// Drops the version's active count, and lets the connection go idle, when the body ends or
/// the client goes away.
pub struct TrackedBody {
    inner: Incoming,
    _active: ActiveGuard,
    _busy: BusyGuard,
}

impl TrackedBody {
    pub fn new(inner: Incoming, active: ActiveGuard, busy: BusyGuard) -> TrackedBody {
        TrackedBody {
            inner,
            _active: active,
            _busy: busy,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
