//! Discovery, OpenAPI and health endpoints.

use super::start;

#[tokio::test]
async fn version_and_legacy_discovery_documents() {
    let (_emu, client) = start().await;
    let version = client.get("/version").await;
    assert_eq!(version.status, 200);
    assert_eq!(
        (
            version.body["major"].as_str(),
            version.body["minor"].as_str()
        ),
        (Some("1"), Some("32"))
    );

    let api = client.get("/api").await;
    assert_eq!(api.body["kind"], "APIVersions");
    assert_eq!(api.body["versions"][0], "v1");

    let core = client.get("/api/v1").await;
    assert_eq!(core.body["kind"], "APIResourceList");
    let names: Vec<&str> = core.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for expected in [
        "namespaces",
        "services",
        "pods",
        "configmaps",
        "services/status",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }

    let groups = client.get("/apis").await;
    assert_eq!(groups.body["kind"], "APIGroupList");
    let group_names: Vec<&str> = groups.body["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        group_names,
        [
            "gateway.networking.k8s.io",
            "networking.istio.io",
            "multicluster.x-k8s.io",
            "coordination.k8s.io",
            "authentication.k8s.io"
        ]
    );
    let mcs = client.get("/apis/multicluster.x-k8s.io/v1alpha1").await;
    let kinds: Vec<&str> = mcs.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["namespaced"] == true)
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"ServiceExport") && kinds.contains(&"ServiceImport"),
        "{kinds:?}"
    );

    let istio = client.get("/apis/networking.istio.io/v1beta1").await;
    assert_eq!(istio.body["groupVersion"], "networking.istio.io/v1beta1");
    let we = istio.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "workloadentries")
        .unwrap();
    assert_eq!(we["namespaced"], true);
    assert_eq!(we["kind"], "WorkloadEntry");
    assert_eq!(we["shortNames"][0], "we");

    let reviews = client.get("/apis/authentication.k8s.io/v1").await;
    assert_eq!(
        reviews.body["resources"][0]["verbs"],
        serde_json::json!(["create"])
    );

    let group = client.get("/apis/coordination.k8s.io").await;
    assert_eq!(group.body["kind"], "APIGroup");
    assert_eq!(group.body["preferredVersion"]["version"], "v1");
}

#[tokio::test]
async fn aggregated_discovery_accept_header_still_gets_legacy_json() {
    let (emu, _client) = start().await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::get(format!("{}/apis", emu.url()))
        .header(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json",
        )
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = http.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["kind"], "APIGroupList");
    assert_eq!(emu.counters().discovery, 1);
}

#[tokio::test]
async fn unknown_paths_are_404_status_objects() {
    let (_emu, client) = start().await;
    for path in [
        "/apis/nope.example.com/v1",
        "/api/v2",
        "/apis/networking.istio.io/v1alpha3/workloadentries",
        "/apis/networking.istio.io/v1/namespaces/istio-system/sidecars",
        "/openapi/v2",
    ] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, 404, "{path}");
        assert_eq!(reply.body["kind"], "Status", "{path}");
        assert_eq!(reply.body["reason"], "NotFound", "{path}");
    }
    let health = client.get("/readyz").await;
    assert_eq!(
        (health.status.as_u16(), health.body.as_str()),
        (200, Some("ok"))
    );
}

#[tokio::test]
async fn openapi_v3_declares_field_validation_for_patch() {
    let (_emu, client) = start().await;
    let root = client.get("/openapi/v3").await;
    let url = root.body["paths"]["apis/gateway.networking.k8s.io/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_string();
    let doc = client.get(&url).await;
    assert_eq!(doc.status, 200);
    let patch = &doc.body["paths"]["/apis/gateway.networking.k8s.io/v1/namespaces/{namespace}/gateways/{name}"]
        ["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Gateway");
    assert!(
        patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation")
    );
}
