//! Hop-by-hop header rules between client and upstream, and the checks of a request head.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::error::ProxyError;

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (but `TE: trailers` stays, gRPC needs it),
/// `Transfer-Encoding` and `Upgrade`.
/// With `upgrade` the `Upgrade` header and `Connection: upgrade` are kept for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names says which are present; a removal is a hash lookup, and most
    // messages carry none of these or only `Connection: keep-alive`.
    let present = headers.keys().fold(0u8, |found, k| {
        found | hop_by_hop_bit(k.as_str().as_bytes())
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

/// A field name's bit, in any case; 0 for a name that is not hop-by-hop.
fn hop_by_hop_bit(name: &[u8]) -> u8 {
    // Most names are told apart by their length alone.
    let candidates: &[(&[u8], u8)] = match name.len() {
        2 => &[(b"te", TE_BIT)],
        7 => &[(b"upgrade", UPGRADE_BIT)],
        10 => &[
            (b"connection", CONNECTION_BIT),
            (b"keep-alive", KEEP_ALIVE_BIT),
        ],
        16 => &[(b"proxy-connection", PROXY_CONNECTION_BIT)],
        17 => &[(b"transfer-encoding", TRANSFER_ENCODING_BIT)],
        _ => return 0,
    };
    candidates
        .iter()
        .find(|(c, _)| name.eq_ignore_ascii_case(c))
        .map_or(0, |(_, bit)| *bit)
}

/// Whether a field name, in any case, is one of the hop-by-hop fields `strip_hop_by_hop`
/// removes (those a `Connection` field names aside).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    hop_by_hop_bit(name) != 0
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
/// values, and one `Host` (RFC 9112 §3.2: a second one could route by one name and reach the
/// upstream with another).
pub fn check_request_head(headers: &HeaderMap, max_bytes: usize) -> Result<(), ProxyError> {
    let (mut bytes, mut hosts) = (0, 0);
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
