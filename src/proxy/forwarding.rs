//! Forwarding headers: who the client is and how it came (`X-Forwarded-*`, `X-Real-IP`,
//! `Forwarded`), believed only from trusted proxies, and the request id.
//!
//! What the upstream receives:
//! - `X-Forwarded-For`: one line, every incoming line's values in order, joined, then the
//!   address of the connection's peer. Repeated lines are one list (RFC 9110 §5.3), so a client
//!   cannot push its own value past tidegate's by sending a second line.
//! - `X-Real-IP`: the client's address. From an untrusted peer, the peer's address; from a
//!   trusted proxy, the rightmost `X-Forwarded-For` address that is not a trusted proxy (the
//!   walk stops at a value that is not an address). A client's own `X-Real-IP` never passes.
//! - `X-Forwarded-Proto`, `X-Forwarded-Host`: a trusted proxy's values are kept (and set when
//!   it sent none); anyone else's are replaced by what tidegate saw.
//! - `Forwarded` (RFC 7239): kept from a trusted proxy, removed from anyone else; tidegate adds
//!   none of its own (`X-Forwarded-*` says the same).

use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Addresses whose forwarding headers are believed: a listener's `trusted_proxies`.
#[derive(Debug, Default)]
pub struct TrustedProxies(Box<[IpNet]>);

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address.
pub fn parse_range(text: &str) -> Option<IpNet> {
    let t = text.trim();
    t.parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

impl TrustedProxies {
    pub fn new(ranges: &[IpNet]) -> TrustedProxies {
        TrustedProxies(ranges.into())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The other end of a client connection, made once per connection. Its address is kept as
/// the text the fields carry, in place: part of what every idle connection holds.
#[derive(Clone)]
pub struct Peer {
    ip_text: [u8; IP_TEXT_MAX],
    ip_len: u8,
    /// Set when the peer is a trusted proxy: the list its forwarding headers are walked with.
    trusted: Option<Arc<TrustedProxies>>,
}

/// The longest address text: eight groups of four hex digits and seven colons.
const IP_TEXT_MAX: usize = 39;

impl Peer {
    pub fn new(ip: IpAddr, trusted: &Arc<TrustedProxies>) -> Peer {
        let ip = plain_ip(ip);
        let mut ip_text = [0u8; IP_TEXT_MAX];
        let mut out = &mut ip_text[..];
        // Cannot fail: every plain address fits (an IPv4-mapped one is written as IPv4).
        let _ = write!(out, "{ip}");
        let ip_len = (IP_TEXT_MAX - out.len()) as u8;
        Peer {
            ip_text,
            ip_len,
            trusted: trusted.contains(ip).then(|| trusted.clone()),
        }
    }

    fn ip_text(&self) -> &[u8] {
        &self.ip_text[..usize::from(self.ip_len)]
    }

    fn ip(&self) -> IpAddr {
        parse_entry(self.ip_text()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

/// The forwarding fields a request goes on with (see the module doc): the values tidegate
/// sets, the client's own fields they replace already taken out of the map. tidegate's own
/// HTTP/1.1 upstream path writes them after the map's fields; hyper's paths get them in the
/// map (`insert_into`). Most requests carry none of these fields, and then this costs no
/// map operation at all.
pub struct Forwarding<'a> {
    forwarded_for: Cow<'a, [u8]>,
    real_ip: Cow<'a, [u8]>,
    /// None: a trusted proxy's value stays.
    proto: Option<HeaderValue>,
    /// None: a trusted proxy's value stays, or there is no host to say.
    host: Option<HeaderValue>,
    /// None: the client's id stays.
    request_id: Option<RequestId>,
}

// Which forwarding fields a request came with.
const FOR_BIT: u8 = 1;
const REAL_IP_BIT: u8 = 2;
const PROTO_BIT: u8 = 4;
const HOST_BIT: u8 = 8;
const FORWARDED_BIT: u8 = 16;
const REQUEST_ID_BIT: u8 = 32;

/// A (lower-case) field name's bit; 0 for a name that is none of the forwarding fields.
fn forwarding_bit(name: &str) -> u8 {
    match name {
        "x-forwarded-for" => FOR_BIT,
        "x-real-ip" => REAL_IP_BIT,
        "x-forwarded-proto" => PROTO_BIT,
        "x-forwarded-host" => HOST_BIT,
        "forwarded" => FORWARDED_BIT,
        "x-request-id" => REQUEST_ID_BIT,
        _ => 0,
    }
}

impl<'a> Forwarding<'a> {
    /// Works out the fields for a request from `peer` (on a TLS listener when `tls`) for
    /// `host`, and takes the client's fields they replace, or that may not pass, out of
    /// `headers`.
    pub fn new(
        headers: &mut HeaderMap,
        peer: &'a Peer,
        tls: bool,
        host: Option<HeaderValue>,
    ) -> Forwarding<'a> {
        // One pass over the names; a removal is a hash lookup, made only for what is there.
        let present = headers
            .keys()
            .fold(0u8, |found, k| found | forwarding_bit(k.as_str()));
        let trusted = peer.trusted.as_deref();
        let forwarded_for = if present & FOR_BIT != 0 {
            joined_forwarded_for(headers, peer.ip_text())
        } else {
            Cow::Borrowed(peer.ip_text())
        };
        let real_ip = match trusted {
            Some(trusted) if present & FOR_BIT != 0 => Cow::Owned(
                client_behind(&forwarded_for, peer.ip(), trusted)
                    .to_string()
                    .into_bytes(),
            ),
            _ => Cow::Borrowed(peer.ip_text()),
        };
        // A trusted proxy's scheme, host and `Forwarded` stay; every other client field of
        // these goes, replaced by tidegate's.
        let kept = present
            & match trusted {
                Some(_) => PROTO_BIT | HOST_BIT | FORWARDED_BIT,
                None => 0,
            };
        for (bit, name) in [
            (FOR_BIT, &X_FORWARDED_FOR),
            (REAL_IP_BIT, &X_REAL_IP),
            (PROTO_BIT, &X_FORWARDED_PROTO),
            (HOST_BIT, &X_FORWARDED_HOST),
            (FORWARDED_BIT, &FORWARDED),
        ] {
            if present & !kept & bit != 0 {
                headers.remove(name);
            }
        }
        Forwarding {
            forwarded_for,
            real_ip,
            proto: (kept & PROTO_BIT == 0)
                .then(|| HeaderValue::from_static(if tls { "https" } else { "http" })),
            host: if kept & HOST_BIT != 0 { None } else { host },
            request_id: (present & REQUEST_ID_BIT == 0).then(RequestId::new),
        }
    }

    /// The fields as they go to the next hop, in the order they are written.
    fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, &[u8])> {
        [
            (&X_FORWARDED_FOR, Some(&self.forwarded_for[..])),
            (&X_REAL_IP, Some(&self.real_ip[..])),
            (
                &X_FORWARDED_PROTO,
                self.proto.as_ref().map(|v| v.as_bytes()),
            ),
            (&X_FORWARDED_HOST, self.host.as_ref().map(|v| v.as_bytes())),
            (&X_REQUEST_ID, self.request_id.as_ref().map(|id| &id.0[..])),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }

    /// Writes the fields as HTTP/1.1 field lines.
    pub fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in self.fields() {
            super::h1::write_field(name.as_str().as_bytes(), value, out);
        }
    }

    /// Puts the fields in `headers`, for a request hyper sends.
    pub fn insert_into(self, headers: &mut HeaderMap) {
        for (name, value) in [
            (&X_FORWARDED_FOR, self.forwarded_for),
            (&X_REAL_IP, self.real_ip),
        ] {
            // Addresses, and client values that were valid field values: always valid.
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value.into_owned())) {
                headers.insert(name.clone(), value);
            }
        }
        if let Some(proto) = self.proto {
            headers.insert(X_FORWARDED_PROTO.clone(), proto);
        }
        if let Some(host) = self.host {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        if let Some(id) = self.request_id {
            headers.insert(X_REQUEST_ID.clone(), id.value());
        }
    }
}

/// Sets the forwarding headers (see the module doc) and keeps or generates `x-request-id`.
pub fn add_forwarding(headers: &mut HeaderMap, peer: &Peer, tls: bool, host: Option<&HeaderValue>) {
    Forwarding::new(headers, peer, tls, host.cloned()).insert_into(headers);
}

/// Every `X-Forwarded-For` line's values in order, then `peer`, as one value.
fn joined_forwarded_for<'a>(headers: &HeaderMap, peer: &'a [u8]) -> Cow<'a, [u8]> {
    let mut lines = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter(|v| !v.as_bytes().trim_ascii().is_empty())
        .peekable();
    if lines.peek().is_none() {
        return Cow::Borrowed(peer);
    }
    let mut joined = Vec::with_capacity(64);
    for line in lines {
        joined.extend_from_slice(line.as_bytes().trim_ascii());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(peer);
    Cow::Owned(joined)
}

/// Walks `X-Forwarded-For` from the right while the hop that vouches for the next address is
/// trusted; the last entry is `peer` itself.
fn client_behind(forwarded_for: &[u8], peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    for entry in forwarded_for.rsplit(|&b| b == b',').skip(1) {
        if !trusted.contains(client) {
            break;
        }
        match parse_entry(entry) {
            Some(ip) => client = ip,
            None => break,
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<std::net::SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(plain_ip)
}

/// IPv4 clients of a dual-stack socket arrive as `::ffff:a.b.c.d`: speak of them as IPv4.
fn plain_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A request id: 32 random hex digits.
struct RequestId([u8; 32]);

impl RequestId {
    fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 32];
        for (pair, byte) in digits
            .chunks_exact_mut(2)
            .zip(fastrand::u128(..).to_le_bytes())
        {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        RequestId(digits)
    }

    /// As a field value. Written into a block shared by the next ids of this thread: an id
    /// costs a reference count, not an allocation of its own.
    fn value(&self) -> HeaderValue {
        thread_local! {
            static IDS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
        }
        let id = IDS.with_borrow_mut(|block| {
            if block.capacity() < self.0.len() {
                *block = BytesMut::with_capacity(self.0.len() * 128);
            }
            block.extend_from_slice(&self.0);
            block.split().freeze()
        });
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_request_id() -> HeaderValue {
        RequestId::new().value()
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn trusted(ranges: &[&str]) -> Arc<TrustedProxies> {
        let nets: Vec<IpNet> = ranges.iter().map(|r| parse_range(r).unwrap()).collect();
        Arc::new(TrustedProxies::new(&nets))
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn repeated_forwarded_for_lines_become_one_list_ending_with_the_peer() {
        let peer = Peer::new("10.0.0.9".parse().unwrap(), &trusted(&[]));
        let mut h = map(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2, 192.0.2.3"),
            ("x-real-ip", "192.0.2.2"),
        ]);
        add_forwarding(&mut h, &peer, false, None);
        assert_eq!(
            all(&h, "x-forwarded-for"),
            ["192.0.2.1, 192.0.2.2, 192.0.2.3, 10.0.0.9"]
        );
        assert_eq!(
            all(&h, "x-real-ip"),
            ["10.0.0.9"],
            "a client's X-Real-IP never passes"
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_set_scheme_host_or_forwarded() {
        let peer = Peer::new("10.0.0.9".parse().unwrap(), &trusted(&["10.1.0.0/16"]));
        let mut h = map(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-host", "evil2.example"),
            ("forwarded", "for=192.0.2.1;proto=https"),
            ("forwarded", "for=192.0.2.2"),
            ("x-request-id", "abc"),
        ]);
        add_forwarding(
            &mut h,
            &peer,
            false,
            Some(&HeaderValue::from_static("shop.example")),
        );
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["shop.example"]);
        assert!(!h.contains_key("forwarded"), "{h:?}");
        assert_eq!(
            all(&h, "x-request-id"),
            ["abc"],
            "a client request id is kept"
        );
        let mut h = map(&[("x-forwarded-host", "evil.example")]);
        add_forwarding(&mut h, &peer, true, None);
        assert!(!h.contains_key("x-forwarded-host"), "{h:?}");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"].len(), 32);
    }

    #[test]
    fn a_trusted_proxy_says_who_the_client_is() {
        let list = trusted(&["10.0.0.0/8", "192.168.1.1"]);
        let peer = Peer::new("10.0.0.9".parse().unwrap(), &list);
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.7, 203.0.113.5"),
            ("x-forwarded-for", "192.168.1.1"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.5;proto=https"),
        ]);
        add_forwarding(
            &mut h,
            &peer,
            false,
            Some(&HeaderValue::from_static("shop.example")),
        );
        assert_eq!(
            h["x-forwarded-for"],
            "198.51.100.7, 203.0.113.5, 192.168.1.1, 10.0.0.9"
        );
        // 10.0.0.9 and 192.168.1.1 are trusted; 203.0.113.5 is the first that is not.
        assert_eq!(h["x-real-ip"], "203.0.113.5");
        assert_eq!(
            h["x-forwarded-proto"], "https",
            "a trusted proxy's scheme is kept"
        );
        assert_eq!(
            h["x-forwarded-host"], "shop.example",
            "set when it sent none"
        );
        assert_eq!(h["forwarded"], "for=203.0.113.5;proto=https");

        // The walk stops at a value that is not an address, and at the end of the list.
        let mut h = map(&[("x-forwarded-for", "unknown, 10.2.3.4:8080")]);
        add_forwarding(&mut h, &peer, false, None);
        assert_eq!(h["x-real-ip"], "10.2.3.4");
        let mut h = map(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        add_forwarding(&mut h, &peer, false, None);
        assert_eq!(h["x-real-ip"], "2001:db8::1");
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &peer, false, None);
        assert_eq!(h["x-real-ip"], "10.0.0.9");
    }

    #[test]
    fn ipv4_peers_of_a_dual_stack_socket_read_as_ipv4() {
        let list = trusted(&["127.0.0.0/8"]);
        let peer = Peer::new("::ffff:127.0.0.1".parse().unwrap(), &list);
        assert!(peer.trusted.is_some());
        let mut h = HeaderMap::new();
        add_forwarding(&mut h, &peer, false, None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_ne!(new_request_id(), new_request_id());

        // The longest address text there is goes on whole.
        let long = "1234:5678:9abc:def0:1234:5678:9abc:def0";
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &Peer::new(long.parse().unwrap(), &list),
            false,
            None,
        );
        assert_eq!(h["x-forwarded-for"], long);
        assert_eq!(h["x-real-ip"], long);
    }

    #[test]
    fn request_ids_are_32_hex_digits_and_differ_across_shared_blocks() {
        let ids: Vec<HeaderValue> = (0..1000).map(|_| new_request_id()).collect();
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
