//! The admin listener: `/metrics`, `/healthz`, `/readyz`, the route table, and the rollout API.

mod api;
mod auth;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::controller::Controller;
use crate::metrics::Metrics;
use crate::routing::RouteReader;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    pub routes: RouteReader,
    pub metrics: Arc<Metrics>,
    pub controller: Option<Controller>,
    /// Bearer token commands must carry; None disables commands.
    pub token: Option<String>,
    /// Set once the proxy has its first route table: until then it would answer 404 to
    /// everything, so `/readyz` keeps it out of its Service.
    pub ready: Arc<AtomicBool>,
}

/// Binds the admin address; serve it with `serve`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves admin requests until the task is dropped.
pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, peer, &req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    state: &AdminState,
    peer: SocketAddr,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path.starts_with("/api/v1/") {
        return api::handle(
            state,
            peer,
            req.method(),
            path,
            req.uri().query(),
            req.headers(),
        )
        .await
        .unwrap_or_else(api::ApiError::into_response);
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => {
            let mut out = String::with_capacity(16 * 1024);
            // `?latency=fine`: what the controller of a cluster fleet scrapes.
            let fine = req.uri().query() == Some("latency=fine");
            state.metrics.render(&mut out, fine);
            state.routes.load().render_metrics(&mut out);
            if let Some(c) = &state.controller {
                c.render_metrics(&mut out);
            }
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                out,
            )
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/readyz") if state.ready.load(Ordering::Acquire) => {
            reply(StatusCode::OK, "text/plain", "ready\n".into())
        }
        (&Method::GET, "/readyz") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: no route table yet\n".into(),
        ),
        (&Method::GET, "/routes") => reply(
            StatusCode::OK,
            "application/json",
            routes_json(&state.routes),
        ),
        (_, "/metrics" | "/healthz" | "/readyz" | "/routes") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /routes, /healthz, /readyz\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

/// `{"routes":[{"name":..,"versions":[{"name":..,"weight":12.5,"endpoints":[{"address":..,"healthy":true}]}]}]}`
fn routes_json(routes: &RouteReader) -> String {
    #[derive(serde::Serialize)]
    struct Endpoint {
        address: String,
        healthy: bool,
        in_flight: u32,
    }
    #[derive(serde::Serialize)]
    struct Version {
        name: String,
        weight: f64,
        endpoints: Vec<Endpoint>,
    }
    #[derive(serde::Serialize)]
    struct Route {
        name: String,
        versions: Vec<Version>,
    }
    let now = crate::clock::now_ms();
    let table = routes.load_full();
    let routes: Vec<Route> = table
        .routes
        .iter()
        .map(|r| Route {
            name: r.name.to_string(),
            versions: r
                .versions
                .iter()
                .map(|v| Version {
                    name: v.name.to_string(),
                    weight: f64::from(v.weight) / 100.0,
                    endpoints: v
                        .endpoints
                        .iter()
                        .map(|e| Endpoint {
                            address: e.addr.to_string(),
                            healthy: e.is_healthy(now),
                            in_flight: e.in_flight(),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    serde_json::json!({ "routes": routes }).to_string()
}
