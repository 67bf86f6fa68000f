//! rustls configuration for every TLS endpoint of peerd: loading PEM files with errors
//! that name the file, the server config (xDS listener: server-authenticated TLS 1.3 for
//! ztunnel, optional client certificates for peers) and the client config (upstream to
//! istiod: chain + DNS/IP name; to peers: chain + the peer's exact peerd SPIFFE ID, with
//! our own client certificate for mTLS).
//!
//! All configs use the `ring` provider. This file never disables verification: every
//! client config verifies the chain against configured roots, and every mode checks an
//! expected identity.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use super::reload::RootsSource;
use super::spiffe::{self, SpiffeId};

/// Istio's file names for a workload's certificate directory (`/etc/certs`, the
/// `istio-ca-root-cert` and `cacerts` layouts).
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";

/// ALPN for gRPC over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every peerd TLS config uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A failure to load TLS material; always names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} found")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: invalid PEM ({what}): {detail}")]
    BadPem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{path}: root certificate #{index} rejected: {detail}")]
    BadRoot {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("{path}: unusable private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("{key_path} does not belong to the first certificate of {chain_path}: {detail}")]
    KeyMismatch {
        chain_path: PathBuf,
        key_path: PathBuf,
        detail: String,
    },
    #[error("building TLS configuration: {0}")]
    Config(String),
}

/// The three files of an Istio-style identity directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub root: PathBuf,
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// `root-cert.pem`, `cert-chain.pem`, `key.pem` inside `dir`.
    pub fn in_dir(dir: &Path) -> CertFiles {
        CertFiles {
            root: dir.join(ROOT_CERT_FILE),
            cert_chain: dir.join(CERT_CHAIN_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses every certificate of a PEM file; at least one is required.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::BadPem {
            path: path.to_path_buf(),
            what: "certificate",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsFileError::Empty {
            path: path.to_path_buf(),
            what: "private key",
        },
        other => TlsFileError::BadPem {
            path: path.to_path_buf(),
            what: "private key",
            detail: other.to_string(),
        },
    })
}

/// Loads a root bundle; every certificate in it must be a usable trust anchor.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsFileError> {
    let certs = load_certs(path)?;
    let mut store = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        store.add(cert).map_err(|e| TlsFileError::BadRoot {
            path: path.to_path_buf(),
            index,
            detail: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

/// Loads a certificate chain and its key, checking that they belong together.
pub fn load_certified_key(
    chain_path: &Path,
    key_path: &Path,
) -> Result<rustls::sign::CertifiedKey, TlsFileError> {
    let chain = load_certs(chain_path)?;
    let key = load_key(key_path)?;
    let provider = provider();
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsFileError::BadKey {
                path: key_path.to_path_buf(),
                detail: e.to_string(),
            })?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(e) => Err(TlsFileError::KeyMismatch {
            chain_path: chain_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Trusted roots: fixed, or a [`RootsSource`] reloaded from its file. Verifiers read
/// the current bundle at every handshake, so a root rotation needs no new config.
#[derive(Clone, Debug)]
pub struct Roots(Arc<RootsSource>);

impl Roots {
    pub fn current(&self) -> Arc<RootCertStore> {
        self.0.current()
    }

    pub fn source(&self) -> &Arc<RootsSource> {
        &self.0
    }
}

impl From<Arc<RootCertStore>> for Roots {
    fn from(roots: Arc<RootCertStore>) -> Roots {
        Roots(RootsSource::fixed(roots))
    }
}

impl From<RootCertStore> for Roots {
    fn from(roots: RootCertStore) -> Roots {
        Roots(RootsSource::fixed(Arc::new(roots)))
    }
}

impl From<Arc<RootsSource>> for Roots {
    fn from(source: Arc<RootsSource>) -> Roots {
        Roots(source)
    }
}

/// Whether the server asks for client certificates.
#[derive(Clone)]
pub enum ClientAuth {
    /// No client certificates (ztunnel authenticates with a bearer token).
    None,
    /// Clients may present a certificate; one that is presented must chain to these
    /// roots. Used on the shared 15012 listener: peers present certs, ztunnel does not.
    Optional(Roots),
    /// Every client must present a certificate chaining to these roots.
    Required(Roots),
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "None",
            ClientAuth::Optional(_) => "Optional",
            ClientAuth::Required(_) => "Required",
        })
    }
}

#[derive(Debug, Clone)]
pub struct ServerTlsOptions {
    pub client_auth: ClientAuth,
    /// Also accept TLS 1.2 (off by default, like ztunnel).
    pub allow_tls12: bool,
}

impl Default for ServerTlsOptions {
    fn default() -> Self {
        ServerTlsOptions {
            client_auth: ClientAuth::None,
            allow_tls12: false,
        }
    }
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(allow_tls12: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if allow_tls12 {
        TLS13_AND_12
    } else {
        TLS13_ONLY
    }
}

/// A server config presenting the certificate `cert` resolves (see
/// [`super::reload::CertSource`]), ALPN `h2`.
pub fn server_config(
    cert: Arc<dyn ResolvesServerCert>,
    options: &ServerTlsOptions,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(options.allow_tls12))
        .map_err(|e| TlsFileError::Config(e.to_string()))?;
    let builder = match &options.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(Arc::new(
            ReloadingClientVerifier::new(roots.clone(), false, provider)?,
        )),
        ClientAuth::Required(roots) => builder.with_client_cert_verifier(Arc::new(
            ReloadingClientVerifier::new(roots.clone(), true, provider)?,
        )),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Which identity the client expects the server to prove, on top of a valid chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerIdentity {
    /// Standard web PKI name check: the DNS name or IP the client connects with must be
    /// a SAN of the server certificate (istiod: `istiod.istio-system.svc`).
    Name,
    /// The server certificate must carry exactly this SPIFFE ID (a peer's peerd). There is
    /// deliberately no "any ID in a trust domain": with a shared root, a trust domain
    /// admits every workload of the mesh.
    Spiffe(SpiffeId),
}

#[derive(Clone)]
pub struct ClientTlsOptions {
    pub roots: Roots,
    pub server_identity: ServerIdentity,
    /// Our certificate for mTLS (peers); `None` for server-authenticated TLS.
    pub client_cert: Option<Arc<dyn ResolvesClientCert>>,
    pub allow_tls12: bool,
}

impl ClientTlsOptions {
    pub fn new(roots: impl Into<Roots>, server_identity: ServerIdentity) -> ClientTlsOptions {
        ClientTlsOptions {
            roots: roots.into(),
            server_identity,
            client_cert: None,
            allow_tls12: false,
        }
    }

    pub fn with_client_cert(mut self, cert: Arc<dyn ResolvesClientCert>) -> ClientTlsOptions {
        self.client_cert = Some(cert);
        self
    }
}

/// A client config verifying the server as `options` says, ALPN `h2`.
pub fn client_config(options: &ClientTlsOptions) -> Result<Arc<ClientConfig>, TlsFileError> {
    let provider = provider();
    let verifier = Arc::new(PeerServerVerifier {
        roots: options.roots.clone(),
        identity: options.server_identity.clone(),
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(options.allow_tls12))
        .map_err(|e| TlsFileError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &options.client_cert {
        Some(cert) => builder.with_client_cert_resolver(cert.clone()),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The server did not prove the identity we expected. Carried inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))` so
/// [`super::classify`] can name it `IdentityMismatch`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer identity mismatch: expected {expected}, certificate presents {}", presented_list(.presented))]
pub struct IdentityMismatch {
    pub expected: String,
    /// The URI SANs of the presented certificate, each already bounded by
    /// [`spiffe::bounded`] (they come from the peer and end up in conditions and logs).
    pub presented: Vec<String>,
}

impl IdentityMismatch {
    /// A mismatch naming at most [`MAX_LISTED_SANS`] of the certificate's URI SANs, each
    /// bounded.
    pub fn new(expected: impl Into<String>, presented_sans: &[String]) -> IdentityMismatch {
        let mut presented: Vec<String> = presented_sans
            .iter()
            .take(MAX_LISTED_SANS)
            .map(|san| spiffe::bounded(san))
            .collect();
        if presented_sans.len() > MAX_LISTED_SANS {
            presented.push(format!(
                "and {} more URI SANs",
                presented_sans.len() - MAX_LISTED_SANS
            ));
        }
        IdentityMismatch {
            expected: expected.into(),
            presented,
        }
    }
}

/// How many presented URI SANs a mismatch message lists.
pub const MAX_LISTED_SANS: usize = 4;
fn presented_list(p: &[String]) -> String {
    if p.is_empty() {
        "no URI SAN (no SPIFFE ID)".to_string()
    } else {
        p.join(", ")
    }
}

/// Server verification exactly as rustls' `WebPkiServerVerifier` does it (webpki chain
/// to the roots, validity period, serverAuth usage; then the DNS/IP name), except that
/// the roots are read at each handshake (so they can be reloaded) and that for peers the
/// name check is a SPIFFE URI SAN check: peers are named by identity, not by the
/// address we dial.
struct PeerServerVerifier {
    roots: Roots,
    identity: ServerIdentity,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PeerServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerServerVerifier")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots.current(),
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let expected = match &self.identity {
            ServerIdentity::Name => {
                rustls::client::verify_server_name(&parsed, server_name)?;
                return Ok(ServerCertVerified::assertion());
            }
            ServerIdentity::Spiffe(id) => id,
        };
        let sans = spiffe::uri_sans(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if sans
            .iter()
            .filter_map(|san| san.parse::<SpiffeId>().ok())
            .any(|presented| &presented == expected)
        {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(IdentityMismatch::new(expected.to_string(), &sans))),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::verify_tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.provider)
    }
}

/// rustls' `WebPkiClientVerifier`, rebuilt when the roots reload. It sends no CA hints
/// (clients then offer whatever certificate they have).
struct ReloadingClientVerifier {
    roots: Roots,
    mandatory: bool,
    provider: Arc<CryptoProvider>,
    /// (roots generation, verifier built from those roots)
    built: ArcSwap<(u64, Arc<dyn ClientCertVerifier>)>,
}

impl fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ReloadingClientVerifier {
    fn new(
        roots: Roots,
        mandatory: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<ReloadingClientVerifier, TlsFileError> {
        let generation = roots.source().generation();
        let verifier = build_client_verifier(&roots.current(), mandatory, &provider)
            .map_err(TlsFileError::Config)?;
        Ok(ReloadingClientVerifier {
            roots,
            mandatory,
            provider,
            built: ArcSwap::from_pointee((generation, verifier)),
        })
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        let built = self.built.load();
        // Read the generation before the roots: the roots are then at least that new.
        let generation = self.roots.source().generation();
        if built.0 == generation {
            return Arc::clone(&built.1);
        }
        match build_client_verifier(&self.roots.current(), self.mandatory, &self.provider) {
            Ok(verifier) => {
                self.built
                    .store(Arc::new((generation, Arc::clone(&verifier))));
                verifier
            }
            Err(e) => {
                tracing::warn!(error = %e, "reloaded roots are unusable for client verification; keeping the previous ones");
                Arc::clone(&built.1)
            }
        }
    }
}

fn build_client_verifier(
    roots: &Arc<RootCertStore>,
    mandatory: bool,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    let builder = if mandatory {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| e.to_string())
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::verify_tls12(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::verify_tls13(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes(&self.provider)
    }
}

/// The SPIFFE identity of the verified peer of a TLS connection (a client presenting a
/// certificate to our server, or the server we connected to). `None` when the peer
/// presented no certificate or one without an Istio SPIFFE ID.
pub fn peer_spiffe_id(peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    peer_spiffe_ids(peer_certificates).into_iter().next()
}

/// Every Istio SPIFFE ID of the leaf certificate of a verified TLS peer, in certificate
/// order (empty without a certificate).
pub fn peer_spiffe_ids(peer_certificates: Option<&[CertificateDer<'_>]>) -> Vec<SpiffeId> {
    peer_certificates
        .and_then(|certs| certs.first())
        .and_then(|leaf| spiffe::identities_in_cert(leaf).ok())
        .unwrap_or_default()
}

/// Handshake-signature checks shared by both verifiers: only the provider's algorithms.
mod signatures {
    use rustls::DigitallySignedStruct;
    use rustls::SignatureScheme;
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::CertificateDer;

    pub(super) fn verify_tls12(
        provider: &CryptoProvider,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider.signature_verification_algorithms,
        )
    }

    pub(super) fn verify_tls13(
        provider: &CryptoProvider,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider.signature_verification_algorithms,
        )
    }

    pub(super) fn schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
        provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
