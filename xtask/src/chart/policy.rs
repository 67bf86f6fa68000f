//! Policy checks on rendered objects: RBAC without wildcards and with writes only where
//! peerd owns the objects, the pod-security promises of docs/deploy.md, and known keys in
//! the peerd config file a ConfigMap carries. Pure functions: objects in, problems out.

use serde_json::{Value, json};

use super::object_key;

/// Resources peerd may write, and which write verbs (everything else: read-only).
const WRITABLE: &[(&str, &str, &[&str])] = &[
    (
        "networking.istio.io",
        "workloadentries",
        &["create", "update", "patch", "delete"],
    ),
    (
        "networking.istio.io",
        "serviceentries",
        &["create", "update", "patch", "delete"],
    ),
    (
        "gateway.networking.k8s.io",
        "gateways/status",
        &["patch", "update"],
    ),
    (
        "coordination.k8s.io",
        "leases",
        &["create", "update", "patch"],
    ),
    ("authentication.k8s.io", "tokenreviews", &["create"]),
];

const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// No wildcards; writes only where peerd owns the objects.
pub(super) fn check_rbac(source: &str, objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or("");
        if kind != "ClusterRole" && kind != "Role" {
            continue;
        }
        let key = object_key(o);
        if o.get("aggregationRule").is_some() {
            problems.push(format!(
                "{source}: {key}: aggregationRule grants unknown rules"
            ));
        }
        for (i, rule) in o["rules"].as_array().into_iter().flatten().enumerate() {
            let list = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            };
            for field in [
                "verbs",
                "resources",
                "apiGroups",
                "resourceNames",
                "nonResourceURLs",
            ] {
                for s in list(field) {
                    if s.contains('*') {
                        problems.push(format!(
                            "{source}: {key}: rules[{i}].{field} has wildcard {s:?}"
                        ));
                    }
                }
            }
            if rule.get("nonResourceURLs").is_some() {
                problems.push(format!(
                    "{source}: {key}: rules[{i}] grants nonResourceURLs"
                ));
            }
            for group in list("apiGroups") {
                for resource in list("resources") {
                    let allowed: Vec<&str> = WRITABLE
                        .iter()
                        .filter(|(g, r, _)| *g == group && *r == resource)
                        .flat_map(|(_, _, verbs)| verbs.iter().copied())
                        .collect();
                    for verb in list("verbs") {
                        if !READ_VERBS.contains(&verb.as_str()) && !allowed.contains(&verb.as_str())
                        {
                            problems.push(format!(
                                "{source}: {key}: rules[{i}] grants {verb} on {group}/{resource}, which peerd does not own"
                            ));
                        }
                    }
                    if resource == "secrets" {
                        problems.push(format!(
                            "{source}: {key}: rules[{i}] grants access to secrets"
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// The peerd config file inside each ConfigMap parses as YAML with only known top-level
/// keys (the full schema check is the peerd test `deploy_config`).
pub(super) fn check_config_maps(source: &str, objects: &[Value]) -> Vec<String> {
    const KEYS: &[&str] = &[
        "cluster",
        "network",
        "trustDomain",
        "peeringNamespace",
        "controlNamespace",
        "flatNetworks",
        "sandboxMode",
        "disconnectGracePeriod",
        "stateDir",
        "memoryBudgetBytes",
        "listeners",
        "xds",
        "upstreams",
        "peers",
        "export",
        "hysteresis",
        "probe",
        "telemetry",
        "kubernetes",
    ];
    let mut problems = Vec::new();
    for o in objects.iter().filter(|o| o["kind"] == "ConfigMap") {
        let Some(text) = o["data"]["config.yaml"].as_str() else {
            continue;
        };
        match yaml_serde::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                for k in map.keys().filter(|k| !KEYS.contains(&k.as_str())) {
                    problems.push(format!(
                        "{source}: {}: unknown config key {k}",
                        object_key(o)
                    ));
                }
            }
            Ok(_) => problems.push(format!(
                "{source}: {}: config.yaml is not a map",
                object_key(o)
            )),
            Err(e) => problems.push(format!("{source}: {}: config.yaml: {e}", object_key(o))),
        }
    }
    problems
}

/// The pod security promises of docs/deploy.md.
pub(super) fn check_security(ebpf: &[Value], no_ebpf: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let container = |objects: &[Value]| -> Option<Value> {
        objects
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .map(|ds| ds["spec"]["template"]["spec"]["containers"][0].clone())
    };
    for (label, objects, caps, non_root) in [
        ("eBPF", ebpf, json!(["BPF", "PERFMON"]), false),
        ("no eBPF", no_ebpf, Value::Null, true),
    ] {
        let Some(c) = container(objects) else {
            problems.push(format!("{label}: no DaemonSet container"));
            continue;
        };
        let sc = &c["securityContext"];
        let expect = [
            ("privileged", json!(false)),
            ("allowPrivilegeEscalation", json!(false)),
            ("readOnlyRootFilesystem", json!(true)),
            ("runAsNonRoot", json!(non_root)),
        ];
        for (field, want) in expect {
            if sc[field] != want {
                problems.push(format!(
                    "{label}: securityContext.{field} = {}, want {want}",
                    sc[field]
                ));
            }
        }
        if sc["capabilities"]["drop"] != json!(["ALL"]) {
            problems.push(format!("{label}: capabilities.drop must be [ALL]"));
        }
        if sc["capabilities"]["add"] != caps {
            problems.push(format!(
                "{label}: capabilities.add = {}, want {caps}",
                sc["capabilities"]["add"]
            ));
        }
        let host_paths = objects
            .iter()
            .filter(|o| o["kind"] == "DaemonSet")
            .flat_map(|ds| {
                ds["spec"]["template"]["spec"]["volumes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|v| v.get("hostPath").is_some())
            .count();
        if non_root && host_paths > 0 {
            problems.push(format!("{label}: hostPath volumes without eBPF"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rbac_wildcards_and_foreign_writes_are_reported() {
        let role = json!({"kind": "ClusterRole", "metadata": {"name": "x"}, "rules": [
            {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["delete"]},
            {"apiGroups": ["networking.istio.io"], "resources": ["workloadentries"], "verbs": ["create", "list"]},
        ]});
        let problems = check_rbac("t", &[role]);
        let text = problems.join("\n");
        assert!(text.contains("apiGroups has wildcard \"*\""), "{text}");
        assert!(text.contains("verbs has wildcard \"*\""), "{text}");
        assert!(text.contains("grants delete on /services"), "{text}");
        assert!(text.contains("access to secrets"), "{text}");
        assert!(!text.contains("workloadentries"), "{text}");
    }

    fn daemonset(security: Value, host_path: bool) -> Value {
        let volumes = if host_path {
            json!([{"name": "t", "hostPath": {"path": "/sys/kernel/tracing"}}])
        } else {
            json!([])
        };
        json!({"kind": "DaemonSet", "spec": {"template": {"spec": {
            "containers": [{"securityContext": security}], "volumes": volumes}}}})
    }

    #[test]
    fn security_promises_are_enforced() {
        let good_ebpf = json!({"privileged": false, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "runAsNonRoot": false,
            "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON"]}});
        let good_plain = json!({"privileged": false, "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true, "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]}});
        let ok = check_security(
            &[daemonset(good_ebpf.clone(), true)],
            &[daemonset(good_plain.clone(), false)],
        );
        assert!(ok.is_empty(), "{ok:?}");

        let mut extra_cap = good_ebpf.clone();
        extra_cap["capabilities"]["add"] = json!(["BPF", "PERFMON", "SYS_ADMIN"]);
        let mut privileged = good_plain.clone();
        privileged["privileged"] = json!(true);
        let bad = check_security(
            &[daemonset(extra_cap, true)],
            &[daemonset(privileged, true)],
        );
        let text = bad.join("\n");
        assert!(text.contains("capabilities.add"), "{text}");
        assert!(text.contains("securityContext.privileged"), "{text}");
        assert!(text.contains("hostPath volumes without eBPF"), "{text}");
    }

    #[test]
    fn unknown_config_keys_are_reported() {
        let cm = json!({"kind": "ConfigMap", "metadata": {"name": "c"},
            "data": {"config.yaml": "cluster: a\nclustr: b\n"}});
        let problems = check_config_maps("t", &[cm]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("unknown config key clustr"));
    }
}
