//! Identity: certificates, TLS and SPIFFE names for every TLS endpoint of peerd.
//!
//! - [`tls`]: loading PEM files (Istio's file names), rustls server/client configs, peer
//!   identity checks.
//! - [`spiffe`]: `spiffe://td/ns/x/sa/y` names and trust domains.
//! - [`reload`]: our certificate reloaded from files without dropping connections.
//! - [`classify`]: connect/TLS failures → condition reasons (`TLSError`,
//!   `IdentityMismatch`, `ConnectionRefused`, `ConnectTimeout`).
//!
//! This module never logs key material, never builds a TLS client that skips
//! verification, and never issues certificates (the test CA is in `peerd-testbed`).

pub mod classify;
pub mod reload;
pub mod spiffe;
pub mod tls;
