//! A simulated cluster behind the `Workloads` trait: the test server has no `apps` group, so
//! the user's Deployment, `<name>-canary` and the Services live here. Pods become ready and an
//! unpaused Deployment rolls when `settle` is called, or at once with `auto_settle`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tidegate::kube::Rollout;
use tidegate::kube::controller::Fleet;
use tidegate::kube::plan::{CanaryView, DeploymentView, FleetView};
use tidegate::kube::workloads::{Workload, WorkloadFuture, Workloads};

pub struct SimCluster {
    pub state: Mutex<Workload>,
}

impl SimCluster {
    pub fn new(template: &str, replicas: i32) -> Arc<SimCluster> {
        Arc::new(SimCluster {
            state: Mutex::new(Workload {
                deployment: DeploymentView {
                    generation: 1,
                    observed_generation: 1,
                    paused: false,
                    replicas,
                    updated_replicas: replicas,
                    available_replicas: replicas,
                    template: template.into(),
                    template_hash: Some(format!("h-{template}")),
                },
                canary: None,
                stable_service: None,
            }),
        })
    }

    pub fn get(&self) -> Workload {
        self.state.lock().unwrap().clone()
    }

    /// The user changes the pod template; a paused Deployment does not roll.
    pub fn new_template(&self, template: &str) {
        let mut s = self.state.lock().unwrap();
        s.deployment.template = template.into();
        s.deployment.generation += 1;
        s.deployment.template_hash = None;
    }

    /// Pods become ready; an unpaused Deployment rolls onto its template.
    fn settle(s: &mut Workload) {
        if let Some(c) = &mut s.canary {
            c.ready_replicas = c.replicas;
        }
        let d = &mut s.deployment;
        if !d.paused && d.template_hash.is_none() {
            d.template_hash = Some(format!("h-{}", d.template));
            d.observed_generation = d.generation;
        }
    }
}

/// One controller's door to the shared simulated cluster, counting what it did.
pub struct SimWorkloads {
    pub cluster: Arc<SimCluster>,
    pub calls: AtomicU64,
}

impl SimWorkloads {
    pub fn new(cluster: &Arc<SimCluster>) -> Arc<SimWorkloads> {
        Arc::new(SimWorkloads {
            cluster: cluster.clone(),
            calls: AtomicU64::new(0),
        })
    }

    fn change(&self, f: impl FnOnce(&mut Workload)) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut s = self.cluster.state.lock().unwrap();
        f(&mut s);
        SimCluster::settle(&mut s);
    }
}

impl Workloads for SimWorkloads {
    fn observe<'a>(&'a self, _: &'a Rollout) -> WorkloadFuture<'a, Option<Workload>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut s = self.cluster.state.lock().unwrap();
        SimCluster::settle(&mut s);
        let w = s.clone();
        Box::pin(async move { Ok(Some(w)) })
    }

    fn set_paused<'a>(&'a self, _: &'a Rollout, paused: bool) -> WorkloadFuture<'a, ()> {
        self.change(|s| s.deployment.paused = paused);
        Box::pin(async { Ok(()) })
    }

    fn apply_canary<'a>(&'a self, _: &'a Rollout, replicas: i32) -> WorkloadFuture<'a, ()> {
        self.change(|s| {
            let template = s.deployment.template.clone();
            s.canary = Some(CanaryView {
                template,
                replicas,
                ready_replicas: 0,
            });
        });
        Box::pin(async { Ok(()) })
    }

    fn delete_canary<'a>(&'a self, _: &'a Rollout) -> WorkloadFuture<'a, ()> {
        self.change(|s| s.canary = None);
        Box::pin(async { Ok(()) })
    }

    fn apply_services<'a>(&'a self, _: &'a Rollout, hash: &'a str) -> WorkloadFuture<'a, ()> {
        let hash = hash.to_string();
        self.change(|s| s.stable_service = Some(hash));
        Box::pin(async { Ok(()) })
    }
}

/// Proxies that follow the status at once and hold no request: what a fleet reports once it
/// has caught up.
pub struct FollowingFleet;

impl Fleet for FollowingFleet {
    fn observe(&self, rollout: &Rollout) -> FleetView {
        let record = rollout.status.as_ref().and_then(|s| s.rollout.as_ref());
        FleetView {
            applied_weight: record.map(|r| r.canary_weight),
            active: Default::default(),
            stable_endpoints: 1000,
        }
    }
}
