//! Config and certificate reload: on SIGHUP and on file change, validate, then swap or keep the old.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{Config, ConfigError};
use crate::health::{ActiveChecks, EndpointRegistry};
use crate::metrics::{Metrics, ReloadResult};
use crate::proxy::CertStore;
use crate::routing::{RouteTable, RouteWriter};

/// Owns the running config and everything derived from it on the control side.
pub struct Reloader {
    path: PathBuf,
    writer: Arc<RouteWriter>,
    endpoints: Arc<EndpointRegistry>,
    metrics: Arc<Metrics>,
    certs: Vec<Arc<CertStore>>,
    state: Mutex<State>,
}

struct State {
    config: Config,
    checks: ActiveChecks,
    stamp: Option<FileStamp>,
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
    /// Starts active health checks for `config` (call inside a tokio runtime).
    pub fn new(
        path: &Path,
        config: Config,
        writer: Arc<RouteWriter>,
        endpoints: Arc<EndpointRegistry>,
        metrics: Arc<Metrics>,
        certs: Vec<Arc<CertStore>>,
    ) -> Reloader {
        let checks = ActiveChecks::start(writer.current().probe_targets());
        Reloader {
            path: path.to_path_buf(),
            writer,
            endpoints,
            metrics,
            certs,
            state: Mutex::new(State {
                config,
                checks,
                stamp: stamp(path),
            }),
        }
    }

    /// Reads the file again. A valid config replaces the route table in one swap; an
    /// invalid one is logged and counted, and everything running stays as it was.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.stamp = stamp(&self.path);
        let config = match Config::load(&self.path) {
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
        let table = RouteTable::from_config(&config, &self.endpoints, &self.metrics);
        let targets = table.probe_targets();
        self.writer.publish(table);
        state.checks = ActiveChecks::start(targets);
        state.config = config;
        self.metrics.count_config_reload(ReloadResult::Success);
        tracing::info!(file = %self.path.display(), routes = state.config.routes.len(), "config reloaded");
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

/// Settings read once at start: their changes are reported, not applied.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.listeners != new.listeners {
        out.push("listeners");
    }
    if old.admin != new.admin {
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
    if old.log != new.log {
        out.push("log");
    }
    out
}
