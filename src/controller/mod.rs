//! The local rollout driver: runs the pure engine for every route with a rollout and applies
//! its decisions: persist the status, publish weights, take measurements, notify, remove.

mod effects;
mod metrics;

pub(crate) use metrics::{RolloutCounters, RolloutView};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy_config::{RouteConfig, VersionConfig};
use crate::reload::ConfigListener;
use crate::rollout::{
    self, Command, CommandError, Decision, MeasurementResult, Observations, RolloutSpec,
    RolloutStatus,
};
use crate::routing::{RouteWeights, TablePublisher};
use crate::store::{FileStore, StoreError};
use crate::units::FieldError;

/// Why a command through the controller failed; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no rollout named `{0}` (routes with a `rollout` section are rollouts)")]
    UnknownRollout(String),
    #[error(transparent)]
    Refused(#[from] CommandError),
    #[error("the new status could not be saved, so the command was not applied: {0}")]
    Store(#[from] StoreError),
}

/// Cheap to clone; all clones drive the same rollouts.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    store: FileStore,
    metrics: Arc<Metrics>,
    publisher: OnceLock<Arc<TablePublisher>>,
    rollouts: Mutex<BTreeMap<String, Rollout>>,
    /// Statuses loaded from disk for routes not (yet) in the config: kept, never dropped.
    saved: Mutex<BTreeMap<String, RolloutStatus>>,
    counters: metrics::RolloutCounters,
}

/// One route's rollout as the controller holds it.
struct Rollout {
    spec: RolloutSpec,
    /// The route's versions in config order.
    versions: Vec<String>,
    /// Identity of the configured canary's definition.
    revision: String,
    status: RolloutStatus,
    /// The last save failed: save again at the next decision even without a change.
    unsaved: bool,
    /// Held from a decision until it is saved and in force, so decisions on this rollout
    /// (its loop's and commands) go one at a time while the map's lock is free during the
    /// save: status reads, metrics and other rollouts do not wait for the disk.
    turn: Arc<tokio::sync::Mutex<()>>,
    wake: mpsc::UnboundedSender<Wake>,
    task: AbortHandle,
}

/// What wakes a rollout's task.
enum Wake {
    Now,
    Measured(MeasurementResult),
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    crate::clock::unix_now_ms()
}

impl Controller {
    /// Loads every saved status; a corrupt or unreadable state file stops here.
    pub fn open(store: FileStore, metrics: Arc<Metrics>) -> Result<Controller, StoreError> {
        let saved = store.load_all()?;
        Ok(Controller {
            inner: Arc::new(Inner {
                store,
                metrics,
                publisher: OnceLock::new(),
                rollouts: Mutex::new(BTreeMap::new()),
                saved: Mutex::new(saved),
                counters: Default::default(),
            }),
        })
    }

    /// Weights for the first route table: saved statuses where there are some.
    pub fn initial_weights(&self, config: &Config) -> RouteWeights {
        let saved = self.inner.lock_saved();
        config
            .rollout_routes()
            .filter_map(|(r, _)| {
                let status = saved.get(&r.name)?;
                Some((r.name.clone(), owned_weights(status, r)))
            })
            .collect()
    }

    /// Starts driving the rollouts of `config` (call inside a tokio runtime).
    pub fn start(&self, publisher: Arc<TablePublisher>, config: &Config) {
        let _ = self.inner.publisher.set(publisher);
        self.applied(config);
    }

    pub fn statuses(&self) -> Vec<RolloutStatus> {
        self.inner
            .lock()
            .values()
            .map(|r| r.status.clone())
            .collect()
    }

    pub fn status(&self, route: &str) -> Option<RolloutStatus> {
        self.inner.lock().get(route).map(|r| r.status.clone())
    }

    /// Applies a manual command; the status is saved before anything else changes.
    pub async fn command(&self, route: &str, cmd: Command) -> Result<RolloutStatus, ControlError> {
        let unknown = || ControlError::UnknownRollout(route.to_string());
        let inner = &self.inner;
        let turn = inner.turn(route).ok_or_else(unknown)?;
        let _turn = turn.lock().await;
        let decision = {
            let rollouts = inner.lock();
            let r = rollouts.get(route).ok_or_else(unknown)?;
            let obs = inner.observations(route, r, Vec::new());
            rollout::command(&r.spec, &r.status, cmd, &obs)?
        };
        inner.save(decision.status.clone()).await?;
        tracing::info!(rollout = route, command = cmd.name(), "command applied");
        let mut rollouts = inner.lock();
        let Some(r) = rollouts.get_mut(route) else {
            // Removed from the config during the save: its saved status is the command's.
            inner
                .lock_saved()
                .insert(route.to_string(), decision.status.clone());
            return Ok(decision.status);
        };
        inner.apply(route, r, decision);
        let _ = r.wake.send(Wake::Now);
        Ok(r.status.clone())
    }

    /// Prometheus metrics of the rollouts.
    pub fn render_metrics(&self, out: &mut String) {
        let rollouts = self.inner.lock();
        let view: Vec<_> = rollouts
            .values()
            .map(|r| metrics::RolloutView {
                status: &r.status,
                versions: &r.versions,
                spec: &r.spec,
            })
            .collect();
        self.inner.counters.render(&view, out);
    }
}

impl ConfigListener for Controller {
    fn check(&self, config: &Config) -> Result<(), FieldError> {
        let rollouts = self.inner.lock();
        for (i, route) in config.proxy.routes.iter().enumerate() {
            let Some(r) = rollouts.get(&route.name) else {
                continue;
            };
            if !config.rollouts.contains_key(&route.name) {
                continue;
            }
            let stable = &r.status.stable;
            if !route.versions.iter().any(|v| &v.name == stable) {
                return Err(FieldError::new(
                    format!("routes[{i}].versions"),
                    format!(
                        "version `{stable}` is the stable version of rollout `{}`: keep it until another version is promoted",
                        route.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn applied(&self, config: &Config) {
        let inner = &self.inner;
        let mut rollouts = inner.lock();
        rollouts.retain(|name, r| {
            let keep = config.rollouts.contains_key(name)
                && config.proxy.routes.iter().any(|c| &c.name == name);
            if !keep {
                r.task.abort();
                inner.lock_saved().insert(name.clone(), r.status.clone());
            }
            keep
        });
        for (route, spec) in config.rollout_routes() {
            let versions: Vec<String> = route.versions.iter().map(|v| v.name.clone()).collect();
            let revision = route
                .versions
                .iter()
                .find(|v| v.name == spec.canary)
                .map(revision_of)
                .unwrap_or_default();
            match rollouts.get_mut(&route.name) {
                Some(r) => {
                    r.spec = spec.clone();
                    r.versions = versions;
                    r.revision = revision;
                    let _ = r.wake.send(Wake::Now);
                }
                None => {
                    let status = inner.lock_saved().remove(&route.name).unwrap_or_else(|| {
                        let stable = route.initial_version.as_deref().unwrap_or(&spec.canary);
                        RolloutStatus::new(&route.name, stable, unix_ms())
                    });
                    let (tx, rx) = mpsc::unbounded_channel();
                    let task =
                        tokio::spawn(drive(Arc::downgrade(&self.inner), route.name.clone(), rx))
                            .abort_handle();
                    let _ = tx.send(Wake::Now);
                    rollouts.insert(
                        route.name.clone(),
                        Rollout {
                            spec: spec.clone(),
                            versions,
                            revision,
                            status,
                            unsaved: false,
                            turn: Arc::default(),
                            wake: tx,
                            task,
                        },
                    );
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for r in self
            .rollouts
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            r.task.abort();
        }
    }
}

/// One rollout's loop: decide, apply, sleep until the decision's deadline or a wake-up.
async fn drive(
    inner: std::sync::Weak<Inner>,
    route: String,
    mut wake: mpsc::UnboundedReceiver<Wake>,
) {
    let mut measured = Vec::new();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let requeue = strong.step(&route, std::mem::take(&mut measured)).await;
        drop(strong);
        let Some(sleep) = requeue else { return };
        tokio::select! {
            msg = wake.recv() => match msg {
                None => return,
                Some(Wake::Now) => {}
                Some(Wake::Measured(m)) => measured.push(m),
            },
            _ = tokio::time::sleep(sleep) => {}
        }
        // Take whatever else arrived, so a burst of results makes one decision.
        while let Ok(msg) = wake.try_recv() {
            if let Wake::Measured(m) = msg {
                measured.push(m);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Rollout>> {
        self.rollouts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_saved(&self) -> MutexGuard<'_, BTreeMap<String, RolloutStatus>> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn turn(&self, route: &str) -> Option<Arc<tokio::sync::Mutex<()>>> {
        self.lock().get(route).map(|r| r.turn.clone())
    }

    /// Writes a status on a blocking thread: a slow disk holds up only the rollout it saves.
    async fn save(&self, status: RolloutStatus) -> Result<(), StoreError> {
        let store = self.store.clone();
        let dir = store.dir().to_path_buf();
        // A save that never ran (the runtime shutting down) did not save.
        tokio::task::spawn_blocking(move || store.save(&status))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Write {
                    file: dir,
                    source: std::io::Error::other(e),
                })
            })
    }

    /// One decision for `route`; None when the rollout is gone.
    async fn step(
        self: &Arc<Self>,
        route: &str,
        measured: Vec<MeasurementResult>,
    ) -> Option<Duration> {
        let turn = self.turn(route)?;
        let _turn = turn.lock().await;
        let (decision, save) = {
            let rollouts = self.lock();
            let r = rollouts.get(route)?;
            for m in &measured {
                self.counters.count_verdict(route, &r.spec, &r.status, m);
            }
            let obs = self.observations(route, r, measured);
            let decision = rollout::decide(&r.spec, &r.status, &obs);
            let save = decision.status != r.status || r.unsaved;
            (decision, save)
        };
        // On failure carry on in memory: a rollback must still happen on a full disk.
        // The save is tried again at the next decision.
        let unsaved = save
            && match self.save(decision.status.clone()).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::error!(rollout = route, error = %e, "rollout status not saved; retrying");
                    true
                }
            };
        let mut rollouts = self.lock();
        // Gone from the config during the save: its task is being stopped.
        let r = rollouts.get_mut(route)?;
        // Without a save `r.unsaved` was false already.
        r.unsaved = unsaved;
        let requeue = decision.requeue_after;
        self.apply(route, r, decision);
        // Even with nothing scheduled, look again now and then (endpoints drain, configs change).
        Some(
            requeue
                .unwrap_or(Duration::from_secs(30))
                .min(Duration::from_secs(30)),
        )
    }

    fn observations(
        &self,
        route: &str,
        r: &Rollout,
        measurements: Vec<MeasurementResult>,
    ) -> Observations {
        let active = r
            .versions
            .iter()
            .map(|v| (v.clone(), self.metrics.version(route, v).active()))
            .collect();
        Observations {
            now: unix_ms(),
            canary_revision: r.revision.clone(),
            measurements,
            active,
        }
    }

    /// Puts a decision in force: status, weights, events, effects.
    fn apply(self: &Arc<Self>, route: &str, r: &mut Rollout, d: Decision) {
        r.status = d.status;
        if let Some(publisher) = self.publisher.get() {
            if let Err(e) = publisher.set_weights(route, owned_weights_from(&r.status, &r.versions))
            {
                // The table keeps its weights: the rollout's cannot be served (a version
                // without endpoints, say). Said loudly: the status and the table differ.
                tracing::error!(rollout = route, error = %e, "rollout weights not applied");
            }
        }
        for event in &d.events {
            tracing::info!(rollout = route, event = ?event.kind, step = event.step + 1, canary_weight = %crate::units::format_percent(event.canary_weight.into()), "{}", event.message);
            if event.kind.is_notified()
                && let Some(n) = &r.spec.notify
            {
                effects::notify(n.webhook.clone(), route.to_string(), event.clone());
            }
        }
        for effect in d.effects {
            match effect {
                rollout::Effect::Measure(ask) => {
                    effects::measure(self, route, r, ask, r.wake.clone());
                }
                rollout::Effect::Remove { version } => {
                    // Past its drain timeout nothing more waits for the old version.
                    self.metrics.version(route, &version).close_tunnels();
                    if let Some(cmd) = &r.spec.on_remove {
                        effects::on_remove(cmd.clone(), route.to_string(), version);
                    }
                }
            }
        }
    }
}

fn owned_weights(status: &RolloutStatus, route: &RouteConfig) -> Vec<(String, u16)> {
    let versions: Vec<String> = route.versions.iter().map(|v| v.name.clone()).collect();
    owned_weights_from(status, &versions)
}

fn owned_weights_from(status: &RolloutStatus, versions: &[String]) -> Vec<(String, u16)> {
    status
        .weights(versions.iter().map(String::as_str))
        .into_iter()
        .map(|(v, w)| (v.to_string(), w))
        .collect()
}

/// A short, stable identity of a version's definition (FNV-1a over its fields): a change
/// means a new build to roll out. Stable across tidegate versions, since it is persisted.
pub fn revision_of(v: &VersionConfig) -> String {
    let mut text = format!(
        "{}|{:?}|{}",
        v.name,
        v.protocol,
        v.revision.as_deref().unwrap_or("")
    );
    for e in &v.endpoints {
        text.push('|');
        text.push_str(&e.to_string());
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
