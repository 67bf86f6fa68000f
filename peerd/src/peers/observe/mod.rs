//! The observation inputs of the peer monitor, as small traits with plain-struct answers,
//! and their real implementations:
//! - [`UpstreamSource`]: the xDS client of each peer (connected, classified last failure)
//!   — real: [`AdsClients`] over `AdsClient::stats()` / `failure_handle()`;
//! - [`ImportSource`]: the store's sync flags and held resources of the peer's origin,
//!   and the peer's pod IPs for flat probing — real: [`Store`](crate::store::Store);
//! - [`AckSource`]: whether local downstreams (ztunnel) ACKed the merged-view versions
//!   that carry the peer's changes, allowing each [`ACK_ALLOWANCE`], with the NACK text — real: [`DownstreamAcks`] over
//!   `Subscribers`, told the versions by a [`PeerVersions`] (federation records them in
//!   [`RecordedPeerVersions`]);
//! - [`ProbeSource`]: HBONE 15008 (and xDS 15012) reachability — real: [`UserspaceProbe`]
//!   (the active prober's own connects) and [`KernelProbe`] (the eBPF aggregator's
//!   per-destination counters for the gateway address or the flat pod IPs).
//!
//! Owns: reading those sources and condensing them per peer. Must never decide
//! conditions (that is `monitor` + `hysteresis`), never write to any source, and never
//! probe anything itself (the prober owns connects and its target guard).
//!
//! Layout: one file per source (`upstream`, `store_sync`, `downstream`, and for probes the
//! shared vocabulary in `probe` with its two modes `userspace_probe` and `kernel_probe`);
//! every public item is re-exported here.

mod downstream;
mod kernel_probe;
mod probe;
mod store_sync;
mod upstream;
mod userspace_probe;

pub use downstream::{
    ACK_ALLOWANCE, AckObservation, AckSource, DownstreamAcks, PeerVersions, RecordedPeerVersions,
};
pub use kernel_probe::KernelProbe;
pub use probe::{
    PortVerdict, ProbeObservation, ProbeSource, ProbeStats, ProbeTargets, Reachability,
};
pub use store_sync::{ImportSource, SyncObservation};
pub use upstream::{AdsClients, UpstreamFailure, UpstreamObservation, UpstreamSource};
pub use userspace_probe::UserspaceProbe;

use std::sync::{Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
