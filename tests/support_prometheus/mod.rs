//! A real Prometheus server for integration tests: own temp storage, a free loopback port,
//! 1 s scrapes of the given targets, killed when the handle is dropped (panics included).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tidegate::httpclient::{HttpRequest, encode_query_component};

/// How long Prometheus may take to start, or to show a first sample. Generous: CI machines
/// are slow and shared; the waits end as soon as the condition holds.
pub const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);

/// A running Prometheus process; dropping it kills the process.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    // Dropped after the process is killed (fields drop after `Drop::drop`).
    pub dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary: `$TIDEGATE_PROMETHEUS`, else `prometheus` on the PATH (Debian: /usr/bin/prometheus).
pub fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEGATE_PROMETHEUS") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no `prometheus` binary on the PATH: install it (Debian: `apt-get install prometheus`) \
             or point TIDEGATE_PROMETHEUS at one"
        )
    })
}

impl Prometheus {
    /// Starts Prometheus scraping `/metrics` on each of `targets` every second and waits
    /// until it reports ready. With targets, use [`Prometheus::wait_for_first_scrape`] before querying.
    pub async fn start(targets: &[SocketAddr]) -> Prometheus {
        // The free port is found by binding and releasing it, so another process may take it
        // in between: a Prometheus that exits at once is started again on a new port.
        let mut last_log = String::new();
        for _ in 0..3 {
            let mut p = Prometheus::spawn(targets);
            match p.wait_ready().await {
                Ok(()) => return p,
                Err(log) => last_log = log,
            }
        }
        panic!("Prometheus did not start; its log:\n{last_log}");
    }

    fn spawn(targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir for Prometheus");
        let addr = free_port();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tidegate\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("prometheus log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", prometheus_binary().display()));
        Prometheus {
            child,
            addr,
            log_path,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The end of Prometheus's own log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits on `/-/ready`; Err(log) if the process exits or the deadline passes.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        let ready = format!("{}/-/ready", self.url());
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("(exited: {status})\n{}", self.log_tail()));
            }
            let answer = HttpRequest::get(&ready)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "(not ready within {PROMETHEUS_WAIT:?})\n{}",
            self.log_tail()
        ))
    }

    /// An instant query's `data.result`, or the whole answer when it is not a success.
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value, String> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url(),
            encode_query_component(promql)
        );
        let resp = HttpRequest::get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|e| format!("not JSON: {e}"))?;
        if json["status"] != "success" {
            return Err(json.to_string());
        }
        Ok(json["data"]["result"].clone())
    }

    /// Waits until every target has been scraped successfully at least once (`up == 1`).
    pub async fn wait_for_first_scrape(&self, targets: usize) {
        self.wait_until("a first successful scrape of every target", || async {
            let up = self.query(r#"sum(up{job="tidegate"})"#).await.ok()?;
            let v = first_value(&up)?;
            (v >= targets as f64).then_some(())
        })
        .await;
    }

    /// Polls `check` every 200 ms until it returns Some, or panics after [`PROMETHEUS_WAIT`]
    /// naming `what` and showing Prometheus's log.
    pub async fn wait_until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + PROMETHEUS_WAIT;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {PROMETHEUS_WAIT:?} for {what}; Prometheus log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The value of the first sample of a vector result, or of a scalar.
pub fn first_value(result: &serde_json::Value) -> Option<f64> {
    let pair = if result.get(0)?.is_object() {
        &result[0]["value"]
    } else {
        result
    };
    pair.get(1)?.as_str()?.parse().ok()
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}
