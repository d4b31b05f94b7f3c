//! The controller on a real API server (k8s-testenv: Rollouts, Leases and Events are real;
//! the server has no `apps` or core group, so the Deployment, `<name>-canary` and the
//! Services are a simulated cluster behind the `Workloads` trait, and the proxies a fleet
//! that follows the status at once). It adopts and pauses the Deployment, drives a rollout
//! through its steps with every status recorded, and a new controller taking over after the
//! first died resumes mid-step with the pause's timer intact; of two controllers only the
//! leader touches anything, and a leader that lost its lease stops touching anything until it
//! leads again. The status carries the generation it was computed from and the
//! usual conditions; a spec a cluster cannot honour (or a Prometheus metric without an
//! address when the controller has no default) is refused with its field and starts nothing
//! until fixed. An abort asked as the CLI asks it puts all traffic on stable at once and
//! scales the canary down after its delay.

mod kube_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube_support::sim::{FollowingFleet, SimCluster, SimWorkloads};
use tidegate::kube::controller::{self, Context};
use tidegate::kube::leader::{Leadership, LeaseTiming};
use tidegate::kube::{Rollout, RolloutResourceStatus};
use tidegate::rollout::{EventKind, Phase};
use tokio::task::JoinHandle;

const LEASE: Duration = Duration::from_secs(3);

/// A controller process: its lease, its reconciles, and what it did to the cluster.
struct Controller {
    task: JoinHandle<()>,
    workloads: Arc<SimWorkloads>,
    ctx: Arc<Context>,
}

async fn start(client: &Client, ns: &str, identity: &str, cluster: &Arc<SimCluster>) -> Controller {
    let leadership = Leadership::contend(
        client.clone(),
        ns,
        "tidegate-controller",
        identity,
        LeaseTiming::new(LEASE),
    );
    let workloads = SimWorkloads::new(cluster);
    let ctx = Context::new(
        client.clone(),
        workloads.clone(),
        Arc::new(FollowingFleet),
        identity,
        leadership.watch(),
        None,
    );
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), ns);
    let task = tokio::spawn(controller::run(
        ctx.clone(),
        leadership,
        rollouts,
        controller::Annotated::Ignored,
        std::future::pending(),
    ));
    Controller {
        task,
        workloads,
        ctx,
    }
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "{what} did not happen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the controller to adopt the simulated Deployment: it pauses it.
async fn adopted(cluster: &SimCluster) {
    eventually("adoption", async || {
        cluster.get().deployment.paused.then_some(())
    })
    .await;
}

async fn setup(name: &str) -> (Client, String, Api<Rollout>) {
    let client = kube_support::client().await;
    kube_support::install_crd(&client).await;
    kube_support::install_lease_crd(&client).await;
    kube_support::install_event_crd(&client).await;
    let ns = kube_support::namespace(name);
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns);
    let rollout: Rollout = serde_json::from_value(serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "shop"},
        "spec": {
            "workloadRef": {"name": "shop"},
            "steps": [{"setWeight": 20}, {"pause": {"duration": "10s"}}, {"setWeight": 50}, {"pause": {}}],
        },
    }))
    .expect("rollout");
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create the Rollout");
    (client, ns, rollouts)
}

/// Makes the controller look now (it watches Rollouts; the simulated Deployment is not watched).
async fn nudge(rollouts: &Api<Rollout>, n: u32) {
    let patch = serde_json::json!({"metadata": {"annotations": {"test/nudge": n.to_string()}}});
    rollouts
        .patch("shop", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("nudge");
}

/// A condition's status and reason, if the status has it.
fn condition(st: &RolloutResourceStatus, kind: &str) -> Option<(String, String, String)> {
    st.conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_drives_a_rollout_and_a_successor_resumes_mid_step() {
    let (client, ns, rollouts) = setup("drive").await;
    let cluster = SimCluster::new("t1", 10);
    let first = start(&client, &ns, "a", &cluster).await;

    // Adoption: the Deployment is paused, its template recorded as stable.
    eventually("adoption", async || {
        let r = rollouts.get("shop").await.ok()?;
        let st = r.status?;
        (cluster.get().deployment.paused && st.stable_template.as_deref() == Some("t1"))
            .then_some(())
    })
    .await;
    assert_eq!(cluster.get().stable_service.as_deref(), Some("h-t1"));

    // A new template: the canary starts at 20 % with 2 of 10 pods.
    cluster.new_template("t2");
    nudge(&rollouts, 1).await;
    // The status is recorded before the canary is sized: wait for both.
    let at_20 = eventually("the first step", async || {
        let r = rollouts.get("shop").await.ok()?.status?.rollout?;
        let sized = cluster.get().canary.map(|c| c.replicas) == Some(2);
        (r.canary_weight == 2000 && r.step == 1 && sized).then_some(r)
    })
    .await;
    assert!(
        cluster.get().deployment.paused,
        "the Deployment does not roll"
    );
    // The usual Kubernetes conditions and the generation the status was computed from.
    let shop = rollouts.get("shop").await.expect("the Rollout");
    let st = shop.status.expect("a status");
    assert_eq!(st.observed_generation, shop.metadata.generation);
    let state = |kind| condition(&st, kind).map(|(status, reason, _)| (status, reason));
    assert_eq!(
        state("Progressing"),
        Some(("True".into(), "Progressing".into()))
    );
    assert_eq!(
        state("Available"),
        Some(("True".into(), "PodsAvailable".into()))
    );
    assert_eq!(state("InvalidSpec"), Some(("False".into(), "Valid".into())));
    assert_eq!(
        state("Aborted"),
        Some(("False".into(), "NotAborted".into()))
    );

    // The controller dies in the pause; another takes over once the lease runs out.
    first.task.abort();
    let second = start(&client, &ns, "b", &cluster).await;
    // Its first look keeps the pause's start. A look observes the cluster, plans, then
    // writes the status: a second look begun means the first one's write is done.
    eventually("the successor's first look", async || {
        (second.workloads.calls.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    nudge(&rollouts, 2).await;
    eventually("the successor's second look", async || {
        (second.workloads.calls.load(Ordering::SeqCst) > 1).then_some(())
    })
    .await;
    let looked = rollouts.get("shop").await.expect("the Rollout");
    let record = looked.status.and_then(|s| s.rollout).expect("a record");
    if record.step == at_20.step {
        assert_eq!(
            record.step_started_at, at_20.step_started_at,
            "the successor kept the pause's start"
        );
    }
    let at_50 = eventually("the pause to end and the next step", async || {
        let r = rollouts.get("shop").await.ok()?.status?.rollout?;
        let sized = cluster.get().canary.map(|c| c.replicas) == Some(5);
        (r.canary_weight == 5000 && sized).then_some(r)
    })
    .await;
    let pause_over = at_50
        .history
        .iter()
        .find(|e| e.kind == EventKind::StepCompleted && e.message.contains("pause of 10s over"))
        .expect("the pause ended")
        .at;
    assert!(
        pause_over >= at_20.step_started_at + 10_000,
        "the pause was timed from its start, recorded before the restart"
    );
    assert!(
        at_50
            .history
            .iter()
            .filter(|e| e.kind == EventKind::Started)
            .count()
            == 1,
        "the rollout was not restarted: {:#?}",
        at_50.history
    );
    assert_eq!(
        at_50.phase,
        Phase::Paused,
        "waiting at `pause: {{}}` for promote"
    );
    assert!(second.workloads.calls.load(Ordering::SeqCst) > 0);

    // The leader's /metrics shows the rollout as local mode does, named as the proxies name it.
    let route = format!("{ns}.shop");
    let metrics = eventually("the rollout in the leader's metrics", async || {
        let mut out = String::new();
        second.ctx.render_metrics(&mut out);
        out.contains(&format!(
            "tidegate_rollout_weight{{route=\"{route}\",version=\"canary\"}} 50"
        ))
        .then_some(out)
    })
    .await;
    for line in [
        format!("tidegate_rollout_phase{{route=\"{route}\",phase=\"Paused\"}} 1"),
        format!("tidegate_rollout_step{{route=\"{route}\"}} 4"),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // Every transition is a Kubernetes Event on the Rollout.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for reason in ["Adopted", "Started", "StepCompleted", "Paused"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "{reason} in {reasons:?}"
        );
    }
    second.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_that_is_not_for_a_cluster_is_refused_and_changes_nothing_until_fixed() {
    let (client, ns, rollouts) = setup("invalid").await;
    let cluster = SimCluster::new("t1", 10);
    let controller = start(&client, &ns, "a", &cluster).await;
    eventually("adoption", async || {
        let st = rollouts.get("shop").await.ok()?.status?;
        (st.stable_template.as_deref() == Some("t1")).then_some(())
    })
    .await;

    // A field of local mode's spec that the CRD's schema takes but a cluster cannot honour,
    // and a new template: no rollout may start while the spec is refused.
    let spec = |delay: serde_json::Value| serde_json::json!({"spec": {"scaleDownDelay": delay}});
    rollouts
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(&spec("30s".into())),
        )
        .await
        .expect("the bad spec is stored: the schema cannot tell");
    cluster.new_template("t2");
    let (shop, message) = eventually("InvalidSpec", async || {
        let shop = rollouts.get("shop").await.ok()?;
        let st = shop.status.as_ref()?;
        let (status, reason, message) = condition(st, "InvalidSpec")?;
        (status == "True" && reason == "InvalidSpec").then_some((shop.clone(), message))
    })
    .await;
    assert!(
        message.starts_with("spec.scaleDownDelay: not for a Kubernetes rollout"),
        "{message}"
    );
    let st = shop.status.expect("a status");
    assert_eq!(st.observed_generation, shop.metadata.generation);
    assert_eq!(
        st.rollout.as_ref().map_or(0, |r| r.canary_weight),
        0,
        "no step taken"
    );
    assert!(
        cluster.get().canary.is_none(),
        "no canary for a refused spec"
    );
    // The Event follows the status write.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually("a Warning Event saying why", async || {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .any(|e| {
                e.reason.as_deref() == Some("InvalidSpec")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref() == Some(message.as_str())
            })
            .then_some(())
    })
    .await;

    // A Prometheus metric without an address, and this controller has no default server.
    let no_address = serde_json::json!({"spec": {"scaleDownDelay": null, "analysis": {"metrics": [
        {"name": "errors", "provider": {"prometheus": {"query": "up"}}}]}}});
    rollouts
        .patch("shop", &PatchParams::default(), &Patch::Merge(&no_address))
        .await
        .expect("a metric without an address is stored: the controller may have a default");
    eventually("InvalidSpec for the missing address", async || {
        let st = rollouts.get("shop").await.ok()?.status?;
        let (_, _, message) = condition(&st, "InvalidSpec")?;
        message
            .starts_with("spec.analysis.metrics[0].provider.prometheus.address: no address")
            .then_some(())
    })
    .await;
    assert!(cluster.get().canary.is_none(), "still no canary");

    // Fixed: the condition clears and the new template's rollout starts.
    let fix = serde_json::json!({"spec": {"analysis": null}});
    rollouts
        .patch("shop", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("the fix");
    eventually("the rollout to start once the spec is fixed", async || {
        let st = rollouts.get("shop").await.ok()?.status?;
        let valid = condition(&st, "InvalidSpec").is_some_and(|(status, ..)| status == "False");
        let started = st.rollout.is_some_and(|r| r.canary_weight == 2000);
        (valid && started && cluster.get().canary.is_some()).then_some(())
    })
    .await;
    controller.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_controllers_only_the_leader_touches_anything() {
    let (client, ns, rollouts) = setup("two").await;
    let cluster = SimCluster::new("t1", 4);
    let a = start(&client, &ns, "a", &cluster).await;
    let b = start(&client, &ns, "b", &cluster).await;
    adopted(&cluster).await;
    cluster.new_template("t2");
    for n in 0..10 {
        nudge(&rollouts, n).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (ca, cb) = (
        a.workloads.calls.load(Ordering::SeqCst),
        b.workloads.calls.load(Ordering::SeqCst),
    );
    assert!(
        (ca > 0) != (cb > 0),
        "exactly one controller acted: a {ca} calls, b {cb} calls"
    );
    a.task.abort();
    b.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_puts_all_traffic_on_stable_and_scales_the_canary_down_after_its_delay() {
    let (client, ns, rollouts) = setup("abort").await;
    let cluster = SimCluster::new("t1", 10);
    let controller = start(&client, &ns, "a", &cluster).await;
    adopted(&cluster).await;
    let delay = serde_json::json!({"spec": {"abortScaleDownDelay": "5s"}});
    rollouts
        .patch("shop", &PatchParams::default(), &Patch::Merge(&delay))
        .await
        .expect("the delay");
    cluster.new_template("t2");
    nudge(&rollouts, 1).await;
    eventually("the first step", async || {
        let r = rollouts.get("shop").await.ok()?.status?.rollout?;
        let sized = cluster.get().canary.map(|c| c.replicas) == Some(2);
        (r.canary_weight == 2000 && sized).then_some(())
    })
    .await;

    // As `tidegate abort --kube` asks it: a request on the Rollout the leader answers.
    let record = tidegate::kube::commands::ask(
        client.clone(),
        &ns,
        "shop",
        "abort",
        false,
        Duration::from_secs(60),
    )
    .await
    .expect("the abort is applied");
    assert_eq!(record.canary_weight, 0, "all traffic on stable at once");
    assert_eq!(record.phase, Phase::Degraded);
    assert_eq!(
        cluster.get().canary.map(|c| c.replicas),
        Some(2),
        "the canary keeps its pods through abortScaleDownDelay"
    );
    let st = rollouts.get("shop").await.expect("the Rollout").status;
    let aborted = st.as_ref().and_then(|st| condition(st, "Aborted"));
    assert_eq!(aborted.map(|(status, ..)| status).as_deref(), Some("True"));

    eventually("the canary scaled down after the delay", async || {
        let replicas = cluster.get().canary.map_or(0, |c| c.replicas);
        (replicas == 0).then_some(())
    })
    .await;
    assert!(
        cluster.get().deployment.paused,
        "the Deployment never rolls onto the aborted template"
    );
    controller.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_stops_at_once_and_acts_again_only_when_it_leads_again() {
    let (client, ns, rollouts) = setup("deposed").await;
    let cluster = SimCluster::new("t1", 4);
    let a = start(&client, &ns, "a", &cluster).await;
    adopted(&cluster).await;

    // Someone else holds the lease and keeps renewing it.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let intruder = tokio::spawn(async move {
        loop {
            if let Ok(mut lease) = leases.get("tidegate-controller").await {
                let spec = lease.spec.get_or_insert_with(Default::default);
                spec.holder_identity = Some("intruder".into());
                spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
                let _ = leases
                    .replace("tidegate-controller", &PostParams::default(), &lease)
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    eventually("the leader to hear it lost the lease", async || {
        (!a.ctx.leads_now()).then_some(())
    })
    .await;

    // A new template, and looks longer than the lease: a leader would start a rollout.
    let calls = a.workloads.calls.load(Ordering::SeqCst);
    let before = rollouts.get("shop").await.expect("the Rollout").status;
    cluster.new_template("t2");
    for n in 0..15 {
        nudge(&rollouts, n).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        a.workloads.calls.load(Ordering::SeqCst),
        calls,
        "the deposed controller touched the cluster"
    );
    assert_eq!(
        rollouts.get("shop").await.expect("the Rollout").status,
        before,
        "the deposed controller wrote the status"
    );
    assert!(cluster.get().canary.is_none());

    // The intruder goes away: once its hold runs out the controller leads and acts again.
    intruder.abort();
    eventually(
        "the rollout to start under the regained lease",
        async || {
            let r = rollouts.get("shop").await.ok()?.status?.rollout?;
            (r.canary_weight == 2000 && cluster.get().canary.is_some()).then_some(())
        },
    )
    .await;
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_through_the_controller_ends_with_the_deployment_paused_on_the_new_template() {
    let client = kube_support::client().await;
    kube_support::install_crd(&client).await;
    kube_support::install_lease_crd(&client).await;
    kube_support::install_event_crd(&client).await;
    let ns = kube_support::namespace("promote");
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns);
    let rollout: Rollout = serde_json::from_value(serde_json::json!({
        "apiVersion": "tidegate.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "shop"},
        "spec": {"workloadRef": {"name": "shop"}, "steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]},
    }))
    .expect("rollout");
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .expect("create");
    let cluster = SimCluster::new("t1", 4);
    let c = start(&client, &ns, "a", &cluster).await;
    adopted(&cluster).await;
    cluster.new_template("t2");
    nudge(&rollouts, 1).await;
    let done = eventually("the promotion's end", async || {
        let st = rollouts.get("shop").await.ok()?.status?;
        let r = st.rollout.clone()?;
        (st.promotion.is_none()
            && st.stable_template.as_deref() == Some("t2")
            && r.phase == Phase::Healthy)
            .then_some(st)
    })
    .await;
    // The status is written before the controller acts on it: the last acts follow.
    let w = eventually("the canary Deployment removed", async || {
        let w = cluster.get();
        (w.canary.is_none() && w.deployment.paused).then_some(w)
    })
    .await;
    assert!(w.deployment.paused, "paused again");
    assert_eq!(
        w.deployment.template_hash.as_deref(),
        Some("h-t2"),
        "rolled onto the new template"
    );
    assert_eq!(w.stable_service.as_deref(), Some("h-t2"));
    assert_eq!(done.stable_revision.as_deref(), Some("h-t2"));
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let promoting = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Promoting"))
        .map(|e| e.series.map_or(1, |s| s.count))
        .sum::<i32>();
    assert!(
        promoting >= 5,
        "a Promoting event per stage (repeats kept as a series): {promoting}"
    );
    c.task.abort();
}

/// Runs the `tidegate` binary against the test API server: exit code, stdout, stderr.
fn tidegate(args: &[&str]) -> (i32, String, String) {
    let kubeconfig = std::env::var("TIDEGATE_TEST_KUBECONFIG").expect("TIDEGATE_TEST_KUBECONFIG");
    tidegate_with(&kubeconfig, args)
}

fn tidegate_with(kubeconfig: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("run tidegate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_with_kube_are_answered_by_the_leading_controller() {
    let (client, ns, rollouts) = setup("cli").await;
    let cluster = SimCluster::new("t1", 10);
    let c = start(&client, &ns, "a", &cluster).await;
    adopted(&cluster).await;
    cluster.new_template("t2");
    nudge(&rollouts, 1).await;
    eventually("the first step", async || {
        let r = rollouts.get("shop").await.ok()?.status?.rollout?;
        (r.canary_weight == 2000).then_some(())
    })
    .await;

    // The binary blocks: run it off the runtime the controller lives on.
    let run = |list: &[&str]| {
        let args: Vec<String> = list.iter().map(|a| a.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                tidegate(&args)
            })
            .await
            .expect("join")
        }
    };
    let (code, out, err) = run(&["pause", "--kube", "-n", &ns, "shop"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Paused") && out.contains("paused by hand"),
        "{out}"
    );

    let (code, _, err) = run(&["pause", "--kube", "-n", &ns, "shop"]).await;
    assert_eq!(code, 1, "refused: {err}");
    assert!(
        err.contains("cannot pause") && err.contains("already paused"),
        "{err}"
    );

    let (code, out, err) = run(&["status", "--kube", "-n", &ns, "-o", "json", "shop"]).await;
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["phase"], "Paused");
    assert_eq!(status["canaryWeight"], 20.0);

    // Without -n, the kubeconfig context's namespace, as kubectl does.
    let test_kubeconfig = std::env::var("TIDEGATE_TEST_KUBECONFIG").expect("kubeconfig");
    let text = std::fs::read_to_string(&test_kubeconfig).expect("kubeconfig read");
    assert!(text.contains("namespace: default"), "{text}");
    let dir = tempfile::tempdir().expect("tempdir");
    let in_ns = dir.path().join("kubeconfig");
    std::fs::write(
        &in_ns,
        text.replace("namespace: default", &format!("namespace: {ns}")),
    )
    .expect("kubeconfig written");
    let in_ns = in_ns.to_string_lossy().into_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        tidegate_with(&in_ns, &["status", "--kube", "-o", "json", "shop"])
    })
    .await
    .expect("join");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"Paused\""), "{out}");

    let (code, _, err) = run(&["resume", "--kube", "-n", "nowhere", "shop"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no Rollout `shop` in namespace `nowhere`"),
        "{err}"
    );
    c.task.abort();
}

/// The `tidegate controller` binary against the real API server (which has no `apps` group,
/// so what is checked is the process): it leads, serves its probes, and on SIGTERM hands its
/// lease over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_binary_leads_serves_probes_and_hands_its_lease_over_on_sigterm() {
    let (client, ns, _) = setup("binary").await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("addr").port()
    };
    let kubeconfig = std::env::var("TIDEGATE_TEST_KUBECONFIG").expect("kubeconfig");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["controller", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--namespace", &ns, "--identity", "binary-a"])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", &ns)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tidegate controller starts");
    // A failed assertion must not leave the process behind.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
    let _guard = KillOnDrop(child.id());
    let get = |path: &'static str| async move {
        let url = format!("http://127.0.0.1:{port}{path}");
        let resp = tidegate::httpclient::HttpRequest::get(url)
            .send()
            .await
            .ok()?;
        Some((
            resp.status,
            String::from_utf8_lossy(&resp.body).into_owned(),
        ))
    };
    eventually("the probes answer", async || {
        (get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(get("/healthz").await.map(|r| r.0), Some(200));
    eventually("it leads", async || {
        get("/metrics")
            .await?
            .1
            .contains("tidegate_controller_leader 1")
            .then_some(())
    })
    .await;
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let leases: Api<Lease> = Api::namespaced(client, &ns);
    let lease = leases.get("tidegate-controller").await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity),
        None,
        "handed over, not left to run out"
    );
}
