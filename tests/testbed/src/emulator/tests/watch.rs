//! watch: start points, event types, bookmarks, 410 Expired, selectors, drops, timeouts.

use std::time::Duration;

use serde_json::json;

use super::super::EmulatorOptions;
use super::{WE, rv, start, start_with, workload_entry};

#[tokio::test]
async fn watch_from_a_version_sees_every_later_change_in_order() {
    let (_emu, client) = start().await;
    let first = client
        .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
        .await
        .body;
    // Changes made before the watch opens but after its resourceVersion are replayed.
    client
        .post(WE, &workload_entry("b", "10.0.0.1", json!({})))
        .await;
    let mut watch = client
        .watch(&format!("{WE}?watch=true&resourceVersion={}", rv(&first)))
        .await;
    let added = watch.next_change().await.unwrap();
    assert_eq!(
        (
            added["type"].as_str(),
            added["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    assert_eq!(added["object"]["apiVersion"], "networking.istio.io/v1");

    client
        .patch(
            &format!("{WE}/a"),
            "application/merge-patch+json",
            r#"{"spec":{"weight":2}}"#,
        )
        .await;
    client.delete(&format!("{WE}/b")).await;
    let modified = watch.next_change().await.unwrap();
    assert_eq!(
        (
            modified["type"].as_str(),
            modified["object"]["metadata"]["name"].as_str()
        ),
        (Some("MODIFIED"), Some("a"))
    );
    assert_eq!(modified["object"]["spec"]["weight"], 2);
    let deleted = watch.next_change().await.unwrap();
    assert_eq!(
        (
            deleted["type"].as_str(),
            deleted["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("b"))
    );
    assert!(
        rv(&deleted["object"]) > rv(&modified["object"]),
        "resourceVersions increase along the stream"
    );
}

#[tokio::test]
async fn watch_without_version_starts_with_synthetic_adds() {
    let (_emu, client) = start().await;
    client
        .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
        .await;
    let mut other_ns = workload_entry("z", "10.0.0.1", json!({}));
    other_ns["metadata"]["namespace"] = json!("default");
    client
        .post(
            "/apis/networking.istio.io/v1/namespaces/default/workloadentries",
            &other_ns,
        )
        .await;
    let mut watch = client.watch(&format!("{WE}?watch=1")).await;
    let initial = watch.next_change().await.unwrap();
    assert_eq!(
        (
            initial["type"].as_str(),
            initial["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("a"))
    );
    client
        .post(WE, &workload_entry("b", "10.0.0.1", json!({})))
        .await;
    let live = watch.next_change().await.unwrap();
    assert_eq!(
        live["object"]["metadata"]["name"], "b",
        "the other namespace's object never shows up"
    );
}

#[tokio::test]
async fn bookmarks_carry_the_latest_resource_version() {
    let (emu, client) = start().await;
    let start_rv = emu.resource_version();
    let mut watch = client
        .watch(&format!(
            "{WE}?watch=true&resourceVersion={start_rv}&allowWatchBookmarks=true"
        ))
        .await;
    // A change to another type advances the resourceVersion; the bookmark reports it.
    client
        .post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": "c"}}),
        )
        .await;
    let target = emu.resource_version();
    loop {
        let event = watch.next().await.unwrap();
        assert_eq!(
            event["type"], "BOOKMARK",
            "nothing but bookmarks on an idle type"
        );
        assert_eq!(event["object"]["kind"], "WorkloadEntry");
        if rv(&event["object"]) >= target {
            break;
        }
    }
}

#[tokio::test]
async fn send_initial_events_ends_with_an_annotated_bookmark() {
    let (_emu, client) = start().await;
    client
        .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
        .await;
    let mut watch = client
        .watch(&format!("{WE}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"))
        .await;
    assert_eq!(watch.next().await.unwrap()["type"], "ADDED");
    let end = watch.next().await.unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    let bad = client
        .get(&format!("{WE}?watch=true&sendInitialEvents=true"))
        .await;
    assert_eq!(bad.status, 422);
}

#[tokio::test]
async fn too_old_resource_version_gets_410_expired() {
    let (emu, client) = start_with(EmulatorOptions {
        history_window: 3,
        ..Default::default()
    })
    .await;
    let old = emu.resource_version();
    for i in 0..5 {
        client
            .post(
                WE,
                &workload_entry(&format!("we-{i}"), "10.0.0.1", json!({})),
            )
            .await;
    }
    let mut watch = client
        .watch(&format!("{WE}?watch=true&resourceVersion={old}"))
        .await;
    let error = watch.next().await.unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(
        watch.next().await.is_none(),
        "the stream ends after the error"
    );

    // Within the window a watch still works.
    let recent = emu.resource_version() - 1;
    let mut watch = client
        .watch(&format!("{WE}?watch=true&resourceVersion={recent}"))
        .await;
    assert_eq!(
        watch.next_change().await.unwrap()["object"]["metadata"]["name"],
        "we-4"
    );

    emu.compact_history();
    let mut watch = client
        .watch(&format!("{WE}?watch=true&resourceVersion={recent}"))
        .await;
    assert_eq!(watch.next().await.unwrap()["object"]["reason"], "Expired");
}

#[tokio::test]
async fn resource_version_from_the_future_is_a_timeout_error() {
    let (emu, client) = start().await;
    let future = emu.resource_version() + 1000;
    let mut watch = client
        .watch(&format!("{WE}?watch=true&resourceVersion={future}"))
        .await;
    let error = watch.next().await.unwrap();
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["code"], 504);
    assert_eq!(
        error["object"]["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn selector_transitions_become_adds_and_deletes() {
    let (emu, client) = start().await;
    client
        .post(WE, &workload_entry("a", "10.0.0.1", json!({"sync": "yes"})))
        .await;
    let from = emu.resource_version();
    let mut watch = client
        .watch(&format!(
            "{WE}?watch=true&resourceVersion={from}&labelSelector=sync%3Dyes"
        ))
        .await;
    let path = format!("{WE}/a");
    client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"sync":"no"}}}"#,
        )
        .await;
    client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"spec":{"weight":3}}"#,
        )
        .await;
    client
        .patch(
            &path,
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"sync":"yes"}}}"#,
        )
        .await;
    assert_eq!(
        watch.next_change().await.unwrap()["type"],
        "DELETED",
        "left the selector"
    );
    let back = watch.next_change().await.unwrap();
    assert_eq!(
        back["type"], "ADDED",
        "re-entered the selector; the change while outside was not seen"
    );
    assert_eq!(back["object"]["spec"]["weight"], 3);
}

#[tokio::test]
async fn dropped_and_timed_out_watches_end() {
    let (emu, client) = start().await;
    let from = emu.resource_version();
    let mut dropped = client
        .watch(&format!("{WE}?watch=true&resourceVersion={from}"))
        .await;
    client
        .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
        .await;
    assert_eq!(dropped.next_change().await.unwrap()["type"], "ADDED");
    emu.faults().drop_watches();
    assert!(dropped.next().await.is_none());

    // A new watch after the drop works, resumes from a resourceVersion, and ends at its
    // timeout.
    let mut timed = client
        .watch(&format!(
            "{WE}?watch=true&resourceVersion={from}&timeoutSeconds=1"
        ))
        .await;
    assert_eq!(
        timed.next_change().await.unwrap()["object"]["metadata"]["name"],
        "a"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(30), timed.next())
            .await
            .unwrap()
            .is_none()
    );
}
