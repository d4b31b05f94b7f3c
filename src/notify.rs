//! Rollout event notifications: a JSON POST to a webhook, with a Slack-compatible `text` line.

use std::time::Duration;

use serde::Serialize;

use crate::httpclient::{HttpError, HttpRequest};
use crate::rollout::status::{Event, EventKind};
use crate::units::format_percent;

/// A webhook that does not answer within this is given up on; notifications must not hold up a rollout.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// The JSON body posted for an event. Slack (and Mattermost, Rocket.Chat, Teams' Slack
/// compatible endpoints) show `text`; other receivers read the structured fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotifyPayload {
    /// One human line, e.g. "tidegate: rollout `shop`: step completed: step 2: canary weight set to 25% (canary weight 25%)".
    pub text: String,
    pub route: String,
    pub event: EventKind,
    pub message: String,
    /// Index of the rollout's current step when the event happened.
    pub step: usize,
    /// Percent of traffic on the canary, up to two decimals (12.5 = 12.5 %).
    pub canary_weight: f64,
    /// RFC 3339, UTC, millisecond precision.
    pub time: String,
}

impl NotifyPayload {
    pub fn new(route: &str, event: &Event) -> NotifyPayload {
        let weight = format_percent(event.canary_weight.into());
        NotifyPayload {
            text: format!(
                "tidegate: rollout `{route}`: {}: {} (canary weight {weight}%)",
                kind_words(event.kind),
                event.message
            ),
            route: route.to_string(),
            event: event.kind,
            message: event.message.clone(),
            step: event.step,
            canary_weight: f64::from(event.canary_weight) / 100.0,
            time: rfc3339_utc(event.at),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("notification of `{event}` for rollout `{route}` not delivered: {source}")]
pub struct NotifyError {
    pub route: String,
    pub event: String,
    #[source]
    pub source: HttpError,
}

/// POSTs `payload` as JSON to `webhook`; anything but a 2xx answer is an error. Which events
/// to send is the caller's choice (see [`EventKind::is_notified`]).
pub async fn post_event(webhook: &str, payload: &NotifyPayload) -> Result<(), NotifyError> {
    let wrap = |source| NotifyError {
        route: payload.route.clone(),
        event: kind_words(payload.event).to_string(),
        source,
    };
    // Chat webhooks carry their secret in the path: errors name only the host.
    HttpRequest::post(webhook)
        .secret_path()
        .timeout(NOTIFY_TIMEOUT)
        .json(payload)
        .map_err(wrap)?
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(wrap)?;
    Ok(())
}

fn kind_words(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Started => "started",
        EventKind::StepCompleted => "step completed",
        EventKind::Paused => "paused",
        EventKind::Resumed => "resumed",
        EventKind::Promoted => "promoted",
        EventKind::Aborted => "aborted",
        EventKind::Retried => "retried",
        EventKind::Restarted => "restarted",
        EventKind::Completed => "completed",
        EventKind::Cancelled => "cancelled",
        EventKind::Removed => "removed",
        EventKind::Promoting => "promoting",
    }
}

/// Unix milliseconds as `2024-03-05T07:08:09.010Z`.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let at = jiff::Timestamp::from_millisecond(unix_ms as i64).unwrap_or_default();
    format!("{at:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::httpclient::testserver::{closed_port, respond, serve};

    fn event() -> Event {
        Event {
            at: 1_709_622_489_010,
            kind: EventKind::StepCompleted,
            message: "step 2: canary weight set to 12.5%".into(),
            step: 2,
            canary_weight: 1250,
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_709_622_489_010), "2024-03-05T07:08:09.010Z");
        assert_eq!(rfc3339_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn payload_has_fields_and_a_slack_line() {
        let p = NotifyPayload::new("shop", &event());
        let json = serde_json::to_value(&p).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "text": "tidegate: rollout `shop`: step completed: step 2: canary weight set to 12.5% (canary weight 12.5%)",
                "route": "shop",
                "event": "stepCompleted",
                "message": "step 2: canary weight set to 12.5%",
                "step": 2,
                "canaryWeight": 12.5,
                "time": "2024-03-05T07:08:09.010Z",
            })
        );
    }

    #[tokio::test]
    async fn posts_json_and_reports_refusals() {
        let (addr, seen) = serve(|_| respond(200, "ok"), None).await;
        let p = NotifyPayload::new("shop", &event());
        post_event(&format!("http://{addr}/hook"), &p)
            .await
            .expect("delivered");
        let seen = seen.lock().expect("seen").clone();
        assert_eq!(seen[0].uri.path(), "/hook");
        assert_eq!(seen[0].headers["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(&seen[0].body).expect("json body");
        assert_eq!(body["route"], "shop");
        assert!(
            body["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("tidegate: rollout `shop`"))
        );

        let (addr, _) = serve(|_| respond(404, "no such hook"), None).await;
        let e = post_event(&format!("http://{addr}/hook"), &p)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "notification of `step completed` for rollout `shop` not delivered: POST http://{addr}/…: HTTP 404: no such hook"
            )
        );
        let down = closed_port();
        let e = post_event(&format!("http://{down}/"), &p)
            .await
            .unwrap_err();
        assert!(matches!(e.source, HttpError::Connect { .. }), "{e}");
    }
}
