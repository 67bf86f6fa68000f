//! Conversions from peerd's in-memory state to `peerd.debug.v1` messages, and protobuf
//! bytes to JSON through the embedded descriptor set (`prost-reflect`).
//!
//! Pure functions over copies. It must never panic on bytes from the network: a body that
//! does not decode becomes an error string, and unknown fields are skipped.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use crate::debug::source::{Counts, PeerCondition, PeerEvent, PeerInfo, ProbeInfo};
use crate::proto::debug::v1 as api;
use crate::xds::resource::Resource;
use crate::xds::server::{SubscriberInfo, TypeProgress};
use crate::xds::stats::{StreamSnapshot, TypeStats, unix_ms};
use crate::xds::types::ResourceType;

/// The descriptor pool of every proto peerd knows (decoded once).
pub fn descriptor_pool() -> Result<&'static DescriptorPool, String> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| format!("embedded descriptor set: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Decodes `bytes` as the message `full_name` into JSON (proto3 JSON mapping, default
/// fields omitted, unknown fields ignored).
pub fn bytes_to_json(full_name: &str, bytes: &[u8]) -> Result<serde_json::Value, String> {
    let pool = descriptor_pool()?;
    let descriptor = pool
        .get_message_by_name(full_name)
        .ok_or_else(|| format!("unknown message type {full_name}"))?;
    let message = DynamicMessage::decode(descriptor, bytes)
        .map_err(|e| format!("decoding {full_name}: {e}"))?;
    let options = SerializeOptions::new().skip_default_fields(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("{full_name} to JSON: {e}"))
}

/// Any generated `peerd.debug.v1` message to JSON.
pub fn message_to_json<M: prost::Message>(
    message: &M,
    full_name: &str,
) -> Result<serde_json::Value, String> {
    bytes_to_json(full_name, &message.encode_to_vec())
}

/// A repeated field of a JSON-rendered list response, `[]` when empty (the JSON mapping
/// omits empty fields).
pub fn list_field(mut value: serde_json::Value, key: &str) -> serde_json::Value {
    value
        .get_mut(key)
        .map(serde_json::Value::take)
        .unwrap_or_else(|| serde_json::Value::Array(Vec::new()))
}

/// The protobuf message carried by resources of `kind`.
pub fn message_name(kind: ResourceType) -> &'static str {
    match kind {
        ResourceType::Address => "istio.workload.Address",
        ResourceType::Authorization => "istio.security.Authorization",
    }
}

/// A resource for the API; `json` filled when asked (a body that does not decode shows
/// its error instead of failing the call).
pub fn resource(r: &Resource, origin: &str, include_json: bool) -> api::Resource {
    let json = if include_json {
        match bytes_to_json(message_name(r.kind), &r.body) {
            Ok(v) => v.to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        }
    } else {
        String::new()
    };
    api::Resource {
        name: r.name.to_string(),
        type_url: r.kind.type_url().into(),
        version: r.version.to_string(),
        origin: origin.into(),
        json,
        size_bytes: r.body.len() as u64,
        summary: None,
    }
}

pub fn counts(c: Counts) -> api::ResourceCounts {
    api::ResourceCounts {
        workloads: c.workloads,
        services: c.services,
        authorizations: c.authorizations,
    }
}

/// `(workloads, services, authorizations)` of a view snapshot.
pub fn view_counts((workloads, services, authorizations): (usize, usize, usize)) -> Counts {
    Counts {
        workloads: workloads as u64,
        services: services as u64,
        authorizations: authorizations as u64,
    }
}

pub fn condition(c: &PeerCondition) -> api::Condition {
    api::Condition {
        r#type: c.kind.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_unix_ms: c.last_transition.map(unix_ms).unwrap_or(0),
    }
}

fn probe(p: &ProbeInfo) -> api::ProbeStats {
    api::ProbeStats {
        mode: p.mode.clone(),
        attempts: p.attempts,
        established: p.established,
        refused: p.refused,
        timeouts: p.timeouts,
        aborted: p.aborted,
        syn_retransmits: p.syn_retransmits,
        p50_us: p.p50_us,
        p99_us: p.p99_us,
        unreachable: p.unreachable,
    }
}

pub fn peer(p: &PeerInfo) -> api::Peer {
    api::Peer {
        cluster: p.cluster.clone(),
        network: p.network.clone(),
        address: p.address.clone(),
        flat: p.flat,
        conditions: p.conditions.iter().map(condition).collect(),
        imported: Some(counts(p.imported)),
        stream: p.stream.as_ref().map(upstream_stream),
        hbone_probe: p.hbone_probe.as_ref().map(probe),
        xds_probe: p.xds_probe.as_ref().map(probe),
        conflicts: p.conflicts.clone(),
    }
}

pub fn event(e: &PeerEvent) -> api::Event {
    api::Event {
        unix_ms: unix_ms(e.at),
        kind: e.kind.clone(),
        peer: e.peer.clone(),
        message: e.message.clone(),
        condition: e.condition.as_ref().map(condition),
        ..api::Event::default()
    }
}

fn type_status(kind: ResourceType, t: &TypeStats, status: &str) -> api::TypeStatus {
    api::TypeStatus {
        r#type: kind.short_name().into(),
        status: status.into(),
        resources: t.resources,
        acks: t.acks,
        nacks_sent: t.nacks_sent,
        nacks_received: t.nacks_received,
        last_nack_message: t.last_nack_message.clone(),
        last_nonce_sent: t.last_nonce_sent.clone(),
        last_nonce_acked: t.last_nonce_acked.clone(),
        acked_view_version: 0,
        split_parts: t.split_parts,
    }
}

/// Fields common to upstream and downstream streams; `types` left to the caller.
fn stream_base(s: &StreamSnapshot) -> api::StreamState {
    let sum = |f: fn(&TypeStats) -> u64| {
        ResourceType::ALL
            .iter()
            .map(|t| f(s.per_type(*t)))
            .sum::<u64>()
    };
    // The Address type carries the nonces shown in the one-line summary.
    let address = s.per_type(ResourceType::Address);
    let last_nack_message = ResourceType::ALL
        .iter()
        .map(|t| &s.per_type(*t).last_nack_message)
        .find(|m| !m.is_empty())
        .cloned()
        .unwrap_or_default();
    api::StreamState {
        name: s.name.clone(),
        address: s.address.clone(),
        connected: s.connected,
        connected_since_unix_ms: s.connected_since_unix_ms,
        last_nonce_sent: address.last_nonce_sent.clone(),
        last_nonce_acked: address.last_nonce_acked.clone(),
        nacks_sent: sum(|t| t.nacks_sent),
        nacks_received: sum(|t| t.nacks_received),
        last_nack_message,
        counts: None,
        synced_types: ResourceType::ALL
            .iter()
            .filter(|t| s.per_type(**t).synced)
            .map(|t| t.short_name().to_string())
            .collect(),
        last_error: s.last_error.clone(),
        reconnects: s.reconnects,
        types: Vec::new(),
    }
}

/// An upstream stream; `counts` are what it holds per type (Address counted as one).
pub fn upstream_stream(s: &StreamSnapshot) -> api::StreamState {
    let mut state = stream_base(s);
    state.types = ResourceType::ALL
        .iter()
        .map(|t| {
            let stats = s.per_type(*t);
            type_status(
                *t,
                stats,
                if stats.synced { "SYNCED" } else { "NOT SYNCED" },
            )
        })
        .collect();
    state
}

/// An upstream with the counts of its origin view.
pub fn upstream(s: &StreamSnapshot, held: Option<Counts>) -> api::StreamState {
    let mut state = upstream_stream(s);
    state.counts = held.map(counts);
    state
}

/// A subscriber's per-type status against the current version of its view, like
/// `istioctl proxy-status`: NOT SENT (never subscribed), NACKED (standing NACK), SYNCED
/// (processed the current version), STALE (behind).
pub fn progress_status(p: &TypeProgress, view_version: Option<u64>) -> &'static str {
    if !p.subscribed {
        "NOT SENT"
    } else if p.rejected {
        "NACKED"
    } else {
        match (p.acked_view_version, view_version) {
            (Some(acked), Some(current)) if acked >= current => "SYNCED",
            (Some(_), None) => "ACKED",
            _ => "STALE",
        }
    }
}

pub fn subscriber(s: &SubscriberInfo, view_version: Option<u64>) -> api::Subscriber {
    let mut stream = stream_base(&s.stats);
    stream.types = ResourceType::ALL
        .iter()
        .map(|t| {
            let progress = s.progress(*t);
            let mut status = type_status(
                *t,
                s.stats.per_type(*t),
                progress_status(progress, view_version),
            );
            status.acked_view_version = progress.acked_view_version.unwrap_or(0);
            status
        })
        .collect();
    let types = ResourceType::ALL
        .iter()
        .filter(|t| s.progress(**t).subscribed)
        .map(|t| t.short_name().to_string())
        .collect();
    api::Subscriber {
        node_id: s.node_id.clone(),
        peer_address: s.remote_addr.clone(),
        kind: subscriber_kind(&s.node_id, &s.view_label).into(),
        types,
        stream: Some(stream),
        view: s.view_label.clone(),
        identity: s.identity.clone(),
        view_version: view_version.unwrap_or(0),
    }
}

/// `ztunnel`, `peer` or `other`, from the node id's first field (Istio's
/// `type~ip~id~domain`) and the view served.
fn subscriber_kind(node_id: &str, view: &str) -> &'static str {
    match node_id.split('~').next() {
        Some("ztunnel") => "ztunnel",
        Some("peerd") => "peer",
        _ if view == "export" => "peer",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::istio::workload;

    #[test]
    fn resources_decode_to_json_and_bad_bytes_do_not_fail_the_call() {
        let r = Resource::workload(&workload::Workload {
            uid: "c1//Pod/default/a".into(),
            name: "a".into(),
            namespace: "default".into(),
            ..Default::default()
        })
        .unwrap();
        let api = resource(&r, "c1", true);
        let json: serde_json::Value = serde_json::from_str(&api.json).unwrap();
        assert_eq!(json["workload"]["uid"], "c1//Pod/default/a");
        assert_eq!(json["workload"]["namespace"], "default");
        assert_eq!(api.origin, "c1");
        assert_eq!(api.size_bytes, r.body.len() as u64);

        // An unknown field (number 999, varint) is ignored.
        let mut body = r.body.to_vec();
        body.extend_from_slice(&[0xb8, 0x3e, 0x01]);
        let json = bytes_to_json("istio.workload.Address", &body).unwrap();
        assert_eq!(json["workload"]["name"], "a");

        // Truncated bytes give an error value, not a panic.
        let err = bytes_to_json("istio.workload.Address", &[0x0a, 0x50, 0x01]).unwrap_err();
        assert!(err.contains("decoding istio.workload.Address"), "{err}");
        assert!(bytes_to_json("no.such.Type", &[]).is_err());
    }

    #[test]
    fn subscriber_status_reads_like_proxy_status() {
        let p = |subscribed, acked, rejected| TypeProgress {
            subscribed,
            acked_view_version: acked,
            rejected,
        };
        assert_eq!(progress_status(&p(false, None, false), Some(3)), "NOT SENT");
        assert_eq!(progress_status(&p(true, Some(3), false), Some(3)), "SYNCED");
        assert_eq!(progress_status(&p(true, Some(2), false), Some(3)), "STALE");
        assert_eq!(progress_status(&p(true, None, false), Some(3)), "STALE");
        assert_eq!(progress_status(&p(true, Some(3), true), Some(3)), "NACKED");
        assert_eq!(progress_status(&p(true, Some(3), false), None), "ACKED");
        assert_eq!(
            subscriber_kind("ztunnel~10.0.0.1~a.ns~ns.svc", "merged"),
            "ztunnel"
        );
        assert_eq!(subscriber_kind("x", "export"), "peer");
    }

    #[test]
    fn api_messages_render_to_json() {
        let info = api::ServerInfo {
            cluster: "c1".into(),
            ready: true,
            ..Default::default()
        };
        let json = message_to_json(&info, "peerd.debug.v1.ServerInfo").unwrap();
        assert_eq!(json["cluster"], "c1");
        assert_eq!(json["ready"], true);
    }
}
