//! Where a parsed head's parts sit in its buffer, the list-valued fields' token rules, and
//! how a field line is written.

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// Where `part`, a slice of `buf`, lies in it. An empty part may point elsewhere
    /// (httparse gives a missing reason phrase as a static `""`): it spans nothing.
    pub(super) fn within(buf: &[u8], part: &[u8]) -> Span {
        match (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize) {
            Some(start) if start + part.len() <= buf.len() => Span {
                start: start as u32,
                end: (start + part.len()) as u32,
            },
            _ => Span::default(),
        }
    }

    pub fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One header field: its name and value in the buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

impl Field {
    /// Whether the field's name is `lower` (a lowercase name) in any case.
    pub fn is(&self, buf: &[u8], lower: &str) -> bool {
        token_is(self.name.of(buf), lower.as_bytes())
    }
}

/// The field names tidegate acts on, for framing, routing or as hop-by-hop (RFC 9110 7.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KnownField {
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    Host,
    Expect,
    Other,
}

impl KnownField {
    /// Which known field a name (a token, as parsed heads and header maps hold) is, in any
    /// case: told apart by its length, then one comparison. Every field of every message
    /// goes through here, some more than once.
    pub fn of(name: &[u8]) -> KnownField {
        use KnownField::*;
        let (lower, known): (&[u8], KnownField) = match name.len() {
            2 => (b"te", Te),
            4 => (b"host", Host),
            6 => (b"expect", Expect),
            7 => (b"upgrade", Upgrade),
            10 if name[0] | 0x20 == b'c' => (b"connection", Connection),
            10 => (b"keep-alive", KeepAlive),
            14 => (b"content-length", ContentLength),
            16 => (b"proxy-connection", ProxyConnection),
            17 => (b"transfer-encoding", TransferEncoding),
            _ => return Other,
        };
        if token_is(name, lower) { known } else { Other }
    }
}

/// Whether `token` is `lower`, a lowercase name, in any case. Setting bit 0x20 lowercases
/// a letter and changes no other token character into a letter, digit or `-`, so for a
/// token (never for arbitrary bytes) this one operation per byte is a case-insensitive
/// comparison.
fn token_is(token: &[u8], lower: &[u8]) -> bool {
    token.len() == lower.len() && token.iter().zip(lower).all(|(t, l)| t | 0x20 == *l)
}

/// The elements of a comma-separated list value, trimmed of spaces and tabs, empty ones
/// left out (RFC 9110 5.6.1).
pub(super) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim)
        .filter(|e| !e.is_empty())
}

pub(super) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A Content-Length value: one or more equal decimal numbers (`42` or `42, 42`); None for
/// anything else (a sign, a space inside, hex, an overflow, an empty value).
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    let mut found = None;
    let mut any = false;
    for element in value.split(|b| *b == b',').map(trim) {
        any = true;
        if element.is_empty() || element.len() > 19 || !element.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = element
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match found {
            Some(m) if m != n => return None,
            _ => found = Some(n),
        }
    }
    any.then_some(found).flatten()
}

/// Writes one `name: value` field line.
pub fn write_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `fields` of the head `head`, in order. Runs of adjacent lines that end in CRLF go
/// out as they came, in one copy each; a line ending in a bare LF, or with an empty value,
/// is written anew as `name: value`.
pub fn write_lines<'a>(head: &[u8], fields: impl Iterator<Item = &'a Field>, out: &mut Vec<u8>) {
    // Bytes of lines not yet written.
    let mut run = 0..0;
    for f in fields {
        let start = f.name.start as usize;
        match crlf_line_end(head, f) {
            Some(end) => {
                if run.end != start {
                    out.extend_from_slice(&head[run]);
                    run = start..start;
                }
                run.end = end;
            }
            None => {
                out.extend_from_slice(&head[std::mem::take(&mut run)]);
                write_field(f.name.of(head), f.value.of(head), out);
            }
        }
    }
    out.extend_from_slice(&head[run]);
}

/// Where `f`'s line ends (past its LF) when it has a value and ends in CRLF.
fn crlf_line_end(head: &[u8], f: &Field) -> Option<usize> {
    if f.value.is_empty() {
        return None;
    }
    let end = f.value.end as usize;
    let rest = &head[end..];
    let lf = rest.iter().position(|&b| b == b'\n')?;
    let crlf =
        lf > 0 && rest[lf - 1] == b'\r' && rest[..lf - 1].iter().all(|&b| b == b' ' || b == b'\t');
    crlf.then_some(end + lf + 1)
}
