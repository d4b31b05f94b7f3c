//! `tidegate controller`: reconciles every Rollout through the pure planner. Each look
//! records the planned status (server-side apply, one field manager) before it acts, so a
//! new leader resumes exactly where the last one stopped. Only the leader works: losing the
//! lease drops every reconcile in flight at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};

use super::crd::{COMMAND_ANNOTATION, CommandRequest, Rollout, RolloutResourceStatus};
use super::leader::Leadership;
use super::plan::{self, Action, FleetView, Observed};
use super::routes::route_name;
use super::workloads::{FIELD_MANAGER, Workloads};
use crate::analysis::{self, MeasureContext, ProviderSpec, Reading, Vars, judge};
use crate::controller::{RolloutCounters, RolloutView};
use crate::metrics::VersionStats;
use crate::rollout::{MeasureRequest, MeasurementResult};
use crate::units::{FieldError, WeightBps};

/// Why a look at a rollout failed; it is tried again.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("not the leader")]
    NotLeader,
}

/// What the proxies report of a rollout (their applied weights, requests in flight,
/// endpoints), summed over the fleet.
pub trait Fleet: Send + Sync + 'static {
    fn observe(&self, rollout: &Rollout) -> FleetView;

    /// The fleet's summed counts of the canary and the stable version, per second, for the
    /// builtin analysis; None when this fleet counts nothing.
    fn windows(&self, _rollout: &Rollout) -> Option<FleetWindows> {
        None
    }
}

/// A fleet's counts of one rollout.
pub struct FleetWindows {
    pub canary: Arc<VersionStats>,
    pub stable: Arc<VersionStats>,
    /// Unix ms since when every proxy has served the weight they serve now: an analysis
    /// window starts no earlier, so it never judges a step by traffic split the old way.
    pub applied_since: u64,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub workloads: Arc<dyn Workloads>,
    pub fleet: Arc<dyn Fleet>,
    pub recorder: Recorder,
    /// True while this process leads.
    pub leading: tokio::sync::watch::Receiver<bool>,
    /// Measurements back from their providers, by rollout uid, for the next look.
    measured: Mutex<HashMap<String, Vec<MeasurementResult>>>,
    /// Analysis verdicts by outcome, for /metrics.
    counters: RolloutCounters,
    /// The Rollouts as the leading controller last saw them, for /metrics.
    seen: Mutex<Option<Store<Rollout>>>,
    /// The Prometheus server of `prometheus` metrics that name none (`--prometheus`).
    prometheus: Option<String>,
}

impl Context {
    pub fn new(
        client: Client,
        workloads: Arc<dyn Workloads>,
        fleet: Arc<dyn Fleet>,
        identity: &str,
        leading: tokio::sync::watch::Receiver<bool>,
        prometheus: Option<String>,
    ) -> Arc<Context> {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.into()),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            workloads,
            fleet,
            leading,
            measured: Mutex::new(HashMap::new()),
            counters: RolloutCounters::default(),
            seen: Mutex::new(None),
            prometheus,
        })
    }

    /// The rollout metrics of local mode (phase, weights, step, verdicts, the sequential
    /// judge's statistic), labelled `route="<namespace>.<name>"` as the proxies label theirs.
    /// Only while leading: the other replicas' copies would be stale.
    pub fn render_metrics(&self, out: &mut String) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let Some(store) = seen.as_ref().filter(|_| self.leads_now()) else {
            return;
        };
        let rollouts: Vec<(Arc<Rollout>, crate::rollout::RolloutStatus)> = store
            .state()
            .into_iter()
            .filter_map(|r| {
                let mut status = r.status.as_ref()?.rollout.clone()?;
                status.route = route_name(&r);
                Some((r, status))
            })
            .collect();
        drop(seen);
        let versions = [plan::STABLE.to_string(), plan::CANARY.to_string()];
        let views: Vec<RolloutView<'_>> = rollouts
            .iter()
            .map(|(r, status)| RolloutView {
                status,
                versions: &versions,
                spec: &r.spec.strategy,
            })
            .collect();
        self.counters.render(&views, out);
    }

    /// True while this process leads.
    pub fn leads_now(&self) -> bool {
        *self.leading.borrow()
    }

    fn leads(&self) -> Result<(), ReconcileError> {
        if self.leads_now() {
            Ok(())
        } else {
            Err(ReconcileError::NotLeader)
        }
    }

    fn take_measured(&self, uid: &str) -> Vec<MeasurementResult> {
        let mut m = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(uid).unwrap_or_default()
    }
}

/// Which Deployments get a Rollout from their annotations.
#[derive(Debug, Clone)]
pub enum Annotated {
    /// None: only Rollout resources are followed.
    Ignored,
    /// Those of this namespace, or of all when None.
    In(Option<String>),
}

/// Runs the controller while this process leads the election; stops all work when it loses
/// the lease and starts again if it wins it back. When `stop` resolves, it hands the lease
/// over (a successor need not wait for it to run out) and returns.
pub async fn run(
    ctx: Arc<Context>,
    leadership: Leadership,
    rollouts: Api<Rollout>,
    annotated: Annotated,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut leadership = leadership;
    tokio::select! {
        _ = lead(&ctx, &mut leadership, &rollouts, &annotated) => {}
        _ = stop => {}
    }
    tracing::info!("stopping: handing the lease over");
    leadership.step_down().await;
}

async fn lead(
    ctx: &Arc<Context>,
    leadership: &mut Leadership,
    rollouts: &Api<Rollout>,
    annotated: &Annotated,
) {
    loop {
        leadership.became_leader().await;
        tracing::info!("leading: reconciling rollouts");
        let controller = Controller::new(rollouts.clone(), watcher::Config::default());
        *ctx.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(controller.store());
        let controller = controller
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "reconcile failed");
                }
            });
        let adoption = async {
            match annotated {
                Annotated::Ignored => std::future::pending().await,
                Annotated::In(ns) => {
                    super::adopt::run(ctx.client.clone(), ns.clone(), ctx.recorder.clone()).await
                }
            }
        };
        tokio::select! {
            _ = controller => {}
            _ = adoption => {}
            _ = leadership.deposed() => tracing::warn!("lost the lease: stopped at once"),
        }
    }
}

fn error_policy(_: Arc<Rollout>, e: &ReconcileError, _: Arc<Context>) -> Requeue {
    match e {
        ReconcileError::NotLeader => Requeue::requeue(Duration::from_secs(2)),
        ReconcileError::Api(_) => Requeue::requeue(Duration::from_secs(5)),
    }
}

/// Why a `prometheus` metric without an address is refused by a controller without a default.
const NO_DEFAULT_PROMETHEUS: &str = "no address, and the controller has no default (its --prometheus, the chart's prometheus.address)";

/// One look at one rollout.
pub async fn reconcile(
    rollout: Arc<Rollout>,
    ctx: Arc<Context>,
) -> Result<Requeue, ReconcileError> {
    ctx.leads()?;
    let now = crate::clock::unix_now_ms();
    let api: Api<Rollout> =
        Api::namespaced(ctx.client.clone(), &rollout.namespace().unwrap_or_default());
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let spec = &rollout.spec.strategy;
    let refused = match spec.validate_for_cluster() {
        Err(e) => Some(e),
        Ok(()) if ctx.prometheus.is_none() => spec
            .default_prometheus_at()
            .map(|at| FieldError::new(at, NO_DEFAULT_PROMETHEUS)),
        Ok(()) => None,
    };
    if let Some(refused) = refused {
        let message = refused.under("spec").to_string();
        let mut st = status.clone();
        plan::set_condition(
            &mut st.conditions,
            "InvalidSpec",
            true,
            "InvalidSpec",
            &message,
            now,
        );
        // Seen and refused: the generation is observed, and nothing else of the status moves.
        st.observed_generation = rollout.metadata.generation;
        write_status(&ctx, &api, &rollout, st).await?;
        publish(&ctx, &rollout, true, "InvalidSpec", message).await;
        return Ok(Requeue::await_change());
    }
    let Some(workload) = ctx.workloads.observe(&rollout).await? else {
        let message = format!("no Deployment named `{}`", rollout.spec.workload_ref.name);
        let mut st = status.clone();
        plan::set_condition(
            &mut st.conditions,
            "Progressing",
            false,
            "DeploymentMissing",
            &message,
            now,
        );
        write_status(&ctx, &api, &rollout, st).await?;
        return Ok(Requeue::requeue(Duration::from_secs(30)));
    };
    let fleet = ctx.fleet.observe(&rollout);
    let uid = rollout.uid().unwrap_or_default();
    let measurements = ctx.take_measured(&uid);
    if let Some(record) = &status.rollout {
        for m in &measurements {
            ctx.counters
                .count_verdict(&route_name(&rollout), &rollout.spec.strategy, record, m);
        }
    }
    let asked: Option<CommandRequest> = rollout
        .annotations()
        .get(COMMAND_ANNOTATION)
        .and_then(|a| serde_json::from_str(a).ok());
    let plan = plan::plan(&Observed {
        now,
        name: &name,
        spec: &rollout.spec,
        status: &status,
        deployment: &workload.deployment,
        canary: workload.canary.as_ref(),
        stable_service: workload.stable_service.as_deref(),
        fleet: &fleet,
        measurements,
        command: asked.as_ref(),
    });
    let mut st = plan.status;
    // Annotations that could not be used leave the last good spec running, and say so.
    match rollout.annotations().get(super::adopt::INVALID_ANNOTATION) {
        Some(why) => plan::set_condition(
            &mut st.conditions,
            "InvalidSpec",
            true,
            "InvalidAnnotation",
            why,
            now,
        ),
        None => plan::set_condition(&mut st.conditions, "InvalidSpec", false, "Valid", "", now),
    }
    st.observed_generation = rollout.metadata.generation;
    let weight = st.rollout.as_ref().map(|r| r.canary_weight);
    // Recorded before anything is done: a new leader starts from here.
    write_status(&ctx, &api, &rollout, st).await?;
    for action in plan.actions {
        ctx.leads()?;
        match action {
            Action::PauseDeployment(p) => ctx.workloads.set_paused(&rollout, p).await?,
            Action::ApplyCanary { replicas } => {
                ctx.workloads.apply_canary(&rollout, replicas).await?
            }
            Action::DeleteCanary => ctx.workloads.delete_canary(&rollout).await?,
            Action::ApplyServices { stable_hash } => {
                ctx.workloads.apply_services(&rollout, &stable_hash).await?
            }
            Action::Measure(ask) => measure(&ctx, &rollout, uid.clone(), ask, weight),
            Action::Event {
                warning,
                reason,
                message,
            } => publish(&ctx, &rollout, warning, &reason, message).await,
            Action::Notify { webhook, event } => {
                let route = route_name(&rollout);
                tokio::spawn(async move {
                    let payload = crate::notify::NotifyPayload::new(&route, &event);
                    if let Err(e) = crate::notify::post_event(&webhook, &payload).await {
                        tracing::warn!(rollout = %route, %webhook, error = %e, "notification not delivered");
                    }
                });
            }
        }
    }
    Ok(Requeue::requeue(
        plan.requeue_after
            .unwrap_or(Duration::from_secs(10))
            .clamp(Duration::from_millis(200), Duration::from_secs(10)),
    ))
}

/// The status, by server-side apply on the status subresource under tidegate's manager.
async fn write_status(
    ctx: &Context,
    api: &Api<Rollout>,
    rollout: &Rollout,
    status: RolloutResourceStatus,
) -> Result<(), ReconcileError> {
    ctx.leads()?;
    let patch = serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1",
        "kind": "Rollout",
        "status": status,
    });
    api.patch_status(
        &rollout.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(ctx: &Context, rollout: &Rollout, warning: bool, reason: &str, message: String) {
    let event = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.chars().filter(char::is_ascii_alphanumeric).collect(),
        note: Some(message.chars().take(1000).collect()),
        action: "Rollout".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &rollout.object_ref(&())).await {
        tracing::warn!(rollout = %rollout.name_any(), error = %e, "event not recorded");
    }
}

/// Takes one measurement in the background; its result waits for the next look. With the
/// fleet's counts, the window starts once every proxy serves `weight` (the status just
/// written), so a step is not judged by traffic still split the old way.
fn measure(
    ctx: &Arc<Context>,
    rollout: &Arc<Rollout>,
    uid: String,
    mut ask: MeasureRequest,
    weight: Option<WeightBps>,
) {
    let vars = Vars {
        route: rollout.name_any(),
        canary: plan::CANARY.into(),
        stable: plan::STABLE.into(),
        namespace: rollout.namespace().unwrap_or_default(),
    };
    let (ctx, rollout) = (ctx.clone(), rollout.clone());
    fill_prometheus(&mut ask.metric, ctx.prometheus.as_deref());
    tokio::spawn(async move {
        let limit = analysis::measure_timeout(&ask.metric) + Duration::from_secs(1);
        let counts = fleet_windows(&*ctx.fleet, &rollout, weight, limit / 2).await;
        let since = counts
            .as_ref()
            .map_or(ask.since, |c| ask.since.max(c.applied_since));
        let (canary, stable) = counts.map(|c| (c.canary, c.stable)).unzip();
        let context = MeasureContext {
            vars,
            canary,
            stable,
            canary_endpoints: Vec::new(),
            // On the process clock the fleet's windows count in.
            since_ms: since.saturating_sub(crate::clock::unix_offset_ms()),
            unix_offset_ms: crate::clock::unix_offset_ms(),
        };
        let (reading, requests) =
            match tokio::time::timeout(limit, analysis::measure(&ask.metric, &context)).await {
                Ok(r) => r,
                Err(_) => (Reading::Error(format!("no answer within {limit:?}")), None),
            };
        let result = MeasurementResult {
            run_id: ask.run_id,
            metric: ask.index,
            measurement: judge(&ask.metric, reading, crate::clock::unix_now_ms())
                .based_on(requests),
        };
        let mut m = ctx.measured.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(uid).or_default().push(result);
    });
}

/// The fleet's counts of `rollout` once every proxy serves `weight`, waiting up to `wait` for
/// the scrapes to show it (a proxy that lags or is gone leaves the window starting when the
/// proxies last changed what they serve). None when the fleet counts nothing.
async fn fleet_windows(
    fleet: &dyn Fleet,
    rollout: &Rollout,
    weight: Option<WeightBps>,
    wait: Duration,
) -> Option<FleetWindows> {
    let give_up = tokio::time::Instant::now() + wait;
    loop {
        let counts = fleet.windows(rollout)?;
        let applied = fleet.observe(rollout).applied_weight;
        if weight.is_none() || applied == weight || tokio::time::Instant::now() >= give_up {
            return Some(counts);
        }
        tokio::time::sleep(FLEET_POLL).await;
    }
}

/// A `prometheus` metric that names no server asks the controller's.
fn fill_prometheus(metric: &mut analysis::MetricSpec, default: Option<&str>) {
    if let (ProviderSpec::Prometheus(p), Some(default)) = (&mut metric.provider, default)
        && p.address.is_empty()
    {
        p.address = default.to_string();
    }
}

/// How often a measurement waiting for the fleet looks at its latest scrape.
const FLEET_POLL: Duration = Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A fleet whose proxies serve `weight` since `since` (unix ms), as the test sets it.
    struct Lagging {
        state: Mutex<(Option<WeightBps>, u64)>,
        stats: (Arc<VersionStats>, Arc<VersionStats>),
    }

    impl Lagging {
        fn new(weight: WeightBps, since: u64) -> Arc<Lagging> {
            let stats = |v: &str| Arc::new(VersionStats::new("shop.web".into(), v.into()));
            Arc::new(Lagging {
                state: Mutex::new((Some(weight), since)),
                stats: (stats("canary"), stats("stable")),
            })
        }

        fn serve(&self, weight: WeightBps, since: u64) {
            *self.state.lock().unwrap() = (Some(weight), since);
        }
    }

    impl Fleet for Lagging {
        fn observe(&self, _: &Rollout) -> FleetView {
            FleetView {
                applied_weight: self.state.lock().unwrap().0,
                active: Default::default(),
                stable_endpoints: 1,
            }
        }

        fn windows(&self, _: &Rollout) -> Option<FleetWindows> {
            Some(FleetWindows {
                canary: self.stats.0.clone(),
                stable: self.stats.1.clone(),
                applied_since: self.state.lock().unwrap().1,
            })
        }
    }

    fn rollout() -> Rollout {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "tidegate.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"workloadRef": {"name": "web"}},
        }))
        .expect("rollout")
    }

    #[tokio::test(start_paused = true)]
    async fn a_measurement_waits_for_every_proxy_to_serve_the_new_weight() {
        let fleet = Lagging::new(1000, 100);
        let switch = {
            let fleet = fleet.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                fleet.serve(2500, 5_000);
            })
        };
        let start = tokio::time::Instant::now();
        let counts = fleet_windows(&*fleet, &rollout(), Some(2500), Duration::from_secs(10))
            .await
            .expect("counts");
        assert_eq!(
            counts.applied_since, 5_000,
            "the window starts at the switch"
        );
        assert!(start.elapsed() >= Duration::from_secs(2));
        switch.await.unwrap();
    }

    #[test]
    fn a_prometheus_metric_without_an_address_asks_the_controllers_server() {
        let metric = |address: &str| -> analysis::MetricSpec {
            serde_json::from_value(serde_json::json!({"name": "errors",
                "provider": {"prometheus": {"address": address, "query": "up"}}}))
            .expect("metric")
        };
        let address = |m: &analysis::MetricSpec| match &m.provider {
            ProviderSpec::Prometheus(p) => p.address.clone(),
            _ => unreachable!("a prometheus metric"),
        };
        let mut m = metric("");
        fill_prometheus(&mut m, Some("http://prom:9090"));
        assert_eq!(address(&m), "http://prom:9090");
        let mut m = metric("http://own:9090");
        fill_prometheus(&mut m, Some("http://prom:9090"));
        assert_eq!(address(&m), "http://own:9090", "its own address stays");
        let mut m = metric("");
        fill_prometheus(&mut m, None);
        assert_eq!(address(&m), "");
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_that_never_catches_up_is_read_as_it_is_once_the_wait_is_over() {
        let fleet = Lagging::new(1000, 100);
        let start = tokio::time::Instant::now();
        let counts = fleet_windows(&*fleet, &rollout(), Some(2500), Duration::from_secs(3))
            .await
            .expect("counts");
        assert_eq!(counts.applied_since, 100);
        assert!(start.elapsed() >= Duration::from_secs(3));
        // Serving the asked weight already, or asked none: read at once.
        for weight in [Some(1000), None] {
            let start = tokio::time::Instant::now();
            fleet_windows(&*fleet, &rollout(), weight, Duration::from_secs(3))
                .await
                .expect("counts");
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }
}
