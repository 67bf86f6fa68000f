//! Request shapes Rust clients (kube-rs style) send: a `?&` query prefix, the default watch
//! parameters, DeleteOptions bodies, apply with `force`, replace with `?`.

use serde_json::json;

use super::{GW, WE, gateway, start, workload_entry};

#[tokio::test]
async fn kube_rs_style_requests_are_understood() {
    let (_emu, client) = start().await;
    let created = client
        .post(
            &format!("{WE}?"),
            &workload_entry("a", "10.0.0.1", json!({"app": "x"})),
        )
        .await;
    assert_eq!(created.status, 201);

    let list = client
        .get(&format!("{WE}?&labelSelector=app%3Dx&limit=500"))
        .await;
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);

    let mut watch = client
        .watch(&format!(
            "{WE}?&watch=true&resourceVersion=0&timeoutSeconds=290&allowWatchBookmarks=true"
        ))
        .await;
    assert_eq!(watch.next_change().await.unwrap()["type"], "ADDED");

    let apply = client
        .patch(
            &format!("{GW}/gw?&fieldManager=peerd&force=true"),
            "application/apply-patch+yaml",
            &gateway("gw").to_string(),
        )
        .await;
    assert_eq!(apply.status, 201);

    let mut replaced = created.body.clone();
    replaced["spec"]["address"] = json!("10.0.0.2");
    let put = client.put(&format!("{WE}/a?"), &replaced).await;
    assert_eq!(put.status, 200);
    assert_eq!(watch.next_change().await.unwrap()["type"], "MODIFIED");

    let delete = client
        .send(
            http::Method::DELETE,
            &format!("{WE}/a?"),
            "application/json",
            r#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}"#,
        )
        .await;
    assert_eq!(delete.status, 200);
    assert_eq!(watch.next_change().await.unwrap()["type"], "DELETED");
    let bad_options = client
        .send(
            http::Method::DELETE,
            &format!("{GW}/gw"),
            "application/json",
            "not json",
        )
        .await;
    assert_eq!(bad_options.status, 400);
    assert_eq!(
        client.get(&format!("{GW}/gw")).await.status,
        200,
        "a rejected delete deletes nothing"
    );
}
