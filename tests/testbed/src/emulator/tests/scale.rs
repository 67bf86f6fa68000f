//! Scale: many objects through apply, paged lists and a watch (correctness only; speed is
//! for `cargo xtask bench`).

use serde_json::json;

use super::super::Verb;
use super::{WE, start, workload_entry};

const COUNT: usize = 2_000;

#[tokio::test]
async fn thousands_of_applied_entries_list_page_and_watch_consistently() {
    let (emu, client) = start().await;
    let from = emu.resource_version();
    let mut watch = client
        .watch(&format!(
            "{WE}?watch=true&resourceVersion={from}&allowWatchBookmarks=true"
        ))
        .await;
    let started = std::time::Instant::now();
    for i in 0..COUNT {
        let name = format!("autogenflat.c2.default.pod{i}.000000000000");
        let config = workload_entry(
            &name,
            &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            json!({"app.kubernetes.io/managed-by": "peerd"}),
        );
        let reply = client
            .patch(
                &format!("{WE}/{name}?fieldManager=peerd"),
                "application/apply-patch+yaml",
                &config.to_string(),
            )
            .await;
        assert_eq!(reply.status, 201);
    }
    eprintln!("{COUNT} applies in {:?}", started.elapsed());
    let mut seen = 0;
    while seen < COUNT {
        let event = watch.next_change().await.unwrap();
        assert_eq!(event["type"], "ADDED");
        seen += 1;
    }
    eprintln!("watched in {:?}", started.elapsed());

    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get(&format!("{WE}?limit=500&continue={token}"))
            .await
            .body;
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        match page["metadata"]["continue"].as_str() {
            Some(next) => token = next.to_string(),
            None => break,
        }
    }
    assert_eq!(names.len(), COUNT);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), COUNT, "no duplicates across pages");
    eprintln!("paged in {:?}", started.elapsed());

    emu.reset_counters();
    for i in (0..COUNT).step_by(100) {
        let name = format!("autogenflat.c2.default.pod{i}.000000000000");
        let config = workload_entry(
            &name,
            &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            json!({"app.kubernetes.io/managed-by": "peerd"}),
        );
        client
            .patch(
                &format!("{WE}/{name}?fieldManager=peerd"),
                "application/apply-patch+yaml",
                &config.to_string(),
            )
            .await;
    }
    let rv = emu.resource_version();
    assert_eq!(emu.counters().verb(Verb::Apply), (COUNT / 100) as u64);
    let list = client.get(&format!("{WE}?limit=1")).await.body;
    assert_eq!(
        list["metadata"]["resourceVersion"],
        rv.to_string(),
        "identical re-applies wrote nothing"
    );
}
