//! The wire editor (`xds::wire`). Input: a header (first byte = its length) from which
//! `arbitrary` builds a list of Workload or Service edits, then an encoded
//! `istio.workload.Address`. Oracle: the edit either fails, or
//! - the output decodes (prost) to exactly the decoded input with the same edit applied
//!   to the prost structs, and
//! - every field the edit does not touch keeps its bytes and order, unknown fields
//!   included, at the Address level and inside the edited Workload/Service;
//!
//! and an edit of the canonical (prost) encoding of a valid Address of the right kind
//! never fails.
#![no_main]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use peerd::proto::istio::workload::{
    Address, GatewayAddress, NamespacedHostname, Service, Workload, address, gateway_address,
};
use peerd::xds::wire::{self, Rewrite, WireError};
use peerd_fuzz::{header_and_tail, split_fields, untouched};
use prost::Message;

#[derive(Arbitrary, Debug, Clone)]
enum Gateway {
    Address {
        network: String,
        ip: IpAddr,
        port: u32,
    },
    Hostname {
        namespace: String,
        hostname: String,
        port: u32,
    },
}

impl Gateway {
    fn message(&self) -> GatewayAddress {
        match self {
            Gateway::Address { network, ip, port } => wire::gateway_address(network, *ip, *port),
            Gateway::Hostname {
                namespace,
                hostname,
                port,
            } => GatewayAddress {
                hbone_mtls_port: *port,
                destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                    namespace: namespace.clone(),
                    hostname: hostname.clone(),
                })),
            },
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum WorkloadOp {
    Network(String),
    ClusterId(String),
    NetworkGateway(Gateway),
    ClearNetworkGateway,
    Waypoint(Option<Gateway>),
    /// Keys become `prefix + key`; with `drop_odd`, keys of odd length are dropped
    /// (an injective rename, so the expected map does not depend on entry order).
    RenameServices {
        prefix: String,
        drop_odd: bool,
    },
}

#[derive(Arbitrary, Debug, Clone)]
enum ServiceOp {
    Hostname(String),
    Waypoint(Option<Gateway>),
    RemoveAddresses,
    RetargetWeightedWaypoints { namespace: String, hostname: String },
}

#[derive(Arbitrary, Debug, Clone)]
enum Edit {
    Workload(Vec<WorkloadOp>),
    Service(Vec<ServiceOp>),
}

fn rename(prefix: &str, drop_odd: bool, key: &str) -> Option<String> {
    (!(drop_odd && key.len() % 2 == 1)).then(|| format!("{prefix}{key}"))
}

/// The edit through `xds::wire`.
fn apply_wire(edit: &Edit, address: &[u8]) -> Result<bytes::Bytes, WireError> {
    match edit {
        Edit::Workload(ops) => wire::edit_workload(address, |w| {
            for op in ops {
                match op {
                    WorkloadOp::Network(n) => {
                        w.set_network(n);
                    }
                    WorkloadOp::ClusterId(c) => {
                        w.set_cluster_id(c);
                    }
                    WorkloadOp::NetworkGateway(g) => {
                        w.set_network_gateway(&g.message());
                    }
                    WorkloadOp::ClearNetworkGateway => {
                        w.clear_network_gateway();
                    }
                    WorkloadOp::Waypoint(g) => {
                        let encoded = g.as_ref().map(|g| g.message().encode_to_vec());
                        w.set_waypoint(encoded.as_deref());
                    }
                    WorkloadOp::RenameServices { prefix, drop_odd } => {
                        w.rewrite_service_keys(|key| rename(prefix, *drop_odd, key))?;
                    }
                }
            }
            Ok(())
        }),
        Edit::Service(ops) => wire::edit_service(address, |s| {
            for op in ops {
                match op {
                    ServiceOp::Hostname(h) => {
                        s.set_hostname(h);
                    }
                    ServiceOp::Waypoint(g) => {
                        let encoded = g.as_ref().map(|g| g.message().encode_to_vec());
                        s.set_waypoint(encoded.as_deref());
                    }
                    ServiceOp::RemoveAddresses => {
                        s.remove_addresses();
                    }
                    ServiceOp::RetargetWeightedWaypoints {
                        namespace,
                        hostname,
                    } => {
                        s.rewrite_weighted_waypoints(|entry| {
                            wire::retarget_weighted_waypoint(entry, namespace, hostname)
                                .map(Rewrite::Replace)
                        })?;
                    }
                }
            }
            Ok(())
        }),
    }
}

/// The same edit on prost structs: what the output must decode to.
fn apply_expected(edit: &Edit, address: &Address) -> Option<Address> {
    let mut out = address.clone();
    match (edit, out.r#type.as_mut()?) {
        (Edit::Workload(ops), address::Type::Workload(w)) => {
            for op in ops {
                apply_workload_op(op, w);
            }
        }
        (Edit::Service(ops), address::Type::Service(s)) => {
            for op in ops {
                apply_service_op(op, s);
            }
        }
        _ => return None,
    }
    Some(out)
}

fn apply_workload_op(op: &WorkloadOp, w: &mut Workload) {
    match op {
        WorkloadOp::Network(n) => w.network = n.clone(),
        WorkloadOp::ClusterId(c) => w.cluster_id = c.clone(),
        WorkloadOp::NetworkGateway(g) => w.network_gateway = Some(g.message()),
        WorkloadOp::ClearNetworkGateway => w.network_gateway = None,
        WorkloadOp::Waypoint(g) => w.waypoint = g.as_ref().map(Gateway::message),
        WorkloadOp::RenameServices { prefix, drop_odd } => {
            w.services = std::mem::take(&mut w.services)
                .into_iter()
                .filter_map(|(k, v)| rename(prefix, *drop_odd, &k).map(|k| (k, v)))
                .collect();
        }
    }
}

fn apply_service_op(op: &ServiceOp, s: &mut Service) {
    match op {
        ServiceOp::Hostname(h) => s.hostname = h.clone(),
        ServiceOp::Waypoint(g) => s.waypoint = g.as_ref().map(Gateway::message),
        ServiceOp::RemoveAddresses => s.addresses.clear(),
        ServiceOp::RetargetWeightedWaypoints {
            namespace,
            hostname,
        } => {
            for ww in &mut s.weighted_waypoints {
                let port = ww.destination.as_ref().map_or(0, |d| d.hbone_mtls_port);
                ww.destination = Some(GatewayAddress {
                    hbone_mtls_port: port,
                    destination: Some(gateway_address::Destination::Hostname(NamespacedHostname {
                        namespace: namespace.clone(),
                        hostname: hostname.clone(),
                    })),
                });
            }
        }
    }
}

/// Field numbers an edit may change inside the Workload/Service.
fn touched(edit: &Edit) -> Vec<u32> {
    match edit {
        Edit::Workload(ops) => ops
            .iter()
            .flat_map(|op| match op {
                WorkloadOp::Network(_) => vec![4],
                WorkloadOp::ClusterId(_) => vec![18],
                WorkloadOp::NetworkGateway(_) | WorkloadOp::ClearNetworkGateway => vec![19],
                WorkloadOp::Waypoint(_) => vec![8],
                WorkloadOp::RenameServices { .. } => vec![22],
            })
            .collect(),
        Edit::Service(ops) => ops
            .iter()
            .flat_map(|op| match op {
                ServiceOp::Hostname(_) => vec![3],
                ServiceOp::Waypoint(_) => vec![7],
                ServiceOp::RemoveAddresses => vec![4],
                ServiceOp::RetargetWeightedWaypoints { .. } => vec![13],
            })
            .collect(),
    }
}

/// The payload a decoder merges for oneof member `own` (1 or 2) of an Address: the
/// concatenation of its occurrences after the last occurrence of the other member.
fn merged_member(address: &[u8], own: u32) -> Option<Vec<u8>> {
    let mut merged = Vec::new();
    for field in split_fields(address)? {
        if field.number == own {
            let mut pos = 0;
            let payload = field.bytes;
            // Skip the tag and the length prefix.
            for _ in 0..2 {
                while payload.get(pos)? & 0x80 != 0 {
                    pos += 1;
                }
                pos += 1;
            }
            merged.extend_from_slice(&payload[pos..]);
        } else if field.number == 1 || field.number == 2 {
            merged.clear();
        }
    }
    Some(merged)
}

fuzz_target!(|data: &[u8]| {
    let (header, input) = header_and_tail(data);
    let Ok(edit) = Edit::arbitrary_take_rest(Unstructured::new(header)) else {
        return;
    };
    let result = apply_wire(&edit, input);
    let decoded = Address::decode(input).ok();

    // A valid Address of the right kind, canonically encoded, is always editable.
    if let Some(valid) = &decoded {
        if let Some(expected) = apply_expected(&edit, valid) {
            let canonical = valid.encode_to_vec();
            let out = apply_wire(&edit, &canonical)
                .unwrap_or_else(|e| panic!("edit of a canonical valid Address failed: {e}"));
            assert_eq!(
                Address::decode(out.as_ref()).ok().as_ref(),
                Some(&expected),
                "canonical input: decoded output is not the expected edit"
            );
        }
    }

    let Ok(output) = result else {
        return;
    };
    let own = match edit {
        Edit::Workload(_) => 1,
        Edit::Service(_) => 2,
    };
    // Address level: every field but the oneof keeps its bytes and order.
    let (Some(in_fields), Some(out_fields)) = (split_fields(input), split_fields(&output)) else {
        panic!("the editor accepted or produced a malformed Address");
    };
    assert_eq!(
        untouched(&in_fields, &[1, 2]),
        untouched(&out_fields, &[1, 2]),
        "Address fields other than the oneof changed"
    );
    assert_eq!(
        out_fields
            .iter()
            .filter(|f| f.number == 1 || f.number == 2)
            .count(),
        1,
        "the output holds exactly one oneof member"
    );
    // Inside the member: untouched fields keep their bytes and order.
    let before = merged_member(input, own).expect("split above");
    let after = merged_member(&output, own).expect("split above");
    let (Some(before_fields), Some(after_fields)) = (split_fields(&before), split_fields(&after))
    else {
        panic!("the editor accepted or produced a malformed member");
    };
    let touched = touched(&edit);
    assert_eq!(
        untouched(&before_fields, &touched),
        untouched(&after_fields, &touched),
        "fields the edit does not touch changed"
    );
    // Decoded: exactly the expected edit.
    if let Some(valid) = &decoded {
        let expected = apply_expected(&edit, valid).expect("the editor accepted this variant");
        let got = Address::decode(output.as_ref())
            .unwrap_or_else(|e| panic!("edited output of a valid Address does not decode: {e}"));
        assert_eq!(got, expected, "decoded output is not the expected edit");
    }
});
