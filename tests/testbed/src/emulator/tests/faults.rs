//! Fault injection (from Rust and over HTTP) and request counters.

use std::time::{Duration, Instant};

use serde_json::json;

use super::super::Verb;
use super::{WE, start, workload_entry};

#[tokio::test]
async fn fail_next_answers_5xx_then_recovers() {
    let (emu, client) = start().await;
    emu.faults().fail_next(2, 503);
    for _ in 0..2 {
        let reply = client.get(WE).await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.body["reason"], "ServiceUnavailable");
    }
    assert_eq!(client.get(WE).await.status, 200);
    assert_eq!(
        client.get("/version").await.status,
        200,
        "discovery is never faulted"
    );
    assert_eq!(emu.counters().outcome(Verb::List, 503), 2);
    assert_eq!(emu.counters().outcome(Verb::List, 200), 1);
}

#[tokio::test]
async fn fault_fraction_of_one_fails_everything_until_cleared() {
    let (emu, client) = start().await;
    emu.faults().fail_fraction(1.0);
    assert_eq!(
        client
            .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
            .await
            .status,
        500
    );
    assert!(
        emu.object(
            "networking.istio.io",
            "workloadentries",
            "istio-system",
            "a"
        )
        .is_none(),
        "a failed write stores nothing"
    );
    emu.faults().clear();
    assert_eq!(
        client
            .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn conflict_storm_hits_writes_only() {
    let (_emu, client) = start().await;
    let reply = client
        .post("/__emulator/faults", &json!({"conflict_next": 2}))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        client
            .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
            .await
            .status,
        409
    );
    assert_eq!(client.get(WE).await.status, 200, "reads are not affected");
    assert_eq!(
        client
            .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
            .await
            .status,
        409
    );
    assert_eq!(
        client
            .post(WE, &workload_entry("a", "10.0.0.1", json!({})))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn delay_slows_responses_down() {
    let (emu, client) = start().await;
    emu.faults().set_delay(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(client.get(WE).await.status, 200);
    // A lower bound only: the delay is a sleep before answering.
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn control_endpoint_validates_and_drives_faults() {
    let (emu, client) = start().await;
    let bad = client
        .post("/__emulator/faults", &json!({"fail_status": 404}))
        .await;
    assert_eq!(bad.status, 400);
    let unknown = client
        .post("/__emulator/faults", &json!({"explode": true}))
        .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(
        client
            .post(
                "/__emulator/faults",
                &json!({"fail_next": 1, "fail_status": 502})
            )
            .await
            .status,
        200
    );
    assert_eq!(client.get(WE).await.status, 502);
    assert_eq!(client.get(WE).await.status, 200);

    let from = emu.resource_version();
    let mut watch = client
        .watch(&format!("{WE}?watch=true&resourceVersion={from}"))
        .await;
    client
        .post("/__emulator/faults", &json!({"drop_watches": true}))
        .await;
    assert!(watch.next().await.is_none());

    let counters = client.get("/__emulator/counters").await.body;
    assert_eq!(
        counters["by_verb"]["get"],
        json!(null),
        "no object GETs were made"
    );
    assert_eq!(counters["by_verb"]["list"], 2);
    assert_eq!(counters["by_verb"]["watch"], 1);
    assert_eq!(
        client
            .post("/__emulator/counters/reset", &json!({}))
            .await
            .status,
        200
    );
    assert_eq!(emu.counters().by_verb.len(), 0);
    let compacted = client.post("/__emulator/compact", &json!({})).await;
    assert_eq!(
        compacted.body["oldestResourceVersion"],
        emu.resource_version().to_string()
    );
}

#[tokio::test]
async fn counters_prove_zero_writes_at_steady_state() {
    let (emu, client) = start().await;
    let config = workload_entry(
        "a",
        "10.0.0.1",
        json!({"app.kubernetes.io/managed-by": "peerd"}),
    )
    .to_string();
    let apply_path = format!("{WE}/a?fieldManager=peerd");
    client
        .patch(&apply_path, "application/apply-patch+yaml", &config)
        .await;
    client.get(&format!("{WE}/a")).await;
    client.delete(&format!("{WE}/missing")).await;
    let counts = emu.counters();
    assert_eq!(counts.verb(Verb::Apply), 1);
    assert_eq!(counts.verb(Verb::Get), 1);
    assert_eq!(counts.writes(), 2, "one apply + one (failed) delete");
    assert_eq!(
        counts.on(Verb::Apply, "workloadentries.networking.istio.io"),
        1
    );
    assert_eq!(counts.outcome(Verb::Apply, 201), 1);
    assert_eq!(counts.outcome(Verb::Delete, 404), 1);
    assert_eq!(counts.successful_writes(), 1);

    emu.reset_counters();
    client.get(WE).await;
    assert_eq!(emu.counters().writes(), 0);
}
