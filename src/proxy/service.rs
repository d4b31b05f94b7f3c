//! One request through the proxy: match a route, choose version and endpoint, relay, count.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version as HttpVersion};
use http_body_util::Either;
use hyper::body::Body;
use hyper_util::rt::TokioIo;

use super::ProxyBody;
use super::body::{RequestBody, ResponseBody, TrackedBody};
use super::drain::DrainTracker;
use super::error::ProxyError;
use super::forwarding::{Forwarding, Peer};
use super::headers;
use super::idle::{BusyGuard, IdleState};
use super::raw_fields::RawFields;
use super::upstream::{ExchangeFailure, ExtraFields, UpstreamError, Upstreams};
use super::wakeups::Deadline;
use crate::clock;
use crate::health::{Endpoint, pick_endpoint};
use crate::metrics::{ActiveGuard, Metrics, VersionStats};
use crate::proxy_config::UpstreamProtocol;
use crate::routing::{Choice, RouteReader};

/// What every connection of one worker thread shares.
pub struct Worker {
    pub routes: RouteReader,
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    pub max_header_bytes: usize,
    pub drain: DrainTracker,
}

/// What one client connection knows about itself.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: Peer,
    pub tls: bool,
}

/// The upstream side of an upgraded connection, for a client connection that runs its own
/// tunnel; the version stays active while it is open.
#[derive(Clone)]
pub struct Tunnel {
    pub upstream: hyper::upgrade::OnUpgrade,
    pub active: Arc<ActiveGuard>,
}

/// Why a request is answered by tidegate, and the version it counts against if it got that far.
type Refusal = (ProxyError, Option<Arc<VersionStats>>);

/// A request ready to leave: where it goes and how, decided before the await.
struct Prepared<'c> {
    target: Target,
    forwarding: Option<Forwarding<'c>>,
    leaving: Leaving,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Active until the response body ends or the tunnel closes: what a drain waits for.
    active: ActiveGuard,
}

/// Everything decided while the route table was loaded; the table guard is gone after this.
struct Target {
    endpoint: Arc<Endpoint>,
    /// The version's endpoints, kept only when a failed connect may be retried elsewhere.
    retry_pool: Option<Arc<[Arc<Endpoint>]>>,
    stats: Arc<VersionStats>,
    protocol: UpstreamProtocol,
    timeout: Duration,
    passive: crate::health::PassivePolicy,
    set_cookie: Option<HeaderValue>,
}

/// Who serves a request's client connection, and what the worker borrows from it.
pub enum ServedBy<'a> {
    /// hyper: the keep-alive guard's view of the connection, held busy until the response
    /// has been sent.
    Hyper(&'a Arc<IdleState>),
    /// tidegate's own HTTP/1.1 loop, which keeps its own guard and lends the connection's
    /// deadline for the response timeout: a request then costs no timer registration. The
    /// fields tidegate does not read stay out of the request's map, as spans of its head.
    Own(Deadline<'a>, &'a mut RawFields),
}

impl Worker {
    /// Relays one request; every failure turns into a plain response here and is counted.
    /// The request is lent down to the upstream call, not moved: it is a few hundred bytes,
    /// and every future that owned it would hold it twice and copy it on the way in.
    pub async fn handle(
        &self,
        conn: &ConnInfo,
        served_by: ServedBy<'_>,
        req: &mut Request<RequestBody>,
    ) -> Response<ProxyBody> {
        let start = Instant::now();
        let (busy, own_deadline, mut raw) = match served_by {
            ServedBy::Hyper(idle) => (
                Some(BusyGuard::begin(idle, req.version() == HttpVersion::HTTP_2)),
                None,
                None,
            ),
            ServedBy::Own(deadline, raw) => (None, Some(deadline), Some(raw)),
        };
        // Decided and finished by plain functions around the one await: each async layer
        // would be a future made and copied into its caller's on every request.
        let relayed = match self.prepare(conn, req, raw.as_deref_mut(), start) {
            Ok(p) => {
                let sent = self
                    .send(
                        &p.target,
                        req,
                        ExtraFields {
                            raw: raw.as_deref(),
                            forwarding: p.forwarding.as_ref(),
                        },
                        p.leaving,
                        start,
                        own_deadline,
                    )
                    .await;
                self.finish(p, sent, start, busy)
            }
            Err(e) => Err(e),
        };
        match relayed {
            Ok(resp) => resp,
            Err((err, stats)) => {
                self.metrics.count_error(err.kind());
                if let Some(stats) = stats {
                    stats.record(err.status().as_u16(), start.elapsed());
                }
                tracing::debug!(error = %err, "request answered by tidegate");
                err.into_response()
            }
        }
    }

    /// Checks the request, picks route, version and endpoint, and rewrites it for the way
    /// it leaves.
    fn prepare<'c>(
        &self,
        conn: &'c ConnInfo,
        req: &mut Request<RequestBody>,
        mut raw: Option<&mut RawFields>,
        start: Instant,
    ) -> Result<Prepared<'c>, Refusal> {
        let raw_len = raw.as_deref().map_or(0, RawFields::wire_len);
        headers::check_request_head(req.headers(), raw_len, self.max_header_bytes)
            .map_err(|e| (e, None))?;
        let upgrade =
            req.version() == HttpVersion::HTTP_11 && headers::is_upgrade_request(req.headers());
        let retryable = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
            && req.body().is_end_stream();
        let target = self.target(req, raw.as_deref_mut(), retryable, clock::ms_at(start))?;
        let leaving = if upgrade {
            Leaving::Upgrade
        } else {
            Leaving::Request(target.protocol)
        };
        // Only tidegate's own HTTP/1.1 upstream path writes fields from spans; hyper writes
        // the map.
        if let Some(raw) = raw
            && !matches!(leaving, Leaving::Request(UpstreamProtocol::Http1))
        {
            raw.move_into(req.headers_mut(), |_| true)
                .map_err(|e| (e, None))?;
        }
        let active = target.stats.begin();
        // hyper's connections hand over the client side of an upgrade in the request;
        // tidegate's own HTTP/1.1 loop runs the tunnel itself (`Tunnel` in the response).
        let client_upgrade = if upgrade {
            req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        let forwarding = upstream_request(conn, req, leaving, &target.endpoint);
        Ok(Prepared {
            target,
            forwarding,
            leaving,
            client_upgrade,
            active,
        })
    }

    /// Counts the upstream's answer (or failure) and makes the client's response of it.
    fn finish(
        &self,
        p: Prepared<'_>,
        sent: Result<(Response<ResponseBody>, Option<Arc<Endpoint>>), ProxyError>,
        start: Instant,
        busy: Option<BusyGuard>,
    ) -> Result<Response<ProxyBody>, Refusal> {
        let Prepared {
            target,
            leaving,
            client_upgrade,
            active,
            ..
        } = p;
        let stats = &target.stats;
        let fail = |e: ProxyError| (e, Some(stats.clone()));
        let (mut resp, retried) = sent.map_err(fail)?;
        let endpoint = retried.as_ref().unwrap_or(&target.endpoint);

        let status = resp.status();
        let end = Instant::now();
        let end_ms = clock::ms_at(end);
        if status.is_server_error() {
            endpoint.record_failure(&target.passive, end_ms);
        } else {
            endpoint.record_success();
        }
        stats.record_at(status.as_u16(), end.duration_since(start), end_ms);

        if status == StatusCode::SWITCHING_PROTOCOLS {
            if !matches!(leaving, Leaving::Upgrade) {
                return Err(fail(ProxyError::UpstreamFailed(
                    endpoint.addr,
                    ExchangeFailure::SwitchedUnasked,
                )));
            }
            return Ok(self.switched(resp, client_upgrade, active));
        }
        headers::strip_hop_by_hop(resp.headers_mut(), false);
        if let Some(cookie) = target.set_cookie {
            resp.headers_mut().append(header::SET_COOKIE, cookie);
        }
        Ok(resp.map(|body| Either::Left(TrackedBody::new(body, active, busy))))
    }

    /// Sends the request within the route's response timeout, to `target`'s endpoint; a
    /// request that never left (connect failed) and may be retried goes once to another
    /// endpoint of the version. The response, and the endpoint a retry moved to (None: the
    /// target's own; borrowed, not cloned, on the common path). The timeout is watched by
    /// the connection's wake-ups when it lends its deadline.
    async fn send(
        &self,
        target: &Target,
        up_req: &mut Request<RequestBody>,
        extra: ExtraFields<'_>,
        leaving: Leaving,
        start: Instant,
        mut own_deadline: Option<Deadline<'_>>,
    ) -> Result<(Response<ResponseBody>, Option<Arc<Endpoint>>), ProxyError> {
        let mut retried: Option<Arc<Endpoint>> = None;
        // Only requests that may be retried pay for a copy of their head, kept boxed: the
        // future of every request would otherwise carry room for it.
        let mut retry_head = target
            .retry_pool
            .as_ref()
            .map(|_| Box::new(head_copy(up_req)));
        // From the clock read the request started with; a retry gets a full timeout again.
        let mut deadline = tokio::time::Instant::from_std(start) + target.timeout;
        loop {
            let endpoint = retried.as_ref().unwrap_or(&target.endpoint);
            let in_flight = endpoint.begin();
            let addr = endpoint.addr;
            let upstreams = &self.upstreams;
            let sent = {
                let req = &mut *up_req;
                // Pinned where it is made: the request's future is large, and a move copies it.
                let sending = std::pin::pin!(async move {
                    match leaving {
                        Leaving::Upgrade => {
                            let req = std::mem::replace(req, Request::new(RequestBody::Empty));
                            Box::pin(upstreams.send_upgrade(addr, req)).await
                        }
                        Leaving::Request(UpstreamProtocol::Http1) => {
                            upstreams.send_http1(addr, req, extra).await
                        }
                        // Boxed: the HTTP/1.1 request's future stays small.
                        Leaving::Request(UpstreamProtocol::Http2) => {
                            let req = std::mem::replace(req, Request::new(RequestBody::Empty));
                            Box::pin(upstreams.send_http2(addr, req)).await
                        }
                    }
                });
                match own_deadline.as_mut() {
                    Some(own) => within(own, clock::ms_at(deadline.into_std()), sending).await,
                    None => tokio::time::timeout_at(deadline, sending).await.ok(),
                }
            };
            drop(in_flight);
            match sent {
                Some(Ok(resp)) => return Ok((resp, retried)),
                None => {
                    endpoint.record_failure(&target.passive, clock::now_ms());
                    return Err(ProxyError::UpstreamTimeout(endpoint.addr, target.timeout));
                }
                Some(Err(UpstreamError::Connect(cause))) => {
                    tracing::debug!(endpoint = %endpoint.addr, %cause, "upstream connect failed");
                    target.stats.record_connect_error();
                    endpoint.record_failure(&target.passive, clock::now_ms());
                    // The request never left: a bodiless idempotent one may go to another endpoint once.
                    let next = retry_head
                        .take()
                        .zip(target.retry_pool.as_deref())
                        .and_then(|(head, pool)| {
                            let others: Vec<_> = pool
                                .iter()
                                .filter(|e| !Arc::ptr_eq(e, endpoint))
                                .cloned()
                                .collect();
                            pick_endpoint(&others, clock::now_ms())
                                .cloned()
                                .map(|next| (head, next))
                        });
                    let Some((head, next)) = next else {
                        return Err(ProxyError::UpstreamUnreachable(endpoint.addr));
                    };
                    tracing::debug!(from = %endpoint.addr, to = %next.addr, "connect failed, retrying on another endpoint");
                    retried = Some(next);
                    *up_req = *head;
                    deadline = tokio::time::Instant::now() + target.timeout;
                }
                Some(Err(UpstreamError::Failed(cause))) => {
                    endpoint.record_failure(&target.passive, clock::now_ms());
                    return Err(ProxyError::UpstreamFailed(endpoint.addr, cause));
                }
            }
        }
    }

    /// Loads the route table once, decides, and lets go of it before any await.
    fn target(
        &self,
        req: &mut Request<RequestBody>,
        raw: Option<&mut RawFields>,
        retryable: bool,
        now_ms: u64,
    ) -> Result<Target, Refusal> {
        let table = self.routes.load();
        // Fields the routes match on are read from the map.
        if let Some(raw) = raw
            && !table.fields_read.is_empty()
        {
            raw.move_into(req.headers_mut(), |name| table.reads(name))
                .map_err(|e| (e, None))?;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        let route = table
            .find(host, req.uri().path(), req.headers())
            .ok_or((ProxyError::NoRoute, None))?;
        let (index, choice) = route.choose(req.headers());
        let version = &route.versions[index];
        let Some(endpoint) = pick_endpoint(&version.endpoints, now_ms) else {
            return Err((
                ProxyError::NoHealthyUpstream(version.name.clone()),
                Some(version.stats.clone()),
            ));
        };
        let set_cookie = match (&route.sticky, choice) {
            (Some(sticky), Choice::Weighted) => {
                let mut c = format!(
                    "{}={}; Path=/; HttpOnly; SameSite=Lax",
                    sticky.cookie, version.name
                );
                if let Some(age) = sticky.max_age {
                    c.push_str(&format!("; Max-Age={}", age.as_secs()));
                }
                HeaderValue::from_str(&c).ok()
            }
            _ => None,
        };
        Ok(Target {
            endpoint: endpoint.clone(),
            retry_pool: (retryable && version.endpoints.len() > 1)
                .then(|| version.endpoints.clone()),
            stats: version.stats.clone(),
            protocol: version.protocol,
            timeout: route.response_timeout,
            passive: table.passive,
            set_cookie,
        })
    }

    /// The upstream's 101 to an upgrade request: a tunnel of its own for a hyper client
    /// connection; for tidegate's own HTTP/1.1 loop, which runs it, `Tunnel` in the
    /// response. Out of line: rare, and it keeps the common path's code short.
    #[cold]
    fn switched(
        &self,
        mut resp: Response<ResponseBody>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        active: ActiveGuard,
    ) -> Response<ProxyBody> {
        let upstream = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        match client_upgrade {
            Some(client_side) => self.spawn_tunnel(client_side, upstream, active),
            None => {
                parts.extensions.insert(Tunnel {
                    upstream,
                    active: Arc::new(active),
                });
            }
        }
        Response::from_parts(parts, Either::Right(Default::default()))
    }

    /// Copies bytes both ways between the upgraded client and upstream connections until
    /// either side closes (or the version is removed after its drain timeout); counted by the
    /// drain tracker so shutdown waits for it.
    fn spawn_tunnel(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        active: ActiveGuard,
    ) {
        let guard = self.drain.enter();
        // Subscribed now, so a removal from here on closes this tunnel.
        let removed = active.stats().removed();
        tokio::spawn(async move {
            let _guards = (guard, active);
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    return;
                }
            };
            relay_tunnel(
                &mut TokioIo::new(client),
                &mut TokioIo::new(upstream),
                removed,
            )
            .await;
        });
    }
}

/// A bodiless copy of `req`'s method, target, version and fields, to send again.
fn head_copy(req: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// The client's request as it goes upstream: hop-by-hop fields gone, forwarding fields
/// added, and the target and version the upstream's protocol wants. HTTP/1.1 sends the path
/// and keeps the client's Host header; HTTP/2 carries the client's host as :authority.
/// Either way the connection is picked by endpoint.
/// Changed in place: a request is a few hundred bytes, and every move copies them.
/// The forwarding fields are in the map when hyper sends the request; tidegate's own
/// HTTP/1.1 upstream path writes them after the map's fields (returned), and the path of
/// the target as it stands (an absolute-form target's included), so its URI is left alone.
fn upstream_request<'a>(
    conn: &'a ConnInfo,
    req: &mut Request<RequestBody>,
    leaving: Leaving,
    endpoint: &Endpoint,
) -> Option<Forwarding<'a>> {
    let upgrade = matches!(leaving, Leaving::Upgrade);
    let protocol = leaving.protocol();
    // The Host field, or else the absolute-form target's authority: what the upstream is
    // told the client asked for (HTTP/1.1 Host, HTTP/2 :authority, X-Forwarded-Host).
    let mut host = req.headers().get(header::HOST).cloned();
    let authority = match host {
        Some(_) => None,
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    let headers = req.headers_mut();
    headers::strip_for_upstream(headers, upgrade);
    if let Some(a) = authority {
        headers.insert(header::HOST, a.clone());
        host = Some(a);
    }
    let fields = Forwarding::new(headers, &conn.peer, conn.tls, host);
    let forwarding = if upgrade || protocol == UpstreamProtocol::Http2 {
        fields.insert_into(headers);
        None
    } else {
        Some(fields)
    };
    if protocol == UpstreamProtocol::Http1 {
        *req.version_mut() = HttpVersion::HTTP_11;
        if !upgrade {
            return forwarding;
        }
    }
    // Taken, not cloned: a clone of a freshly parsed URI allocates.
    let path = std::mem::take(req.uri_mut())
        .into_parts()
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = match protocol {
        // An upgrade, sent by hyper, which writes the URI as it is: origin form.
        UpstreamProtocol::Http1 => Uri::from(path),
        UpstreamProtocol::Http2 => {
            *req.version_mut() = HttpVersion::HTTP_2;
            let authority = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| endpoint.authority.clone());
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(authority);
            uri.path_and_query = Some(path);
            Uri::from_parts(uri).unwrap_or_default()
        }
    };
    *req.uri_mut() = uri;
    forwarding
}

/// How a request leaves for its upstream.
#[derive(Clone, Copy)]
enum Leaving {
    /// An upgrade, over HTTP/1.1; the connection is then relayed as it is.
    Upgrade,
    /// A request, by the upstream's protocol.
    Request(UpstreamProtocol),
}

impl Leaving {
    fn protocol(self) -> UpstreamProtocol {
        match self {
            Leaving::Upgrade => UpstreamProtocol::Http1,
            Leaving::Request(protocol) => protocol,
        }
    }
}

/// `fut`'s output, or None once `deadline_ms` has passed.
async fn within<F: Future>(
    own: &mut Deadline<'_>,
    deadline_ms: u64,
    mut fut: Pin<&mut F>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => own.poll(deadline_ms, cx).map(|()| None),
    })
    .await
}

/// Copies bytes both ways between the two sides of an upgraded connection until either side
/// closes, or `removed` fires (the version was removed after its drain timeout).
pub(super) async fn relay_tunnel<C, U>(
    client: &mut C,
    upstream: &mut U,
    removed: impl std::future::Future,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
{
    tokio::select! {
        r = tokio::io::copy_bidirectional(client, upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        }
        _ = removed => tracing::debug!("version removed after its drain timeout: upgraded connection closed"),
    }
}
