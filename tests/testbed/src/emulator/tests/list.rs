//! list: scopes, resourceVersion, selectors, pagination, consistent and expired snapshots.

use serde_json::{Value, json};

use super::{WE, rv, start, workload_entry};

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap_or(""),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn lists_per_namespace_and_cluster_wide_with_resource_version() {
    let (emu, client) = start().await;
    client
        .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
        .await;
    let mut other = workload_entry("b", "10.0.0.2", json!({}));
    other["metadata"]["namespace"] = json!("default");
    client
        .post(
            "/apis/networking.istio.io/v1/namespaces/default/workloadentries",
            &other,
        )
        .await;

    let ns = client.get(WE).await;
    assert_eq!(ns.body["kind"], "WorkloadEntryList");
    assert_eq!(names(&ns.body), ["istio-system/a"]);
    let all = client
        .get("/apis/networking.istio.io/v1/workloadentries")
        .await;
    assert_eq!(names(&all.body), ["default/b", "istio-system/a"]);
    let list_rv: u64 = all.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(list_rv, emu.resource_version());
}

#[tokio::test]
async fn label_and_field_selectors() {
    let (_emu, client) = start().await;
    for (name, labels) in [
        ("a", json!({"app": "web", "tier": "front"})),
        ("b", json!({"app": "web", "tier": "back"})),
        ("c", json!({"app": "db"})),
    ] {
        client
            .post(WE, &workload_entry(name, "10.0.0.1", labels))
            .await;
    }
    let cases = [
        ("labelSelector=app%3Dweb", vec!["a", "b"]),
        ("labelSelector=app%3D%3Dweb", vec!["a", "b"]),
        ("labelSelector=app%21%3Dweb", vec!["c"]),
        ("labelSelector=tier+in+%28front%2Cmiddle%29", vec!["a"]),
        ("labelSelector=tier+notin+%28front%29", vec!["b", "c"]),
        ("labelSelector=tier", vec!["a", "b"]),
        ("labelSelector=%21tier", vec!["c"]),
        ("labelSelector=app%3Dweb%2Ctier%3Dback", vec!["b"]),
        ("fieldSelector=metadata.name%3Dc", vec!["c"]),
        ("fieldSelector=metadata.name%21%3Dc", vec!["a", "b"]),
        ("fieldSelector=metadata.namespace%3Ddefault", vec![]),
        (
            "labelSelector=app%3Dweb&fieldSelector=metadata.name%3Da",
            vec!["a"],
        ),
    ];
    for (query, expected) in cases {
        let reply = client.get(&format!("{WE}?{query}")).await;
        assert_eq!(reply.status, 200, "{query}");
        let got: Vec<String> = names(&reply.body)
            .into_iter()
            .map(|n| n.trim_start_matches("istio-system/").to_string())
            .collect();
        assert_eq!(got, expected, "{query}");
    }
    for bad in [
        "labelSelector=tier+in+%28",
        "fieldSelector=spec.address%3Dx",
        "limit=-1",
        "resourceVersion=abc",
    ] {
        let reply = client.get(&format!("{WE}?{bad}")).await;
        assert_eq!(reply.status, 400, "{bad}");
        assert_eq!(reply.body["kind"], "Status", "{bad}");
    }
}

#[tokio::test]
async fn pagination_is_a_consistent_snapshot() {
    let (_emu, client) = start().await;
    for name in ["a", "b", "c", "d", "e"] {
        client
            .post(WE, &workload_entry(name, "10.0.0.1", json!({})))
            .await;
    }
    let first = client.get(&format!("{WE}?limit=2")).await.body;
    assert_eq!(names(&first), ["istio-system/a", "istio-system/b"]);
    assert_eq!(first["metadata"]["remainingItemCount"], 3);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();

    // Changes after the first page are not visible to later pages of the same list.
    client
        .post(WE, &workload_entry("bb", "10.0.0.1", json!({})))
        .await;
    client.delete(&format!("{WE}/d")).await;

    let second = client
        .get(&format!("{WE}?limit=2&continue={token}"))
        .await
        .body;
    assert_eq!(names(&second), ["istio-system/c", "istio-system/d"]);
    assert_eq!(
        second["metadata"]["resourceVersion"],
        first["metadata"]["resourceVersion"]
    );
    let token = second["metadata"]["continue"].as_str().unwrap().to_string();
    let third = client
        .get(&format!("{WE}?limit=2&continue={token}"))
        .await
        .body;
    assert_eq!(names(&third), ["istio-system/e"]);
    assert!(third["metadata"].get("continue").is_none());

    let fresh = client.get(WE).await.body;
    assert_eq!(names(&fresh).len(), 5, "a, b, bb, c, e");
    assert_eq!(client.get(&format!("{WE}?continue=zz")).await.status, 400);
}

#[tokio::test]
async fn exact_and_expired_resource_versions() {
    let (emu, client) = start().await;
    let a = client
        .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
        .await
        .body;
    client
        .post(WE, &workload_entry("b", "10.0.0.1", json!({})))
        .await;
    let exact = client
        .get(&format!(
            "{WE}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&a)
        ))
        .await;
    assert_eq!(exact.status, 200);
    assert_eq!(names(&exact.body), ["istio-system/a"]);

    let too_new = client
        .get(&format!(
            "{WE}?resourceVersion={}",
            emu.resource_version() + 100
        ))
        .await;
    assert_eq!(
        (too_new.status.as_u16(), too_new.body["reason"].as_str()),
        (504, Some("Timeout"))
    );

    let first = client.get(&format!("{WE}?limit=1")).await.body;
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    client
        .post(WE, &workload_entry("c", "10.0.0.1", json!({})))
        .await;
    emu.compact_history();
    let expired = client
        .get(&format!(
            "{WE}?resourceVersion={}&resourceVersionMatch=Exact",
            rv(&a)
        ))
        .await;
    assert_eq!(
        (expired.status.as_u16(), expired.body["reason"].as_str()),
        (410, Some("Expired"))
    );
    let expired_continue = client.get(&format!("{WE}?limit=1&continue={token}")).await;
    assert_eq!(
        (
            expired_continue.status.as_u16(),
            expired_continue.body["reason"].as_str()
        ),
        (410, Some("Expired"))
    );
}

#[tokio::test]
async fn kubectl_style_table_output() {
    let (_emu, client) = start().await;
    client
        .post(WE, &workload_entry("a", "10.0.0.7", json!({})))
        .await;
    let request = http::Request::get(format!("{}{WE}", client.base()))
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let table = client.raw(request).await;
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Name", "Address", "Age"]);
    assert_eq!(table["rows"][0]["cells"][0], "a");
    assert_eq!(table["rows"][0]["cells"][1], "10.0.0.7");
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
}
