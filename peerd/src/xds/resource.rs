//! One xDS resource as peerd holds it: the original `Any.value` bytes (forwarded
//! unchanged, so fields unknown to our schema survive) plus a small decoded summary used
//! for validation, indexing and federation decisions.
//!
//! Architecture invariant: `body` is never re-encoded from the summary or from prost
//! structs. Changes to a received resource go through [`crate::xds::wire`].

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::proto::istio::{security, workload};
use crate::xds::intern::intern;
use crate::xds::types::ResourceType;

/// A validated resource. Cheap to clone behind an `Arc`.
#[derive(Clone, PartialEq, Eq)]
pub struct Resource {
    pub kind: ResourceType,
    /// The semantic xDS name: a workload's `uid`, a service's `namespace/hostname`, an
    /// authorization's `namespace/name`.
    pub name: Arc<str>,
    /// The version this resource is announced with. For resources held from an upstream
    /// it is the upstream's version (echoed in `initial_resource_versions`); for resources
    /// peerd serves it is [`content_version`] of `body`.
    pub version: Arc<str>,
    /// The `Any.value` bytes exactly as received (or as edited at the wire level).
    pub body: Bytes,
    /// Shared by every view serving this content (the merged view re-versions a
    /// resource without copying what was decoded from it).
    pub summary: Arc<Summary>,
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("bytes", &self.body.len())
            .finish()
    }
}

/// The fields peerd inspects. Everything else stays opaque in `Resource::body`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Summary {
    Workload(WorkloadSummary),
    Service(ServiceSummary),
    Authorization(AuthorizationSummary),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadSummary {
    pub uid: String,
    pub name: String,
    // Values repeated across workloads are shared (see `xds::intern`).
    pub namespace: Arc<str>,
    pub cluster_id: Arc<str>,
    pub network: Arc<str>,
    pub addresses: Vec<IpAddr>,
    pub trust_domain: Arc<str>,
    pub service_account: Arc<str>,
    /// Keys (`namespace/hostname`) of the services this workload backs.
    pub services: Vec<Arc<str>>,
    pub has_network_gateway: bool,
    /// Whether `waypoint` is set (the exporter reads the reference only then).
    pub has_waypoint: bool,
    /// `network/IP` of each address: ztunnel's on-demand key, built once here and shared
    /// by every view's address index.
    pub address_keys: Vec<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceSummary {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// (network, address) of each VIP.
    pub vips: Vec<(String, IpAddr)>,
    /// (service_port, target_port) pairs.
    pub ports: Vec<(u32, u32)>,
    /// Whether `waypoint` or `weighted_waypoints` is set.
    pub has_waypoint: bool,
    /// `network/IP` of each VIP (see [`WorkloadSummary::address_keys`]).
    pub address_keys: Vec<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthorizationSummary {
    pub name: String,
    pub namespace: String,
}

/// Why a resource was rejected. The `Display` form is what goes into a NACK after
/// `"<name>: "`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("resource has no payload")]
    MissingPayload,
    #[error("payload type {found} does not match response type {expected}")]
    TypeMismatch { expected: String, found: String },
    #[error("cannot decode {kind}: {reason}")]
    Malformed { kind: ResourceType, reason: String },
    #[error("Address has neither a workload nor a service")]
    EmptyAddress,
    #[error("{field} has an address of {len} bytes (must be 4 or 16)")]
    BadAddressLength { field: &'static str, len: usize },
    #[error("{field} has prefix length {length}, longer than its {bits}-bit address")]
    BadPrefixLength {
        field: &'static str,
        length: u32,
        bits: u32,
    },
    #[error("workload has no uid")]
    MissingUid,
    #[error("service has no hostname or namespace")]
    MissingHostname,
    #[error("authorization has no name or namespace")]
    MissingAuthorizationName,
    #[error("services key {0:?} is not namespace/hostname")]
    BadServiceKey(String),
    #[error("resource name does not match its content (expected {expected:?})")]
    NameMismatch { expected: String },
    #[error("duplicate name in one response")]
    Duplicate,
    #[error("{0}")]
    Rejected(String),
}

impl Resource {
    /// Validates a received payload and builds the resource, keeping `body` as is.
    /// `name` is the name the sender gave it; it must equal the semantic name.
    pub fn from_wire(
        kind: ResourceType,
        name: impl AsRef<str> + Into<Arc<str>>,
        version: impl Into<Arc<str>>,
        body: Bytes,
    ) -> Result<Resource, ResourceError> {
        let summary = summarize(kind, &body)?;
        if !summary.has_semantic_name(name.as_ref()) {
            return Err(ResourceError::NameMismatch {
                expected: summary.semantic_name(),
            });
        }
        Ok(Resource {
            kind,
            name: name.into(),
            version: version.into(),
            body,
            summary: Arc::new(summary),
        })
    }

    /// Builds a resource peerd originates (simulator, federation output), named by its
    /// content and versioned by its bytes.
    pub fn from_body(kind: ResourceType, body: Bytes) -> Result<Resource, ResourceError> {
        let summary = summarize(kind, &body)?;
        let name: Arc<str> = Arc::from(summary.semantic_name());
        let version = content_version(&body);
        Ok(Resource {
            kind,
            name,
            version,
            body,
            summary: Arc::new(summary),
        })
    }

    pub fn workload(w: &workload::Workload) -> Result<Resource, ResourceError> {
        let addr = workload::Address {
            r#type: Some(workload::address::Type::Workload(w.clone())),
        };
        Resource::from_body(ResourceType::Address, Bytes::from(addr.encode_to_vec()))
    }

    pub fn service(s: &workload::Service) -> Result<Resource, ResourceError> {
        let addr = workload::Address {
            r#type: Some(workload::address::Type::Service(s.clone())),
        };
        Resource::from_body(ResourceType::Address, Bytes::from(addr.encode_to_vec()))
    }

    pub fn authorization(a: &security::Authorization) -> Result<Resource, ResourceError> {
        Resource::from_body(ResourceType::Authorization, Bytes::from(a.encode_to_vec()))
    }

    /// `r` announced under its content-derived version (what peerd serves): `r` itself
    /// when it already is, else a copy sharing its body and summary. Hashes the body once.
    pub fn content_versioned(r: &Arc<Resource>) -> Arc<Resource> {
        let hash = content_hash(&r.body);
        if version_is_hash(&r.version, hash) {
            Arc::clone(r)
        } else {
            Arc::new(Resource {
                version: format_version(hash),
                ..Resource::clone(r)
            })
        }
    }

    /// Replaces the body (after a wire edit) and re-validates it.
    pub fn with_body(&self, body: Bytes) -> Result<Resource, ResourceError> {
        Resource::from_body(self.kind, body)
    }

    pub fn as_workload(&self) -> Option<&WorkloadSummary> {
        match &*self.summary {
            Summary::Workload(w) => Some(w),
            _ => None,
        }
    }

    pub fn as_service(&self) -> Option<&ServiceSummary> {
        match &*self.summary {
            Summary::Service(s) => Some(s),
            _ => None,
        }
    }

    /// Full prost decode, for inspection only (unknown fields are dropped by prost).
    pub fn decode_address(&self) -> Option<workload::Address> {
        match self.kind {
            ResourceType::Address => workload::Address::decode(self.body.as_ref()).ok(),
            ResourceType::Authorization => None,
        }
    }
}

impl Summary {
    /// The xDS name ztunnel expects for this content.
    pub fn semantic_name(&self) -> String {
        match self {
            Summary::Workload(w) => w.uid.clone(),
            Summary::Service(s) => format!("{}/{}", s.namespace, s.hostname),
            Summary::Authorization(a) => format!("{}/{}", a.namespace, a.name),
        }
    }

    /// Whether `name` is [`Summary::semantic_name`], without allocating.
    pub fn has_semantic_name(&self, name: &str) -> bool {
        let (namespace, rest) = match self {
            Summary::Workload(w) => return w.uid == name,
            Summary::Service(s) => (&s.namespace, &s.hostname),
            Summary::Authorization(a) => (&a.namespace, &a.name),
        };
        name.len() == namespace.len() + 1 + rest.len()
            && name.starts_with(namespace.as_str())
            && name[namespace.len()..].starts_with('/')
            && name.ends_with(rest.as_str())
    }
}

/// A version string derived from the bytes: equal bytes ⇔ equal version (64-bit XXH3),
/// stable across restarts so a reconnecting client's `initial_resource_versions` match.
pub fn content_version(body: &[u8]) -> Arc<str> {
    format_version(content_hash(body))
}

/// Whether `version` is [`content_version`] of `body`, without allocating.
pub fn is_content_version(version: &str, body: &[u8]) -> bool {
    version_is_hash(version, content_hash(body))
}

fn format_version(hash: u64) -> Arc<str> {
    Arc::from(format!("{hash:016x}"))
}

fn version_is_hash(version: &str, hash: u64) -> bool {
    version.len() == 16
        && version
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && u64::from_str_radix(version, 16).is_ok_and(|v| v == hash)
}

/// XXH3-64: a published, stable algorithm (versions must survive restarts and upgrades
/// to match what clients hold) that hashes at memory speed.
fn content_hash(body: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(body)
}

fn malformed(kind: ResourceType, e: prost::DecodeError) -> ResourceError {
    ResourceError::Malformed {
        kind,
        reason: e.to_string(),
    }
}

pub fn ip_from_bytes(field: &'static str, b: &[u8]) -> Result<IpAddr, ResourceError> {
    match b.len() {
        4 => Ok(IpAddr::from(<[u8; 4]>::try_from(b).map_err(|_| {
            ResourceError::BadAddressLength {
                field,
                len: b.len(),
            }
        })?)),
        16 => Ok(IpAddr::from(<[u8; 16]>::try_from(b).map_err(|_| {
            ResourceError::BadAddressLength {
                field,
                len: b.len(),
            }
        })?)),
        len => Err(ResourceError::BadAddressLength { field, len }),
    }
}

/// A `NetworkAddress` (a VIP, possibly a CIDR range): its IP, and a prefix `length` no
/// longer than that IP's bits. A longer prefix names no range at all, so the resource is
/// rejected (NACKed) like an address of the wrong size, never served half-understood.
pub fn network_address_ip(
    field: &'static str,
    a: &workload::NetworkAddress,
) -> Result<IpAddr, ResourceError> {
    let ip = ip_from_bytes(field, &a.address)?;
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    match a.length {
        Some(length) if length > bits => Err(ResourceError::BadPrefixLength {
            field,
            length,
            bits,
        }),
        _ => Ok(ip),
    }
}

/// ztunnel's on-demand key for an address: `network/IP`.
pub fn address_key(network: &str, ip: &IpAddr) -> Arc<str> {
    // Written by hand for IPv4: this runs for every address of every received workload,
    // and `format!` through the IP's `Display` cost several times more.
    let mut key = String::with_capacity(network.len() + 40);
    key.push_str(network);
    key.push('/');
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    key.push('.');
                }
                if octet >= 100 {
                    key.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    key.push(char::from(b'0' + octet / 10 % 10));
                }
                key.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(key, "{v6}");
        }
    }
    Arc::from(key)
}

/// Decodes and validates the payload the way ztunnel would, returning the summary.
pub fn summarize(kind: ResourceType, body: &[u8]) -> Result<Summary, ResourceError> {
    match kind {
        ResourceType::Address => {
            let addr = workload::Address::decode(body).map_err(|e| malformed(kind, e))?;
            match addr.r#type {
                Some(workload::address::Type::Workload(w)) => summarize_workload(w),
                Some(workload::address::Type::Service(s)) => summarize_service(s),
                None => Err(ResourceError::EmptyAddress),
            }
        }
        ResourceType::Authorization => {
            let a = security::Authorization::decode(body).map_err(|e| malformed(kind, e))?;
            if a.name.is_empty() || a.namespace.is_empty() {
                return Err(ResourceError::MissingAuthorizationName);
            }
            for rule in &a.rules {
                for clause in &rule.clauses {
                    for m in &clause.matches {
                        for ip in m
                            .source_ips
                            .iter()
                            .chain(&m.not_source_ips)
                            .chain(&m.destination_ips)
                            .chain(&m.not_destination_ips)
                        {
                            ip_from_bytes("Match address", &ip.address)?;
                        }
                    }
                }
            }
            Ok(Summary::Authorization(AuthorizationSummary {
                name: a.name,
                namespace: a.namespace,
            }))
        }
    }
}

fn summarize_workload(w: workload::Workload) -> Result<Summary, ResourceError> {
    if w.uid.is_empty() {
        return Err(ResourceError::MissingUid);
    }
    let addresses = w
        .addresses
        .iter()
        .map(|a| ip_from_bytes("Workload.addresses", a))
        .collect::<Result<Vec<_>, _>>()?;
    for (field, gateway) in [
        ("Workload.network_gateway", &w.network_gateway),
        ("Workload.waypoint", &w.waypoint),
    ] {
        if let Some(workload::GatewayAddress {
            destination: Some(workload::gateway_address::Destination::Address(a)),
            ..
        }) = gateway
        {
            network_address_ip(field, a)?;
        }
    }
    let address_keys = addresses
        .iter()
        .map(|ip| address_key(&w.network, ip))
        .collect();
    // Keys of a BTreeMap: already sorted.
    if let Some(bad) = w.services.keys().find(|k| !k.contains('/')) {
        return Err(ResourceError::BadServiceKey(bad.clone()));
    }
    let services = w.services.keys().map(|k| intern(k)).collect();
    Ok(Summary::Workload(WorkloadSummary {
        uid: w.uid,
        name: w.name,
        namespace: intern(&w.namespace),
        cluster_id: intern(&w.cluster_id),
        network: intern(&w.network),
        addresses,
        trust_domain: intern(&w.trust_domain),
        service_account: intern(&w.service_account),
        services,
        has_network_gateway: w.network_gateway.is_some(),
        has_waypoint: w.waypoint.is_some(),
        address_keys,
    }))
}

fn summarize_service(s: workload::Service) -> Result<Summary, ResourceError> {
    if s.hostname.is_empty() || s.namespace.is_empty() {
        return Err(ResourceError::MissingHostname);
    }
    let vips = s
        .addresses
        .iter()
        .map(|a| {
            Ok((
                a.network.clone(),
                network_address_ip("Service.addresses", a)?,
            ))
        })
        .collect::<Result<Vec<_>, ResourceError>>()?;
    let address_keys = vips.iter().map(|(n, ip)| address_key(n, ip)).collect();
    Ok(Summary::Service(ServiceSummary {
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        vips,
        address_keys,
        ports: s
            .ports
            .iter()
            .map(|p| (p.service_port, p.target_port))
            .collect(),
        has_waypoint: s.waypoint.is_some() || !s.weighted_waypoints.is_empty(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_are_network_slash_ip_as_displayed() {
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.100.255",
            "255.255.255.255",
            "1.20.199.200",
            "::1",
            "fd00:10::2:3",
            "::ffff:10.0.0.1",
        ];
        for ip in ips {
            let ip: IpAddr = ip.parse().unwrap();
            for network in ["", "network-1"] {
                assert_eq!(&*address_key(network, &ip), format!("{network}/{ip}"));
            }
        }
    }

    #[test]
    fn semantic_name_check_matches_the_formatted_name() {
        let svc = |namespace: &str, hostname: &str| {
            Summary::Service(ServiceSummary {
                namespace: namespace.into(),
                hostname: hostname.into(),
                ..Default::default()
            })
        };
        let cases = [
            (
                svc("default", "echo.default.svc"),
                "default/echo.default.svc",
            ),
            (
                svc("default", "echo.default.svc"),
                "default/echo.default.svcx",
            ),
            (
                svc("default", "echo.default.svc"),
                "defaul/techo.default.svc",
            ),
            (svc("a/b", "c"), "a/b/c"),
            (svc("a", "b/c"), "a/b/c"),
            (svc("ns", "h"), "ns-h"),
            (
                Summary::Authorization(AuthorizationSummary {
                    namespace: "ns".into(),
                    name: "allow".into(),
                }),
                "ns/allow",
            ),
            (
                Summary::Workload(WorkloadSummary {
                    uid: "c1//Pod/ns/a".into(),
                    ..Default::default()
                }),
                "c1//Pod/ns/a",
            ),
        ];
        for (summary, name) in cases {
            assert_eq!(
                summary.has_semantic_name(name),
                summary.semantic_name() == name,
                "{summary:?} vs {name}"
            );
        }
    }

    fn sample_workload() -> workload::Workload {
        workload::Workload {
            uid: "c1//Pod/default/echo-0".into(),
            name: "echo-0".into(),
            namespace: "default".into(),
            addresses: vec![vec![127, 1, 1, 1]],
            cluster_id: "c1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn workload_is_named_by_uid_and_versioned_by_content() {
        let r = Resource::workload(&sample_workload()).unwrap();
        assert_eq!(&*r.name, "c1//Pod/default/echo-0");
        assert_eq!(r.version, content_version(&r.body));
        assert!(is_content_version(&r.version, &r.body));
        assert!(!is_content_version(
            &format!("+{}", &r.version[1..]),
            &r.body
        ));
        assert!(!is_content_version("v1", &r.body));
        let w = r.as_workload().unwrap();
        assert_eq!(w.addresses, vec!["127.1.1.1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn rejects_bad_address_length() {
        let mut w = sample_workload();
        w.addresses = vec![vec![1, 2, 3]];
        let addr = workload::Address {
            r#type: Some(workload::address::Type::Workload(w)),
        };
        let err = summarize(ResourceType::Address, &addr.encode_to_vec()).unwrap_err();
        assert_eq!(
            err,
            ResourceError::BadAddressLength {
                field: "Workload.addresses",
                len: 3
            }
        );
    }

    #[test]
    fn rejects_malformed_and_empty_and_misnamed() {
        assert!(matches!(
            summarize(ResourceType::Address, &[0xff, 0xff, 0xff]),
            Err(ResourceError::Malformed { .. })
        ));
        assert_eq!(
            summarize(ResourceType::Address, &[]),
            Err(ResourceError::EmptyAddress)
        );
        let r = Resource::workload(&sample_workload()).unwrap();
        let err = Resource::from_wire(ResourceType::Address, "wrong", "v1", r.body).unwrap_err();
        assert_eq!(
            err,
            ResourceError::NameMismatch {
                expected: "c1//Pod/default/echo-0".into()
            }
        );
    }

    #[test]
    fn cidr_prefix_longer_than_the_address_is_rejected_and_full_ranges_pass() {
        let service = |address: Vec<u8>, length: Option<u32>| workload::Service {
            name: "wide".into(),
            namespace: "default".into(),
            hostname: "wide.default.svc.cluster.local".into(),
            addresses: vec![workload::NetworkAddress {
                network: "n1".into(),
                address,
                length,
            }],
            ..Default::default()
        };
        let err = Resource::service(&service(vec![10, 0, 0, 0], Some(33))).unwrap_err();
        assert_eq!(
            err,
            ResourceError::BadPrefixLength {
                field: "Service.addresses",
                length: 33,
                bits: 32
            }
        );
        let err = Resource::service(&service(vec![0xfd; 16], Some(129))).unwrap_err();
        assert!(matches!(
            err,
            ResourceError::BadPrefixLength { bits: 128, .. }
        ));
        for (address, length) in [(vec![10, 0, 0, 0], 8), (vec![10, 0, 0, 1], 32)] {
            let r = Resource::service(&service(address, Some(length))).unwrap();
            assert_eq!(r.as_service().unwrap().vips.len(), 1);
        }
        let r = Resource::service(&service(vec![0xfd; 16], Some(128))).unwrap();
        assert_eq!(r.as_service().unwrap().vips.len(), 1);
    }

    #[test]
    fn service_key_without_slash_is_rejected() {
        let mut w = sample_workload();
        w.services
            .insert("noslash".into(), workload::PortList::default());
        let err = Resource::workload(&w).unwrap_err();
        assert_eq!(err, ResourceError::BadServiceKey("noslash".into()));
    }
}
