//! Kubernetes side of peerd.
//!
//! Owns everything that talks the Kubernetes API: the client ([`client`]), the typed
//! fields peerd uses ([`types`]), the watches and peer-Gateway translation ([`gateways`]),
//! the Gateway conditions writer ([`status`]), the flat-network reconciler ([`flatsync`])
//! and its executor ([`apply`]), leader election ([`leader`]), TokenReview
//! ([`tokenreview`]), and the emulated API server used by tests and the sandbox
//! ([`emulator`], which must never be linked into a code path that serves a real cluster).

pub mod apply;
pub mod client;
pub mod emulator;
pub mod flatsync;
pub mod gateways;
pub mod leader;
pub mod status;
pub mod tokenreview;
pub mod types;

#[cfg(test)]
mod tests;
