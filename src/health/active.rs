//! Active health checks: a periodic HTTP GET per endpoint, with consecutive-result thresholds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::Endpoint;

/// Active health check settings of a version.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// One endpoint to probe, with the check settings of the version it serves.
#[derive(Clone)]
pub struct ProbeTarget {
    pub endpoint: Arc<Endpoint>,
    pub settings: Arc<ProbeSettings>,
}

/// The running probes; dropping this stops them all.
#[derive(Default)]
pub struct ActiveChecks {
    tasks: Vec<JoinHandle<()>>,
    /// What is probed, to tell whether a new route table needs new probes.
    targets: Vec<(SocketAddr, Arc<ProbeSettings>)>,
}

fn key(t: &ProbeTarget) -> (SocketAddr, Arc<ProbeSettings>) {
    (t.endpoint.addr, t.settings.clone())
}

impl ActiveChecks {
    /// Starts one probe loop per target on the current tokio runtime. Endpoints keep their
    /// current verdict (new ones start healthy) until the thresholds say otherwise.
    pub fn start(targets: Vec<ProbeTarget>) -> ActiveChecks {
        let keys = targets.iter().map(key).collect();
        let tasks = targets
            .into_iter()
            .map(|t| tokio::spawn(probe_loop(t)))
            .collect();
        ActiveChecks {
            tasks,
            targets: keys,
        }
    }

    /// True when these probes already cover exactly `targets`.
    pub fn covers(&self, targets: &[ProbeTarget]) -> bool {
        targets.iter().map(key).eq(self.targets.iter().cloned())
    }
}

impl Drop for ActiveChecks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn probe_loop(t: ProbeTarget) {
    let s = &*t.settings;
    let mut successes = 0u32;
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(s.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = tokio::time::timeout(s.timeout, probe(&t)).await;
        let ok = matches!(result, Ok(Ok(status)) if (200..400).contains(&status));
        let down = t.endpoint.is_active_down();
        if ok {
            failures = 0;
            successes += 1;
            if down && successes >= s.healthy_threshold {
                t.endpoint.set_active_down(false);
                tracing::info!(endpoint = %t.endpoint.addr, path = %s.path, "active health check: endpoint is healthy again");
            }
        } else {
            successes = 0;
            failures += 1;
            if !down && failures >= s.unhealthy_threshold {
                t.endpoint.set_active_down(true);
                let why = match result {
                    Err(_) => format!("no answer within {:?}", s.timeout),
                    Ok(Err(e)) => e,
                    Ok(Ok(status)) => format!("status {status}"),
                };
                tracing::warn!(endpoint = %t.endpoint.addr, path = %s.path, reason = %why, "active health check: endpoint is unhealthy");
            }
        }
    }
}

/// One GET over a fresh connection; returns the status code.
async fn probe(t: &ProbeTarget) -> Result<u16, String> {
    let stream = TcpStream::connect(t.endpoint.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = http::Request::get(t.settings.path.as_str())
        .header(http::header::HOST, t.endpoint.authority.as_str())
        .header(http::header::USER_AGENT, "tidegate-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"));
    conn.abort();
    Ok(resp?.status().as_u16())
}
