//! Server-side printing: `meta.k8s.io/v1` `Table` responses for `kubectl get`.
//!
//! Owns the columns shown per type (Name, a few type-specific columns like the real
//! printers / CRD printer columns, Age) and the row objects (`includeObject`). It must
//! never be used for anything but a GET whose Accept header asks for `as=Table`.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use serde_json::{Value, json};

use super::meta;
use super::resources::ResourceDef;

/// Whether the Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .any(|part| part.contains("as=Table") && part.contains("g=meta.k8s.io"))
}

type Cell = fn(&Value) -> Value;

fn string_at(obj: &Value, pointer: &str) -> Value {
    obj.pointer(pointer)
        .cloned()
        .unwrap_or(Value::String(String::new()))
}

fn condition_status(obj: &Value, condition: &str) -> Value {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == condition))
        .map(|c| c["status"].clone())
        .unwrap_or(json!("Unknown"))
}

fn joined(obj: &Value, pointer: &str) -> Value {
    let items: Vec<String> = obj
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    Value::String(items.join(","))
}

/// Type-specific columns between Name and Age.
fn extra_columns(def: &ResourceDef) -> Vec<(&'static str, Cell)> {
    match (def.group, def.plural) {
        ("gateway.networking.k8s.io", "gateways") => vec![
            ("Class", |o| string_at(o, "/spec/gatewayClassName")),
            ("Address", |o| string_at(o, "/status/addresses/0/value")),
            ("Programmed", |o| condition_status(o, "Programmed")),
        ],
        ("networking.istio.io", "workloadentries") => {
            vec![("Address", |o| string_at(o, "/spec/address"))]
        }
        ("networking.istio.io", "serviceentries") => vec![
            ("Hosts", |o| joined(o, "/spec/hosts")),
            ("Location", |o| string_at(o, "/spec/location")),
            ("Resolution", |o| string_at(o, "/spec/resolution")),
        ],
        ("coordination.k8s.io", "leases") => {
            vec![("Holder", |o| string_at(o, "/spec/holderIdentity"))]
        }
        ("", "services") => vec![
            ("Type", |o| string_at(o, "/spec/type")),
            ("Cluster-IP", |o| string_at(o, "/spec/clusterIP")),
        ],
        ("", "namespaces") => vec![("Status", |o| string_at(o, "/status/phase"))],
        ("", "pods") => vec![("Status", |o| string_at(o, "/status/phase"))],
        ("", "configmaps") => vec![("Data", |o| {
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |d| d.len())
            )
        })],
        _ => Vec::new(),
    }
}

/// `5s`, `3m`, `2h`, `4d` since an RFC 3339 timestamp.
fn age(obj: &Value) -> Value {
    let Some(created) = meta::meta_str(obj, "creationTimestamp").and_then(parse_rfc3339) else {
        return json!("<unknown>");
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let secs = now.saturating_sub(created);
    let text = match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    json!(text)
}

/// Seconds since the epoch of an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SSZ`).
fn parse_rfc3339(text: &str) -> Option<u64> {
    let at: Timestamp = text.parse().ok()?;
    u64::try_from(at.as_second()).ok()
}

fn row_object(obj: &Value, include: &str) -> Option<Value> {
    match include {
        "None" => None,
        "Object" => Some(obj.clone()),
        _ => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        })),
    }
}

/// A Table of `objects` (already in the requested version).
pub fn table(
    def: &ResourceDef,
    objects: &[Value],
    resource_version: &str,
    include_object: &str,
) -> Value {
    let extra = extra_columns(def);
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}),
    ];
    for (name, _) in &extra {
        columns.push(json!({"name": name, "type": "string", "format": "", "description": name, "priority": 0}));
    }
    columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "Time since creation", "priority": 0}));
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![json!(meta::name(obj))];
            cells.extend(extra.iter().map(|(_, cell)| cell(obj)));
            cells.push(age(obj));
            let mut row = json!({"cells": cells});
            if let (Some(object), Value::Object(map)) = (row_object(obj, include_object), &mut row)
            {
                map.insert("object".into(), object);
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::resources::{RESOURCES, find};

    #[test]
    fn recognises_kubectl_accept_header() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn timestamps_round_trip() {
        for secs in [0, 951_782_400, 1_798_761_599] {
            assert_eq!(parse_rfc3339(&meta::format_rfc3339(secs)), Some(secs));
        }
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn gateway_rows_show_class_and_programmed() {
        let def = &RESOURCES[find("gateway.networking.k8s.io", "v1", "gateways").unwrap()];
        let gw = json!({"metadata": {"name": "east", "namespace": "istio-system", "creationTimestamp": meta::now_rfc3339()},
            "spec": {"gatewayClassName": "istio-remote"},
            "status": {"conditions": [{"type": "Programmed", "status": "True"}]}});
        let t = table(def, &[gw], "7", "Metadata");
        assert_eq!(t["rows"][0]["cells"][0], "east");
        assert_eq!(t["rows"][0]["cells"][1], "istio-remote");
        assert_eq!(t["rows"][0]["cells"][3], "True");
        assert_eq!(
            t["rows"][0]["object"]["metadata"]["namespace"],
            "istio-system"
        );
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 5);
    }
}
