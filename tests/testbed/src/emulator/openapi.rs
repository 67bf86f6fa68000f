//! A minimal OpenAPI v3 surface: `/openapi/v3` and `/openapi/v3/<api|apis/g>/<v>`.
//!
//! kubectl 1.32 (`create`, `apply`) asks it whether an endpoint supports the
//! `fieldValidation` query parameter; when it does, kubectl leaves validation to the
//! server instead of downloading schemas. So each served type gets its paths with the
//! query parameters the emulator understands and an object schema that preserves unknown
//! fields. It must never claim a schema it does not enforce: objects stay schema-free.

use serde_json::{Map, Value, json};

use super::resources::{self, ResourceDef};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every group-version served: core first, then groups in catalog order.
fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out = vec![("", "v1")];
    for (group, versions) in resources::groups() {
        out.extend(versions.into_iter().map(|v| (group, v)));
    }
    out
}

/// `/openapi/v3`: one entry per group-version.
pub fn root() -> Value {
    let paths: Map<String, Value> = group_versions()
        .into_iter()
        .map(|(group, version)| {
            let path = gv_path(group, version);
            let url = format!("/openapi/v3/{path}");
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn operation(def: &ResourceDef, version: &str, action: &str, params: &[&str]) -> Value {
    json!({
        "operationId": format!("{action}{}", def.kind),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": def.group, "version": version, "kind": def.kind},
        "parameters": params.iter().map(|p| query_param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}},
    })
}

/// `/openapi/v3/<api/v1 | apis/g/v>`, or None for an unknown group-version.
pub fn group_version(path: &str) -> Option<Value> {
    let (group, version) = group_versions()
        .into_iter()
        .find(|(group, version)| gv_path(group, version) == path)?;
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let write_params = ["dryRun", "fieldManager", "fieldValidation"];
    let patch_params = ["dryRun", "fieldManager", "fieldValidation", "force"];
    for def in resources::in_group_version(group, version) {
        let base = if def.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                def.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, version), def.plural)
        };
        let mut collection = json!({"post": operation(def, version, "post", &write_params)});
        if !def.create_only
            && let Value::Object(map) = &mut collection
        {
            map.insert(
                "get".into(),
                operation(
                    def,
                    version,
                    "list",
                    &[
                        "labelSelector",
                        "fieldSelector",
                        "limit",
                        "continue",
                        "resourceVersion",
                        "watch",
                    ],
                ),
            );
            map.insert(
                "delete".into(),
                operation(
                    def,
                    version,
                    "deletecollection",
                    &["labelSelector", "fieldSelector", "dryRun"],
                ),
            );
        }
        paths.insert(base.clone(), collection);
        if !def.create_only {
            paths.insert(
                format!("{base}/{{name}}"),
                json!({
                    "get": operation(def, version, "get", &[]),
                    "put": operation(def, version, "put", &write_params),
                    "patch": operation(def, version, "patch", &patch_params),
                    "delete": operation(def, version, "delete", &["dryRun"]),
                }),
            );
        }
        let schema_name = format!(
            "{}.{}.{}",
            if def.group.is_empty() {
                "io.k8s.api.core"
            } else {
                def.group
            },
            version,
            def.kind
        );
        schemas.insert(
            schema_name,
            json!({
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-group-version-kind": [{"group": def.group, "version": version, "kind": def.kind}],
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "peerd emulated API server", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_lists_every_group_version() {
        let doc = root();
        assert_eq!(
            doc["paths"]["api/v1"]["serverRelativeURL"],
            "/openapi/v3/api/v1"
        );
        assert!(doc["paths"]["apis/networking.istio.io/v1beta1"].is_object());
    }

    #[test]
    fn patch_operations_declare_field_validation() {
        let doc = group_version("apis/networking.istio.io/v1").unwrap();
        let patch = &doc["paths"]["/apis/networking.istio.io/v1/namespaces/{namespace}/workloadentries/{name}"]
            ["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "WorkloadEntry"
        );
        let params: Vec<&str> = patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert!(params.contains(&"fieldValidation"));
        assert!(group_version("apis/nope/v1").is_none());
    }
}
