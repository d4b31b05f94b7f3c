//! The config file: the data plane's part (`ProxyConfig`) plus the control side's (rollouts,
//! admin, state), parsed together, validated, and reported by file, line and field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::proxy_config::{ProxyConfig, StickyConfig};
use crate::rollout::RolloutSpec;
use crate::units::FieldError;

mod locate;

/// A configuration that failed to load: says which file, which line (when known), which field.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// `e`, found in `file` (whose text is `text`), at the line its field is on.
    pub fn in_file(file: &Path, text: &str, e: FieldError) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: locate::line_of(text, &e.field),
            field: e.field,
            message: e.message,
        }
    }
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

/// The whole config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where `/metrics`, `/routes` and the admin API are served. Loopback by default.
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Where rollout state is kept (one JSON file per rollout). Relative paths are relative
    /// to the config file; default `tidegate-state` beside it.
    pub state_dir: Option<PathBuf>,
    /// Listeners, routes, timeouts, limits: what the data plane runs from. A route with a
    /// rollout has its `initial_version`, sticky cookie and version header set from it.
    pub proxy: ProxyConfig,
    /// The `rollout` section of each route that has one, by route name.
    pub rollouts: BTreeMap<String, RolloutSpec>,
}

/// Where the routes come from: the file (which then needs at least one), or the cluster.
#[derive(Clone, Copy)]
enum Mode {
    File,
    Cluster,
}

/// The control side's sections of the file. The data plane's are named (and skipped) so that
/// a key belonging to neither is refused with its line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSections {
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    routes: Vec<RouteSections>,
    #[serde(default, rename = "listeners")]
    _listeners: IgnoredAny,
    #[serde(default, rename = "timeouts")]
    _timeouts: IgnoredAny,
    #[serde(default, rename = "limits")]
    _limits: IgnoredAny,
    #[serde(default, rename = "passive_health")]
    _passive_health: IgnoredAny,
    #[serde(default, rename = "workers")]
    _workers: IgnoredAny,
}

/// A route's `rollout`, beside the data plane's route fields (named and skipped).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSections {
    #[serde(default)]
    rollout: Option<RolloutSpec>,
    #[serde(default, rename = "name")]
    _name: IgnoredAny,
    #[serde(default, rename = "match")]
    _match: IgnoredAny,
    #[serde(default, rename = "versions")]
    _versions: IgnoredAny,
    #[serde(default, rename = "sticky")]
    _sticky: IgnoredAny,
    #[serde(default, rename = "version_header")]
    _version_header: IgnoredAny,
    #[serde(default, rename = "upstream_response_timeout")]
    _upstream_response_timeout: IgnoredAny,
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
    /// Reads, parses and validates a config file. Relative paths (certificates, token, state)
    /// are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_as(path, Mode::File)
    }

    /// Loads the config of `tidegate proxy --kube`: listeners, admin, timeouts and limits;
    /// the routes and rollouts come from the cluster, so the file needs none and may hold
    /// no rollout.
    pub fn load_for_cluster(path: &Path) -> Result<Config, ConfigError> {
        Config::load_as(path, Mode::Cluster)
    }

    fn load_as(path: &Path, mode: Mode) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse_as(&text, path, mode)?;
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
        for listener in &mut config.proxy.listeners {
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
        Config::parse_as(text, file, Mode::File)
    }

    fn parse_as(text: &str, file: &Path, mode: Mode) -> Result<Config, ConfigError> {
        let syntax = |e: yaml_serde::Error| syntax_error(text, file, e);
        // The control side's sections first: that parse knows every key of the file.
        let control: ControlSections = yaml_serde::from_str(text).map_err(syntax)?;
        let mut proxy: ProxyConfig = yaml_serde::from_str(text).map_err(syntax)?;
        let mut rollouts = BTreeMap::new();
        for (route, sections) in proxy.routes.iter_mut().zip(control.routes) {
            if let Some(spec) = sections.rollout {
                route_follows(route, &spec);
                rollouts.insert(route.name.clone(), spec);
            }
        }
        let config = Config {
            admin: control.admin,
            log: control.log,
            state_dir: control.state_dir,
            proxy,
            rollouts,
        };
        config
            .validate(mode)
            .map_err(|e| ConfigError::in_file(file, text, e))?;
        Ok(config)
    }

    /// Checks what serde cannot, the data plane's part first.
    fn validate(&self, mode: Mode) -> Result<(), FieldError> {
        self.proxy.validate(self.admin.listen)?;
        match mode {
            Mode::File if self.proxy.routes.is_empty() => {
                return Err(FieldError::new("routes", "at least one route is needed"));
            }
            Mode::Cluster if !self.rollouts.is_empty() => {
                let i = self
                    .proxy
                    .routes
                    .iter()
                    .position(|r| self.rollouts.contains_key(&r.name));
                return Err(FieldError::new(
                    format!("routes[{}].rollout", i.unwrap_or(0)),
                    "with --kube, rollouts are Rollout resources on the cluster, not file sections",
                ));
            }
            _ => {}
        }
        for (i, route) in self.proxy.routes.iter().enumerate() {
            let Some(spec) = self.rollouts.get(&route.name) else {
                continue;
            };
            let names: Vec<&str> = route.versions.iter().map(|v| v.name.as_str()).collect();
            spec.validate(&names)
                .map_err(|e| e.under(&format!("routes[{i}].rollout")))?;
        }
        Ok(())
    }

    /// The routes with a rollout, with it.
    pub fn rollout_routes(
        &self,
    ) -> impl Iterator<Item = (&crate::proxy_config::RouteConfig, &RolloutSpec)> {
        self.proxy
            .routes
            .iter()
            .filter_map(|r| Some((r, self.rollouts.get(&r.name)?)))
    }
}

/// What a route's data plane takes from its rollout: the weights come from the rollout (the
/// stable version takes all traffic until it sets them), and its sticky cookie and version
/// header unless the route names its own.
pub fn route_follows(route: &mut crate::proxy_config::RouteConfig, spec: &RolloutSpec) {
    let versions: Vec<&str> = route.versions.iter().map(|v| v.name.as_str()).collect();
    route.initial_version = Some(spec.initial_stable(&versions).to_string());
    if route.sticky.is_none() && spec.sticky_sessions {
        route.sticky = Some(StickyConfig {
            cookie: format!("tidegate-{}", route.name),
            max_age: None,
        });
    }
    if route.version_header.is_none() {
        route.version_header = spec.header_route.clone();
    }
}

/// A serde error as file:line: field: message.
fn syntax_error(text: &str, file: &Path, e: yaml_serde::Error) -> ConfigError {
    let message = e.to_string();
    // yaml_serde prefixes the field path ("routes[0].versions[1]: ...") and appends
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
        assert_eq!(c.proxy.routes[0].versions[0].weight, Some(8750));
        assert_eq!(c.proxy.routes[0].versions[1].weight, Some(1250));
        assert_eq!(c.proxy.timeouts.connect, std::time::Duration::from_secs(2));
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
    fn keys_unknown_to_both_sides_are_refused_with_their_line() {
        let bad = GOOD.replace("    match:", "    versionz: []\n    match:");
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(7), "routes[0]"), "{e}");
        assert!(e.message.contains("unknown field `versionz`"), "{e}");
        let bad = GOOD.replace("listeners:", "listenerz: []\nlisteners:");
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert!(e.message.contains("unknown field `listenerz`"), "{e}");
    }

    const WITH_ROLLOUT: &str = r#"
listeners:
  - name: web
    listen: 127.0.0.1:8080
routes:
  - name: shop
    versions:
      - name: v1
        endpoints: [127.0.0.1:9001]
      - name: v2
        endpoints: [127.0.0.1:9002]
    rollout:
      canary: v2
      stickySessions: true
      headerRoute: x-version
      steps:
        - setWeight: 10
"#;

    #[test]
    fn a_rollout_hands_the_data_plane_its_first_version_cookie_and_header() {
        let c = Config::parse(WITH_ROLLOUT, Path::new("t.yaml")).unwrap();
        let route = &c.proxy.routes[0];
        assert_eq!(route.initial_version.as_deref(), Some("v1"));
        assert_eq!(
            route.sticky.as_ref().map(|s| s.cookie.as_str()),
            Some("tidegate-shop")
        );
        assert_eq!(route.version_header.as_deref(), Some("x-version"));
        assert_eq!(c.rollouts["shop"].canary, "v2");
    }

    #[test]
    fn rollout_errors_name_their_line_and_field() {
        let bad = WITH_ROLLOUT.replace("setWeight: 10", "setWeight: 10.001");
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(e.line, Some(17), "{e}");
        assert!(e.message.contains("more than two decimals"), "{e}");
        let bad = WITH_ROLLOUT.replace("canary: v2", "canary: v3");
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (Some(13), "routes[0].rollout.canary"),
            "{e}"
        );
        let bad = WITH_ROLLOUT.replace(
            "endpoints: [127.0.0.1:9001]",
            "weight: 100\n        endpoints: [127.0.0.1:9001]",
        );
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(e.field, "routes[0].versions[0].weight", "{e}");
        assert!(e.message.contains("rollout, which sets the weights"), "{e}");
        // A Prometheus metric names its server here: only a cluster's controller has one.
        let bad = WITH_ROLLOUT.replace(
            "- setWeight: 10",
            "- setWeight: 10\n        - analysis: {metrics: [{name: e, provider: {prometheus: {query: up}}}]}",
        );
        let e = Config::parse(&bad, Path::new("t.yaml")).unwrap_err();
        assert_eq!(
            e.field, "routes[0].rollout.steps[1].analysis.metrics[0].provider.prometheus.address",
            "{e}"
        );
        assert!(e.message.contains("URL is needed"), "{e}");
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
