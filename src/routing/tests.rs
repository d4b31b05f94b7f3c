use http::{HeaderMap, HeaderValue};

use super::*;
use crate::health::EndpointRegistry;
use crate::metrics::Metrics;
use crate::proxy_config::ProxyConfig;

const CONFIG: &str = r#"
listeners: [{name: web, listen: "127.0.0.1:8080"}]
routes:
  - name: api
    match: {host: "*.example.com", path_prefix: /api/, headers: [{name: x-env, value: prod}]}
    version_header: x-tidegate-version
    sticky: {cookie: tg}
    versions:
      - {name: stable, weight: 90, endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]}
      - {name: canary, weight: 10, endpoints: ["127.0.0.1:9003"]}
  - name: rest
    versions:
      - {name: stable, weight: 100, endpoints: ["127.0.0.1:9001"]}
      - {name: canary, weight: 0, endpoints: []}
"#;

fn table() -> (Arc<TablePublisher>, RouteReader) {
    let config: ProxyConfig = yaml_serde::from_str(CONFIG).unwrap();
    config.validate("127.0.0.1:9901".parse().unwrap()).unwrap();
    TablePublisher::new(
        config,
        Default::default(),
        Arc::new(EndpointRegistry::default()),
        Arc::new(Metrics::default()),
    )
}

fn weights(pairs: &[(&str, WeightBps)]) -> Vec<(String, WeightBps)> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

fn route_for(reader: &RouteReader, host: &str, path: &str, h: &HeaderMap) -> String {
    reader
        .load()
        .find(Some(host), path, h)
        .map(|r| r.name.to_string())
        .unwrap_or_default()
}

#[test]
fn matches_host_path_segments_and_headers() {
    let (_w, r) = table();
    let prod = headers(&[("x-env", "prod")]);
    assert_eq!(
        route_for(&r, "shop.example.com:8080", "/api/cart", &prod),
        "api"
    );
    assert_eq!(route_for(&r, "SHOP.Example.com", "/api", &prod), "api");
    assert_eq!(route_for(&r, "Shop.EXAMPLE.com:443", "/api", &prod), "api");
    assert_eq!(route_for(&r, "shop.example.com", "/api?x=1", &prod), "api");
    assert_eq!(
        route_for(&r, "shop.example.com", "/apix", &prod),
        "rest",
        "prefix matches whole segments"
    );
    assert_eq!(
        route_for(&r, "example.com", "/api/cart", &prod),
        "rest",
        "wildcard needs a subdomain"
    );
    assert_eq!(
        route_for(&r, "shop.example.com", "/api/cart", &HeaderMap::new()),
        "rest"
    );
}

#[test]
fn version_header_forces_even_a_version_without_weight() {
    let (w, r) = table();
    w.set_weights("api", weights(&[("stable", 10_000), ("canary", 0)]))
        .unwrap();
    let t = r.load();
    let api = t.route("api").unwrap();
    let (i, how) = api.choose(&headers(&[("x-tidegate-version", "canary")]));
    assert_eq!((&*api.versions[i].name, how), ("canary", Choice::Forced));
    let (i, how) = api.choose(&headers(&[("x-tidegate-version", "nope")]));
    assert_eq!((&*api.versions[i].name, how), ("stable", Choice::Weighted));
}

#[test]
fn sticky_cookie_holds_only_while_its_version_has_weight() {
    let (w, r) = table();
    let cookie = headers(&[("cookie", "a=b; tg=canary")]);
    let (i, how) = r.load().route("api").unwrap().choose(&cookie);
    assert_eq!((i, how), (1, Choice::Sticky));
    w.set_weights("api", weights(&[("stable", 10_000)]))
        .unwrap();
    let t = r.load();
    for _ in 0..20 {
        assert_eq!(
            t.route("api").unwrap().choose(&cookie),
            (0, Choice::Weighted)
        );
    }
}

#[test]
fn bad_weight_changes_are_refused_and_change_nothing() {
    let (w, r) = table();
    assert_eq!(
        w.set_weights("api", weights(&[("stable", 5000), ("canary", 4000)])),
        Err(RouteError::WeightsDoNotAddUp {
            route: "api".into(),
            total: "90".into()
        })
    );
    assert!(matches!(
        w.set_weights("nope", weights(&[])),
        Err(RouteError::UnknownRoute(_))
    ));
    assert!(matches!(
        w.set_weights("api", weights(&[("blue", 10_000)])),
        Err(RouteError::UnknownVersion { .. })
    ));
    assert!(matches!(
        w.set_weights("rest", weights(&[("canary", 10_000)])),
        Err(RouteError::NoEndpoints { .. })
    ));
    let t = r.load();
    assert_eq!(
        t.route("api")
            .unwrap()
            .versions
            .iter()
            .map(|v| v.weight)
            .collect::<Vec<_>>(),
        vec![9000, 1000]
    );
}

#[test]
fn set_weights_outlast_a_new_config_and_leave_unlisted_versions_out() {
    let (w, r) = table();
    w.set_weights("api", weights(&[("canary", 10_000)]))
        .unwrap();
    let mut config = (*w.config()).clone();
    config.routes[0].upstream_response_timeout = Some(std::time::Duration::from_secs(3));
    w.replace_config(config);
    let t = r.load();
    let api = t.route("api").unwrap();
    assert_eq!(api.response_timeout, std::time::Duration::from_secs(3));
    let names: Vec<_> = api.versions.iter().map(|v| (&*v.name, v.weight)).collect();
    assert_eq!(
        names,
        [("canary", 10_000)],
        "a reload does not undo the weights"
    );
}

#[test]
fn weight_changes_keep_endpoint_state_and_counters() {
    let (w, r) = table();
    let before = r.load_full();
    w.set_weights("api", weights(&[("stable", 5000), ("canary", 5000)]))
        .unwrap();
    let after = r.load_full();
    let (a, b) = (
        &before.route("api").unwrap().versions[1],
        &after.route("api").unwrap().versions[1],
    );
    assert!(Arc::ptr_eq(&a.endpoints[0], &b.endpoints[0]));
    assert!(Arc::ptr_eq(&a.stats, &b.stats));
    assert_eq!(b.weight, 5000);
}

#[test]
fn cookies_are_found_at_their_boundaries_only() {
    let h = headers(&[("cookie", "xtg=v9; a=b;tg=\"canary\" ; c=d")]);
    assert_eq!(cookie_value(&h, "tg"), Some("canary"));
    let h = headers(&[("cookie", "atg=x"), ("cookie", "tgx=y; tg=stable")]);
    assert_eq!(cookie_value(&h, "tg"), Some("stable"));
    assert_eq!(cookie_value(&headers(&[("cookie", "tg")]), "tg"), None);
    assert_eq!(cookie_value(&headers(&[("cookie", "tg=")]), "tg"), Some(""));
}
