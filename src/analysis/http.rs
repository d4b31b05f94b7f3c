//! The http provider: a webhook whose 2xx passes, or whose JSON field is the result.
//!
//! What each answer reads as:
//! - no answer (refused, timeout, TLS failure, body over 4 MiB) → `Error`;
//! - any non-2xx status → `Error` naming the status: the webhook failed to answer, which is
//!   not the same as answering "no" (repeated errors make the metric Inconclusive after
//!   `consecutiveErrorLimit`, never a silent pass or a rollback);
//! - 2xx without `jsonPath` → `Value(1.0)`; the status alone is the verdict, so such a webhook
//!   can pass or be inconclusive but not fail the canary: to fail it, answer 2xx with a field
//!   and set `jsonPath` plus a condition;
//! - 2xx with `jsonPath`: a number is the value, `true`/`false` are 1/0, a missing or null
//!   field is `NoData`, a string, array or object (or a body that is not JSON) is `Error`.

use super::Vars;
use super::json_path::to_pointer;
use super::spec::{HttpMethod, HttpMetric};
use super::verdict::Reading;
use crate::httpclient::{HttpRequest, body_excerpt};

pub async fn measure(spec: &HttpMetric, vars: &Vars) -> Reading {
    let path = match &spec.json_path {
        Some(p) => match to_pointer(p) {
            Ok(pointer) => Some((p.as_str(), pointer)),
            Err(e) => return Reading::Error(e),
        },
        None => None,
    };
    let url = vars.fill(&spec.url);
    let mut req = match spec.method {
        HttpMethod::Get => HttpRequest::get(url),
        HttpMethod::Post => HttpRequest::post(url),
    }
    .timeout(spec.timeout);
    if let Some(body) = &spec.body {
        req = match req.json(&fill_json(body, vars)) {
            Ok(r) => r,
            Err(e) => return Reading::Error(e.to_string()),
        };
    }
    // After the body, so a configured Content-Type wins over the default one.
    for (name, value) in &spec.headers {
        req = req.header(name, value);
    }
    let resp = match req.send().await.and_then(|r| r.error_for_status()) {
        Ok(r) => r,
        Err(e) => return Reading::Error(format!("webhook: {e}")),
    };
    let Some((path_text, pointer)) = path else {
        return Reading::Value(1.0);
    };
    let json: serde_json::Value = match serde_json::from_slice(&resp.body) {
        Ok(v) => v,
        Err(e) => {
            return Reading::Error(format!(
                "webhook {} answered {} with a body that is not JSON ({e}): {}",
                resp.url,
                resp.status,
                body_excerpt(&resp.body)
            ));
        }
    };
    read_path(&json, path_text, &pointer, &resp.url)
}

/// The field at `pointer` (from `path`) of a webhook's answer, as a reading.
fn read_path(json: &serde_json::Value, path: &str, pointer: &str, url: &str) -> Reading {
    let Some(at) = json.pointer(pointer) else {
        return Reading::NoData(format!("`{path}` is not in the answer from {url}"));
    };
    match at {
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(v) => Reading::Value(v),
            None => Reading::Error(format!("`{path}` = {n} is not a usable number")),
        },
        serde_json::Value::Bool(b) => Reading::Value(if *b { 1.0 } else { 0.0 }),
        serde_json::Value::Null => {
            Reading::NoData(format!("`{path}` is null in the answer from {url}"))
        }
        other => {
            let kind = match other {
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Array(_) => "an array",
                _ => "an object",
            };
            Reading::Error(format!(
                "`{path}` is {kind} ({}), not a number or boolean",
                body_excerpt(other.to_string().as_bytes())
            ))
        }
    }
}

/// The body with variables filled into its string values (keys are left alone).
fn fill_json(value: &serde_json::Value, vars: &Vars) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(vars.fill(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill_json(v, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_json(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::httpclient::testserver::{closed_port, respond, serve};

    fn vars() -> Vars {
        Vars {
            route: "shop".into(),
            canary: "v2".into(),
            stable: "v1".into(),
            namespace: String::new(),
        }
    }

    fn spec(url: String, json_path: Option<&str>) -> HttpMetric {
        HttpMetric {
            url,
            method: HttpMethod::Get,
            body: None,
            json_path: json_path.map(str::to_string),
            timeout: Duration::from_secs(2),
            headers: BTreeMap::new(),
        }
    }

    #[test]
    fn values_by_type() {
        let doc = json!({"d": {"rate": 0.02, "ok": true, "no": false, "n": null, "s": "0.1", "list": [{"v": 3}], "o": {}}});
        let read = |p: &str| read_path(&doc, p, &to_pointer(p).unwrap(), "http://h/");
        assert_eq!(read("d.rate"), Reading::Value(0.02));
        assert_eq!(read("d.ok"), Reading::Value(1.0));
        assert_eq!(read("d.no"), Reading::Value(0.0));
        assert_eq!(read("d.list[0].v"), Reading::Value(3.0));
        assert_eq!(
            read("d.missing"),
            Reading::NoData("`d.missing` is not in the answer from http://h/".into())
        );
        assert_eq!(
            read("d.list[5].v"),
            Reading::NoData("`d.list[5].v` is not in the answer from http://h/".into())
        );
        assert!(matches!(read("d.n"), Reading::NoData(_)));
        assert_eq!(
            read("d.s"),
            Reading::Error(r#"`d.s` is a string ("0.1"), not a number or boolean"#.into())
        );
        assert!(matches!(read("d.list"), Reading::Error(e) if e.contains("is an array")));
        assert!(matches!(read("d.o"), Reading::Error(e) if e.contains("is an object")));
    }

    #[tokio::test]
    async fn status_alone_passes_on_2xx_and_errors_otherwise() {
        let (addr, seen) = serve(
            |s| match s.uri.path() {
                "/ok/shop/v2" => respond(204, ""),
                _ => respond(500, "boom"),
            },
            None,
        )
        .await;
        let ok = spec(
            format!("http://{addr}/ok/{{{{route}}}}/{{{{version}}}}"),
            None,
        );
        assert_eq!(measure(&ok, &vars()).await, Reading::Value(1.0));
        assert_eq!(seen.lock().unwrap()[0].method, http::Method::GET);

        let failing = spec(format!("http://{addr}/fail"), None);
        assert_eq!(
            measure(&failing, &vars()).await,
            Reading::Error(format!("webhook: GET http://{addr}/fail: HTTP 500: boom"))
        );
        let down = spec(format!("http://{}/", closed_port()), None);
        assert!(
            matches!(measure(&down, &vars()).await, Reading::Error(e) if e.to_lowercase().contains("refused"))
        );
    }

    #[tokio::test]
    async fn post_fills_the_body_and_reads_the_field() {
        let (addr, seen) = serve(
            |s| {
                let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap_or_default();
                let rate = if body["version"] == "v2" { 0.5 } else { 0.0 };
                respond(
                    200,
                    json!({"result": {"errorRate": rate, "passed": rate < 0.1}}).to_string(),
                )
            },
            None,
        )
        .await;
        let mut s = spec(format!("http://{addr}/judge"), Some("result.errorRate"));
        s.method = HttpMethod::Post;
        s.body = Some(
            json!({"route": "{{route}}", "version": "{{version}}", "tags": ["{{stable}}", 1], "{{route}}": true}),
        );
        s.headers.insert("x-team".into(), "payments".into());
        assert_eq!(measure(&s, &vars()).await, Reading::Value(0.5));
        s.json_path = Some("result.passed".into());
        assert_eq!(measure(&s, &vars()).await, Reading::Value(0.0));

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0].method, http::Method::POST);
        assert_eq!(seen[0].headers["x-team"], "payments");
        assert_eq!(seen[0].headers["content-type"], "application/json");
        let sent: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
        assert_eq!(
            sent,
            json!({"route": "shop", "version": "v2", "tags": ["v1", 1], "{{route}}": true})
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_an_error_when_a_field_is_wanted() {
        let (addr, _) = serve(|_| respond(200, "<html>ok</html>"), None).await;
        let s = spec(format!("http://{addr}/"), Some("a"));
        let r = measure(&s, &vars()).await;
        assert!(
            matches!(&r, Reading::Error(e) if e.contains("not JSON") && e.contains("<html>ok</html>")),
            "{r:?}"
        );
        // Without a jsonPath the body is not looked at.
        assert_eq!(
            measure(&spec(format!("http://{addr}/"), None), &vars()).await,
            Reading::Value(1.0)
        );
    }
}
