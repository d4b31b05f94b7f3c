//! Builds route tables from the running config plus rollout weights, and publishes them one at a time.

use std::sync::{Arc, Mutex};

use super::{RolloutWeights, RouteReader, RouteTable, RouteWriter};
use crate::config::Config;
use crate::health::{ActiveChecks, EndpointRegistry};
use crate::metrics::Metrics;
use crate::units::WeightBps;

/// The one place route tables come from: config reloads and rollouts both go through it,
/// under one lock, so neither undoes the other's change.
pub struct TablePublisher {
    writer: RouteWriter,
    endpoints: Arc<EndpointRegistry>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

struct State {
    config: Arc<Config>,
    weights: RolloutWeights,
    /// Active health probes of the table in force; a version removed from the table stops
    /// being probed, a new one starts.
    checks: ActiveChecks,
}

impl TablePublisher {
    /// Builds the first table and starts its health probes (call inside a tokio runtime).
    pub fn new(
        config: Config,
        weights: RolloutWeights,
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

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// Puts a validated config in force.
    pub fn replace_config(&self, config: Config) {
        let mut state = self.lock();
        state.config = Arc::new(config);
        self.publish(&mut state);
    }

    /// Sets the versions a rollout keeps in its route and their weights; publishes on change.
    pub fn set_route_weights(&self, route: &str, weights: Vec<(String, WeightBps)>) {
        let mut state = self.lock();
        if state.weights.get(route) == Some(&weights) {
            return;
        }
        state.weights.insert(route.to_string(), weights);
        self.publish(&mut state);
    }

    /// Direct access for weight changes outside rollouts (tests, tools).
    pub fn writer(&self) -> &RouteWriter {
        &self.writer
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
