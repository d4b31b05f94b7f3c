//! The rollout commands of the CLI: talk to a running tidegate's admin API, print for humans or JSON.

use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::httpclient::{HttpError, HttpRequest};
use crate::rollout::status::{PauseReason, Phase, RolloutStatus};
use crate::units::format_percent;

/// Exit codes scripts can rely on.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// The command does not apply (409) or the rollout does not exist (404).
    pub const REFUSED: u8 = 1;
    /// Usage error (bad arguments).
    pub const USAGE: u8 = 2;
    /// The admin API could not be reached, or refused the token (401/403).
    pub const UNREACHABLE: u8 = 3;
}

/// Where the admin API is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct AdminClient {
    pub base: String,
    pub token: Option<String>,
}

/// A failed CLI call: the message to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl AdminClient {
    /// `token_file` wins over `TIDEGATE_ADMIN_TOKEN`.
    pub fn new(base: &str, token_file: Option<&PathBuf>) -> Result<AdminClient, CliError> {
        let token = match token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| CliError {
                        message: format!("token file {}: {e}", f.display()),
                        code: exit::USAGE,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("TIDEGATE_ADMIN_TOKEN")
                .ok()
                .map(|t| t.trim().to_string()),
        };
        // The admin API is plain HTTP (loopback by default): `--admin 127.0.0.1:9901` means that.
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.filter(|t| !t.is_empty()),
        })
    }

    async fn call(&self, post: bool, path: &str) -> Result<serde_json::Value, CliError> {
        let url = format!("{}/api/v1/{path}", self.base);
        let mut req = if post {
            HttpRequest::post(&url)
        } else {
            HttpRequest::get(&url)
        };
        req = req.timeout(Duration::from_secs(10));
        if let Some(t) = &self.token {
            req = req.bearer_token(t);
        }
        let resp = req.send().await.map_err(|e| match e {
            // A malformed `--admin` is the caller's mistake, not an outage.
            HttpError::InvalidUrl { .. } => CliError {
                message: format!("bad admin API address: {e}"),
                code: exit::USAGE,
            },
            e => CliError {
                message: format!("cannot reach the admin API: {e}"),
                code: exit::UNREACHABLE,
            },
        })?;
        let body: serde_json::Value =
            serde_json::from_slice(&resp.body).unwrap_or(serde_json::Value::Null);
        if resp.is_success() {
            return Ok(body);
        }
        let message = body.get("error").and_then(|e| e.as_str()).map_or_else(
            || {
                HttpError::Status {
                    method: resp.method.clone(),
                    url: url.clone(),
                    status: resp.status,
                    body: String::new(),
                }
                .to_string()
            },
            str::to_string,
        );
        let code = match resp.status {
            401 | 403 => exit::UNREACHABLE,
            _ => exit::REFUSED,
        };
        Err(CliError { message, code })
    }

    /// POST a command; returns the rollout's new status.
    pub async fn command(
        &self,
        rollout: &str,
        verb: &str,
        full: bool,
    ) -> Result<RolloutStatus, CliError> {
        check_rollout_name(rollout)?;
        let path = format!(
            "rollouts/{rollout}/{verb}{}",
            if full { "?full=true" } else { "" }
        );
        parse_status(self.call(true, &path).await?)
    }

    pub async fn status(&self, rollout: &str) -> Result<RolloutStatus, CliError> {
        check_rollout_name(rollout)?;
        parse_status(self.call(false, &format!("rollouts/{rollout}")).await?)
    }

    pub async fn list(&self) -> Result<Vec<RolloutStatus>, CliError> {
        let v = self.call(false, "rollouts").await?;
        serde_json::from_value(v.get("rollouts").cloned().unwrap_or_default()).map_err(|e| {
            CliError {
                message: format!("unexpected answer from the admin API: {e}"),
                code: exit::UNREACHABLE,
            }
        })
    }
}

/// Rollouts are named after routes; anything else could turn into another URL path (`a/abort`).
fn check_rollout_name(name: &str) -> Result<(), CliError> {
    if crate::units::is_valid_name(name) {
        Ok(())
    } else {
        Err(CliError {
            message: format!(
                "`{name}` is not a rollout name (route names are 1-63 of letters, digits, `-`, `_`, `.`)"
            ),
            code: exit::USAGE,
        })
    }
}

fn parse_status(v: serde_json::Value) -> Result<RolloutStatus, CliError> {
    serde_json::from_value(v).map_err(|e| CliError {
        message: format!("unexpected answer from the admin API: {e}"),
        code: exit::UNREACHABLE,
    })
}

/// Local time of day for a unix-millisecond timestamp (UTC; no time zone database here).
fn clock_time(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

/// A status as a few readable lines, like `kubectl describe`.
pub fn describe(s: &RolloutStatus, events: usize) -> String {
    let mut out = String::new();
    let paused = match s.pause.as_ref().map(|p| p.reason) {
        Some(PauseReason::Step) => " (waiting for promote)",
        Some(PauseReason::Manual) => " (paused by hand)",
        Some(PauseReason::Inconclusive) => " (analysis inconclusive)",
        None => "",
    };
    let _ = writeln!(out, "rollout {}: {}{paused}", s.route, s.phase.as_str());
    let _ = writeln!(out, "  {}", s.message);
    let stable_weight = if s.canary.is_some() {
        10_000 - u32::from(s.canary_weight)
    } else {
        10_000
    };
    let _ = writeln!(
        out,
        "  stable   {:<12} weight {}%",
        s.stable,
        format_percent(stable_weight)
    );
    if let Some(c) = &s.canary {
        let _ = writeln!(
            out,
            "  canary   {:<12} weight {}%   step {}",
            c,
            format_percent(s.canary_weight.into()),
            s.step + 1
        );
    }
    for r in &s.retiring {
        let _ = writeln!(
            out,
            "  draining {:<12} since {}",
            r.version,
            clock_time(r.since)
        );
    }
    for (label, run) in [
        ("analysis", &s.step_analysis),
        ("background", &s.background_analysis),
    ] {
        let Some(run) = run else { continue };
        for m in &run.metrics {
            let t = &m.tally;
            let last = t
                .last
                .as_ref()
                .map_or(String::new(), |l| format!(" — last: {}", l.message));
            let _ = writeln!(
                out,
                "  {label} {}: {} ok, {} failed, {} inconclusive, {} errors{last}",
                m.name, t.successes, t.failures, t.inconclusives, t.errors
            );
        }
    }
    if events > 0 && !s.history.is_empty() {
        let _ = writeln!(out, "  events (UTC):");
        let start = s.history.len().saturating_sub(events);
        for e in &s.history[start..] {
            let _ = writeln!(
                out,
                "    {}  {:<14} {}",
                clock_time(e.at),
                format!("{:?}", e.kind),
                e.message
            );
        }
    }
    out
}

/// One line per rollout, like `kubectl get`.
pub fn table(list: &[RolloutStatus]) -> String {
    let mut out = format!(
        "{:<16} {:<12} {:<12} {:<12} {:>8} {:>6}\n",
        "ROLLOUT", "PHASE", "STABLE", "CANARY", "WEIGHT", "STEP"
    );
    for s in list {
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:<12} {:<12} {:>7}% {:>6}",
            s.route,
            s.phase.as_str(),
            s.stable,
            s.canary.as_deref().unwrap_or("-"),
            format_percent(s.canary_weight.into()),
            if s.phase == Phase::Healthy {
                "-".to_string()
            } else {
                (s.step + 1).to_string()
            }
        );
    }
    out
}
