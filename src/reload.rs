//! The config file as a route source: on SIGHUP and on file change, validate, then swap or
//! keep the old; certificates likewise.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, ReloadResult};
use crate::proxy::CertStore;
use crate::routing::{RouteSource, TablePublisher};
use crate::units::FieldError;

/// Something that keeps state derived from the config (the rollout controller): it may
/// refuse a config that contradicts that state, and hears when a new one is in force.
pub trait ConfigListener: Send + Sync {
    /// An error (the field and what is wrong with it) refuses the config; nothing changes.
    fn check(&self, config: &Config) -> Result<(), FieldError>;
    /// `config` is now in force.
    fn applied(&self, config: &Config);
}

/// Reloads the config file into the publisher (its routes) and the listener (its rollouts).
pub struct Reloader {
    path: PathBuf,
    publisher: Arc<TablePublisher>,
    metrics: Arc<Metrics>,
    certs: Vec<Arc<CertStore>>,
    listener: Option<Arc<dyn ConfigListener>>,
    state: Mutex<State>,
}

struct State {
    stamp: Option<FileStamp>,
    /// The config in force.
    config: Config,
}

#[derive(Debug, Clone, PartialEq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

impl Reloader {
    /// `config` is the one in force, loaded from `path`.
    pub fn new(
        path: &Path,
        config: Config,
        publisher: Arc<TablePublisher>,
        metrics: Arc<Metrics>,
        certs: Vec<Arc<CertStore>>,
        listener: Option<Arc<dyn ConfigListener>>,
    ) -> Reloader {
        Reloader {
            path: path.to_path_buf(),
            publisher,
            metrics,
            certs,
            listener,
            state: Mutex::new(State {
                stamp: stamp(path),
                config,
            }),
        }
    }

    /// Reads the file again. A valid config replaces the route table in one swap; an
    /// invalid one is logged and counted, and everything running stays as it was.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.stamp = stamp(&self.path);
        let checked = Config::load(&self.path).and_then(|config| {
            let Some(listener) = &self.listener else {
                return Ok(config);
            };
            listener.check(&config).map(|()| config).map_err(|e| {
                let text = std::fs::read_to_string(&self.path).unwrap_or_default();
                ConfigError::in_file(&self.path, &text, e)
            })
        });
        let config = match checked {
            Ok(c) => c,
            Err(e) => {
                self.metrics.count_config_reload(ReloadResult::Failure);
                tracing::error!(error = %e, "config reload rejected; the running config stays");
                return Err(e);
            }
        };
        for field in restart_only_changes(&state.config, &config) {
            tracing::warn!(
                field,
                "this setting changes only on restart; the running value stays"
            );
        }
        let routes = config.proxy.routes.len();
        if let Some(listener) = &self.listener {
            listener.applied(&config);
        }
        self.publisher.replace_config(config.proxy.clone());
        state.config = config;
        self.metrics.count_config_reload(ReloadResult::Success);
        tracing::info!(file = %self.path.display(), routes, "config reloaded");
        Ok(())
    }

    /// Reloads certificates whose files changed; a bad file keeps the old certificate.
    pub fn reload_changed_certs(&self) {
        for store in &self.certs {
            if !store.changed_on_disk() {
                continue;
            }
            match store.reload() {
                Ok(()) => {
                    self.metrics.count_tls_reload(ReloadResult::Success);
                    tracing::info!("TLS certificates reloaded");
                }
                Err(e) => {
                    self.metrics.count_tls_reload(ReloadResult::Failure);
                    tracing::error!(error = %e, "TLS certificate reload failed; the old certificate stays");
                }
            }
        }
    }

    /// Polls the config and certificate files and reloads what changed, every `period`.
    pub async fn watch_files(self: Arc<Self>, period: Duration) {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let changed = {
                let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                stamp(&self.path) != state.stamp
            };
            if changed {
                let _ = self.reload();
            }
            self.reload_changed_certs();
        }
    }
}

impl RouteSource for Reloader {
    fn watch(self: Arc<Self>) -> crate::routing::SourceFuture {
        Box::pin(self.watch_files(Duration::from_secs(1)))
    }
}

/// Settings read once at start: their changes are reported, not applied.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (admin, log) = (old.admin != new.admin, old.log != new.log);
    let (old, new) = (&old.proxy, &new.proxy);
    let mut out = Vec::new();
    if old.listeners != new.listeners {
        out.push("listeners");
    }
    if admin {
        out.push("admin");
    }
    if old.workers != new.workers {
        out.push("workers");
    }
    if old.limits != new.limits {
        out.push("limits");
    }
    if (
        old.timeouts.connect,
        old.timeouts.request_header,
        old.timeouts.upstream_idle,
        old.timeouts.drain,
    ) != (
        new.timeouts.connect,
        new.timeouts.request_header,
        new.timeouts.upstream_idle,
        new.timeouts.drain,
    ) {
        out.push("timeouts (all but upstream_response)");
    }
    if log {
        out.push("log");
    }
    out
}
