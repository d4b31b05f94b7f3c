//! Request fields tidegate neither reads nor changes, kept as spans of the head they came in
//! and written upstream as they came: no header map entry is made, hashed and freed for them.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::error::ProxyError;
use super::h1::{Field, KnownField, write_lines};
use super::headers;
use super::spares;

/// The fields of one HTTP/1.1 request head that pass untouched, over the head's bytes.
pub struct RawFields {
    head: Bytes,
    fields: Vec<Field>,
}

impl RawFields {
    /// A head's `fields`, spans of `head`, all untouched until sorted.
    pub fn new(head: Bytes, fields: Vec<Field>) -> RawFields {
        RawFields { head, fields }
    }

    /// How many fields there are.
    pub fn count(&self) -> usize {
        self.fields.len()
    }

    /// The head the fields are spans of.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    /// Moves the fields tidegate reads into `map`; the others stay. False when one that
    /// goes into the map is not valid for it.
    pub fn sort_into(&mut self, map: &mut HeaderMap) -> bool {
        let mut valid = true;
        let mut names_others = false;
        let head = &self.head;
        self.fields.retain(|f| {
            let name = f.name.of(head);
            if !read_by_tidegate(name) {
                return true;
            }
            if f.is(head, "connection") {
                names_others |= headers::connection_options(f.value.of(head))
                    .next()
                    .is_some();
            }
            valid &= append(map, head, f);
            false
        });
        // Fields a Connection field names are hop-by-hop: the map's rules remove them.
        valid && (!names_others || self.move_into(map, |_| true).is_ok())
    }

    /// Bytes the fields take as `check_request_head` counts them.
    pub fn wire_len(&self) -> usize {
        self.fields
            .iter()
            .map(|f| f.name.of(&self.head).len() + f.value.of(&self.head).len() + 4)
            .sum()
    }

    /// Writes the fields as field lines, as they came.
    pub fn write(&self, out: &mut Vec<u8>) {
        write_lines(&self.head, self.fields.iter(), out);
    }

    /// Moves the fields whose name `which` picks into `map`: for routes that match on them,
    /// and for a request that leaves by HTTP/2 or as an upgrade, which hyper writes.
    pub fn move_into(
        &mut self,
        map: &mut HeaderMap,
        which: impl Fn(&[u8]) -> bool,
    ) -> Result<(), ProxyError> {
        let mut invalid = false;
        let head = &self.head;
        self.fields.retain(|f| {
            if !which(f.name.of(head)) {
                return true;
            }
            invalid |= !append(map, head, f);
            false
        });
        if invalid {
            return Err(ProxyError::BadRequest("a request field is not valid"));
        }
        Ok(())
    }
}

/// The span list goes back to the worker's spares, for the next head.
impl Drop for RawFields {
    fn drop(&mut self) {
        spares::give_back_field_list(std::mem::take(&mut self.fields));
    }
}

fn append(map: &mut HeaderMap, head: &Bytes, f: &Field) -> bool {
    let Ok(name) = HeaderName::from_bytes(f.name.of(head)) else {
        return false;
    };
    let value = head.slice(f.value.start as usize..f.value.end as usize);
    let Ok(value) = HeaderValue::from_maybe_shared(value) else {
        return false;
    };
    map.append(name, value);
    true
}

/// Whether tidegate reads or changes a request field of this name on every route: framing
/// and hop-by-hop fields, Host, Expect and the forwarding fields. Those some routes read
/// (a matcher's, a version header, Cookie on sticky routes) are moved into the map when the
/// route table has them.
fn read_by_tidegate(name: &[u8]) -> bool {
    const READ: [&[u8]; 6] = [
        b"forwarded",
        b"x-real-ip",
        b"x-request-id",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-forwarded-proto",
    ];
    KnownField::of(name) != KnownField::Other
        || READ
            .iter()
            .any(|r| r.len() == name.len() && name.eq_ignore_ascii_case(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::Span;

    /// A head's fields as spans of one buffer, the way the parser gives them.
    fn parsed(lines: &[(&str, &str)]) -> (Bytes, Vec<Field>) {
        let mut buf = Vec::new();
        let mut fields = Vec::new();
        for (name, value) in lines {
            let at = |buf: &Vec<u8>, len: usize| Span {
                start: buf.len() as u32,
                end: (buf.len() + len) as u32,
            };
            let name_span = at(&buf, name.len());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b": ");
            let value_span = at(&buf, value.len());
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
            fields.push(Field {
                name: name_span,
                value: value_span,
            });
        }
        (Bytes::from(buf), fields)
    }

    fn written(raw: &RawFields) -> String {
        let mut out = Vec::new();
        raw.write(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_tidegate_reads_go_into_the_map_and_the_rest_pass_as_they_came() {
        let (head, fields) = parsed(&[
            ("Host", "shop.example"),
            ("User-Agent", "Mozilla/5.0"),
            ("Cookie", "tidegate=canary"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Sec-Fetch-Mode", "navigate"),
            ("Connection", "keep-alive"),
            ("accept", "text/html"),
        ]);
        let mut map = HeaderMap::new();
        let mut raw = RawFields::new(head, fields);
        assert!(raw.sort_into(&mut map));
        let names: Vec<_> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["host", "x-forwarded-for", "connection"]);
        // Names keep the client's case; order stays.
        assert_eq!(
            written(&raw),
            "User-Agent: Mozilla/5.0\r\nCookie: tidegate=canary\r\n\
             Sec-Fetch-Mode: navigate\r\naccept: text/html\r\n"
        );
        assert_eq!(
            raw.wire_len(),
            10 + 11 + 4 + 6 + 15 + 4 + 14 + 8 + 4 + 6 + 9 + 4
        );
    }

    #[test]
    fn a_connection_field_naming_others_puts_every_field_in_the_map() {
        // The map's hop-by-hop rules then remove the named ones.
        let (head, fields) = parsed(&[
            ("X-Secret", "1"),
            ("Connection", "x-secret"),
            ("X-Kept", "yes"),
        ]);
        let mut map = HeaderMap::new();
        let mut raw = RawFields::new(head, fields);
        assert!(raw.sort_into(&mut map));
        assert_eq!(written(&raw), "");
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn fields_a_route_reads_move_into_the_map_on_demand() {
        let (head, fields) = parsed(&[
            ("X-Canary", "always"),
            ("Accept", "*/*"),
            ("x-canary", "again"),
        ]);
        let mut map = HeaderMap::new();
        let mut raw = RawFields::new(head, fields);
        assert!(raw.sort_into(&mut map) && map.is_empty());
        raw.move_into(&mut map, |n| n.eq_ignore_ascii_case(b"x-canary"))
            .unwrap();
        let values: Vec<_> = map.get_all("x-canary").iter().collect();
        assert_eq!(values, ["always", "again"]);
        assert_eq!(written(&raw), "Accept: */*\r\n");
        raw.move_into(&mut map, |_| true).unwrap();
        assert_eq!((map.len(), written(&raw)), (3, String::new()));
    }
}
