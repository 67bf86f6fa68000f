//! A throwaway PKI for tests, the simulated istiod and `peerd-sandbox`: a root CA,
//! per-cluster intermediate CAs, and leaf certificates carrying a SPIFFE URI SAN plus DNS
//! and IP SANs, written in Istio's file layout.
//!
//! Layout (see [`Pki`]):
//! ```text
//! DIR/root-cert.pem, DIR/root-key.pem              the root CA (key 0600)
//! DIR/<cluster>/ca-cert.pem, ca-key.pem,           the cluster's intermediate, as Istio's
//!              root-cert.pem, cert-chain.pem        `cacerts` secret (chain = ca + root)
//! <leaf dir>/root-cert.pem, cert-chain.pem, key.pem  a leaf: chain = leaf then intermediates
//! ```
//! Files are written atomically (temporary file + rename), keys with mode 0600.
//!
//! This file must never be used to hold production keys: keys are generated in-process
//! and written unencrypted. It never logs key material (`Debug` omits keys).

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use peerd::identity::spiffe::SpiffeId;

// Istio's file names: the daemon reads the same layout.
pub use peerd::identity::tls::{CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};
pub const ROOT_KEY_FILE: &str = "root-key.pem";
pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

const CERT_MODE: u32 = 0o644;
const KEY_MODE: u32 = 0o600;

const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const INTERMEDIATE_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Backdating tolerates small clock differences between processes reading the files.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating {what}: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("invalid SAN {value:?}: {source}")]
    BadSan {
        value: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    BadFile { path: PathBuf, what: String },
    #[error("a leaf certificate needs at least one SAN (SPIFFE ID, DNS name or IP)")]
    NoSan,
}

/// What a leaf certificate may be used for (extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUsage {
    Server,
    Client,
    ServerAndClient,
}

/// The subject of a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub spiffe_id: Option<SpiffeId>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usage: LeafUsage,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LeafSpec {
    /// A leaf for a workload identity, usable as server and client (Istio workload certs
    /// are both).
    pub fn workload(id: SpiffeId) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            common_name: id.to_string(),
            spiffe_id: Some(id),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: LeafUsage::ServerAndClient,
            not_before: now - BACKDATE,
            not_after: now + LEAF_VALIDITY,
        }
    }

    /// A server-only leaf named by DNS names and IPs (an istiod-like serving cert).
    pub fn server(common_name: &str) -> LeafSpec {
        let now = SystemTime::now();
        LeafSpec {
            common_name: common_name.to_string(),
            spiffe_id: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usage: LeafUsage::Server,
            not_before: now - BACKDATE,
            not_after: now + LEAF_VALIDITY,
        }
    }

    pub fn with_dns(mut self, name: impl Into<String>) -> LeafSpec {
        self.dns_names.push(name.into());
        self
    }

    pub fn with_ip(mut self, ip: IpAddr) -> LeafSpec {
        self.ip_addresses.push(ip);
        self
    }

    pub fn with_usage(mut self, usage: LeafUsage) -> LeafSpec {
        self.usage = usage;
        self
    }

    pub fn with_validity(mut self, not_before: SystemTime, not_after: SystemTime) -> LeafSpec {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// A certificate authority (root or intermediate) that can sign.
pub struct CertificateAuthority {
    name: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    /// PEM of the CAs between this one and the root, excluding both (empty for a root
    /// and for a first-level intermediate).
    parents_pem: String,
    root_pem: String,
    is_root: bool,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("name", &self.name)
            .field("is_root", &self.is_root)
            .finish_non_exhaustive()
    }
}

/// A signed leaf certificate with its key and the chain to present.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    /// Leaf, then the intermediates up to (excluding) the root.
    pub chain_pem: String,
    pub key_pem: String,
    pub root_pem: String,
    pub serial: Vec<u8>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial", &hex(&self.serial))
            .finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// Writes `root-cert.pem`, `cert-chain.pem` and `key.pem` (0600) into `dir`,
    /// creating it when missing.
    pub fn write_to(&self, dir: &Path) -> Result<(), PkiError> {
        create_dir(dir)?;
        write_atomic(&dir.join(ROOT_CERT_FILE), &self.root_pem, CERT_MODE)?;
        write_atomic(&dir.join(CERT_CHAIN_FILE), &self.chain_pem, CERT_MODE)?;
        write_atomic(&dir.join(KEY_FILE), &self.key_pem, KEY_MODE)?;
        Ok(())
    }

    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }
}

impl CertificateAuthority {
    /// A new self-signed root CA.
    pub fn new_root(common_name: &str) -> Result<CertificateAuthority, PkiError> {
        let key = generate_key(common_name)?;
        let mut params = ca_params(common_name, ROOT_VALIDITY, None);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Generate {
                what: format!("root CA {common_name}"),
                source,
            })?;
        let cert_pem = cert.pem();
        Ok(CertificateAuthority {
            name: common_name.to_string(),
            cert_der: cert.der().clone(),
            root_pem: cert_pem.clone(),
            cert_pem,
            key_pem: key.serialize_pem(),
            parents_pem: String::new(),
            is_root: true,
            issuer: Issuer::new(params, key),
        })
    }

    /// A new intermediate CA signed by this CA (path length 0: it signs only leaves).
    pub fn new_intermediate(&self, name: &str) -> Result<CertificateAuthority, PkiError> {
        let key = generate_key(name)?;
        let mut params = ca_params(name, INTERMEDIATE_VALIDITY, Some(0));
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generate {
                what: format!("intermediate CA {name}"),
                source,
            })?;
        Ok(CertificateAuthority {
            name: name.to_string(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            parents_pem: if self.is_root {
                String::new()
            } else {
                format!("{}{}", self.cert_pem, self.parents_pem)
            },
            root_pem: self.root_pem.clone(),
            is_root: false,
            issuer: Issuer::new(params, key),
        })
    }

    /// Signs a leaf certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedCert, PkiError> {
        let mut sans = Vec::new();
        if let Some(id) = &spec.spiffe_id {
            let uri = id.to_string();
            sans.push(SanType::URI(
                uri.clone()
                    .try_into()
                    .map_err(|source| PkiError::BadSan { value: uri, source })?,
            ));
        }
        for dns in &spec.dns_names {
            sans.push(SanType::DnsName(dns.clone().try_into().map_err(
                |source| PkiError::BadSan {
                    value: dns.clone(),
                    source,
                },
            )?));
        }
        sans.extend(spec.ip_addresses.iter().copied().map(SanType::IpAddress));
        if sans.is_empty() {
            return Err(PkiError::NoSan);
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&spec.common_name);
        params.subject_alt_names = sans;
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match spec.usage {
            LeafUsage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            LeafUsage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            LeafUsage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(serial.clone());

        let key = generate_key(&spec.common_name)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generate {
                what: format!("leaf certificate {}", spec.common_name),
                source,
            })?;
        let cert_pem = cert.pem();
        let chain_pem = if self.is_root {
            cert_pem.clone()
        } else {
            format!("{cert_pem}{}{}", self.cert_pem, self.parents_pem)
        };
        Ok(IssuedCert {
            cert_der: cert.der().clone(),
            cert_pem,
            chain_pem,
            key_pem: key.serialize_pem(),
            root_pem: self.root_pem.clone(),
            serial: serial.to_bytes(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// This CA's certificate followed by its parents and the root (Istio's
    /// `cacerts/cert-chain.pem`).
    pub fn chain_to_root_pem(&self) -> String {
        if self.is_root {
            self.cert_pem.clone()
        } else {
            format!("{}{}{}", self.cert_pem, self.parents_pem, self.root_pem)
        }
    }

    /// Writes the CA in Istio's `cacerts` form: `ca-cert.pem`, `ca-key.pem` (0600),
    /// `root-cert.pem`, `cert-chain.pem`.
    pub fn write_ca_files(&self, dir: &Path) -> Result<(), PkiError> {
        create_dir(dir)?;
        write_atomic(&dir.join(CA_CERT_FILE), &self.cert_pem, CERT_MODE)?;
        write_atomic(&dir.join(CA_KEY_FILE), &self.key_pem, KEY_MODE)?;
        write_atomic(&dir.join(ROOT_CERT_FILE), &self.root_pem, CERT_MODE)?;
        write_atomic(
            &dir.join(CERT_CHAIN_FILE),
            &self.chain_to_root_pem(),
            CERT_MODE,
        )?;
        Ok(())
    }

    /// Loads an intermediate written by [`write_ca_files`](Self::write_ca_files).
    pub fn load_ca_files(dir: &Path) -> Result<CertificateAuthority, PkiError> {
        let cert_pem = read_text(&dir.join(CA_CERT_FILE))?;
        let key_pem = read_text(&dir.join(CA_KEY_FILE))?;
        let root_pem = read_text(&dir.join(ROOT_CERT_FILE))?;
        let chain_pem = read_text(&dir.join(CERT_CHAIN_FILE))?;
        let blocks = pem_cert_blocks(&chain_pem);
        // chain = ca, parents…, root: the parents are what lies strictly between.
        let parents_pem: String = blocks
            .iter()
            .skip(1)
            .take(blocks.len().saturating_sub(2))
            .map(|b| b.as_str())
            .collect();
        Self::from_pem(
            &dir.join(CA_CERT_FILE),
            &cert_pem,
            &key_pem,
            parents_pem,
            root_pem,
            false,
        )
    }

    /// Loads a root written as `root-cert.pem` + `root-key.pem` in `dir`.
    pub fn load_root(dir: &Path) -> Result<CertificateAuthority, PkiError> {
        let cert_pem = read_text(&dir.join(ROOT_CERT_FILE))?;
        let key_pem = read_text(&dir.join(ROOT_KEY_FILE))?;
        Self::from_pem(
            &dir.join(ROOT_CERT_FILE),
            &cert_pem,
            &key_pem,
            String::new(),
            cert_pem.clone(),
            true,
        )
    }

    fn from_pem(
        cert_path: &Path,
        cert_pem: &str,
        key_pem: &str,
        parents_pem: String,
        root_pem: String,
        is_root: bool,
    ) -> Result<CertificateAuthority, PkiError> {
        let bad = |what: String| PkiError::BadFile {
            path: cert_path.to_path_buf(),
            what,
        };
        let der = pem_blocks(cert_path, cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| bad("no certificate".into()))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| bad(format!("the CA key next to it is unusable: {e}")))?;
        let name = ca_common_name(&der).unwrap_or_default();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        Ok(CertificateAuthority {
            name,
            cert_der: der.clone(),
            cert_pem: pem_cert_blocks(cert_pem)
                .into_iter()
                .next()
                .unwrap_or_default(),
            key_pem: key_pem.to_string(),
            parents_pem,
            root_pem,
            is_root,
            issuer,
        })
    }

    fn write_root_files(&self, dir: &Path) -> Result<(), PkiError> {
        create_dir(dir)?;
        write_atomic(&dir.join(ROOT_CERT_FILE), &self.cert_pem, CERT_MODE)?;
        write_atomic(&dir.join(ROOT_KEY_FILE), &self.key_pem, KEY_MODE)?;
        Ok(())
    }
}

/// A PKI kept on disk: one root in `dir`, one intermediate per cluster in
/// `dir/<cluster>/`. Existing files are reused, so a restarted sandbox keeps its trust.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    root: CertificateAuthority,
}

impl Pki {
    /// Loads the root from `dir`, or creates and writes one when `root-cert.pem` is
    /// missing.
    pub fn load_or_create(dir: &Path, root_name: &str) -> Result<Pki, PkiError> {
        let root = if dir.join(ROOT_CERT_FILE).exists() {
            CertificateAuthority::load_root(dir)?
        } else {
            let root = CertificateAuthority::new_root(root_name)?;
            root.write_root_files(dir)?;
            root
        };
        Ok(Pki {
            dir: dir.to_path_buf(),
            root,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root(&self) -> &CertificateAuthority {
        &self.root
    }

    pub fn root_cert_path(&self) -> PathBuf {
        self.dir.join(ROOT_CERT_FILE)
    }

    /// The directory holding `cluster`'s intermediate.
    pub fn cluster_dir(&self, cluster: &str) -> PathBuf {
        self.dir.join(cluster)
    }

    /// The cluster's intermediate CA, loaded from `dir/<cluster>/` or created there.
    pub fn cluster_ca(&self, cluster: &str) -> Result<CertificateAuthority, PkiError> {
        if cluster.is_empty() || cluster.contains('/') || cluster.starts_with('.') {
            return Err(PkiError::BadFile {
                path: self.cluster_dir(cluster),
                what: format!("cluster name {cluster:?} cannot name a directory"),
            });
        }
        let dir = self.cluster_dir(cluster);
        if dir.join(CA_CERT_FILE).exists() {
            return CertificateAuthority::load_ca_files(&dir);
        }
        let ca = self
            .root
            .new_intermediate(&format!("peerd intermediate CA {cluster}"))?;
        ca.write_ca_files(&dir)?;
        Ok(ca)
    }
}

fn ca_params(common_name: &str, validity: Duration, path_len: Option<u8>) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name);
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn distinguished_name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "peerd");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate().map_err(|source| PkiError::Generate {
        what: format!("key for {what}"),
        source,
    })
}

/// 128 random bits, top bit cleared so the DER integer stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte: keeps the encoding minimal
    SerialNumber::from_slice(&bytes)
}

fn ca_common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `CERTIFICATE` blocks of a PEM text, each with its BEGIN/END lines and a final
/// newline, in order.
fn pem_cert_blocks(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        blocks.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    blocks
}

fn pem_blocks(path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadFile {
            path: path.to_path_buf(),
            what: format!("invalid PEM: {e}"),
        })
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        action: "create directory",
        source,
    })
}

/// Writes `contents` to `path` through a temporary file in the same directory and a
/// rename, so a reader polling the file never sees a half-written one.
pub(crate) fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io_err = |action, source| PkiError::Io {
        path: path.to_path_buf(),
        action,
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{file_name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err("create temporary file", e))?;
    let result = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_err("write", e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io_err("rename into place", e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
