//! What the data plane runs from: listeners, routes with their versions, weights and
//! endpoints, timeouts and limits. Read from the config file (whose rollout, admin and state
//! sections belong to the control side) or built by another route source, then validated.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::units::{
    FULL_WEIGHT, FieldError, WeightBps, de_duration, de_opt_duration, de_opt_weight,
    format_percent, is_valid_name,
};

/// The data plane's part of a config. Its sections sit beside the control side's in the
/// file; unknown keys at this level are caught by the file-level parse, which knows both.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ProxyConfig {
    /// Addresses the proxy accepts client traffic on.
    pub listeners: Vec<ListenerConfig>,
    /// Routes, matched in file order: the first route whose match holds takes the request.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub passive_health: PassiveHealth,
    /// Worker threads, each with its own event loop and its own listening socket
    /// (SO_REUSEPORT). Defaults to the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    /// TLS termination; absent means plain HTTP (HTTP/1.1 and h2c prior knowledge).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Peers (addresses or CIDR ranges) whose forwarding headers are believed: their
    /// `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` pass, and `X-Real-IP` is read
    /// from their `X-Forwarded-For`. Anyone else's are replaced. Empty by default.
    #[serde(default, deserialize_with = "de_ip_ranges")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

fn de_ip_ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            crate::proxy::forwarding::parse_range(text).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "`{text}` is not an IP address or CIDR range (e.g. 10.0.0.0/8)"
                ))
            })
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates by SNI name. The first one also serves clients that send no (or an unknown) name.
    pub certificates: Vec<CertificateConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate chain, leaf first. Relative paths are relative to the config file.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
    /// SNI names this certificate serves; defaults to the names in the certificate are not read,
    /// so list them here (wildcards like `*.example.com` allowed).
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// A route. Its `rollout` sits beside these fields in the file: unknown keys here are caught
/// by the file-level parse, which knows both.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Two or more named versions of the service, each with a weight in percent.
    pub versions: Vec<VersionConfig>,
    /// Pin a client to the version it got, by cookie, as long as that version has weight.
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    /// A request header that forces a version by name, e.g. `x-tidegate-version: canary`.
    #[serde(default)]
    pub version_header: Option<String>,
    /// Overrides `timeouts.upstream_response` for this route.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub upstream_response_timeout: Option<Duration>,
    /// Set when the weights come from outside the config (a rollout, a cluster): until they
    /// do, this version takes all the traffic, and the versions carry no `weight`.
    #[serde(skip)]
    pub initial_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Exact host (port ignored, case-insensitive) or `*.example.com`.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, matched on whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    #[serde(default = "default_sticky_cookie")]
    pub cookie: String,
    /// Cookie lifetime; absent means a session cookie.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_age: Option<Duration>,
}

fn default_sticky_cookie() -> String {
    "tidegate-version".to_string()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    pub name: String,
    /// Percent of the route's traffic, up to two decimals (12.5, 0.01). All versions add up to
    /// 100. Routes with a `rollout` leave it out: the rollout sets the weights.
    #[serde(default, deserialize_with = "de_opt_weight")]
    pub weight: Option<WeightBps>,
    /// A label for what runs there (an image tag, a build): changing it starts a rollout, like
    /// changing the endpoints does.
    #[serde(default)]
    pub revision: Option<String>,
    /// Upstream addresses (`host:port`, IP literals).
    pub endpoints: Vec<SocketAddr>,
    /// How tidegate speaks to this version's endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c); needed for gRPC upstreams.
    Http2,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path to GET; any 2xx or 3xx is healthy.
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(default = "default_health_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring an unhealthy endpoint back.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    /// Consecutive failures that take a healthy endpoint out.
    #[serde(default = "default_three")]
    pub unhealthy_threshold: u32,
}

fn default_health_path() -> String {
    "/healthz".to_string()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_two() -> u32 {
    2
}
fn default_three() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to an upstream.
    #[serde(deserialize_with = "de_duration")]
    pub connect: Duration,
    /// A client must send a complete request head within this time of its connection opening
    /// or going idle (slowloris guard); an idle HTTP/1.1 keep-alive connection closes after it.
    #[serde(deserialize_with = "de_duration")]
    pub request_header: Duration,
    /// From sending the request upstream to receiving response headers.
    #[serde(deserialize_with = "de_duration")]
    pub upstream_response: Duration,
    /// Idle upstream connections are closed after this; keep it below the upstream's keep-alive.
    #[serde(deserialize_with = "de_duration")]
    pub upstream_idle: Duration,
    /// On SIGTERM, how long in-flight requests and upgraded connections may take to finish.
    #[serde(deserialize_with = "de_duration")]
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(2),
            request_header: Duration::from_secs(10),
            upstream_response: Duration::from_secs(30),
            upstream_idle: Duration::from_secs(20),
            drain: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections open at once, across all listeners; more wait in the accept queue.
    pub max_connections: usize,
    /// Largest request head (request line plus headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// Idle upstream connections kept per endpoint and worker for reuse; under more
    /// concurrency than this, the extra connections close after their request (a new
    /// connection per request from then on: keep it above the concurrency you expect).
    pub max_idle_per_endpoint: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_idle_per_endpoint: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    /// Consecutive connect failures or 5xx responses that eject an endpoint; 0 turns it off.
    pub consecutive_failures: u32,
    /// First ejection lasts this long; each ejection in a row doubles it, up to `max_ejection`.
    #[serde(deserialize_with = "de_duration")]
    pub ejection: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_ejection: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
        }
    }
}

impl ProxyConfig {
    /// Checks what serde cannot: names, weights, references, limits. `admin` is the admin
    /// listener's address, which no listener may take.
    pub fn validate(&self, admin: SocketAddr) -> Result<(), FieldError> {
        if self.listeners.is_empty() {
            return Err(FieldError::new(
                "listeners",
                "at least one listener is needed",
            ));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            l.validate(admin)
                .map_err(|e| e.under(&format!("listeners[{i}]")))?;
            if !names.insert(&l.name) {
                return Err(FieldError::new(
                    format!("listeners[{i}].name"),
                    format!("listener `{}` is defined twice", l.name),
                ));
            }
            if l.listen.port() != 0 && !addrs.insert(l.listen) {
                return Err(FieldError::new(
                    format!("listeners[{i}].listen"),
                    format!("{} is used by another listener", l.listen),
                ));
            }
        }
        let mut route_names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            r.validate().map_err(|e| e.under(&format!("routes[{i}]")))?;
            if !route_names.insert(&r.name) {
                return Err(FieldError::new(
                    format!("routes[{i}].name"),
                    format!("route `{}` is defined twice", r.name),
                ));
            }
        }
        if self.limits.max_connections == 0 {
            return Err(FieldError::new(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(FieldError::new(
                "limits.max_header_bytes",
                "must be at least 8192",
            ));
        }
        if self.workers == Some(0) {
            return Err(FieldError::new("workers", "must be at least 1"));
        }
        Ok(())
    }
}

impl ListenerConfig {
    fn validate(&self, admin: SocketAddr) -> Result<(), FieldError> {
        check_name(&self.name, "name")?;
        if self.listen.port() != 0 && self.listen == admin {
            return Err(FieldError::new(
                "listen",
                format!("{} is the admin address", self.listen),
            ));
        }
        if let Some(tls) = &self.tls
            && tls.certificates.is_empty()
        {
            return Err(FieldError::new(
                "tls.certificates",
                "at least one certificate is needed",
            ));
        }
        Ok(())
    }
}

impl RouteConfig {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name(&self.name, "name")?;
        if let Some(p) = &self.matches.path_prefix
            && !p.starts_with('/')
        {
            return Err(FieldError::new(
                "match.path_prefix",
                format!("`{p}` must start with `/`"),
            ));
        }
        if let Some(h) = &self.matches.host
            && (h.is_empty() || h.contains('/') || h.contains(' '))
        {
            return Err(FieldError::new(
                "match.host",
                format!("`{h}` is not a host name"),
            ));
        }
        for (j, h) in self.matches.headers.iter().enumerate() {
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                return Err(FieldError::new(
                    format!("match.headers[{j}].name"),
                    format!("`{}` is not a header name", h.name),
                ));
            }
        }
        if let Some(h) = &self.version_header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(FieldError::new(
                "version_header",
                format!("`{h}` is not a header name"),
            ));
        }
        if let Some(s) = &self.sticky
            && (s.cookie.is_empty()
                || !s
                    .cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(FieldError::new(
                "sticky.cookie",
                format!(
                    "`{}` is not a cookie name (letters, digits, - and _)",
                    s.cookie
                ),
            ));
        }
        if self.versions.is_empty() {
            return Err(FieldError::new(
                "versions",
                "a route needs at least one version",
            ));
        }
        if self.versions.len() > 250 {
            return Err(FieldError::new(
                "versions",
                "at most 250 versions per route",
            ));
        }
        let mut names = HashSet::new();
        for (j, v) in self.versions.iter().enumerate() {
            v.validate(self.initial_version.is_some())
                .map_err(|e| e.under(&format!("versions[{j}]")))?;
            if !names.insert(&v.name) {
                return Err(FieldError::new(
                    format!("versions[{j}].name"),
                    format!(
                        "version `{}` is defined twice in route `{}`",
                        v.name, self.name
                    ),
                ));
            }
        }
        match &self.initial_version {
            Some(initial) if !names.contains(initial) => Err(FieldError::new(
                "versions",
                format!("no version named `{initial}` to take the traffic first"),
            )),
            Some(_) => Ok(()),
            None => {
                let total: u32 = self
                    .versions
                    .iter()
                    .map(|v| u32::from(v.weight.unwrap_or(0)))
                    .sum();
                if total == u32::from(FULL_WEIGHT) {
                    Ok(())
                } else {
                    Err(FieldError::new(
                        "versions",
                        format!(
                            "weights add up to {}%, they must add up to 100%",
                            format_percent(total)
                        ),
                    ))
                }
            }
        }
    }
}

impl VersionConfig {
    /// `weighed_elsewhere`: the route's weights come from outside the config.
    fn validate(&self, weighed_elsewhere: bool) -> Result<(), FieldError> {
        check_name(&self.name, "name")?;
        match (self.weight, weighed_elsewhere) {
            (Some(_), true) => {
                return Err(FieldError::new(
                    "weight",
                    "this route has a rollout, which sets the weights: remove `weight`",
                ));
            }
            (None, false) => {
                return Err(FieldError::new(
                    "weight",
                    "a weight in percent is needed (e.g. `weight: 90`)",
                ));
            }
            _ => {}
        }
        if self.endpoints.is_empty() && self.weight.unwrap_or(0) > 0 {
            return Err(FieldError::new(
                "endpoints",
                "a version with weight needs at least one endpoint",
            ));
        }
        if let Some(hc) = &self.health_check {
            if !hc.path.starts_with('/') {
                return Err(FieldError::new(
                    "health_check.path",
                    format!("`{}` must start with `/`", hc.path),
                ));
            }
            if hc.interval.is_zero() || hc.timeout.is_zero() {
                return Err(FieldError::new(
                    "health_check",
                    "interval and timeout must be above zero",
                ));
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                return Err(FieldError::new(
                    "health_check",
                    "thresholds must be at least 1",
                ));
            }
        }
        Ok(())
    }
}

fn check_name(name: &str, field: &str) -> Result<(), FieldError> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("`{name}` is not a valid name (1-63 of letters, digits, `-`, `_`, `.`)"),
        ))
    }
}
