//! TLS termination: certificates by SNI, ALPN h2, TLS 1.2 and 1.3, reload without dropping connections.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Accepts any certificate and remembers the one presented, so tests can see which was chosen.
#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::ring::default_provider();
        rustls::crypto::verify_tls12_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::ring::default_provider();
        rustls::crypto::verify_tls13_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Handshake {
    stream: TlsStream<TcpStream>,
    cert: Vec<u8>,
    alpn: Option<Vec<u8>>,
    version: rustls::ProtocolVersion,
}

async fn connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Handshake {
    let recorder = Arc::new(Recorder::default());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(recorder.clone())
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let version = conn.protocol_version().unwrap();
    let cert = recorder.seen.lock().unwrap().clone().unwrap();
    Handshake {
        stream,
        cert,
        alpn,
        version,
    }
}

fn write_cert(dir: &std::path::Path, stem: &str, names: &[&str]) -> Vec<u8> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    std::fs::write(dir.join(format!("{stem}.pem")), ck.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{stem}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    ck.cert.der().to_vec()
}

/// A backend that echoes the X-Forwarded-Proto it received.
async fn proto_echo() -> SocketAddr {
    serve(|req: Request<hyper::body::Incoming>| async move {
        let proto = req
            .headers()
            .get("x-forwarded-proto")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        Response::new(Full::new(Bytes::from(proto)))
    })
    .await
}

async fn start(dir: &std::path::Path, backend: SocketAddr) -> TestProxy {
    let yaml = format!(
        r#"
admin: {{listen: "127.0.0.1:0"}}
listeners:
  - name: tls
    listen: "127.0.0.1:0"
    tls:
      certificates:
        - {{cert: "{d}/a.pem", key: "{d}/a.key", server_names: [a.test]}}
        - {{cert: "{d}/b.pem", key: "{d}/b.key", server_names: ["*.b.test"]}}
routes:
  - name: app
    versions:
      - {{name: stable, weight: 100, endpoints: ["{backend}"]}}
      - {{name: canary, weight: 0, endpoints: []}}
"#,
        d = dir.display()
    );
    TestProxy::start(&yaml).await
}

async fn h1_get(
    stream: TlsStream<TcpStream>,
) -> (
    String,
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = h1_request(&mut send).await;
    (body, send)
}

async fn h1_request(send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> String {
    let req = Request::get("/")
        .header("host", "a.test")
        .body(Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("request over TLS");
    assert_eq!(resp.status(), 200);
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_certificates_by_sni_and_negotiates_h2() {
    let certs = tempfile::tempdir().unwrap();
    let a = write_cert(certs.path(), "a", &["a.test"]);
    let b = write_cert(certs.path(), "b", &["x.b.test"]);
    let proxy = start(certs.path(), proto_echo().await).await;
    let addr = proxy.addr();
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    assert_eq!(connect(addr, "a.test", &[], v13).await.cert, a);
    assert_eq!(
        connect(addr, "x.b.test", &[], v13).await.cert,
        b,
        "wildcard name"
    );
    assert_eq!(
        connect(addr, "other.test", &[], v13).await.cert,
        a,
        "unknown names get the first certificate"
    );

    let tls12 = connect(addr, "a.test", &[b"http/1.1"], &[&rustls::version::TLS12]).await;
    assert_eq!(tls12.version, rustls::ProtocolVersion::TLSv1_2);
    assert_eq!(tls12.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1_get(tls12.stream).await.0, "https");

    let h2 = connect(addr, "a.test", &[b"h2", b"http/1.1"], v13).await;
    assert_eq!(h2.version, rustls::ProtocolVersion::TLSv1_3);
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2.stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://a.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("h2 request over TLS");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(
        resp.into_body().collect().await.unwrap().to_bytes(),
        "https"
    );
    proxy.process.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_changed_certificates_without_dropping_connections() {
    let certs = tempfile::tempdir().unwrap();
    let old = write_cert(certs.path(), "a", &["a.test"]);
    write_cert(certs.path(), "b", &["x.b.test"]);
    let proxy = start(certs.path(), proto_echo().await).await;
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    let open = connect(proxy.addr(), "a.test", &[], v13).await;
    assert_eq!(open.cert, old);
    let (_, mut kept) = h1_get(open.stream).await;

    // A broken file is refused and the old certificate keeps serving.
    std::fs::write(certs.path().join("a.pem"), "not a certificate").unwrap();
    wait_for_reloads(&proxy, "failure", 1.0).await;
    assert_eq!(connect(proxy.addr(), "a.test", &[], v13).await.cert, old);

    let new = write_cert(certs.path(), "a", &["a.test"]);
    wait_for_reloads(&proxy, "success", 1.0).await;
    assert_eq!(connect(proxy.addr(), "a.test", &[], v13).await.cert, new);
    assert_eq!(
        h1_request(&mut kept).await,
        "https",
        "a connection opened before the reload still works"
    );
    proxy.process.shutdown().await;
}

async fn wait_for_reloads(proxy: &TestProxy, result: &str, at_least: f64) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if sample(
                &proxy.metrics().await,
                "tidegate_tls_reloads_total",
                &[("result", result)],
            ) >= at_least
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no TLS reload with result {result} within 10 s"));
}
