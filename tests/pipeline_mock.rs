//! End to end on librdkafka's in-process mock cluster: produce, `run --once`, read the snapshot.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::Message;

use quotaflow::config::Pipeline;
use quotaflow::generate::{generate, GenSpec};
use quotaflow::pipeline::RunOptions;
use quotaflow::snapshot::Location;

use quotaflow::ingest::{self, Ingest};

use crate::common::{canonical, compute, FAR_FUTURE};
use crate::harness::{
    continuous, eventually, eventually_blocking, free_port, messages_total, once, produce,
    run_in_process, Endpoint, PipelineFile, Running,
};

pub fn spec(seed: u64) -> GenSpec {
    GenSpec {
        reps: 12,
        days: 24,
        seed,
        start: NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
        silence: None,
    }
}

/// Generated messages plus a few bad ones: (topic, key, value).
pub fn messages(p: &Pipeline, seed: u64) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    generate(&spec(seed), |g| {
        out.push((p.source.topics[&g.event_type].clone(), g.key, g.value))
    });
    out.insert(
        10,
        (
            "spm.activities".into(),
            "rep-00001".into(),
            "{not json".into(),
        ),
    );
    out.insert(20, ("spm.deals".into(), "deal-x".into(), r#"{"deal_id":"deal-x","version":1,"occurred_at":"2026-03-02T10:00:00Z","rep_id":"rep-00001","stage":"prospecting","amount":"-5.00","currency":"USD","close_date":"2026-04-01","created_at":"2026-03-02T10:00:00Z"}"#.into()));
    out
}

pub fn cluster(p: &Pipeline) -> MockCluster<'static, DefaultProducerContext> {
    cluster_of(p, 4)
}

/// A mock cluster with the pipeline's topics, `partitions` each, and its dead-letter and
/// alert topics.
pub fn cluster_of(p: &Pipeline, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let c = MockCluster::new(1).unwrap();
    for t in p.source.topics.values() {
        c.create_topic(t, partitions, 1).unwrap();
    }
    c.create_topic(&p.source.dead_letter_topic, 1, 1).unwrap();
    c.create_topic(&p.alert_delivery.kafka_topic, 1, 1).unwrap();
    c
}

/// A mock cluster (`cluster`) holding `messages(p, seed)`: the cluster (alive as long as it
/// is held), its bootstrap servers and the messages.
pub fn produced(
    p: &Pipeline,
    seed: u64,
) -> (
    MockCluster<'static, DefaultProducerContext>,
    String,
    Vec<(String, String, String)>,
) {
    let c = cluster(p);
    let brokers = c.bootstrap_servers();
    let msgs = messages(p, seed);
    produce(&brokers, 10_000, &msgs);
    (c, brokers, msgs)
}

/// Every table of the latest snapshot under `output`, as (name, batches).
pub async fn latest_tables(
    output: &str,
) -> Vec<(String, Vec<datafusion::arrow::array::RecordBatch>)> {
    let loc = Location::parse(output).unwrap();
    let id = loc.latest().await.unwrap().expect("a snapshot").snapshot_id;
    let m = loc.checkpoint(id).await.unwrap();
    let mut out = Vec::new();
    for name in m.tables.keys() {
        out.push((name.clone(), loc.read_table(&m, name).await.unwrap().1));
    }
    out
}

/// The same messages through the library's batch path (`quotaflow::ingest::batch`, then the
/// same SQL), without Kafka: what the stream must equal.
pub async fn batch_tables(
    p: &Arc<Pipeline>,
    msgs: &[(String, String, String)],
) -> Vec<(String, Vec<datafusion::arrow::array::RecordBatch>)> {
    let (state, _) = batch_state(p, msgs);
    compute(p, &state)
        .await
        .into_iter()
        .map(|t| (t.name, t.batches))
        .collect()
}

/// The state of the batch path over `msgs` (one partition, offsets in order), with the
/// messages it refused.
pub fn batch_state(
    p: &Pipeline,
    msgs: &[(String, String, String)],
) -> (quotaflow::state::State, Vec<quotaflow::source::DeadLetter>) {
    let ingest = Ingest::new(&p.source, p.metrics.calendar).unwrap();
    let messages = msgs
        .iter()
        .enumerate()
        .map(|(i, (topic, _, value))| ingest::Message {
            topic,
            partition: 0,
            offset: i as i64,
            payload: value.as_bytes(),
        });
    ingest::batch(&ingest, messages, FAR_FUTURE)
}

/// alert_id of every (rule, key) firing in the state of the latest snapshot under `output`.
async fn firing_ids(output: &str) -> std::collections::BTreeMap<(String, String), String> {
    let loc = Location::parse(output).unwrap();
    let m = loc
        .checkpoint(loc.latest().await.unwrap().unwrap().snapshot_id)
        .await
        .unwrap();
    let state = quotaflow::pipeline::read_state(&loc, &m).await.unwrap();
    state
        .alerts
        .firing
        .into_iter()
        .map(|(k, a)| (k, a.alert_id))
        .collect()
}

/// (rule, key, "firing") of every alert firing in a snapshot's `alerts` table, sorted.
/// (Resolved ones may differ: a run that snapshots more often can see a breach come and go.)
pub fn firing_alerts(
    tables: &[(String, Vec<datafusion::arrow::array::RecordBatch>)],
) -> Vec<(String, String, String)> {
    let (_, batches) = tables
        .iter()
        .find(|(n, _)| n == "alerts")
        .expect("an alerts table");
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let mut out: Vec<_> = crate::common::json_rows(batches)
        .iter()
        .filter(|r| r["state"] == "firing")
        .map(|r| (text(&r["rule"]), text(&r["key"]), text(&r["state"])))
        .collect();
    out.sort();
    out
}

/// Tables without `name` and without the two alert tables: alert ids name the snapshot an
/// alert fired in, and delivery counts follow the runs, so both depend on how often a run
/// snapshots, which is the point of them (the pipeline adds them after the SQL).
pub fn without(
    mut t: std::collections::BTreeMap<String, Vec<String>>,
    name: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    t.remove(name);
    t.remove("alerts");
    t.remove("alert_deliveries");
    // Wall-clock times and snapshot ids: `snapshots` has tests of its own.
    t.remove("snapshots");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_equals_batch_and_bad_input_reaches_the_dead_letter_topic() {
    let p = crate::common::pipeline();
    let (_c, brokers, msgs) = produced(&p, 1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();

    let report = run_in_process(&p, once(&brokers, out)).await;
    assert_eq!(report.messages, msgs.len() as u64);

    let streamed = canonical(&latest_tables(out).await);
    let batch = canonical(&batch_tables(&p, &msgs).await);
    assert_eq!(
        without(streamed.clone(), "dead_letters"),
        without(batch, "dead_letters")
    );
    assert!(
        streamed["attainment"].len() > 20,
        "the generated quarter yields attainment rows"
    );

    let dl = &streamed["dead_letters"];
    assert_eq!(dl.len(), 2);
    assert!(dl
        .iter()
        .any(|r| r.contains("\"reason\":\"invalid_json\"") && r.contains("{not json")));
    assert!(dl
        .iter()
        .any(|r| r.contains("\"reason\":\"negative_amount\"")));

    // The dead-letter topic got both, as JSON with their coordinates.
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&p.source.dead_letter_topic]).unwrap();
    let mut got = Vec::new();
    eventually_blocking(
        "both dead letters on the dead-letter topic",
        Duration::from_secs(30),
        || {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                got.push(v);
            }
            got.len() >= 2
        },
    );
    let mut reasons: Vec<&str> = got.iter().map(|v| v["reason"].as_str().unwrap()).collect();
    reasons.sort();
    assert_eq!(reasons, ["invalid_json", "negative_amount"]);
    let bad_json = got.iter().find(|v| v["reason"] == "invalid_json").unwrap();
    assert_eq!(bad_json["topic"], "spm.activities");
    assert_eq!(bad_json["payload"], "{not json");
    assert!(bad_json["offset"].is_i64() && bad_json["partition"].is_i64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_and_resumed_run_equals_an_uninterrupted_one() {
    let p = crate::common::pipeline();
    let (_c, brokers, msgs) = produced(&p, 2);
    let whole = tempfile::tempdir().unwrap();
    let pieces = tempfile::tempdir().unwrap();
    let (whole, pieces) = (
        whole.path().to_str().unwrap(),
        pieces.path().to_str().unwrap(),
    );

    run_in_process(&p, once(&brokers, whole)).await;
    // Stop three times part-way (each stop writes a snapshot), then finish.
    let mut read = 0;
    for chunk in [msgs.len() as u64 / 5, msgs.len() as u64 / 3, 7] {
        let r = run_in_process(
            &p,
            RunOptions {
                max_events: Some(chunk),
                ..once(&brokers, pieces)
            },
        )
        .await;
        assert_eq!(r.messages, chunk);
        assert_eq!(r.restored_from.is_some(), read > 0);
        read += chunk;
    }
    let last = run_in_process(&p, once(&brokers, pieces)).await;
    assert_eq!(
        read + last.messages,
        msgs.len() as u64,
        "every message read exactly once over the runs"
    );
    let (whole_tables, piece_tables) = (latest_tables(whole).await, latest_tables(pieces).await);
    assert_eq!(
        without(canonical(&whole_tables), "alerts"),
        without(canonical(&piece_tables), "alerts")
    );
    // The same alerts are firing at the end, whatever the stops (their ids name other snapshots).
    assert_eq!(firing_alerts(&whole_tables), firing_alerts(&piece_tables));
    assert!(
        !firing_alerts(&whole_tables).is_empty(),
        "the generated quarter fires alerts"
    );

    // Nothing new: a further --once run reads nothing and leaves _latest where it was.
    let loc = Location::parse(pieces).unwrap();
    let before = loc.latest().await.unwrap();
    let again = run_in_process(&p, once(&brokers, pieces)).await;
    assert_eq!(again.messages, 0);
    assert_eq!(loc.latest().await.unwrap(), before);

    // A restart with one more (duplicate) message: the alerts still breaching keep their ids,
    // none fires again and none is forgotten.
    let firing_before = firing_ids(pieces).await;
    assert!(
        !firing_before.is_empty(),
        "the generated quarter fires alerts"
    );
    produce(&brokers, 10_000, &msgs[..1]);
    let one_more = run_in_process(&p, once(&brokers, pieces)).await;
    assert_eq!((one_more.messages, one_more.snapshots), (1, 1));
    assert_eq!(firing_ids(pieces).await, firing_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_every_n_events_and_retention_keeps_the_newest() {
    // Maintenance after every snapshot, a Delta log checkpoint at every commit, a state part
    // compacted as soon as it has two segments.
    let p = PipelineFile::default()
        // Its own /metrics port: the demo test binds the default one at the same time.
        .http_port(free_port())
        .snapshot("trigger_events", "200")
        .snapshot("trigger_interval", "\"1h\"")
        .snapshot("retention", "3")
        .snapshot("maintenance_every", "1")
        .snapshot("log_checkpoint_interval", "1")
        .snapshot("compact_after", "1")
        .load();
    let (_c, brokers, msgs) = produced(&p, 3);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_string();
    // Two runs of at most a third of the messages each, then one to the end.
    let mut snapshots = 0;
    let third = msgs.len() as u64 / 3;
    for max in [Some(third), Some(third), None] {
        let o = RunOptions {
            max_events: max,
            ..once(&brokers, &out)
        };
        let r = run_in_process(&p, o).await;
        // No interval trigger in an hour: a snapshot besides the final one came from the
        // event trigger (one in flight at a time, so not necessarily one per 200 events).
        assert!(r.snapshots >= 2, "the event trigger fired: {}", r.snapshots);
        snapshots += r.snapshots;
    }
    let loc = Location::parse(&out).unwrap();
    let ids = loc.checkpoint_ids().await.unwrap();
    let latest = loc.latest().await.unwrap().unwrap().snapshot_id;
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(*ids.last().unwrap(), latest);
    assert_eq!(latest, snapshots);
    // The checkpoint accounts for every message: offsets sum to the messages produced, and
    // `events` counts them.
    let m = loc.checkpoint(latest).await.unwrap();
    let total: i64 = m.offsets.values().flat_map(|p| p.values()).sum();
    assert_eq!(total as usize, msgs.len());
    assert_eq!(m.events as usize, msgs.len());
    let (_, attainment) = loc.read_table(&m, "attainment").await.unwrap();
    assert!(attainment.iter().map(|b| b.num_rows()).sum::<usize>() > 0);
    // `snapshots` holds one row per retained snapshot, the latest with every message.
    let (_, rows) = loc.read_table(&m, "snapshots").await.unwrap();
    let rows = quotaflow::snapshot::retention::rows(&rows).unwrap();
    assert_eq!(rows.iter().map(|r| r.snapshot_id).collect::<Vec<_>>(), ids);
    assert_eq!(rows.last().unwrap().events as usize, msgs.len());
    assert!(rows
        .windows(2)
        .all(|w| w[0].events <= w[1].events && w[0].written_at <= w[1].written_at));
    // Forgotten snapshots' state files are gone with their checkpoints.
    for id in 1..ids[0] {
        assert!(loc.checkpoint(id).await.is_err(), "snapshot {id} was kept");
        // (A local store leaves the emptied directory behind.)
        let state = dir.path().join(format!("_state/{id:020}"));
        let files = std::fs::read_dir(&state).map_or(0, |d| d.count());
        assert_eq!(files, 0, "state of {id}");
    }
    // The state segments left are those the retained snapshots name (compacted chains and
    // forgotten snapshots' deltas are gone), and each retained state restores from them.
    let (on_disk, named) = segments_on_disk_and_named(&out).await;
    assert_eq!(on_disk, named);
    // Chains were compacted (a part holds two segments at the latest by then), and the bases
    // are named. (Whether a whole delta is left unnamed, and so deleted, depends on where the
    // event trigger cut, one cut in flight at a time: that was asserted here and failed once
    // in a run. The crash tests check that a crashed attempt's segments, which no snapshot
    // names, are deleted.)
    assert!(
        on_disk.iter().any(|f| f.ends_with(".base")),
        "no chain was compacted: {on_disk:?}"
    );
    // Every retained snapshot reads whole at its versions; the first version of a table that
    // changed since is gone (vacuumed, its log cleaned up).
    for id in &ids {
        let c = loc.checkpoint(*id).await.unwrap();
        for name in c.tables.keys() {
            loc.read_table(&c, name)
                .await
                .unwrap_or_else(|e| panic!("{id} {name}: {e}"));
        }
    }
    // (`snapshots` changes at every snapshot; whether attainment does depends on the cuts.)
    assert!(m.tables["snapshots"].version > 0);
    assert!(
        loc.read_delta("snapshots", Some(0)).await.is_err(),
        "version 0 is still readable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_serves_healthz_and_metrics() {
    let port = free_port();
    let p = PipelineFile::default()
        .http_port(port)
        .snapshot("trigger_interval", "\"200ms\"")
        .load();
    let (_c, brokers, msgs) = produced(&p, 4);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_string();
    let running = Running::start(&p, continuous(&brokers, &out));
    let endpoint = Endpoint::on(port);
    // Healthy once a snapshot is durable; every message counted in /metrics by then.
    let metrics = eventually(
        "/healthz ok with every message counted in /metrics",
        Duration::from_secs(60),
        || async {
            let (200, body) = endpoint.healthz().await? else {
                return None;
            };
            assert_eq!(body["status"], "ok");
            let text = endpoint.metrics().await.expect("/metrics answers 200");
            (messages_total(&text) == msgs.len() as u64).then_some(text)
        },
    )
    .await;
    let lines: std::collections::BTreeSet<&str> = metrics.lines().collect();
    let missing: Vec<&str> = [
        "quotaflow_dead_letters_total{reason=\"invalid_json\"} 1",
        "quotaflow_dead_letters_total{reason=\"negative_amount\"} 1",
        "quotaflow_consumer_lag{topic=\"spm.activities\",partition=\"0\"} 0",
        "quotaflow_up 1",
    ]
    .into_iter()
    .filter(|l| !lines.contains(l))
    .collect();
    assert!(missing.is_empty(), "missing {missing:?} in\n{metrics}");
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}: {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(sample("quotaflow_snapshot_id") >= 1.0);
    // The snapshot's Delta commits are counted: it created every table.
    assert!(
        sample("quotaflow_table_commits_total")
            >= p.metrics.tables.iter().filter(|t| t.publish).count() as f64
    );
    assert!(sample("quotaflow_files_added_total") > 0.0);
    assert!(sample("quotaflow_snapshot_bytes_written") > 0.0);
    // Every snapshot writes a state segment: the first everything, later ones what changed.
    assert!(sample("quotaflow_snapshot_state_bytes_written") > 0.0);
    assert!(
        sample("quotaflow_state_bytes_written_total")
            >= sample("quotaflow_snapshot_state_bytes_written")
    );
    assert!(sample("quotaflow_snapshot_commit_seconds") > 0.0);
    assert!(sample("quotaflow_vacuum_runs_total") >= 0.0);
    // The binary allocates from jemalloc, whose counters /metrics reads as it answers.
    assert!(sample("quotaflow_heap_allocated_bytes") > 1e6);
    assert!(sample("quotaflow_heap_resident_bytes") >= sample("quotaflow_heap_allocated_bytes"));
    running.stop().await;
    // The endpoint stops with the run.
    assert!(!endpoint.answers().await);
}

/// Offsets the broker deleted before a stopped pipeline read them are counted once, as
/// `lost_offsets` of their topic, in `data_quality` and the checkpoint (`quotaflow
/// snapshots`). librdkafka's mock cluster keeps only about the last 5 MB of a partition, as
/// if by retention (against a real broker's retention: `external::retention`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_deleted_before_they_were_read_are_counted_once_as_lost() {
    let p = crate::common::pipeline();
    let c = cluster_of(&p, 1);
    let brokers = c.bootstrap_servers();
    let topic = p.source.topics[&crate::common::EventType::Activity].clone();
    let activity = |i: usize| call(&topic, i);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let first: Vec<_> = (0..100).map(activity).collect();
    produce(&brokers, 10_000, &first);
    run_in_process(&p, once(&brokers, out)).await;

    // Then more than the mock keeps: the first of them are gone before the next run.
    let more: Vec<_> = (100..60_000).map(activity).collect();
    produce(&brokers, 10_000, &more);
    let (low, high) = log_bounds(&brokers, &topic);
    assert!(low > 100, "the mock deleted offsets 100..{low}");
    let lost = low - 100;
    let r = run_in_process(&p, once(&brokers, out)).await;
    assert_eq!(
        r.messages,
        (high - low) as u64,
        "it read from the log start on"
    );
    let lost_rows = |tables: &std::collections::BTreeMap<String, Vec<String>>| -> Vec<String> {
        tables["data_quality"]
            .iter()
            .filter(|r| r.contains("lost_offsets"))
            .cloned()
            .collect()
    };
    let tables = canonical(&latest_tables(out).await);
    assert_eq!(
        lost_rows(&tables),
        [format!(
            r#"{{"topic":"{topic}","reason":"lost_offsets","count":{lost}}}"#
        )]
    );
    // `ok` counts only the messages read.
    assert!(tables["data_quality"].contains(&format!(
        r#"{{"topic":"{topic}","reason":"ok","count":{}}}"#,
        100 + high - low
    )));
    let loc = Location::parse(out).unwrap();
    let listed = quotaflow::query::render(
        &[quotaflow::query::snapshots(&loc).await.unwrap()],
        quotaflow::query::Format::Csv,
    )
    .unwrap();
    assert!(listed.contains(&format!("{topic}:{lost}")), "{listed}");

    // A restart does not count them again.
    produce(&brokers, 10_000, &[activity(60_000)]);
    let r = run_in_process(&p, once(&brokers, out)).await;
    assert_eq!(r.messages, 1);
    let tables = canonical(&latest_tables(out).await);
    assert_eq!(
        lost_rows(&tables),
        [format!(
            r#"{{"topic":"{topic}","reason":"lost_offsets","count":{lost}}}"#
        )]
    );
    let c = loc
        .checkpoint(loc.latest().await.unwrap().unwrap().snapshot_id)
        .await
        .unwrap();
    assert_eq!(c.lost_offsets[&topic], lost as u64);
    assert_eq!(c.events, 100 + (high - low) as u64 + 1);
}

/// Activity `i` of rep-00001 on `topic`: a call, one second after activity `i - 1`.
/// The log start and end of partition 0 of `topic`, as the broker reports them.
fn log_bounds(brokers: &str, topic: &str) -> (i64, i64) {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap()
}

fn call(topic: &str, i: usize) -> (String, String, String) {
    (
        topic.to_string(),
        "rep-00001".to_string(),
        format!(
            r#"{{"event_id":"a-{i}","occurred_at":"2026-03-10T{:02}:{:02}:{:02}Z","rep_id":"rep-00001","activity_type":"call","outcome":"connected","duration_s":60}}"#,
            i / 3600,
            (i / 60) % 60,
            i % 60
        ),
    )
}

/// A running pipeline that falls behind retention counts what it skipped. Stopped (SIGSTOP)
/// while more than the mock cluster keeps is produced, it finds its next offset out of range
/// when it goes on: the offsets below the log start are counted as `lost_offsets`, in
/// `/healthz` and `data_quality`, and it reads on from the log start, each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pipeline_overtaken_by_retention_counts_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (file, p) = PipelineFile::default()
        .http_port(port)
        .write(dir.path(), "overtaken");
    let c = cluster_of(&p, 1);
    let brokers = c.bootstrap_servers();
    let topic = p.source.topics[&crate::common::EventType::Activity].clone();
    let calls = |ids: std::ops::Range<usize>| ids.map(|i| call(&topic, i)).collect::<Vec<_>>();
    produce(&brokers, 10_000, &calls(0..100));
    let out = dir.path().join("out");
    let mut run = crate::harness::Reaped(
        crate::harness::run_command(&file, &brokers, out.to_str().unwrap())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let endpoint = Endpoint::on(port);
    eventually("the first 100 read", Duration::from_secs(60), || async {
        endpoint.messages_counted().await == Some(100)
    })
    .await;

    // Stopped, it falls behind: the mock cluster keeps only about the last 5 MB.
    crate::harness::signal(run.0.id(), "-STOP");
    produce(&brokers, 10_000, &calls(100..60_000));
    let (low, high) = log_bounds(&brokers, &topic);
    assert!(low > 100, "the mock deleted offsets 100..{low}");
    crate::harness::signal(run.0.id(), "-CONT");
    let read = 100 + (high - low) as u64;
    // /healthz read after the count: the lost offsets are counted before the first message
    // past them, and a body read before the count could be older than both.
    let body = eventually("the rest read", Duration::from_secs(60), || async {
        if endpoint.messages_counted().await != Some(read) {
            return None;
        }
        endpoint.healthz().await.map(|(_, body)| body)
    })
    .await;
    assert_eq!(body["lost_offsets"][&topic], low - 100, "{body}");
    crate::harness::signal(run.0.id(), "-TERM");
    assert!(run.0.wait().unwrap().success());
    let tables = canonical(&latest_tables(out.to_str().unwrap()).await);
    for row in [
        format!(
            r#"{{"topic":"{topic}","reason":"lost_offsets","count":{}}}"#,
            low - 100
        ),
        format!(r#"{{"topic":"{topic}","reason":"ok","count":{read}}}"#),
    ] {
        assert!(tables["data_quality"].contains(&row), "{row}");
    }
}

/// The state segments of a local output: the files on disk, and those its checkpoints name,
/// after restoring every checkpoint's state from them (panics if one does not restore).
pub async fn segments_on_disk_and_named(out: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let loc = Location::parse(out).unwrap();
    let mut named = BTreeSet::new();
    for id in loc.checkpoint_ids().await.unwrap() {
        let c = loc.checkpoint(id).await.unwrap();
        quotaflow::pipeline::read_state(&loc, &c).await.unwrap();
        named.extend(c.state.segments);
    }
    let on_disk = std::fs::read_dir(std::path::Path::new(out).join("_state/segments"))
        .unwrap()
        .map(|e| {
            format!(
                "_state/segments/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    (on_disk, named)
}

/// A `--once` run (a replay) cuts intermediate snapshots at `once_trigger_interval`, not at
/// the continuous run's `trigger_interval`: with the first at an hour and the second at a
/// millisecond, it writes one snapshot, at the end, however long it reads.
/// While a snapshot is written, reading stops at `max_events_while_writing` for the next one:
/// no snapshot takes in more than that (or `trigger_events`), however slow the write. Reading
/// the produced messages from the queue takes microseconds each, a write tens of milliseconds:
/// without the bound, the reader would take in everything queued during the first write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_waits_for_the_write_instead_of_growing_the_next_cut() {
    let p = PipelineFile::default()
        .snapshot("trigger_events", "300")
        .snapshot("max_events_while_writing", "300")
        .snapshot("trigger_interval", "\"1h\"")
        .snapshot("retention", "1000")
        .load();
    let (_c, brokers, msgs) = produced(&p, 8);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let r = run_in_process(&p, once(&brokers, out)).await;
    assert_eq!(r.messages as usize, msgs.len());
    assert!(r.waits_for_write > 0, "reading never waited: {r:?}");
    let loc = Location::parse(out).unwrap();
    let m = loc.checkpoint(r.snapshots).await.unwrap();
    let (_, rows) = loc.read_table(&m, "snapshots").await.unwrap();
    let rows = quotaflow::snapshot::retention::rows(&rows).unwrap();
    assert_eq!(rows.len() as u64, r.snapshots, "every snapshot retained");
    let mut before = 0;
    for row in &rows {
        let took = row.events - before;
        assert!(
            took <= 300,
            "snapshot {} took in {took} messages",
            row.snapshot_id
        );
        before = row.events;
    }
    assert_eq!(before as usize, msgs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_once_run_pays_only_for_the_snapshots_its_own_interval_asks_for() {
    let p = PipelineFile::default()
        .snapshot("trigger_interval", "\"1ms\"")
        .snapshot("once_trigger_interval", "\"1h\"")
        .load();
    let (_c, brokers, msgs) = produced(&p, 20);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let started = std::time::Instant::now();
    let r = run_in_process(&p, once(&brokers, out)).await;
    assert_eq!(r.messages as usize, msgs.len());
    assert_eq!(r.snapshots, 1, "read for {:?}", started.elapsed());
    // The same interval in a continuous run cuts a snapshot as soon as a message was read.
    let more = messages(&p, 1);
    let running = Running::start(&p, continuous(&brokers, out));
    produce(&brokers, 10_000, &more);
    eventually(
        "a continuous run's snapshot",
        Duration::from_secs(30),
        || async {
            Location::parse(out)
                .unwrap()
                .latest()
                .await
                .unwrap()
                .is_some_and(|l| l.snapshot_id >= 2)
        },
    )
    .await;
    running.stop().await;
}

/// Table maintenance follows the snapshot ids, not the runs: `--once` runs of one snapshot
/// each (a cron job) vacuum at every `maintenance_every`-th snapshot of the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_one_snapshot_each_still_maintain_the_tables() {
    let p = PipelineFile::default()
        .snapshot("trigger_interval", "\"1h\"")
        .snapshot("retention", "1")
        .snapshot("retention_days", "1")
        .snapshot("maintenance_every", "3")
        .snapshot("log_checkpoint_interval", "1")
        .load();
    let (_c, brokers, _) = produced(&p, 5);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let loc = Location::parse(out).unwrap();
    for run in 1..=3u64 {
        let r = run_in_process(
            &p,
            RunOptions {
                max_events: Some(20),
                ..once(&brokers, out)
            },
        )
        .await;
        assert_eq!(r.snapshots, 1);
        assert_eq!(loc.latest().await.unwrap().unwrap().snapshot_id, run);
        // `snapshots` changes at every snapshot: its version 0 is there until maintenance.
        assert_eq!(
            loc.read_delta("snapshots", Some(0)).await.is_ok(),
            run < 3,
            "after snapshot {run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_months_leave_memory_and_every_table_still_equals_the_full_recompute() {
    // Seven weeks from mid-February; a short lateness closes a month once the watermark is
    // two days into the next; no closed month is kept in memory; a snapshot every 100 events
    // besides the last.
    let p = PipelineFile::default()
        .set("source", "allowed_lateness", "\"2d\"")
        .snapshot("trigger_events", "100")
        .snapshot("trigger_interval", "\"1h\"")
        .snapshot("resident_closed_months", "0")
        .http_port(free_port())
        .load();
    // One partition per topic: the watermark is the lowest of the topics' highs.
    let c = cluster_of(&p, 1);
    let brokers = c.bootstrap_servers();
    let spec = GenSpec {
        reps: 24,
        days: 50,
        start: NaiveDate::from_ymd_opt(2026, 2, 10).unwrap(),
        ..spec(5)
    };
    let mut msgs = Vec::new();
    generate(&spec, |g| {
        msgs.push((p.source.topics[&g.event_type].clone(), g.key, g.value))
    });
    // The stream to March 4th, then one event of every topic on March 3rd: the watermark
    // needs a high of every partition, and the quieter topics would hold it in February.
    let split = msgs.len() * 45 / 100;
    let rest = msgs.split_off(split);
    let at = "2026-03-03T12:00:00Z";
    use crate::common::EventType;
    let topic = |t: EventType| p.source.topics[&t].clone();
    let every_topic = [
        (
            EventType::Rep,
            format!(
                r#"{{"rep_id":"rep-00001","version":99,"occurred_at":"{at}","name":"n","team_id":"team-tail","region":"emea","active":true}}"#
            ),
        ),
        (
            EventType::Deal,
            format!(
                r#"{{"deal_id":"deal-tail","version":1,"occurred_at":"{at}","rep_id":"rep-00001","stage":"prospecting","amount":"10.00","currency":"USD","close_date":"2026-06-30","created_at":"{at}"}}"#
            ),
        ),
        (
            EventType::Quota,
            format!(
                r#"{{"rep_id":"rep-00001","period_start":"2026-07-01","period_end":"2026-09-30","amount":"1000.00","currency":"USD","version":1,"occurred_at":"{at}"}}"#
            ),
        ),
        (
            EventType::FxRate,
            format!(
                r#"{{"currency":"EUR","effective_date":"2026-03-03","rate_to_corporate":"1.10","version":9,"occurred_at":"{at}"}}"#
            ),
        ),
        (
            EventType::Survey,
            format!(
                r#"{{"response_id":"s-tail","occurred_at":"{at}","rep_id":"rep-00001","survey":"pulse","score":9}}"#
            ),
        ),
        (
            EventType::Activity,
            format!(
                r#"{{"event_id":"a-tail","occurred_at":"{at}","rep_id":"rep-00001","activity_type":"call","outcome":"connected","duration_s":30}}"#
            ),
        ),
    ];
    msgs.extend(
        every_topic
            .into_iter()
            .map(|(t, json)| (topic(t), "tail".into(), json)),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    // The first run reads February (the watermark is unknown until every topic delivered);
    // the second starts with every topic's high in March, and lets February go at its first
    // cut, which touches March alone.
    let mut evicted = Vec::new();
    for part in [msgs, rest] {
        produce(&brokers, 10_000, &part);
        let r = run_in_process(&p, once(&brokers, out)).await;
        assert_eq!(r.messages, part.len() as u64);
        evicted.push(r.grain_months_evicted);
    }
    assert!(evicted[1] > 0, "no month left memory: {evicted:?}");
    // Every published table equals the full recompute of the state the last snapshot holds
    // (restored whole, every month read back).
    let loc = Location::parse(out).unwrap();
    let report = quotaflow::verify::verify(&loc, &p, None).await.unwrap();
    assert_eq!(report.differences(), 0, "{}", report.render(5));
    let rep_daily = report
        .tables
        .iter()
        .find(|t| t.table == "rep_daily")
        .unwrap();
    assert!(
        rep_daily.published_rows > 200,
        "{}",
        rep_daily.published_rows
    );
}
