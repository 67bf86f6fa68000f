//! Discovery documents: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>`,
//! `/apis/<g>/<v>`.
//!
//! Owns the legacy JSON forms (`APIVersions`, `APIGroupList`, `APIGroup`,
//! `APIResourceList`). Aggregated discovery (`apidiscovery.k8s.io/v2`) is deliberately not
//! served: clients that prefer it (kubectl 1.32) also accept plain `application/json` and
//! fall back. It must never list a resource the catalog does not serve.

use serde_json::{Value, json};

use super::resources::{self, ResourceDef};

/// The Kubernetes version the emulator claims to be.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-peerd-emulator",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "none (emulated)",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

pub fn group_list() -> Value {
    let groups: Vec<Value> = resources::groups()
        .iter()
        .map(|(group, versions)| group_json(group, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, or None for an unknown group.
pub fn group(name: &str) -> Option<Value> {
    resources::groups()
        .into_iter()
        .find(|(group, _)| *group == name)
        .map(|(group, versions)| {
            let mut doc = group_json(group, &versions);
            if let Value::Object(map) = &mut doc {
                map.insert("kind".into(), json!("APIGroup"));
                map.insert("apiVersion".into(), json!("v1"));
            }
            doc
        })
}

fn resource_json(def: &ResourceDef) -> Value {
    let mut doc = json!({
        "name": def.plural,
        "singularName": def.singular,
        "namespaced": def.namespaced,
        "kind": def.kind,
        "verbs": def.verbs(),
    });
    if let Value::Object(map) = &mut doc {
        if !def.short_names.is_empty() {
            map.insert("shortNames".into(), json!(def.short_names));
        }
        if !def.categories.is_empty() {
            map.insert("categories".into(), json!(def.categories));
        }
    }
    doc
}

/// `/api/v1` or `/apis/<group>/<version>`, or None if nothing is served there.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut list = Vec::new();
    for def in resources::in_group_version(group, version) {
        list.push(resource_json(def));
        if def.status_subresource {
            list.push(json!({
                "name": format!("{}/status", def.plural),
                "singularName": "",
                "namespaced": def.namespaced,
                "kind": def.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_list_names_every_group_with_preferred_version() {
        let doc = group_list();
        let istio = doc["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["name"] == "networking.istio.io")
            .unwrap();
        assert_eq!(
            istio["preferredVersion"]["groupVersion"],
            "networking.istio.io/v1"
        );
        assert_eq!(istio["versions"][1]["version"], "v1beta1");
        assert!(group("nope.example.com").is_none());
    }

    #[test]
    fn resource_lists_include_status_subresources() {
        let doc = resource_list("gateway.networking.k8s.io", "v1").unwrap();
        let names: Vec<&str> = doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["gateways", "gateways/status"]);
        let core = resource_list("", "v1").unwrap();
        assert_eq!(core["groupVersion"], "v1");
        assert!(resource_list("", "v2").is_none());
    }
}
