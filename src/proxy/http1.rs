//! tidegate's own HTTP/1.1 loop for plaintext client connections. One task per connection
//! reads each head into a buffer it holds only while bytes are in flight (an idle
//! keep-alive connection holds none), hands the request to the worker, and writes the
//! response with framing of its own. A connection that opens with the HTTP/2 preface is
//! handed to hyper.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::body::{BodyError, BodyFrames, RequestBody};
use super::h1::{
    ChunkedDecoder, Decoded, Framing, HeadError, RequestHead, write_chunk_header, write_field,
};
use super::raw_fields::RawFields;
use super::service::{ConnInfo, ServedBy, Tunnel, relay_tunnel};
use super::spares::{self, READ_SIZE};
use super::upstream_fields::UpstreamFields;
use super::{ConnSlot, ProxyBody, Wake};
use crate::clock;
use crate::metrics::ErrorKind;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Response bytes gathered before a write; smaller responses go out in one write.
const WRITE_SIZE: usize = 16 * 1024;

/// A plaintext client connection: what its task keeps between requests, and what each
/// request's future takes over (by value: a request's state then borrows nothing, and its
/// box can come from the worker's spares) and gives back. Small, as it moves twice per
/// request. Its timeouts (header, idle, response) are deadlines kept by the worker's
/// wake-ups, beside its waker: it holds no timer.
struct Client {
    stream: TcpStream,
    ctx: ConnSlot,
    buf: BytesMut,
    /// In an allocation of its own: the connection's facts stay in place for its life.
    info: Box<ConnInfo>,
}

/// Serves one plaintext client connection until it closes, idles out, or the worker stops.
///
/// Not an `async fn`, whose arguments would be kept twice in the task. The task is what an
/// idle keep-alive connection costs: it holds the socket, a pointer to the connection's
/// facts, and little else; each request's state lives in a box only while the
/// request does.
pub(super) fn serve(
    stream: TcpStream,
    info: ConnInfo,
    ctx: ConnSlot,
) -> impl Future<Output = ()> + Send + 'static {
    let mut client = Client {
        stream,
        ctx,
        buf: BytesMut::new(),
        info: Box::new(info),
    };
    async move {
        let mut first = true;
        loop {
            // The next head must arrive within the header timeout of the connection being
            // ready or of the previous response being sent.
            // Kept in milliseconds: 8 bytes of every idle connection's task, not 16. From the
            // coarse clock, which saves a precise read per request: a tick early at most.
            let deadline_ms = clock::coarse_now_ms() + clock::millis(client.ctx.header_timeout);
            // Only `client` is kept across the waits below, no borrow of its parts: the task
            // of an idle connection stays small.
            let parsed = loop {
                // Not matched around the await below, which would keep the `Look` there.
                let http2 = match client.look(first) {
                    Look::Head(parsed) => break parsed,
                    Look::Http2 => true,
                    Look::More => false,
                };
                if http2 {
                    let io = TokioIo::new(Prefixed {
                        prefix: std::mem::take(&mut client.buf).freeze(),
                        inner: client.stream,
                    });
                    let info = (*client.info).clone();
                    return Box::pin(super::serve_http(io, info, &client.ctx)).await;
                }
                let idle = client.buf.is_empty();
                if idle {
                    // Idle: hold no buffer while waiting.
                    spares::give_back_read_buffer(std::mem::take(&mut client.buf));
                }
                match client.wait(idle, deadline_ms).await {
                    Woke::Readable(true) => {}
                    Woke::Readable(false) | Woke::Stopped => return,
                    Woke::Expired => {
                        // An idle keep-alive connection closing is no error; a slow head is.
                        if first || !idle {
                            client
                                .ctx
                                .worker
                                .metrics
                                .count_error(ErrorKind::HeaderTimeout);
                        }
                        return;
                    }
                }
                if !client.read_now() {
                    return;
                }
            };
            first = false;
            match spares::boxed(|| after_head(client, parsed)).await {
                Some(next) => client = next,
                None => return,
            }
        }
    }
}

/// What the bytes read so far hold.
enum Look {
    Head(Result<RequestHead, HeadError>),
    /// The HTTP/2 preface, on the connection's first bytes.
    Http2,
    /// Not yet a whole head.
    More,
}

impl Client {
    fn look(&mut self, first: bool) -> Look {
        let buf = &self.buf;
        // After each response, before the next request's bytes: nothing to parse yet.
        if buf.is_empty() {
            return Look::More;
        }
        if first && buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
            // Maybe HTTP/2 with prior knowledge: wait for the whole preface.
            return Look::More;
        }
        if first && buf.starts_with(H2_PREFACE) {
            return Look::Http2;
        }
        // Made afresh for each look: a head is never kept across a wait.
        let mut head = RequestHead {
            fields: spares::field_list(),
            ..RequestHead::default()
        };
        match head.parse(buf, self.ctx.worker.max_header_bytes + 4096) {
            Ok(true) => Look::Head(Ok(head)),
            Ok(false) => {
                spares::give_back_field_list(head.fields);
                Look::More
            }
            Err(e) => {
                spares::give_back_field_list(head.fields);
                Look::Head(Err(e))
            }
        }
    }

    /// Waits for the socket to be readable, `deadline_ms` to pass, or, for an idle
    /// connection, the worker to stop. Polled by hand, borrowing only the connection: small
    /// to keep.
    fn wait(&mut self, idle: bool, deadline_ms: u64) -> impl Future<Output = Woke> + '_ {
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(r) = self.stream.poll_read_ready(cx) {
                return Poll::Ready(Woke::Readable(r.is_ok()));
            }
            self.ctx
                .poll_wake(deadline_ms, idle, cx)
                .map(|wake| match wake {
                    Wake::Stopped => Woke::Stopped,
                    Wake::Expired => Woke::Expired,
                })
        })
    }

    /// Reads what the readable socket has, at once (a false alarm waits again); false when
    /// the connection closed. A short read tells tokio the socket is drained, which saves a
    /// syscall on the next wait.
    fn read_now(&mut self) -> bool {
        if self.buf.capacity() == 0 {
            self.buf = spares::read_buffer();
        } else {
            self.buf.reserve(READ_SIZE);
        }
        !matches!(
            self.stream.read_buf(&mut self.buf).now_or_never(),
            Some(Ok(0)) | Some(Err(_))
        )
    }
}

/// Serves the request whose head was read, or refuses a head that could not be; the
/// connection back when it waits for another request.
async fn after_head(mut client: Client, parsed: Result<RequestHead, HeadError>) -> Option<Client> {
    let next = match parsed {
        // One request, from its parsed head to its response's last byte; the connection's
        // deadline keeps the response timeout meanwhile. Written out here, not called: an
        // async fn's future is made and then copied into this one's, on every request.
        Ok(mut head) => 'request: {
            let Client {
                stream,
                ctx: ConnSlot(ctx, wake_key),
                buf,
                info,
            } = &mut client;
            let info = &**info;
            let head_bytes = buf.split_to(head.len).freeze();
            let mut raw = RawFields::new(head_bytes, std::mem::take(&mut head.fields));
            let Some(mut req) = request(&head, &mut raw) else {
                ctx.worker.metrics.count_error(ErrorKind::BadRequest);
                break 'request Next::Refuse(400, "bad request: invalid request head".into());
            };
            let is_head = req.method() == Method::HEAD;
            let remaining = match head.framing() {
                Framing::Empty | Framing::UntilClose => None,
                Framing::Length(n) => Some(Remaining::Length(n)),
                Framing::Chunked => Some(Remaining::Chunked(Box::new(ChunkedDecoder::new(
                    4096,
                    ctx.worker.max_header_bytes,
                )))),
            };
            let pump = remaining.map(|remaining| {
                let (pump, rx) = BodyPump::new(remaining);
                *req.body_mut() = RequestBody::Streamed(rx);
                pump
            });
            // The client waits for this before sending its body.
            let send_continue = pump.is_some() && head.expect_continue && buf.is_empty();
            let (client_keep_alive, minor) = (head.keep_alive, head.minor_version);
            if send_continue
                && stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .is_err()
            {
                break 'request Next::Gone;
            }
            let (mut rd, mut wr) = stream.split();
            // Pinned where it is made: a move would copy this large future.
            let exchange = std::pin::pin!(async {
                let mut resp = ctx
                    .worker
                    .handle(
                        info,
                        ServedBy::Own(ctx.wakeups.deadline(wake_key), &mut raw),
                        &mut req,
                    )
                    .await;
                write_response(&mut wr, &mut resp, is_head, minor, client_keep_alive).await
            });
            let (outcome, body_read) = match pump {
                None => (exchange.await, true),
                // Boxed: a bodiless request's future stays small.
                Some(pump) => Box::pin(with_body(exchange, pump, &mut rd, buf)).await,
            };
            match outcome {
                Ok(Sent::Done { keep_alive })
                    if keep_alive && body_read && !ctx.wakeups.is_stopping() =>
                {
                    Next::Another
                }
                Ok(Sent::Done { .. }) => Next::Close,
                Ok(Sent::Upgraded(tunnel)) => Next::Tunnel(tunnel),
                Err(_) => Next::Gone,
            }
        }
        Err(e) => {
            let kind = match e {
                HeadError::TooLarge(_) => ErrorKind::HeaderTooLarge,
                _ => ErrorKind::BadRequest,
            };
            client.ctx.worker.metrics.count_error(kind);
            let cause = match e {
                HeadError::Malformed(why) => format!("bad request: {why}"),
                e => e.to_string(),
            };
            Next::Refuse(e.request_status(), cause)
        }
    };
    let stream = &mut client.stream;
    match next {
        Next::Another => return Some(client),
        Next::Close => {
            let _ = stream.shutdown().await;
        }
        Next::Refuse(status, cause) => {
            let _ = refuse(stream, status, &cause).await;
        }
        Next::Gone => {}
        Next::Tunnel(tunnel) => {
            let early = client.buf.split().freeze();
            Box::pin(run_tunnel(stream, early, tunnel)).await
        }
    }
    None
}

/// Runs `exchange` while `pump` relays the request body; the outcome, and whether the body
/// was read to its end (else the connection cannot be read further). The pump owns the
/// body's sender: when it is done the upstream sees the end.
async fn with_body<F: Future>(
    mut exchange: Pin<&mut F>,
    pump: BodyPump,
    rd: &mut ReadHalf<'_>,
    buf: &mut BytesMut,
) -> (F::Output, bool) {
    let mut pumping = std::pin::pin!(pump.run(rd, buf));
    let mut body_read = false;
    let mut pump_over = false;
    let outcome = loop {
        // Biased: both are polled each time anyway, and the order needs no random draw.
        tokio::select! {
            biased;
            r = &mut exchange => break r,
            done = &mut pumping, if !pump_over => {
                pump_over = true;
                body_read = done;
            }
        }
    };
    // A body the upstream did not wait for: the connection cannot be read further.
    let body_read = body_read || (!pump_over && pumping.now_or_never().unwrap_or(false));
    (outcome, body_read)
}

/// What a connection does after a request.
enum Next {
    /// Wait for the next request.
    Another,
    /// Close after the response.
    Close,
    /// Answer with this status and cause, and close.
    Refuse(u16, String),
    /// The connection broke: nothing more to send.
    Gone,
    /// Relay the upgraded connection.
    Tunnel(Tunnel),
}

/// What ended a wait for the next bytes of a head.
enum Woke {
    Readable(bool),
    Expired,
    Stopped,
}

/// The request as the worker takes it, with the fields tidegate reads; the others stay in
/// `raw`. None when a part is not valid for `http`'s types.
fn request(head: &RequestHead, raw: &mut RawFields) -> Option<Request<RequestBody>> {
    let method = Method::from_bytes(head.method.of(raw.head())).ok()?;
    let uri = Uri::from_maybe_shared(slice(raw.head(), head.target)).ok()?;
    // Room for the forwarding fields, which go into the map when the request leaves by
    // HTTP/2 or as an upgrade: the map never grows on the way.
    let mut headers = spares::header_map(raw.count() + 6);
    if !raw.sort_into(&mut headers) {
        return None;
    }
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = if head.minor_version == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = headers;
    Some(req)
}

pub(super) fn slice(bytes: &Bytes, span: super::h1::Span) -> Bytes {
    bytes.slice(span.start as usize..span.end as usize)
}

/// A head that could not be read: the status, a one-line cause, and the connection closes.
async fn refuse(stream: &mut TcpStream, status: u16, cause: &str) -> std::io::Result<()> {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = format!("tidegate: {cause}\n");
    let out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         cache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

/// How much of a request body is still to come.
enum Remaining {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
}

/// Reads a request body off the connection and hands it to the upstream request as frames.
struct BodyPump {
    remaining: Remaining,
    tx: mpsc::Sender<Result<Frame<Bytes>, BodyError>>,
}

impl BodyPump {
    /// The pump and the body the upstream request reads from it.
    fn new(remaining: Remaining) -> (BodyPump, BodyFrames) {
        // One frame in flight: the body streams in bounded memory.
        let (tx, rx) = mpsc::channel(1);
        (BodyPump { remaining, tx }, rx)
    }

    /// Relays the body; true when it was read to its end (the connection can carry another
    /// request), false when it broke off or the upstream stopped taking it.
    async fn run(mut self, rd: &mut ReadHalf<'_>, buf: &mut BytesMut) -> bool {
        loop {
            if buf.is_empty() {
                if self.is_done() {
                    return true;
                }
                buf.reserve(READ_SIZE);
                match rd.read_buf(buf).await {
                    Ok(0) | Err(_) => {
                        let _ = self.tx.send(Err("client closed mid-body".into())).await;
                        return false;
                    }
                    Ok(_) => {}
                }
            }
            let frame = match &mut self.remaining {
                Remaining::Length(0) => return true,
                Remaining::Length(n) => {
                    let take = (*n).min(buf.len() as u64) as usize;
                    *n -= take as u64;
                    Frame::data(buf.split_to(take).freeze())
                }
                Remaining::Chunked(d) => match d.decode(buf) {
                    Ok((used, Decoded::Data(range))) => {
                        let mut chunk = buf.split_to(used).freeze();
                        chunk = chunk.slice(range);
                        Frame::data(chunk)
                    }
                    Ok((used, Decoded::NeedMore)) => {
                        buf.advance(used);
                        continue;
                    }
                    Ok((used, Decoded::End)) => {
                        buf.advance(used);
                        let trailers = trailer_map(d.trailers());
                        if let Some(t) = trailers
                            && self.tx.send(Ok(Frame::trailers(t))).await.is_err()
                        {
                            return false;
                        }
                        return true;
                    }
                    Err(e) => {
                        let _ = self.tx.send(Err(e.into())).await;
                        return false;
                    }
                },
            };
            if self.tx.send(Ok(frame)).await.is_err() {
                return false;
            }
        }
    }

    fn is_done(&self) -> bool {
        match &self.remaining {
            Remaining::Length(n) => *n == 0,
            Remaining::Chunked(d) => d.is_done(),
        }
    }
}

/// Trailer fields as a map; None when there are none.
pub(super) fn trailer_map(section: &[u8]) -> Option<HeaderMap> {
    if section.is_empty() {
        return None;
    }
    let mut fields = [httparse::EMPTY_HEADER; super::h1::MAX_FIELDS];
    let mut with_end = section.to_vec();
    with_end.extend_from_slice(b"\r\n");
    let httparse::Status::Complete((_, parsed)) =
        httparse::parse_headers(&with_end, &mut fields).ok()?
    else {
        return None;
    };
    let mut map = HeaderMap::new();
    for f in parsed {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(n, v);
        }
    }
    Some(map)
}

/// What writing a response left.
enum Sent {
    Done { keep_alive: bool },
    Upgraded(Tunnel),
}

/// How the response body is framed on the client connection.
#[derive(Clone, Copy, PartialEq)]
enum Out {
    None,
    Raw,
    Chunked,
    UntilClose,
}

/// Writes the response, gathering small writes in a spare buffer. Borrowed, not moved: a
/// response is a few hundred bytes, and each future that owns it holds it twice.
async fn write_response(
    wr: &mut WriteHalf<'_>,
    resp: &mut Response<ProxyBody>,
    is_head: bool,
    client_minor: u8,
    client_keep_alive: bool,
) -> std::io::Result<Sent> {
    let mut out = spares::WriteBuffer::take();
    let out: &mut Vec<u8> = &mut out;
    let (out_framing, keep_alive) =
        response_head(resp, is_head, client_minor, client_keep_alive, out);
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        wr.write_all(out).await?;
        wr.flush().await?;
        return match resp.extensions_mut().remove::<Tunnel>() {
            Some(t) => Ok(Sent::Upgraded(t)),
            None => Err(std::io::Error::other("switched protocols without a tunnel")),
        };
    }
    let body = resp.body_mut();
    if out_framing == Out::None {
        wr.write_all(out).await?;
        return Ok(Sent::Done { keep_alive });
    }
    loop {
        // Gather what is ready now; write when the body would wait or enough has gathered.
        let frame = match body.frame().now_or_never() {
            Some(f) => f,
            None => {
                if !out.is_empty() {
                    wr.write_all(out).await?;
                    out.clear();
                }
                body.frame().await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    if out_framing == Out::Chunked {
                        write_chunk_header(data.len(), out);
                    }
                    if out.len() + data.len() > WRITE_SIZE {
                        wr.write_all(out).await?;
                        out.clear();
                        wr.write_all(&data).await?;
                    } else {
                        out.extend_from_slice(&data);
                    }
                    if out_framing == Out::Chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                Err(frame) => {
                    if let (Out::Chunked, Ok(trailers)) = (out_framing, frame.into_trailers()) {
                        out.extend_from_slice(b"0\r\n");
                        write_fields(&trailers, out);
                        out.extend_from_slice(b"\r\n");
                        wr.write_all(out).await?;
                        return Ok(Sent::Done { keep_alive });
                    }
                }
            },
        }
    }
    if out_framing == Out::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        wr.write_all(out).await?;
    }
    Ok(Sent::Done { keep_alive })
}

/// Writes the status line and fields of `resp` to `out` (its field map goes back to the
/// spares); how its body goes out, and whether the connection stays open after it.
fn response_head(
    resp: &mut Response<ProxyBody>,
    is_head: bool,
    client_minor: u8,
    client_keep_alive: bool,
    out: &mut Vec<u8>,
) -> (Out, bool) {
    // An HTTP/1.1 upstream's fields, written as they came.
    let upstream_fields = super::take_upstream_fields(resp.body_mut());
    let status = resp.status();
    let mut keep_alive = client_keep_alive;
    let out_framing = if status == StatusCode::SWITCHING_PROTOCOLS
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Out::None
    } else if resp.headers().contains_key(header::CONTENT_LENGTH)
        || upstream_fields
            .as_ref()
            .is_some_and(UpstreamFields::has_content_length)
    {
        if is_head { Out::None } else { Out::Raw }
    } else if let Some(n) = resp.body().size_hint().exact() {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        if is_head { Out::None } else { Out::Raw }
    } else if is_head {
        Out::None
    } else if client_minor == 1 {
        resp.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Out::Chunked
    } else {
        keep_alive = false;
        Out::UntilClose
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(fields) = upstream_fields {
        fields.write(out);
    }
    write_fields(resp.headers(), out);
    spares::give_back_header_map(std::mem::take(resp.headers_mut()));
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if client_minor == 0 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    (out_framing, keep_alive)
}

/// Header or trailer fields, one `name: value` line each.
pub(super) fn write_fields(fields: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in fields {
        write_field(name.as_str().as_bytes(), value.as_bytes(), out);
    }
}

/// Copies bytes both ways between the client and the upgraded upstream connection until
/// either side closes, or the version is removed after its drain timeout. Bytes the client
/// sent after its upgrade request go first.
async fn run_tunnel(client: &mut TcpStream, early: Bytes, tunnel: Tunnel) {
    let removed = tunnel.active.stats().removed();
    let Ok(upstream) = tunnel.upstream.await else {
        tracing::debug!("upstream upgrade failed");
        return;
    };
    let mut upstream = TokioIo::new(upstream);
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    relay_tunnel(client, &mut upstream, removed).await;
    drop(tunnel.active);
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
