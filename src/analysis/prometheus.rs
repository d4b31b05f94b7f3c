//! The prometheus provider: an instant PromQL query against `/api/v1/query`.

use serde::Deserialize;

use super::Vars;
use super::spec::PrometheusMetric;
use super::verdict::Reading;
use crate::httpclient::{HttpRequest, body_excerpt, encode_query_component};

/// Runs the query; one scalar or one-sample vector is the result, an empty result is no data.
///
/// Credentials are read from their files on every measurement, so a rotated token is picked
/// up without a restart.
pub async fn measure(spec: &PrometheusMetric, vars: &Vars) -> Reading {
    let query = vars.fill(&spec.query);
    let base = spec.address.trim_end_matches('/');
    // `timeout` lets Prometheus itself give up on a slow query when we stop waiting.
    let url = format!(
        "{base}/api/v1/query?query={}&timeout={}ms",
        encode_query_component(&query),
        spec.timeout.as_millis().max(1)
    );
    let mut req = HttpRequest::get(url).timeout(spec.timeout);
    if let Some(path) = &spec.bearer_token_file {
        match tokio::fs::read_to_string(path).await {
            Ok(token) if !token.trim().is_empty() => req = req.bearer_token(token.trim()),
            Ok(_) => return Reading::Error(format!("bearer token file `{path}` is empty")),
            Err(e) => return Reading::Error(format!("bearer token file `{path}`: {e}")),
        }
    }
    if let Some(auth) = &spec.basic_auth {
        let path = &auth.password_file;
        match tokio::fs::read_to_string(path).await {
            Ok(pw) => {
                // Editors add a final newline; any other whitespace may be part of the password.
                let pw = pw.strip_suffix('\n').unwrap_or(&pw);
                let pw = pw.strip_suffix('\r').unwrap_or(pw);
                req = req.basic_auth(&auth.username, pw);
            }
            Err(e) => return Reading::Error(format!("password file `{path}`: {e}")),
        }
    }
    for (name, value) in &spec.headers {
        req = req.header(name, value);
    }
    match req.send().await {
        Ok(resp) => parse_response(resp.status, &resp.body, base, &query),
        Err(e) => Reading::Error(e.to_string()),
    }
}

/// The Prometheus HTTP API envelope; `data` is absent on errors.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

/// A vector element: its labels and `[unix_time, "value"]`.
#[derive(Deserialize)]
struct Sample {
    #[serde(default)]
    metric: serde_json::Map<String, serde_json::Value>,
    value: (serde_json::Value, String),
}

/// Turns a `/api/v1/query` answer into a reading. `address` and `query` are for messages.
pub fn parse_response(status: u16, body: &[u8], address: &str, query: &str) -> Reading {
    // Prometheus answers query errors with 400/422/503 *and* a JSON envelope saying why, so
    // the envelope is read before the status is looked at.
    let envelope: Envelope = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) if (200..300).contains(&status) => {
            return Reading::Error(format!(
                "prometheus at {address} answered with something that is not its API's JSON ({e}): {}",
                body_excerpt(body)
            ));
        }
        Err(_) => {
            return Reading::Error(format!(
                "prometheus at {address} answered HTTP {status}: {}",
                body_excerpt(body)
            ));
        }
    };
    if envelope.status != "success" {
        return Reading::Error(format!(
            "prometheus at {address} rejected the query (HTTP {status}, {}): {}: {query}",
            envelope.error_type.as_deref().unwrap_or("no errorType"),
            envelope.error.as_deref().unwrap_or("no error text"),
        ));
    }
    let Some(data) = envelope.data else {
        return Reading::Error(format!(
            "prometheus at {address} said success but sent no data"
        ));
    };
    let value_text = match data.result_type.as_str() {
        "scalar" => match serde_json::from_value::<(serde_json::Value, String)>(data.result) {
            Ok((_, v)) => v,
            Err(e) => return Reading::Error(format!("prometheus scalar result malformed: {e}")),
        },
        "vector" => {
            let samples: Vec<Sample> = match serde_json::from_value(data.result) {
                Ok(s) => s,
                Err(e) => {
                    return Reading::Error(format!("prometheus vector result malformed: {e}"));
                }
            };
            match samples.len() {
                0 => return Reading::NoData(format!("query returned no samples: {query}")),
                1 => samples
                    .into_iter()
                    .next()
                    .map(|s| s.value.1)
                    .unwrap_or_default(),
                n => {
                    let shown: Vec<String> =
                        samples.iter().take(3).map(|s| labels(&s.metric)).collect();
                    let more = if n > 3 { ", …" } else { "" };
                    return Reading::Error(format!(
                        "query returned {n} samples ({}{more}); it must aggregate them into one, e.g. with sum(...): {query}",
                        shown.join(", ")
                    ));
                }
            }
        }
        other => {
            return Reading::Error(format!(
                "query returned a {other}, not a scalar or a one-sample vector (a range selector like [5m] needs a function such as rate() around it): {query}"
            ));
        }
    };
    match value_text.parse::<f64>() {
        Ok(v) if v.is_finite() => Reading::Value(v),
        // 0/0 in an error-rate query when nothing was requested: no data, not a verdict.
        Ok(_) => Reading::NoData(format!("query result is {value_text}: {query}")),
        Err(_) => Reading::Error(format!(
            "prometheus sent `{value_text}`, not a number: {query}"
        )),
    }
}

fn labels(metric: &serde_json::Map<String, serde_json::Value>) -> String {
    let pairs: Vec<String> = metric
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.as_str().map_or(v.to_string(), |s| format!("{s:?}"))
            )
        })
        .collect();
    format!("{{{}}}", pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str = "sum(rate(x[30s]))";
    const A: &str = "http://prom:9090";

    fn parse(status: u16, body: &str) -> Reading {
        parse_response(status, body.as_bytes(), A, Q)
    }

    #[test]
    fn scalar_and_single_sample_vector_are_values() {
        assert_eq!(
            parse(
                200,
                r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000.1,"0.25"]}}"#
            ),
            Reading::Value(0.25)
        );
        assert_eq!(
            parse(
                200,
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.0125"]}]},"warnings":["w"]}"#
            ),
            Reading::Value(0.0125)
        );
    }

    #[test]
    fn empty_vector_and_nan_are_no_data() {
        assert_eq!(
            parse(
                200,
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#
            ),
            Reading::NoData(format!("query returned no samples: {Q}"))
        );
        for v in ["NaN", "+Inf", "-Inf"] {
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[1,"{v}"]}}]}}}}"#
            );
            assert_eq!(
                parse(200, &body),
                Reading::NoData(format!("query result is {v}: {Q}"))
            );
        }
    }

    #[test]
    fn several_samples_must_be_aggregated() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"version":"a"},"value":[1,"1"]},
            {"metric":{"version":"b"},"value":[1,"2"]},
            {"metric":{"version":"c"},"value":[1,"3"]},
            {"metric":{"version":"d"},"value":[1,"4"]}]}}"#;
        let Reading::Error(msg) = parse(200, body) else {
            panic!("several samples must be an error");
        };
        assert_eq!(
            msg,
            format!(
                r#"query returned 4 samples ({{version="a"}}, {{version="b"}}, {{version="c"}}, …); it must aggregate them into one, e.g. with sum(...): {Q}"#
            )
        );
    }

    #[test]
    fn matrix_and_string_are_errors() {
        let m = parse(
            200,
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#,
        );
        assert!(
            matches!(&m, Reading::Error(e) if e.starts_with("query returned a matrix")),
            "{m:?}"
        );
        let s = parse(
            200,
            r#"{"status":"success","data":{"resultType":"string","result":[1,"hi"]}}"#,
        );
        assert!(
            matches!(&s, Reading::Error(e) if e.starts_with("query returned a string")),
            "{s:?}"
        );
    }

    #[test]
    fn api_and_http_errors_say_why() {
        assert_eq!(
            parse(
                400,
                r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected end of input"}"#
            ),
            Reading::Error(format!(
                "prometheus at {A} rejected the query (HTTP 400, bad_data): 1:5: parse error: unexpected end of input: {Q}"
            ))
        );
        assert_eq!(
            parse(502, "<html>Bad Gateway</html>"),
            Reading::Error(format!(
                "prometheus at {A} answered HTTP 502: <html>Bad Gateway</html>"
            ))
        );
        let r = parse(200, "not json");
        assert!(
            matches!(&r, Reading::Error(e) if e.contains("not its API's JSON")),
            "{r:?}"
        );
        let r = parse(
            200,
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"abc"]}}"#,
        );
        assert_eq!(
            r,
            Reading::Error(format!("prometheus sent `abc`, not a number: {Q}"))
        );
        let r = parse(
            200,
            r#"{"status":"success","data":{"resultType":"vector","result":{}}}"#,
        );
        assert!(
            matches!(&r, Reading::Error(e) if e.contains("vector result malformed")),
            "{r:?}"
        );
    }
}

#[cfg(test)]
mod socket_tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::analysis::spec::BasicAuth;
    use crate::httpclient::testserver::{closed_port, respond, serve};

    fn spec(address: String) -> PrometheusMetric {
        PrometheusMetric {
            address,
            query: r#"sum(rate(tidegate_requests_total{route="{{route}}",version="{{version}}"}[30s]))"#.into(),
            timeout: Duration::from_secs(2),
            bearer_token_file: None,
            basic_auth: None,
            headers: BTreeMap::new(),
        }
    }

    fn vars() -> Vars {
        Vars {
            route: "shop".into(),
            canary: "v2".into(),
            stable: "v1".into(),
            namespace: String::new(),
        }
    }

    #[tokio::test]
    async fn query_is_filled_encoded_and_sent_with_credentials() {
        let (addr, seen) = serve(
            |_| {
                respond(
                    200,
                    r#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}"#,
                )
            },
            None,
        )
        .await;
        let dir = tempfile::tempdir().expect("dir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "p a s s\n").expect("write");
        let mut s = spec(format!("http://{addr}/prefix/"));
        s.basic_auth = Some(BasicAuth {
            username: "u".into(),
            password_file: pw.display().to_string(),
        });
        s.headers.insert("X-Scope-OrgID".into(), "team-a".into());
        assert_eq!(measure(&s, &vars()).await, Reading::Value(7.0));

        let seen = seen.lock().expect("seen").clone();
        assert_eq!(seen[0].uri.path(), "/prefix/api/v1/query");
        let q = seen[0].uri.query().expect("query string");
        assert_eq!(
            q,
            format!(
                "query={}&timeout=2000ms",
                encode_query_component(
                    r#"sum(rate(tidegate_requests_total{route="shop",version="v2"}[30s]))"#
                )
            )
        );
        // base64("u:p a s s"): the final newline of the file is not part of the password.
        assert_eq!(seen[0].headers["authorization"], "Basic dTpwIGEgcyBz");
        assert_eq!(seen[0].headers["x-scope-orgid"], "team-a");
    }

    #[tokio::test]
    async fn unreadable_credentials_and_unreachable_servers_are_errors() {
        let mut s = spec(format!("http://{}", closed_port()));
        let r = measure(&s, &vars()).await;
        assert!(
            matches!(&r, Reading::Error(e) if e.contains("/api/v1/query?…") && e.to_lowercase().contains("refused")),
            "{r:?}"
        );
        s.bearer_token_file = Some("/nonexistent/tidegate-token".into());
        let r = measure(&s, &vars()).await;
        assert!(
            matches!(&r, Reading::Error(e) if e.starts_with("bearer token file `/nonexistent/tidegate-token`: ")),
            "{r:?}"
        );
    }
}
