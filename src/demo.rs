//! `quotaflow demo`: the whole pipeline on an embedded default. Starts librdkafka's in-process
//! mock cluster, generates a quarter of data for 50 reps into it (two of them, rep-00003 and
//! rep-00011, fall silent for the last eight days), runs the built-in pipeline to the end
//! offsets, writes snapshots under `./quotaflow-demo/` and prints a summary with the alerts
//! that fired; with `--serve`, then serves that output (`serve`).

use std::sync::Arc;

use chrono::NaiveDate;
use rdkafka::mocking::MockCluster;

use crate::config::Pipeline;
use crate::error::Error;
use crate::generate::{generate, GenSpec};
use crate::internal::InternalError;
use crate::kafka::KafkaIoError;
use crate::pipeline::{run, RunOptions};
use crate::snapshot::Location;

/// Demo settings (fixed, so every demo shows the same numbers).
pub const DEMO_REPS: usize = 50;
pub const DEMO_DAYS: u32 = 91;
pub const DEMO_SEED: u64 = 42;
/// Reps who log nothing for the demo's last `DEMO_SILENT_DAYS` days.
pub const DEMO_SILENT_REPS: [usize; 2] = [3, 11];
pub const DEMO_SILENT_DAYS: u32 = 8;
const DEMO_PARTITIONS: i32 = 8;

/// Runs the demo into `dir` (emptied first) and returns the text to print.
pub async fn demo(dir: &str) -> Result<String, Error> {
    let mut pipeline = Pipeline::builtin()?;
    // The summary lists the alerts that fired: the `log` target would print each one before it
    // as a JSON line. Kafka delivery stays (the alert topic is part of the demo).
    for rule in &mut Arc::make_mut(&mut pipeline.metrics).alerts {
        rule.deliver.retain(|t| t != "log");
    }
    // `/healthz` and `/metrics` on a port the system picks: the demo's run lasts seconds, and
    // the default port may be a running pipeline's, or another demo's.
    pipeline.http_bind = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let pipeline = Arc::new(pipeline);
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Io {
                path: dir.to_string(),
                source,
            })
        }
    }
    let cluster = MockCluster::new(1).map_err(KafkaIoError::Client)?;
    for topic in pipeline.source.topics.values().chain([
        &pipeline.source.dead_letter_topic,
        &pipeline.alert_delivery.kafka_topic,
    ]) {
        cluster
            .create_topic(topic, DEMO_PARTITIONS, 1)
            .map_err(|source| KafkaIoError::Topic {
                topic: topic.clone(),
                source,
            })?;
    }
    let brokers = cluster.bootstrap_servers();
    let start = NaiveDate::from_ymd_opt(2026, 8, 1)
        .ok_or_else(|| InternalError::new("the demo's start date is not a date"))?;
    let spec = GenSpec {
        reps: DEMO_REPS,
        days: DEMO_DAYS,
        seed: DEMO_SEED,
        start,
        silence: Some(crate::generate::Silence {
            reps: DEMO_SILENT_REPS.to_vec(),
            from: start + chrono::Duration::days(i64::from(DEMO_DAYS - DEMO_SILENT_DAYS)),
            until: NaiveDate::MAX,
        }),
    };
    eprintln!(
        "demo: generating {} days of events for {} reps into the in-process Kafka cluster ...",
        spec.days, spec.reps
    );
    let mut messages = Vec::new();
    generate(&spec, |g| {
        messages.push((
            pipeline.source.topics[&g.event_type].clone(),
            g.key,
            g.value,
        ))
    });
    let produced = {
        let brokers = brokers.clone();
        tokio::task::spawn_blocking(move || {
            crate::kafka::produce_all(&brokers, 10_000, messages, |_| {})
        })
        .await
        .map_err(|e| InternalError::new(format!("producer task failed: {e}")))??
    };
    eprintln!("demo: {produced} events produced; running the pipeline (quotaflow run --once) ...");
    let opts = RunOptions::once(&brokers, dir);
    let report = run(Arc::clone(&pipeline), opts, std::future::pending()).await?;
    drop(cluster);

    let location = Location::parse(dir)?;
    let checkpoint = crate::query::checkpoint(&location, None).await?;
    let ctx = crate::query::session(&location, &checkpoint).await?;
    let teams = crate::query::query(
        &ctx,
        "SELECT entity_id AS team, quota, closed_won, ROUND(attainment * 100, 1) AS attainment_pct, \
         ROUND(pacing, 2) AS pacing, attainment_band \
         FROM attainment WHERE level = 'team' AND period_type = 'quarter' AND is_current \
         ORDER BY attainment DESC NULLS LAST, team",
    )
    .await?;
    let quality = crate::query::query(
        &ctx,
        "SELECT topic, reason, \"count\" FROM data_quality ORDER BY topic, reason",
    )
    .await?;
    let alerts = crate::query::query(&ctx, "SELECT rule, severity, COUNT(*) AS firing FROM alerts WHERE state = 'firing' GROUP BY rule, severity ORDER BY rule").await?;
    let inactive = crate::query::query(
        &ctx,
        "SELECT key, message FROM alerts WHERE state = 'firing' AND rule = 'rep_inactive' ORDER BY key",
    )
    .await?;
    let secs = report.elapsed.as_secs_f64();
    let mut out = String::new();
    out.push_str(&format!(
        "quotaflow demo: {} events in {:.1} s ({:.0} events/s), snapshot {} as of {}\n\n",
        report.messages,
        secs,
        report.messages as f64 / secs.max(1e-9),
        checkpoint.snapshot_id,
        checkpoint.as_of.as_deref().unwrap_or("-")
    ));
    out.push_str("Current quarter by team:\n");
    out.push_str(&crate::query::render(&teams, crate::query::Format::Table)?);
    out.push_str("\n\nAlerts firing (quotaflow alerts --output DIR lists them):\n");
    out.push_str(&crate::query::render(&alerts, crate::query::Format::Table)?);
    out.push_str(&format!(
        "\n\nrep_inactive (the demo silences rep-00003 and rep-00011 for its last {DEMO_SILENT_DAYS} days):\n"
    ));
    out.push_str(&crate::query::render(
        &inactive,
        crate::query::Format::Table,
    )?);
    out.push_str(&format!(
        "\n{} alert events delivered to the Kafka topic {} ({} still pending), each also in the log.",
        report.alerts_delivered, pipeline.alert_delivery.kafka_topic, report.alerts_pending
    ));
    out.push_str("\n\nData quality:\n");
    out.push_str(&crate::query::render(
        &quality,
        crate::query::Format::Table,
    )?);
    out.push_str(&format!(
        "\n\nThe tables are Delta Lake tables in {dir}/tables/ (snapshot {} is named by {dir}/_latest). Explore them:\n\
         \x20 quotaflow sql --output {dir} \"SELECT * FROM attainment WHERE level = 'rep' AND is_current ORDER BY attainment DESC LIMIT 10\"\n\
         \x20 quotaflow sql --output {dir} --format csv \"SELECT * FROM rep_daily\"\n\
         \x20 quotaflow alerts --output {dir}\n\
         \x20 quotaflow snapshots --output {dir}\n\
         \x20 duckdb -c \"INSTALL delta; LOAD delta; SELECT * FROM delta_scan('{tables}/attainment') WHERE level = 'team' LIMIT 5\"\n",
        checkpoint.snapshot_id,
        tables = absolute(dir).join("tables").display(),
    ));
    Ok(out)
}

/// `dir` as an absolute path, for commands run from elsewhere.
fn absolute(dir: &str) -> std::path::PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.into())
}

/// `quotaflow demo --serve`: serves the demo's output in `dir` on loopback (the built-in
/// pipeline's `[serve]` ports, no password) until `shutdown`, after printing where.
pub async fn serve(
    dir: String,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let pipeline = std::sync::Arc::new(Pipeline::builtin()?);
    let defaults = pipeline.serve.clone();
    let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let pg = loopback(defaults.pg.port());
    let http = defaults.http.map(|h| loopback(h.port()));
    println!(
        "\nServing the demo's output until Ctrl-C:\n  dashboard  {}\n  psql       psql \"host=127.0.0.1 port={} user={} dbname={}\"",
        http.map_or("off".to_string(), |h| format!("http://{h}/")),
        pg.port(),
        defaults.user,
        defaults.database,
    );
    let opts = crate::serve::Options {
        output: dir,
        pg,
        http,
        user: defaults.user,
        database: defaults.database,
        password: None,
        tls: None,
        poll_interval: defaults.poll_interval,
        pipeline,
    };
    crate::serve::serve(opts, shutdown).await
}
