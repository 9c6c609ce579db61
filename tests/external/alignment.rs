//! Watermark alignment against the real broker: of two partitions of the activity topic, one
//! covers ten times as many days per fetched byte as the other, so it runs ahead in event time;
//! with `source.max_read_ahead = "1d"` it is held back (not read from its own queue) and read
//! again as the other catches up. The run must read every message exactly once (tansu 0.6 serves
//! nothing to a fetch that starts inside a record batch, which is where pausing and resuming a
//! partition in the client would fetch from) and compute what a run without alignment does.

use crate::common::{canonical, Cluster, EventType};
use crate::harness::{once, produce_payloads, run_in_process, PipelineFile};
use crate::pipeline_mock::latest_tables;

use super::{brokers, tag};

/// `n` activities on `days` consecutive days from 2026-01-01, in event-time order.
fn activities(prefix: &str, n: usize, days: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let at = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
                + chrono::Days::new((i * days / n) as u64);
            format!(
                r#"{{"event_id":"{prefix}-{i}","occurred_at":"{at}T10:00:00Z","rep_id":"rep-{}","activity_type":"call","outcome":"connected","duration_s":60}}"#,
                i % 7
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_partition_far_ahead_in_event_time_is_paused_and_every_message_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    // Small fetches: each brings a few dozen messages of a partition, days of the dense one
    // and weeks of the sparse one.
    let file = PipelineFile::default()
        .set("source", "max_read_ahead", "\"1d\"")
        .kafka("max.partition.fetch.bytes", "8192")
        .tag_topics(&tag("alignment"));
    let aligned = file.load();
    let unaligned = file.set("source", "max_read_ahead", "\"0s\"").load();
    let brokers = brokers();
    let topics: Vec<&str> = aligned.source.topics.values().map(String::as_str).collect();
    Cluster::new(&brokers, &aligned.source.kafka)
        .ensure_topics(&topics, 2)
        .await
        .unwrap();
    let topic = aligned.source.topics[&EventType::Activity].as_str();
    let dense = activities("dense", 4000, 200);
    let sparse = activities("sparse", 400, 200);
    produce_payloads(
        &brokers,
        dense
            .iter()
            .map(|v| (topic, Some(0), v.as_bytes()))
            .chain(sparse.iter().map(|v| (topic, Some(1), v.as_bytes()))),
    );
    let total = (dense.len() + sparse.len()) as u64;

    let on = dir.path().join("aligned");
    let on = on.to_str().unwrap();
    let report = run_in_process(&aligned, once(&brokers, on)).await;
    assert!(
        report.partitions_paused > 0,
        "the sparse partition ran ahead and was never held back: {report:?}"
    );
    assert_eq!(report.messages, total, "{report:?}");

    let off = dir.path().join("unaligned");
    let off = off.to_str().unwrap();
    let report = run_in_process(&unaligned, once(&brokers, off)).await;
    assert_eq!(report.partitions_paused, 0, "{report:?}");
    assert_eq!(report.messages, total, "{report:?}");

    let mut with = canonical(&latest_tables(on).await);
    let mut without = canonical(&latest_tables(off).await);
    // Every event folded once: none a duplicate, none late.
    let quality = &with["data_quality"];
    assert_eq!(quality.len(), 1, "{quality:?}");
    assert!(quality[0].contains("\"reason\":\"ok\""), "{quality:?}");
    assert!(
        quality[0].contains(&format!("\"count\":{total}")),
        "{quality:?}"
    );
    // The snapshots table says when each snapshot was taken; every other table is the same.
    with.remove("snapshots");
    without.remove("snapshots");
    assert_eq!(with, without);
}
