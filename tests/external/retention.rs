//! Input lost to the broker's retention: a pipeline is stopped, the broker deletes the offsets
//! it would have read next, and the next run counts them as `lost_offsets` everywhere a user
//! looks (`data_quality`, `/healthz`, `/metrics`, the checkpoint and `quotaflow snapshots`).
//!
//! The broker is a tansu of the test's own on its SQLite engine (`sqlite://`), the engine of
//! tansu 0.6 that applies a topic's `retention.ms` (its memory engine deletes nothing). It
//! applies it at start and then every 10 minutes, so the test restarts it rather than wait.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quotaflow::snapshot::Location;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::{pipeline_file, tag, OwnBroker};
use crate::common::{canonical, Cluster, EventType};
use crate::harness::{bin, eventually, free_port, run_command, run_once_process, Endpoint, Reaped};
use crate::harness::{messages_read, PipelineFile};
use crate::pipeline_mock::latest_tables;

/// The activity topic's retention: records older than this are deleted by the broker.
const RETENTION: Duration = Duration::from_secs(3600);
/// How long the restarted broker may take to apply the retention.
const DELETED_WITHIN: Duration = Duration::from_secs(60);
/// How long the continuous run may take to read what is left.
const READ_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn offsets_the_brokers_retention_deleted_while_the_pipeline_was_stopped_are_counted_as_lost()
{
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, storage) = OwnBroker::start_sqlite(dir.path(), "tansu.db");
    let port = free_port();
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("retention"),
        PipelineFile::default().http_port(port),
    );
    let topic = p.source.topics[&EventType::Activity].clone();
    create_with_retention(&broker.brokers, &topic).await;
    let others: Vec<&str> = p
        .source
        .topics
        .values()
        .map(String::as_str)
        .filter(|t| *t != topic)
        .collect();
    Cluster::new(&broker.brokers, &p.source.kafka)
        .ensure_topics(&others, 1)
        .await
        .unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    // Read: 100 activities whose records are already older than the retention.
    let old = now_ms() - 2 * RETENTION.as_millis() as i64;
    produce_at(&broker.brokers, &topic, 0..100, old);
    let first = run_once_process(&file, &broker.brokers, out);
    assert_eq!(messages_read(&first), 100, "{first}");

    // Not read: 50 more, then the pipeline stays stopped while the broker deletes them all.
    produce_at(&broker.brokers, &topic, 100..150, old);
    broker.kill_and_restart(&storage);
    produce_at(&broker.brokers, &topic, 150..160, now_ms());
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.brokers)
        .create()
        .unwrap();
    eventually(
        "the broker to delete offsets 0..150 by retention",
        DELETED_WITHIN,
        || async {
            consumer
                .fetch_watermarks(&topic, 0, Duration::from_secs(5))
                .is_ok_and(|w| w == (150, 160))
        },
    )
    .await;

    // The next run reads the 10 left and says the 50 it never saw were lost.
    let mut run = Reaped(
        run_command(&file, &broker.brokers, out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = Endpoint::on(port);
    let body = eventually("the 10 messages left read", READ_WITHIN, || async {
        let (_, body) = endpoint.healthz().await?;
        (endpoint.messages_counted().await == Some(110)).then_some(body)
    })
    .await;
    assert_eq!(body["lost_offsets"][&topic], 50, "{body}");
    let metrics = endpoint.metrics().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "quotaflow_lost_offsets_total{{topic=\"{topic}\"}} 50\n"
        )),
        "{metrics}"
    );
    super::signal(run.0.id(), "-TERM");
    assert!(run.0.wait().unwrap().success());

    let tables = canonical(&latest_tables(out).await);
    let quality = &tables["data_quality"];
    for row in [
        format!(r#"{{"topic":"{topic}","reason":"lost_offsets","count":50}}"#),
        format!(r#"{{"topic":"{topic}","reason":"ok","count":110}}"#),
    ] {
        assert!(quality.contains(&row), "{row} not in {quality:?}");
    }
    let loc = Location::parse(out).unwrap();
    let latest = loc.latest().await.unwrap().unwrap().snapshot_id;
    let c = loc.checkpoint(latest).await.unwrap();
    assert_eq!(c.lost_offsets[&topic], 50);
    assert_eq!(c.offsets[&topic][&0], 160);
    let listed = std::process::Command::new(bin())
        .args(["snapshots", "--output", out, "--format", "csv"])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    let row = listed
        .lines()
        .find(|l| l.starts_with(&format!("{latest},")))
        .unwrap_or_else(|| panic!("no snapshot {latest} in {listed}"));
    assert!(row.ends_with(&format!(",{topic}:50")), "{listed}");
}

/// Creates `topic` (one partition) with `cleanup.policy=delete` and `retention.ms`.
async fn create_with_retention(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let retention = RETENTION.as_millis().to_string();
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "delete")
        .set("retention.ms", &retention);
    let made = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .unwrap();
    assert!(made.iter().all(Result::is_ok), "{made:?}");
}

/// Produces activities `ids` of one rep to partition 0 of `topic`, as records stamped `at` (ms).
fn produce_at(brokers: &str, topic: &str, ids: std::ops::Range<usize>, at: i64) {
    let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for i in ids {
        let value = format!(
            r#"{{"event_id":"a-{i}","occurred_at":"2026-03-10T10:{:02}:{:02}Z","rep_id":"rep-00001","activity_type":"call","outcome":"connected","duration_s":60}}"#,
            (i / 60) % 60,
            i % 60
        );
        let record = BaseRecord::<str, str>::to(topic)
            .partition(0)
            .key("rep-00001")
            .payload(&value)
            .timestamp(at);
        p.send(record).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
