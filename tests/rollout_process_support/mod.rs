//! Support for the rollout process tests: a `tidegate run` child killed on drop, a fixture
//! holding its config and state dir, admin API and CLI calls, and waiting on rollout status.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde_json::Value;

use crate::common::client;
pub use crate::control_support::Reply;
use crate::control_support::{free_port, send};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidegate");
/// How long a debug build on two shared cores may take to come up or answer.
pub const WAIT: Duration = Duration::from_secs(15);
/// The admin token of fixtures that have one.
pub const TOKEN: &str = "t0ken-for-tests";

/// Variables a caller's environment might set that would change what the binary does.
const OUR_ENV: [&str; 5] = [
    "TIDEGATE_ADMIN",
    "TIDEGATE_ADMIN_TOKEN",
    "TIDEGATE_ADMIN_TOKEN_FILE",
    "TIDEGATE_LOG_FORMAT",
    "RUST_LOG",
];

/// Unix milliseconds now, the clock the status record uses.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Sleeps until unix time `at_ms` (returns at once when it has passed).
pub async fn sleep_until_ms(at_ms: u64) {
    let now = unix_ms();
    if at_ms > now {
        tokio::time::sleep(Duration::from_millis(at_ms - now)).await;
    }
}

/// A `tidegate run` child process; killed (SIGKILL) when dropped, so a failing test leaves none.
pub struct Tidegate {
    child: Child,
    log: PathBuf,
    admin: SocketAddr,
}

impl Tidegate {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the admin listener answers; fails with the log if the process exits first.
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/healthz", self.admin);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("tidegate exited early ({status}):\n{}", self.log());
            }
            if let Ok(r) = try_request(Method::GET, &url, &[]).await
                && r.status == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tidegate did not come up within {WAIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9: no chance to save anything or clean up.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL tidegate");
        let status = self.child.wait().expect("reap tidegate");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "killed by SIGKILL"
        );
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tidegate still running after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tidegate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One request with an empty body on a fresh connection (a killed process leaves no stale pool).
pub async fn try_request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    tokio::time::timeout(WAIT, send(&client(), method, url, headers))
        .await
        .map_err(|_| format!("no answer from {url} within {WAIT:?}"))?
}

pub async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    try_request(method.clone(), url, headers)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// How a CLI run proves who it is.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'a> {
    /// `TIDEGATE_ADMIN_TOKEN`.
    Env(&'a str),
    /// `--token-file`.
    File(&'a Path),
    None,
}

/// One route `app` with versions `v1` (stable) and `v2` (canary) and a rollout; the config,
/// its token file and the state dir live in a temp dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub admin: SocketAddr,
    pub listen: SocketAddr,
    pub token: Option<&'static str>,
    runs: AtomicU32,
}

impl Fixture {
    /// `rollout` is the YAML under `rollout:` after `canary: v2`, unindented.
    pub fn new(v1: SocketAddr, v2: SocketAddr, rollout: &str) -> Fixture {
        Fixture::build(v1, v2, rollout, Some(TOKEN))
    }

    /// The same without any admin token: commands are disabled.
    pub fn without_token(v1: SocketAddr, v2: SocketAddr, rollout: &str) -> Fixture {
        Fixture::build(v1, v2, rollout, None)
    }

    fn build(
        v1: SocketAddr,
        v2: SocketAddr,
        rollout: &str,
        token: Option<&'static str>,
    ) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let token_line = match token {
            Some(t) => {
                std::fs::write(dir.path().join("admin.token"), format!("{t}\n"))
                    .expect("write token file");
                ", token_file: admin.token"
            }
            None => "",
        };
        let rollout: String = rollout.lines().map(|l| format!("      {l}\n")).collect();
        let yaml = format!(
            r#"admin: {{listen: "{admin}"{token_line}}}
listeners: [{{name: web, listen: "{listen}"}}]
workers: 1
state_dir: state
routes:
  - name: app
    versions:
      - {{name: v1, endpoints: ["{v1}"]}}
      - {{name: v2, endpoints: ["{v2}"]}}
    rollout:
      canary: v2
{rollout}"#
        );
        let config = dir.path().join("tidegate.yaml");
        std::fs::write(&config, yaml).expect("write config");
        std::fs::create_dir(dir.path().join("cwd")).expect("create the working directory");
        Fixture {
            dir,
            config,
            admin,
            listen,
            token,
            runs: AtomicU32::new(0),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("state").join("app.json")
    }

    pub fn state_bytes(&self) -> Vec<u8> {
        std::fs::read(self.state_file()).expect("read state file")
    }

    pub fn saved_status(&self) -> Value {
        serde_json::from_slice(&self.state_bytes()).expect("state file is JSON")
    }

    /// The working directory of the processes: not the config's, so paths that must be
    /// relative to the config file (state dir, token file) are told apart from the cwd.
    pub fn cwd(&self) -> PathBuf {
        self.dir.path().join("cwd")
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Starts `tidegate run` on the config, each run logging to its own file.
    pub fn spawn(&self) -> Tidegate {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let log = self.dir.path().join(format!("run-{n}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(&self.config)
            .current_dir(self.cwd())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        for var in OUR_ENV {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().expect("start tidegate");
        Tidegate {
            child,
            log,
            admin: self.admin,
        }
    }

    /// Starts `tidegate run` and waits until its admin API answers.
    pub async fn run(&self) -> Tidegate {
        let mut t = self.spawn();
        t.wait_ready().await;
        t
    }

    /// GET `/api/v1/rollouts/app`, no token.
    pub async fn status(&self) -> Value {
        let a = request(
            Method::GET,
            &format!("{}/api/v1/rollouts/app", self.admin_url()),
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.json()
    }

    /// Polls the status until `check` holds; fails with the last status and the log after `limit`.
    pub async fn wait_status(
        &self,
        t: &Tidegate,
        what: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let s = self.status().await;
            if check(&s) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}; last status:\n{}\nlog:\n{}",
                serde_json::to_string_pretty(&s).unwrap_or_default(),
                t.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POST a command with `token` (None: no Authorization header).
    pub async fn post(&self, verb: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        request(
            Method::POST,
            &format!("{}/api/v1/rollouts/app/{verb}", self.admin_url()),
            &headers,
        )
        .await
    }

    /// POST a command with the right token; it must be accepted. Returns the new status.
    pub async fn command(&self, verb: &str) -> Value {
        let a = self.post(verb, self.token).await;
        assert_eq!(a.status, 200, "{verb}: {}", a.body);
        a.json()
    }

    /// Weight of each version of route `app` in the admin `/routes` (versions removed from the
    /// table are absent).
    pub async fn weights(&self) -> BTreeMap<String, f64> {
        let a = request(Method::GET, &format!("{}/routes", self.admin_url()), &[]).await;
        let v = a.json();
        let route = v["routes"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["name"] == "app"))
            .unwrap_or_else(|| panic!("no route app in {}", a.body));
        route["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().expect("name").to_string(),
                    v["weight"].as_f64().expect("weight"),
                )
            })
            .collect()
    }

    /// The admin `/metrics`, parsed.
    pub async fn metrics(&self) -> prometheus_parse::Scrape {
        let a = request(Method::GET, &format!("{}/metrics", self.admin_url()), &[]).await;
        prometheus_parse::Scrape::parse(a.body.lines().map(|l| Ok(l.to_string())))
            .expect("metrics parse as Prometheus text")
    }

    /// `n` requests through the proxy, one after another: the body of each (the version's name).
    pub async fn traffic(&self, path: &str, n: usize) -> Vec<String> {
        let url = format!("http://{}{path}", self.listen);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let a = request(Method::GET, &url, &[]).await;
            assert_eq!(a.status, 200, "{}", a.body);
            out.push(a.body);
        }
        out
    }

    /// Runs the CLI with `TIDEGATE_ADMIN` pointing at this fixture's admin API.
    pub async fn cli(&self, args: &[&str], auth: Auth<'_>) -> CliRun {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .current_dir(self.cwd())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for var in OUR_ENV {
            cmd.env_remove(var);
        }
        cmd.env("TIDEGATE_ADMIN", self.admin_url());
        match auth {
            Auth::Env(t) => {
                cmd.env("TIDEGATE_ADMIN_TOKEN", t);
            }
            Auth::File(f) => {
                cmd.arg("--token-file").arg(f);
            }
            Auth::None => {}
        }
        let out = tokio::time::timeout(WAIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("tidegate {args:?} did not finish within {WAIT:?}"))
            .expect("run the tidegate CLI");
        CliRun {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// `phase` of a status.
pub fn phase(s: &Value) -> &str {
    s["phase"].as_str().unwrap_or("?")
}

/// 0-based step index of a status.
pub fn step(s: &Value) -> u64 {
    s["step"].as_u64().expect("step")
}

/// Canary weight of a status, in percent.
pub fn canary_weight(s: &Value) -> f64 {
    s["canaryWeight"].as_f64().expect("canaryWeight")
}

/// Pause reason of a status (`step`, `manual`, `inconclusive`), if paused.
pub fn pause_reason(s: &Value) -> Option<&str> {
    s["pause"]["reason"].as_str()
}

/// Events of the status history, oldest first.
pub fn events(s: &Value) -> Vec<&Value> {
    s["history"]
        .as_array()
        .map(|h| h.iter().collect())
        .unwrap_or_default()
}

/// The last event of `kind` (`stepCompleted`, `removed`, ...) whose message contains `text`.
pub fn last_event<'a>(s: &'a Value, kind: &str, text: &str) -> Option<&'a Value> {
    events(s)
        .into_iter()
        .rev()
        .find(|e| e["kind"] == kind && e["message"].as_str().is_some_and(|m| m.contains(text)))
}

/// Time of an event, unix milliseconds.
pub fn at(e: &Value) -> u64 {
    e["at"].as_u64().expect("event time")
}

/// Versions of a status's `retiring` list.
pub fn retiring(s: &Value) -> Vec<&str> {
    s["retiring"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x["version"].as_str()).collect())
        .unwrap_or_default()
}

/// Versions of a status's `retired` list.
pub fn retired(s: &Value) -> Vec<&str> {
    s["retired"]
        .as_array()
        .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default()
}
