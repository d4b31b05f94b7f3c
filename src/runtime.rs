//! Wires a proxy process together: config, route writer, data plane, admin listener, reloads, signals.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::{Config, ConfigError};
use crate::controller::Controller;
use crate::health::EndpointRegistry;
use crate::metrics::Metrics;
use crate::proxy::{
    self, BoundListener, CertStore, ProxyHandle, ProxySettings, TlsError, TrustedProxies,
};
use crate::reload::Reloader;
use crate::routing::{RouteReader, RouteSource, TablePublisher};
use crate::store::{FileStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("listener `{name}`: cannot listen on {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener `{name}`: {source}")]
    Tls { name: String, source: TlsError },
    #[error("cannot start worker threads: {0}")]
    Workers(std::io::Error),
    #[error("{0}")]
    State(#[from] StoreError),
    #[error("admin token file {file}: {source}")]
    Token {
        file: PathBuf,
        source: std::io::Error,
    },
}

/// A running proxy: data plane workers plus the control tasks around them.
pub struct ProxyProcess {
    /// Listener names and the addresses they are bound to (port 0 resolved).
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin_addr: SocketAddr,
    pub publisher: Arc<TablePublisher>,
    pub routes: RouteReader,
    pub controller: Controller,
    pub metrics: Arc<Metrics>,
    pub reloader: Arc<Reloader>,
    data_plane: ProxyHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl ProxyProcess {
    /// Loads the config and starts everything. Call inside a tokio runtime.
    pub async fn start(config_path: &Path) -> Result<ProxyProcess, StartError> {
        let config = Config::load(config_path)?;
        let settings = ProxySettings::from_config(&config.proxy);
        let metrics = Arc::new(Metrics::default());
        let endpoints = Arc::new(EndpointRegistry::default());
        let state_dir = config
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("tidegate-state"));
        let controller = Controller::open(FileStore::open(&state_dir)?, metrics.clone())?;
        let token = admin_token(&config)?;
        let weights = controller.initial_weights(&config);
        let (publisher, routes) =
            TablePublisher::new(config.proxy.clone(), weights, endpoints, metrics.clone());

        let Bound {
            listeners: bound,
            certs,
            admin: admin_listener,
        } = Bound::bind(&config, settings.workers).await?;
        let admin_addr = admin_listener.local_addr().map_err(StartError::Workers)?;
        let listeners = bound.iter().map(|b| (b.name.clone(), b.addr)).collect();
        let data_plane = proxy::start(bound, settings, routes.clone(), metrics.clone())
            .map_err(StartError::Workers)?;

        controller.start(publisher.clone(), &config);
        let reloader = Arc::new(Reloader::new(
            config_path,
            config.clone(),
            publisher.clone(),
            metrics.clone(),
            certs,
            Some(Arc::new(controller.clone())),
        ));
        let tasks = vec![
            tokio::spawn(admin::serve(
                admin_listener,
                AdminState {
                    routes: routes.clone(),
                    metrics: metrics.clone(),
                    controller: Some(controller.clone()),
                    token,
                    // The file's routes are in force from the start.
                    ready: Arc::new(true.into()),
                },
            )),
            tokio::spawn(reloader.clone().watch()),
        ];
        Ok(ProxyProcess {
            listeners,
            admin_addr,
            publisher,
            routes,
            controller,
            metrics,
            reloader,
            data_plane,
            tasks,
        })
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        listener_addr(&self.listeners, name)
    }

    /// Stops accepting, lets in-flight requests and tunnels finish (up to the drain timeout), stops.
    pub async fn shutdown(self) {
        drain(self.data_plane, self.tasks).await;
    }

    /// Runs until SIGTERM or SIGINT, reloading on SIGHUP; then drains and returns.
    pub async fn run_until_signal(self, mut signals: Signals) {
        let reloader = self.reloader.clone();
        signals
            .wait(|| {
                tracing::info!("SIGHUP: reloading config");
                let _ = reloader.reload();
            })
            .await;
        tracing::info!("shutting down: no new connections, draining the open ones");
        self.shutdown().await;
        tracing::info!("stopped");
    }
}

/// The address listener `name` is bound to, among (name, address) pairs.
pub fn listener_addr(listeners: &[(String, SocketAddr)], name: &str) -> Option<SocketAddr> {
    listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
}

/// Stops accepting, lets in-flight requests and tunnels finish (up to the drain timeout),
/// then stops the tasks around the data plane.
pub async fn drain(data_plane: ProxyHandle, tasks: Vec<JoinHandle<()>>) {
    data_plane.begin_shutdown();
    let _ = tokio::task::spawn_blocking(move || data_plane.wait()).await;
    for t in tasks {
        t.abort();
    }
}

/// The client listeners and the admin listener of a config, bound.
pub struct Bound {
    pub listeners: Vec<BoundListener>,
    /// The TLS listeners' certificates, for reloads.
    pub certs: Vec<Arc<CertStore>>,
    pub admin: tokio::net::TcpListener,
}

impl Bound {
    pub async fn bind(config: &Config, workers: usize) -> Result<Bound, StartError> {
        let mut listeners = Vec::new();
        let mut certs = Vec::new();
        for l in &config.proxy.listeners {
            let tls = match &l.tls {
                Some(t) => {
                    let store =
                        CertStore::load(&t.certificates).map_err(|source| StartError::Tls {
                            name: l.name.clone(),
                            source,
                        })?;
                    certs.push(store.clone());
                    Some(store)
                }
                None => None,
            };
            let b = BoundListener::bind(
                &l.name,
                l.listen,
                workers,
                tls,
                Arc::new(TrustedProxies::new(&l.trusted_proxies)),
            )
            .map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            listeners.push(b);
        }
        let admin = admin::bind(config.admin.listen)
            .await
            .map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr: config.admin.listen,
                source,
            })?;
        Ok(Bound {
            listeners,
            certs,
            admin,
        })
    }
}

/// The signals a proxy process answers to. Installed before startup, so a signal that
/// arrives while the process starts is acted on once it runs instead of killing it.
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Waits for SIGTERM or SIGINT, calling `on_hup` at each SIGHUP meanwhile.
    pub async fn wait(&mut self, on_hup: impl Fn()) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => on_hup(),
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
            }
        }
    }

    /// Call inside a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// The bearer token commands need: from `admin.token_file`, else `TIDEGATE_ADMIN_TOKEN`.
fn admin_token(config: &Config) -> Result<Option<String>, StartError> {
    if let Some(file) = &config.admin.token_file {
        let text = std::fs::read_to_string(file).map_err(|source| StartError::Token {
            file: file.clone(),
            source,
        })?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(StartError::Token {
                file: file.clone(),
                source: std::io::Error::other("the file is empty"),
            });
        }
        return Ok(Some(token));
    }
    Ok(std::env::var("TIDEGATE_ADMIN_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}
