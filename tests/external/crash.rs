//! How a run of the binary ends other than at its end: SIGKILL mid-stream (once, then twenty
//! times at random moments while a reader reads along), a crash at each step of writing a
//! snapshot (`QUOTAFLOW_CRASH_AT`), and SIGTERM, which drains and writes a last snapshot.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quotaflow::snapshot::Location;

use super::{
    pipeline_file, produce, read_latest_whole, run_command, run_once, signal, spawn_reader, tag,
    without_dead_letters,
};
use crate::common::canonical;
use crate::harness::{eventually, free_port, messages_read, wait_within, Endpoint, PipelineFile};
use crate::pipeline_mock::{
    batch_tables, firing_alerts, latest_tables, segments_on_disk_and_named, without,
};

/// How long a run may take to make its first snapshot durable.
const FIRST_SNAPSHOT_WITHIN: Duration = Duration::from_secs(120);
/// How long a started run may take to be ready (state restored, partitions assigned).
const READY_WITHIN: Duration = Duration::from_secs(60);
/// The twenty kills each come at a random moment this far into a run (fault injection, not
/// synchronisation): runs snapshot every 100 events, so they land while consuming, computing
/// and writing.
const KILL_AFTER_MS: std::ops::Range<u64> = 150..900;
/// How long a run may take from SIGTERM to its exit (a last snapshot, alert deliveries
/// drained: `drain_timeout` is 10 s).
const DRAINED_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn sigkill_mid_stream_then_restart_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("kill"),
        PipelineFile::default()
            .snapshot("trigger_events", "300")
            .snapshot("once_trigger_interval", "\"100ms\""),
    );
    // One message per record batch: tansu 0.6 returns nothing to a fetch that starts inside a
    // batch, which a restart after a kill does (Apache Kafka serves it; see README).
    produce(&p, 13, 1).await;
    let whole = dir.path().join("whole");
    let killed = dir.path().join("killed");
    let (whole, killed) = (whole.to_str().unwrap(), killed.to_str().unwrap());
    run_once(&file, whole);

    let mut child = run_command(&file, killed)
        .arg("--once")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A snapshot durable (`_latest` names one), then SIGKILL.
    let loc = Location::parse(killed).unwrap();
    eventually("a first durable snapshot", FIRST_SNAPSHOT_WITHIN, || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        async {
            loc.latest()
                .await
                .ok()
                .flatten()
                .is_some_and(|l| l.snapshot_id >= 1)
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = run_once(&file, killed);
    assert!(
        messages_read(&resumed) > 0,
        "the kill came after the end: nothing was tested"
    );
    let (whole_tables, killed_tables) = (latest_tables(whole).await, latest_tables(killed).await);
    assert_eq!(
        without(canonical(&whole_tables), "alerts"),
        without(canonical(&killed_tables), "alerts")
    );
    assert_eq!(firing_alerts(&whole_tables), firing_alerts(&killed_tables));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_crash_at_each_step_of_writing_a_snapshot_leaves_the_previous_one_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("crashat"),
        // Chains of more than one segment are compacted: snapshot 2 compacts.
        PipelineFile::default()
            .snapshot("trigger_events", "1000")
            .snapshot("trigger_interval", "\"1h\"")
            .snapshot("compact_after", "1"),
    );
    // One message per record batch (tansu 0.6 and mid-batch fetches: see README).
    let msgs = produce(&p, 22, 1).await;
    for point in quotaflow::snapshot::CRASH_POINTS {
        let out = dir.path().join(point);
        let out = out.to_str().unwrap();
        // The crash comes while writing snapshot 2: snapshot 1 is durable by then.
        let crashed = run_command(&file, out)
            .arg("--once")
            .env("QUOTAFLOW_CRASH_AT", format!("{point}:2"))
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{point}: no crash");
        let loc = Location::parse(out).unwrap();
        // A reader of `_latest` sees snapshot 1 whole (2 once `_latest` was written), and a
        // reader of any one table sees its latest version whole.
        let durable = if point == "after_latest" { 2 } else { 1 };
        assert_eq!(read_latest_whole(&loc).await, durable, "{point}");
        read_each_table_latest(&loc).await;
        let resumed = run_once(&file, out);
        if point != "after_latest" {
            // Snapshot 2 was not durable: what it held is read again, under a new id once its
            // commits or its checkpoint used 2 (its state segments alone do not use an id:
            // they are written again, and those no snapshot names are deleted).
            assert!(messages_read(&resumed) > 0, "{point}");
            let latest = loc.latest().await.unwrap().unwrap().snapshot_id;
            let used = !matches!(point, "after_segment" | "after_compaction");
            assert!(
                latest >= 2 + u64::from(used),
                "{point}: resumed at snapshot {latest}"
            );
        }
        // Every retained snapshot's state restores from the segments its checkpoint names,
        // and no segment that none names is left (the crashed attempt's).
        let (on_disk, named) = segments_on_disk_and_named(out).await;
        assert_eq!(on_disk, named, "{point}");
        let streamed = canonical(&latest_tables(out).await);
        let batch = canonical(&batch_tables(&p, &msgs).await);
        assert_eq!(
            without_dead_letters(streamed),
            without_dead_letters(batch),
            "{point}"
        );
    }
}

/// Reads the latest Delta version of every table of the latest checkpoint, as a reader of one
/// table would; panics if any is torn (a file it names missing or unreadable).
async fn read_each_table_latest(loc: &Location) {
    let latest = loc.latest().await.unwrap().unwrap();
    let c = loc.checkpoint(latest.snapshot_id).await.unwrap();
    for name in c.tables.keys() {
        let table = loc.open_table(name, None).await.unwrap().unwrap();
        let version = table.version().unwrap();
        loc.read_delta(name, Some(version))
            .await
            .unwrap_or_else(|e| panic!("{name} at version {version}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn twenty_sigkills_lose_nothing_count_nothing_twice_and_readers_never_see_half_a_snapshot() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    // A snapshot every 100 events: kills land while consuming, computing and writing.
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("kill20"),
        PipelineFile::default()
            .snapshot("trigger_events", "100")
            .snapshot("once_trigger_interval", "\"50ms\"")
            .snapshot("retention", "100000"),
    );
    // One message per record batch (tansu 0.6 and mid-batch fetches: see README).
    produce(&p, 15, 1).await;
    let whole = dir.path().join("whole");
    let killed = dir.path().join("killed");
    let (whole, killed) = (whole.to_str().unwrap(), killed.to_str().unwrap());
    run_once(&file, whole);

    // A reader reads whatever `_latest` names, all along.
    let loc = Location::parse(killed).unwrap();
    let (stop, reader) = spawn_reader(killed);
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut kills = 0;
    let mut between = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let mut child = run_command(&file, killed)
            .arg("--once")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill point: a random moment of the run (fault injection, not synchronisation).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(KILL_AFTER_MS))).await;
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // And whatever the killed run left durable, read whole once nothing writes.
        between.insert(read_latest_whole(&loc).await);
    }
    let resumed = run_once(&file, killed);
    stop.store(true, Ordering::Relaxed);
    let mut seen = reader.await.unwrap();
    // The concurrent reader's count depends on how fast it reads; the snapshots the runs made
    // between kills do not, so the test is never vacuous by timing alone.
    seen.extend(between);
    eprintln!(
        "{kills} kills; {} snapshots read whole; the last run read {} messages",
        seen.len(),
        messages_read(&resumed)
    );
    assert!(
        kills >= 15,
        "only {kills} of 20 kills hit a running process"
    );
    assert!(
        messages_read(&resumed) > 0 || seen.len() > 2,
        "nothing was interrupted"
    );
    assert!(seen.len() > 2, "the readers saw only {seen:?}");
    assert!(read_latest_whole(&loc).await > 0);
    let (whole_tables, killed_tables) = (latest_tables(whole).await, latest_tables(killed).await);
    assert_eq!(
        without(canonical(&whole_tables), "alerts"),
        without(canonical(&killed_tables), "alerts")
    );
    assert_eq!(firing_alerts(&whole_tables), firing_alerts(&killed_tables));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn sigterm_drains_writes_a_final_snapshot_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // No trigger fires during the test: the only snapshot is the one SIGTERM writes.
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("term"),
        PipelineFile::default()
            .snapshot("trigger_interval", "\"1h\"")
            .snapshot("trigger_events", "0")
            .http_port(port),
    );
    // One message per record batch: the run stops at whatever offset SIGTERM finds, and tansu
    // 0.6 cannot serve a fetch from inside a batch (docs/operations.md, "Known limits").
    let msgs = produce(&p, 16, 1).await;
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let mut child = run_command(&file, out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drain stderr all along (a full pipe would block the run), kept for failure messages.
    let logged = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let log = Arc::clone(&logged);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    // SIGTERM once the run is ready: /healthz says `ready` (state restored, partitions
    // assigned), and the handler is installed before that (src/cli.rs).
    let endpoint = Endpoint::on(port);
    eventually("/healthz to say ready", READY_WITHIN, || {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        endpoint.ready()
    })
    .await;
    signal(child.id(), "-TERM");
    let output = wait_within(child, DRAINED_WITHIN, &logged);
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        logged.lock().unwrap()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 snapshot(s)"), "{stdout}");
    let loc = Location::parse(out).unwrap();
    let m = loc
        .checkpoint(loc.latest().await.unwrap().unwrap().snapshot_id)
        .await
        .unwrap();
    let read: i64 = m.offsets.values().flat_map(|p| p.values()).sum();
    assert_eq!(
        read as u64,
        messages_read(&stdout),
        "the snapshot holds what was read"
    );
    // Whatever was not read yet is read by the next run: nothing lost.
    run_once(&file, out);
    let streamed = canonical(&latest_tables(out).await);
    let batch = canonical(&batch_tables(&p, &msgs).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));
}
