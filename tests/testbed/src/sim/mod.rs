//! Simulators that `peerd-sandbox` and the tests run in place of a real cluster's
//! control plane.
//!
//! - [`population`]: a deterministic synthetic workload/service/policy population on
//!   loopback addresses.
//! - [`realism`]: the richer fields (waypoints, load balancing, CIDR VIPs, dry-run
//!   policies...) a configurable share of a population carries.
//! - [`churn`]: applies changes to it at a configured rate.
//! - [`istiod`]: a simulated istiod's data, TLS directory and bearer token; serving is
//!   delegated to the xDS server through [`istiod::SimIstiod::serve`].
//!
//! Nothing here ever uses an address outside 127.0.0.0/8 (or ::1).

pub mod churn;
pub mod istiod;
pub mod population;
pub mod realism;
