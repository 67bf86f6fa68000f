//! The leader's ServiceImport writer against the emulated API server: one import it
//! cannot write (its namespace does not exist here) stops neither the others nor the
//! deletion of stale ones, and a pass writes only what changed (found by the soak: one
//! missing namespace blocked every import, and every pass, twice a second under churn,
//! re-applied all of them).

use kube::Api;
use kube::api::ObjectMeta;
use serde_json::json;

use super::{client, create, emulator};
use peerd::kube::mcs::{
    AppliedImports, ClusterStatus, ServiceImport, ServiceImportSpec, ServiceImportStatus,
    ServicePort, apply_imports,
};
use peerd::kube::types::{LABEL_MANAGED_BY, MANAGED_BY_PEERD};
use peerd_testbed::emulator::Verb;

fn import(namespace: &str, name: &str, clusters: &[&str]) -> ServiceImport {
    ServiceImport {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some([(LABEL_MANAGED_BY.to_string(), MANAGED_BY_PEERD.to_string())].into()),
            ..Default::default()
        },
        spec: ServiceImportSpec {
            type_: "ClusterSetIP".into(),
            ports: vec![ServicePort {
                port: 80,
                protocol: "TCP".into(),
            }],
        },
        status: Some(ServiceImportStatus {
            clusters: clusters
                .iter()
                .map(|c| ClusterStatus {
                    cluster: c.to_string(),
                })
                .collect(),
        }),
    }
}

#[tokio::test]
async fn a_failing_import_stops_nothing_else_and_unchanged_imports_are_not_rewritten() {
    let emu = emulator().await;
    let client = client(&emu).await;
    // A stale import of peerd's, no longer desired.
    create(
        &emu,
        "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/default/serviceimports",
        &json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": "old", "labels": {"app.kubernetes.io/managed-by": "peerd"}},
            "spec": {"type": "ClusterSetIP"},
        }),
    )
    .await;
    let desired = vec![
        import("analytics", "ads", &["cluster-2"]),
        import("default", "cart", &["cluster-2"]),
    ];
    let mut applied = AppliedImports::default();
    let err = apply_imports(&client, &desired, &mut applied)
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.starts_with("1 of 2 ServiceImport writes failed")
            && message.contains("analytics/ads"),
        "{message}"
    );
    let api: Api<ServiceImport> = Api::namespaced(client.clone(), "default");
    let cart = api.get("cart").await.expect("written despite the failure");
    assert_eq!(cart.status.unwrap().clusters[0].cluster, "cluster-2");
    assert!(
        api.get_opt("old").await.unwrap().is_none(),
        "the stale import is deleted despite the failure"
    );

    // The same desired state again: only the failing import is tried again.
    emu.reset_counters();
    let _ = apply_imports(&client, &desired, &mut applied).await;
    let applies = emu.counters().verb(Verb::Apply);
    assert_eq!(applies, 1, "only analytics/ads is applied again");
    // A changed import is written; the unchanged failing one is tried again.
    emu.reset_counters();
    let changed = vec![
        import("analytics", "ads", &["cluster-2"]),
        import("default", "cart", &["cluster-2", "cluster-3"]),
    ];
    let _ = apply_imports(&client, &changed, &mut applied).await;
    assert_eq!(
        emu.counters().verb(Verb::Apply),
        1 + 2,
        "cart: spec and status"
    );
    let cart = api.get("cart").await.unwrap();
    assert_eq!(cart.status.unwrap().clusters.len(), 2);
    // Forgetting (what the periodic resync does) writes everything that can be written.
    applied.clear();
    emu.reset_counters();
    let _ = apply_imports(&client, &changed, &mut applied).await;
    assert_eq!(emu.counters().verb(Verb::Apply), 1 + 2);
}
