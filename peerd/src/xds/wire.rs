//! Wire-level editing of encoded `istio.workload.Address` resources.
//!
//! prost drops fields its schema does not know, and istiod sends fields a ztunnel-derived
//! schema lacks, so peerd never re-encodes a received resource from prost structs. When
//! federation must change a resource (set `network`, `cluster_id`, `network_gateway`,
//! rename a service hostname or the service keys of a workload, drop VIPs), it edits the
//! protobuf encoding directly: only the named fields are rewritten, the length of the
//! enclosing `Address` is fixed, and every other field — known or not — keeps its bytes and
//! its position.
//!
//! Owns: the protobuf wire reader/writer ([`codec`]), field-list editing ([`message`]) and
//! the Address edits federation needs ([`address`]). Never panics on input: malformed bytes
//! are a [`WireError`]. Never decides policy; callers pass the values to write.
//!
//! ```ignore
//! let body = wire::edit_workload(&resource.body, |w| {
//!     w.set_cluster_id("c1").set_network("net1");
//!     w.set_network_gateway(&wire::gateway_address("net1", gw_ip, 15008));
//!     w.rewrite_service_keys(|key| rename(key))?;
//!     Ok(())
//! })?;
//! ```

pub mod address;
pub mod codec;
pub mod message;

#[cfg(test)]
mod tests;

pub use address::{
    AddressKind, ServiceEditor, WorkloadEditor, address_kind, edit_service, edit_workload,
    gateway_address, retarget_gateway, retarget_weighted_waypoint,
};
pub use codec::{Field, FieldReader, Value, WireError, WireType};
pub use message::{MessageEditor, Rewrite};
