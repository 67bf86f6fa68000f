//! SPIFFE identities in Istio's form, `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`:
//! parsing, printing, reading them from a certificate's URI SANs, and comparing trust
//! domains.
//!
//! This file only interprets names. It never verifies signatures or chains: a SPIFFE ID
//! read from a certificate means something only after `tls` has verified that
//! certificate against trusted roots.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

const SCHEME: &str = "spiffe://";

/// An Istio workload identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    NotSpiffe(String),
    #[error(
        "{0:?} is not an Istio SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    BadPath(String),
    #[error("{value:?} has an invalid {part}: {why}")]
    BadPart {
        value: String,
        part: &'static str,
        why: &'static str,
    },
    #[error("certificate cannot be parsed: {0}")]
    BadCertificate(String),
}

impl SpiffeId {
    /// Builds an identity, validating each part.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeError> {
        let id = SpiffeId {
            trust_domain: trust_domain.to_ascii_lowercase(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        id.validate()?;
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// True when this identity belongs to `trust_domain` (compared case-insensitively, as
    /// SPIFFE trust domains are DNS-like names).
    pub fn in_trust_domain(&self, trust_domain: &str) -> bool {
        same_trust_domain(&self.trust_domain, trust_domain)
    }

    fn validate(&self) -> Result<(), SpiffeError> {
        let bad = |part, why| SpiffeError::BadPart {
            value: self.to_string(),
            part,
            why,
        };
        validate_trust_domain(&self.trust_domain).map_err(|why| bad("trust domain", why))?;
        for (part, value) in [
            ("namespace", &self.namespace),
            ("service account", &self.service_account),
        ] {
            if value.is_empty() {
                return Err(bad(part, "it is empty"));
            }
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            {
                return Err(bad(
                    part,
                    "only letters, digits, '-', '.' and '_' are allowed",
                ));
            }
        }
        Ok(())
    }
}

fn validate_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("it is empty");
    }
    if td.len() > 255 {
        return Err("it is longer than 255 characters");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("only lowercase letters, digits, '-', '.' and '_' are allowed");
    }
    Ok(())
}

/// Compares two trust domains the way SPIFFE does (ASCII case-insensitive).
pub fn same_trust_domain(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeError;

    fn from_str(s: &str) -> Result<SpiffeId, SpiffeError> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeError::NotSpiffe(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                let id = SpiffeId {
                    trust_domain: td.to_ascii_lowercase(),
                    namespace: ns.to_string(),
                    service_account: sa.to_string(),
                };
                id.validate().map_err(|e| match e {
                    SpiffeError::BadPart { part, why, .. } => SpiffeError::BadPart {
                        value: s.to_string(),
                        part,
                        why,
                    },
                    other => other,
                })?;
                Ok(id)
            }
            _ => Err(SpiffeError::BadPath(s.to_string())),
        }
    }
}

/// How many bytes of a peer-supplied name (a presented SAN, a `clusterid` header) a
/// message or log keeps.
pub const MAX_NAME_BYTES: usize = 256;

/// A peer-supplied name as it may appear in a condition, log or error: control
/// characters escaped, cut at [`MAX_NAME_BYTES`] with a marker saying how long it was.
pub fn bounded(name: &str) -> String {
    let mut escaped = String::with_capacity(name.len().min(MAX_NAME_BYTES + 16));
    for c in name.chars() {
        if escaped.len() > MAX_NAME_BYTES {
            break;
        }
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    if escaped.len() <= MAX_NAME_BYTES {
        return escaped;
    }
    let mut cut = MAX_NAME_BYTES;
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &escaped[..cut], name.len())
}

/// All URI SANs of a DER certificate (SPIFFE or not), in certificate order.
pub fn uri_sans(cert_der: &[u8]) -> Result<Vec<String>, SpiffeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| SpiffeError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SpiffeError::BadCertificate(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The Istio SPIFFE identities named in a DER certificate's URI SANs. URI SANs that
/// are not Istio SPIFFE IDs are ignored.
pub fn identities_in_cert(cert_der: &[u8]) -> Result<Vec<SpiffeId>, SpiffeError> {
    Ok(uri_sans(cert_der)?
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_istio_form() {
        let id: SpiffeId = "spiffe://Cluster.Local/ns/istio-system/sa/istiod"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "istio-system");
        assert_eq!(id.service_account(), "istiod");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/istio-system/sa/istiod"
        );
        assert!(id.in_trust_domain("CLUSTER.local"));
        assert!(!id.in_trust_domain("other.local"));
    }

    #[test]
    fn rejects_bad_ids_with_reason() {
        let cases = [
            ("https://td/ns/a/sa/b", "must start with"),
            ("spiffe://td/ns/a", "expected spiffe://"),
            ("spiffe://td/ns/a/sa/b/extra", "expected spiffe://"),
            ("spiffe:///ns/a/sa/b", "trust domain"),
            ("spiffe://td/ns//sa/b", "namespace"),
            ("spiffe://td/ns/a/sa/", "service account"),
            ("spiffe://t d/ns/a/sa/b", "trust domain"),
        ];
        for (input, want) in cases {
            let err = input.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn print_then_parse_round_trips(
            td in "[a-z0-9][a-z0-9.-]{0,20}",
            ns in "[a-z0-9][a-z0-9-]{0,20}",
            sa in "[a-z0-9][a-z0-9._-]{0,20}",
        ) {
            let id = SpiffeId::new(&td, &ns, &sa).unwrap();
            let back: SpiffeId = id.to_string().parse().unwrap();
            proptest::prop_assert_eq!(back, id);
        }
    }

    #[test]
    fn new_validates() {
        assert!(SpiffeId::new("td", "ns", "sa").is_ok());
        assert!(SpiffeId::new("td", "ns", "s/a").is_err());
    }

    #[test]
    fn bounded_names_escape_control_characters_and_say_how_long_they_were() {
        assert_eq!(bounded("spiffe://td/ns/a/sa/b"), "spiffe://td/ns/a/sa/b");
        assert_eq!(bounded("a\nb"), "a\\nb");
        let long = format!("spiffe://td/ns/{}/sa/b", "x".repeat(100_000));
        let shown = bounded(&long);
        assert!(shown.len() < MAX_NAME_BYTES + 32, "{}", shown.len());
        assert!(
            shown.ends_with(&format!("… ({} bytes)", long.len())),
            "{shown}"
        );
        let wide = "é".repeat(MAX_NAME_BYTES);
        assert!(bounded(&wide).starts_with("é"), "cut on a char boundary");
    }

    #[test]
    fn garbage_certificate_is_an_error() {
        let err = identities_in_cert(b"not a certificate").unwrap_err();
        assert!(matches!(err, SpiffeError::BadCertificate(_)));
    }
}
