//! Tests of wire-level editing: hand-written malformed inputs, and properties over random
//! prost-encoded Workloads/Services carrying random unknown fields at both levels.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap (helper brief)

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use prost::Message;

use super::codec::{FieldReader, WireError, put_tag, put_varint};
use super::*;
use crate::proto::istio::workload::{
    self as pb, Address, GatewayAddress, NamespacedHostname, NetworkAddress, Port, PortList,
    Service, Workload, address, gateway_address,
};

// ---------------------------------------------------------------------------------------
// Helpers

fn address_of_workload(w: &Workload) -> Vec<u8> {
    Address {
        r#type: Some(address::Type::Workload(w.clone())),
    }
    .encode_to_vec()
}

fn decode_workload(body: &[u8]) -> Workload {
    match Address::decode(body).unwrap().r#type {
        Some(address::Type::Workload(w)) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

fn decode_service(body: &[u8]) -> Service {
    match Address::decode(body).unwrap().r#type {
        Some(address::Type::Service(s)) => s,
        other => panic!("not a service: {other:?}"),
    }
}

/// Raw bytes of every field of `msg`, in order.
fn raw_fields(msg: &[u8]) -> Vec<(u32, Vec<u8>)> {
    FieldReader::new(msg)
        .map(|f| f.unwrap())
        .map(|f| (f.number, f.raw.to_vec()))
        .collect()
}

fn is_unknown(number: u32) -> bool {
    (100..=200).contains(&number)
}

/// The payload of the single field `number` in `msg`.
fn only_len_payload(msg: &[u8], number: u32) -> Vec<u8> {
    let payloads: Vec<Vec<u8>> = FieldReader::new(msg)
        .map(|f| f.unwrap())
        .filter(|f| f.number == number)
        .map(|f| f.len_payload().unwrap().to_vec())
        .collect();
    assert_eq!(payloads.len(), 1, "field {number} must appear exactly once");
    payloads.into_iter().next().unwrap()
}

/// Inserts `unknowns` (complete encoded fields) between the fields of `msg`: each at slot
/// `seed % (n + 1)`, keeping the unknowns' own order.
fn insert_unknowns(msg: &[u8], unknowns: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let fields = raw_fields(msg);
    let mut slots: Vec<usize> = unknowns
        .iter()
        .map(|(seed, _)| seed % (fields.len() + 1))
        .collect();
    slots.sort_unstable();
    let mut out = Vec::new();
    let mut next_unknown = 0;
    for slot in 0..=fields.len() {
        while next_unknown < slots.len() && slots[next_unknown] == slot {
            out.extend_from_slice(&unknowns[next_unknown].1);
            next_unknown += 1;
        }
        if let Some((_, raw)) = fields.get(slot) {
            out.extend_from_slice(raw);
        }
    }
    out
}

fn concat_unknowns(unknowns: &[(usize, Vec<u8>)]) -> Vec<u8> {
    unknowns.iter().flat_map(|(_, raw)| raw.clone()).collect()
}

fn unknown_bytes_in(msg: &[u8]) -> Vec<u8> {
    raw_fields(msg)
        .into_iter()
        .filter(|(n, _)| is_unknown(*n))
        .flat_map(|(_, raw)| raw)
        .collect()
}

/// `fields` without the numbers in `skip`.
fn without(fields: Vec<(u32, Vec<u8>)>, skip: &[u32]) -> Vec<(u32, Vec<u8>)> {
    fields
        .into_iter()
        .filter(|(n, _)| !skip.contains(n))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Strategies

fn arb_name() -> impl Strategy<Value = String> {
    "[a-z0-9.-]{0,10}"
}

fn arb_ip_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 4), vec(any::<u8>(), 16)]
}

fn arb_network_address() -> impl Strategy<Value = NetworkAddress> {
    (arb_name(), arb_ip_bytes(), proptest::option::of(0u32..129)).prop_map(
        |(network, address, length)| NetworkAddress {
            network,
            address,
            length,
        },
    )
}

fn arb_gateway() -> impl Strategy<Value = GatewayAddress> {
    let destination = prop_oneof![
        arb_network_address().prop_map(gateway_address::Destination::Address),
        (arb_name(), arb_name()).prop_map(|(namespace, hostname)| {
            gateway_address::Destination::Hostname(NamespacedHostname {
                namespace,
                hostname,
            })
        }),
    ];
    (proptest::option::of(destination), any::<u32>()).prop_map(|(destination, hbone_mtls_port)| {
        GatewayAddress {
            hbone_mtls_port,
            destination,
        }
    })
}

fn arb_port() -> impl Strategy<Value = Port> {
    (any::<u16>(), any::<u16>(), 0i32..6).prop_map(|(s, t, app_protocol)| Port {
        service_port: u32::from(s),
        target_port: u32::from(t),
        app_protocol,
    })
}

fn arb_service_key() -> impl Strategy<Value = String> {
    "[a-z]{1,4}/[a-z]{1,8}(\\.[a-z]{1,5}){0,2}"
}

fn arb_workload() -> impl Strategy<Value = Workload> {
    let identity = (
        arb_name(),
        arb_name(),
        vec(arb_ip_bytes(), 0..3),
        arb_name(),
        arb_name(),
        arb_name(),
    );
    let placement = (
        arb_name(),
        arb_name(),
        proptest::option::of(arb_gateway()),
        proptest::option::of(arb_gateway()),
    );
    let extra = (
        btree_map(
            arb_service_key(),
            vec(arb_port(), 0..3).prop_map(|ports| PortList { ports }),
            0..4,
        ),
        vec(arb_name(), 0..3),
        0i32..3,
        any::<bool>(),
        proptest::option::of(any::<u32>()),
        arb_name(),
    );
    (identity, placement, extra).prop_map(
        |(
            (name, namespace, addresses, network, trust_domain, uid),
            (cluster_id, node, waypoint, network_gateway),
            (services, authorization_policies, tunnel_protocol, native_tunnel, capacity, hostname),
        )| Workload {
            name,
            namespace,
            addresses,
            network,
            trust_domain,
            uid,
            cluster_id,
            node,
            waypoint,
            network_gateway,
            services,
            authorization_policies,
            tunnel_protocol,
            native_tunnel,
            capacity,
            hostname,
            ..Default::default()
        },
    )
}

fn arb_service() -> impl Strategy<Value = Service> {
    (
        (arb_name(), arb_name(), arb_name()),
        vec(arb_network_address(), 0..4),
        vec(arb_port(), 0..4),
        vec(arb_name(), 0..3),
        proptest::option::of(arb_gateway()),
        any::<bool>(),
    )
        .prop_map(
            |(
                (name, namespace, hostname),
                addresses,
                ports,
                subject_alt_names,
                waypoint,
                canonical,
            )| {
                Service {
                    name,
                    namespace,
                    hostname,
                    addresses,
                    ports,
                    subject_alt_names,
                    waypoint,
                    canonical,
                    ..Default::default()
                }
            },
        )
}

/// One complete encoded field with a number in 100..=200, of any wire type (groups too).
fn arb_unknown_field() -> impl Strategy<Value = Vec<u8>> {
    (100u32..=200, 0u8..5, any::<u64>(), vec(any::<u8>(), 0..12)).prop_map(
        |(number, kind, n, data)| {
            let mut out = Vec::new();
            match kind {
                0 => {
                    put_tag(&mut out, number, WireType::Varint);
                    put_varint(&mut out, n);
                }
                1 => {
                    put_tag(&mut out, number, WireType::Fixed64);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                2 => super::codec::put_len_field(&mut out, number, &data),
                3 => {
                    put_tag(&mut out, number, WireType::Fixed32);
                    out.extend_from_slice(&(n as u32).to_le_bytes());
                }
                _ => {
                    // A group holding one varint field.
                    put_tag(&mut out, number, WireType::StartGroup);
                    put_tag(&mut out, 1, WireType::Varint);
                    put_varint(&mut out, n);
                    put_tag(&mut out, number, WireType::EndGroup);
                }
            }
            out
        },
    )
}

fn arb_unknowns() -> impl Strategy<Value = Vec<(usize, Vec<u8>)>> {
    vec((any::<usize>(), arb_unknown_field()), 0..5)
}

#[derive(Debug, Clone)]
enum WorkloadOp {
    Network(String),
    ClusterId(String),
    Gateway(GatewayAddress),
    ClearGateway,
    RenameServices,
}

impl WorkloadOp {
    fn field(&self) -> u32 {
        match self {
            WorkloadOp::Network(_) => 4,
            WorkloadOp::ClusterId(_) => 18,
            WorkloadOp::Gateway(_) | WorkloadOp::ClearGateway => 19,
            WorkloadOp::RenameServices => 22,
        }
    }
}

fn arb_workload_op() -> impl Strategy<Value = WorkloadOp> {
    prop_oneof![
        arb_name().prop_map(WorkloadOp::Network),
        arb_name().prop_map(WorkloadOp::ClusterId),
        arb_gateway().prop_map(WorkloadOp::Gateway),
        Just(WorkloadOp::ClearGateway),
        Just(WorkloadOp::RenameServices),
    ]
}

/// Export-style rename: drops hosts starting with `a`, renames the rest injectively.
fn rename_key(key: &str) -> Option<String> {
    let (ns, host) = key.split_once('/')?;
    if host.starts_with('a') {
        None
    } else {
        Some(format!("{ns}/{host}.g"))
    }
}

fn apply_to_struct(w: &mut Workload, op: &WorkloadOp) {
    match op {
        WorkloadOp::Network(n) => w.network = n.clone(),
        WorkloadOp::ClusterId(c) => w.cluster_id = c.clone(),
        WorkloadOp::Gateway(g) => w.network_gateway = Some(g.clone()),
        WorkloadOp::ClearGateway => w.network_gateway = None,
        WorkloadOp::RenameServices => {
            w.services = std::mem::take(&mut w.services)
                .into_iter()
                .filter_map(|(k, v)| rename_key(&k).map(|k| (k, v)))
                .collect::<BTreeMap<_, _>>();
        }
    }
}

fn apply_to_wire(editor: &mut WorkloadEditor<'_>, op: &WorkloadOp) -> Result<(), WireError> {
    match op {
        WorkloadOp::Network(n) => {
            editor.set_network(n);
        }
        WorkloadOp::ClusterId(c) => {
            editor.set_cluster_id(c);
        }
        WorkloadOp::Gateway(g) => {
            editor.set_network_gateway(g);
        }
        WorkloadOp::ClearGateway => {
            editor.clear_network_gateway();
        }
        WorkloadOp::RenameServices => {
            editor.rewrite_service_keys(rename_key)?;
        }
    }
    Ok(())
}

/// An Address around `nested` (field `number`), with unknown fields at the Address level.
fn wrap_address(number: u32, nested: &[u8], outer: &[(usize, Vec<u8>)]) -> Vec<u8> {
    insert_unknowns(&super::codec::len_field(number, nested), outer)
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Editing a Workload on the wire decodes to the same struct as editing the prost
    /// value, and every field the edits do not name (unknown ones included, at both levels)
    /// keeps its bytes and its order.
    #[test]
    fn workload_edits_match_struct_edits_and_keep_unknown_fields(
        workload in arb_workload(),
        inner in arb_unknowns(),
        outer in arb_unknowns(),
        ops in vec(arb_workload_op(), 0..5),
    ) {
        let nested = insert_unknowns(&workload.encode_to_vec(), &inner);
        let body = wrap_address(1, &nested, &outer);

        let edited = edit_workload(&body, |w| {
            for op in &ops {
                apply_to_wire(w, op)?;
            }
            Ok(())
        }).unwrap();

        let mut expected = workload.clone();
        for op in &ops {
            apply_to_struct(&mut expected, op);
        }
        prop_assert_eq!(decode_workload(&edited), expected);

        // Address level: everything but the workload is untouched, in order.
        prop_assert_eq!(without(raw_fields(&edited), &[1]), without(raw_fields(&body), &[1]));
        prop_assert_eq!(unknown_bytes_in(&edited), concat_unknowns(&outer));
        // Workload level: unknown fields byte-for-byte in order; untouched known fields too.
        let edited_nested = only_len_payload(&edited, 1);
        prop_assert_eq!(unknown_bytes_in(&edited_nested), concat_unknowns(&inner));
        let touched: Vec<u32> = ops.iter().map(WorkloadOp::field).collect();
        prop_assert_eq!(without(raw_fields(&edited_nested), &touched), without(raw_fields(&nested), &touched));
        if ops.is_empty() {
            prop_assert_eq!(&edited[..], &body[..]);
        }
    }

    /// The same for Services: hostname rename and VIP removal.
    #[test]
    fn service_edits_match_struct_edits_and_keep_unknown_fields(
        service in arb_service(),
        inner in arb_unknowns(),
        outer in arb_unknowns(),
        hostname in proptest::option::of(arb_name()),
        remove_addresses in any::<bool>(),
    ) {
        let nested = insert_unknowns(&service.encode_to_vec(), &inner);
        let body = wrap_address(2, &nested, &outer);

        let edited = edit_service(&body, |s| {
            if let Some(h) = &hostname {
                s.set_hostname(h);
            }
            if remove_addresses {
                s.remove_addresses();
            }
            Ok(())
        }).unwrap();

        let mut expected = service.clone();
        let mut touched = Vec::new();
        if let Some(h) = &hostname {
            expected.hostname = h.clone();
            touched.push(3);
        }
        if remove_addresses {
            expected.addresses.clear();
            touched.push(4);
        }
        prop_assert_eq!(decode_service(&edited), expected);
        prop_assert_eq!(without(raw_fields(&edited), &[2]), without(raw_fields(&body), &[2]));
        let edited_nested = only_len_payload(&edited, 2);
        prop_assert_eq!(unknown_bytes_in(&edited_nested), concat_unknowns(&inner));
        prop_assert_eq!(without(raw_fields(&edited_nested), &touched), without(raw_fields(&nested), &touched));
    }

    /// Setting a field writes it once, where its first occurrence was (or at the end).
    #[test]
    fn replaced_field_is_written_once_at_first_position(
        workload in arb_workload(),
        inner in arb_unknowns(),
        network in "[a-z]{1,8}",
    ) {
        let nested = insert_unknowns(&workload.encode_to_vec(), &inner);
        let body = address_of_workload_bytes(&nested);
        let edited = edit_workload(&body, |w| { w.set_network(&network); Ok(()) }).unwrap();
        let before = raw_fields(&nested);
        let after = raw_fields(&only_len_payload(&edited, 1));
        let positions: Vec<usize> = after.iter().enumerate().filter(|(_, (n, _))| *n == 4).map(|(i, _)| i).collect();
        prop_assert_eq!(positions.len(), 1);
        // All old occurrences go, so the first one's index is where the new one lands.
        let expected_position = before.iter().position(|(n, _)| *n == 4).unwrap_or(after.len() - 1);
        prop_assert_eq!(positions[0], expected_position);
    }

    /// Truncating a valid Address inside its workload field is always an error, never a
    /// panic; arbitrary bytes never panic.
    #[test]
    fn truncated_or_random_input_is_an_error_not_a_panic(
        workload in arb_workload(),
        inner in arb_unknowns(),
        cut_seed in any::<usize>(),
        garbage in vec(any::<u8>(), 0..64),
    ) {
        let body = address_of_workload_bytes(&insert_unknowns(&workload.encode_to_vec(), &inner));
        let cut = 1 + cut_seed % (body.len() - 1).max(1);
        if cut < body.len() {
            let result = edit_workload(&body[..cut], |w| { w.set_network("x"); Ok(()) });
            prop_assert!(result.is_err(), "cut at {} of {} accepted", cut, body.len());
        }
        let _ = edit_workload(&garbage, |w| { w.rewrite_service_keys(|k| Some(k.to_owned()))?; Ok(()) });
        let _ = edit_service(&garbage, |s| { s.set_hostname("h"); Ok(()) });
        let _ = address_kind(&garbage);
    }
}

fn address_of_workload_bytes(nested: &[u8]) -> Vec<u8> {
    super::codec::len_field(1, nested)
}

// ---------------------------------------------------------------------------------------
// Examples

fn sample_workload() -> Workload {
    Workload {
        uid: "c2//Pod/default/echo-0".into(),
        name: "echo-0".into(),
        namespace: "default".into(),
        addresses: vec![vec![10, 0, 0, 7]],
        network: "net2".into(),
        services: BTreeMap::from([
            (
                "default/echo.default.svc.cluster.local".to_owned(),
                PortList { ports: vec![] },
            ),
            (
                "default/other.default.svc.cluster.local".to_owned(),
                PortList { ports: vec![] },
            ),
        ]),
        ..Default::default()
    }
}

#[test]
fn export_edit_sets_cluster_network_gateway_and_renames_services() {
    let mut nested = sample_workload().encode_to_vec();
    // An unknown field istiod might send, at the end of the workload.
    super::codec::put_len_field(&mut nested, 150, b"future");
    let body = address_of_workload_bytes(&nested);
    let gateway = gateway_address("net1", IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)), 15008);
    let edited = edit_workload(&body, |w| {
        w.set_cluster_id("c1")
            .set_network("net1")
            .set_network_gateway(&gateway);
        w.rewrite_service_keys(|key| match key {
            "default/echo.default.svc.cluster.local" => {
                Some("default/echo.default.mesh.internal".into())
            }
            _ => None,
        })?;
        Ok(())
    })
    .unwrap();
    let w = decode_workload(&edited);
    assert_eq!(w.cluster_id, "c1");
    assert_eq!(w.network, "net1");
    assert_eq!(w.network_gateway, Some(gateway));
    assert_eq!(
        w.services.keys().collect::<Vec<_>>(),
        vec!["default/echo.default.mesh.internal"]
    );
    assert_eq!(w.uid, "c2//Pod/default/echo-0");
    let nested = only_len_payload(&edited, 1);
    // The unknown field survives; fields that were absent (cluster_id, network_gateway) are
    // appended after it.
    let numbers: Vec<u32> = raw_fields(&nested).into_iter().map(|(n, _)| n).collect();
    assert_eq!(&numbers[numbers.len() - 3..], &[150, 18, 19]);
    assert!(raw_fields(&nested).contains(&(150, b"\xb2\x09\x06future".to_vec())));

    let flat = edit_workload(&edited, |w| {
        w.clear_network_gateway();
        Ok(())
    })
    .unwrap();
    assert_eq!(decode_workload(&flat).network_gateway, None);
}

#[test]
fn gateway_address_encodes_network_ip_and_port() {
    let g = gateway_address("n", "fd00::1".parse().unwrap(), 15008);
    assert_eq!(g.hbone_mtls_port, 15008);
    match g.destination {
        Some(gateway_address::Destination::Address(a)) => {
            assert_eq!(a.network, "n");
            assert_eq!(a.address.len(), 16);
        }
        other => panic!("unexpected destination {other:?}"),
    }
}

#[test]
fn wrong_or_missing_variant_is_rejected() {
    let service = Address {
        r#type: Some(address::Type::Service(Service::default())),
    }
    .encode_to_vec();
    assert_eq!(address_kind(&service), Ok(AddressKind::Service));
    assert_eq!(
        edit_workload(&service, |_| Ok(())).unwrap_err(),
        WireError::WrongVariant {
            expected: "workload",
            found: "service"
        }
    );
    assert_eq!(
        edit_service(&[], |_| Ok(())).unwrap_err(),
        WireError::EmptyAddress
    );
    // Only an unknown field: still no variant.
    assert_eq!(
        address_kind(&super::codec::len_field(150, b"x")),
        Err(WireError::EmptyAddress)
    );
}

#[test]
fn repeated_oneof_occurrences_are_merged_like_a_decoder() {
    // workload{name=a} service{} workload{namespace=b} workload{network=c}: a decoder keeps
    // the merge of the last two workloads (the service reset the first).
    let part = |w: Workload| w.encode_to_vec();
    let mut body = Vec::new();
    super::codec::put_len_field(
        &mut body,
        1,
        &part(Workload {
            name: "a".into(),
            ..Default::default()
        }),
    );
    super::codec::put_len_field(
        &mut body,
        2,
        &Service {
            name: "s".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    super::codec::put_len_field(
        &mut body,
        1,
        &part(Workload {
            namespace: "b".into(),
            ..Default::default()
        }),
    );
    super::codec::put_len_field(&mut body, 150, b"keep");
    super::codec::put_len_field(
        &mut body,
        1,
        &part(Workload {
            network: "c".into(),
            ..Default::default()
        }),
    );
    let before = decode_workload(&body);
    let edited = edit_workload(&body, |w| {
        w.set_cluster_id("c1");
        Ok(())
    })
    .unwrap();
    let expected = Workload {
        cluster_id: "c1".into(),
        ..before
    };
    assert_eq!(decode_workload(&edited), expected);
    let numbers: Vec<u32> = raw_fields(&edited).into_iter().map(|(n, _)| n).collect();
    assert_eq!(numbers, vec![1, 150]);
}

#[test]
fn service_rename_and_vip_removal() {
    let service = Service {
        name: "echo".into(),
        namespace: "default".into(),
        hostname: "echo.default.svc.cluster.local".into(),
        addresses: vec![NetworkAddress {
            network: "n".into(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: pb::AppProtocol::Http11 as i32,
        }],
        ..Default::default()
    };
    let body = Address {
        r#type: Some(address::Type::Service(service.clone())),
    }
    .encode_to_vec();
    let edited = edit_service(&body, |s| {
        s.set_hostname("echo.default.mesh.internal")
            .remove_addresses();
        Ok(())
    })
    .unwrap();
    let s = decode_service(&edited);
    assert_eq!(s.hostname, "echo.default.mesh.internal");
    assert!(s.addresses.is_empty());
    assert_eq!(s.ports, service.ports);
}

#[test]
fn errors_from_the_edit_closure_propagate() {
    let body = address_of_workload(&sample_workload());
    let err = edit_workload(&body, |_| Err(WireError::EmptyAddress)).unwrap_err();
    assert_eq!(err, WireError::EmptyAddress);
}

#[test]
fn invalid_utf8_service_key_is_rejected() {
    let mut entry = Vec::new();
    super::codec::put_len_field(&mut entry, 1, &[0xff, 0xfe]);
    let nested = super::codec::len_field(22, &entry);
    let body = address_of_workload_bytes(&nested);
    let err = edit_workload(&body, |w| {
        w.rewrite_service_keys(|k| Some(k.to_owned()))?;
        Ok(())
    })
    .unwrap_err();
    assert_eq!(
        err,
        WireError::InvalidUtf8 { field: 1 }.within("Workload.services entry")
    );
    assert!(err.to_string().contains("Workload.services entry"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Malformed input, one case per error kind.

fn first_error(buf: &[u8]) -> WireError {
    super::codec::validate(buf).unwrap_err()
}

#[test]
fn truncated_varint_is_rejected() {
    assert_eq!(
        first_error(&[0x08, 0x80]),
        WireError::TruncatedVarint { offset: 1 }
    );
    assert_eq!(
        first_error(&[0x80]),
        WireError::TruncatedVarint { offset: 0 }
    );
}

#[test]
fn overlong_varint_is_rejected() {
    let mut buf = vec![0x08];
    buf.extend_from_slice(&[0xff; 10]);
    buf.push(0x01);
    assert_eq!(first_error(&buf), WireError::VarintOverflow { offset: 1 });
    // Ten bytes whose last carries more than the top bit.
    let mut buf = vec![0x08];
    buf.extend_from_slice(&[0xff; 9]);
    buf.push(0x02);
    assert_eq!(first_error(&buf), WireError::VarintOverflow { offset: 1 });
    // u64::MAX itself is fine.
    let mut buf = vec![0x08];
    put_varint(&mut buf, u64::MAX);
    assert!(super::codec::validate(&buf).is_ok());
}

#[test]
fn length_past_end_is_rejected() {
    assert_eq!(
        first_error(&[0x0a, 0x05, 0x01]),
        WireError::LengthPastEnd {
            field: 1,
            offset: 0,
            len: 5,
            remaining: 1
        }
    );
    // A huge length must not overflow.
    let mut buf = vec![0x0a];
    put_varint(&mut buf, u64::MAX);
    assert!(matches!(first_error(&buf), WireError::LengthPastEnd { .. }));
}

#[test]
fn bad_wire_types_6_and_7_are_rejected() {
    assert_eq!(
        first_error(&[(1 << 3) | 6]),
        WireError::BadWireType {
            field: 1,
            wire_type: 6,
            offset: 0
        }
    );
    assert_eq!(
        first_error(&[0x08, 0x01, (2 << 3) | 7]),
        WireError::BadWireType {
            field: 2,
            wire_type: 7,
            offset: 2
        }
    );
}

#[test]
fn field_number_zero_and_oversized_tags_are_rejected() {
    assert_eq!(
        first_error(&[0x00]),
        WireError::BadFieldNumber {
            number: 0,
            offset: 0
        }
    );
    let mut buf = Vec::new();
    put_varint(
        &mut buf,
        (u64::from(super::codec::MAX_FIELD_NUMBER) + 1) << 3,
    );
    assert!(matches!(
        first_error(&buf),
        WireError::BadFieldNumber { .. }
    ));
}

#[test]
fn truncated_fixed_values_are_rejected() {
    assert_eq!(
        first_error(&[0x09, 1, 2, 3]),
        WireError::TruncatedFixed {
            field: 1,
            offset: 0,
            bits: 64
        }
    );
    assert_eq!(
        first_error(&[0x0d, 1, 2]),
        WireError::TruncatedFixed {
            field: 1,
            offset: 0,
            bits: 32
        }
    );
}

#[test]
fn unbalanced_groups_are_rejected() {
    // End-group with no start.
    assert_eq!(
        first_error(&[(3 << 3) | 4]),
        WireError::UnexpectedEndGroup {
            field: 3,
            offset: 0
        }
    );
    // Start-group never closed.
    assert_eq!(
        first_error(&[(3 << 3) | 3, 0x08, 0x01]),
        WireError::UnterminatedGroup {
            field: 3,
            offset: 0
        }
    );
    // Closed by the wrong number.
    assert_eq!(
        first_error(&[(3 << 3) | 3, (4 << 3) | 4]),
        WireError::UnexpectedEndGroup {
            field: 4,
            offset: 1
        }
    );
    // Nested too deep.
    let deep: Vec<u8> = std::iter::repeat_n((3 << 3) | 3, 100).collect();
    assert_eq!(first_error(&deep), WireError::GroupTooDeep);
    // A well-formed nested group is one field.
    let ok = [
        (3 << 3) | 3,
        (5 << 3) | 3,
        0x08,
        0x01,
        (5 << 3) | 4,
        (3 << 3) | 4,
        0x10,
        0x02,
    ];
    let fields: Vec<_> = FieldReader::new(&ok).map(|f| f.unwrap().number).collect();
    assert_eq!(fields, vec![3, 2]);
}

#[test]
fn malformed_nested_workload_names_where_it_failed() {
    // Address{workload: <field 4 with a length past its end>}
    let body = address_of_workload_bytes(&[0x22, 0x09, b'x']);
    let err = edit_workload(&body, |w| {
        w.set_network("n");
        Ok(())
    })
    .unwrap_err();
    assert_eq!(
        err,
        WireError::LengthPastEnd {
            field: 4,
            offset: 0,
            len: 9,
            remaining: 1
        }
        .within("Address.workload")
    );
    assert!(
        err.to_string().starts_with("in Address.workload: field 4"),
        "{err}"
    );
}

#[test]
fn wrong_wire_type_for_a_map_field_is_rejected() {
    // Workload.services (22) as a varint.
    let mut nested = Vec::new();
    put_tag(&mut nested, 22, WireType::Varint);
    put_varint(&mut nested, 1);
    let body = address_of_workload_bytes(&nested);
    let err = edit_workload(&body, |w| {
        w.rewrite_service_keys(|k| Some(k.to_owned()))?;
        Ok(())
    })
    .unwrap_err();
    assert_eq!(
        err,
        WireError::UnexpectedWireType {
            field: 22,
            expected: WireType::Len,
            found: WireType::Varint
        }
        .within("Workload.services entry")
    );
}

#[test]
fn duplicate_singular_fields_are_replaced_by_one_at_the_first_position() {
    // Workload: network="a", unknown 150, network="b", name="n". A decoder sees network "b".
    let mut nested = Vec::new();
    super::codec::put_len_field(&mut nested, 4, b"a");
    super::codec::put_len_field(&mut nested, 150, b"u");
    super::codec::put_len_field(&mut nested, 4, b"b");
    super::codec::put_len_field(&mut nested, 1, b"n");
    let body = address_of_workload_bytes(&nested);
    assert_eq!(decode_workload(&body).network, "b");
    let edited = edit_workload(&body, |w| {
        w.set_network("c");
        Ok(())
    })
    .unwrap();
    let fields = raw_fields(&only_len_payload(&edited, 1));
    let numbers: Vec<u32> = fields.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, vec![4, 150, 1]);
    assert_eq!(decode_workload(&edited).network, "c");
    // Setting the empty (default) value removes the field altogether.
    let cleared = edit_workload(&body, |w| {
        w.set_network("");
        Ok(())
    })
    .unwrap();
    let numbers: Vec<u32> = raw_fields(&only_len_payload(&cleared, 1))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(numbers, vec![150, 1]);
}

#[test]
fn unknown_fields_inside_a_services_entry_survive_a_rename() {
    // Entry: key, unknown 150, value PortList{ports:[{service_port: 80}]}.
    let port_list = PortList {
        ports: vec![Port {
            service_port: 80,
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let mut entry = Vec::new();
    super::codec::put_len_field(&mut entry, 1, b"ns/old");
    super::codec::put_len_field(&mut entry, 150, b"entry-extra");
    super::codec::put_len_field(&mut entry, 2, &port_list);
    let body = address_of_workload_bytes(&super::codec::len_field(22, &entry));
    let edited = edit_workload(&body, |w| {
        w.rewrite_service_keys(|k| Some(k.replace("old", "new")))?;
        Ok(())
    })
    .unwrap();
    let w = decode_workload(&edited);
    assert_eq!(
        w.services.get("ns/new").map(|p| p.ports[0].service_port),
        Some(80)
    );
    let nested = only_len_payload(&edited, 1);
    let new_entry = only_len_payload(&nested, 22);
    let fields = raw_fields(&new_entry);
    assert_eq!(fields[0], (1, super::codec::len_field(1, b"ns/new")));
    assert_eq!(
        fields[1],
        (150, super::codec::len_field(150, b"entry-extra"))
    );
    assert_eq!(fields[2], (2, super::codec::len_field(2, &port_list)));
    // An entry whose key does not change keeps its exact bytes.
    let same = edit_workload(&body, |w| {
        w.rewrite_service_keys(|k| Some(k.to_owned()))?;
        Ok(())
    })
    .unwrap();
    assert_eq!(&same[..], &body[..]);
}

// ---------------------------------------------------------------------------------------
// Waypoint references

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Retargeting a service's waypoint and weighted waypoints decodes like the same edit
    /// on the struct; unknown fields inside the GatewayAddress and at the Service and
    /// Address levels keep their bytes and order.
    #[test]
    fn waypoint_retarget_matches_struct_edit_and_keeps_unknown_fields(
        mut service in arb_service(),
        gateway in arb_gateway(),
        weights in vec(any::<u32>(), 0..3),
        in_gateway in arb_unknowns(),
        inner in arb_unknowns(),
        outer in arb_unknowns(),
    ) {
        service.waypoint = Some(gateway.clone());
        service.weighted_waypoints = weights
            .iter()
            .map(|w| pb::WeightedWaypoint { destination: Some(gateway.clone()), weight: *w })
            .collect();
        // Unknown fields inside the waypoint's GatewayAddress itself.
        let gateway_bytes = insert_unknowns(&gateway.encode_to_vec(), &in_gateway);
        let mut plain = service.clone();
        plain.waypoint = None;
        let mut nested = plain.encode_to_vec();
        nested.extend(super::codec::len_field(7, &gateway_bytes));
        let nested = insert_unknowns(&nested, &inner);
        let body = wrap_address(2, &nested, &outer);

        let edited = edit_service(&body, |e| {
            let current = e.waypoint()?.expect("waypoint set");
            let retargeted = retarget_gateway(&current, "ns", "w.ns.mesh.internal")?;
            e.set_waypoint(Some(&retargeted));
            e.rewrite_weighted_waypoints(|entry| {
                retarget_weighted_waypoint(entry, "ns", "w.ns.mesh.internal").map(Rewrite::Replace)
            })?;
            Ok(())
        })
        .unwrap();

        let target = Some(gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: "ns".into(),
            hostname: "w.ns.mesh.internal".into(),
        }));
        let mut expected = service.clone();
        if let Some(w) = expected.waypoint.as_mut() {
            w.destination = target.clone();
        }
        for w in &mut expected.weighted_waypoints {
            if let Some(d) = w.destination.as_mut() {
                d.destination = target.clone();
            }
        }
        prop_assert_eq!(decode_service(&edited), expected);
        prop_assert_eq!(unknown_bytes_in(&edited), concat_unknowns(&outer));
        let edited_nested = only_len_payload(&edited, 2);
        prop_assert_eq!(unknown_bytes_in(&edited_nested), concat_unknowns(&inner));
        let edited_gateway = only_len_payload(&edited_nested, 7);
        prop_assert_eq!(unknown_bytes_in(&edited_gateway), concat_unknowns(&in_gateway));
    }

    /// Clearing a workload's waypoint removes exactly field 8.
    #[test]
    fn workload_waypoint_clear_removes_only_field_8(
        workload in arb_workload(),
        gateway in arb_gateway(),
        inner in arb_unknowns(),
    ) {
        let mut with = workload.clone();
        with.waypoint = Some(gateway);
        let nested = insert_unknowns(&with.encode_to_vec(), &inner);
        let body = wrap_address(1, &nested, &[]);
        let edited = edit_workload(&body, |e| {
            assert!(e.waypoint()?.is_some(), "the waypoint is read back");
            e.set_waypoint(None);
            Ok(())
        })
        .unwrap();
        let mut expected = with.clone();
        expected.waypoint = None;
        prop_assert_eq!(decode_workload(&edited), expected);
        let edited_nested = only_len_payload(&edited, 1);
        prop_assert_eq!(
            without(raw_fields(&edited_nested), &[8]),
            without(raw_fields(&nested), &[8])
        );
    }
}

#[test]
fn retargeting_an_address_waypoint_keeps_the_port_and_position() {
    let gateway = GatewayAddress {
        destination: Some(gateway_address::Destination::Address(NetworkAddress {
            network: "n1".into(),
            address: vec![127, 3, 0, 2],
            length: None,
        })),
        hbone_mtls_port: 15008,
    };
    let out = retarget_gateway(
        &gateway.encode_to_vec(),
        "bookinfo",
        "waypoint.bookinfo.mesh.internal",
    )
    .unwrap();
    let decoded = GatewayAddress::decode(out.as_slice()).unwrap();
    assert_eq!(decoded.hbone_mtls_port, 15008);
    assert_eq!(
        decoded.destination,
        Some(gateway_address::Destination::Hostname(NamespacedHostname {
            namespace: "bookinfo".into(),
            hostname: "waypoint.bookinfo.mesh.internal".into(),
        }))
    );
    // The destination stays the first field, as the address was.
    assert_eq!(raw_fields(&out)[0].0, 1);
    assert!(retarget_gateway(&[0xff], "a", "b").is_err());
}
