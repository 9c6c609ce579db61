//! Against the real services `scripts/test` starts: the tansu broker (QUOTAFLOW_TEST_BROKERS),
//! the moto S3 server (QUOTAFLOW_TEST_S3 + AWS_* variables), and the Python readers. The
//! pipeline runs as a separate process (the binary cargo builds with the tests). Each test uses topics of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quotaflow::config::Pipeline;
use quotaflow::snapshot::Location;
use quotaflow::source::kafka::{ensure_topics, produce_all};

use crate::common::canonical;
use crate::pipeline_mock::{batch_tables, latest_tables, messages};

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run this test through scripts/test"))
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quotaflow"))
}

/// A pipeline file whose topics are unique to this test, plus extra `[snapshot]` settings.
fn pipeline_file(dir: &Path, tag: &str, snapshot: &str) -> (PathBuf, Arc<Pipeline>) {
    pipeline_file_with(dir, tag, snapshot, |t| t)
}

/// `pipeline_file` with `edit` applied to the default pipeline's text first.
fn pipeline_file_with(
    dir: &Path,
    tag: &str,
    snapshot: &str,
    edit: impl Fn(String) -> String,
) -> (PathBuf, Arc<Pipeline>) {
    let root = std::env::current_dir().unwrap();
    let text = edit(std::fs::read_to_string(root.join("pipelines/default.toml")).unwrap())
        .replace("= \"spm.", &format!("= \"{tag}.spm."))
        .replace(
            "sql = \"../sql/",
            &format!("sql = \"{}/sql/", root.display()),
        )
        .replace("[snapshot]\n", &format!("[snapshot]\n{snapshot}\n"))
        .replace(
            "trigger_interval = \"5s\"",
            if snapshot.contains("trigger_interval") {
                ""
            } else {
                "trigger_interval = \"5s\""
            },
        )
        .replace(
            "trigger_events = 0",
            if snapshot.contains("trigger_events") {
                ""
            } else {
                "trigger_events = 0"
            },
        )
        .replace(
            "retention = 20 ",
            if snapshot.contains("retention") {
                "# "
            } else {
                "retention = 20 "
            },
        );
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    let p = Arc::new(Pipeline::load(Some(&path)).unwrap());
    (path, p)
}

fn tag(name: &str) -> String {
    format!(
        "{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() % 1_000_000
    )
}

/// Produces the test messages, renamed to the pipeline's topics, with a real client, in record
/// batches of up to `batch` messages.
async fn produce(p: &Pipeline, seed: u64, batch: usize) -> Vec<(String, String, String)> {
    let brokers = env("QUOTAFLOW_TEST_BROKERS");
    let default = Pipeline::builtin().unwrap();
    let msgs: Vec<_> = messages(&default, seed)
        .into_iter()
        .map(|(topic, k, v)| {
            (
                p.topics[&default.event_type_of(&topic).unwrap()].clone(),
                k,
                v,
            )
        })
        .collect();
    let topics: Vec<&str> = p.topics.values().map(String::as_str).collect();
    ensure_topics(&brokers, p, &topics, 3).await.unwrap();
    produce_all(&brokers, batch, msgs.clone(), |_| {}).unwrap();
    msgs
}

fn run_once(pipeline: &Path, output: &str) -> String {
    let out = Command::new(bin())
        .args(["run", "--once", "--pipeline"])
        .arg(pipeline)
        .args([
            "--brokers",
            &env("QUOTAFLOW_TEST_BROKERS"),
            "--output",
            output,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn messages_read(stdout: &str) -> u64 {
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {stdout:?}"))
}

fn without_dead_letters(
    t: std::collections::BTreeMap<String, Vec<String>>,
) -> std::collections::BTreeMap<String, Vec<String>> {
    crate::pipeline_mock::without(t, "dead_letters")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn real_broker_once_process_equals_batch_and_readers_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (file, p) = pipeline_file(dir.path(), &tag("once"), "");
    let msgs = produce(&p, 11, 10_000).await;
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let stdout = run_once(&file, out);
    assert_eq!(messages_read(&stdout), msgs.len() as u64);
    let streamed = canonical(&latest_tables(out).await);
    let batch = canonical(&batch_tables(&p, &msgs).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));

    let check = Command::new("python3")
        .arg("scripts/check_readers.py")
        .arg(bin())
        .arg(out)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "readers disagree:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("readers agree"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn snapshots_on_the_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let t = tag("s3");
    let (file, p) = pipeline_file(dir.path(), &t, "");
    let msgs = produce(&p, 12, 10_000).await;
    let output = format!("{}/{t}", env("QUOTAFLOW_TEST_S3"));
    // A credential of its own, with every log on: it must appear in no log line and no file.
    let secret = format!("s3cr3t-{t}");
    let out = Command::new(bin())
        .args(["run", "--once", "--pipeline"])
        .arg(&file)
        .args([
            "--brokers",
            &env("QUOTAFLOW_TEST_BROKERS"),
            "--output",
            &output,
        ])
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("QUOTAFLOW_LOG", "trace")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.len() > 1000, "trace logging was on");
    assert!(!logs.contains(&secret), "the secret was logged");
    let loc = Location::parse(&output).unwrap();
    let latest = loc.latest().await.unwrap().unwrap();
    let manifest = serde_json::to_string(&loc.manifest(latest.snapshot_id).await.unwrap()).unwrap();
    assert!(
        !manifest.contains(&secret) && !manifest.contains("AWS"),
        "{manifest}"
    );
    let streamed = canonical(&latest_tables(&output).await);
    let batch = canonical(&batch_tables(&p, &msgs).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));
    let q = Command::new(bin())
        .args([
            "sql",
            "--output",
            &output,
            "--format",
            "csv",
            "SELECT COUNT(*) AS n FROM deals_current",
        ])
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let deals = msgs
        .iter()
        .filter(|(t, _, v)| t.ends_with("spm.deals") && !v.contains("-5.00"))
        .map(|(_, k, _)| k)
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        String::from_utf8_lossy(&q.stdout).trim(),
        format!("n\n{}", deals.len())
    );
    // Read-only: DDL and DML are refused.
    let q = Command::new(bin())
        .args(["sql", "--output", &output, "DROP TABLE attainment"])
        .output()
        .unwrap();
    assert!(!q.status.success());
    assert!(String::from_utf8_lossy(&q.stderr).contains("read-only"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn sigkill_mid_stream_then_restart_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let t = tag("kill");
    let (file, p) = pipeline_file(
        dir.path(),
        &t,
        "trigger_events = 300\ntrigger_interval = \"100ms\"",
    );
    // One message per record batch: tansu 0.6 returns nothing to a fetch that starts inside a
    // batch, which a restart after a kill does (Apache Kafka serves it; see README).
    produce(&p, 13, 1).await;
    let whole = dir.path().join("whole");
    let killed = dir.path().join("killed");
    let (whole, killed) = (whole.to_str().unwrap(), killed.to_str().unwrap());
    run_once(&file, whole);

    let mut child = Command::new(bin())
        .args(["run", "--once", "--pipeline"])
        .arg(&file)
        .args([
            "--brokers",
            &env("QUOTAFLOW_TEST_BROKERS"),
            "--output",
            killed,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (by watching `_latest`) until a snapshot is durable, then SIGKILL.
    let loc = Location::parse(killed).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if loc
            .latest()
            .await
            .ok()
            .flatten()
            .is_some_and(|l| l.snapshot_id >= 1)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot within 120 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = run_once(&file, killed);
    assert!(
        messages_read(&resumed) > 0,
        "the kill came after the end: nothing was tested"
    );
    let (whole_tables, killed_tables) = (latest_tables(whole).await, latest_tables(killed).await);
    assert_eq!(
        crate::pipeline_mock::without(canonical(&whole_tables), "alerts"),
        crate::pipeline_mock::without(canonical(&killed_tables), "alerts")
    );
    assert_eq!(
        crate::pipeline_mock::firing_alerts(&whole_tables),
        crate::pipeline_mock::firing_alerts(&killed_tables)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_once_run_that_stalls_fails_naming_the_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let (file, p) = pipeline_file(dir.path(), &tag("stall"), "");
    // Big record batches, then a stop after 100 messages: positions inside batches, which
    // tansu 0.6 cannot serve again (README, "Known limits").
    produce(&p, 14, 10_000).await;
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let first = Command::new(bin())
        .args(["run", "--max-events", "100", "--pipeline"])
        .arg(&file)
        .args(["--brokers", &env("QUOTAFLOW_TEST_BROKERS"), "--output", out])
        .output()
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let started = Instant::now();
    let second = Command::new(bin())
        .args(["run", "--once", "--pipeline"])
        .arg(&file)
        .args(["--brokers", &env("QUOTAFLOW_TEST_BROKERS"), "--output", out])
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
    assert!(started.elapsed() < Duration::from_secs(90));
    // Nothing read before the stall is lost: the snapshot still holds the first 100 messages.
    let loc = Location::parse(out).unwrap();
    let m = loc
        .manifest(loc.latest().await.unwrap().unwrap().snapshot_id)
        .await
        .unwrap();
    let read: i64 = m.offsets.values().flat_map(|p| p.values()).sum();
    assert!(read >= 100, "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn an_alert_fires_once_survives_restarts_resolves_and_its_webhook_retries() {
    use crate::common::{assert_alert_event_schema, read_topic, HookServer};
    // Reps 2 and 7 fall silent on day 10 and are back on day 22. Three runs, each a separate
    // process over the next slice of days: they fire, stay firing, resolve.
    let hook = HookServer::start(3);
    let dir = tempfile::tempdir().unwrap();
    let url = hook.url.clone();
    let (file, p) = pipeline_file_with(dir.path(), &tag("alerts"), "", move |text| {
        let head = text.split("[[alerts]]").next().unwrap().to_string();
        head.replace("retry_initial = \"1s\"", "retry_initial = \"100ms\"")
            + &format!(
                "[[alert_delivery.webhooks]]\nname = \"managers\"\nurl = \"{url}\"\n\n\
                 [[alerts]]\nname = \"rep_inactive\"\nseverity = \"warning\"\n\
                 description = \"No activity in 5 days.\"\nsql = \"../sql/alerts/rep_inactive.sql\"\n\
                 params = {{ days = \"5\" }}\ndeliver = [\"log\", \"kafka\", \"managers\"]\n"
            )
    });
    let brokers = env("QUOTAFLOW_TEST_BROKERS");
    let start = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    let spec = quotaflow::generate::GenSpec {
        reps: 10,
        days: 30,
        seed: 21,
        start,
        silence: Some(quotaflow::generate::Silence {
            reps: vec![2, 7],
            from: start + chrono::Duration::days(10),
            until: start + chrono::Duration::days(22),
        }),
    };
    let mut msgs = Vec::new();
    quotaflow::generate::generate(&spec, |g| {
        let day: String = serde_json::from_str::<serde_json::Value>(&g.value).unwrap()
            ["occurred_at"]
            .as_str()
            .unwrap()[..10]
            .to_string();
        msgs.push((day, p.topics[&g.event_type].clone(), g.key, g.value))
    });
    let topics: Vec<&str> = p.topics.values().map(String::as_str).collect();
    ensure_topics(&brokers, &p, &topics, 3).await.unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let alerts_topic = &p.alert_delivery.kafka_topic;
    let slice = |from: i64, to: i64| {
        let (a, b) = (
            (start + chrono::Duration::days(from)).to_string(),
            (start + chrono::Duration::days(to)).to_string(),
        );
        msgs.iter()
            .filter(|(d, ..)| *d >= a && *d < b)
            .map(|(_, t, k, v)| (t.clone(), k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let keys = |events: &[serde_json::Value]| {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["transition"].as_str().unwrap(),
                    e["key"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };

    // Days 0..18: last activity on day 9, clock on day 17 — both fire.
    produce_all(&brokers, 10_000, slice(0, 18), |_| {}).unwrap();
    run_once(&file, out);
    let got = hook.accepted();
    assert_eq!(keys(&got), ["fired rep-00002", "fired rep-00007"]);
    assert_eq!(
        hook.requests(),
        5,
        "3 failures, then the 4th attempt and the next event"
    );

    // Days 18..21: still silent, a new process: nothing fires again.
    produce_all(&brokers, 10_000, slice(18, 21), |_| {}).unwrap();
    run_once(&file, out);
    assert_eq!(hook.accepted().len(), 2, "{:?}", keys(&hook.accepted()));

    // Days 21..30: back from day 22: both resolve, once.
    produce_all(&brokers, 10_000, slice(21, 30), |_| {}).unwrap();
    run_once(&file, out);
    let got = hook.accepted();
    assert_eq!(
        keys(&got),
        [
            "fired rep-00002",
            "fired rep-00007",
            "resolved rep-00002",
            "resolved rep-00007"
        ]
    );
    assert_eq!(got[0]["alert_id"], got[2]["alert_id"]);
    assert_ne!(got[0]["event_id"], got[2]["event_id"]);
    for e in &got {
        assert_alert_event_schema(e);
    }

    // A real consumer of the alert topic sees the same four events, keyed by alert_id.
    let topic = read_topic(&brokers, alerts_topic);
    let on_topic: Vec<serde_json::Value> = topic.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(keys(&on_topic), keys(&got));
    for (k, v) in &topic {
        assert_eq!(k, v["alert_id"].as_str().unwrap());
    }
    // The snapshot's alert tables agree, and count the three failed attempts.
    let tables = canonical(&latest_tables(out).await);
    assert_eq!(tables["alerts"].len(), 2);
    assert!(tables["alerts"]
        .iter()
        .all(|r| r.contains("\"state\":\"resolved\"")));
    let q = Command::new(bin())
        .args(["alerts", "--output", out, "--format", "csv"])
        .output()
        .unwrap();
    assert!(q.status.success());
    assert!(
        !String::from_utf8_lossy(&q.stdout).contains("rep_inactive"),
        "nothing is firing"
    );
    let hook_row = tables["alert_deliveries"]
        .iter()
        .find(|r| r.contains("\"target\":\"managers\""))
        .unwrap();
    assert!(hook_row.contains("\"failed_attempts\":3"), "{hook_row}");
}

/// Reads the snapshot `_latest` names, every table of it, as a reader would; panics if any
/// file it names is missing or unreadable. Returns the snapshot id (0 before the first).
async fn read_latest_whole(loc: &Location) -> u64 {
    let Some(latest) = loc.latest().await.unwrap() else {
        return 0;
    };
    let m = loc.manifest(latest.snapshot_id).await.unwrap();
    for t in &m.tables {
        loc.read_table(&m, &t.name)
            .await
            .unwrap_or_else(|e| panic!("snapshot {}: {e}", m.snapshot_id));
    }
    m.snapshot_id
}

/// A reader reading every table of whatever `_latest` names under `output`, until the flag is
/// set; it returns the snapshot ids it read whole.
fn spawn_reader(
    output: &str,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<std::collections::BTreeSet<u64>>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (loc, flag) = (Location::parse(output).unwrap(), Arc::clone(&stop));
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            seen.insert(read_latest_whole(&loc).await);
        }
        seen
    });
    (stop, reader)
}

/// Messages a running pipeline has counted, from its `/metrics` on `port` (None if it does
/// not answer yet).
async fn messages_counted(client: &reqwest::Client, port: u16) -> Option<u64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("quotaflow_messages_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn twenty_sigkills_lose_nothing_count_nothing_twice_and_readers_never_see_half_a_snapshot() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let t = tag("kill20");
    // A snapshot every 100 events: kills land while consuming, computing and writing.
    let (file, p) = pipeline_file(
        dir.path(),
        &t,
        "trigger_events = 100\ntrigger_interval = \"50ms\"\nretention = 100000",
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
    for _ in 0..20 {
        let mut child = Command::new(bin())
            .args(["run", "--once", "--pipeline"])
            .arg(&file)
            .args([
                "--brokers",
                &env("QUOTAFLOW_TEST_BROKERS"),
                "--output",
                killed,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill point: a random moment of the run (fault injection, not synchronisation).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let resumed = run_once(&file, killed);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = reader.await.unwrap();
    eprintln!(
        "{kills} kills; the reader read {} snapshots whole; the last run read {} messages",
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
    assert!(seen.len() > 2, "the reader saw only {seen:?}");
    assert!(read_latest_whole(&loc).await > 0);
    let (whole_tables, killed_tables) = (latest_tables(whole).await, latest_tables(killed).await);
    assert_eq!(
        crate::pipeline_mock::without(canonical(&whole_tables), "alerts"),
        crate::pipeline_mock::without(canonical(&killed_tables), "alerts")
    );
    assert_eq!(
        crate::pipeline_mock::firing_alerts(&whole_tables),
        crate::pipeline_mock::firing_alerts(&killed_tables)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn sigterm_drains_writes_a_final_snapshot_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // No trigger fires during the test: the only snapshot is the one SIGTERM writes.
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("term"),
        "trigger_interval = \"1h\"\ntrigger_events = 0",
    );
    let msgs = produce(&p, 16, 10_000).await;
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let child = Command::new(bin())
        .args(["run", "--pipeline"])
        .arg(&file)
        .args(["--brokers", &env("QUOTAFLOW_TEST_BROKERS"), "--output", out])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let it connect and read (fault injection: the signal comes at some moment of the run).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "exit {:?}", output.status);
    assert!(started.elapsed() < Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("1 snapshot(s)"), "{stdout}");
    let loc = Location::parse(out).unwrap();
    let m = loc
        .manifest(loc.latest().await.unwrap().unwrap().snapshot_id)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn storage_faults_on_every_call_are_retried_and_readers_only_see_whole_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let t = tag("faults");
    let (file, p) = pipeline_file(
        dir.path(),
        &t,
        "trigger_events = 500\ntrigger_interval = \"100ms\"",
    );
    let msgs = produce(&p, 17, 10_000).await;
    let output = format!("{}/{t}", env("QUOTAFLOW_TEST_S3"));
    // A reader without faults reads whatever `_latest` names, all along.
    let (stop, reader) = spawn_reader(&output);
    // A quarter of all object-store calls of the pipeline fail, 2 % hang 300 ms and fail,
    // every call is 5 ms slower.
    let out = Command::new(bin())
        .args(["run", "--once", "--pipeline"])
        .arg(&file)
        .args([
            "--brokers",
            &env("QUOTAFLOW_TEST_BROKERS"),
            "--output",
            &output,
        ])
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker of the test's own (so it can be frozen or killed without touching the
/// others'), killed when dropped.
struct OwnBroker {
    child: std::process::Child,
    brokers: String,
}

impl OwnBroker {
    /// A broker keeping its data in memory.
    fn start() -> OwnBroker {
        OwnBroker::spawn(free_port(), "memory://tansu/")
    }

    /// A broker keeping its data in a bucket of the suite's S3 server, so it survives a kill.
    fn start_durable(bucket: &str) -> OwnBroker {
        let made = Command::new("python3")
            .args([
                "-c",
                "import boto3, os, sys; boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']).create_bucket(Bucket=sys.argv[1])",
                bucket,
            ])
            .status()
            .unwrap();
        assert!(made.success(), "creating bucket {bucket}");
        OwnBroker::spawn(free_port(), &format!("s3://{bucket}/"))
    }

    fn spawn(port: u16, storage: &str) -> OwnBroker {
        OwnBroker {
            child: OwnBroker::child(port, storage),
            brokers: format!("127.0.0.1:{port}"),
        }
    }

    fn child(port: u16, storage: &str) -> std::process::Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new("tansu")
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .env(
                "AWS_ENDPOINT",
                std::env::var("AWS_ENDPOINT_URL").unwrap_or_default(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu on PATH (scripts/services installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// SIGKILL, then the same broker again on the same port and storage.
    fn kill_and_restart(&mut self, storage: &str) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
        let port: u16 = self.brokers.rsplit(':').next().unwrap().parse().unwrap();
        self.child = OwnBroker::child(port, storage);
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker fault in the middle of a continuous run.
enum BrokerFault {
    /// SIGSTOP for 30 s, then SIGCONT.
    Freeze,
    /// SIGKILL, down for a few seconds, started again on the same port and storage.
    KillRestart { storage: String },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_broker_frozen_for_30_s_makes_the_pipeline_unhealthy_then_it_resumes_without_loss() {
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (file, p) = pipeline_file_with(
        dir.path(),
        &tag("freeze"),
        "trigger_interval = \"500ms\"",
        |t| {
            // Requests to a frozen broker time out after 3 s instead of librdkafka's 60 s.
            t.replace(
                "[source.kafka]\n",
                "[source.kafka]\n\"socket.timeout.ms\" = \"3000\"\n",
            )
            .replace(
                "bind = \"127.0.0.1:9464\"",
                &format!("bind = \"127.0.0.1:{port}\""),
            )
        },
    );
    let default = Pipeline::builtin().unwrap();
    let rename = |msgs: Vec<(String, String, String)>| -> Vec<(String, String, String)> {
        msgs.into_iter()
            .map(|(t, k, v)| (p.topics[&default.event_type_of(&t).unwrap()].clone(), k, v))
            .collect()
    };
    let first = rename(crate::pipeline_mock::messages(&default, 18));
    let topics: Vec<&str> = p.topics.values().map(String::as_str).collect();
    ensure_topics(&broker.brokers, &p, &topics, 3)
        .await
        .unwrap();
    produce_all(&broker.brokers, 10_000, first.clone(), |_| {}).unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let mut run = Command::new(bin())
        .args(["run", "--pipeline"])
        .arg(&file)
        .args(["--brokers", &broker.brokers, "--output", out])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let health = |client: reqwest::Client| async move {
        let r = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let body: serde_json::Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        Some((status, body))
    };
    let counted = |client: reqwest::Client| async move { messages_counted(&client, port).await };
    let wait_for = |what: &'static str, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        move || assert!(Instant::now() < deadline, "{what} within {secs} s")
    };
    // Healthy with everything read.
    let check = wait_for("healthy with the first messages read", 60);
    while !(matches!(health(client.clone()).await, Some((200, _)))
        && counted(client.clone()).await == Some(first.len() as u64))
    {
        check();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The fault: unhealthy, the broker reported as not connected.
    let fault_at = Instant::now();
    match &fault {
        BrokerFault::Freeze => broker.signal("-STOP"),
        BrokerFault::KillRestart { .. } => broker.signal("-KILL"),
    }
    let check = wait_for("unhealthy while the broker is away", 25);
    loop {
        if let Some((503, body)) = health(client.clone()).await {
            assert_eq!(body["broker_connected"], false, "{body}");
            break;
        }
        check();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        run.try_wait().unwrap().is_none(),
        "the pipeline kept running"
    );
    match &fault {
        BrokerFault::Freeze => {
            // The fault lasts 30 s (injection, not synchronisation).
            tokio::time::sleep(Duration::from_secs(30).saturating_sub(fault_at.elapsed())).await;
            assert!(
                run.try_wait().unwrap().is_none(),
                "the pipeline kept running"
            );
            broker.signal("-CONT");
        }
        BrokerFault::KillRestart { storage } => broker.kill_and_restart(storage),
    }

    // Back: new messages are read, healthy again, nothing lost or counted twice.
    let second = rename(crate::pipeline_mock::messages(&default, 19));
    produce_all(&broker.brokers, 10_000, second.clone(), |_| {}).unwrap();
    let total = (first.len() + second.len()) as u64;
    let check = wait_for("healthy again with every message read", 90);
    while !(matches!(health(client.clone()).await, Some((200, _)))
        && counted(client.clone()).await == Some(total))
    {
        check();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(run.wait().unwrap().success());
    let all: Vec<_> = first.into_iter().chain(second).collect();
    let streamed = canonical(&latest_tables(out).await);
    let batch = canonical(&batch_tables(&p, &all).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));
}

/// An S3 server (moto) of the test's own, so it can be stopped without touching the others'.
struct OwnS3 {
    child: std::process::Child,
    endpoint: String,
}

impl OwnS3 {
    fn start(bucket: &str) -> OwnS3 {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (scripts/services installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let endpoint = format!("http://127.0.0.1:{port}");
        let made = Command::new("python3")
            .args([
                "-c",
                "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])",
                &endpoint,
                bucket,
            ])
            .status()
            .unwrap();
        assert!(made.success());
        OwnS3 { child, endpoint }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn the_s3_server_stopped_mid_run_stalls_no_reading_and_the_pipeline_catches_up() {
    let t = tag("s3stop");
    let s3 = OwnS3::start("stopped");
    // This test runs in a process of its own (nextest): point every S3 client here at it.
    std::env::set_var("AWS_ENDPOINT_URL", &s3.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (file, p) = pipeline_file_with(dir.path(), &t, "trigger_interval = \"500ms\"", |text| {
        text.replace(
            "bind = \"127.0.0.1:9464\"",
            &format!("bind = \"127.0.0.1:{port}\""),
        )
    });
    let first = produce(&p, 20, 10_000).await;
    let output = format!("s3://stopped/{t}");
    let mut run = Command::new(bin())
        .args(["run", "--pipeline"])
        .arg(&file)
        .args([
            "--brokers",
            &env("QUOTAFLOW_TEST_BROKERS"),
            "--output",
            &output,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let counted = || messages_counted(&client, port);
    let loc = Location::parse(&output).unwrap();
    let durable = || async {
        let Ok(Some(latest)) = loc.latest().await else {
            return 0;
        };
        let m = loc.manifest(latest.snapshot_id).await.unwrap();
        m.offsets.values().flat_map(|p| p.values()).sum::<i64>() as usize
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while durable().await < first.len() {
        assert!(
            Instant::now() < deadline,
            "the first messages never became durable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Storage stopped: reading goes on (the second set is counted), nothing more is durable.
    s3.signal("-STOP");
    let second = produce(&p, 21, 10_000).await;
    let total = first.len() + second.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while counted().await != Some(total as u64) {
        assert!(
            Instant::now() < deadline,
            "reading stalled while storage was stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Down for 10 s in all (injection, not synchronisation).
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        run.try_wait().unwrap().is_none(),
        "the pipeline kept running"
    );
    s3.signal("-CONT");

    // Back: it catches up; the previous snapshot stayed whole, the new one holds everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    while durable().await < total {
        assert!(
            Instant::now() < deadline,
            "never caught up after storage came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill")
        .args(["-TERM", &run.id().to_string()])
        .status()
        .unwrap();
    assert!(run.wait().unwrap().success());
    let all: Vec<_> = first.into_iter().chain(second).collect();
    let streamed = canonical(&latest_tables(&output).await);
    let batch = canonical(&batch_tables(&p, &all).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn hostile_input_to_every_topic_of_the_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (_, p) = pipeline_file_with(
        dir.path(),
        &tag("hostile"),
        "",
        crate::hostile::small_messages,
    );
    let topics: Vec<&str> = p.topics.values().map(String::as_str).collect();
    let brokers = env("QUOTAFLOW_TEST_BROKERS");
    ensure_topics(&brokers, &p, &topics, 3).await.unwrap();
    crate::hostile::hostile_run(&brokers, &p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn a_crash_at_each_step_of_writing_a_snapshot_leaves_the_previous_one_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("crashat"),
        "trigger_events = 1000\ntrigger_interval = \"1h\"",
    );
    // One message per record batch (tansu 0.6 and mid-batch fetches: see README).
    let msgs = produce(&p, 22, 1).await;
    for point in ["before_state", "before_manifest", "before_latest"] {
        let out = dir.path().join(point);
        let out = out.to_str().unwrap();
        // The crash comes while writing snapshot 2: snapshot 1 is durable by then.
        let crashed = Command::new(bin())
            .args(["run", "--once", "--pipeline"])
            .arg(&file)
            .args(["--brokers", &env("QUOTAFLOW_TEST_BROKERS"), "--output", out])
            .env("QUOTAFLOW_CRASH_AT", format!("{point}:2"))
            .output()
            .unwrap();
        assert!(!crashed.status.success(), "{point}: no crash");
        let loc = Location::parse(out).unwrap();
        // A reader sees snapshot 1, whole.
        assert_eq!(read_latest_whole(&loc).await, 1, "{point}");
        let resumed = run_once(&file, out);
        assert!(messages_read(&resumed) > 0, "{point}");
        let streamed = canonical(&latest_tables(out).await);
        let batch = canonical(&batch_tables(&p, &msgs).await);
        assert_eq!(
            without_dead_letters(streamed),
            without_dead_letters(batch),
            "{point}"
        );
    }
}
