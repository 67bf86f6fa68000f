//! Peers: the peer model built from `istio-remote` Gateways or config ([`model`]), how a
//! desired peer set differs from the running one ([`changes`]), the
//! five Gateway conditions ([`conditions`]), hysteresis ([`hysteresis`]), the observation
//! inputs and their real sources ([`observe`]), and the [`monitor`] task that computes
//! conditions every tick and publishes them (snapshot, watch events, metrics).
//!
//! Owns: everything between raw observations and the conditions a person reads. Must
//! never write Kubernetes objects (a later module writes the Gateway status from the
//! snapshot), never federate resources, and never probe anything itself.

pub mod changes;
pub mod conditions;
pub mod hysteresis;
pub mod model;
pub mod monitor;
pub mod observe;

#[cfg(test)]
mod kernel_probe_tests;
#[cfg(test)]
mod tests;

pub use changes::{PeerChange, peer_changes};
pub use conditions::{Condition, ConditionEvent, ConditionStatus, ConditionType, Conditions};
pub use hysteresis::{Hysteresis, HysteresisConfig, Observation};
pub use model::{InvalidPeer, LocalCluster, PeerModel, PeerSpec};
pub use monitor::{MonitorConfig, MonitorSources, PeerMonitor, PeerStatus};
pub use observe::{
    ACK_ALLOWANCE, AckObservation, AckSource, AdsClients, DownstreamAcks, ImportSource,
    KernelProbe, PeerVersions, ProbeSource, ProbeStats, ProbeTargets, RecordedPeerVersions,
    UpstreamSource, UserspaceProbe,
};
