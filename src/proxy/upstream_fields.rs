//! An HTTP/1.1 upstream response's fields as they came, kept as spans of its head: written to
//! a client tidegate serves itself without being rebuilt, and made a header map only for a
//! client hyper serves. Hop-by-hop fields (RFC 9110 7.6.1) go no further either way.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::h1::{Field, KnownField, MAX_FIELDS, write_lines};
use super::headers::{connection_options, is_hop_by_hop};
use super::spares;

pub struct UpstreamFields {
    head: Bytes,
    fields: Vec<Field>,
    /// Bit `i` set: field `i` goes no further.
    dropped: u128,
    has_content_length: bool,
}

// A head has at most `MAX_FIELDS` fields: each has its bit in `dropped`.
const _: () = assert!(MAX_FIELDS <= u128::BITS as usize);

impl UpstreamFields {
    /// `drop_content_length`: Transfer-Encoding won over a Content-Length, which is not
    /// passed on.
    pub(super) fn new(head: Bytes, fields: Vec<Field>, drop_content_length: bool) -> Self {
        let (mut dropped, mut has_content_length) = (0u128, false);
        for (i, f) in fields.iter().enumerate() {
            let known = KnownField::of(f.name.of(&head));
            let content_length = known == KnownField::ContentLength;
            if is_hop_by_hop(known) || (content_length && drop_content_length) {
                dropped |= 1 << i;
            } else {
                has_content_length |= content_length;
            }
        }
        // Names a `Connection` field lists are hop-by-hop too; most responses name none.
        for c in fields.iter().filter(|f| f.is(&head, "connection")) {
            for option in connection_options(c.value.of(&head)) {
                for (i, f) in fields.iter().enumerate() {
                    if f.name.of(&head).eq_ignore_ascii_case(option) {
                        dropped |= 1 << i;
                        has_content_length &= !f.is(&head, "content-length");
                    }
                }
            }
        }
        UpstreamFields {
            head,
            fields,
            dropped,
            has_content_length,
        }
    }

    /// The fields that go on to the client, as name and value, in the order they came.
    fn passed(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .enumerate()
            .filter(|(i, _)| self.dropped & (1 << i) == 0)
            .map(|(_, f)| (f.name.of(&self.head), f.value.of(&self.head)))
    }

    /// Whether a Content-Length goes on (the body's framing needs no other).
    pub fn has_content_length(&self) -> bool {
        self.has_content_length
    }

    /// Writes the passed fields in the order they came (most responses drop one field at
    /// most, so most go out in one copy).
    pub fn write(&self, out: &mut Vec<u8>) {
        let passed = self
            .fields
            .iter()
            .enumerate()
            .filter(|(i, _)| self.dropped & (1 << i) == 0)
            .map(|(_, f)| f);
        write_lines(&self.head, passed, out);
    }

    /// The passed fields put before those of `added` (what tidegate adds, Set-Cookie...).
    pub fn into_map(self, added: &HeaderMap) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + added.len());
        for (name, value) in self.passed() {
            let value = self.head.slice_ref(value);
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name),
                HeaderValue::from_maybe_shared(value),
            ) {
                map.append(name, value);
            }
        }
        for (name, value) in added {
            map.append(name, value.clone());
        }
        map
    }
}

impl Drop for UpstreamFields {
    fn drop(&mut self) {
        spares::give_back_field_list(std::mem::take(&mut self.fields));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::ResponseHead;

    fn fields(raw: &str) -> UpstreamFields {
        let bytes = Bytes::copy_from_slice(raw.as_bytes());
        let mut head = ResponseHead::default();
        assert!(head.parse(&bytes, 64 * 1024, b"GET").expect("a valid head"));
        UpstreamFields::new(bytes, head.fields.clone(), head.drop_content_length)
    }

    fn written(f: &UpstreamFields) -> String {
        let mut out = Vec::new();
        f.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_stop_here_and_the_rest_go_on_as_they_came() {
        let f = fields(
            "HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nUpgrade: h2c\r\n\
             TE: trailers\r\nSet-Cookie: a=1\r\nContent-Length: 2\r\nSet-Cookie: b=2\r\n\r\n",
        );
        assert_eq!(
            written(&f),
            "Server: s\r\nSet-Cookie: a=1\r\nContent-Length: 2\r\nSet-Cookie: b=2\r\n"
        );
        assert!(f.has_content_length());

        let mut added = HeaderMap::new();
        added.append("set-cookie", HeaderValue::from_static("canary=v2"));
        let map = f.into_map(&added);
        let cookies: Vec<_> = map.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2", "canary=v2"]);
        assert_eq!(map["content-length"], "2");
        assert!(!map.contains_key("x-secret") && !map.contains_key("connection"));
    }

    #[test]
    fn lines_go_on_byte_for_byte_and_bare_lf_or_empty_values_are_written_anew() {
        let f = fields(
            "HTTP/1.1 200 OK\r\nX-A:1\r\nX-B:  two  \r\nConnection: close\r\nX-C: 3\n\
             X-D:\r\nX-E: 5\r\n\r\n",
        );
        assert_eq!(
            written(&f),
            "X-A:1\r\nX-B:  two  \r\nX-C: 3\r\nX-D: \r\nX-E: 5\r\n"
        );
    }

    #[test]
    fn a_content_length_that_transfer_encoding_overrode_is_not_passed_on() {
        let f =
            fields("HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(written(&f), "");
        assert!(!f.has_content_length());
    }
}
