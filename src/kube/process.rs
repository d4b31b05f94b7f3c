//! `tidegate controller`: wires the election, the rollout controller, the adoption of
//! annotated Deployments, the proxy fleet's scrapes, and the probe endpoints together.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kube::{Api, Client};

use super::controller::{self, Annotated, Context};
use super::crd::Rollout;
use super::fleet::ProxyFleet;
use super::leader::{Leadership, LeaseTiming};
use super::workloads::KubeWorkloads;

/// How long the lease holds without renewal: a dead leader is replaced within this.
const LEASE: Duration = Duration::from_secs(15);

/// What `tidegate controller` is told.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// `/healthz`, `/readyz`, `/metrics`.
    pub listen: SocketAddr,
    /// Rollouts and annotated Deployments of this namespace only; all when None.
    pub namespace: Option<String>,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    /// Finds the proxies: a label selector on EndpointSlices with a port named `admin`.
    pub proxy_selector: String,
    /// The Prometheus server of `prometheus` metrics that name none.
    pub prometheus: Option<String>,
}

/// Runs the controller until the process is told to stop; hands the lease over on the way out.
pub async fn run(client: Client, options: ControllerOptions) -> std::io::Result<()> {
    let probes = tokio::net::TcpListener::bind(options.listen).await?;
    tracing::info!(addr = %probes.local_addr()?, "serving /healthz, /readyz, /metrics");
    let leadership = Leadership::contend(
        client.clone(),
        &options.lease_namespace,
        &options.lease_name,
        &options.identity,
        LeaseTiming::new(LEASE),
    );
    let fleet = ProxyFleet::new(client.clone(), None, &options.proxy_selector);
    let ctx = Context::new(
        client.clone(),
        Arc::new(KubeWorkloads::new(client.clone())),
        fleet.clone(),
        &options.identity,
        leadership.watch(),
        options.prometheus.clone(),
    );
    let rollouts: Api<Rollout> = match &options.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    tokio::spawn(serve_probes(probes, ctx.clone()));
    tokio::spawn(fleet.run());
    let annotated = Annotated::In(options.namespace.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    controller::run(ctx, leadership, rollouts, annotated, stop).await;
    Ok(())
}

/// `/healthz`: the process runs. `/readyz`: it contends for the lease (every replica is
/// ready, leader or not). `/metrics`: whether this replica leads, and on the leader the
/// rollouts' metrics.
async fn serve_probes(listener: tokio::net::TcpListener, ctx: Arc<Context>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = probe(&req, &ctx);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn probe(req: &Request<Incoming>, ctx: &Context) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz" | "/readyz") => (StatusCode::OK, "ok\n".to_string()),
        (&Method::GET, "/metrics") => {
            let mut out = String::new();
            crate::metrics::Family::new(
                &mut out,
                "tidegate_controller_leader",
                "gauge",
                "1 while this replica leads and acts.",
            )
            .sample(&[], u8::from(ctx.leads_now()));
            ctx.render_metrics(&mut out);
            (StatusCode::OK, out)
        }
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
