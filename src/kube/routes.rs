//! What a proxy on a cluster routes: one route per Rollout, whose stable and canary versions
//! are the ready endpoints of the EndpointSlices of `<name>-stable` and `<name>-canary`, and
//! whose weights are the Rollout's status. Pure: the watched objects in, routes out.

use std::borrow::Borrow;
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use super::crd::Rollout;
use super::plan::{CANARY, STABLE};
use crate::proxy_config::{RouteConfig, RouteMatch, VersionConfig};
use crate::units::{FULL_WEIGHT, WeightBps};

/// The label Kubernetes puts on an EndpointSlice to name its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label on the Services tidegate makes, which Kubernetes copies onto their
/// EndpointSlices: what a proxy watches.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=tidegate";

/// A Rollout's route with the weights its status asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterRoute {
    pub config: RouteConfig,
    /// (version, basis points) for the publisher; None when neither version has a ready
    /// endpoint.
    pub weights: Option<Vec<(String, WeightBps)>>,
}

/// The route name of a Rollout: `<namespace>.<name>`, unique across namespaces. Proxies,
/// metrics and notifications all name a rollout so.
pub fn route_name(rollout: &Rollout) -> String {
    format!(
        "{}.{}",
        rollout.namespace().unwrap_or_default(),
        rollout.name_any()
    )
}

/// The routes of these Rollouts, most specific match first (a host before none, a longer
/// path prefix before a shorter one), so a catch-all route never hides another. A Rollout
/// whose route is not valid is left out, with the reason.
pub fn cluster_routes(
    rollouts: &[impl Borrow<Rollout>],
    slices: &[impl Borrow<EndpointSlice>],
) -> (Vec<ClusterRoute>, Vec<(String, String)>) {
    let mut routes = Vec::new();
    let mut refused = Vec::new();
    for r in rollouts.iter().map(Borrow::borrow) {
        let namespace = r.namespace().unwrap_or_default();
        let name = route_name(r);
        let service = &r.spec.workload_ref.name;
        let endpoints =
            |track: &str| ready_endpoints(slices, &namespace, &format!("{service}-{track}"));
        let mut config = RouteConfig {
            name: name.clone(),
            matches: RouteMatch {
                host: r.spec.route.host.clone(),
                path_prefix: r.spec.route.path_prefix.clone(),
                headers: Vec::new(),
            },
            versions: [STABLE, CANARY]
                .map(|track| VersionConfig {
                    name: track.into(),
                    weight: None,
                    revision: None,
                    endpoints: endpoints(track),
                    protocol: Default::default(),
                    health_check: None,
                })
                .into(),
            sticky: None,
            version_header: None,
            upstream_response_timeout: None,
            initial_version: None,
        };
        crate::config::route_follows(&mut config, &r.spec.strategy);
        config.initial_version = Some(STABLE.into());
        if let Err(e) = config.validate() {
            refused.push((name, e.to_string()));
            continue;
        }
        let asked = r
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .map_or(0, |s| s.canary_weight);
        let weights = servable_weights(&config, asked);
        routes.push(ClusterRoute { config, weights });
    }
    routes.sort_by(|a, b| {
        let key = |r: &ClusterRoute| {
            let m = &r.config.matches;
            (
                m.host.is_none(),
                std::cmp::Reverse(m.path_prefix.as_deref().map_or(0, str::len)),
            )
        };
        key(a)
            .cmp(&key(b))
            .then_with(|| a.config.name.cmp(&b.config.name))
    });
    (routes, refused)
}

/// The weights to serve: the status's, unless one side has no ready endpoint, in which
/// case the side that has them takes all the traffic (better served than refused).
fn servable_weights(route: &RouteConfig, canary: WeightBps) -> Option<Vec<(String, WeightBps)>> {
    let has = |i: usize| !route.versions[i].endpoints.is_empty();
    let canary = match (has(0), has(1)) {
        (false, false) => return None,
        (true, false) => 0,
        (false, true) => FULL_WEIGHT,
        (true, true) => canary.min(FULL_WEIGHT),
    };
    Some(vec![
        (STABLE.into(), FULL_WEIGHT - canary),
        (CANARY.into(), canary),
    ])
}

/// The ready endpoints of a Service, as `address:port` of its first port. Terminating
/// endpoints are never ready, so they get no new requests; requests already on them finish.
fn ready_endpoints(
    slices: &[impl Borrow<EndpointSlice>],
    namespace: &str,
    service: &str,
) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = slices
        .iter()
        .map(Borrow::borrow)
        .filter(|s: &&EndpointSlice| {
            s.namespace().as_deref() == Some(namespace)
                && s.labels().get(SERVICE_NAME_LABEL).map(String::as_str) == Some(service)
        })
        .flat_map(|s| ready_addresses(s, None))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The ready endpoints of one slice as `address:port`, on the port named `port_name` (the
/// first port when None). Terminating endpoints are never ready.
pub fn ready_addresses<'a>(
    slice: &'a EndpointSlice,
    port_name: Option<&'a str>,
) -> impl Iterator<Item = SocketAddr> + 'a {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| port_name.is_none_or(|name| p.name.as_deref() == Some(name)))
        .and_then(|p| u16::try_from(p.port?).ok());
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(move |a| Some(SocketAddr::new(a.parse::<IpAddr>().ok()?, port?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::crd::{RolloutResourceStatus, RouteRef};
    use crate::rollout::RolloutStatus;

    fn rollout(
        ns: &str,
        name: &str,
        host: Option<&str>,
        prefix: Option<&str>,
        weight: u16,
    ) -> Rollout {
        let mut r: Rollout = serde_json::from_value(serde_json::json!({
            "apiVersion": "tidegate.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"workloadRef": {"name": name}, "steps": [{"setWeight": 10}]},
        }))
        .unwrap();
        r.spec.route = RouteRef {
            host: host.map(Into::into),
            path_prefix: prefix.map(Into::into),
            port: None,
        };
        let mut record = RolloutStatus::new(name, "stable", 0);
        record.canary_weight = weight;
        r.status = Some(RolloutResourceStatus {
            rollout: Some(record),
            ..Default::default()
        });
        r
    }

    fn slice(
        ns: &str,
        service: &str,
        port: i32,
        endpoints: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{service}-x"), "namespace": ns,
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port}],
            "endpoints": endpoints.iter().map(|(a, ready)| serde_json::json!({
                "addresses": [a], "conditions": {"ready": ready}
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn a_rollout_routes_to_the_ready_endpoints_of_its_two_services_at_its_status_weight() {
        let rollouts = [rollout("shop", "web", Some("web.example.com"), None, 2500)];
        let slices = [
            slice(
                "shop",
                "web-stable",
                8080,
                &[("10.0.0.1", Some(true)), ("10.0.0.2", None)],
            ),
            // Terminating: not ready, no new requests.
            slice("shop", "web-stable", 8080, &[("10.0.0.3", Some(false))]),
            slice("shop", "web-canary", 8080, &[("10.0.1.1", Some(true))]),
            // Another namespace's Service of the same name is not this one's.
            slice("other", "web-canary", 8080, &[("10.9.9.9", Some(true))]),
        ];
        let (routes, refused) = cluster_routes(&rollouts, &slices);
        assert!(refused.is_empty(), "{refused:?}");
        let r = &routes[0];
        assert_eq!(r.config.name, "shop.web");
        assert_eq!(r.config.matches.host.as_deref(), Some("web.example.com"));
        let eps = |i: usize| {
            r.config.versions[i]
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(eps(0), ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(eps(1), ["10.0.1.1:8080"]);
        assert_eq!(
            r.weights.as_deref(),
            Some(&[("stable".to_string(), 7500), ("canary".to_string(), 2500)][..])
        );
        assert_eq!(r.config.initial_version.as_deref(), Some("stable"));
    }

    #[test]
    fn a_side_without_ready_endpoints_gets_no_traffic() {
        let rollouts = [rollout("shop", "web", None, None, 2500)];
        let slices = [slice("shop", "web-stable", 80, &[("10.0.0.1", Some(true))])];
        let (routes, _) = cluster_routes(&rollouts, &slices);
        assert_eq!(
            routes[0].weights.as_ref().unwrap()[1],
            ("canary".to_string(), 0)
        );
        let only_canary = [slice("shop", "web-canary", 80, &[("10.0.1.1", None)])];
        let (routes, _) = cluster_routes(&rollouts, &only_canary);
        assert_eq!(
            routes[0].weights.as_ref().unwrap()[1],
            ("canary".to_string(), 10_000)
        );
        let (routes, _) = cluster_routes(&rollouts, &[] as &[EndpointSlice]);
        assert_eq!(routes[0].weights, None);
    }

    #[test]
    fn specific_routes_come_before_catch_alls_and_bad_routes_are_refused_by_name() {
        let rollouts = [
            rollout("a", "any", None, None, 0),
            rollout("a", "api", None, Some("/api"), 0),
            rollout("a", "host", Some("x.example.com"), None, 0),
            rollout("a", "bad", Some("has space"), None, 0),
        ];
        let (routes, refused) = cluster_routes(&rollouts, &[] as &[EndpointSlice]);
        let names: Vec<_> = routes.iter().map(|r| r.config.name.as_str()).collect();
        assert_eq!(names, ["a.host", "a.api", "a.any"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "a.bad");
        assert!(refused[0].1.contains("host"), "{}", refused[0].1);
    }
}
