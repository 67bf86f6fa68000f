//! peerd links Istio ambient meshes across clusters: it federates WDS/WADS between the
//! local istiod and peered clusters and serves the merged view to the node's ztunnel.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of modules.

pub mod admin;
pub mod app;
pub mod bounded;
pub mod budget;
pub mod cli;
pub mod config;
pub mod debug;
pub mod federation;
pub mod half_empty_map;
pub mod identity;
pub mod kube;
pub mod link;
pub mod measure;
pub mod memory;
pub mod peers;
pub mod peerstate;
pub mod probe;
pub mod proto;
pub mod runtime;
pub mod store;
pub mod telemetry;
pub mod version;
pub mod view;
pub mod xds;
