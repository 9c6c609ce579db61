//! Lateness on librdkafka's mock cluster: two partitions months apart in event time, read in
//! whatever order the consumer picks, then an event far behind both.

use rdkafka::mocking::MockCluster;

use crate::common::{canonical, EventType};
use crate::harness::{once, produce_payloads, run_in_process};
use crate::pipeline_mock::latest_tables;

fn activity(id: &str, at: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","occurred_at":"{at}","rep_id":"rep-1","activity_type":"call","outcome":"connected","duration_s":60}}"#
    )
}

fn produce(brokers: &str, topic: &str, partition: i32, values: &[String]) {
    produce_payloads(
        brokers,
        values
            .iter()
            .map(|v| (topic, Some(partition), v.as_bytes())),
    );
}

fn rows(
    tables: &std::collections::BTreeMap<String, Vec<String>>,
    table: &str,
) -> Vec<serde_json::Value> {
    tables[table]
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_partition_holds_the_watermark_and_only_the_truly_late_event_is_dropped() {
    let p = crate::common::pipeline();
    // Only the activity topic exists, with two partitions.
    let cluster = MockCluster::new(1).unwrap();
    let topic = p.source.topics[&EventType::Activity].clone();
    cluster.create_topic(&topic, 2, 1).unwrap();
    cluster
        .create_topic(&p.source.dead_letter_topic, 1, 1)
        .unwrap();
    cluster
        .create_topic(&p.alert_delivery.kafka_topic, 1, 1)
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    // Partition 0 runs in September 2026, partition 1 sits in May: 120 days and more behind
    // partition 0's end. Read in any order, none of it is late: while partition 1 has not
    // delivered there is no watermark, and once it has, it holds the watermark at May 15.
    let fast: Vec<String> = (0..3000)
        .map(|i| {
            activity(
                &format!("fast-{i}"),
                &format!("2026-09-{:02}T10:00:00Z", 1 + i % 30),
            )
        })
        .collect();
    let slow: Vec<String> = (0..50)
        .map(|i| {
            activity(
                &format!("slow-{i}"),
                &format!("2026-05-{:02}T10:00:00Z", 1 + i % 15),
            )
        })
        .collect();
    produce(&brokers, &topic, 0, &fast);
    produce(&brokers, &topic, 1, &slow);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let opts = once(&brokers, out);
    run_in_process(&p, opts.clone()).await;
    let t = canonical(&latest_tables(out).await);
    let quality = rows(&t, "data_quality");
    let count = |reason: &str| {
        quality
            .iter()
            .find(|r| r["reason"] == reason)
            .map_or(0, |r| r["count"].as_i64().unwrap())
    };
    assert_eq!(count("ok"), 3050, "{quality:?}");
    assert_eq!(count("late"), 0);

    // Now an event from January on the fast partition: whatever the idleness of partition 1,
    // the watermark is at least May 15, and January 5 is more than 120 days before it.
    // A June 10 event on it is months behind partition 0 but not late, whatever the idleness
    // of partition 1 too: at most 120 days before September 30.
    produce(
        &brokers,
        &topic,
        0,
        &[
            activity("stale", "2026-01-05T10:00:00Z"),
            activity("behind", "2026-06-10T10:00:00Z"),
        ],
    );
    run_in_process(&p, opts).await;
    let t = canonical(&latest_tables(out).await);
    let dead = rows(&t, "dead_letters");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "late");
    assert_eq!(dead[0]["partition"], 0);
    assert_eq!(dead[0]["offset"], 3000);
    assert!(
        dead[0]["detail"]
            .as_str()
            .unwrap()
            .contains("allowed_lateness"),
        "{dead:?}"
    );
    let days: Vec<String> = rows(&t, "rep_daily")
        .iter()
        .map(|r| r["day"].as_str().unwrap().to_string())
        .collect();
    assert!(
        !days.contains(&"2026-01-05".to_string()),
        "the late event changed no table"
    );
    assert!(
        days.contains(&"2026-06-10".to_string()),
        "the event behind was folded in"
    );
    let quality = rows(&t, "data_quality");
    let late = quality.iter().find(|r| r["reason"] == "late").unwrap();
    assert_eq!(late["count"], 1);
}
