//! Hop-by-hop header rules between client and upstream, and the checks of a request head.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::error::ProxyError;
use super::h1::KnownField;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (but `TE: trailers` stays, gRPC needs it),
/// `Transfer-Encoding` and `Upgrade`.
/// With `upgrade` the `Upgrade` header and `Connection: upgrade` are kept for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    strip(headers, upgrade, 0);
}

/// `strip_hop_by_hop` for a request going upstream, and `Expect` too: tidegate answers
/// `100-continue` itself.
pub fn strip_for_upstream(headers: &mut HeaderMap, upgrade: bool) {
    strip(headers, upgrade, EXPECT_BIT);
}

fn strip(headers: &mut HeaderMap, upgrade: bool, also: u8) {
    // One pass over the names says which are present; a removal is a hash lookup, and most
    // messages carry none of these or only `Connection: keep-alive`.
    let present = headers.keys().fold(0u8, |found, k| {
        found | (field_bit(KnownField::of(k.as_str().as_bytes())) & (HOP_BY_HOP | also))
    });
    if present == 0 && !upgrade {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            named.extend(
                connection_options(value.as_bytes())
                    .filter_map(|option| HeaderName::from_bytes(option).ok()),
            );
        }
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if present & EXPECT_BIT != 0 {
        headers.remove(header::EXPECT);
    }
    if present & KEEP_ALIVE_BIT != 0 {
        headers.remove(&KEEP_ALIVE);
    }
    if present & PROXY_CONNECTION_BIT != 0 {
        headers.remove(&PROXY_CONNECTION);
    }
    if present & TRANSFER_ENCODING_BIT != 0 {
        headers.remove(header::TRANSFER_ENCODING);
    }
    if present & TE_BIT != 0
        && let Some(te) = headers.remove(header::TE)
        && te.to_str().is_ok_and(|t| {
            t.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
        })
    {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

/// The options of a `Connection` value that name fields to remove on their own: not
/// `close`, and not `keep-alive` or `upgrade`, removed anyway.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|o| {
            !o.is_empty()
                && !o.eq_ignore_ascii_case(b"keep-alive")
                && !o.eq_ignore_ascii_case(b"close")
                && !o.eq_ignore_ascii_case(b"upgrade")
        })
}

// Which hop-by-hop headers `strip_hop_by_hop`'s one pass found.
const CONNECTION_BIT: u8 = 1;
const KEEP_ALIVE_BIT: u8 = 2;
const PROXY_CONNECTION_BIT: u8 = 4;
const TE_BIT: u8 = 8;
const TRANSFER_ENCODING_BIT: u8 = 16;
const UPGRADE_BIT: u8 = 32;
const HOP_BY_HOP: u8 = CONNECTION_BIT
    | KEEP_ALIVE_BIT
    | PROXY_CONNECTION_BIT
    | TE_BIT
    | TRANSFER_ENCODING_BIT
    | UPGRADE_BIT;
/// Not hop-by-hop: removed from requests only.
const EXPECT_BIT: u8 = 64;

/// A field's bit; 0 for a field none of these rules removes.
fn field_bit(field: KnownField) -> u8 {
    match field {
        KnownField::Connection => CONNECTION_BIT,
        KnownField::KeepAlive => KEEP_ALIVE_BIT,
        KnownField::ProxyConnection => PROXY_CONNECTION_BIT,
        KnownField::Te => TE_BIT,
        KnownField::TransferEncoding => TRANSFER_ENCODING_BIT,
        KnownField::Upgrade => UPGRADE_BIT,
        KnownField::Expect => EXPECT_BIT,
        _ => 0,
    }
}

/// Whether a field is one of the hop-by-hop fields `strip_hop_by_hop` removes (those a
/// `Connection` field names aside).
pub fn is_hop_by_hop(field: KnownField) -> bool {
    field_bit(field) & HOP_BY_HOP != 0
}

/// True for an HTTP/1.1 request that asks to switch protocols (WebSocket and the like).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Checks a request head in one pass over its fields: at most `max_bytes` of names and
/// values (`raw_bytes` of them in fields kept out of the map), and one `Host` (RFC 9112
/// §3.2: a second one could route by one name and reach the upstream with another).
pub fn check_request_head(
    headers: &HeaderMap,
    raw_bytes: usize,
    max_bytes: usize,
) -> Result<(), ProxyError> {
    let (mut bytes, mut hosts) = (raw_bytes, 0);
    for (k, v) in headers {
        bytes += k.as_str().len() + v.len() + 4;
        hosts += usize::from(k == header::HOST);
    }
    if bytes > max_bytes {
        return Err(ProxyError::HeaderTooLarge(max_bytes));
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        // Every Connection header counts, not only the first.
        let mut h = map(&[
            ("connection", "close"),
            ("connection", "x-second"),
            ("x-second", "1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn a_request_going_upstream_loses_expect_as_well() {
        // tidegate answers a client's 100-continue itself; the upstream never sees it.
        let fields = [("expect", "100-continue"), ("x-kept", "yes")];
        let mut h = map(&fields);
        strip_for_upstream(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        let mut h = map(&fields);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn keeps_te_trailers_and_upgrade_when_upgrading() {
        let mut h = map(&[
            ("te", "trailers, deflate"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(is_upgrade_request(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade_request(&map(&[("upgrade", "websocket")])));
    }
}
