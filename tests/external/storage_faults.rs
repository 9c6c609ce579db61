//! The object store misbehaving under a running pipeline: an S3 server of the test's own
//! stopped (SIGSTOP) mid-run, and a quarter of all object-store calls failing (some hanging)
//! against the suite's S3 server, while readers only ever see whole snapshots.

use std::process::Stdio;
use std::time::Duration;

use quotaflow::snapshot::Location;

use super::{
    durable_messages, env, pipeline_file, produce, run_command, signal, spawn_reader, tag,
    without_dead_letters, OwnS3,
};
use crate::common::canonical;
use crate::harness::{eventually, free_port, Endpoint, PipelineFile};
use crate::pipeline_mock::{batch_tables, latest_tables};

/// How long the S3 server stays stopped once the second set of messages has been read
/// (fault injection, not synchronisation): ten snapshot intervals (500 ms) and more, so
/// snapshots come due while a write hangs on the stopped server. It was 10 s; nothing in
/// the assertions needs more than a snapshot in flight while storage is away.
const S3_DOWN: Duration = Duration::from_secs(5);
/// How long the first messages may take to become durable.
const DURABLE_WITHIN: Duration = Duration::from_secs(60);
/// How long reading may take while storage is stopped.
const READ_WITHIN: Duration = Duration::from_secs(60);
/// How long the pipeline may take to catch up once storage is back.
const CAUGHT_UP_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn the_s3_server_stopped_mid_run_stalls_no_reading_and_the_pipeline_catches_up() {
    let t = tag("s3stop");
    let s3 = OwnS3::start("stopped");
    // This test runs in a process of its own (nextest): point every S3 client here at it.
    std::env::set_var("AWS_ENDPOINT_URL", &s3.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (file, p) = pipeline_file(
        dir.path(),
        &t,
        PipelineFile::default()
            .snapshot("trigger_interval", "\"500ms\"")
            .http_port(port),
    );
    let first = produce(&p, 20, 10_000).await;
    let output = format!("s3://stopped/{t}");
    let mut run = run_command(&file, &output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = Endpoint::on(port);
    let loc = Location::parse(&output).unwrap();
    eventually("the first messages durable", DURABLE_WITHIN, || async {
        durable_messages(&loc).await as usize >= first.len()
    })
    .await;

    // Storage stopped: reading goes on (the second set is counted), nothing more is durable.
    s3.signal("-STOP");
    let second = produce(&p, 21, 10_000).await;
    let total = first.len() + second.len();
    eventually(
        "every message counted while storage is stopped",
        READ_WITHIN,
        || async { endpoint.messages_counted().await == Some(total as u64) },
    )
    .await;
    // Storage stays away a while longer (fault injection, not synchronisation).
    tokio::time::sleep(S3_DOWN).await;
    assert!(
        run.try_wait().unwrap().is_none(),
        "the pipeline kept running"
    );
    s3.signal("-CONT");

    // Back: it catches up; the previous snapshot stayed whole, the new one holds everything.
    eventually(
        "every message durable once storage is back",
        CAUGHT_UP_WITHIN,
        || async { durable_messages(&loc).await as usize >= total },
    )
    .await;
    signal(run.id(), "-TERM");
    assert!(run.wait().unwrap().success());
    let all: Vec<_> = first.into_iter().chain(second).collect();
    let streamed = canonical(&latest_tables(&output).await);
    let batch = canonical(&batch_tables(&p, &all).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn storage_faults_on_every_call_are_retried_and_readers_only_see_whole_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let t = tag("faults");
    let (file, p) = pipeline_file(
        dir.path(),
        &t,
        PipelineFile::default()
            .snapshot("trigger_events", "500")
            .snapshot("once_trigger_interval", "\"100ms\""),
    );
    let msgs = produce(&p, 17, 10_000).await;
    let output = format!("{}/{t}", env("QUOTAFLOW_TEST_S3"));
    // A reader without faults reads whatever `_latest` names, all along.
    let (stop, reader) = spawn_reader(&output);
    // A quarter of all object-store calls of the pipeline fail, 2 % hang 300 ms and fail,
    // every call is 5 ms slower.
    let out = run_command(&file, &output)
        .arg("--once")
        .env(
            "QUOTAFLOW_STORE_FAULTS",
            "error=0.25,timeout=0.02,timeout_ms=300,slow_ms=5",
        )
        .env("QUOTAFLOW_LOG", "quotaflow=debug")
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let injected = stderr.matches("injected").count();
    eprintln!(
        "{injected} injected faults retried; the reader read {} snapshots whole",
        seen.len()
    );
    assert!(injected >= 10, "faults were injected: {injected}");
    assert!(seen.len() >= 2, "{seen:?}");
    let streamed = canonical(&latest_tables(&output).await);
    let batch = canonical(&batch_tables(&p, &msgs).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));
}
