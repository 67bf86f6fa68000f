//! Identity: certificates, TLS and SPIFFE names for every TLS endpoint of peerd.
//!
//! - [`pki`]: a throwaway PKI (root → per-cluster intermediates → SPIFFE leaves) in
//!   Istio's file layout, for tests, the simulated istiod and the sandbox.
//! - [`tls`]: loading PEM files, rustls server/client configs, peer identity checks.
//! - [`spiffe`]: `spiffe://td/ns/x/sa/y` names and trust domains.
//! - [`reload`]: our certificate reloaded from files without dropping connections.
//! - [`classify`]: connect/TLS failures → condition reasons (`TLSError`,
//!   `IdentityMismatch`, `ConnectionRefused`, `ConnectTimeout`).
//!
//! This module never logs key material and never builds a TLS client that skips
//! verification.

pub mod classify;
pub mod pki;
pub mod reload;
pub mod spiffe;
pub mod tls;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap
mod tests;
