//! Kubernetes `Status` error objects.
//!
//! Owns the mapping from emulator failures to the HTTP code, `reason` and message text a
//! real API server returns, so clients (kube-rs, kubectl) take the same code paths. It must
//! never decide *whether* something fails: handlers do.

use serde_json::{Value, json};

use super::resources::ResourceDef;

/// A request failure rendered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, def: &ResourceDef, name: &str) -> Self {
        self.details = Some(json!({"name": name, "group": def.group, "kind": def.plural}));
        self
    }

    pub fn not_found(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", def.qualified_plural()),
        )
        .with_details(def, name)
    }

    pub fn namespace_not_found(namespace: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("namespaces \"{namespace}\" not found"),
        )
        .with_details(
            &super::resources::RESOURCES[super::resources::NAMESPACES],
            namespace,
        )
    }

    pub fn already_exists(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", def.qualified_plural()),
        )
        .with_details(def, name)
    }

    /// Optimistic-concurrency failure (stale `resourceVersion` or injected conflict).
    pub fn conflict(def: &ResourceDef, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                def.qualified_plural()
            ),
        )
        .with_details(def, name)
    }

    /// Server-side apply conflicts; `conflicts` are (manager, field path) pairs.
    pub fn apply_conflict(
        def: &ResourceDef,
        name: &str,
        api_version: &str,
        conflicts: &[(String, String)],
    ) -> Self {
        let mut managers: Vec<&str> = conflicts.iter().map(|(m, _)| m.as_str()).collect();
        managers.dedup();
        let message = if conflicts.len() == 1 {
            let (manager, field) = &conflicts[0];
            format!(
                "Apply failed with 1 conflict: conflict with \"{manager}\" using {api_version}: {field}"
            )
        } else {
            let mut text = format!("Apply failed with {} conflicts:", conflicts.len());
            for manager in &managers {
                text.push_str(&format!(
                    " conflicts with \"{manager}\" using {api_version}:"
                ));
                for (_, field) in conflicts.iter().filter(|(m, _)| m == manager) {
                    text.push_str(&format!("\n- {field}"));
                }
            }
            text
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, field)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with \"{manager}\" using {api_version}"),
                    "field": field,
                })
            })
            .collect();
        let mut err = Self::new(409, "Conflict", message).with_details(def, name);
        if let Some(Value::Object(details)) = err.details.as_mut() {
            details.insert("causes".into(), Value::Array(causes));
        }
        err
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn invalid(def: &ResourceDef, name: &str, message: impl Into<String>) -> Self {
        let kind = if def.group.is_empty() {
            def.kind.to_string()
        } else {
            format!("{}.{}", def.kind, def.group)
        };
        Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {}", message.into()),
        )
        .with_details(def, name)
    }

    /// A resourceVersion or continue token older than the retained history.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
    }

    /// A create/update body that is neither JSON nor YAML (e.g. kubectl's protobuf for
    /// core types: the emulator has no protobuf codec).
    pub fn unsupported_body_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}) - accepted \
                 media types include: application/json, application/yaml"
            ),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type:?}) - accepted \
                 media types include: application/json-patch+json, \
                 application/merge-patch+json, application/apply-patch+yaml"
            ),
        )
    }

    pub fn path_not_found(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    /// A fault injected on purpose; `code` is any 5xx.
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self::new(code, reason, format!("injected fault: HTTP {code}"))
    }

    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(details), Value::Object(map)) = (&self.details, &mut status) {
            map.insert("details".into(), details.clone());
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// A `Status` object for a successful operation that has no object to return.
pub fn success(def: &ResourceDef, name: &str, uid: Option<&str>) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {"name": name, "group": def.group, "kind": def.plural, "uid": uid},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::resources::{RESOURCES, find};

    #[test]
    fn not_found_matches_kubernetes_wording() {
        let gateways = &RESOURCES[find("gateway.networking.k8s.io", "v1", "gateways").unwrap()];
        let status = ApiError::not_found(gateways, "east").to_status();
        assert_eq!(status["code"], 404);
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(
            status["message"],
            "gateways.gateway.networking.k8s.io \"east\" not found"
        );
        assert_eq!(status["details"]["kind"], "gateways");
    }

    #[test]
    fn invalid_names_the_kind_and_group() {
        let gateways = &RESOURCES[find("gateway.networking.k8s.io", "v1", "gateways").unwrap()];
        let err = ApiError::invalid(gateways, "X", "metadata.name: Invalid value");
        assert_eq!(
            err.message,
            "Gateway.gateway.networking.k8s.io \"X\" is invalid: metadata.name: Invalid value"
        );
        let configmaps = &RESOURCES[find("", "v1", "configmaps").unwrap()];
        let err = ApiError::invalid(configmaps, "X", "bad");
        assert_eq!(err.message, "ConfigMap \"X\" is invalid: bad");
    }

    #[test]
    fn apply_conflict_names_the_manager_and_field() {
        let gateways = &RESOURCES[find("gateway.networking.k8s.io", "v1", "gateways").unwrap()];
        let err = ApiError::apply_conflict(
            gateways,
            "east",
            "gateway.networking.k8s.io/v1",
            &[("other".into(), ".spec.gatewayClassName".into())],
        );
        assert_eq!(err.code, 409);
        assert!(
            err.message.contains("conflict with \"other\""),
            "{}",
            err.message
        );
        assert!(err.message.contains(".spec.gatewayClassName"));
        let status = err.to_status();
        assert_eq!(
            status["details"]["causes"][0]["field"],
            ".spec.gatewayClassName"
        );
    }
}
