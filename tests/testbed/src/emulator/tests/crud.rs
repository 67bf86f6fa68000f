//! get / create / update / patch / delete semantics, the status subresource, generation,
//! versions, Leases and TokenReviews.

use serde_json::json;

use super::super::TokenIdentity;
use super::{GW, WE, gateway, rv, start, workload_entry};

#[tokio::test]
async fn create_sets_server_metadata_and_rejects_duplicates() {
    let (_emu, client) = start().await;
    let created = client
        .post(WE, &workload_entry("we-1", "10.0.0.1", json!({})))
        .await;
    assert_eq!(created.status, 201);
    let meta = &created.body["metadata"];
    assert_eq!(meta["uid"].as_str().unwrap().len(), 36);
    assert!(meta["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(meta["generation"], 1);
    assert!(rv(&created.body) > 0);
    assert_eq!(meta["managedFields"][0]["manager"], "emulator-test");
    assert_eq!(meta["managedFields"][0]["operation"], "Update");

    let again = client
        .post(WE, &workload_entry("we-1", "10.0.0.2", json!({})))
        .await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["reason"], "AlreadyExists");
    assert_eq!(
        again.body["message"],
        "workloadentries.networking.istio.io \"we-1\" already exists"
    );

    let got = client.get(&format!("{WE}/we-1")).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body["spec"]["address"], "10.0.0.1",
        "the duplicate create changed nothing"
    );
}

#[tokio::test]
async fn bad_creates_are_rejected_with_status_objects() {
    let (_emu, client) = start().await;
    let mut in_missing_ns = workload_entry("we", "10.0.0.1", json!({}));
    in_missing_ns["metadata"]["namespace"] = json!("nope");
    let missing_ns = client
        .post(
            "/apis/networking.istio.io/v1/namespaces/nope/workloadentries",
            &in_missing_ns,
        )
        .await;
    assert_eq!(
        (
            missing_ns.status.as_u16(),
            missing_ns.body["message"].as_str()
        ),
        (404, Some("namespaces \"nope\" not found"))
    );

    let bad_name = client
        .post(WE, &workload_entry("Bad_Name", "10.0.0.1", json!({})))
        .await;
    assert_eq!(
        (bad_name.status.as_u16(), bad_name.body["reason"].as_str()),
        (422, Some("Invalid"))
    );

    let mut wrong_ns = workload_entry("we", "10.0.0.1", json!({}));
    wrong_ns["metadata"]["namespace"] = json!("default");
    assert_eq!(client.post(WE, &wrong_ns).await.status, 400);

    let mut wrong_kind = workload_entry("we", "10.0.0.1", json!({}));
    wrong_kind["kind"] = json!("ServiceEntry");
    assert_eq!(client.post(WE, &wrong_kind).await.status, 400);

    let not_json = client
        .send(http::Method::POST, WE, "application/json", "{nope")
        .await;
    assert_eq!(
        (not_json.status.as_u16(), not_json.body["kind"].as_str()),
        (400, Some("Status"))
    );

    let mut with_rv = workload_entry("we", "10.0.0.1", json!({}));
    with_rv["metadata"]["resourceVersion"] = json!("5");
    assert_eq!(client.post(WE, &with_rv).await.status, 400);

    let no_name = client.post(WE, &json!({"metadata": {}, "spec": {}})).await;
    assert_eq!(no_name.status, 422);

    let generated = client
        .post(
            WE,
            &json!({"metadata": {"generateName": "we-"}, "spec": {}}),
        )
        .await;
    assert_eq!(generated.status, 201);
    let name = generated.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("we-") && name.len() == 8, "{name}");

    let list = client.get(WE).await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        1,
        "only the generated object was stored"
    );
}

#[tokio::test]
async fn update_checks_resource_version_and_skips_no_ops() {
    let (_emu, client) = start().await;
    let created = client
        .post(WE, &workload_entry("we", "10.0.0.1", json!({})))
        .await
        .body;
    let mut stale = created.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["spec"]["address"] = json!("10.0.0.9");
    let conflict = client.put(&format!("{WE}/we"), &stale).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.body["reason"], "Conflict");
    assert!(
        conflict.body["message"]
            .as_str()
            .unwrap()
            .contains("the object has been modified")
    );

    let same = client.put(&format!("{WE}/we"), &created).await;
    assert_eq!(same.status, 200);
    assert_eq!(
        rv(&same.body),
        rv(&created),
        "a no-op update must not bump the resourceVersion"
    );

    let mut changed = created.clone();
    changed["spec"]["address"] = json!("10.0.0.2");
    let updated = client.put(&format!("{WE}/we"), &changed).await;
    assert_eq!(updated.status, 200);
    assert!(rv(&updated.body) > rv(&created));
    assert_eq!(updated.body["metadata"]["generation"], 2);
    assert_eq!(updated.body["metadata"]["uid"], created["metadata"]["uid"]);

    let mut unconditional = changed.clone();
    unconditional["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    unconditional["spec"]["address"] = json!("10.0.0.3");
    assert_eq!(
        client.put(&format!("{WE}/we"), &unconditional).await.status,
        200
    );

    let mut renamed = changed.clone();
    renamed["metadata"]["name"] = json!("other");
    assert_eq!(client.put(&format!("{WE}/we"), &renamed).await.status, 400);
    assert_eq!(
        client
            .put(
                &format!("{WE}/missing"),
                &workload_entry("missing", "1.1.1.1", json!({}))
            )
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn generation_tracks_spec_but_not_metadata_or_status() {
    let (_emu, client) = start().await;
    client.post(GW, &gateway("gw")).await;
    let path = format!("{GW}/gw");
    let labeled = client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"a":"b"}}}"#,
        )
        .await;
    assert_eq!(labeled.body["metadata"]["generation"], 1);
    let status = client
        .patch(
            &format!("{path}/status"),
            "application/merge-patch+json",
            r#"{"status":{"conditions":[{"type":"Accepted","status":"True"}]}}"#,
        )
        .await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["metadata"]["generation"], 1);
    let spec = client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"spec":{"gatewayClassName":"istio-eastwest"}}"#,
        )
        .await;
    assert_eq!(spec.body["metadata"]["generation"], 2);
    assert_eq!(spec.body["status"]["conditions"][0]["type"], "Accepted");
}

#[tokio::test]
async fn status_subresource_and_main_resource_do_not_cross() {
    let (_emu, client) = start().await;
    let mut with_status = gateway("gw");
    with_status["status"] = json!({"conditions": [{"type": "Programmed", "status": "True"}]});
    let created = client.post(GW, &with_status).await.body;
    assert!(
        created.get("status").is_none(),
        "create ignores status on a type with a status subresource"
    );

    let path = format!("{GW}/gw");
    let mut put_status = created.clone();
    put_status["status"] = json!({"conditions": [{"type": "Accepted", "status": "False"}]});
    put_status["spec"]["gatewayClassName"] = json!("changed-through-status");
    let after_status = client.put(&format!("{path}/status"), &put_status).await;
    assert_eq!(after_status.status, 200);
    assert_eq!(
        after_status.body["status"]["conditions"][0]["type"],
        "Accepted"
    );
    assert_eq!(
        after_status.body["spec"]["gatewayClassName"], "istio-remote",
        "status writes change only status"
    );

    let mut put_main = after_status.body.clone();
    put_main["status"] = json!({"conditions": []});
    put_main["spec"]["gatewayClassName"] = json!("istio-eastwest");
    let after_main = client.put(&path, &put_main).await;
    assert_eq!(
        after_main.body["spec"]["gatewayClassName"],
        "istio-eastwest"
    );
    assert_eq!(
        after_main.body["status"]["conditions"][0]["type"], "Accepted",
        "main writes ignore status"
    );

    let got_status = client.get(&format!("{path}/status")).await;
    assert_eq!(
        got_status.body["status"]["conditions"][0]["type"],
        "Accepted"
    );
    assert_eq!(
        client.get(&format!("{GW}/missing/status")).await.status,
        404
    );
    assert_eq!(client.get(&format!("{path}/scale")).await.status, 404);
}

#[tokio::test]
async fn merge_and_json_patches() {
    let (_emu, client) = start().await;
    client
        .post(
            WE,
            &workload_entry("we", "10.0.0.1", json!({"a": "1", "b": "2"})),
        )
        .await;
    let path = format!("{WE}/we");
    let merged = client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"b":null,"c":"3"}},"spec":{"weight":5}}"#,
        )
        .await;
    assert_eq!(merged.status, 200);
    assert_eq!(
        merged.body["metadata"]["labels"],
        json!({"a": "1", "c": "3"})
    );
    assert_eq!(merged.body["spec"]["weight"], 5);
    let managers: Vec<&str> = merged.body["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, ["emulator-test"]);

    let patched = client
        .patch(&path, "application/json-patch+json", r#"[{"op":"test","path":"/spec/weight","value":5},{"op":"replace","path":"/spec/address","value":"10.0.0.2"}]"#)
        .await;
    assert_eq!(patched.body["spec"]["address"], "10.0.0.2");

    let failed = client
        .patch(
            &path,
            "application/json-patch+json",
            r#"[{"op":"test","path":"/spec/weight","value":6}]"#,
        )
        .await;
    assert_eq!(failed.status, 422);
    let stale = client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"metadata":{"resourceVersion":"1"},"spec":{"weight":1}}"#,
        )
        .await;
    assert_eq!(stale.status, 409);
    let unsupported = client.patch(&path, "text/plain", "x").await;
    assert_eq!(unsupported.status, 415);
    assert_eq!(
        client
            .patch(
                &format!("{WE}/missing"),
                "application/merge-patch+json",
                "{}"
            )
            .await
            .status,
        404
    );
    assert_eq!(
        client.get(&path).await.body["spec"]["weight"],
        5,
        "failed patches changed nothing"
    );
}

#[tokio::test]
async fn delete_with_preconditions_and_deletecollection() {
    let (_emu, client) = start().await;
    let created = client
        .post(WE, &workload_entry("we", "10.0.0.1", json!({})))
        .await
        .body;
    let path = format!("{WE}/we");
    let wrong_uid = client
        .send(
            http::Method::DELETE,
            &path,
            "application/json",
            r#"{"preconditions":{"uid":"not-it"}}"#,
        )
        .await;
    assert_eq!(wrong_uid.status, 409);
    let body = format!(
        r#"{{"preconditions":{{"uid":"{}"}}}}"#,
        created["metadata"]["uid"].as_str().unwrap()
    );
    let deleted = client
        .send(http::Method::DELETE, &path, "application/json", &body)
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.body["status"], "Success");
    assert_eq!(client.get(&path).await.status, 404);
    assert_eq!(client.delete(&path).await.status, 404);

    for (name, tier) in [("a", "x"), ("b", "x"), ("c", "y")] {
        client
            .post(WE, &workload_entry(name, "10.0.0.1", json!({"tier": tier})))
            .await;
    }
    let removed = client.delete(&format!("{WE}?labelSelector=tier%3Dx")).await;
    assert_eq!(removed.body["items"].as_array().unwrap().len(), 2);
    let left = client.get(WE).await;
    let names: Vec<&str> = left.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c"]);
}

#[tokio::test]
async fn dry_run_checks_without_storing() {
    let (emu, client) = start().await;
    let before = emu.resource_version();
    let dry = client
        .post(
            &format!("{WE}?dryRun=All"),
            &workload_entry("we", "10.0.0.1", json!({})),
        )
        .await;
    assert_eq!(dry.status, 201);
    assert_eq!(dry.body["spec"]["address"], "10.0.0.1");
    assert_eq!(client.get(&format!("{WE}/we")).await.status, 404);
    assert_eq!(emu.resource_version(), before);
}

#[tokio::test]
async fn both_istio_versions_serve_the_same_objects() {
    let (_emu, client) = start().await;
    client
        .post(WE, &workload_entry("we", "10.0.0.1", json!({})))
        .await;
    let beta = client
        .get("/apis/networking.istio.io/v1beta1/namespaces/istio-system/workloadentries/we")
        .await;
    assert_eq!(beta.status, 200);
    assert_eq!(beta.body["apiVersion"], "networking.istio.io/v1beta1");
    assert_eq!(beta.body["spec"]["address"], "10.0.0.1");
    let list = client
        .get("/apis/networking.istio.io/v1beta1/workloadentries")
        .await;
    assert_eq!(list.body["apiVersion"], "networking.istio.io/v1beta1");
    assert_eq!(
        list.body["items"][0]["apiVersion"],
        "networking.istio.io/v1beta1"
    );
}

#[tokio::test]
async fn namespaces_and_cascade_delete() {
    let (_emu, client) = start().await;
    let ns = client
        .post("/api/v1/namespaces", &json!({"metadata": {"name": "team"}}))
        .await;
    assert_eq!(ns.status, 201);
    assert_eq!(ns.body["status"]["phase"], "Active");
    assert_eq!(
        ns.body["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "team"
    );
    let cm = client
        .post(
            "/api/v1/namespaces/team/configmaps",
            &json!({"metadata": {"name": "c"}, "data": {"k": "v"}}),
        )
        .await;
    assert_eq!(cm.status, 201);
    assert_eq!(client.delete("/api/v1/namespaces/team").await.status, 200);
    assert_eq!(
        client
            .get("/api/v1/namespaces/team/configmaps/c")
            .await
            .status,
        404
    );
    let all = client.get("/api/v1/namespaces").await;
    let names: Vec<&str> = all.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "istio-system", "kube-system"]);
}

#[tokio::test]
async fn lease_compare_and_swap_like_leader_election() {
    let (_emu, client) = start().await;
    let leases = "/apis/coordination.k8s.io/v1/namespaces/istio-system/leases";
    let lease = json!({"metadata": {"name": "peerd-leader"}, "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15}});
    let created = client.post(leases, &lease).await;
    assert_eq!(created.status, 201);
    assert!(
        created.body["metadata"].get("generation").is_none(),
        "Leases do not track generation"
    );
    let mut takeover_b = created.body.clone();
    takeover_b["spec"]["holderIdentity"] = json!("replica-b");
    let mut takeover_c = created.body.clone();
    takeover_c["spec"]["holderIdentity"] = json!("replica-c");
    let path = format!("{leases}/peerd-leader");
    assert_eq!(client.put(&path, &takeover_b).await.status, 200);
    assert_eq!(
        client.put(&path, &takeover_c).await.status,
        409,
        "the second writer with the same resourceVersion loses"
    );
    assert_eq!(
        client.get(&path).await.body["spec"]["holderIdentity"],
        "replica-b"
    );
}

#[tokio::test]
async fn token_reviews_authenticate_configured_tokens() {
    let (emu, client) = start().await;
    emu.add_token(
        "good-token",
        TokenIdentity {
            username: "system:serviceaccount:istio-system:ztunnel".into(),
            uid: "u-1".into(),
            groups: vec!["system:serviceaccounts".into()],
            audiences: vec!["istio-ca".into()],
        },
    );
    let reviews = "/apis/authentication.k8s.io/v1/tokenreviews";
    let review = |token: &str, audience: &str| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": [audience]}});
    let ok = client
        .post(reviews, &review("good-token", "istio-ca"))
        .await;
    assert_eq!(ok.status, 201);
    assert_eq!(ok.body["status"]["authenticated"], true);
    assert_eq!(
        ok.body["status"]["user"]["username"],
        "system:serviceaccount:istio-system:ztunnel"
    );
    assert_eq!(ok.body["status"]["audiences"], json!(["istio-ca"]));
    assert!(
        ok.body["spec"].get("token").is_none(),
        "the token is never echoed"
    );

    let wrong_audience = client.post(reviews, &review("good-token", "other")).await;
    assert_eq!(wrong_audience.body["status"]["authenticated"], false);
    let unknown = client.post(reviews, &review("bad-token", "istio-ca")).await;
    assert_eq!(unknown.body["status"]["authenticated"], false);
    emu.revoke_token("good-token");
    let revoked = client
        .post(reviews, &review("good-token", "istio-ca"))
        .await;
    assert_eq!(revoked.body["status"]["authenticated"], false);

    assert_eq!(client.post(reviews, &json!({"spec": {}})).await.status, 422);
    assert_eq!(client.get(reviews).await.status, 405);
}

#[tokio::test]
async fn yaml_bodies_are_accepted_and_protobuf_is_refused() {
    let (_emu, client) = start().await;
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  k: v\n";
    let created = client
        .send(
            http::Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "application/yaml",
            yaml,
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["data"]["k"], "v");
    let protobuf = client
        .send(
            http::Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "application/vnd.kubernetes.protobuf",
            "k8s\0",
        )
        .await;
    assert_eq!(protobuf.status, 415);
    assert_eq!(protobuf.body["reason"], "UnsupportedMediaType");
    assert!(
        protobuf.body["message"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
}

#[tokio::test]
async fn in_process_requests_share_state_with_http() {
    let (emu, client) = start().await;
    let (status, body) = emu
        .request(
            http::Method::POST,
            GW,
            "application/json",
            gateway("seeded").to_string(),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    assert_eq!(body["metadata"]["name"], "seeded");
    assert_eq!(
        client.get(&format!("{GW}/seeded")).await.body["spec"]["gatewayClassName"],
        "istio-remote"
    );
    let (status, _) = emu
        .request(http::Method::GET, &format!("{GW}/nope"), "", "")
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert!(
        emu.request(http::Method::GET, &format!("{GW}?watch=true"), "", "")
            .await
            .is_err()
    );
    assert_eq!(
        emu.counters().verb(super::super::Verb::Create),
        1,
        "in-process requests are counted"
    );
}

#[tokio::test]
async fn finalizers_delay_deletion_until_removed() {
    let (emu, client) = start().await;
    let mut with_finalizer = workload_entry("we", "10.0.0.1", json!({}));
    with_finalizer["metadata"]["finalizers"] = json!(["peerd.io/cleanup"]);
    client.post(WE, &with_finalizer).await;
    let path = format!("{WE}/we");
    let from = emu.resource_version();
    let mut watch = client
        .watch(&format!("{WE}?watch=true&resourceVersion={from}"))
        .await;

    let marked = client.delete(&path).await;
    assert_eq!(marked.status, 200);
    assert!(
        marked.body["metadata"]["deletionTimestamp"].is_string(),
        "{}",
        marked.body
    );
    assert_eq!(
        client.get(&path).await.status,
        200,
        "still there while finalizers remain"
    );
    let again = client.delete(&path).await;
    assert_eq!(
        again.body["metadata"]["resourceVersion"], marked.body["metadata"]["resourceVersion"],
        "a second delete changes nothing"
    );

    let released = client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"metadata":{"finalizers":null}}"#,
        )
        .await;
    assert_eq!(released.status, 200);
    assert_eq!(
        client.get(&path).await.status,
        404,
        "removing the last finalizer deletes"
    );
    assert_eq!(watch.next_change().await.unwrap()["type"], "MODIFIED");
    assert_eq!(watch.next_change().await.unwrap()["type"], "DELETED");
}

#[tokio::test]
async fn services_get_a_type_and_a_cluster_ip() {
    let (_emu, client) = start().await;
    let services = "/api/v1/namespaces/default/services";
    let first = client
        .post(
            services,
            &json!({"metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(first.status, 201);
    assert_eq!(first.body["spec"]["type"], "ClusterIP");
    assert_eq!(first.body["spec"]["clusterIP"], "10.96.0.1");
    let second = client
        .post(
            services,
            &json!({"metadata": {"name": "b"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .await;
    assert_eq!(second.body["spec"]["clusterIPs"], json!(["10.96.0.2"]));
    let headless = client
        .post(
            services,
            &json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None"}}),
        )
        .await;
    assert_eq!(headless.body["spec"]["clusterIP"], "None");

    let mut without_ip = json!({"metadata": {"name": "a", "labels": {"global": "true"}}, "spec": {"ports": [{"port": 81}]}});
    without_ip["metadata"]["resourceVersion"] = first.body["metadata"]["resourceVersion"].clone();
    let updated = client.put(&format!("{services}/a"), &without_ip).await;
    assert_eq!(updated.status, 200);
    assert_eq!(
        updated.body["spec"]["clusterIP"], "10.96.0.1",
        "an update keeps the allocated IP"
    );
    assert_eq!(updated.body["spec"]["ports"][0]["port"], 81);
}
