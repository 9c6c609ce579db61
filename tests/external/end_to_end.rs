//! A whole `--once` run as a process on the real broker: equal to the batch, readable by the
//! Delta readers (DuckDB, Polars, delta-rs) from local disk and from the S3 server, without
//! leaking its credential, with hostile input.

use std::process::Command;

use quotaflow::snapshot::Location;

use super::{
    bin, brokers, env, pipeline_file, produce, run_command, run_once, tag, without_dead_letters,
};
use crate::common::{canonical, Cluster};
use crate::harness::{messages_read, PipelineFile};
use crate::pipeline_mock::{batch_tables, latest_tables};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn real_broker_once_process_equals_batch_and_readers_agree() {
    let dir = tempfile::tempdir().unwrap();
    // Several snapshots, so that the readers also time-travel to an older one.
    let (file, p) = pipeline_file(
        dir.path(),
        &tag("once"),
        PipelineFile::default().snapshot("trigger_events", "1500"),
    );
    let msgs = produce(&p, 11, 10_000).await;
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let stdout = run_once(&file, out);
    assert_eq!(messages_read(&stdout), msgs.len() as u64);
    let streamed = canonical(&latest_tables(out).await);
    let batch = canonical(&batch_tables(&p, &msgs).await);
    assert_eq!(without_dead_letters(streamed), without_dead_letters(batch));

    let checked = check_readers(out);
    assert!(
        !checked.contains("time travel to snapshot 1: 0 tables"),
        "{checked}"
    );
}

/// Runs `scripts/check_readers.py` over `output` (local or S3): every table read by DuckDB,
/// Polars and delta-rs must equal `quotaflow sql`, with the contract's types. Returns its report.
fn check_readers(output: &str) -> String {
    let check = Command::new("python3")
        .arg("scripts/check_readers.py")
        .arg(bin())
        .arg(output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.status.success(),
        "readers disagree:\n{stdout}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout.contains("readers agree"), "{stdout}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn snapshots_on_the_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let t = tag("s3");
    let (file, p) = pipeline_file(dir.path(), &t, PipelineFile::default());
    let msgs = produce(&p, 12, 10_000).await;
    let output = format!("{}/{t}", env("QUOTAFLOW_TEST_S3"));
    // A credential of its own, with every log on: it must appear in no log line and no file.
    let secret = format!("s3cr3t-{t}");
    let out = run_command(&file, &output)
        .arg("--once")
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
    let manifest =
        serde_json::to_string(&loc.checkpoint(latest.snapshot_id).await.unwrap()).unwrap();
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
    // The Delta readers read the same tables from the S3 server.
    check_readers(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn hostile_input_to_every_topic_of_the_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (_, p) = pipeline_file(
        dir.path(),
        &tag("hostile"),
        PipelineFile::default().edit(crate::hostile::small_messages),
    );
    let topics: Vec<&str> = p.source.topics.values().map(String::as_str).collect();
    let brokers = brokers();
    Cluster::new(&brokers, &p.source.kafka)
        .ensure_topics(&topics, 3)
        .await
        .unwrap();
    crate::hostile::hostile_run(&brokers, &p).await;
}

#[test]
#[ignore = "needs services: run scripts/test"]
fn the_delta_scan_command_the_demo_prints_works() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = Command::new(bin())
        .args(["demo", "--dir", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let sql = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("duckdb -c \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no duckdb command: {stdout}"));
    assert!(sql.contains("delta_scan("), "{sql}");
    // Offline, the extension comes from PyPI (`duckdb-extension-delta`) instead of INSTALL.
    let sql = sql.replace("INSTALL delta;", "");
    let script = format!(
        "import duckdb, duckdb_extensions\nduckdb_extensions.import_extension('delta')\n\
         print(len(duckdb.connect().execute({sql:?}).fetchall()))"
    );
    let run = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let rows: usize = String::from_utf8_lossy(&run.stdout).trim().parse().unwrap();
    assert!(rows > 0, "the command read no rows");
}
