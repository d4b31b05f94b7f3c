//! Header rules between client and upstream: hop-by-hop removal, forwarding headers, request ids.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `TE` (but `TE: trailers` stays, gRPC needs it),
/// `Transfer-Encoding` and `Upgrade`.
/// With `upgrade` the `Upgrade` header and `Connection: upgrade` are kept for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names says which are present; a removal is a hash lookup, and most
    // messages carry none of these or only `Connection: keep-alive`.
    let present = headers
        .keys()
        .fold(0u8, |found, k| found | hop_by_hop_bit(k));
    if present == 0 && !upgrade {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for option in value.as_bytes().split(|&b| b == b',') {
                if let Some(name) = named_header(option) {
                    named.push(name);
                }
            }
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

/// The header a `Connection` option names, if it needs removing on its own: options that
/// name no header, or one removed anyway, need no lookup.
fn named_header(option: &[u8]) -> Option<HeaderName> {
    let option = option.trim_ascii();
    if option.is_empty()
        || option.eq_ignore_ascii_case(b"keep-alive")
        || option.eq_ignore_ascii_case(b"close")
        || option.eq_ignore_ascii_case(b"upgrade")
    {
        return None;
    }
    HeaderName::from_bytes(option).ok()
}

// Which hop-by-hop headers `strip_hop_by_hop`'s one pass found.
const CONNECTION_BIT: u8 = 1;
const KEEP_ALIVE_BIT: u8 = 2;
const PROXY_CONNECTION_BIT: u8 = 4;
const TE_BIT: u8 = 8;
const TRANSFER_ENCODING_BIT: u8 = 16;
const UPGRADE_BIT: u8 = 32;

fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    // Names are lowercase; most are rejected on their length alone.
    match name.as_str() {
        "connection" => CONNECTION_BIT,
        "keep-alive" => KEEP_ALIVE_BIT,
        "proxy-connection" => PROXY_CONNECTION_BIT,
        "te" => TE_BIT,
        "transfer-encoding" => TRANSFER_ENCODING_BIT,
        "upgrade" => UPGRADE_BIT,
        _ => 0,
    }
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

/// Appends the client address to `X-Forwarded-For`, sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host`, and keeps or generates `x-request-id`.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    // Entries, not a lookup and then an insert: each costs a hash of the name.
    match headers.entry(X_FORWARDED_FOR.clone()) {
        Entry::Occupied(mut existing) => {
            let existing = existing.get_mut();
            let mut v = Vec::with_capacity(existing.len() + 2 + client_ip.len());
            v.extend_from_slice(existing.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                *existing = v;
            }
        }
        Entry::Vacant(slot) => {
            slot.insert(client_ip.clone());
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    headers
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(new_request_id);
}

/// 32 random hex digits.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (pair, byte) in buf
        .chunks_exact_mut(2)
        .zip(fastrand::u128(..).to_le_bytes())
    {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The client address as a header value, made once per connection.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Bytes of all header names and values, to hold requests to the header size limit.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
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

    #[test]
    fn forwarding_headers_append_and_keep_request_id() {
        let ip = ip_header_value("10.0.0.9".parse().unwrap());
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("x-request-id", "abc")]);
        add_forwarding(
            &mut h,
            &ip,
            true,
            Some(&HeaderValue::from_static("shop.example")),
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "shop.example");
        assert_eq!(h["x-request-id"], "abc");
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &ip, false, None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-request-id"].len(), 32);
        assert_ne!(new_request_id(), new_request_id());
    }
}
