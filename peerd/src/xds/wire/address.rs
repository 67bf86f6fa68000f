//! The federation edits of an encoded `istio.workload.Address`: open its `workload`
//! (field 1) or `service` (field 2), change named fields, and write the Address back with
//! the nested length fixed. Field numbers: docs/xds-wire.md §2.
//!
//! Owns: which field numbers the federation edits touch and how each is encoded. Never
//! decodes the whole Address into prost structs (that would drop unknown fields), never
//! decides policy (which networks, which names): callers pass values in.

use std::borrow::Cow;
use std::net::IpAddr;

use bytes::Bytes;
use prost::Message;

use super::codec::WireError;
use super::message::{MessageEditor, Rewrite};
use crate::proto::istio::workload::{GatewayAddress, NetworkAddress, gateway_address};

/// `Address.workload` / `Address.service` (oneof `type`).
const ADDRESS_WORKLOAD: u32 = 1;
const ADDRESS_SERVICE: u32 = 2;

const WORKLOAD_NETWORK: u32 = 4;
const WORKLOAD_WAYPOINT: u32 = 8;
const WORKLOAD_CLUSTER_ID: u32 = 18;
const WORKLOAD_NETWORK_GATEWAY: u32 = 19;
const WORKLOAD_SERVICES: u32 = 22;
/// Key field of a `map<string, PortList>` entry.
const MAP_ENTRY_KEY: u32 = 1;

const SERVICE_HOSTNAME: u32 = 3;
const SERVICE_ADDRESSES: u32 = 4;
const SERVICE_WAYPOINT: u32 = 7;
const SERVICE_WEIGHTED_WAYPOINTS: u32 = 13;

/// `GatewayAddress.hostname` / `.address` (oneof `destination`).
const GATEWAY_HOSTNAME: u32 = 1;
const GATEWAY_ADDRESS: u32 = 2;
/// `WeightedWaypoint.destination`.
const WEIGHTED_WAYPOINT_DESTINATION: u32 = 1;
/// `NamespacedHostname.namespace` / `.hostname`.
const NAMESPACED_NAMESPACE: u32 = 1;
const NAMESPACED_HOSTNAME: u32 = 2;

/// A `GatewayAddress` pointing at an east-west gateway IP on `network`, tunnelling HBONE
/// (mTLS) to `hbone_mtls_port` (15008 for Istio gateways).
pub fn gateway_address(network: &str, ip: IpAddr, hbone_mtls_port: u32) -> GatewayAddress {
    let address = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    GatewayAddress {
        hbone_mtls_port,
        destination: Some(gateway_address::Destination::Address(NetworkAddress {
            network: network.to_owned(),
            address,
            length: None,
        })),
    }
}

/// Points an encoded `GatewayAddress` at the service `namespace/hostname`: its
/// `destination` (a hostname or an address) becomes that `NamespacedHostname`, while
/// `hbone_mtls_port` and any unknown field keep their bytes and order.
pub fn retarget_gateway(
    gateway: &[u8],
    namespace: &str,
    hostname: &str,
) -> Result<Vec<u8>, WireError> {
    let mut fields = MessageEditor::parse(gateway).map_err(|e| e.within("GatewayAddress"))?;
    let mut target = MessageEditor::default();
    target.set_string(NAMESPACED_NAMESPACE, namespace);
    target.set_string(NAMESPACED_HOSTNAME, hostname);
    // The oneof is written once, where its first member was (hostname or address).
    let first = fields
        .numbers()
        .position(|n| n == GATEWAY_HOSTNAME || n == GATEWAY_ADDRESS);
    fields.remove(GATEWAY_ADDRESS);
    fields.remove(GATEWAY_HOSTNAME);
    fields.insert_len(first, GATEWAY_HOSTNAME, &target.encode());
    Ok(fields.encode())
}

/// [`retarget_gateway`] applied to the `destination` of an encoded `WeightedWaypoint`;
/// its `weight` and unknown fields are kept.
pub fn retarget_weighted_waypoint(
    entry: &[u8],
    namespace: &str,
    hostname: &str,
) -> Result<Vec<u8>, WireError> {
    let mut fields = MessageEditor::parse(entry).map_err(|e| e.within("WeightedWaypoint"))?;
    let destination: Vec<u8> = fields.len_payloads(WEIGHTED_WAYPOINT_DESTINATION)?.concat();
    let retargeted = retarget_gateway(&destination, namespace, hostname)?;
    fields.replace_len(WEIGHTED_WAYPOINT_DESTINATION, Some(&retargeted));
    Ok(fields.encode())
}

/// Edits to the `Workload` inside an Address. Obtained from [`edit_workload`].
pub struct WorkloadEditor<'a> {
    fields: MessageEditor<'a>,
}

impl<'a> WorkloadEditor<'a> {
    /// `Workload.network` (4).
    pub fn set_network(&mut self, network: &str) -> &mut Self {
        self.fields.set_string(WORKLOAD_NETWORK, network);
        self
    }

    /// `Workload.cluster_id` (18).
    pub fn set_cluster_id(&mut self, cluster_id: &str) -> &mut Self {
        self.fields.set_string(WORKLOAD_CLUSTER_ID, cluster_id);
        self
    }

    /// `Workload.network_gateway` (19), replacing any previous gateway.
    pub fn set_network_gateway(&mut self, gateway: &GatewayAddress) -> &mut Self {
        self.fields
            .set_message(WORKLOAD_NETWORK_GATEWAY, &gateway.encode_to_vec());
        self
    }

    /// Removes `Workload.network_gateway` (flat networks: pod IPs are reachable directly).
    pub fn clear_network_gateway(&mut self) -> &mut Self {
        self.fields.remove(WORKLOAD_NETWORK_GATEWAY);
        self
    }

    /// The encoded `Workload.waypoint` (8), if set (repeated occurrences merged, as a
    /// decoder does).
    pub fn waypoint(&self) -> Result<Option<Vec<u8>>, WireError> {
        singular_message(&self.fields, WORKLOAD_WAYPOINT)
    }

    /// Replaces `Workload.waypoint` (8) with the encoded `GatewayAddress` `gateway`, or
    /// removes it (`None`).
    pub fn set_waypoint(&mut self, gateway: Option<&[u8]>) -> &mut Self {
        self.fields.replace_len(WORKLOAD_WAYPOINT, gateway);
        self
    }

    /// Rewrites the keys (`namespace/hostname`) of `Workload.services` (22). `rename`
    /// returns the new key, or `None` to drop that entry. Port lists and any unknown
    /// fields inside an entry are kept. If two entries end up with the same key the later
    /// one wins on decode, as for any protobuf map.
    pub fn rewrite_service_keys(
        &mut self,
        mut rename: impl FnMut(&str) -> Option<String>,
    ) -> Result<&mut Self, WireError> {
        self.fields
            .rewrite_len_fields(WORKLOAD_SERVICES, |entry| {
                let mut entry_fields = MessageEditor::parse(entry)?;
                let key = entry_fields.last_string(MAP_ENTRY_KEY)?;
                Ok(match rename(&key) {
                    None => Rewrite::Drop,
                    Some(new_key) if new_key == key => Rewrite::Keep,
                    Some(new_key) => {
                        entry_fields.set_string(MAP_ENTRY_KEY, &new_key);
                        Rewrite::Replace(entry_fields.encode())
                    }
                })
            })
            .map_err(|e| e.within("Workload.services entry"))?;
        Ok(self)
    }

    /// The underlying field list, for edits not covered above.
    pub fn fields(&mut self) -> &mut MessageEditor<'a> {
        &mut self.fields
    }
}

/// Edits to the `Service` inside an Address. Obtained from [`edit_service`].
pub struct ServiceEditor<'a> {
    fields: MessageEditor<'a>,
}

impl<'a> ServiceEditor<'a> {
    /// `Service.hostname` (3), e.g. the exported `<svc>.<ns>.mesh.internal`.
    pub fn set_hostname(&mut self, hostname: &str) -> &mut Self {
        self.fields.set_string(SERVICE_HOSTNAME, hostname);
        self
    }

    /// The encoded `Service.waypoint` (7), if set.
    pub fn waypoint(&self) -> Result<Option<Vec<u8>>, WireError> {
        singular_message(&self.fields, SERVICE_WAYPOINT)
    }

    /// Replaces `Service.waypoint` (7) with `gateway`, or removes it (`None`).
    pub fn set_waypoint(&mut self, gateway: Option<&[u8]>) -> &mut Self {
        self.fields.replace_len(SERVICE_WAYPOINT, gateway);
        self
    }

    /// Visits every `Service.weighted_waypoints` (13) entry (an encoded
    /// `WeightedWaypoint`) and keeps, drops or replaces it in place.
    pub fn rewrite_weighted_waypoints(
        &mut self,
        rewrite: impl FnMut(&[u8]) -> Result<Rewrite, WireError>,
    ) -> Result<&mut Self, WireError> {
        self.fields
            .rewrite_len_fields(SERVICE_WEIGHTED_WAYPOINTS, rewrite)
            .map_err(|e| e.within("Service.weighted_waypoints"))?;
        Ok(self)
    }

    /// Removes every `Service.addresses` (4) entry (the VIPs).
    pub fn remove_addresses(&mut self) -> &mut Self {
        self.fields.remove(SERVICE_ADDRESSES);
        self
    }

    /// The underlying field list, for edits not covered above.
    pub fn fields(&mut self) -> &mut MessageEditor<'a> {
        &mut self.fields
    }
}

/// A singular message field as a decoder sees it: every occurrence merged (their
/// payloads concatenated), `None` when absent.
fn singular_message(fields: &MessageEditor<'_>, number: u32) -> Result<Option<Vec<u8>>, WireError> {
    let payloads = fields.len_payloads(number)?;
    Ok((!payloads.is_empty()).then(|| payloads.concat()))
}

/// Which member of the `Address.type` oneof an encoded Address holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Workload,
    Service,
}

impl AddressKind {
    fn field(self) -> u32 {
        match self {
            AddressKind::Workload => ADDRESS_WORKLOAD,
            AddressKind::Service => ADDRESS_SERVICE,
        }
    }

    fn other(self) -> AddressKind {
        match self {
            AddressKind::Workload => AddressKind::Service,
            AddressKind::Service => AddressKind::Workload,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AddressKind::Workload => "workload",
            AddressKind::Service => "service",
        }
    }
}

/// Which oneof member `address` holds (the last one on the wire wins, as when decoding).
pub fn address_kind(address: &[u8]) -> Result<AddressKind, WireError> {
    let fields = MessageEditor::parse(address)?;
    effective_kind(&fields)
}

fn effective_kind(fields: &MessageEditor<'_>) -> Result<AddressKind, WireError> {
    match fields
        .numbers()
        .filter(|n| *n == ADDRESS_WORKLOAD || *n == ADDRESS_SERVICE)
        .last()
    {
        Some(ADDRESS_WORKLOAD) => Ok(AddressKind::Workload),
        Some(_) => Ok(AddressKind::Service),
        None => Err(WireError::EmptyAddress),
    }
}

/// Applies `edit` to the Workload inside the encoded Address `address` and returns the
/// new Address. Unknown fields, at either level, keep their bytes and order.
pub fn edit_workload(
    address: &[u8],
    edit: impl FnOnce(&mut WorkloadEditor<'_>) -> Result<(), WireError>,
) -> Result<Bytes, WireError> {
    edit_nested(address, AddressKind::Workload, |payload| {
        let mut editor = WorkloadEditor {
            fields: MessageEditor::parse(payload).map_err(|e| e.within("Address.workload"))?,
        };
        edit(&mut editor)?;
        Ok(editor.fields.encode())
    })
}

/// Applies `edit` to the Service inside the encoded Address `address` and returns the new
/// Address. Unknown fields, at either level, keep their bytes and order.
pub fn edit_service(
    address: &[u8],
    edit: impl FnOnce(&mut ServiceEditor<'_>) -> Result<(), WireError>,
) -> Result<Bytes, WireError> {
    edit_nested(address, AddressKind::Service, |payload| {
        let mut editor = ServiceEditor {
            fields: MessageEditor::parse(payload).map_err(|e| e.within("Address.service"))?,
        };
        edit(&mut editor)?;
        Ok(editor.fields.encode())
    })
}

/// Opens the `kind` member of an Address, lets `edit` produce its new encoding, and writes
/// it back once, in place of the first occurrence of that member.
///
/// A oneof member may appear several times on the wire: occurrences of the same member are
/// merged (their payloads concatenated, which is protobuf's merge), and any occurrence of
/// the other member is overridden by a later one. The edit sees that merged payload, and
/// the output holds exactly one oneof field, so it decodes to what the input decoded to,
/// plus the edit.
fn edit_nested(
    address: &[u8],
    kind: AddressKind,
    edit: impl FnOnce(&[u8]) -> Result<Vec<u8>, WireError>,
) -> Result<Bytes, WireError> {
    let mut fields = MessageEditor::parse(address).map_err(|e| e.within("Address"))?;
    let found = effective_kind(&fields)?;
    if found != kind {
        return Err(WireError::WrongVariant {
            expected: kind.name(),
            found: found.name(),
        });
    }
    let payload = merged_payload(&fields, kind).map_err(|e| e.within("Address"))?;
    let edited = edit(&payload)?;
    // Overridden occurrences of the other member go; ours is written once, where its
    // first occurrence was.
    fields.remove(kind.other().field());
    fields.set_message(kind.field(), &edited);
    Ok(Bytes::from(fields.encode()))
}

/// The payload a decoder would merge for `kind`: the concatenation of its occurrences after
/// the last occurrence of the other member.
fn merged_payload<'b>(
    fields: &'b MessageEditor<'_>,
    kind: AddressKind,
) -> Result<Cow<'b, [u8]>, WireError> {
    let own = kind.field();
    let mut since_other: Vec<&[u8]> = Vec::new();
    let mut own_payloads = fields.len_payloads(own)?.into_iter();
    for number in fields.numbers() {
        if number == own {
            if let Some(p) = own_payloads.next() {
                since_other.push(p);
            }
        } else if number == ADDRESS_WORKLOAD || number == ADDRESS_SERVICE {
            since_other.clear();
        }
    }
    Ok(match since_other.as_slice() {
        [single] => Cow::Borrowed(*single),
        many => Cow::Owned(many.concat()),
    })
}
