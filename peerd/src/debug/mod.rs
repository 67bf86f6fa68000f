//! The operator interface of a running peerd: the `peerd.debug.v1.Debug` gRPC service
//! (with gRPC health and reflection) on the debug listener, and its command-line clients
//! `peerd status`, `peerd check` and `peerd debug`.
//!
//! Peers plug in through [`source::PeerSource`]. Nothing here changes daemon state.

pub mod check;
pub mod check_kube;
pub mod client;
pub mod command;
pub mod convert;
pub mod dump;
pub mod event_log;
pub mod listing;
pub mod peers;
pub mod redact;
pub mod resources;
pub mod server;
pub mod source;
pub mod status;

pub use server::{DebugService, DebugState, serve};
pub use source::{PeerEvent, PeerInfo, PeerSource, UpstreamPeerSource};
