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
    pub fn is(&self, buf: &[u8], name: &str) -> bool {
        self.name.of(buf).eq_ignore_ascii_case(name.as_bytes())
    }
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
