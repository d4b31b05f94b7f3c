//! The route table: matchers, versions with weights, and the per-request choice of version and endpoint.

mod build;
mod publisher;
mod schedule;
mod source;
mod writer;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use crate::health::{Endpoint, PassivePolicy, ProbeSettings, ProbeTarget};
use crate::metrics::VersionStats;
use crate::proxy_config::UpstreamProtocol;
use crate::units::WeightBps;

pub use build::RouteWeights;
pub use publisher::TablePublisher;
pub use schedule::WeightSchedule;
pub use source::{RouteSource, SourceFuture};
pub use writer::{RouteError, RouteReader, RouteWriter};

/// An immutable snapshot of all routes. Built off the request path, published as one `Arc`.
pub struct RouteTable {
    pub routes: Vec<Arc<Route>>,
    pub passive: PassivePolicy,
    /// Every request field a route matches on or takes its version from (Cookie, when a
    /// route is sticky): the proxy keeps other fields out of a request's map on its
    /// HTTP/1.1 path.
    pub fields_read: Vec<HeaderName>,
}

pub struct Route {
    pub name: Arc<str>,
    pub matcher: RouteMatcher,
    pub versions: Vec<Version>,
    schedule: WeightSchedule,
    pub sticky: Option<Sticky>,
    /// A request header that forces a version by name.
    pub version_header: Option<HeaderName>,
    pub response_timeout: Duration,
}

/// One version of a route's service: its share of traffic and where it runs.
#[derive(Clone)]
pub struct Version {
    pub name: Arc<str>,
    pub weight: WeightBps,
    pub endpoints: Arc<[Arc<Endpoint>]>,
    pub protocol: UpstreamProtocol,
    pub stats: Arc<VersionStats>,
    pub probe: Option<Arc<ProbeSettings>>,
}

#[derive(Debug, Clone)]
pub struct Sticky {
    pub cookie: String,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
pub struct RouteMatcher {
    pub host: Option<HostMatch>,
    /// Without a trailing slash; empty matches everything.
    pub path_prefix: String,
    pub headers: Vec<(HeaderName, String)>,
}

#[derive(Debug, Clone)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

/// How a version was chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// By weight; a sticky route should pin the client with a cookie.
    Weighted,
    /// By the client's sticky cookie.
    Sticky,
    /// By the version header.
    Forced,
}

impl RouteTable {
    /// The first route whose matcher holds for this request.
    #[inline]
    pub fn find(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> Option<&Arc<Route>> {
        // Port and case never matter for host matching: normalise once, not once per route.
        // Matchers hold lowercase hosts, so they compare bytes.
        let host = host.map(strip_port).map(|h| {
            if h.bytes()
                .fold(false, |upper, b| upper | b.is_ascii_uppercase())
            {
                Cow::Owned(h.to_ascii_lowercase())
            } else {
                Cow::Borrowed(h)
            }
        });
        let host = host.as_deref();
        self.routes
            .iter()
            .find(|r| r.matcher.matches(host, path, headers))
    }

    /// Whether a route reads the request field `name` (in any case).
    pub fn reads(&self, name: &[u8]) -> bool {
        self.fields_read
            .iter()
            .any(|f| f.as_str().as_bytes().eq_ignore_ascii_case(name))
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// Every endpoint of every version with an active health check.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        let mut out: Vec<ProbeTarget> = Vec::new();
        for route in &self.routes {
            for v in &route.versions {
                let Some(p) = &v.probe else { continue };
                for e in v.endpoints.iter() {
                    if out.iter().any(|t| Arc::ptr_eq(&t.endpoint, e)) {
                        continue;
                    }
                    out.push(ProbeTarget {
                        endpoint: e.clone(),
                        settings: p.clone(),
                    });
                }
            }
        }
        out
    }

    /// Prometheus gauges of the table: weight per version, health per endpoint.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::Family;
        let now = crate::clock::now_ms();
        let mut f = Family::new(
            out,
            "tidegate_route_weight_percent",
            "gauge",
            "Share of a route's traffic each version gets now, in percent.",
        );
        for r in &self.routes {
            for v in &r.versions {
                let labels = [("route", &*r.name), ("version", &*v.name)];
                f.sample(&labels, f64::from(v.weight) / 100.0);
            }
        }
        let mut f = Family::new(
            out,
            "tidegate_endpoint_healthy",
            "gauge",
            "1 when an endpoint takes traffic, 0 when ejected or failing active checks.",
        );
        for r in &self.routes {
            for v in &r.versions {
                for e in v.endpoints.iter() {
                    let addr = e.addr.to_string();
                    let labels = [
                        ("route", &*r.name),
                        ("version", &*v.name),
                        ("endpoint", &*addr),
                    ];
                    f.sample(&labels, u8::from(e.is_healthy(now)));
                }
            }
        }
    }
}

impl Route {
    pub fn new(
        name: Arc<str>,
        matcher: RouteMatcher,
        versions: Vec<Version>,
        sticky: Option<Sticky>,
        version_header: Option<HeaderName>,
        response_timeout: Duration,
    ) -> Route {
        let weights: Vec<WeightBps> = versions.iter().map(|v| v.weight).collect();
        Route {
            name,
            matcher,
            schedule: WeightSchedule::new(&weights),
            versions,
            sticky,
            version_header,
            response_timeout,
        }
    }

    pub fn version_index(&self, name: &str) -> Option<usize> {
        self.versions.iter().position(|v| &*v.name == name)
    }

    /// Chooses the version for a request: the version header first, then a sticky cookie
    /// naming a version that still has weight, then the weighted schedule.
    #[inline]
    pub fn choose(&self, headers: &HeaderMap) -> (usize, Choice) {
        if let Some(h) = &self.version_header
            && let Some(want) = headers.get(h).and_then(|v| v.to_str().ok())
            && let Some(i) = self
                .versions
                .iter()
                .position(|v| &*v.name == want && !v.endpoints.is_empty())
        {
            return (i, Choice::Forced);
        }
        if let Some(s) = &self.sticky
            && let Some(want) = cookie_value(headers, &s.cookie)
            && let Some(i) = self
                .versions
                .iter()
                .position(|v| *v.name == *want && v.weight > 0)
        {
            return (i, Choice::Sticky);
        }
        (self.schedule.next(), Choice::Weighted)
    }
}

impl RouteMatcher {
    /// Whether the request matches; `host` comes lowercase and without its port.
    #[inline]
    pub fn matches(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> bool {
        if let Some(want) = &self.host {
            let Some(host) = host else { return false };
            let ok = match want {
                HostMatch::Exact(h) => host == h,
                HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            };
            if !ok {
                return false;
            }
        }
        if !self.path_prefix.is_empty() {
            let p = &self.path_prefix;
            if !(path.starts_with(p.as_str())
                && matches!(path.as_bytes().get(p.len()), None | Some(b'/') | Some(b'?')))
            {
                return false;
            }
        }
        self.headers.iter().all(|(name, value)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
        })
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    // A port has at most five digits, so only the last six bytes can hold its colon.
    let tail = host.len().saturating_sub(6);
    match host.as_bytes()[tail..].iter().rposition(|&b| b == b':') {
        Some(i) => &host[..tail + i],
        None => host,
    }
}

/// The value of cookie `name` in the request's Cookie headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .find_map(|v| find_cookie(v.as_bytes(), name.as_bytes()))
        // Only the value found is checked for UTF-8, not the whole header.
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Looks for `name=` at the start of a `;`-separated pair in one Cookie header. A plain
/// byte walk: this sits on the request path of sticky routes, and a substring searcher
/// costs more to set up than these short headers take to scan.
fn find_cookie<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = header;
    loop {
        let pair_start = rest.iter().position(|&b| b != b' ' && b != b'\t')?;
        rest = &rest[pair_start..];
        let pair_end = rest.iter().position(|&b| b == b';').unwrap_or(rest.len());
        let pair = &rest[..pair_end];
        if let Some(value) = pair.strip_prefix(name).and_then(|p| p.strip_prefix(b"=")) {
            let value = value.trim_ascii();
            let unquoted = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            return Some(unquoted);
        }
        rest = rest.get(pair_end + 1..)?;
    }
}

#[cfg(test)]
mod tests;
