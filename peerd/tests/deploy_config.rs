//! The peerd configuration files that deploy/ ships (the Kustomize base's ConfigMap, which
//! `cargo xtask chart` keeps equal to the Helm chart's default rendering, and the example
//! overlay's config.yaml) are accepted by peerd's own schema and validator.
//!
//! The files name certificate paths inside the pod (/etc/peerd/…, /var/run/secrets/…);
//! those "does not exist" errors are the only ones tolerated here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::{Path, PathBuf};

use peerd::config::{Config, ConfigError, Env, Overrides, resolve};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("peerd/ has a parent")
        .to_path_buf()
}

/// `data["config.yaml"]` of the ConfigMap in `path`.
fn config_map_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read ConfigMap");
    let cm: yaml_serde::Value = yaml_serde::from_str(&text).expect("ConfigMap YAML");
    cm["data"]["config.yaml"]
        .as_str()
        .expect("data.config.yaml")
        .to_string()
}

/// Validates `text`; returns the errors that are not about in-pod files being absent here.
fn validate(text: &str) -> (Option<Config>, Vec<String>) {
    let file = Config::parse_file(text).expect("schema (unknown keys, types)");
    match resolve(file, &Env::default(), &Overrides::default(), None) {
        Ok(config) => (Some(config), Vec::new()),
        Err(ConfigError::Invalid(errors)) => (
            None,
            errors
                .iter()
                .filter(|e| {
                    let in_pod = ["/etc/peerd/", "/var/run/secrets/"]
                        .iter()
                        .any(|p| e.message.contains(p));
                    !(in_pod && e.message.contains("does not exist"))
                })
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        ),
        Err(other) => (None, vec![other.to_string()]),
    }
}

#[test]
fn kustomize_base_config_is_valid() {
    let text = config_map_text(&repo().join("deploy/kustomize/base/configmap.yaml"));
    let (_, errors) = validate(&text);
    assert!(
        errors.is_empty(),
        "deploy/kustomize/base config: {errors:#?}"
    );
    let file = Config::parse_file(&text).unwrap();
    assert_eq!(file.peering_namespace.as_deref(), Some("istio-eastwest"));
    assert_eq!(file.control_namespace.as_deref(), Some("istio-system"));
    assert_eq!(
        file.upstreams[0].name, file.cluster,
        "the local istiod upstream is named like the cluster"
    );
}

#[test]
fn example_overlay_config_is_valid() {
    let text =
        std::fs::read_to_string(repo().join("deploy/kustomize/overlays/example/config.yaml"))
            .unwrap();
    let (_, errors) = validate(&text);
    assert!(errors.is_empty(), "overlay config: {errors:#?}");
    let file = Config::parse_file(&text).unwrap();
    assert_eq!(file.flat_networks, Some(true));
    assert_eq!(file.network.as_deref(), Some("net-east"));
}

#[test]
fn in_pod_paths_are_the_only_tolerated_errors() {
    // A real problem in the same file is still reported.
    let text = config_map_text(&repo().join("deploy/kustomize/base/configmap.yaml"))
        .replace("failureWindow: \"30s\"", "failureWindow: \"soon\"");
    let (_, errors) = validate(&text);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("hysteresis.failureWindow")),
        "{errors:#?}"
    );
}
