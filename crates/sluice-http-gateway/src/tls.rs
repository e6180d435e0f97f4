//! TLS with rustls (ring): HTTPS on the listener from PEM certificate and
//! key files, and towards `https://` upstreams.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::GatewayError;

/// The certificates of a PEM file: at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, GatewayError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(GatewayError::Tls(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

/// An acceptor serving the chain in `cert` with the key in `key`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, GatewayError> {
    let certs = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| GatewayError::Tls(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| GatewayError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A connector for `https://` upstreams: certificates must chain to the
/// PEM certificates in `ca` when given (a private CA: only it is trusted),
/// otherwise to the system's roots (Debian's `ca-certificates`).
pub fn connector(ca: Option<&Path>) -> Result<TlsConnector, GatewayError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in certificates(path)? {
                roots
                    .add(c)
                    .map_err(|e| GatewayError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("http gateway: system certificates: {e}");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(GatewayError::Tls(
                    "no system root certificates (install ca-certificates, or set upstream_ca)".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}
