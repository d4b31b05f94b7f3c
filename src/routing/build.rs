//! Builds a route table from validated config, reusing endpoint health and version counters.

use std::sync::Arc;

use http::HeaderName;

use super::{HostMatch, ProbeSettings, Route, RouteMatcher, RouteTable, Sticky, Version};
use crate::config::{Config, RouteConfig};
use crate::health::{EndpointRegistry, PassivePolicy};
use crate::metrics::Metrics;

impl RouteTable {
    /// `config` must have passed `Config::parse` validation.
    pub fn from_config(
        config: &Config,
        endpoints: &EndpointRegistry,
        metrics: &Metrics,
    ) -> RouteTable {
        let p = &config.passive_health;
        RouteTable {
            routes: config
                .routes
                .iter()
                .map(|r| Arc::new(build_route(r, config, endpoints, metrics)))
                .collect(),
            passive: PassivePolicy::new(p.consecutive_failures, p.ejection, p.max_ejection),
        }
    }
}

fn build_route(
    r: &RouteConfig,
    config: &Config,
    endpoints: &EndpointRegistry,
    metrics: &Metrics,
) -> Route {
    let name: Arc<str> = r.name.as_str().into();
    let versions = r
        .versions
        .iter()
        .map(|v| Version {
            name: v.name.as_str().into(),
            weight: v.weight,
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
            .as_ref()
            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
        r.upstream_response_timeout
            .unwrap_or(config.timeouts.upstream_response),
    )
}
