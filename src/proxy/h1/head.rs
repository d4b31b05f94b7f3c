//! Request and response heads: parsed, checked against RFC 9112's framing rules, and kept
//! as offsets into the buffer they came in, which the caller reuses for the next message.

use std::mem::MaybeUninit;

use super::fields::{Field, KnownField, Span, content_length, list_elements, trim};

/// Header fields a head may carry; more is answered like a head too large.
pub const MAX_FIELDS: usize = 100;

/// How a message's body is delimited (RFC 9112 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked coding, to its last chunk and trailers.
    Chunked,
    /// Responses only: until the upstream closes the connection.
    UntilClose,
}

/// Why a head was refused. Each maps to the status the client is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// 431 for a request; a response this large is a bad gateway.
    #[error("head larger than {0} bytes or with more than {MAX_FIELDS} fields")]
    TooLarge(usize),
    /// 400 for a request, 502 for a response.
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    /// 501: a transfer coding other than chunked.
    #[error("transfer coding other than chunked")]
    UnsupportedCoding,
}

impl HeadError {
    /// The status a client gets for a request head refused so.
    pub fn request_status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) => 431,
            HeadError::Malformed(_) => 400,
            HeadError::UnsupportedCoding => 501,
        }
    }
}

/// What framing and connection management read from the fields of any message.
#[derive(Default)]
struct Semantics {
    content_length: Option<u64>,
    /// Transfer-Encoding present; when `read_fields` accepts it, it is exactly `chunked`.
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade_field: bool,
    hosts: u8,
    host: Span,
    expect_continue: bool,
}

fn read_fields(buf: &[u8], fields: &[Field]) -> Result<Semantics, HeadError> {
    let mut s = Semantics::default();
    let mut chunked_seen = 0;
    for f in fields {
        let value = f.value.of(buf);
        match KnownField::of(f.name.of(buf)) {
            KnownField::ContentLength => {
                let n =
                    content_length(value).ok_or(HeadError::Malformed("invalid Content-Length"))?;
                if s.content_length.is_some_and(|m| m != n) {
                    return Err(HeadError::Malformed("Content-Length values differ"));
                }
                s.content_length = Some(n);
            }
            KnownField::TransferEncoding => {
                s.transfer_encoding = true;
                // Only chunked is ours to decode; any other coding, before or after it, is not.
                for coding in list_elements(value) {
                    if !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(HeadError::UnsupportedCoding);
                    }
                    chunked_seen += 1;
                }
            }
            KnownField::Connection => {
                for token in list_elements(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        s.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        s.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        s.upgrade_token = true;
                    }
                }
            }
            KnownField::Upgrade => s.upgrade_field = true,
            KnownField::Host => {
                s.hosts = s.hosts.saturating_add(1);
                s.host = f.value;
            }
            KnownField::Expect => {
                s.expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }
    if s.transfer_encoding && chunked_seen == 0 {
        return Err(HeadError::Malformed("empty Transfer-Encoding"));
    }
    if chunked_seen > 1 {
        return Err(HeadError::Malformed("chunked applied twice"));
    }
    Ok(s)
}

/// Copies httparse's fields as spans of `buf`.
fn spans(buf: &[u8], parsed: &[httparse::Header<'_>], out: &mut Vec<Field>) {
    out.clear();
    out.extend(parsed.iter().map(|h| Field {
        name: Span::within(buf, h.name.as_bytes()),
        value: Span::within(buf, h.value),
    }));
}

/// The length of a complete head within `max` bytes; None while more may complete it.
fn head_len(
    parsed: httparse::Result<usize>,
    have: usize,
    max: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed.map_err(|e| parse_error(e, max))? {
        httparse::Status::Complete(n) if n <= max => Ok(Some(n)),
        httparse::Status::Partial if have < max => Ok(None),
        _ => Err(HeadError::TooLarge(max)),
    }
}

fn parse_error(e: httparse::Error, max: usize) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge(max),
        httparse::Error::HeaderName => HeadError::Malformed("invalid field name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid field value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status"),
        httparse::Error::Token => HeadError::Malformed("invalid method or token"),
        httparse::Error::Version => HeadError::Malformed("invalid version"),
    }
}

/// A parsed request head.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// Bytes of the head, its blank line included: where the body starts.
    pub len: usize,
    pub method: Span,
    pub target: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub fields: Vec<Field>,
    pub host: Option<Span>,
    pub framing: Option<Framing>,
    /// Whether the client may send another request on this connection after this one.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// An HTTP/1.1 `Connection: upgrade` request with an Upgrade field (WebSocket...).
    pub upgrade: bool,
}

impl RequestHead {
    /// Parses the head at the start of `buf`: Ok(false) while it is incomplete (read more,
    /// up to `max_len` bytes). Refuses what RFC 9112 says a server must not guess at:
    /// Content-Length and Transfer-Encoding together, differing or invalid lengths, codings
    /// other than one chunked, Transfer-Encoding in HTTP/1.0, a missing or repeated Host in HTTP/1.1,
    /// whitespace before a colon, obs-fold, and a target of the wrong form.
    pub fn parse(&mut self, buf: &[u8], max_len: usize) -> Result<bool, HeadError> {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let parsed = req.parse_with_uninit_headers(buf, &mut headers);
        let Some(len) = head_len(parsed, buf.len(), max_len)? else {
            return Ok(false);
        };
        let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
            return Ok(false);
        };
        self.len = len;
        self.method = Span::within(buf, method.as_bytes());
        self.target = Span::within(buf, target.as_bytes());
        self.minor_version = minor;
        spans(buf, req.headers, &mut self.fields);
        let s = read_fields(buf, &self.fields)?;
        check_target(method.as_bytes(), target.as_bytes())?;
        if s.hosts > 1 {
            return Err(HeadError::Malformed("more than one Host header"));
        }
        if minor == 1 && s.hosts == 0 {
            return Err(HeadError::Malformed(
                "an HTTP/1.1 request needs a Host header",
            ));
        }
        self.host = (s.hosts == 1).then_some(s.host);
        self.framing = Some(match (s.transfer_encoding, s.content_length) {
            (true, Some(_)) => {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            (true, None) if minor == 0 => {
                return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
            }
            (true, None) => Framing::Chunked,
            (false, Some(0) | None) => Framing::Empty,
            (false, Some(n)) => Framing::Length(n),
        });
        self.keep_alive = if minor == 1 {
            !s.close
        } else {
            s.keep_alive && !s.close
        };
        self.expect_continue = s.expect_continue && minor == 1;
        self.upgrade = minor == 1 && s.upgrade_token && s.upgrade_field;
        Ok(true)
    }

    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.method.of(buf)
    }

    pub fn framing(&self) -> Framing {
        self.framing.unwrap_or(Framing::Empty)
    }
}

/// RFC 9112 3.2: origin-form for most requests, absolute-form as a proxy may get, `*` only
/// for OPTIONS, authority-form only for CONNECT.
fn check_target(method: &[u8], target: &[u8]) -> Result<(), HeadError> {
    let ok = match target {
        [b'/', ..] => method != b"CONNECT",
        b"*" => method == b"OPTIONS",
        _ if method == b"CONNECT" => !target.contains(&b'/'),
        _ => {
            let lower = |n: usize| target.get(..n).map(<[u8]>::to_ascii_lowercase);
            lower(7).as_deref() == Some(b"http://") || lower(8).as_deref() == Some(b"https://")
        }
    };
    if ok {
        Ok(())
    } else {
        Err(HeadError::Malformed("request target of the wrong form"))
    }
}

/// A parsed response head.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Span,
    pub minor_version: u8,
    pub fields: Vec<Field>,
    pub framing: Option<Framing>,
    /// Whether the upstream connection may carry another request after this response.
    pub keep_alive: bool,
    /// Transfer-Encoding won over a Content-Length that must not be forwarded.
    pub drop_content_length: bool,
}

impl ResponseHead {
    /// Parses the response to a request with method `method` (RFC 9112 6.3: a HEAD's
    /// response, 1xx, 204 and 304 have no body whatever their fields say). Ok(false) while
    /// incomplete.
    pub fn parse(&mut self, buf: &[u8], max_len: usize, method: &[u8]) -> Result<bool, HeadError> {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut headers,
        );
        let Some(len) = head_len(parsed, buf.len(), max_len)? else {
            return Ok(false);
        };
        let (Some(status), Some(minor)) = (resp.code, resp.version) else {
            return Ok(false);
        };
        self.len = len;
        self.status = status;
        self.reason = resp
            .reason
            .map_or(Span::default(), |r| Span::within(buf, r.as_bytes()));
        self.minor_version = minor;
        spans(buf, resp.headers, &mut self.fields);
        // A coding we do not decode: the body runs to the close, passed on untouched.
        let (s, undecoded) = match read_fields(buf, &self.fields) {
            Err(HeadError::UnsupportedCoding) => (Semantics::default(), true),
            other => (other?, false),
        };
        let bodiless =
            method == b"HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
        let transfer_encoding = s.transfer_encoding || undecoded;
        // Transfer-Encoding overrides Content-Length (RFC 9112 6.3), which is not passed on.
        self.drop_content_length =
            transfer_encoding && self.fields.iter().any(|f| f.is(buf, "content-length"));
        let framing = if bodiless {
            Framing::Empty
        } else if transfer_encoding {
            // HTTP/1.0 knows no chunked: its framing is faulty, so read to the close.
            if s.transfer_encoding && minor == 1 {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else {
            match s.content_length {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        self.framing = Some(framing);
        self.keep_alive = framing != Framing::UntilClose
            && !(transfer_encoding && minor == 0)
            && if minor == 1 {
                !s.close
            } else {
                s.keep_alive && !s.close
            };
        Ok(true)
    }

    pub fn framing(&self) -> Framing {
        self.framing.unwrap_or(Framing::Empty)
    }
}
