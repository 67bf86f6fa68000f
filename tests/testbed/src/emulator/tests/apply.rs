//! Server-side apply over HTTP: managedFields, no-op re-apply, conflicts, force, removal,
//! status subresource.

use serde_json::{Value, json};

use super::{GW, WE, gateway, rv, start, workload_entry};

const APPLY: &str = "application/apply-patch+yaml";

fn managers(obj: &Value) -> Vec<(String, String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap().to_string(),
                        e["operation"].as_str().unwrap().to_string(),
                        e["subresource"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn apply_creates_then_reapply_is_a_no_op() {
    let (emu, client) = start().await;
    let config = workload_entry(
        "we",
        "10.0.0.1",
        json!({"app.kubernetes.io/managed-by": "peerd"}),
    );
    let path = format!("{WE}/we?fieldManager=peerd");
    let created = client.patch(&path, APPLY, &config.to_string()).await;
    assert_eq!(created.status, 201);
    assert_eq!(
        managers(&created.body),
        [("peerd".into(), "Apply".into(), String::new())]
    );
    let fields = &created.body["metadata"]["managedFields"][0]["fieldsV1"];
    assert_eq!(fields["f:spec"]["f:address"], json!({}));
    assert_eq!(
        fields["f:metadata"]["f:labels"]["f:app.kubernetes.io/managed-by"],
        json!({})
    );
    assert_eq!(created.body["metadata"]["generation"], 1);

    let mut stale = config.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    assert_eq!(
        client.patch(&path, APPLY, &stale.to_string()).await.status,
        409,
        "resourceVersion is a precondition"
    );

    let rv_before = emu.resource_version();
    let again = client.patch(&path, APPLY, &config.to_string()).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        rv(&again.body),
        rv(&created.body),
        "identical apply: no new resourceVersion"
    );
    assert_eq!(
        emu.resource_version(),
        rv_before,
        "identical apply: nothing written"
    );

    // YAML bodies work too (kubectl and kube-rs send JSON, which is YAML).
    let yaml = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: we\n  namespace: istio-system\n  labels:\n    app.kubernetes.io/managed-by: peerd\nspec:\n  address: 10.0.0.2\n  network: net2\n";
    let changed = client.patch(&path, APPLY, yaml).await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body["spec"]["address"], "10.0.0.2");
    assert_eq!(changed.body["metadata"]["generation"], 2);
}

#[tokio::test]
async fn conflicts_name_the_other_manager_unless_forced() {
    let (_emu, client) = start().await;
    let mine = workload_entry("we", "10.0.0.1", json!({}));
    client
        .patch(
            &format!("{WE}/we?fieldManager=peerd"),
            APPLY,
            &mine.to_string(),
        )
        .await;

    let theirs = workload_entry("we", "10.0.0.9", json!({}));
    let conflict = client
        .patch(
            &format!("{WE}/we?fieldManager=intruder"),
            APPLY,
            &theirs.to_string(),
        )
        .await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.body["reason"], "Conflict");
    let message = conflict.body["message"].as_str().unwrap();
    assert!(message.contains("conflict with \"peerd\""), "{message}");
    assert!(message.contains(".spec.address"), "{message}");
    assert_eq!(
        conflict.body["details"]["causes"][0]["field"],
        ".spec.address"
    );

    let forced = client
        .patch(
            &format!("{WE}/we?fieldManager=intruder&force=true"),
            APPLY,
            &theirs.to_string(),
        )
        .await;
    assert_eq!(forced.status, 200);
    assert_eq!(forced.body["spec"]["address"], "10.0.0.9");
    let peerd = forced.body["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "peerd")
        .unwrap();
    assert!(
        peerd["fieldsV1"]["f:spec"].get("f:address").is_none(),
        "force moved .spec.address away from peerd"
    );

    // Now peerd re-applying its intent conflicts in turn, and force restores it.
    let back = client
        .patch(
            &format!("{WE}/we?fieldManager=peerd"),
            APPLY,
            &mine.to_string(),
        )
        .await;
    assert_eq!(back.status, 409);
    assert!(
        back.body["message"]
            .as_str()
            .unwrap()
            .contains("\"intruder\"")
    );
    let restored = client
        .patch(
            &format!("{WE}/we?fieldManager=peerd&force=true"),
            APPLY,
            &mine.to_string(),
        )
        .await;
    assert_eq!(restored.body["spec"]["address"], "10.0.0.1");
}

#[tokio::test]
async fn hand_edits_conflict_with_the_applier() {
    let (_emu, client) = start().await;
    let mine = workload_entry("we", "10.0.0.1", json!({}));
    client
        .patch(
            &format!("{WE}/we?fieldManager=peerd"),
            APPLY,
            &mine.to_string(),
        )
        .await;
    let edited = client
        .patch(
            &format!("{WE}/we?fieldManager=kubectl-edit"),
            "application/merge-patch+json",
            r#"{"spec":{"address":"10.9.9.9"}}"#,
        )
        .await;
    assert!(managers(&edited.body).contains(&(
        "kubectl-edit".into(),
        "Update".into(),
        String::new()
    )));
    let reconcile = client
        .patch(
            &format!("{WE}/we?fieldManager=peerd"),
            APPLY,
            &mine.to_string(),
        )
        .await;
    assert_eq!(reconcile.status, 409);
    assert!(
        reconcile.body["message"]
            .as_str()
            .unwrap()
            .contains("\"kubectl-edit\"")
    );
    let forced = client
        .patch(
            &format!("{WE}/we?fieldManager=peerd&force=true"),
            APPLY,
            &mine.to_string(),
        )
        .await;
    assert_eq!(forced.body["spec"]["address"], "10.0.0.1");
}

#[tokio::test]
async fn fields_dropped_from_the_configuration_are_removed() {
    let (_emu, client) = start().await;
    let mut full = workload_entry("we", "10.0.0.1", json!({"a": "1", "b": "2"}));
    full["spec"]["weight"] = json!(3);
    full["metadata"]["annotations"] = json!({"solo.io/peered-workload-uid": "u1"});
    let path = format!("{WE}/we?fieldManager=peerd");
    client.patch(&path, APPLY, &full.to_string()).await;
    // Another manager's label survives peerd's re-apply.
    client
        .patch(
            &format!("{WE}/we?fieldManager=ops"),
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"ops":"x"}}}"#,
        )
        .await;

    let slim = workload_entry("we", "10.0.0.1", json!({"a": "1"}));
    let applied = client.patch(&path, APPLY, &slim.to_string()).await.body;
    assert_eq!(applied["metadata"]["labels"], json!({"a": "1", "ops": "x"}));
    assert!(
        applied["metadata"]
            .get("annotations")
            .is_none_or(|a| a.as_object().unwrap().is_empty())
    );
    assert!(applied["spec"].get("weight").is_none());
    assert_eq!(applied["metadata"]["generation"], 2);
}

#[tokio::test]
async fn apply_to_status_only_touches_status() {
    let (_emu, client) = start().await;
    client.post(GW, &gateway("gw")).await;
    let status = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "istio-system"},
        "spec": {"gatewayClassName": "ignored"},
        "status": {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]},
    });
    let applied = client
        .patch(
            &format!("{GW}/gw/status?fieldManager=peerd"),
            APPLY,
            &status.to_string(),
        )
        .await;
    assert_eq!(applied.status, 200);
    assert_eq!(applied.body["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(applied.body["spec"]["gatewayClassName"], "istio-remote");
    assert_eq!(applied.body["metadata"]["generation"], 1);
    assert!(managers(&applied.body).contains(&("peerd".into(), "Apply".into(), "status".into())));

    // Another controller's status field does not conflict with peerd's as long as it
    // applies different fields.
    let other = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "gw", "namespace": "istio-system"}, "status": {"addresses": [{"value": "1.2.3.4"}]}});
    let merged = client
        .patch(
            &format!("{GW}/gw/status?fieldManager=istiod"),
            APPLY,
            &other.to_string(),
        )
        .await;
    assert_eq!(merged.status, 200);
    assert_eq!(merged.body["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(merged.body["status"]["addresses"][0]["value"], "1.2.3.4");

    let missing = client
        .patch(
            &format!("{GW}/missing/status?fieldManager=peerd"),
            APPLY,
            &status.to_string().replace("\"gw\"", "\"missing\""),
        )
        .await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn bad_apply_requests() {
    let (_emu, client) = start().await;
    let config = workload_entry("we", "10.0.0.1", json!({})).to_string();
    let no_manager = client.patch(&format!("{WE}/we"), APPLY, &config).await;
    assert_eq!(no_manager.status, 400);
    let mut no_kind = workload_entry("we", "10.0.0.1", json!({}));
    no_kind.as_object_mut().unwrap().remove("kind");
    assert_eq!(
        client
            .patch(
                &format!("{WE}/we?fieldManager=peerd"),
                APPLY,
                &no_kind.to_string()
            )
            .await
            .status,
        400
    );
    let wrong_name = client
        .patch(&format!("{WE}/other?fieldManager=peerd"), APPLY, &config)
        .await;
    assert_eq!(wrong_name.status, 400);
    let mut with_rv = workload_entry("we", "10.0.0.1", json!({}));
    with_rv["metadata"]["resourceVersion"] = json!("1");
    assert_eq!(
        client
            .patch(
                &format!("{WE}/we?fieldManager=peerd"),
                APPLY,
                &with_rv.to_string()
            )
            .await
            .status,
        404
    );
    let not_yaml = client
        .patch(&format!("{WE}/we?fieldManager=peerd"), APPLY, "{[")
        .await;
    assert_eq!(not_yaml.status, 400);
    assert_eq!(
        client.get(&format!("{WE}/we")).await.status,
        404,
        "nothing was created"
    );
}

fn status_config(conditions: Value) -> String {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "istio-system"},
        "status": {"conditions": conditions},
    })
    .to_string()
}

fn condition(kind: &str, status: &str) -> Value {
    json!({"type": kind, "status": status, "reason": kind, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

fn condition_types(obj: &Value) -> Vec<(String, String)> {
    obj["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn gateway_conditions_of_different_managers_merge_by_type() {
    let (_emu, client) = start().await;
    client.post(GW, &gateway("gw")).await;
    let status = format!("{GW}/gw/status");
    let peerd = |force: bool| {
        format!(
            "{status}?fieldManager=peerd{}",
            if force { "&force=true" } else { "" }
        )
    };
    let istiod = format!("{status}?fieldManager=istiod");

    let applied = client
        .patch(
            &peerd(false),
            APPLY,
            &status_config(json!([
                condition("Accepted", "True"),
                condition("Programmed", "False")
            ])),
        )
        .await;
    assert_eq!(applied.status, 200);
    let other = client
        .patch(
            &istiod,
            APPLY,
            &status_config(json!([condition("ResolvedRefs", "True")])),
        )
        .await;
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(
        condition_types(&other.body),
        [
            ("Accepted".into(), "True".into()),
            ("Programmed".into(), "False".into()),
            ("ResolvedRefs".into(), "True".into())
        ]
    );

    // peerd stops reporting Programmed: only its own condition goes, istiod's stays.
    let dropped = client
        .patch(
            &peerd(false),
            APPLY,
            &status_config(json!([condition("Accepted", "True")])),
        )
        .await;
    assert_eq!(
        condition_types(&dropped.body),
        [
            ("Accepted".into(), "True".into()),
            ("ResolvedRefs".into(), "True".into())
        ]
    );

    // istiod writing a condition peerd owns, with another value, conflicts on that field.
    let clash = client
        .patch(
            &istiod,
            APPLY,
            &status_config(json!([
                condition("ResolvedRefs", "True"),
                condition("Accepted", "False")
            ])),
        )
        .await;
    assert_eq!(clash.status, 409);
    let message = clash.body["message"].as_str().unwrap();
    assert!(message.contains("conflict with \"peerd\""), "{message}");
    assert!(
        message.contains(r#".status.conditions[type="Accepted"].status"#),
        "{message}"
    );

    // A forced apply by peerd over a hand-written condition keeps the other items.
    client
        .patch(&format!("{status}?fieldManager=kubectl-patch"), "application/merge-patch+json", &json!({"status": {"conditions": [condition("Accepted", "Unknown"), condition("ResolvedRefs", "True")]}}).to_string())
        .await;
    let conflict = client
        .patch(
            &peerd(false),
            APPLY,
            &status_config(json!([condition("Accepted", "True")])),
        )
        .await;
    assert_eq!(conflict.status, 409);
    let forced = client
        .patch(
            &peerd(true),
            APPLY,
            &status_config(json!([condition("Accepted", "True")])),
        )
        .await;
    assert_eq!(
        condition_types(&forced.body),
        [
            ("Accepted".into(), "True".into()),
            ("ResolvedRefs".into(), "True".into())
        ]
    );
}
