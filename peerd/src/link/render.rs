//! The Gateway objects `expose` and `link` apply: exactly the fields peerd owns (so
//! server-side apply leaves everything else to its owners), as JSON, plus the YAML a
//! `--dry-run` prints. Pure functions.

use serde_json::{Value, json};

use super::endpoint::{ClusterEndpoint, EASTWEST_GATEWAY};
use crate::kube::gateways::{HBONE_PORT, XDS_TLS_PORT};
use crate::kube::types::{
    ANNOTATION_DATA_PLANE_SERVICE_TYPE, ANNOTATION_TRUST_DOMAIN, GATEWAY_CLASS_EASTWEST,
    GATEWAY_CLASS_REMOTE, LABEL_CLUSTER, LABEL_NETWORK,
};

/// The label by which istiod exposes its xDS port through the east-west gateway.
pub const LABEL_EXPOSE_ISTIOD: &str = "istio.io/expose-istiod";
/// The service account of the east-west gateway, named on every peer Gateway.
pub const ANNOTATION_SERVICE_ACCOUNT: &str = "gateway.istio.io/service-account";
const EASTWEST_SERVICE_ACCOUNT: &str = "istio-eastwest";

/// Every label and annotation key peerd renders; a key absent from a rendered object
/// must be absent from the live one too (a `--service-type` switched back).
pub const OWNED_LABELS: [&str; 3] = [LABEL_CLUSTER, LABEL_NETWORK, LABEL_EXPOSE_ISTIOD];
pub const OWNED_ANNOTATIONS: [&str; 3] = [
    ANNOTATION_TRUST_DOMAIN,
    ANNOTATION_SERVICE_ACCOUNT,
    ANNOTATION_DATA_PLANE_SERVICE_TYPE,
];

/// The name of the Gateway by which a cluster peers with `cluster`.
pub fn peer_gateway_name(cluster: &str) -> String {
    format!("istio-remote-peer-{cluster}")
}

/// The two listeners of an east-west or peer Gateway: HBONE data plane and xDS over TLS,
/// both passed through.
fn listeners() -> Value {
    json!([
        {"name": "cross-network", "port": HBONE_PORT, "protocol": "HBONE",
         "tls": {"mode": "Passthrough"}},
        {"name": "xds-tls", "port": XDS_TLS_PORT, "protocol": "TLS",
         "tls": {"mode": "Passthrough"}},
    ])
}

fn node_port_annotation(node_port: bool, annotations: &mut serde_json::Map<String, Value>) {
    if node_port {
        annotations.insert(
            ANNOTATION_DATA_PLANE_SERVICE_TYPE.into(),
            Value::String("NodePort".into()),
        );
    }
}

/// A cluster's east-west Gateway (`expose`). Its address is the deployed gateway's,
/// reported by istiod in the status.
pub fn eastwest_gateway(namespace: &str, network: &str, node_port: bool) -> Value {
    let mut annotations = serde_json::Map::new();
    node_port_annotation(node_port, &mut annotations);
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": EASTWEST_GATEWAY,
            "namespace": namespace,
            "labels": {
                LABEL_NETWORK: network,
                LABEL_EXPOSE_ISTIOD: XDS_TLS_PORT.to_string(),
            },
            "annotations": annotations,
        },
        "spec": {
            "gatewayClassName": GATEWAY_CLASS_EASTWEST,
            "listeners": listeners(),
        },
    })
}

/// The Gateway by which a cluster peers with `target`.
pub fn peer_gateway(namespace: &str, target: &ClusterEndpoint) -> Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        ANNOTATION_SERVICE_ACCOUNT.into(),
        Value::String(EASTWEST_SERVICE_ACCOUNT.into()),
    );
    annotations.insert(
        ANNOTATION_TRUST_DOMAIN.into(),
        Value::String(target.trust_domain.clone()),
    );
    node_port_annotation(target.node_port, &mut annotations);
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": peer_gateway_name(&target.cluster),
            "namespace": namespace,
            "labels": {
                LABEL_CLUSTER: target.cluster,
                LABEL_NETWORK: target.network,
            },
            "annotations": annotations,
        },
        "spec": {
            "gatewayClassName": GATEWAY_CLASS_REMOTE,
            "addresses": [{
                "type": target.address.type_.clone().unwrap_or_else(|| "IPAddress".into()),
                "value": target.address.value,
            }],
            "listeners": listeners(),
        },
    })
}

/// One YAML document of a `--dry-run`, headed by where it would be written.
pub fn dry_run_document(context: &str, object: &Value) -> anyhow::Result<String> {
    let yaml = yaml_serde::to_string(object)?;
    Ok(format!("---\n# context {context}\n{yaml}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::gateways::parse_peer_gateway;
    use crate::kube::types::{Gateway, GatewayAddress};

    fn target(node_port: bool) -> ClusterEndpoint {
        ClusterEndpoint {
            context: "ctx-2".into(),
            cluster: "c2".into(),
            network: "net2".into(),
            trust_domain: "c2.example".into(),
            address: GatewayAddress {
                type_: Some("Hostname".into()),
                value: "ew.c2.example.com".into(),
            },
            node_port,
            namespace_uid: None,
        }
    }

    #[test]
    fn a_rendered_peer_gateway_is_what_peerd_reads() {
        let object = peer_gateway("istio-eastwest", &target(true));
        let gateway: Gateway = serde_json::from_value(object).unwrap();
        let spec = parse_peer_gateway(&gateway, "c1").unwrap();
        assert_eq!(spec.cluster, "c2");
        assert_eq!(spec.network, "net2");
        assert_eq!(spec.trust_domain, "c2.example");
        assert!(spec.prefers_node_port);
        assert_eq!(
            gateway.metadata.name.as_deref(),
            Some("istio-remote-peer-c2")
        );
    }

    #[test]
    fn the_eastwest_gateway_exposes_istiod_on_its_network() {
        let object = eastwest_gateway("istio-eastwest", "net1", false);
        assert_eq!(object["metadata"]["labels"][LABEL_NETWORK], "net1");
        assert_eq!(object["metadata"]["labels"][LABEL_EXPOSE_ISTIOD], "15012");
        assert_eq!(object["spec"]["gatewayClassName"], GATEWAY_CLASS_EASTWEST);
        assert_eq!(object["spec"]["listeners"].as_array().unwrap().len(), 2);
        assert!(
            object["metadata"]["annotations"]
                .get(ANNOTATION_DATA_PLANE_SERVICE_TYPE)
                .is_none()
        );
        let node_port = eastwest_gateway("istio-eastwest", "net1", true);
        assert_eq!(
            node_port["metadata"]["annotations"][ANNOTATION_DATA_PLANE_SERVICE_TYPE],
            "NodePort"
        );
    }
}
