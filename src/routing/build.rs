//! Builds a route table from validated config, reusing endpoint health and version counters.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;

use super::{HostMatch, ProbeSettings, Route, RouteMatcher, RouteTable, Sticky, Version};
use crate::health::{EndpointRegistry, PassivePolicy};
use crate::metrics::Metrics;
use crate::proxy_config::{ProxyConfig, RouteConfig};
use crate::units::{FULL_WEIGHT, WeightBps};

/// Weights set from outside the config (by rollouts), by route: exactly the versions to keep
/// in the table, in basis points. Versions of the route that are not listed are left out
/// (removed after a drain).
pub type RouteWeights = BTreeMap<String, Vec<(String, WeightBps)>>;

impl RouteTable {
    /// `config` must have passed `ProxyConfig::validate`. A route listed in `weights` takes
    /// them; else a route with an `initial_version` sends it everything; else the config's.
    pub fn from_config(
        config: &ProxyConfig,
        endpoints: &EndpointRegistry,
        metrics: &Metrics,
        weights: &RouteWeights,
    ) -> RouteTable {
        let p = &config.passive_health;
        let routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .map(|r| {
                Arc::new(build_route(
                    r,
                    config,
                    endpoints,
                    metrics,
                    weights.get(&r.name),
                ))
            })
            .collect();
        let mut fields_read: Vec<HeaderName> = routes
            .iter()
            .flat_map(|r| r.matcher.headers.iter().map(|(name, _)| name))
            .chain(routes.iter().filter_map(|r| r.version_header.as_ref()))
            .chain(
                routes
                    .iter()
                    .any(|r| r.sticky.is_some())
                    .then_some(&http::header::COOKIE),
            )
            .cloned()
            .collect();
        fields_read.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        fields_read.dedup();
        RouteTable {
            routes,
            passive: PassivePolicy::new(p.consecutive_failures, p.ejection, p.max_ejection),
            fields_read,
        }
    }
}

/// Which versions a route serves (indices into its config), with what weight.
fn version_weights(
    r: &RouteConfig,
    set: Option<&Vec<(String, WeightBps)>>,
) -> Vec<(usize, WeightBps)> {
    let index = |name: &str| r.versions.iter().position(|v| v.name == name);
    match (set, &r.initial_version) {
        (Some(weights), _)
            if !weights.is_empty() && weights.iter().all(|(n, _)| index(n).is_some()) =>
        {
            weights
                .iter()
                .filter_map(|(n, w)| Some((index(n)?, *w)))
                .collect()
        }
        (_, Some(initial)) => r
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| (i, if v.name == *initial { FULL_WEIGHT } else { 0 }))
            .collect(),
        (_, None) => r
            .versions
            .iter()
            .enumerate()
            .map(|(i, v)| (i, v.weight.unwrap_or(0)))
            .collect(),
    }
}

fn build_route(
    r: &RouteConfig,
    config: &ProxyConfig,
    endpoints: &EndpointRegistry,
    metrics: &Metrics,
    weights: Option<&Vec<(String, WeightBps)>>,
) -> Route {
    let name: Arc<str> = r.name.as_str().into();
    let versions = version_weights(r, weights)
        .into_iter()
        .map(|(i, weight)| {
            let v = &r.versions[i];
            Version {
                name: v.name.as_str().into(),
                weight,
                endpoints: v.endpoints.iter().map(|&a| endpoints.get(a)).collect(),
                protocol: v.protocol,
                stats: metrics.version(&r.name, &v.name),
                probe: v.health_check.as_ref().map(|h| {
                    Arc::new(ProbeSettings {
                        path: h.path.clone(),
                        interval: h.interval,
                        timeout: h.timeout,
                        healthy_threshold: h.healthy_threshold,
                        unhealthy_threshold: h.unhealthy_threshold,
                    })
                }),
            }
        })
        .collect();
    let matcher = RouteMatcher {
        host: r.matches.host.as_ref().map(|h| match h.strip_prefix('*') {
            Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
            None => HostMatch::Exact(h.to_ascii_lowercase()),
        }),
        path_prefix: r
            .matches
            .path_prefix
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_string(),
        headers: r
            .matches
            .headers
            .iter()
            .filter_map(|h| {
                Some((
                    HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                    h.value.clone(),
                ))
            })
            .collect(),
    };
    Route::new(
        name,
        matcher,
        versions,
        r.sticky.as_ref().map(|s| Sticky {
            cookie: s.cookie.clone(),
            max_age: s.max_age,
        }),
        r.version_header
            .as_deref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        r.upstream_response_timeout
            .unwrap_or(config.timeouts.upstream_response),
    )
}
