//! Kubernetes side of peerd.
//!
//! Owns everything that talks the Kubernetes API: the client ([`client`]), the typed
//! fields peerd uses ([`types`]), the watches and peer-Gateway translation ([`gateways`]),
//! the Gateway conditions writer ([`status`]), the flat-network reconciler ([`flatsync`])
//! and its executor ([`apply`]), leader election ([`leader`]), the Multi-Cluster Services API (ServiceExport watch,
//! ServiceImport writer: [`mcs`]), TokenReview
//! ([`tokenreview`]). The emulated API server the tests and the sandbox talk to is in the
//! `peerd-testbed` crate, never linked into the daemon.
//!
//! Wiring (for the daemon): `client::connect` → `gateways::start_watches` (peer Gateways,
//! global Services, local network) → [`peering`] turns each peer Gateway into a peer
//! (`gateways::resolve_peer`; an error → `status::invalid_spec_conditions`) and unions the
//! global services → `leader::LeaderElector::start` → one [`condition_sync::ConditionSync`]
//! pass per tick writing through `status::ConditionsWriter` from the peer model's
//! conditions, and one `apply::FlatSyncExecutor::run` fed a `watch` of `apply::SyncInput`
//! built by [`flat_input::InputBuilder`] (`flatsync::desired_objects` from each peer's
//! imported workloads and exported global services, with `PeerSyncState::fully_synced`
//! from `Origin::is_fully_synced`). Downstream ztunnel tokens:
//! `tokenreview::TokenReviewVerifier` as the xDS server's `TokenVerifier`.

pub mod apply;
pub mod client;
pub mod condition_sync;
pub mod flat_input;
pub mod flatsync;
pub mod gateways;
pub mod leader;
pub mod mcs;
pub mod own_writes;
pub mod peering;
pub mod status;
pub mod tokenreview;
pub mod types;
