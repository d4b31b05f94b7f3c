//! A small outbound HTTP(S) client for the control side: Prometheus queries, webhooks, notifications.

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Largest response body read; a bigger one is an error, not a truncation.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// Used when a request does not set its own timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const AGENT: &str = concat!("tidegate/", env!("CARGO_PKG_VERSION"));

/// Why a request got no usable answer. `url` is shown without its query string, which may
/// be long (PromQL) or hold secrets.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("`{url}` is not a usable http(s) URL: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("header `{name}` for {url}: {reason}")]
    InvalidHeader {
        url: String,
        name: String,
        reason: String,
    },
    #[error("encoding the JSON body for {url}: {reason}")]
    Encode { url: String, reason: String },
    #[error("{method} {url}: {reason}")]
    Connect {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: no complete answer within {}", crate::units::format_duration(*timeout))]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url}: response body larger than {limit} bytes")]
    BodyTooLarge {
        method: Method,
        url: String,
        limit: usize,
    },
    #[error("{method} {url}: reading the response body: {reason}")]
    Body {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url}: HTTP {status}{}", excerpt_suffix(body))]
    Status {
        method: Method,
        url: String,
        status: u16,
        body: String,
    },
}

fn excerpt_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// A request to send: built with [`HttpRequest::get`] / [`HttpRequest::post`] and the setters.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    timeout: Duration,
    max_body: usize,
    hide_path: bool,
}

/// An answer of any status; [`HttpResponse::error_for_status`] turns non-2xx into an error.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub method: Method,
    /// The URL as shown in errors (no query string).
    pub url: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The response itself when 2xx, else an error with the status and the start of the body.
    pub fn error_for_status(self) -> Result<HttpResponse, HttpError> {
        if self.is_success() {
            return Ok(self);
        }
        Err(HttpError::Status {
            body: body_excerpt(&self.body),
            method: self.method,
            url: self.url,
            status: self.status,
        })
    }
}

/// The first 200 characters of a body, on one line, for error messages.
pub fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

impl HttpRequest {
    pub fn new(method: Method, url: impl Into<String>) -> HttpRequest {
        HttpRequest {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout: DEFAULT_TIMEOUT,
            max_body: MAX_BODY,
            hide_path: false,
        }
    }

    pub fn get(url: impl Into<String>) -> HttpRequest {
        HttpRequest::new(Method::GET, url)
    }

    pub fn post(url: impl Into<String>) -> HttpRequest {
        HttpRequest::new(Method::POST, url)
    }

    /// Adds a header; names and values are checked when the request is sent.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> HttpRequest {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn bearer_token(self, token: &str) -> HttpRequest {
        self.header(AUTHORIZATION.as_str(), format!("Bearer {token}"))
    }

    pub fn basic_auth(self, username: &str, password: &str) -> HttpRequest {
        use base64::Engine;
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        self.header(AUTHORIZATION.as_str(), format!("Basic {creds}"))
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: serde::Serialize + ?Sized>(
        mut self,
        value: &T,
    ) -> Result<HttpRequest, HttpError> {
        let bytes = serde_json::to_vec(value).map_err(|e| HttpError::Encode {
            url: self.shown_url(),
            reason: e.to_string(),
        })?;
        self.body = Some(Bytes::from(bytes));
        Ok(self.header(CONTENT_TYPE.as_str(), "application/json"))
    }

    /// The whole exchange (connect, send, read the body) must finish within `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> HttpRequest {
        self.timeout = timeout;
        self
    }

    /// Caps the response body (default [`MAX_BODY`]).
    pub fn max_body(mut self, limit: usize) -> HttpRequest {
        self.max_body = limit;
        self
    }

    /// Errors show only `scheme://host:port/…`: for URLs whose path is a secret, like
    /// Slack's `hooks.slack.com/services/T…/B…/token`, which must not reach logs.
    pub fn secret_path(mut self) -> HttpRequest {
        self.hide_path = true;
        self
    }

    fn shown_url(&self) -> String {
        if self.hide_path {
            origin_only(&self.url)
        } else {
            shown_url(&self.url)
        }
    }

    /// Sends with a fresh, unpooled client: see [`HttpClient`] for why.
    pub async fn send(self) -> Result<HttpResponse, HttpError> {
        HttpClient::new().send(self).await
    }
}

/// An HTTP/1.1 client over plain TCP or TLS (webpki roots, ring). Its idle connections
/// belong to the tokio runtime that opened them, so a client is made per owner (or per
/// call) rather than kept in a process-wide static shared across runtimes.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpClient")
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client trusting the public web PKI (Mozilla's roots, compiled in).
    pub fn new() -> HttpClient {
        HttpClient::with_tls_config(default_tls_config())
    }

    /// A client with its own TLS settings, e.g. a private CA.
    pub fn with_tls_config(tls: Arc<rustls::ClientConfig>) -> HttpClient {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        let inner = Client::builder(TokioExecutor::new()).build(connector);
        HttpClient { inner }
    }

    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let shown = req.shown_url();
        let method = req.method.clone();
        let uri = parse_url(&req.url, &shown)?;
        let mut builder = http::Request::builder().method(req.method.clone()).uri(uri);
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        for (name, value) in &req.headers {
            let bad = |reason: String| HttpError::InvalidHeader {
                url: shown.clone(),
                name: name.clone(),
                reason,
            };
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad("not a valid header name".into()))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| bad("value has characters a header cannot carry".into()))?;
            // A later value replaces an earlier one (explicit headers override helpers' ones).
            headers.insert(n, v);
        }
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        let request = builder
            .body(Full::new(req.body.clone().unwrap_or_default()))
            .map_err(|e| HttpError::InvalidUrl {
                url: shown.clone(),
                reason: e.to_string(),
            })?;

        let exchange = async {
            let resp = self
                .inner
                .request(request)
                .await
                .map_err(|e| HttpError::Connect {
                    method: method.clone(),
                    url: shown.clone(),
                    reason: error_chain(&e),
                })?;
            let (parts, mut body) = resp.into_parts();
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| HttpError::Body {
                    method: method.clone(),
                    url: shown.clone(),
                    reason: error_chain(&e),
                })?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > req.max_body {
                        return Err(HttpError::BodyTooLarge {
                            method: method.clone(),
                            url: shown.clone(),
                            limit: req.max_body,
                        });
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(HttpResponse {
                method: method.clone(),
                url: shown.clone(),
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: buf.freeze(),
            })
        };
        match tokio::time::timeout(req.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(HttpError::Timeout {
                method,
                url: shown,
                timeout: req.timeout,
            }),
        }
    }
}

fn parse_url(url: &str, shown: &str) -> Result<Uri, HttpError> {
    let bad = |reason: &str| HttpError::InvalidUrl {
        url: shown.to_string(),
        reason: reason.into(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(uri)
}

/// The URL without its query string, for messages.
fn shown_url(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

/// `https://hooks.slack.com/…` from a URL whose path is secret.
fn origin_only(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    format!("{}/…", &url[..end])
}

/// "client error (Connect): tcp connect error: Connection refused (os error 111)": hyper's
/// top-level error says little; the cause is at the bottom of the chain.
fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn default_tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Arc::new(tls_config_with_roots(roots))
        })
        .clone()
}

/// A client TLS config on the ring provider (named explicitly, so no process-wide default is needed).
pub fn tls_config_with_roots(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Percent-encodes a query-string component (everything but RFC 3986 unreserved characters).
pub fn encode_query_component(text: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(text, RESERVED).to_string()
}

/// Loopback servers for unit tests of this module and of the providers that use it.
#[cfg(test)]
pub(crate) mod testserver {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;

    /// A request as the server saw it.
    #[derive(Debug, Clone)]
    pub struct Seen {
        pub method: http::Method,
        pub uri: http::Uri,
        pub headers: http::HeaderMap,
        pub body: Bytes,
    }

    pub type Handler = Arc<dyn Fn(&Seen) -> http::Response<Full<Bytes>> + Send + Sync>;

    /// Serves `handler` on a fresh loopback port; every request is also recorded in `seen`.
    pub async fn serve(
        handler: impl Fn(&Seen) -> http::Response<Full<Bytes>> + Send + Sync + 'static,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let log = log.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let log = log.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method,
                                uri: parts.uri,
                                headers: parts.headers,
                                body,
                            };
                            let resp = handler(&seen);
                            log.lock().expect("log").push(seen);
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(s), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    pub fn respond(status: u16, body: impl Into<Bytes>) -> http::Response<Full<Bytes>> {
        let mut resp = http::Response::new(Full::new(body.into()));
        *resp.status_mut() = http::StatusCode::from_u16(status).expect("status");
        resp
    }

    /// A loopback port nothing listens on.
    pub fn closed_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::testserver::{closed_port, respond, serve};
    use super::*;

    #[test]
    fn query_components_are_percent_encoded() {
        assert_eq!(
            encode_query_component(r#"sum(rate(x{a="b c"}[30s])) / 2"#),
            "sum%28rate%28x%7Ba%3D%22b%20c%22%7D%5B30s%5D%29%29%20%2F%202"
        );
        assert_eq!(encode_query_component("é+&"), "%C3%A9%2B%26");
    }

    #[test]
    fn errors_show_the_url_without_its_query() {
        assert_eq!(
            shown_url("http://p:9090/api/v1/query?query=secret"),
            "http://p:9090/api/v1/query?…"
        );
        assert_eq!(
            origin_only("https://hooks.slack.com/services/T0/B0/secret"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(origin_only("http://h:1"), "http://h:1/…");
        let e = parse_url("ftp://host/x", "ftp://host/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`ftp://host/x` is not a usable http(s) URL: the scheme must be http or https"
        );
        assert!(parse_url("not a url", "").is_err());
        assert!(parse_url("http:///path", "").is_err());
    }

    #[tokio::test]
    async fn get_and_post_json_over_loopback() {
        let (addr, seen) = serve(|s| respond(201, format!("{} {}", s.method, s.uri)), None).await;
        let resp = HttpRequest::get(format!("http://{addr}/a?b=1"))
            .header("x-extra", "yes")
            .bearer_token("tok")
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status, 201);
        assert_eq!(&resp.body[..], b"GET /a?b=1");
        let resp = HttpRequest::post(format!("http://{addr}/hook"))
            .basic_auth("alice", "s3cret")
            .json(&serde_json::json!({"k": "v"}))
            .expect("json")
            .send()
            .await
            .expect("post");
        assert!(resp.is_success());
        let seen = seen.lock().expect("seen").clone();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].headers["authorization"], "Bearer tok");
        assert_eq!(seen[0].headers["x-extra"], "yes");
        assert!(
            seen[0].headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("tidegate/")
        );
        assert_eq!(seen[1].method, Method::POST);
        assert_eq!(seen[1].headers["content-type"], "application/json");
        assert_eq!(seen[1].headers["authorization"], "Basic YWxpY2U6czNjcmV0");
        assert_eq!(&seen[1].body[..], br#"{"k":"v"}"#);
    }

    #[tokio::test]
    async fn non_2xx_is_an_answer_until_asked_to_be_an_error() {
        let (addr, _) = serve(|_| respond(503, "overloaded\n  try later"), None).await;
        let resp = HttpRequest::get(format!("http://{addr}/x?q=1"))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status, 503);
        let e = resp.error_for_status().unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("GET http://{addr}/x?…: HTTP 503: overloaded try later")
        );
    }

    #[tokio::test]
    async fn unreachable_slow_and_oversized_answers_are_typed_errors() {
        let down = closed_port();
        let e = HttpRequest::get(format!("http://{down}/"))
            .send()
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.starts_with(&format!("GET http://{down}/: ")), "{text}");
        assert!(text.to_lowercase().contains("refused"), "{text}");

        // Accepts connections but never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        let started = Instant::now();
        let e = HttpRequest::get(format!("http://{silent_addr}/"))
            .timeout(Duration::from_millis(300))
            .send()
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            e.to_string(),
            format!("GET http://{silent_addr}/: no complete answer within 300ms")
        );
        drop(silent);

        let (addr, _) = serve(|_| respond(200, vec![b'x'; 5000]), None).await;
        let e = HttpRequest::get(format!("http://{addr}/"))
            .max_body(4096)
            .send()
            .await
            .unwrap_err();
        assert!(
            matches!(e, HttpError::BodyTooLarge { limit: 4096, .. }),
            "{e:?}"
        );
        let ok = HttpRequest::get(format!("http://{addr}/"))
            .send()
            .await
            .expect("under 4 MiB");
        assert_eq!(ok.body.len(), 5000);

        let e = HttpRequest::get(format!("http://{addr}/"))
            .header("bad header", "v")
            .send()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("header `bad header`"), "{e}");
    }

    #[tokio::test]
    async fn https_with_a_trusted_root_and_refused_without() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
        let (addr, _) = serve(|_| respond(200, "secure"), Some(Arc::new(server))).await;
        let url = format!("https://localhost:{}/", addr.port());

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let client = HttpClient::with_tls_config(Arc::new(tls_config_with_roots(roots)));
        let resp = client.send(HttpRequest::get(&url)).await.expect("https");
        assert_eq!(&resp.body[..], b"secure");

        // The default client trusts only public roots: a self-signed server is refused.
        let e = HttpRequest::get(&url).send().await.unwrap_err();
        assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    }
}
