//! What a `ListResources` call returns: the filters (cluster, namespace, name substring)
//! applied on the server to each resource's in-memory summary before anything is
//! decoded or sent, and the [`api::ResourceSummary`] decoded from a matching resource's
//! body for `peerd debug resources`' table.
//!
//! Pure functions over one resource at a time; it must never copy a view, and never
//! panic on a body that does not decode (its summary then names the error).

use std::net::IpAddr;

use prost::Message as _;

use crate::proto::debug::v1 as api;
use crate::proto::istio::{security, workload};
use crate::xds::resource::{Resource, Summary};

/// The longest filter value accepted (a filter is compared, never stored or logged).
pub const MAX_FILTER_LEN: usize = 253;

/// The filters of one `ListResources` call; empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub cluster: String,
    pub namespace: String,
    pub name_contains: String,
}

impl Filter {
    /// The filters of `request`, refusing overlong values.
    pub fn from_request(request: &api::ListResourcesRequest) -> Result<Filter, String> {
        for (field, value) in [
            ("cluster", &request.cluster),
            ("namespace", &request.namespace),
            ("name_contains", &request.name_contains),
        ] {
            if value.len() > MAX_FILTER_LEN {
                return Err(format!(
                    "{field}: {} bytes, at most {MAX_FILTER_LEN}",
                    value.len()
                ));
            }
        }
        Ok(Filter {
            cluster: request.cluster.clone(),
            namespace: request.namespace.clone(),
            name_contains: request.name_contains.clone(),
        })
    }

    /// Whether the filter needs each resource's origin (a cluster filter on a service or
    /// an authorization).
    pub fn needs_origin(&self, r: &Resource) -> bool {
        !self.cluster.is_empty() && !matches!(&*r.summary, Summary::Workload(_))
    }

    /// Whether `r` (held for `origin`, when known) passes every filter. Workloads match
    /// the cluster on their cluster id, services and authorizations on their origin.
    pub fn matches(&self, r: &Resource, origin: Option<&str>) -> bool {
        let (namespace, name, cluster): (&str, &str, Option<&str>) = match &*r.summary {
            Summary::Workload(w) => (&w.namespace, &w.name, Some(&w.cluster_id)),
            Summary::Service(s) => (&s.namespace, &s.name, origin),
            Summary::Authorization(a) => (&a.namespace, &a.name, origin),
        };
        (self.namespace.is_empty() || namespace == self.namespace)
            && (self.cluster.is_empty() || cluster == Some(self.cluster.as_str()))
            && (self.name_contains.is_empty()
                || r.name.contains(self.name_contains.as_str())
                || name.contains(self.name_contains.as_str()))
    }
}

/// The table fields of `r`, decoded from its body.
pub fn summary(r: &Resource) -> api::ResourceSummary {
    let decoded = match r.kind {
        crate::xds::types::ResourceType::Address => {
            workload::Address::decode(r.body.as_ref()).map(|a| match a.r#type {
                Some(workload::address::Type::Workload(w)) => workload_summary(w),
                Some(workload::address::Type::Service(s)) => service_summary(s),
                None => api::ResourceSummary {
                    kind: "address".into(),
                    ..api::ResourceSummary::default()
                },
            })
        }
        crate::xds::types::ResourceType::Authorization => {
            security::Authorization::decode(r.body.as_ref()).map(authorization_summary)
        }
    };
    decoded.unwrap_or_else(|e| api::ResourceSummary {
        kind: "undecodable".into(),
        name: r.name.to_string(),
        status: format!("body does not decode: {e}"),
        ..api::ResourceSummary::default()
    })
}

fn ip(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).map(|b| IpAddr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes).map(|b| IpAddr::from(b).to_string()),
        _ => return format!("<{} bytes>", bytes.len()),
    }
    .unwrap_or_default()
}

fn network_address(a: &workload::NetworkAddress) -> String {
    if a.network.is_empty() {
        ip(&a.address)
    } else {
        format!("{}/{}", a.network, ip(&a.address))
    }
}

fn gateway(g: Option<&workload::GatewayAddress>) -> String {
    match g.and_then(|g| g.destination.as_ref()) {
        Some(workload::gateway_address::Destination::Hostname(h)) => {
            format!("{}/{}", h.namespace, h.hostname)
        }
        Some(workload::gateway_address::Destination::Address(a)) => network_address(a),
        None => String::new(),
    }
}

fn workload_summary(w: workload::Workload) -> api::ResourceSummary {
    api::ResourceSummary {
        kind: "workload".into(),
        addresses: w.addresses.iter().map(|a| ip(a)).collect(),
        node: w.node,
        cluster: w.cluster_id,
        network: w.network,
        protocol: workload::TunnelProtocol::try_from(w.tunnel_protocol)
            .map(|p| p.as_str_name().to_string())
            .unwrap_or_else(|_| w.tunnel_protocol.to_string()),
        waypoint: gateway(w.waypoint.as_ref()),
        network_gateway: gateway(w.network_gateway.as_ref()),
        service_account: w.service_account,
        hostname: w.hostname,
        status: workload::WorkloadStatus::try_from(w.status)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| w.status.to_string()),
        name: w.name,
        namespace: w.namespace,
        ..api::ResourceSummary::default()
    }
}

fn service_summary(s: workload::Service) -> api::ResourceSummary {
    api::ResourceSummary {
        kind: "service".into(),
        addresses: s.addresses.iter().map(network_address).collect(),
        waypoint: gateway(s.waypoint.as_ref()),
        ports: s
            .ports
            .iter()
            .map(|p| format!("{}->{}", p.service_port, p.target_port))
            .collect(),
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        ..api::ResourceSummary::default()
    }
}

fn authorization_summary(a: security::Authorization) -> api::ResourceSummary {
    api::ResourceSummary {
        kind: "authorization".into(),
        scope: security::Scope::try_from(a.scope)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| a.scope.to_string()),
        action: security::Action::try_from(a.action)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| a.action.to_string()),
        name: a.name,
        namespace: a.namespace,
        ..api::ResourceSummary::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str, ns: &str, cluster: &str) -> Resource {
        Resource::workload(&workload::Workload {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: ns.into(),
            cluster_id: cluster.into(),
            network: "net1".into(),
            node: "node-a".into(),
            addresses: vec![vec![10, 0, 0, 7]],
            tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn filters_match_namespace_cluster_and_name_substring() {
        let w = workload("c1//Pod/shop/cart-1", "shop", "c1");
        let f = |cluster: &str, namespace: &str, name: &str| Filter {
            cluster: cluster.into(),
            namespace: namespace.into(),
            name_contains: name.into(),
        };
        assert!(f("", "", "").matches(&w, None));
        assert!(f("c1", "shop", "cart").matches(&w, None));
        assert!(!f("c2", "", "").matches(&w, None));
        assert!(!f("", "default", "").matches(&w, None));
        assert!(!f("", "", "checkout").matches(&w, None));
        // A workload's cluster is its own, never the origin it came through.
        assert!(!f("c2", "", "").matches(&w, Some("c2")));
        assert!(!f("c1", "", "").needs_origin(&w));
    }

    #[test]
    fn overlong_filters_are_refused_with_the_field() {
        let request = api::ListResourcesRequest {
            namespace: "n".repeat(MAX_FILTER_LEN + 1),
            ..Default::default()
        };
        let err = Filter::from_request(&request).unwrap_err();
        assert!(err.starts_with("namespace:"), "{err}");
    }

    #[test]
    fn workload_summary_has_the_table_fields() {
        let s = summary(&workload("c1//Pod/shop/cart-1", "shop", "c1"));
        assert_eq!(s.kind, "workload");
        assert_eq!(s.name, "pod-c1//Pod/shop/cart-1");
        assert_eq!(s.namespace, "shop");
        assert_eq!(s.addresses, vec!["10.0.0.7".to_string()]);
        assert_eq!(s.node, "node-a");
        assert_eq!(s.cluster, "c1");
        assert_eq!(s.network, "net1");
        assert_eq!(s.protocol, "HBONE");
        assert_eq!(s.status, "HEALTHY");
    }
}
