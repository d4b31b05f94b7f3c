//! RFC 9112 framing and the request-smuggling cases a proxy must refuse.

use super::*;

const MAX: usize = 8192;

fn request(raw: &str) -> Result<RequestHead, HeadError> {
    let mut head = RequestHead::default();
    match head.parse(raw.as_bytes(), MAX)? {
        true => Ok(head),
        false => panic!("incomplete: {raw:?}"),
    }
}

fn status_of(raw: &str) -> u16 {
    request(raw).map_or_else(|e| e.request_status(), |_| 200)
}

fn response(raw: &str, method: &str) -> Result<ResponseHead, HeadError> {
    let mut head = ResponseHead::default();
    assert!(
        head.parse(raw.as_bytes(), MAX, method.as_bytes())?,
        "incomplete"
    );
    Ok(head)
}

#[test]
fn a_plain_request_is_read_with_its_parts_in_the_buffer() {
    let raw = "GET /a?b=1 HTTP/1.1\r\nHost: shop\r\nX-Trace: 7\r\n\r\nNEXT";
    let h = request(raw).unwrap();
    let buf = raw.as_bytes();
    assert_eq!(h.method(buf), b"GET");
    assert_eq!(h.target.of(buf), b"/a?b=1");
    assert_eq!(h.host.unwrap().of(buf), b"shop");
    assert_eq!(h.fields.len(), 2);
    assert!(h.fields[1].is(buf, "x-trace"));
    assert_eq!(h.fields[1].value.of(buf), b"7");
    assert_eq!(&buf[h.len..], b"NEXT");
    assert_eq!(h.framing(), Framing::Empty);
    assert!(h.keep_alive);
}

#[test]
fn content_length_and_transfer_encoding_together_are_refused_in_either_order() {
    for raw in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
    ] {
        assert_eq!(status_of(raw), 400, "{raw:?}");
    }
}

#[test]
fn content_lengths_must_be_one_valid_number() {
    let with = |v: &str| format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
    assert_eq!(request(&with("5")).unwrap().framing(), Framing::Length(5));
    assert_eq!(request(&with("0")).unwrap().framing(), Framing::Empty);
    assert_eq!(
        request(&with("42, 42")).unwrap().framing(),
        Framing::Length(42),
        "a list of equal values is that value"
    );
    for bad in [
        "42, 43",
        "+5",
        "-1",
        "0x10",
        "5 5",
        "",
        "1e3",
        "99999999999999999999",
    ] {
        assert_eq!(status_of(&with(bad)), 400, "Content-Length: {bad:?}");
    }
    let twice = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(status_of(twice), 400);
    let same = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(request(same).unwrap().framing(), Framing::Length(5));
}

#[test]
fn only_a_single_chunked_coding_is_accepted_in_requests() {
    let with = |v: &str| format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n");
    for ok in ["chunked", "Chunked", "CHUNKED", "\tchunked ", ", chunked"] {
        assert_eq!(
            request(&with(ok)).unwrap().framing(),
            Framing::Chunked,
            "{ok:?}"
        );
    }
    for (bad, status) in [
        ("gzip, chunked", 501),
        ("chunked, gzip", 501),
        ("identity", 501),
        ("xchunked", 501),
        ("chunked;q=1", 501),
        ("chunked, chunked", 400),
        ("", 400),
        (",", 400),
    ] {
        assert_eq!(status_of(&with(bad)), status, "Transfer-Encoding: {bad:?}");
    }
    let split = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status_of(split), 400, "chunked twice across two fields");
    let vt = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\x0b\r\n\r\n";
    assert_ne!(
        status_of(vt),
        200,
        "a control character is no part of a coding"
    );
    let http10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status_of(http10), 400, "HTTP/1.0 has no chunked coding");
}

#[test]
fn malformed_field_lines_are_refused_not_guessed_at() {
    for raw in [
        // Whitespace between name and colon: one parser's Transfer-Encoding, another's junk.
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
        // obs-fold.
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",
        // A NUL or another control byte in a value (fields tidegate does not read are
        // forwarded as they came: the parser is their only check), a space in a name, a
        // bare CR.
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n",
        // Versions other than 1.0 and 1.1, junk methods.
        "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "G\"T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert_eq!(status_of(raw), 400, "{raw:?}");
    }
}

#[test]
fn bare_lf_line_ends_are_read_as_line_ends() {
    // RFC 9112 2.2 allows it; tidegate writes its own CRLF heads upstream, so no other
    // parser ever sees these line ends.
    let h = request("GET / HTTP/1.1\nHost: a\n\n").unwrap();
    assert_eq!(h.framing(), Framing::Empty);
}

#[test]
fn http11_needs_exactly_one_host() {
    assert_eq!(status_of("GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(
        status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        400
    );
    assert_eq!(status_of("GET / HTTP/1.0\r\n\r\n"), 200);
    assert_eq!(
        status_of("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"),
        400
    );
}

#[test]
fn request_targets_take_the_form_their_method_allows() {
    assert_eq!(status_of("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    assert_eq!(status_of("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of("GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    assert_eq!(
        status_of("GET HTTPS://a/b HTTP/1.1\r\nHost: a\r\n\r\n"),
        200
    );
    assert_eq!(status_of("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    assert_eq!(status_of("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
    assert_eq!(status_of("CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
}

#[test]
fn connection_expect_and_upgrade_are_read_as_tokens() {
    let h = request("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    assert!(!request("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
    assert!(
        request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .keep_alive
    );
    let h =
        request("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap();
    assert!(h.expect_continue);
    let ws = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(request(ws).unwrap().upgrade);
    let no_field = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n";
    assert!(!request(no_field).unwrap().upgrade);
    let not_listed = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
    assert!(!request(not_listed).unwrap().upgrade);
}

#[test]
fn pipelined_requests_are_read_one_after_another() {
    let raw = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut head = RequestHead::default();
    let mut at = 0;
    let mut seen = Vec::new();
    while at < raw.len() {
        assert!(head.parse(&raw[at..], MAX).unwrap());
        let buf = &raw[at..];
        seen.push(String::from_utf8_lossy(head.target.of(buf)).into_owned());
        let body = match head.framing() {
            Framing::Length(n) => n as usize,
            _ => 0,
        };
        at += head.len + body;
    }
    assert_eq!(seen, ["/1", "/2", "/3"]);
}

#[test]
fn an_incomplete_head_asks_for_more_until_the_limit() {
    let mut head = RequestHead::default();
    assert_eq!(head.parse(b"GET / HTTP/1.1\r\nHost: a\r\n", MAX), Ok(false));
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: {}", "a".repeat(MAX));
    assert_eq!(status_of(&long), 431);
    let many: String = (0..MAX_FIELDS).map(|i| format!("X-{i}: a\r\n")).collect();
    assert_eq!(
        status_of(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
        431
    );
}

#[test]
fn responses_are_framed_by_method_status_and_fields() {
    let r = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET").unwrap();
    assert_eq!((r.framing(), r.keep_alive), (Framing::Length(5), true));
    for (raw, method) in [
        ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "HEAD"),
        (
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            "GET",
        ),
        (
            "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET",
        ),
        ("HTTP/1.1 100 Continue\r\n\r\n", "PUT"),
    ] {
        let r = response(raw, method).unwrap();
        assert_eq!(
            (r.framing(), r.keep_alive),
            (Framing::Empty, true),
            "{raw:?}"
        );
    }
    let r = response("HTTP/1.1 200 OK\r\n\r\n", "GET").unwrap();
    assert_eq!((r.framing(), r.keep_alive), (Framing::UntilClose, false));
    let both = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    let r = response(both, "GET").unwrap();
    assert_eq!(r.framing(), Framing::Chunked);
    assert!(
        r.drop_content_length,
        "Transfer-Encoding wins; the length is not passed on"
    );
    let gzip = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "GET").unwrap();
    assert_eq!(
        (gzip.framing(), gzip.keep_alive),
        (Framing::UntilClose, false)
    );
    let old = response(
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET",
    )
    .unwrap();
    assert_eq!(
        (old.framing(), old.keep_alive),
        (Framing::UntilClose, false)
    );
    let close = response(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
        "GET",
    );
    assert!(!close.unwrap().keep_alive);
    let bad = response("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", "GET");
    assert!(matches!(bad, Err(HeadError::Malformed(_))));
}

/// Decodes `input` fed in pieces of `step` bytes: the body, and the trailers.
fn dechunk(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>, usize), ChunkError> {
    let mut d = ChunkedDecoder::new(1024, 1024);
    let mut body = Vec::new();
    let mut fed = 0;
    let mut at = 0;
    while !d.is_done() {
        if at == fed {
            if fed == input.len() {
                break;
            }
            fed = (fed + step).min(input.len());
        }
        let (n, found) = d.decode(&input[at..fed])?;
        if let Decoded::Data(r) = found {
            body.extend_from_slice(&input[at..fed][r]);
        }
        at += n;
    }
    assert!(d.is_done(), "the body did not end: {input:?}");
    Ok((body, d.trailers().to_vec(), at))
}

#[test]
fn a_chunked_body_decodes_alike_in_any_pieces() {
    let input = b"5\r\nhello\r\nA;name=val;flag\r\n, world!!!\r\n1 ; x\r\n?\r\n0\r\n\r\nNEXT";
    for step in [1, 2, 3, 7, input.len()] {
        let (body, trailers, used) = dechunk(input, step).unwrap();
        assert_eq!(body, b"hello, world!!!?", "step {step}");
        assert!(trailers.is_empty());
        assert_eq!(&input[used..], b"NEXT", "the next request is left alone");
    }
}

#[test]
fn chunk_sizes_and_line_ends_are_strict() {
    for bad in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhelloX\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        b"10000000000000000\r\n",
        b"5;a\x01\r\nhello\r\n0\r\n\r\n",
        b"0\r\n\n",
    ] {
        assert!(
            dechunk(bad, 1).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let too_long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(2000));
    assert_eq!(dechunk(too_long.as_bytes(), 64), Err(ChunkError::TooLong));
    let mut d = ChunkedDecoder::new(64, 64);
    assert_eq!(d.decode(b"fFfF\r\n"), Ok((6, Decoded::NeedMore)));
    assert_eq!(
        d.decode(b"ab"),
        Ok((2, Decoded::Data(0..2))),
        "0xffff bytes follow"
    );
}

#[test]
fn trailers_are_kept_when_they_are_fields() {
    let (body, trailers, _) = dechunk(b"2\r\nhi\r\n0\r\nX-Sum: 12\r\nX-B: 2\r\n\r\n", 1).unwrap();
    assert_eq!(body, b"hi");
    assert_eq!(trailers, b"X-Sum: 12\r\nX-B: 2\r\n");
    for bad in [
        &b"0\r\nno colon\r\n\r\n"[..],
        b"0\r\nX-A: 1\r\n folded\r\n\r\n",
        b"0\r\nX-A : 1\r\n\r\n",
    ] {
        assert_eq!(dechunk(bad, 1), Err(ChunkError::Trailer), "{bad:?}");
    }
}

#[test]
fn chunk_headers_are_written_in_hex() {
    let mut out = Vec::new();
    write_chunk_header(255, &mut out);
    write_chunk_header(1, &mut out);
    assert_eq!(out, b"ff\r\n1\r\n");
}

#[test]
fn a_response_without_a_reason_phrase_parses() {
    // Found by the response_head fuzz target: the missing reason's span pointed outside.
    let raw = "HTTP/1.0 121\n\nHTTP/\r.";
    let head = response(raw, "GET").expect("parses");
    assert_eq!((head.status, head.len), (121, 14));
    assert!(head.reason.is_empty());
    assert_eq!(head.framing(), Framing::Empty);
}

#[test]
fn framing_fields_are_known_in_any_case_and_look_alikes_are_not() {
    let h = request("POST / HTTP/1.1\r\nhOsT: a\r\nCONTENT-LENGTH: 5\r\n\r\n").unwrap();
    assert_eq!(h.framing(), Framing::Length(5));
    let h = request("POST / HTTP/1.1\r\nHost: a\r\nTransfer-ENCODING: chunked\r\n\r\n").unwrap();
    assert_eq!(h.framing(), Framing::Chunked);
    // Same length, one byte off: `_` for `-` (a token character some servers fold), `k` for `c`.
    let h = request("POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 5\r\n\r\n").unwrap();
    assert_eq!(h.framing(), Framing::Empty);
    let h = request("GET / HTTP/1.1\r\nHost: a\r\nKonnection: close\r\n\r\n").unwrap();
    assert!(h.keep_alive);
    let h = request("GET / HTTP/1.1\r\nHost: a\r\nCONNECTION: close\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    let r = response(
        "HTTP/1.1 200 OK\r\nConTent-Length: 3\r\nCONNECTION: close\r\n\r\n",
        "GET",
    )
    .unwrap();
    assert_eq!(r.framing(), Framing::Length(3));
    assert!(!r.keep_alive);
}
