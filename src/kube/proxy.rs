//! `tidegate proxy --kube`: a proxy whose routes follow the cluster. Reflectors over the
//! Rollouts (routes, and weights from their status) and over the EndpointSlices of the
//! Services tidegate made feed the same table publisher as file mode.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::task::JoinHandle;

use super::crd::Rollout;
use super::routes::{MANAGED_BY, cluster_routes};
use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::health::EndpointRegistry;
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyHandle, ProxySettings};
use crate::proxy_config::ProxyConfig;
use crate::routing::{RouteSource, SourceFuture, TablePublisher};
use crate::runtime::{Bound, Signals, StartError, drain, listener_addr};

/// Routes from the cluster: the config file's own routes first, then one per Rollout.
pub struct ClusterRoutes {
    client: Client,
    /// Only this namespace's Rollouts and Services; all namespaces when None.
    namespace: Option<String>,
    publisher: Arc<TablePublisher>,
    file: ProxyConfig,
    admin: SocketAddr,
    /// Rollouts whose route was refused, with why: each is logged once, not at every change.
    refused: Mutex<BTreeSet<(String, String)>>,
    /// Set once the first table from the cluster is published (`/readyz`).
    ready: Arc<AtomicBool>,
}

impl ClusterRoutes {
    pub fn new(
        client: Client,
        namespace: Option<String>,
        publisher: Arc<TablePublisher>,
        file: ProxyConfig,
        admin: SocketAddr,
    ) -> ClusterRoutes {
        ClusterRoutes {
            client,
            namespace,
            publisher,
            file,
            admin,
            refused: Mutex::default(),
            ready: Arc::default(),
        }
    }

    /// Whether the first table from the cluster is in force.
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    async fn follow(&self) {
        let (rollouts, rollouts_in) = reflector::store::<Rollout>();
        let (slices, slices_in) = reflector::store::<EndpointSlice>();
        let rollout_changes = watcher(self.api::<Rollout>(), watcher::Config::default())
            .default_backoff()
            .reflect(rollouts_in)
            .map(|_| ());
        let slice_changes = watcher(
            self.api::<EndpointSlice>(),
            watcher::Config::default().labels(MANAGED_BY),
        )
        .default_backoff()
        .reflect(slices_in)
        .map(|_| ());
        let mut changes = std::pin::pin!(futures::stream::select(rollout_changes, slice_changes));
        while changes.next().await.is_some() {
            // Until both have listed everything once, a table would miss routes or endpoints.
            let ready = rollouts.wait_until_ready().now_or_never().is_some()
                && slices.wait_until_ready().now_or_never().is_some();
            if ready {
                self.publish(&rollouts.state(), &slices.state());
            }
        }
    }

    /// Builds the routes from what is watched and publishes them with their weights at once.
    fn publish(&self, rollouts: &[Arc<Rollout>], slices: &[Arc<EndpointSlice>]) {
        let (cluster, refused) = cluster_routes(rollouts, slices);
        self.log_refused(refused);
        let mut config = self.file.clone();
        let mut weights = Vec::new();
        for r in cluster {
            if let Some(w) = r.weights {
                weights.push((r.config.name.clone(), w));
            }
            config.routes.push(r.config);
        }
        if let Err(e) = config.validate(self.admin) {
            tracing::warn!(error = %e, "routes from the cluster refused; the table in force stays");
            return;
        }
        for e in self.publisher.replace_config_and_weights(config, weights) {
            tracing::warn!(error = %e, "weights from the cluster refused");
        }
        if !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!("first route table from the cluster in force: ready");
        }
    }

    fn log_refused(&self, now: Vec<(String, String)>) {
        let now: BTreeSet<_> = now.into_iter().collect();
        let mut before = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        for (route, why) in now.difference(&before) {
            tracing::warn!(route = %route, "Rollout not routed: {why}");
        }
        *before = now;
    }
}

impl RouteSource for ClusterRoutes {
    fn watch(self: Arc<Self>) -> SourceFuture {
        Box::pin(async move { self.follow().await })
    }
}

/// A running `tidegate proxy --kube`.
pub struct ClusterProxy {
    /// Listener names and the addresses they are bound to (port 0 resolved).
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin_addr: SocketAddr,
    pub publisher: Arc<TablePublisher>,
    pub metrics: Arc<Metrics>,
    data_plane: ProxyHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl ClusterProxy {
    /// Loads the config (listeners, admin, timeouts, limits), binds and starts following
    /// the cluster. Call inside a tokio runtime.
    pub async fn start(
        config_path: &Path,
        client: Client,
        namespace: Option<String>,
    ) -> Result<ClusterProxy, StartError> {
        let config = Config::load_for_cluster(config_path)?;
        let settings = ProxySettings::from_config(&config.proxy);
        let metrics = Arc::new(Metrics::default());
        let endpoints = Arc::new(EndpointRegistry::default());
        let (publisher, routes) = TablePublisher::new(
            config.proxy.clone(),
            Default::default(),
            endpoints,
            metrics.clone(),
        );
        let bound = Bound::bind(&config, settings.workers).await?;
        let admin_addr = bound.admin.local_addr().map_err(StartError::Workers)?;
        let listeners = bound
            .listeners
            .iter()
            .map(|b| (b.name.clone(), b.addr))
            .collect();
        let data_plane = proxy::start(bound.listeners, settings, routes.clone(), metrics.clone())
            .map_err(StartError::Workers)?;
        let source = Arc::new(ClusterRoutes::new(
            client,
            namespace,
            publisher.clone(),
            config.proxy.clone(),
            config.admin.listen,
        ));
        let tasks = vec![
            tokio::spawn(admin::serve(
                bound.admin,
                AdminState {
                    routes,
                    metrics: metrics.clone(),
                    controller: None,
                    token: None,
                    ready: source.ready(),
                },
            )),
            tokio::spawn(source.watch()),
        ];
        Ok(ClusterProxy {
            listeners,
            admin_addr,
            publisher,
            metrics,
            data_plane,
            tasks,
        })
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        listener_addr(&self.listeners, name)
    }

    /// Stops accepting, lets in-flight requests and tunnels finish, stops.
    pub async fn shutdown(self) {
        drain(self.data_plane, self.tasks).await;
    }

    /// Runs until SIGTERM or SIGINT; then drains and returns. Routes follow the cluster, so
    /// SIGHUP has nothing to reload.
    pub async fn run_until_signal(self, mut signals: Signals) {
        signals
            .wait(|| tracing::info!("SIGHUP: routes follow the cluster; nothing to reload"))
            .await;
        tracing::info!("shutting down: no new connections, draining the open ones");
        self.shutdown().await;
        tracing::info!("stopped");
    }
}
