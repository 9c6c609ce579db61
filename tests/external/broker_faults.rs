//! The broker misbehaving under a running pipeline: frozen (SIGSTOP) or killed and started
//! again mid-run (a broker of the test's own), and a `--once` run whose broker cannot serve a
//! position (tansu 0.6 inside a record batch), which must stall and fail, not hang.

use std::process::Stdio;
use std::time::{Duration, Instant};

use quotaflow::snapshot::Location;

use super::{
    pipeline_file, produce, produce_to, run_command, tag, without_dead_letters, OwnBroker,
};
use crate::common::canonical;
use crate::harness::{eventually, free_port, run_command as run_on, Endpoint, PipelineFile};
use crate::pipeline_mock::{batch_tables, latest_tables};

/// How long the broker stays frozen (fault injection, not synchronisation). Counted from the
/// SIGSTOP, and never shorter than it takes /healthz to turn 503 (the test waits for that
/// first), so a slow detection only lengthens it. It must exceed the 3 s socket timeout below
/// by enough for requests to time out and be retried against the frozen broker; the pipeline
/// has no timer of its own that a longer freeze would reach (the broker error window is
/// 15 s, the snapshot age limit 60 s). It was 30 s.
const FREEZE: Duration = Duration::from_secs(10);
/// librdkafka's request timeout for the fault tests (its default, 60 s, is longer than the
/// whole fault).
const SOCKET_TIMEOUT_MS: &str = "3000";
/// How long the pipeline may take to be healthy with the first messages read.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);
/// How long it may take to turn unhealthy once the broker is away.
const UNHEALTHY_WITHIN: Duration = Duration::from_secs(25);
/// How long it may take to be healthy again, every message read, once the broker is back.
const RECOVERED_WITHIN: Duration = Duration::from_secs(90);
/// The stalling run's `--stall-timeout`.
const ONCE_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// What a stalled run may take beyond its stall timeout (connecting, the last snapshot).
const STALL_SLACK: Duration = Duration::from_secs(60);

/// A broker fault in the middle of a continuous run.
enum BrokerFault {
    /// SIGSTOP for `FREEZE`, then SIGCONT.
    Freeze,
    /// SIGKILL, then started again on the same port and storage (as soon as the pipeline
    /// reports it away).
    KillRestart { storage: String },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_frozen_broker_makes_the_pipeline_unhealthy_then_it_resumes_without_loss() {
    survives(OwnBroker::start(), BrokerFault::Freeze).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_broker_killed_and_restarted_makes_the_pipeline_unhealthy_then_it_resumes_without_loss() {
    let bucket = format!("tansu-{}", tag("restart").replace('_', "-"));
    let broker = OwnBroker::start_durable(&bucket);
    survives(
        broker,
        BrokerFault::KillRestart {
            storage: format!("s3://{bucket}/"),
        },
    )
    .await;
}

/// Reads a first set of messages, suffers `fault` (unhealthy meanwhile, still running), then
/// reads a second set and ends with the tables of both, read once.
async fn survives(mut broker: OwnBroker, fault: BrokerFault) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("freeze"),
        PipelineFile::default()
            .snapshot("trigger_interval", "\"500ms\"")
            // Requests to a frozen broker time out after 3 s instead of librdkafka's 60 s.
            .kafka("socket.timeout.ms", SOCKET_TIMEOUT_MS)
            .http_port(port),
    );
    let first = produce_to(&broker.brokers, &p, 18, 10_000).await;
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let mut run = run_on(&file, &broker.brokers, out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = Endpoint::on(port);
    let healthy_with = |n: usize| {
        let endpoint = endpoint.clone();
        async move { endpoint.healthy().await && endpoint.messages_counted().await == Some(n as u64) }
    };
    eventually(
        "healthy with the first messages read",
        HEALTHY_WITHIN,
        || healthy_with(first.len()),
    )
    .await;

    // The fault: unhealthy, the broker reported as not connected.
    let fault_at = Instant::now();
    match &fault {
        BrokerFault::Freeze => broker.signal("-STOP"),
        BrokerFault::KillRestart { .. } => broker.signal("-KILL"),
    }
    let body = eventually(
        "/healthz 503 while the broker is away",
        UNHEALTHY_WITHIN,
        || async {
            match endpoint.healthz().await {
                Some((503, body)) => Some(body),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(body["broker_connected"], false, "{body}");
    assert!(
        run.try_wait().unwrap().is_none(),
        "the pipeline kept running"
    );
    match &fault {
        BrokerFault::Freeze => {
            // The rest of the freeze (fault injection, not synchronisation).
            tokio::time::sleep(FREEZE.saturating_sub(fault_at.elapsed())).await;
            assert!(
                run.try_wait().unwrap().is_none(),
                "the pipeline kept running"
            );
            broker.signal("-CONT");
        }
        BrokerFault::KillRestart { storage } => broker.kill_and_restart(storage),
    }

    // Back: new messages are read, healthy again, nothing lost or counted twice.
    let second = produce_to(&broker.brokers, &p, 19, 10_000).await;
    let total = first.len() + second.len();
    eventually(
        "healthy again with every message read",
        RECOVERED_WITHIN,
        || healthy_with(total),
    )
    .await;
    super::signal(run.id(), "-TERM");
    assert!(run.wait().unwrap().success());
    let all: Vec<_> = first.into_iter().chain(second).collect();
    let streamed = canonical(&latest_tables(out).await);
    let batch = canonical(&batch_tables(&p, &all).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_once_run_that_stalls_fails_naming_the_partitions() {
    let dir = tempfile::tempdir().unwrap();
    // No trigger in the run: the stall guard does not wait for one.
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("stall"),
        PipelineFile::default().snapshot("trigger_interval", "\"1h\""),
    );
    // Big record batches, then a stop after 100 messages: positions inside batches, which
    // tansu 0.6 cannot serve again (README, "Known limits").
    produce(&p, 14, 10_000).await;
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let first = run_command(&file, out)
        .args(["--max-events", "100"])
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let started = Instant::now();
    let second = run_command(&file, out)
        .args(["--once", "--stall-timeout"])
        .arg(ONCE_STALL_TIMEOUT.as_secs().to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "expected a stall; tansu may now serve mid-batch offsets: {stderr}"
    );
    assert!(
        stderr.contains("not at their end") && stderr.contains(".spm."),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("for {} s", ONCE_STALL_TIMEOUT.as_secs())),
        "the stall timeout given is the one applied: {stderr}"
    );
    // A broker that cannot serve the partitions is a runtime failure, not a usage error.
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() < ONCE_STALL_TIMEOUT + STALL_SLACK);
    // Nothing read before the stall is lost: the snapshot still holds the first 100 messages.
    let loc = Location::parse(out).unwrap();
    let m = loc
        .checkpoint(loc.latest().await.unwrap().unwrap().snapshot_id)
        .await
        .unwrap();
    let read: i64 = m.offsets.values().flat_map(|p| p.values()).sum();
    assert!(read >= 100, "{read}");
}
