//! The one writer of route tables: builds them from the routes in force plus the weights set
//! from outside the config, and publishes them one at a time.

use std::sync::{Arc, Mutex};

use super::{RouteError, RouteReader, RouteTable, RouteWeights, RouteWriter};
use crate::health::{ActiveChecks, EndpointRegistry};
use crate::metrics::Metrics;
use crate::proxy_config::ProxyConfig;
use crate::units::{FULL_WEIGHT, WeightBps, format_percent};

/// The only place route tables come from. A route source (the config file today, the
/// cluster next) replaces the routes; rollouts set weights; both go through here under one
/// lock, so neither undoes the other's change.
pub struct TablePublisher {
    writer: RouteWriter,
    endpoints: Arc<EndpointRegistry>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

struct State {
    config: Arc<ProxyConfig>,
    weights: RouteWeights,
    /// Active health probes of the table in force; a version removed from the table stops
    /// being probed, a new one starts.
    checks: ActiveChecks,
}

impl TablePublisher {
    /// Builds the first table and starts its health probes (call inside a tokio runtime).
    pub fn new(
        config: ProxyConfig,
        weights: RouteWeights,
        endpoints: Arc<EndpointRegistry>,
        metrics: Arc<Metrics>,
    ) -> (Arc<TablePublisher>, RouteReader) {
        let table = RouteTable::from_config(&config, &endpoints, &metrics, &weights);
        let checks = ActiveChecks::start(table.probe_targets());
        let (writer, reader) = RouteWriter::new(table);
        let publisher = TablePublisher {
            writer,
            endpoints,
            metrics,
            state: Mutex::new(State {
                config: Arc::new(config),
                weights,
                checks,
            }),
        };
        (Arc::new(publisher), reader)
    }

    /// The routes in force.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.lock().config.clone()
    }

    /// The table in force.
    pub fn current(&self) -> Arc<RouteTable> {
        self.writer.current()
    }

    /// Puts validated routes in force. Weights set for routes that are gone are forgotten.
    pub fn replace_config(&self, config: ProxyConfig) {
        let mut state = self.lock();
        state
            .weights
            .retain(|route, _| config.routes.iter().any(|r| r.name == *route));
        state.config = Arc::new(config);
        self.publish(&mut state);
    }

    /// Puts validated routes in force together with the weights of some of them, in one
    /// table: a source that knows both (the cluster) never shows its new routes at stale
    /// weights. Weights that do not fit their route are left out and returned with why.
    pub fn replace_config_and_weights(
        &self,
        config: ProxyConfig,
        weights: Vec<(String, Vec<(String, WeightBps)>)>,
    ) -> Vec<RouteError> {
        let mut state = self.lock();
        let mut refused = Vec::new();
        state
            .weights
            .retain(|route, _| config.routes.iter().any(|r| r.name == *route));
        for (route, w) in weights {
            match check_weights(&config, &route, &w) {
                Ok(()) => {
                    state.weights.insert(route, w);
                }
                Err(e) => refused.push(e),
            }
        }
        state.config = Arc::new(config);
        self.publish(&mut state);
        refused
    }

    /// Sets the weights of one route (basis points adding up to 10000): exactly the versions
    /// to keep in its table, the others left out. They stay in force across route changes
    /// until set again; on error nothing changes.
    pub fn set_weights(
        &self,
        route: &str,
        weights: Vec<(String, WeightBps)>,
    ) -> Result<(), RouteError> {
        let mut state = self.lock();
        check_weights(&state.config, route, &weights)?;
        if state.weights.get(route) != Some(&weights) {
            state.weights.insert(route.to_string(), weights);
            self.publish(&mut state);
        }
        Ok(())
    }

    fn publish(&self, state: &mut State) {
        let table = RouteTable::from_config(
            &state.config,
            &self.endpoints,
            &self.metrics,
            &state.weights,
        );
        let targets = table.probe_targets();
        self.writer.publish(table);
        if !state.checks.covers(&targets) {
            state.checks = ActiveChecks::start(targets);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn check_weights(
    config: &ProxyConfig,
    route: &str,
    weights: &[(String, WeightBps)],
) -> Result<(), RouteError> {
    let r = config
        .routes
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| RouteError::UnknownRoute(route.to_string()))?;
    for (name, w) in weights {
        let v = r.versions.iter().find(|v| v.name == *name).ok_or_else(|| {
            RouteError::UnknownVersion {
                route: route.to_string(),
                version: name.clone(),
            }
        })?;
        if *w > 0 && v.endpoints.is_empty() {
            return Err(RouteError::NoEndpoints {
                route: route.to_string(),
                version: name.clone(),
            });
        }
    }
    let total: u32 = weights.iter().map(|(_, w)| u32::from(*w)).sum();
    if total != u32::from(FULL_WEIGHT) {
        return Err(RouteError::WeightsDoNotAddUp {
            route: route.to_string(),
            total: format_percent(total),
        });
    }
    Ok(())
}
