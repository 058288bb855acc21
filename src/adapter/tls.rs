//! TLS for the adapter (rustls, always on): the serving certificate, reloaded
//! when its files change, and client certificate verification against the
//! front-proxy (requestheader) CA.
//!
//! A client without a certificate, or with one from another CA, still
//! completes the handshake, so that it can be told 401 in a Kubernetes
//! `Status` rather than by a TLS alert; it never gets data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which flag's file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM.
    #[error("{what} {path} holds no usable PEM: {reason}")]
    Pem {
        /// Which flag's file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refused them.
    #[error("serving certificate and key do not go together: {0}")]
    Key(#[source] rustls::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Config(String),
    /// A certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The crypto provider used throughout (ring, as kube-rs uses).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// PEM-encoded certificate chain and private key.
#[derive(Clone, Debug)]
pub struct PemPair {
    /// Certificate chain, leaf first.
    pub cert: String,
    /// Private key.
    pub key: String,
}

fn certified_key(cert_pem: &[u8], key_pem: &[u8], cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { what: "--tls-cert-file", path: cert_path.into(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Pem { what: "--tls-cert-file", path: cert_path.into(), reason: "no certificate".into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        what: "--tls-private-key-file",
        path: key_path.into(),
        reason: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Key)
}

/// Parses a PEM bundle of CA certificates (from the file of flag `what`)
/// into a root store.
pub fn root_store(pem: &[u8], path: &Path, what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::Pem { what, path: path.into(), reason: e.to_string() })?;
        roots.add(cert).map_err(|e| TlsError::Pem { what, path: path.into(), reason: e.to_string() })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem { what, path: path.into(), reason: "no CA certificate".into() });
    }
    Ok(roots)
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// Files, re-read when they change.
    Files {
        /// `--tls-cert-file`.
        cert: PathBuf,
        /// `--tls-private-key-file`.
        key: PathBuf,
    },
    /// Fixed PEM (self-signed, or made by `standalone`).
    Fixed(PemPair),
}

/// Serves the current certificate; a reload swaps it for new handshakes.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
    source: CertSource,
    loaded: std::sync::Mutex<Option<(SystemTime, SystemTime)>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl CertResolver {
    /// Loads the certificate once; fails if it cannot be used.
    pub fn new(source: CertSource) -> Result<Arc<Self>, TlsError> {
        let (key, loaded) = match &source {
            CertSource::Fixed(pair) => {
                let key = certified_key(
                    pair.cert.as_bytes(),
                    pair.key.as_bytes(),
                    Path::new("<generated>"),
                    Path::new("<generated>"),
                )?;
                (key, None)
            }
            CertSource::Files { cert, key } => {
                let stamps = modified(cert).zip(modified(key));
                (Self::read_files(cert, key)?, stamps)
            }
        };
        Ok(Arc::new(Self { current: ArcSwap::from_pointee(key), source, loaded: std::sync::Mutex::new(loaded) }))
    }

    fn read_files(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.into(), source })
        };
        certified_key(&read("--tls-cert-file", cert)?, &read("--tls-private-key-file", key)?, cert, key)
    }

    /// Re-reads the files if either changed. A certificate that cannot be
    /// used keeps the old one serving, and the error is returned to be
    /// logged. Returns whether a new certificate was installed.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let CertSource::Files { cert, key } = &self.source else { return Ok(false) };
        let stamps = modified(cert).zip(modified(key));
        let mut loaded = self.loaded.lock().expect("reload lock is never poisoned");
        if stamps.is_none() || stamps == *loaded {
            return Ok(false);
        }
        // Remember the attempt either way: a bad file is reported once, not every tick.
        *loaded = stamps;
        let new = Self::read_files(cert, key)?;
        self.current.store(Arc::new(new));
        Ok(true)
    }

    /// Checks the files every `interval` until shutdown (at once for fixed
    /// certificates, which never change).
    pub async fn watch(self: Arc<Self>, interval: Duration, shutdown: tokio::sync::watch::Receiver<bool>) {
        if !matches!(self.source, CertSource::Files { .. }) {
            return;
        }
        let mut rounds = crate::shutdown::Rounds::new(interval, shutdown);
        while rounds.next().await {
            self.reload();
        }
    }

    /// Reloads the files if they changed, logging the outcome.
    pub fn reload(&self) {
        match self.reload_if_changed() {
            Ok(true) => tracing::info!("serving certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "new serving certificate refused; the old one stays in use"),
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Verifies client certificates against the trusted CA, for the handshake
/// and again after it.
///
/// In the handshake a certificate from an unknown CA is let through (the
/// client must still prove it holds the key), so that the request can be
/// answered 401 in a `Status`, as kube-apiserver does, instead of failing
/// the handshake. [`ClientCa::verify`] then decides whether the certificate
/// is trusted; only a trusted one names a user.
#[derive(Debug, Clone)]
pub struct ClientCa {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCa {
    /// Trusts certificates signed by `roots`.
    pub fn new(roots: RootCertStore) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Whether a presented chain (leaf first) is signed by the trusted CA and
    /// valid now.
    pub fn verify(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        self.inner.verify_client_cert(leaf, intermediates, UnixTime::now()).map(|_| ())
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Trust is decided after the handshake (see the type's docs).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Completes a server-side TLS handshake within `timeout`; returns the
/// stream and the client's certificate when `client_ca` trusts it (`None`
/// for no certificate, an untrusted one, or no CA). A failed or slow
/// handshake is logged at debug and gives `None`.
pub async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    client_ca: Option<&ClientCa>,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, Option<CertificateDer<'static>>)> {
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            return None;
        }
    };
    // Only a certificate the trusted CA signed names a client.
    let peer = match (tls.get_ref().1.peer_certificates(), client_ca) {
        (Some(chain), Some(ca)) => match ca.verify(chain) {
            Ok(()) => chain.first().map(|c| c.clone().into_owned()),
            Err(e) => {
                tracing::debug!(error = %e, "client certificate not trusted");
                None
            }
        },
        _ => None,
    };
    Some((tls, peer))
}

/// A server config: the resolver's certificate, and client certificates
/// requested (optional, so that 401 can be answered) for `client_ca`.
pub fn server_config(resolver: Arc<CertResolver>, client_ca: ClientCa) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(client_ca))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A server config for gRPC (HTTP/2, which gRPC clients require by ALPN):
/// the resolver's certificate, and client certificates requested for
/// `client_ca` when there is one.
pub fn grpc_server_config(
    resolver: Arc<CertResolver>,
    client_ca: Option<ClientCa>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(Arc::new(ca)),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A certificate authority that signs serving and client certificates, for
/// `standalone`, tests and the self-signed fallback.
pub struct LocalCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl LocalCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) })
    }

    /// A serving certificate for DNS names and IP addresses.
    pub fn serving(&self, names: &[&str]) -> Result<PemPair, TlsError> {
        let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with user `common_name` and groups `organizations`.
    pub fn client(&self, common_name: &str, organizations: &[&str]) -> Result<PemPair, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        for o in organizations {
            params.distinguished_name.push(rcgen::DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: rcgen::CertificateParams) -> Result<PemPair, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair { cert: cert.pem(), key: key.serialize_pem() })
    }
}

#[cfg(test)]
mod tests;
