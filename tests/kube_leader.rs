//! Leader election on a real API server (k8s-testenv, with Lease served as a CRD in its real
//! group): of two controllers exactly one leads; when it dies without a word the other takes
//! over once the lease runs out; a leader that steps down hands it over.

mod kube_support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use tidegate::kube::leader::{Leadership, LeaseTiming};

const DURATION: Duration = Duration::from_secs(3);

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not happen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_controllers_leads_and_the_other_takes_over_when_it_dies() {
    let client = kube_support::client().await;
    kube_support::install_lease_crd(&client).await;
    let ns = kube_support::namespace("lease");
    let contend = |id: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            Leadership::contend(
                client,
                &ns,
                "tidegate-controller",
                id,
                LeaseTiming::new(DURATION),
            )
        }
    };
    let (a, b) = (contend("a").await, contend("b").await);
    eventually("a leader", || a.is_leader() || b.is_leader()).await;
    // Renewals come and go: never two leaders at once.
    for _ in 0..40 {
        assert!(!(a.is_leader() && b.is_leader()), "two leaders");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, mut other) = if a.is_leader() { (a, b) } else { (b, a) };
    assert!(!other.is_leader());

    // The leader dies without giving the lease up: the other waits the lease out.
    let died = Instant::now();
    leader.vanish();
    tokio::time::timeout(Duration::from_secs(60), other.became_leader())
        .await
        .expect("the other takes over");
    assert!(
        died.elapsed() >= DURATION * 2 / 3,
        "took over after {:?}, before the lease could run out",
        died.elapsed()
    );

    // A third one waits while the new leader holds on, and leads once it steps down.
    let c = contend("c").await;
    tokio::time::sleep(DURATION + Duration::from_secs(1)).await;
    assert!(other.is_leader() && !c.is_leader());
    other.step_down().await;
    eventually("the third takes over", || c.is_leader()).await;

    // Someone else takes the lease from under the leader: it stops leading at its next look.
    let mut c = c;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let mut lease = leases.get("tidegate-controller").await.expect("the lease");
    lease.spec.as_mut().expect("a spec").holder_identity = Some("intruder".into());
    leases
        .replace("tidegate-controller", &PostParams::default(), &lease)
        .await
        .expect("replace the holder");
    tokio::time::timeout(Duration::from_secs(60), c.deposed())
        .await
        .expect("the deposed leader hears it");
    assert!(!c.is_leader());
}
