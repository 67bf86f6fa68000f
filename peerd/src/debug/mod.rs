//! The operator interface of a running peerd: the `peerd.debug.v1.Debug` gRPC service
//! (with gRPC health and reflection) on the debug listener, and its command-line clients
//! `peerd status` and `peerd check`.
//!
//! Peers plug in through [`source::PeerSource`]. Nothing here changes daemon state.

pub mod check;
pub mod check_kube;
pub mod client;
pub mod convert;
pub mod peers;
pub mod server;
pub mod source;
pub mod status;

pub use server::{DebugService, DebugState, serve};
pub use source::{PeerEvent, PeerInfo, PeerSource, UpstreamPeerSource};
