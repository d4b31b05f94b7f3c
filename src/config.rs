//! Typed configuration: serde defaults, semantic validation, and errors that name file, line and field.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::units::{
    FULL_WEIGHT, WeightBps, de_duration, de_opt_duration, de_opt_weight, format_percent,
    is_valid_name,
};

mod locate;

pub use locate::line_of;

/// A configuration that failed to load: says which file, which line (when known), which field.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

/// The whole proxy configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where `/metrics` (and later the admin API) is served. Loopback by default.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Addresses the proxy accepts client traffic on.
    pub listeners: Vec<ListenerConfig>,
    /// Routes, matched in file order: the first route whose match holds takes the request.
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
    #[serde(default)]
    pub log: LogConfig,
    /// Where rollout state is kept (one JSON file per rollout). Relative paths are relative
    /// to the config file; default `tidegate-state` beside it.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token that commands (promote, abort, ...) must present.
    /// `TIDEGATE_ADMIN_TOKEN` in the environment is used when this is not set. Without a
    /// token, commands are refused; reads stay open.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
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

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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
    /// Progressive delivery for this route: the rollout engine sets the versions' weights.
    #[serde(default)]
    pub rollout: Option<crate::rollout::RolloutSpec>,
}

impl RouteConfig {
    /// The cookie pinning clients to a version: the route's, or the rollout's `stickySessions`.
    pub fn sticky_cookie(&self) -> Option<StickyConfig> {
        self.sticky.clone().or_else(|| {
            self.rollout
                .as_ref()
                .filter(|r| r.sticky_sessions)
                .map(|_| StickyConfig {
                    cookie: format!("tidegate-{}", self.name),
                    max_age: None,
                })
        })
    }

    /// With a rollout, the stable version before any rollout: `stable` if given, else the
    /// first version that is not the canary, else the canary itself (a route with one
    /// version has nothing to roll out).
    pub fn initial_stable(&self) -> Option<&str> {
        let spec = self.rollout.as_ref()?;
        if let Some(s) = spec.stable.as_deref() {
            return Some(s);
        }
        let other = self
            .versions
            .iter()
            .map(|v| v.name.as_str())
            .find(|v| *v != spec.canary);
        Some(other.unwrap_or(spec.canary.as_str()))
    }

    /// The header that forces a version: the route's, or the rollout's `headerRoute`.
    pub fn version_header(&self) -> Option<&str> {
        self.version_header.as_deref().or_else(|| {
            self.rollout
                .as_ref()
                .and_then(|r| r.header_route.as_deref())
        })
    }
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
    /// Upstream connections kept per endpoint for reuse, busy or idle; under more
    /// concurrency than this, the extra connections close after their request.
    pub max_idle_per_endpoint: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_idle_per_endpoint: 256,
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

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Config {
    /// Reads, parses and validates a config file. Relative certificate paths are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.state_dir = Some(
            base.join(
                config
                    .state_dir
                    .as_deref()
                    .unwrap_or(Path::new("tidegate-state")),
            ),
        );
        if let Some(t) = &mut config.admin.token_file {
            *t = base.join(&*t);
        }
        for listener in &mut config.listeners {
            if let Some(tls) = &mut listener.tls {
                for cert in &mut tls.certificates {
                    cert.cert = base.join(&cert.cert);
                    cert.key = base.join(&cert.key);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates config text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| {
            let message = e.to_string();
            // serde_yaml prefixes the field path ("routes[0].versions[1]: ...") and appends
            // " at line N column M"; split them so the error reads file:line: field: message.
            let (field, rest) = match message.split_once(": ") {
                Some((path, rest)) if !path.contains(' ') => (path.to_string(), rest.to_string()),
                _ => (String::new(), message.clone()),
            };
            let rest = match rest.rfind(" at line ") {
                Some(i) => rest[..i].to_string(),
                None => rest,
            };
            // Values our own parsers reject (durations, weights) are reported at the enclosing
            // mapping; the message quotes the value in backticks, so find the exact field.
            let quoted = rest
                .split('`')
                .nth(1)
                .filter(|_| rest.matches('`').count() >= 2);
            let exact = quoted.and_then(|value| locate::child_with_value(text, &field, value));
            let (field, line) = match exact {
                Some((field, line)) => (field, Some(line)),
                None => (field, e.location().map(|l| l.line())),
            };
            ConfigError {
                file: file.to_path_buf(),
                line,
                field,
                message: rest,
            }
        })?;
        config.validate().map_err(|(field, message)| ConfigError {
            file: file.to_path_buf(),
            line: locate::line_of(text, &field),
            field,
            message,
        })?;
        Ok(config)
    }

    /// Checks what serde cannot: names, weights, references. Returns the field path and what is wrong.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.listeners.is_empty() {
            return Err(("listeners".into(), "at least one listener is needed".into()));
        }
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{i}]");
            check_name(&l.name, &format!("{at}.name"))?;
            if !names.insert(&l.name) {
                return Err((
                    format!("{at}.name"),
                    format!("listener `{}` is defined twice", l.name),
                ));
            }
            if l.listen.port() != 0 && !addrs.insert(l.listen) {
                return Err((
                    format!("{at}.listen"),
                    format!("{} is used by another listener", l.listen),
                ));
            }
            if l.listen.port() != 0 && l.listen == self.admin.listen {
                return Err((
                    format!("{at}.listen"),
                    format!("{} is the admin address", l.listen),
                ));
            }
            if let Some(tls) = &l.tls
                && tls.certificates.is_empty()
            {
                return Err((
                    format!("{at}.tls.certificates"),
                    "at least one certificate is needed".into(),
                ));
            }
        }
        if self.routes.is_empty() {
            return Err(("routes".into(), "at least one route is needed".into()));
        }
        let mut route_names = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            check_name(&r.name, &format!("{at}.name"))?;
            if !route_names.insert(&r.name) {
                return Err((
                    format!("{at}.name"),
                    format!("route `{}` is defined twice", r.name),
                ));
            }
            if let Some(p) = &r.matches.path_prefix
                && !p.starts_with('/')
            {
                return Err((
                    format!("{at}.match.path_prefix"),
                    format!("`{p}` must start with `/`"),
                ));
            }
            if let Some(h) = &r.matches.host
                && (h.is_empty() || h.contains('/') || h.contains(' '))
            {
                return Err((
                    format!("{at}.match.host"),
                    format!("`{h}` is not a host name"),
                ));
            }
            for (j, h) in r.matches.headers.iter().enumerate() {
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    return Err((
                        format!("{at}.match.headers[{j}].name"),
                        format!("`{}` is not a header name", h.name),
                    ));
                }
            }
            if let Some(h) = &r.version_header
                && http::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                return Err((
                    format!("{at}.version_header"),
                    format!("`{h}` is not a header name"),
                ));
            }
            if let Some(s) = &r.sticky
                && (s.cookie.is_empty()
                    || !s
                        .cookie
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            {
                return Err((
                    format!("{at}.sticky.cookie"),
                    format!(
                        "`{}` is not a cookie name (letters, digits, - and _)",
                        s.cookie
                    ),
                ));
            }
            if r.versions.is_empty() {
                return Err((
                    format!("{at}.versions"),
                    "a route needs at least one version".into(),
                ));
            }
            if r.versions.len() > 250 {
                return Err((
                    format!("{at}.versions"),
                    "at most 250 versions per route".into(),
                ));
            }
            let mut version_names = HashSet::new();
            let mut total: u32 = 0;
            for (j, v) in r.versions.iter().enumerate() {
                let at = format!("{at}.versions[{j}]");
                check_name(&v.name, &format!("{at}.name"))?;
                if !version_names.insert(&v.name) {
                    return Err((
                        format!("{at}.name"),
                        format!(
                            "version `{}` is defined twice in route `{}`",
                            v.name, r.name
                        ),
                    ));
                }
                match (v.weight, &r.rollout) {
                    (Some(_), Some(_)) => {
                        return Err((
                            format!("{at}.weight"),
                            "this route has a rollout, which sets the weights: remove `weight`"
                                .into(),
                        ));
                    }
                    (None, None) => {
                        return Err((
                            format!("{at}.weight"),
                            "a weight in percent is needed (e.g. `weight: 90`)".into(),
                        ));
                    }
                    _ => {}
                }
                if v.endpoints.is_empty() && v.weight.unwrap_or(0) > 0 {
                    return Err((
                        format!("{at}.endpoints"),
                        "a version with weight needs at least one endpoint".into(),
                    ));
                }
                if let Some(hc) = &v.health_check {
                    if !hc.path.starts_with('/') {
                        return Err((
                            format!("{at}.health_check.path"),
                            format!("`{}` must start with `/`", hc.path),
                        ));
                    }
                    if hc.interval.is_zero() || hc.timeout.is_zero() {
                        return Err((
                            format!("{at}.health_check"),
                            "interval and timeout must be above zero".into(),
                        ));
                    }
                    if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                        return Err((
                            format!("{at}.health_check"),
                            "thresholds must be at least 1".into(),
                        ));
                    }
                }
                total += u32::from(v.weight.unwrap_or(0));
            }
            if let Some(rollout) = &r.rollout {
                let names: Vec<&str> = r.versions.iter().map(|v| v.name.as_str()).collect();
                rollout
                    .validate(&names)
                    .map_err(|(f, e)| (format!("{at}.rollout.{f}"), e))?;
            } else if total != u32::from(FULL_WEIGHT) {
                return Err((
                    format!("{at}.versions"),
                    format!(
                        "weights add up to {}%, they must add up to 100%",
                        format_percent(total)
                    ),
                ));
            }
        }
        if self.limits.max_connections == 0 {
            return Err(("limits.max_connections".into(), "must be at least 1".into()));
        }
        if self.limits.max_header_bytes < 8192 {
            return Err((
                "limits.max_header_bytes".into(),
                "must be at least 8192".into(),
            ));
        }
        if self.workers == Some(0) {
            return Err(("workers".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

fn check_name(name: &str, field: &str) -> Result<(), (String, String)> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err((
            field.to_string(),
            format!("`{name}` is not a valid name (1-63 of letters, digits, `-`, `_`, `.`)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listeners:
  - name: web
    listen: 127.0.0.1:8080
routes:
  - name: shop
    match:
      path_prefix: /
    versions:
      - name: stable
        weight: 87.5
        endpoints: [127.0.0.1:9001]
      - name: canary
        weight: 12.5
        endpoints: [127.0.0.1:9002]
"#;

    #[test]
    fn parses_weights_as_basis_points() {
        let c = Config::parse(GOOD, Path::new("t.yaml")).unwrap();
        assert_eq!(c.routes[0].versions[0].weight, Some(8750));
        assert_eq!(c.routes[0].versions[1].weight, Some(1250));
        assert_eq!(c.timeouts.connect, Duration::from_secs(2));
    }

    #[test]
    fn weights_that_do_not_add_up_name_the_line_and_field() {
        let bad = GOOD.replace("weight: 12.5", "weight: 2.5");
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(e.field, "routes[0].versions");
        assert_eq!(e.line, Some(9));
        assert!(
            e.to_string()
                .starts_with("t.yaml:9: routes[0].versions: weights add up to 90%"),
            "{e}"
        );
    }

    #[test]
    fn three_decimals_are_rejected_with_the_line() {
        let bad = GOOD.replace("weight: 12.5", "weight: 12.505");
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(e.line, Some(14), "{e}");
        assert_eq!(e.field, "routes[0].versions[1].weight");
        assert!(e.message.contains("more than two decimals"), "{e}");
    }

    #[test]
    fn unknown_field_names_its_path() {
        let bad = GOOD.replace("path_prefix: /", "path_prefx: /");
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(e.line, Some(8), "{e}");
        assert!(e.field.contains("routes[0].match"), "{e}");
        assert!(e.message.contains("unknown field `path_prefx`"), "{e}");
    }

    #[test]
    fn bad_durations_name_their_own_line_and_field() {
        let bad = GOOD.replace(
            "listeners:",
            "timeouts:\n  connect: 2s\n  drain: 10 parsecs\nlisteners:",
        );
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(4), "timeouts.drain"),
            "{e}"
        );
        assert!(e.message.contains("`10 parsecs` is not a duration"), "{e}");
    }
}
