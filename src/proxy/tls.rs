//! TLS termination: certificates by SNI name, reloadable without dropping connections.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::proxy_config::CertificateConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{cert}: certificate and key do not match: {message}")]
    Mismatch { cert: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Certificates by name: exact names, `*.suffix` wildcards, and the default (the first one).
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

/// The live certificates of one listener. The TLS config holds this resolver, so swapping
/// the set changes what new handshakes get while open connections keep theirs.
pub struct CertStore {
    set: ArcSwap<CertSet>,
    sources: Vec<CertificateConfig>,
    /// Modification times of the files at the last load attempt, good or bad, so a broken
    /// file is reported once, not on every poll.
    seen: Mutex<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("sources", &self.sources)
            .finish()
    }
}

impl CertStore {
    pub fn load(sources: &[CertificateConfig]) -> Result<Arc<CertStore>, TlsError> {
        let seen = Mutex::new(stamps(sources));
        let set = load_set(sources)?;
        Ok(Arc::new(CertStore {
            set: ArcSwap::from_pointee(set),
            sources: sources.to_vec(),
            seen,
        }))
    }

    /// True when a certificate or key file changed since it was loaded.
    pub fn changed_on_disk(&self) -> bool {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != stamps(&self.sources)
    }

    /// Reads the files again; on error the current certificates stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamps(&self.sources);
        let set = load_set(&self.sources)?;
        self.set.store(Arc::new(set));
        Ok(())
    }

    /// A rustls server config (TLS 1.2 and 1.3, ALPN h2 and http/1.1) resolving through this store.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.set.load();
        let Some(name) = hello.server_name() else {
            return Some(set.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = set.exact.get(&name) {
            return Some(k.clone());
        }
        set.wildcard
            .iter()
            .find(|(suffix, _)| {
                name.ends_with(suffix.as_str())
                    && name.len() > suffix.len()
                    && !name[..name.len() - suffix.len()].contains('.')
            })
            .map(|(_, k)| k.clone())
            .or_else(|| Some(set.default.clone()))
    }
}

fn stamps(sources: &[CertificateConfig]) -> Vec<Option<SystemTime>> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    sources
        .iter()
        .flat_map(|s| [modified(&s.cert), modified(&s.key)])
        .collect()
}

fn load_set(sources: &[CertificateConfig]) -> Result<CertSet, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for source in sources {
        let file_err = |path: &Path, message: String| TlsError::File {
            path: path.to_path_buf(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&source.cert)
            .map_err(|e| file_err(&source.cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(&source.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(file_err(&source.cert, "no PEM certificate in file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(&source.key)
            .map_err(|e| file_err(&source.key, e.to_string()))?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| file_err(&source.key, e.to_string()))?;
        let certified = CertifiedKey::new(certs, signing);
        certified.keys_match().map_err(|e| TlsError::Mismatch {
            cert: source.cert.clone(),
            message: e.to_string(),
        })?;
        let certified = Arc::new(certified);
        default.get_or_insert_with(|| certified.clone());
        for name in &source.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_string(), certified.clone())),
                None => {
                    exact.insert(name, certified.clone());
                }
            }
        }
    }
    let default = default.ok_or_else(|| TlsError::Setup("no certificates configured".into()))?;
    Ok(CertSet {
        exact,
        wildcard,
        default,
    })
}
