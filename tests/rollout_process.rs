//! The real `tidegate` binary running rollouts as a subprocess: kill -9 and restart at several
//! points of a rollout (durable state, timers included), a corrupt state file, the CLI's
//! commands, output and exit codes, and the admin API's answers.

mod common;
mod control_support;
mod rollout_process_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use hyper::Response;
use tokio::io::AsyncReadExt;

use common::{named_backend, sample, serve};
use control_support::{GatedBackend, free_port, gated_backend};
use rollout_process_support::*;

/// Slack for a timer-driven transition to be observed: decision, save, and polling on two
/// shared cores. Each test kills the process far enough into its timer that a timer restarted
/// from zero would land well outside this.
const MARGIN_MS: u64 = 2500;

fn count(bodies: &[String], version: &str) -> usize {
    bodies.iter().filter(|b| b.as_str() == version).count()
}

/// Weight of `version` in a rollout/route metric of route `app`.
fn metric_weight(m: &prometheus_parse::Scrape, name: &str, version: &str) -> f64 {
    sample(m, name, &[("route", "app"), ("version", version)])
}

// ---------------------------------------------------------------------------------------------
// Durable state: kill -9 and restart.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_pause_keeps_weights_and_ends_the_pause_at_the_original_deadline() {
    const PAUSE_MS: u64 = 8000;
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        "steps:\n- setWeight: 25\n- pause: {duration: 8s}\n- setWeight: 50\n- pause: {}",
    );
    let mut t = fx.run().await;
    let s = fx
        .wait_status(&t, "the timed pause (step 2)", WAIT, |s| {
            step(s) == 1 && canary_weight(s) == 25.0
        })
        .await;
    assert_eq!(phase(&s), "Progressing");
    let started = s["stepStartedAt"].as_u64().expect("stepStartedAt");

    // Halfway through the pause: a timer restarted from zero would end 4 s late.
    sleep_until_ms(started + PAUSE_MS / 2).await;
    assert_eq!(step(&fx.status().await), 1, "still in the pause");
    t.kill9();
    let saved = fx.state_bytes();
    let saved_status = fx.saved_status();
    assert_eq!(saved_status["step"], 1);
    assert_eq!(saved_status["stepStartedAt"], started);

    let t = fx.run().await;
    // Right after the restart, before the pause could have ended: same step, same weights,
    // same timer, and nothing rewritten (coming back is not a transition).
    let w = fx.weights().await;
    assert_eq!((w["v1"], w["v2"]), (75.0, 25.0), "{w:?}");
    let m = fx.metrics().await;
    assert_eq!(
        metric_weight(&m, "tidegate_route_weight_percent", "v2"),
        25.0
    );
    assert_eq!(metric_weight(&m, "tidegate_rollout_weight", "v2"), 25.0);
    let bodies = fx.traffic("/", 20).await;
    assert_eq!(count(&bodies, "v2"), 5, "25 % of 20 requests: {bodies:?}");
    let s = fx.status().await;
    assert_eq!((phase(&s), step(&s)), ("Progressing", 1));
    assert_eq!(s["stepStartedAt"], started, "the pause timer is not reset");
    assert!(
        unix_ms() < started + PAUSE_MS,
        "the restart took too long to check before the deadline"
    );
    assert!(fx.state_bytes() == saved, "the restart rewrote the state");

    // The pause ends at the original deadline, not a full pause after the restart.
    let limit = Duration::from_millis((started + PAUSE_MS + MARGIN_MS).saturating_sub(unix_ms()));
    let s = fx
        .wait_status(&t, "the step after the pause", limit, |s| step(s) >= 3)
        .await;
    let ended = at(last_event(&s, "stepCompleted", "pause of 8s over").expect("pause event"));
    assert!(
        (started + PAUSE_MS..=started + PAUSE_MS + MARGIN_MS).contains(&ended),
        "the pause ended {} ms after it started, expected {PAUSE_MS} ms",
        ended as i64 - started as i64
    );
    assert_eq!(canary_weight(&s), 50.0);
    assert_eq!(fx.weights().await["v2"], 50.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_analysis_keeps_the_measurements_taken_and_completes_at_the_configured_count() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let webhook = serve(move |_req| {
        let c = c.clone();
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        &format!(
            "steps:
- setWeight: 20
- analysis:
    metrics:
    - name: webhook
      interval: 1500ms
      count: 4
      provider: {{http: {{url: \"http://{webhook}/check\"}}}}
- setWeight: 40
- pause: {{}}"
        ),
    );
    let successes = |s: &serde_json::Value| {
        s["stepAnalysis"]["metrics"][0]["tally"]["successes"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut t = fx.run().await;
    // Kill right after the second measurement, well before the third is due.
    let s = fx
        .wait_status(&t, "two successful measurements", WAIT, |s| {
            step(s) == 1 && successes(s) >= 2
        })
        .await;
    t.kill9();
    let calls_before = calls.load(Ordering::SeqCst);
    let saved = fx.saved_status();
    let kept = successes(&saved);
    let run_id = saved["stepAnalysis"]["id"].clone();
    assert_eq!(saved["step"], 1, "killed mid-analysis");
    assert!(
        (2..4).contains(&kept),
        "the saved tally holds the measurements so far: {kept}"
    );
    assert_eq!(run_id, s["stepAnalysis"]["id"]);

    let t = fx.run().await;
    let s = fx.status().await;
    assert_eq!(step(&s), 1);
    assert_eq!(
        s["stepAnalysis"]["id"], run_id,
        "the same analysis run goes on"
    );
    assert!(successes(&s) >= kept, "measurements kept: {s}");
    assert_eq!(fx.weights().await["v2"], 20.0);

    let s = fx
        .wait_status(&t, "the analysis to pass", WAIT, |s| step(s) >= 3)
        .await;
    assert!(
        last_event(
            &s,
            "stepCompleted",
            "step 2: analysis passed (webhook: 4 ok"
        )
        .is_some(),
        "{s:#}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        calls_before + (4 - kept),
        "only the measurements still missing are taken after the restart"
    );
    assert_eq!(canary_weight(&s), 40.0);
    assert_eq!(phase(&s), "Paused");
}

/// Runs the rollout to its pause step, sends a long request that v1 holds, and promotes while
/// it is in flight: the process, the request, and the status the promotion answered.
async fn promote_with_a_request_held_by_v1(
    fx: &Fixture,
    v1: &GatedBackend,
) -> (
    Tidegate,
    tokio::task::JoinHandle<Result<Reply, String>>,
    serde_json::Value,
) {
    let t = fx.run().await;
    fx.wait_status(&t, "the pause step", WAIT, |s| phase(s) == "Paused")
        .await;
    let url = format!("http://{}/slow", fx.listen);
    let long = tokio::spawn(async move { try_request(Method::GET, &url, &[]).await });
    tokio::time::timeout(WAIT, v1.arrived.notified())
        .await
        .expect("the long request reaches v1");
    let s = fx.command("promote").await;
    (t, long, s)
}

/// Waits for the `onRemove` command to have created `marker` in the fixture's directory.
async fn wait_for_on_remove(fx: &Fixture, marker: &str) {
    let marker = fx.cwd().join(marker);
    common::eventually("onRemove runs", WAIT, || {
        let exists = marker.exists();
        async move { exists }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_drain_keeps_the_old_version_out_of_rotation_until_its_original_removal_time() {
    const DELAY_MS: u64 = 6000;
    let v1 = gated_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        "steps:\n- pause: {}\ndrainTimeout: 20s\nscaleDownDelay: 6s\nonRemove: touch removed-{version}",
    );
    let (mut t, long, s) = promote_with_a_request_held_by_v1(&fx, &v1).await;
    assert_eq!((phase(&s), s["stable"].as_str()), ("Healthy", Some("v2")));
    assert_eq!(retiring(&s), ["v1"]);
    let since = s["retiring"][0]["since"].as_u64().expect("since");
    assert_eq!(
        fx.weights().await.get("v1"),
        None,
        "v1 leaves the table at once"
    );

    // Halfway through the scale-down delay.
    sleep_until_ms(since + DELAY_MS / 2).await;
    assert_eq!(retiring(&fx.status().await), ["v1"]);
    t.kill9();
    long.abort();
    assert_eq!(retiring(&fx.saved_status()), ["v1"]);
    let saved = fx.state_bytes();

    let t = fx.run().await;
    let s = fx.status().await;
    assert_eq!(retiring(&s), ["v1"], "still retiring after the restart");
    assert_eq!(
        s["retiring"][0]["since"], since,
        "the drain clock is not reset"
    );
    let w = fx.weights().await;
    assert_eq!((w.get("v1"), w.get("v2")), (None, Some(&100.0)));
    assert_eq!(count(&fx.traffic("/", 10).await, "v2"), 10);
    assert!(!fx.cwd().join("removed-v1").exists());
    assert!(fx.state_bytes() == saved, "the restart rewrote the state");

    let limit = Duration::from_millis((since + DELAY_MS + MARGIN_MS).saturating_sub(unix_ms()));
    let s = fx
        .wait_status(&t, "v1 removed", limit, |s| retired(s) == ["v1"])
        .await;
    assert!(retiring(&s).is_empty());
    let removed = at(last_event(&s, "removed", "`v1` removed").expect("removed event"));
    assert!(
        (since + DELAY_MS..=since + DELAY_MS + MARGIN_MS).contains(&removed),
        "v1 removed {} ms after promotion, expected {DELAY_MS} ms",
        removed as i64 - since as i64
    );
    assert!(
        !fx.weights().await.contains_key("v1"),
        "dropped from the table"
    );
    wait_for_on_remove(&fx, "removed-v1").await;
    v1.release.send_replace(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_drain_then_restart_removes_the_old_version_without_waiting_for_the_drain_timeout()
 {
    let v1 = gated_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        "steps:\n- pause: {}\ndrainTimeout: 20s\nonRemove: touch removed-{version}",
    );
    let (mut t, long, s) = promote_with_a_request_held_by_v1(&fx, &v1).await;
    let since = s["retiring"][0]["since"].as_u64().expect("since");

    // The drain is polled every second: past two polls, only the request in flight keeps v1.
    sleep_until_ms(since + 2500).await;
    let s = fx.status().await;
    assert_eq!(retiring(&s), ["v1"], "the long request holds v1: {s:#}");
    assert_eq!(
        fx.weights().await.get("v1"),
        None,
        "v1 takes no new requests"
    );
    assert_eq!(count(&fx.traffic("/", 5).await, "v2"), 5);
    t.kill9();
    long.abort();
    assert_eq!(retiring(&fx.saved_status()), ["v1"]);

    // The requests v1 held died with the process; nothing is left to wait for.
    let t = fx.run().await;
    let w = fx.weights().await;
    assert!(w.get("v1").is_none_or(|w| *w == 0.0), "{w:?}");
    assert_eq!(count(&fx.traffic("/", 5).await, "v2"), 5);
    let s = fx
        .wait_status(&t, "v1 removed", WAIT, |s| retired(s) == ["v1"])
        .await;
    let removed = last_event(&s, "removed", "`v1` removed").expect("removed event");
    assert!(
        removed["message"]
            .as_str()
            .is_some_and(|m| m.contains("drained")),
        "{removed}"
    );
    assert!(at(removed) < since + 20_000, "before the drain timeout");
    assert!(!fx.weights().await.contains_key("v1"));
    wait_for_on_remove(&fx, "removed-v1").await;
    v1.release.send_replace(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_abort_stays_aborted_with_the_canary_at_zero() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(v1.addr, v2.addr, "steps:\n- setWeight: 30\n- pause: {}");
    let mut t = fx.run().await;
    fx.wait_status(&t, "the pause at 30 %", WAIT, |s| {
        phase(s) == "Paused" && canary_weight(s) == 30.0
    })
    .await;
    assert_eq!(count(&fx.traffic("/", 10).await, "v2"), 3);
    let s = fx.command("abort").await;
    assert_eq!((phase(&s), canary_weight(&s)), ("Degraded", 0.0));
    t.kill9();
    let saved = fx.state_bytes();

    let t = fx.run().await;
    let s = fx.status().await;
    assert_eq!((phase(&s), canary_weight(&s)), ("Degraded", 0.0));
    assert_eq!(s["canary"], "v2", "the canary is kept for inspection");
    assert_eq!(s["message"], "aborted by hand");
    assert_eq!(fx.weights().await["v2"], 0.0);
    let m = fx.metrics().await;
    assert_eq!(
        sample(
            &m,
            "tidegate_rollout_phase",
            &[("route", "app"), ("phase", "Degraded")]
        ),
        1.0
    );
    assert_eq!(metric_weight(&m, "tidegate_rollout_weight", "v2"), 0.0);
    assert_eq!(count(&fx.traffic("/", 10).await, "v1"), 10);

    // It stays aborted: the restarted controller does not pick the rollout up again.
    let until = unix_ms() + 1500;
    while unix_ms() < until {
        let s = fx.status().await;
        assert_eq!((phase(&s), canary_weight(&s)), ("Degraded", 0.0), "{s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fx.state_bytes() == saved, "the restart rewrote the state");

    // And it can still be retried.
    fx.command("retry").await;
    fx.wait_status(&t, "the retried rollout at its pause", WAIT, |s| {
        phase(s) == "Paused" && canary_weight(s) == 30.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_a_manual_pause_stays_paused_past_the_steps_timer() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        "steps:\n- setWeight: 20\n- pause: {duration: 2s}\n- setWeight: 60\n- pause: {}",
    );
    let mut t = fx.run().await;
    let s = fx
        .wait_status(&t, "the timed pause", WAIT, |s| step(s) == 1)
        .await;
    let started = s["stepStartedAt"].as_u64().expect("stepStartedAt");
    let s = fx.command("pause").await;
    assert_eq!((phase(&s), pause_reason(&s)), ("Paused", Some("manual")));
    let since = s["pause"]["since"].clone();
    t.kill9();
    let saved = fx.state_bytes();

    let t = fx.run().await;
    let s = fx.status().await;
    assert_eq!((phase(&s), pause_reason(&s)), ("Paused", Some("manual")));
    assert_eq!(s["pause"]["since"], since);
    assert_eq!((step(&s), canary_weight(&s)), (1, 20.0));
    assert_eq!(fx.weights().await["v2"], 20.0);

    // Well past the end of the 2 s pause step: the manual pause still holds.
    while unix_ms() < started + 3500 {
        let s = fx.status().await;
        assert_eq!(
            (phase(&s), step(&s), canary_weight(&s)),
            ("Paused", 1, 20.0),
            "{s:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fx.state_bytes() == saved, "the restart rewrote the state");

    fx.command("resume").await;
    fx.wait_status(&t, "the rollout going on after resume", WAIT, |s| {
        step(s) == 3 && canary_weight(s) == 60.0 && pause_reason(s) == Some("step")
    })
    .await;
}

/// True when a thread of `pid` waits in the kernel for the other end of a FIFO.
fn waits_on_a_fifo(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("wchan"))
                    .is_ok_and(|w| w.trim() == "wait_for_partner")
            })
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_disk_that_hangs_holds_up_only_the_command_saving_to_it() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        "steps:\n- setWeight: 20\n- pause: {}\n- setWeight: 60\n- pause: {}",
    );
    let t = fx.run().await;
    let paused_at_20 =
        |s: &serde_json::Value| phase(s) == "Paused" && step(s) == 1 && canary_weight(s) == 20.0;
    fx.wait_status(&t, "the first pause", WAIT, paused_at_20)
        .await;
    let saved_before = fx.state_bytes();

    // The next save hangs: the temp file it writes is a FIFO that nobody reads yet.
    let fifo = fx.state_file().with_file_name(".app.json.tmp");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success());
    let pid = t.pid();
    let (promote, written) = tokio::join!(fx.post("promote", fx.token), async {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !waits_on_a_fifo(pid) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the save never reached the state file; log:\n{}",
                t.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Meanwhile status, metrics and traffic answer, and the command is not in force.
        let s = fx.status().await;
        assert!(paused_at_20(&s), "{s:#}");
        let m = fx.metrics().await;
        assert_eq!(metric_weight(&m, "tidegate_rollout_weight", "v2"), 20.0);
        assert_eq!(fx.traffic("/", 5).await.len(), 5);
        // The disk answers: the save hands over the promoted status, then cannot sync a FIFO.
        let fifo = fifo.clone();
        tokio::task::spawn_blocking(move || std::fs::read(fifo))
            .await
            .expect("reader")
            .expect("read the FIFO")
    });
    let written: serde_json::Value = serde_json::from_slice(&written).expect("JSON was written");
    assert_eq!((step(&written), canary_weight(&written)), (3, 60.0));
    // A save that failed applies nothing: the command says so and the rollout stays.
    assert_eq!(promote.status, 500, "{}", promote.body);
    assert!(
        promote
            .body
            .contains("could not be saved, so the command was not applied"),
        "{}",
        promote.body
    );
    assert!(paused_at_20(&fx.status().await));
    assert_eq!(fx.state_bytes(), saved_before);

    std::fs::remove_file(&fifo).expect("remove the FIFO");
    let s = fx.command("promote").await;
    assert_eq!((step(&s), canary_weight(&s)), (3, 60.0));
    assert_eq!(
        (step(&fx.saved_status()), canary_weight(&fx.saved_status())),
        (3, 60.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_the_start_names_the_file_and_is_left_untouched() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(v1.addr, v2.addr, "steps:\n- setWeight: 20\n- pause: {}");
    let mut t = fx.run().await;
    let before = fx
        .wait_status(&t, "the pause", WAIT, |s| phase(s) == "Paused")
        .await;
    t.kill9();
    let good = fx.state_bytes();
    let file = fx.state_file();

    let mut garbled = good.clone();
    let mid = garbled.len() / 2;
    garbled[mid..mid + 8].copy_from_slice(b"\0\xffjunk}{");
    let text = String::from_utf8(good.clone()).expect("state is UTF-8");
    let other_route = text.replacen("\"route\": \"app\"", "\"route\": \"shop\"", 1);
    assert_ne!(other_route, text);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("truncated", good[..good.len() / 2].to_vec(), "is corrupt"),
        ("garbled", garbled, "is corrupt"),
        ("empty", Vec::new(), "is corrupt"),
        (
            "another route's",
            other_route.into_bytes(),
            "is corrupt (it holds route `shop`)",
        ),
    ];
    let state_dir = file.parent().expect("state dir").to_path_buf();
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(&state_dir)
            .expect("list state dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        names.sort();
        names
    };
    for (what, bytes, why) in cases {
        std::fs::write(&file, &bytes).expect("write the bad state file");
        let mut t = fx.spawn();
        let status = t.wait_exit(WAIT).await;
        let log = t.log();
        assert_eq!(status.code(), Some(1), "{what}: {log}");
        assert!(
            log.contains(&format!("state file {} {why}", file.display())),
            "{what}: the message names the file and says why:\n{log}"
        );
        assert!(log.contains("will not replace it"), "{what}:\n{log}");
        assert!(
            std::fs::read(&file).expect("read state file") == bytes,
            "{what}: the file was changed"
        );
        assert_eq!(listing(), ["app.json"], "{what}: nothing else written");
    }

    // Unreadable (a directory where the file should be): the same, naming the file.
    std::fs::remove_file(&file).expect("remove state file");
    std::fs::create_dir(&file).expect("a directory in its place");
    let mut t = fx.spawn();
    let status = t.wait_exit(WAIT).await;
    let log = t.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("state file {} cannot be read", file.display())),
        "{log}"
    );
    assert!(file.is_dir(), "left alone");
    std::fs::remove_dir(&file).expect("remove the directory");

    // Put back, the same state comes back; a temp file left by a crash mid-write is ignored.
    std::fs::write(&file, &good).expect("restore the state file");
    std::fs::write(state_dir.join(".app.json.tmp"), &good[..10]).expect("write a torn temp file");
    let _t = fx.run().await;
    let s = fx.status().await;
    assert_eq!(s["history"], before["history"]);
    assert_eq!((phase(&s), canary_weight(&s)), ("Paused", 20.0));
}

// ---------------------------------------------------------------------------------------------
// The CLI against a running process.
// ---------------------------------------------------------------------------------------------

/// Runs the CLI and checks its exit code, showing what it printed when it differs.
async fn cli_expect(fx: &Fixture, args: &[&str], auth: Auth<'_>, code: i32) -> CliRun {
    let run = fx.cli(args, auth).await;
    assert_eq!(
        run.code,
        Some(code),
        "tidegate {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        run.stdout,
        run.stderr
    );
    run
}

/// The status and the state file, to check a refused command changed nothing.
async fn snapshot(fx: &Fixture) -> (serde_json::Value, Vec<u8>) {
    (fx.status().await, fx.state_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_drive_a_rollout_and_refuse_what_does_not_apply() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        "steps:
- setWeight: 20
- pause: {}
- setWeight: 50
- pause: {duration: 60s}
- setWeight: 80
- pause: {}",
    );
    let token = Auth::Env(TOKEN);
    let t = fx.run().await;
    let paused_at_20 =
        |s: &serde_json::Value| phase(s) == "Paused" && step(s) == 1 && canary_weight(s) == 20.0;
    fx.wait_status(&t, "the first pause", WAIT, paused_at_20)
        .await;

    // promote ends a `pause: {}`.
    let run = cli_expect(&fx, &["promote", "app"], token, 0).await;
    assert!(run.stdout.contains("rollout app: Progressing"), "{run:?}");
    assert!(run.stdout.contains("weight 50%"), "{run:?}");
    let s = fx.status().await;
    assert_eq!(
        (phase(&s), step(&s), canary_weight(&s)),
        ("Progressing", 3, 50.0)
    );
    assert_eq!(fx.weights().await["v2"], 50.0);

    // pause / resume, the token from a file this time.
    let token_file = fx.dir.path().join("admin.token");
    let run = cli_expect(&fx, &["pause", "app"], Auth::File(&token_file), 0).await;
    assert!(run.stdout.contains("paused by hand"), "{run:?}");
    assert_eq!(pause_reason(&fx.status().await), Some("manual"));
    let before = snapshot(&fx).await;
    let run = cli_expect(&fx, &["pause", "app"], token, 1).await;
    assert!(run.stderr.contains("already paused"), "{run:?}");
    assert!(
        snapshot(&fx).await == before,
        "a refused pause changed the rollout"
    );
    let run = cli_expect(&fx, &["resume", "app", "-o", "json"], token, 0).await;
    let s: serde_json::Value = serde_json::from_str(&run.stdout).expect("-o json prints JSON");
    assert_eq!((phase(&s), step(&s)), ("Progressing", 3));

    // abort, then promote does not apply: exit 1, a clear message, nothing changed.
    let run = cli_expect(&fx, &["abort", "app"], token, 0).await;
    assert!(run.stdout.contains("Degraded"), "{run:?}");
    let s = fx.status().await;
    assert_eq!((phase(&s), canary_weight(&s)), ("Degraded", 0.0));
    assert_eq!(fx.weights().await["v2"], 0.0);
    let before = snapshot(&fx).await;
    let run = cli_expect(&fx, &["promote", "app"], token, 1).await;
    assert!(
        run.stderr
            .contains("cannot promote rollout `app` (Degraded): it was aborted")
            && run.stderr.contains("`retry`"),
        "{run:?}"
    );
    assert!(
        snapshot(&fx).await == before,
        "a refused promote changed the rollout"
    );

    // retry goes back to step 1.
    cli_expect(&fx, &["retry", "app"], token, 0).await;
    let s = fx
        .wait_status(
            &t,
            "the retried rollout at its first pause",
            WAIT,
            paused_at_20,
        )
        .await;
    assert!(last_event(&s, "retried", "").is_some());

    // restart from further on goes back to step 1 too.
    let run = cli_expect(&fx, &["promote", "app", "-o", "json"], token, 0).await;
    let s: serde_json::Value = serde_json::from_str(&run.stdout).expect("-o json prints JSON");
    assert_eq!((step(&s), canary_weight(&s)), (3, 50.0));
    cli_expect(&fx, &["restart", "app"], token, 0).await;
    let s = fx
        .wait_status(
            &t,
            "the restarted rollout at its first pause",
            WAIT,
            paused_at_20,
        )
        .await;
    assert!(last_event(&s, "restarted", "").is_some());

    // promote --full: 100 % and complete.
    let run = cli_expect(&fx, &["promote", "app", "--full"], token, 0).await;
    assert!(run.stdout.contains("rollout app: Healthy"), "{run:?}");
    let s = fx.status().await;
    assert_eq!((phase(&s), s["stable"].as_str()), ("Healthy", Some("v2")));
    assert!(s["canary"].is_null());
    assert_eq!(count(&fx.traffic("/", 10).await, "v2"), 10);
    fx.wait_status(&t, "v1 removed", WAIT, |s| retired(s) == ["v1"])
        .await;
    assert_eq!(
        fx.weights().await.into_iter().collect::<Vec<_>>(),
        [("v2".to_string(), 100.0)]
    );
    let before = snapshot(&fx).await;
    let run = cli_expect(&fx, &["promote", "app"], token, 1).await;
    assert!(run.stderr.contains("no rollout in progress"), "{run:?}");
    assert!(snapshot(&fx).await == before);
}

/// Reads a child's stdout into a shared buffer as it comes.
fn collect(mut out: tokio::process::ChildStdout) -> Arc<std::sync::Mutex<String>> {
    let text = Arc::new(std::sync::Mutex::new(String::new()));
    let t = text.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf).await {
            if n == 0 {
                break;
            }
            t.lock()
                .expect("output lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Starts `tidegate status ARGS --watch` against the fixture.
fn watch(fx: &Fixture, args: &[&str]) -> (tokio::process::Child, Arc<std::sync::Mutex<String>>) {
    let mut child = tokio::process::Command::new(BIN)
        .args(["status", "--watch"])
        .args(args)
        .args(["--admin", &fx.admin_url()])
        .env_remove("TIDEGATE_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start status --watch");
    let out = collect(child.stdout.take().expect("stdout"));
    (child, out)
}

/// Canary weights shown by the human `status` view, in the order printed.
fn shown_weights(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("canary "))
        .filter_map(|l| l.split("weight ").nth(1))
        .filter_map(|w| w.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_shows_a_table_a_detail_json_and_watches_the_rollout_move() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(
        v1.addr,
        v2.addr,
        "steps:
- setWeight: 10
- pause: {duration: 2s}
- setWeight: 20
- pause: {duration: 2s}
- setWeight: 30
- pause: {}",
    );
    let t = fx.run().await;
    let (mut human, human_out) = watch(&fx, &["app"]);
    let (mut json, json_out) = watch(&fx, &["app", "-o", "json"]);

    let run = cli_expect(&fx, &["status"], Auth::None, 0).await;
    let mut lines = run.stdout.lines();
    let header: Vec<_> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ROLLOUT", "PHASE", "STABLE", "CANARY", "WEIGHT", "STEP"]
    );
    let row: Vec<_> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[..1], ["app"], "{}", run.stdout);
    assert_eq!(&row[2..4], ["v1", "v2"], "{}", run.stdout);

    let run = cli_expect(&fx, &["status", "app"], Auth::None, 0).await;
    assert!(run.stdout.starts_with("rollout app: "), "{}", run.stdout);
    assert!(run.stdout.contains("stable   v1"), "{}", run.stdout);
    assert!(run.stdout.contains("canary   v2"), "{}", run.stdout);
    assert!(run.stdout.contains("events (UTC):"), "{}", run.stdout);

    let run = cli_expect(&fx, &["status", "app", "-o", "json"], Auth::None, 0).await;
    let s: serde_json::Value = serde_json::from_str(&run.stdout).expect("status -o json");
    assert_eq!(s["route"], "app");
    assert!(s["phase"].is_string() && s["step"].is_u64(), "{s}");
    assert!(s["canaryWeight"].is_f64(), "{s}");
    assert_eq!(
        (s["stable"].as_str(), s["canary"].as_str()),
        (Some("v1"), Some("v2"))
    );

    let run = cli_expect(&fx, &["status", "-o", "json"], Auth::None, 0).await;
    let list: serde_json::Value = serde_json::from_str(&run.stdout).expect("status -o json");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["route"], "app");

    // The watchers follow the rollout to its last pause.
    fx.wait_status(&t, "the last pause", WAIT, |s| phase(s) == "Paused")
        .await;
    common::eventually("the watch shows 30 %", WAIT, || {
        let seen = shown_weights(&human_out.lock().expect("output lock"));
        async move { seen.last().map(String::as_str) == Some("30%") }
    })
    .await;
    common::eventually("the JSON watch shows 30 %", WAIT, || {
        let last = json_out
            .lock()
            .expect("output lock")
            .lines()
            .last()
            .map(str::to_string);
        async move {
            last.and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                .is_some_and(|s| s["canaryWeight"] == 30.0 && s["phase"] == "Paused")
        }
    })
    .await;
    assert!(
        human.try_wait().expect("try_wait").is_none(),
        "watch keeps running"
    );
    assert!(
        json.try_wait().expect("try_wait").is_none(),
        "watch keeps running"
    );

    let text = human_out.lock().expect("output lock").clone();
    let distinct: BTreeSet<_> = shown_weights(&text).into_iter().collect();
    assert!(
        distinct.len() >= 2 && text.matches("\x1b[2J").count() >= 2,
        "the watch redraws as the rollout moves: {text:?}"
    );
    let docs: Vec<serde_json::Value> = json_out
        .lock()
        .expect("output lock")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
        .collect();
    let weights: BTreeSet<String> = docs.iter().map(|d| d["canaryWeight"].to_string()).collect();
    assert!(weights.len() >= 2, "JSON watch: {docs:?}");
    assert!(
        docs.windows(2).all(|w| w[0] != w[1]),
        "the JSON watch prints changes only"
    );

    // Ctrl-C ends a watch cleanly.
    for child in [&mut human, &mut json] {
        let pid = child.id().expect("pid").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success());
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("watch exits on SIGINT")
            .expect("wait");
        assert_eq!(status.code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes_for_unknown_rollouts_bad_tokens_unreachable_admin_and_bad_usage() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(v1.addr, v2.addr, "steps:\n- setWeight: 20\n- pause: {}");
    let t = fx.run().await;
    fx.wait_status(&t, "the pause", WAIT, |s| phase(s) == "Paused")
        .await;
    let before = snapshot(&fx).await;
    let token = Auth::Env(TOKEN);

    // Unknown rollout: 1.
    for args in [
        &["promote", "nope"][..],
        &["abort", "nope"],
        &["status", "nope"],
    ] {
        let run = cli_expect(&fx, args, token, 1).await;
        assert!(run.stderr.contains("no rollout named `nope`"), "{run:?}");
    }

    // Wrong or missing token: 3, nothing changed.
    let run = cli_expect(&fx, &["abort", "app"], Auth::Env("wrong"), 3).await;
    assert!(run.stderr.contains("token"), "{run:?}");
    let run = cli_expect(&fx, &["promote", "app", "--full"], Auth::None, 3).await;
    assert!(run.stderr.contains("token"), "{run:?}");
    let wrong_file = fx.dir.path().join("wrong.token");
    std::fs::write(&wrong_file, "nope\n").expect("write token file");
    cli_expect(&fx, &["abort", "app"], Auth::File(&wrong_file), 3).await;

    // Admin unreachable: 3.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["status", "--admin", &nobody][..],
        &["promote", "app", "--admin", &nobody],
        &["status", "app", "--watch", "--admin", &nobody],
    ] {
        let run = cli_expect(&fx, args, token, 3).await;
        assert!(run.stderr.contains("cannot reach the admin API"), "{run:?}");
    }

    // Bad usage: 2.
    let missing = fx.dir.path().join("missing.token");
    for args in [
        &["promote"][..],
        &["promote", "app", "--fulll"],
        &["status", "app", "-o", "yaml"],
        &["abort", "app", "extra"],
        &["frobnicate", "app"],
    ] {
        let run = cli_expect(&fx, args, token, 2).await;
        assert!(!run.stderr.is_empty(), "{run:?}");
    }
    let run = cli_expect(&fx, &["abort", "app"], Auth::File(&missing), 2).await;
    assert!(run.stderr.contains("missing.token"), "{run:?}");
    let run = cli_expect(&fx, &["status", "--admin", "ftp://127.0.0.1:1"], token, 2).await;
    assert!(run.stderr.contains("bad admin API address"), "{run:?}");
    // A name that is not a route name could reach another command's URL.
    for name in ["app/promote?full=true#", "a b", ""] {
        let run = cli_expect(&fx, &["abort", name], token, 2).await;
        assert!(run.stderr.contains("is not a rollout name"), "{run:?}");
    }

    // The admin address as `host:port`, without a scheme, is plain HTTP.
    let bare = fx.admin.to_string();
    let run = cli_expect(&fx, &["status", "app", "--admin", &bare], token, 0).await;
    assert!(run.stdout.starts_with("rollout app: Paused"), "{run:?}");

    assert!(
        snapshot(&fx).await == before,
        "a failed command changed the rollout"
    );
    assert_eq!(fx.weights().await["v2"], 20.0);
}

// ---------------------------------------------------------------------------------------------
// The admin API, directly.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token_for_commands_and_answers_errors_in_json() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::new(v1.addr, v2.addr, "steps:\n- setWeight: 20\n- pause: {}");
    let t = fx.run().await;
    fx.wait_status(&t, "the pause", WAIT, |s| phase(s) == "Paused")
        .await;
    let api = format!("{}/api/v1", fx.admin_url());

    // Reads are open on loopback.
    let list = request(Method::GET, &format!("{api}/rollouts"), &[]).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.json()["rollouts"][0]["route"], "app");
    assert_eq!(
        request(Method::GET, &format!("{api}/rollouts/app"), &[])
            .await
            .status,
        200
    );

    // A missing or wrong token: 401 with a challenge, and nothing changes.
    let before = snapshot(&fx).await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(&*format!("Bearer {TOKEN}x")),
        Some(&*format!("Basic {TOKEN}")),
        Some("Bearer "),
    ] {
        for verb in ["promote", "abort", "pause", "restart"] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            let a = request(
                Method::POST,
                &format!("{api}/rollouts/app/{verb}"),
                &headers,
            )
            .await;
            assert_eq!(a.status, 401, "{verb} with {auth:?}: {}", a.body);
            assert_eq!(
                a.headers.get("www-authenticate").map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{verb} with {auth:?}"
            );
            assert_eq!(a.json()["code"], "unauthorized");
        }
    }
    assert!(
        snapshot(&fx).await == before,
        "an unauthorized command changed the rollout"
    );

    // Unknown rollout or command: 404 in JSON.
    let a = request(Method::GET, &format!("{api}/rollouts/nope"), &[]).await;
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let a = request(Method::POST, &format!("{api}/rollouts/nope/promote"), &auth).await;
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("`nope`"))
    );
    let a = request(Method::POST, &format!("{api}/rollouts/app/explode"), &auth).await;
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("promote"))
    );
    let a = request(Method::GET, &format!("{api}/rollouts/app/promote"), &[]).await;
    assert_eq!(a.status, 405, "{}", a.body);
    let a = request(
        Method::POST,
        &format!("{api}/rollouts/app/abort?full=true"),
        &auth,
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(snapshot(&fx).await == before);

    // A command that does not apply: 409 in JSON, nothing changes.
    let a = fx.post("resume", Some(TOKEN)).await;
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (409, Some("conflict"))
    );
    assert!(
        a.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("`promote` continues"))
    );
    assert!(snapshot(&fx).await == before);
    fx.command("abort").await;
    let before = snapshot(&fx).await;
    for verb in ["promote", "pause", "resume", "abort"] {
        let a = fx.post(verb, Some(TOKEN)).await;
        assert_eq!(a.status, 409, "{verb}: {}", a.body);
        assert_eq!(a.json()["code"], "conflict");
        assert!(
            a.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("Degraded")),
            "{verb}: {}",
            a.body
        );
    }
    assert!(
        snapshot(&fx).await == before,
        "a refused command changed the rollout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_all_commands_with_403_when_no_token_is_configured() {
    let v1 = named_backend("v1").await;
    let v2 = named_backend("v2").await;
    let fx = Fixture::without_token(v1.addr, v2.addr, "steps:\n- setWeight: 20\n- pause: {}");
    let t = fx.run().await;
    fx.wait_status(&t, "the pause", WAIT, |s| phase(s) == "Paused")
        .await;
    let before = snapshot(&fx).await;
    for token in [None, Some(""), Some("anything")] {
        let a = fx.post("promote", token).await;
        assert_eq!(a.status, 403, "{token:?}: {}", a.body);
        assert_eq!(a.json()["code"], "forbidden");
        assert!(
            a.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("no admin token is configured")),
            "{}",
            a.body
        );
    }
    let run = cli_expect(&fx, &["promote", "app"], Auth::Env("anything"), 3).await;
    assert!(
        run.stderr.contains("no admin token is configured"),
        "{run:?}"
    );
    // Reads still work.
    cli_expect(&fx, &["status", "app"], Auth::None, 0).await;
    assert!(
        snapshot(&fx).await == before,
        "a refused command changed the rollout"
    );
}
