//! xDS: the wire types, resource validation, wire-level editing, the delta ADS client
//! (to istiod and peers) and the delta ADS server (to ztunnel and peers).

pub mod any;
pub mod auth;
pub mod client;
pub mod codec;
pub mod intern;
pub mod offload;
pub mod received;
pub mod resource;
pub mod response;
pub mod server;
pub mod stats;
pub mod transport;
pub mod types;
pub mod wire;

pub use client::{AdsClient, ClientOptions, FailureKind, ResourceFilter, TokenSource};
pub use resource::{Resource, ResourceError, Summary};
pub use server::{AdsServer, ServerOptions, Subscribers};
pub use types::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, PerType, ResourceType};
