//! The one rescue point: typed proxy errors and the plain responses they turn into.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{Either, Full};

use super::ProxyBody;
use super::upstream::ExchangeFailure;
use crate::metrics::ErrorKind;

/// Why a request could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("no healthy endpoint for version `{0}`")]
    NoHealthyUpstream(Arc<str>),
    #[error("upstream {0} is unreachable")]
    UpstreamUnreachable(SocketAddr),
    #[error("upstream {0} did not answer within {1:?}")]
    UpstreamTimeout(SocketAddr, Duration),
    /// The endpoint, and what went wrong on its connection.
    #[error("upstream {0} failed: {1}")]
    UpstreamFailed(SocketAddr, #[source] ExchangeFailure),
    #[error("request header fields are larger than {0} bytes")]
    HeaderTooLarge(usize),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyUpstream(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable(_) | ProxyError::UpstreamFailed(..) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(..) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::HeaderTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::NoRoute => ErrorKind::NoRoute,
            ProxyError::NoHealthyUpstream(_) => ErrorKind::NoHealthyUpstream,
            ProxyError::UpstreamUnreachable(_) => ErrorKind::UpstreamUnreachable,
            ProxyError::UpstreamTimeout(..) => ErrorKind::UpstreamTimeout,
            ProxyError::UpstreamFailed(..) => ErrorKind::UpstreamError,
            ProxyError::HeaderTooLarge(_) => ErrorKind::HeaderTooLarge,
            ProxyError::BadRequest(_) => ErrorKind::BadRequest,
        }
    }

    /// The response the client sees: the status and a one-line plain-text cause.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = format!("tidegate: {self}\n");
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        resp
    }
}
