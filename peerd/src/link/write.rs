//! The writes of `expose`, `link` and `unlink`: a Gateway is applied (server-side apply,
//! field manager `peerd`, forced: the operator's command decides what the fields say)
//! only when the live object differs from the rendered one in a field peerd owns, so a
//! second run writes nothing; a peer Gateway is deleted only if it is one (class
//! `istio-remote`).
//!
//! Must never touch a Gateway's status or a field it does not render.

use std::fmt;

use anyhow::Context;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::render::{OWNED_ANNOTATIONS, OWNED_LABELS};
use crate::kube::types::{FIELD_MANAGER, GATEWAY_CLASS_REMOTE, Gateway};

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    Unchanged,
    Deleted,
    Absent,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Written::Created => "created",
            Written::Updated => "updated",
            Written::Unchanged => "unchanged",
            Written::Deleted => "deleted",
            Written::Absent => "absent (nothing to delete)",
        })
    }
}

fn gateways(client: &kube::Client, namespace: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::erase::<Gateway>(&()),
    )
}

/// `desired` is contained in `live`: every object key with a contained value, lists of
/// equal length item by item, scalars equal. (The API server may add defaults; they do
/// not count as a difference.)
pub fn contained(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| contained(v, lv))),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| contained(dv, lv))
        }
        _ => desired == live,
    }
}

/// The live object already says what `desired` says: its spec and peerd's labels and
/// annotations, including the absence of an owned key `desired` leaves out.
pub fn up_to_date(desired: &Value, live: &Value) -> bool {
    let owned_absent_agree = |section: &str, keys: &[&str]| {
        keys.iter().all(|key| {
            let d = desired
                .pointer(&format!("/metadata/{section}"))
                .and_then(|m| m.get(*key));
            let l = live
                .pointer(&format!("/metadata/{section}"))
                .and_then(|m| m.get(*key));
            d.is_some() || l.is_none()
        })
    };
    let in_desired = |path: &str| desired.pointer(path).cloned().unwrap_or(Value::Null);
    let in_live = |path: &str| live.pointer(path).cloned().unwrap_or(Value::Null);
    contained(&in_desired("/spec"), &in_live("/spec"))
        && contained(
            &in_desired("/metadata/labels"),
            &in_live("/metadata/labels"),
        )
        && contained(
            &in_desired("/metadata/annotations"),
            &in_live("/metadata/annotations"),
        )
        && owned_absent_agree("labels", &OWNED_LABELS)
        && owned_absent_agree("annotations", &OWNED_ANNOTATIONS)
}

/// Applies the Gateway `desired` (its metadata names it) unless it is up to date.
pub async fn apply_gateway(client: &kube::Client, desired: &Value) -> anyhow::Result<Written> {
    let name = desired
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .context("rendered Gateway has no name")?;
    let namespace = desired
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .context("rendered Gateway has no namespace")?;
    let api = gateways(client, namespace);
    let live = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Gateway {namespace}/{name}"))?;
    let written = match &live {
        Some(live) => {
            let live = serde_json::to_value(live).context("encoding the live Gateway")?;
            if up_to_date(desired, &live) {
                return Ok(Written::Unchanged);
            }
            Written::Updated
        }
        None => Written::Created,
    };
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await
    .with_context(|| format!("applying Gateway {namespace}/{name}"))?;
    Ok(written)
}

/// Deletes the peer Gateway `namespace/name` if it exists and is one.
pub async fn delete_peer_gateway(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Written> {
    let api = gateways(client, namespace);
    let Some(live) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading Gateway {namespace}/{name}"))?
    else {
        return Ok(Written::Absent);
    };
    let class = live
        .data
        .pointer("/spec/gatewayClassName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if class != GATEWAY_CLASS_REMOTE {
        anyhow::bail!(
            "Gateway {namespace}/{name} has class {}, not {GATEWAY_CLASS_REMOTE:?}: not deleting it",
            super::shown(class)
        );
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(Written::Deleted),
        // Deleted meanwhile: the outcome the command wants.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Written::Absent),
        Err(e) => Err(e).with_context(|| format!("deleting Gateway {namespace}/{name}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn defaults_added_by_the_server_are_no_difference() {
        let desired = json!({"metadata": {"labels": {"a": "1"}},
                             "spec": {"listeners": [{"name": "x", "port": 1}]}});
        let live = json!({"metadata": {"labels": {"a": "1", "other": "kept"}, "uid": "u"},
                          "spec": {"listeners": [{"name": "x", "port": 1,
                                                  "allowedRoutes": {"namespaces": {"from": "Same"}}}]},
                          "status": {"conditions": []}});
        assert!(up_to_date(&desired, &live));
    }

    #[test]
    fn a_changed_value_or_a_left_over_owned_key_is_a_difference() {
        let desired = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"addresses": [{"value": "1.1.1.1"}]}});
        let moved = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"addresses": [{"value": "2.2.2.2"}]}});
        assert!(!up_to_date(&desired, &moved));
        let left_over = json!({"metadata": {"labels": {"a": "1"},
                                            "annotations": {"peering.solo.io/preferred-data-plane-service-type": "NodePort"}},
                               "spec": {"addresses": [{"value": "1.1.1.1"}]}});
        assert!(!up_to_date(&desired, &left_over));
    }
}
