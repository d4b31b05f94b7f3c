//! tidegate's own HTTP/1.1 client for upstreams: pooled connections, each request written
//! and its response read in the requesting task (no connection task, no channel), the
//! response body read off the connection as the client takes it, and the connection handed
//! back to the pool when the body ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};

use super::body::{BodyError, RequestBody, ResponseBody};
use super::forwarding::Forwarding;
use super::h1::{ChunkedDecoder, Decoded, Framing, ResponseHead, write_chunk_header};
use super::raw_fields::RawFields;
use super::spares::{self, READ_SIZE};
use super::upstream::{ConnectFailure, ExchangeFailure, PoolSettings, UpstreamError};
use super::upstream_fields::UpstreamFields;
use crate::clock;

/// The largest response head an upstream may send.
const MAX_HEAD: usize = 64 * 1024;
/// A request body chunk larger than this is written on its own instead of copied.
const WRITE_SIZE: usize = 16 * 1024;

/// One connection to an upstream, with the bytes read past the last message (none between
/// exchanges of a well-behaved upstream). Boxed for its life: a response's body carries it,
/// and every move of the response copies the body.
struct Conn {
    endpoint: SocketAddr,
    stream: TcpStream,
    buf: BytesMut,
    /// The last request head written, kept for its allocation.
    head: Vec<u8>,
}

impl Conn {
    /// Whether an idle pooled connection can carry a request: the upstream has not closed it
    /// or sent bytes nobody asked for. Costs a syscall only when the socket reports readable.
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Idle connections by endpoint, most recently used last: a request takes the warmest, and
/// connections idle longer than `idle_timeout` are closed before the upstream's own
/// keep-alive timeout can race a request.
pub(super) struct H1Pool {
    idle: Mutex<IdleConnections>,
    settings: PoolSettings,
}

/// An endpoint's idle connections, with the (coarse) millisecond each went idle.
type Idle = Vec<(Box<Conn>, u64)>;

#[derive(Default)]
struct IdleConnections {
    /// A worker talks to few endpoints: a short list beats hashing.
    by_endpoint: Vec<(SocketAddr, Idle)>,
    last_sweep_ms: u64,
}

/// Why one exchange failed, and whether the request may go again on a fresh connection.
struct ExchangeError {
    cause: ExchangeFailure,
    /// The upstream closed the connection as the request reached it: nothing came back,
    /// nothing of a body was sent, and the request did not all leave or may go twice.
    resend: bool,
}

impl H1Pool {
    pub(super) fn new(settings: PoolSettings) -> H1Pool {
        H1Pool {
            idle: Mutex::new(IdleConnections::default()),
            settings,
        }
    }

    fn take(&self, endpoint: SocketAddr) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = &mut idle.by_endpoint.iter_mut().find(|(a, _)| *a == endpoint)?.1;
        let now = clock::coarse_now_ms();
        let timeout = clock::millis(self.settings.idle_timeout);
        while let Some((mut conn, since)) = list.pop() {
            if now.saturating_sub(since) < timeout && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Box<Conn>) {
        let endpoint = conn.endpoint;
        let now = clock::coarse_now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let timeout = clock::millis(self.settings.idle_timeout);
        // Now and then close connections idle too long everywhere, endpoints gone from the
        // route table included.
        if now.saturating_sub(idle.last_sweep_ms) >= 1000 {
            idle.last_sweep_ms = now;
            for (_, list) in &mut idle.by_endpoint {
                list.retain(|(_, since)| now.saturating_sub(*since) < timeout);
            }
            idle.by_endpoint.retain(|(_, list)| !list.is_empty());
        }
        let max = self.settings.max_idle_per_endpoint;
        match idle.by_endpoint.iter_mut().find(|(a, _)| *a == endpoint) {
            Some((_, list)) if list.len() < max => list.push((conn, now)),
            Some(_) => {}
            None if max > 0 => idle.by_endpoint.push((endpoint, vec![(conn, now)])),
            None => {}
        }
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<Box<Conn>, UpstreamError> {
        let stream = connect(endpoint, self.settings.connect_timeout).await?;
        Ok(Box::new(Conn {
            endpoint,
            stream,
            buf: BytesMut::new(),
            head: Vec::with_capacity(512),
        }))
    }

    /// Sends `req` (origin-form URI, `Host` among its headers) and reads the response head;
    /// the body follows as the response's body is read.
    pub(super) async fn send(
        this: &Arc<H1Pool>,
        endpoint: SocketAddr,
        req: &mut Request<RequestBody>,
        extra: ExtraFields<'_>,
    ) -> Result<Response<ResponseBody>, UpstreamError> {
        let mut body = std::mem::replace(req.body_mut(), RequestBody::Empty);
        // Connecting is boxed: the rare path keeps the common future small.
        let (mut conn, mut reused) = match this.take(endpoint) {
            Some(c) => (c, true),
            None => (Box::pin(this.connect(endpoint)).await?, false),
        };
        let mut head = std::mem::take(&mut conn.head);
        head.clear();
        let chunked = encode_head(req, extra, &body, &mut head);
        spares::give_back_header_map(std::mem::take(req.headers_mut()));
        loop {
            match exchange(&mut conn, &head, &mut body, chunked, req.method()).await {
                Ok(resp) => {
                    conn.head = head;
                    return Ok(respond(this, conn, resp));
                }
                Err(e) if e.resend && reused => {
                    conn = Box::pin(this.connect(endpoint)).await?;
                    reused = false;
                }
                Err(e) => return Err(UpstreamError::Failed(e.cause)),
            }
        }
    }

    /// An upgrade request (WebSocket and the like) on a connection of its own, through hyper,
    /// which hands over the upgraded connection; never pooled.
    pub(super) async fn send_upgrade(
        &self,
        endpoint: SocketAddr,
        req: Request<RequestBody>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        let stream = connect(endpoint, self.settings.connect_timeout).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| UpstreamError::Connect(ConnectFailure::Handshake(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upgraded upstream connection closed");
            }
        });
        sender
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Failed(ExchangeFailure::Hyper(e)))
    }
}

/// Connects with Nagle off (it would add 40 ms stalls to small writes).
pub(super) async fn connect(
    endpoint: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, UpstreamError> {
    let stream = tokio::time::timeout(limit, TcpStream::connect(endpoint))
        .await
        .map_err(|_| UpstreamError::Connect(ConnectFailure::TimedOut(limit)))?
        .map_err(|e| UpstreamError::Connect(ConnectFailure::Io(e)))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Fields written after a request's map: the client's that pass untouched, then tidegate's
/// forwarding fields.
#[derive(Clone, Copy)]
pub struct ExtraFields<'a> {
    pub raw: Option<&'a RawFields>,
    pub forwarding: Option<&'a Forwarding<'a>>,
}

/// Writes the request line and fields, the map's and then `extra`; true when the body goes
/// chunked.
fn encode_head(
    req: &Request<RequestBody>,
    extra: ExtraFields<'_>,
    body: &RequestBody,
    out: &mut Vec<u8>,
) -> bool {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    super::http1::write_fields(req.headers(), out);
    if let Some(raw) = extra.raw {
        raw.write(out);
    }
    if let Some(forwarding) = extra.forwarding {
        forwarding.write(out);
    }
    let mut chunked = false;
    if !body.is_end_stream() && !req.headers().contains_key(header::CONTENT_LENGTH) {
        match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

/// Writes the request and reads the response head (skipping interim 1xx answers). A
/// response that comes before the body was all sent ends the sending: the connection then
/// closes after the response. A request the upstream closed on without answering may go
/// again if it did not all leave, or if its method is idempotent (RFC 9110 9.2.2) and no
/// body was sent.
async fn exchange(
    conn: &mut Conn,
    mut head: &[u8],
    body: &mut RequestBody,
    chunked: bool,
    method: &Method,
) -> Result<(ResponseHead, bool), ExchangeError> {
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    // Most requests are a head alone, which the socket takes at once: then there is only
    // the response to wait for. What it did not take (or a failure) goes the common way.
    let mut sent = false;
    if body.is_end_stream()
        && let Ok(n) = conn.stream.try_write(head)
    {
        head = &head[n..];
        sent = head.is_empty();
    }
    let (mut rd, mut wr) = conn.stream.split();
    let body_started = AtomicBool::new(false);
    // Pinned where they are made: a move would copy them.
    let mut write = std::pin::pin!(async {
        wr.write_all(head).await?;
        if !body.is_end_stream() {
            // Boxed: a bodiless request's future stays small.
            Box::pin(send_body(&mut wr, body, chunked, &body_started)).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut read = std::pin::pin!(read_head(
        &mut rd,
        &mut conn.buf,
        method.as_str().as_bytes()
    ));
    let result = if sent {
        read.await
    } else {
        loop {
            tokio::select! {
                biased;
                r = &mut write, if !sent => match r {
                    Ok(()) => sent = true,
                    Err(e) => break Err((ExchangeFailure::Io(e), true)),
                },
                r = &mut read => break r,
            }
        }
    };
    result
        .map(|head| (head, sent))
        .map_err(|(cause, nothing_read)| ExchangeError {
            cause,
            resend: nothing_read && !body_started.load(Relaxed) && (!sent || idempotent),
        })
}

/// Relays the request body: raw when it has a length, chunked otherwise.
async fn send_body(
    wr: &mut WriteHalf<'_>,
    body: &mut RequestBody,
    chunked: bool,
    started: &AtomicBool,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        started.store(true, Relaxed);
        let frame = frame.map_err(|e| std::io::Error::other(e.to_string()))?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                write_chunk_header(data.len(), &mut out);
                if data.len() > WRITE_SIZE {
                    wr.write_all(&out).await?;
                    out.clear();
                    wr.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                out.extend_from_slice(b"\r\n");
                wr.write_all(&out).await?;
                out.clear();
            }
            Ok(data) => wr.write_all(&data).await?,
            Err(frame) => {
                if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                    out.extend_from_slice(b"0\r\n");
                    super::http1::write_fields(&trailers, &mut out);
                    out.extend_from_slice(b"\r\n");
                    return wr.write_all(&out).await;
                }
            }
        }
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// Reads the final response head to a `method` request into `buf`; on failure, the cause
/// and whether the upstream closed before sending any byte.
async fn read_head(
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
    method: &[u8],
) -> Result<ResponseHead, (ExchangeFailure, bool)> {
    let mut head = ResponseHead {
        fields: spares::field_list(),
        ..ResponseHead::default()
    };
    let mut any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            match head.parse(buf, MAX_HEAD, method) {
                Ok(true) if (100..200).contains(&head.status) && head.status != 101 => {
                    buf.advance(head.len);
                    continue;
                }
                Ok(true) => return Ok(head),
                Ok(false) => {}
                Err(e) => return Err((ExchangeFailure::InvalidHead(e), false)),
            }
        }
        buf.reserve(READ_SIZE);
        match rd.read_buf(buf).await {
            Ok(0) if !any => return Err((ExchangeFailure::ClosedBeforeResponse, true)),
            Ok(0) => return Err((ExchangeFailure::ClosedInHead, false)),
            Ok(_) => any = true,
            Err(e) => return Err((ExchangeFailure::Io(e), !any)),
        }
    }
}

/// The response for the client: status and fields as they came (`UpstreamFields`, carried
/// by the body), the body still on the connection.
fn respond(
    pool: &Arc<H1Pool>,
    mut conn: Box<Conn>,
    (mut head, request_sent): (ResponseHead, bool),
) -> Response<ResponseBody> {
    let bytes = conn.buf.split_to(head.len).freeze();
    let fields = UpstreamFields::new(
        bytes,
        std::mem::take(&mut head.fields),
        head.drop_content_length,
    );
    let mut body = UpstreamBody::empty(fields);
    // An upgrade's connection is never pooled; the tunnel is not run on this client.
    let reusable = head.keep_alive && request_sent && head.status != 101;
    let remaining = match head.framing() {
        Framing::Empty => None,
        Framing::Length(n) => Some(Remaining::Length(n)),
        Framing::Chunked => Some(Remaining::Chunked(Box::new(ChunkedDecoder::new(
            4096, MAX_HEAD,
        )))),
        Framing::UntilClose => Some(Remaining::UntilClose),
    };
    match remaining {
        None if reusable && conn.buf.is_empty() => pool.put(conn),
        None => {}
        Some(remaining) => {
            body.remaining = remaining;
            body.conn = Some(conn);
            body.back_to = reusable.then(|| pool.clone());
        }
    }
    // Made once, as the client side takes it: a response is a few hundred bytes to move.
    let mut resp = Response::new(Either::Left(body));
    *resp.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.version_mut() = Version::HTTP_11;
    resp
}

/// How much of a response body is still on the connection.
enum Remaining {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    UntilClose,
}

/// A response body read off its upstream connection as the client takes it; the connection
/// goes back to the pool at the body's end, and closes if the body is dropped before.
pub struct UpstreamBody {
    /// The response's fields, until the client side takes them.
    fields: Option<UpstreamFields>,
    conn: Option<Box<Conn>>,
    remaining: Remaining,
    back_to: Option<Arc<H1Pool>>,
}

impl UpstreamBody {
    fn empty(fields: UpstreamFields) -> UpstreamBody {
        UpstreamBody {
            fields: Some(fields),
            conn: None,
            remaining: Remaining::Length(0),
            back_to: None,
        }
    }

    pub fn take_fields(&mut self) -> Option<UpstreamFields> {
        self.fields.take()
    }

    /// The body ended: the connection carries the next request if nothing follows it.
    fn finish(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.back_to.take())
            && conn.buf.is_empty()
        {
            pool.put(conn);
        }
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if !conn.buf.is_empty() {
                match &mut this.remaining {
                    Remaining::Length(n) => {
                        let take = (*n).min(conn.buf.len() as u64) as usize;
                        *n -= take as u64;
                        let data = conn.buf.split_to(take).freeze();
                        if *n == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Remaining::UntilClose => {
                        return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                    }
                    Remaining::Chunked(d) => match d.decode(&conn.buf) {
                        Ok((used, Decoded::Data(range))) => {
                            let chunk = conn.buf.split_to(used).freeze().slice(range);
                            return Poll::Ready(Some(Ok(Frame::data(chunk))));
                        }
                        Ok((used, Decoded::NeedMore)) => conn.buf.advance(used),
                        Ok((used, Decoded::End)) => {
                            conn.buf.advance(used);
                            let trailers = super::http1::trailer_map(d.trailers());
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Err(e) => return this.fail(format!("invalid chunked body: {e}")),
                    },
                }
                continue;
            }
            conn.buf.reserve(READ_SIZE);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.stream),
                cx,
                &mut conn.buf
            )) {
                Ok(0) if matches!(this.remaining, Remaining::UntilClose) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("upstream closed the connection mid-body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(e.to_string()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.remaining) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Remaining::Length(n)) => SizeHint::with_exact(*n),
            _ => SizeHint::default(),
        }
    }
}
