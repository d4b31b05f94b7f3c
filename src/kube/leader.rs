//! Leader election over a `coordination.k8s.io` Lease: of several controllers only the
//! leader writes. A leader that cannot renew its hold in time stops leading by itself, before
//! anyone else may take over, so two never write at once.
//!
//! Every change is a replace with the Lease's resourceVersion (a conflict means another
//! contender moved first), which works on every API server. Expiry is judged by the local
//! clock from when a contender last saw the holder renew, not by the holder's timestamps, so
//! clock skew between nodes does not matter (as client-go's leader election does). This is
//! why it is written here: kube-lease-manager (0.13, for kube 5) compares the holder's
//! `renewTime` with the local wall clock, trusting nodes' clocks to agree within its grace.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a hold lasts and how it is kept.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// A hold not renewed for this long may be taken over.
    pub duration: Duration,
    /// A leader that has not renewed for this long stops leading (less than `duration`).
    pub renew_deadline: Duration,
    /// How often contenders look and leaders renew.
    pub retry: Duration,
}

impl LeaseTiming {
    pub fn new(duration: Duration) -> LeaseTiming {
        LeaseTiming {
            duration,
            renew_deadline: duration * 2 / 3,
            retry: duration / 6,
        }
    }
}

/// This process's part in the election. Dropping it stops contending (a held lease then
/// runs out; `step_down` hands it over at once).
pub struct Leadership {
    leader: watch::Receiver<bool>,
    task: JoinHandle<()>,
    lease: Api<Lease>,
    name: String,
    identity: String,
}

impl Leadership {
    /// Contends for the Lease `name` in `namespace` as `identity`.
    pub fn contend(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Leadership {
        let lease: Api<Lease> = Api::namespaced(client, namespace);
        let (tx, leader) = watch::channel(false);
        let task = tokio::spawn(contend(
            lease.clone(),
            name.to_string(),
            identity.to_string(),
            timing,
            tx,
        ));
        Leadership {
            leader,
            task,
            lease,
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    /// A view of the election's outcome for others: true while this process leads.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Leads now: may write.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Waits until this process leads.
    pub async fn became_leader(&mut self) {
        let _ = self.leader.wait_for(|l| *l).await;
    }

    /// Waits until this process no longer leads: what a leader's work stops on.
    pub async fn deposed(&mut self) {
        let _ = self.leader.wait_for(|l| !*l).await;
    }

    /// Stops leading and frees the lease for the others at once.
    pub async fn step_down(self) {
        self.task.abort();
        if let Ok(mut l) = self.lease.get(&self.name).await {
            let spec = l.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(&self.identity) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self
                    .lease
                    .replace(&self.name, &PostParams::default(), &l)
                    .await;
            }
        }
    }

    /// Stops without a word, like a process that died: for tests.
    pub fn vanish(self) {
        self.task.abort();
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a contender saw of the lease last time it changed.
struct Seen {
    holder: Option<String>,
    renew: Option<MicroTime>,
    at: Instant,
}

async fn contend(
    lease: Api<Lease>,
    name: String,
    me: String,
    timing: LeaseTiming,
    leader: watch::Sender<bool>,
) {
    let mut seen: Option<Seen> = None;
    let mut renewed: Option<Instant> = None;
    loop {
        let now = Instant::now();
        match try_hold(&lease, &name, &me, &timing, &mut seen, now).await {
            Ok(true) => renewed = Some(now),
            Ok(false) => renewed = None,
            Err(e) => tracing::debug!(lease = %name, error = %e, "lease not renewed"),
        }
        // Leading only while the last renewal is recent: a leader cut off from the API
        // server stops before anyone may take its place.
        let leading = renewed.is_some_and(|at| at.elapsed() < timing.renew_deadline);
        leader.send_if_modified(|l| std::mem::replace(l, leading) != leading);
        tokio::time::sleep(timing.retry).await;
    }
}

/// One look: renew our hold, or take an expired or free lease. True when we hold it now.
async fn try_hold(
    lease: &Api<Lease>,
    name: &str,
    me: &str,
    timing: &LeaseTiming,
    seen: &mut Option<Seen>,
    now: Instant,
) -> Result<bool, kube::Error> {
    let Some(mut current) = lease.get_opt(name).await? else {
        let fresh = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            spec: Some(held_by(me, timing, 0)),
        };
        return match lease.create(&PostParams::default(), &fresh).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = current.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    // Expiry by our own clock, from when we saw the hold last change.
    let changed = seen
        .as_ref()
        .is_none_or(|s| s.holder != holder || s.renew != spec.renew_time);
    if changed {
        *seen = Some(Seen {
            holder: holder.clone(),
            renew: spec.renew_time.clone(),
            at: now,
        });
    }
    let expired = seen
        .as_ref()
        .is_some_and(|s| now.duration_since(s.at) >= timing.duration);
    let transitions = spec.lease_transitions.unwrap_or(0);
    let next = match holder.as_deref() {
        Some(h) if h == me => held_by(me, timing, transitions),
        Some(_) if !expired => return Ok(false),
        _ => held_by(me, timing, transitions + 1),
    };
    let mut next = next;
    if holder.as_deref() == Some(me) {
        next.acquire_time = spec.acquire_time;
    }
    current.spec = Some(next);
    // The resourceVersion read above makes this a compare-and-swap.
    match lease.replace(name, &PostParams::default(), &current).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn held_by(me: &str, timing: &LeaseTiming, transitions: i32) -> LeaseSpec {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(timing.duration.as_secs().max(1) as i32),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}
