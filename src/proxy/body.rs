//! Bodies as they are relayed: the client's request body (from hyper, or read off the
//! connection by tidegate's own HTTP/1.1 loop), and the upstream's response body, which keeps
//! its version counted as active and its client connection busy until done.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;

use super::idle::BusyGuard;
use super::upstream_fields::UpstreamFields;
use super::upstream_h1::UpstreamBody;
use crate::metrics::ActiveGuard;

/// Why a request body read off a client connection broke off.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The frames of a request body read off a client connection, as they come.
pub type BodyFrames = tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, BodyError>>;

/// A request body on its way upstream.
pub enum RequestBody {
    /// From a connection hyper serves (HTTP/2, and TLS).
    Hyper(Incoming),
    /// Read off the client connection by tidegate's HTTP/1.1 loop, frame by frame.
    Streamed(BodyFrames),
    /// No body, or none any more (a retried bodiless request).
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Streamed(rx) => rx.poll_recv(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Streamed(_) => false,
            RequestBody::Empty => true,
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Streamed(_) => SizeHint::default(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// A response body from upstream: read off tidegate's own HTTP/1.1 connection, or from
/// hyper's (HTTP/2, and upgrades).
pub type ResponseBody = Either<UpstreamBody, Incoming>;

/// Drops the version's active count, and lets the connection go idle, when the body ends or
/// the client goes away.
pub struct TrackedBody {
    inner: ResponseBody,
    _active: ActiveGuard,
    _busy: Option<BusyGuard>,
}

impl TrackedBody {
    pub fn new(inner: ResponseBody, active: ActiveGuard, busy: Option<BusyGuard>) -> TrackedBody {
        TrackedBody {
            inner,
            _active: active,
            _busy: busy,
        }
    }

    /// The fields of an HTTP/1.1 upstream's response, which its head does not hold yet.
    pub fn take_upstream_fields(&mut self) -> Option<UpstreamFields> {
        match &mut self.inner {
            Either::Left(body) => body.take_fields(),
            Either::Right(_) => None,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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
