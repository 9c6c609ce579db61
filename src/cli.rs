//! Command-line interface: argument parsing and one function per command. Each command
//! validates its configuration before any network or storage I/O.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use crate::config::Pipeline;
use crate::error::{Error, UsageError};
use crate::generate::{generate, GenSpec};
use crate::internal::InternalError;
use crate::pipeline::{run, RunOptions};
use crate::query::Format;
use crate::snapshot::Location;

#[derive(Debug, Parser)]
#[command(
    name = "quotaflow",
    version,
    about = "Streaming sales-performance analytics: Kafka events → DataFusion SQL → exactly-once Delta Lake snapshots.",
    long_about = "quotaflow reads sales activity and deal events from Kafka, folds them into state, computes quota attainment \
and the other metric tables of METRICS.md with SQL, and writes them as Delta Lake tables to object storage (file://, s3://, gs://, az://), \
recomputing at each snapshot only what changed.\n\n\
Start with `quotaflow demo`: it needs no Kafka and no configuration."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: consume the topics, snapshot every trigger interval, resume from `_latest`.
    Run {
        /// Pipeline file [default: pipelines/default.toml, else the built-in copy of it]
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Kafka bootstrap servers, e.g. 127.0.0.1:9092 [default: source.brokers of the pipeline file]
        #[arg(long, env = "QUOTAFLOW_BROKERS")]
        brokers: Option<String>,
        /// Where snapshots go: a directory, file://, s3://bucket/prefix, gs://, az:// [default: snapshot.output of the pipeline file]
        #[arg(long, env = "QUOTAFLOW_OUTPUT")]
        output: Option<String>,
        /// Read until the broker reports the end of every partition, write a final snapshot, exit 0
        #[arg(long)]
        once: bool,
        /// Stop after this many messages (with a final snapshot), e.g. to replay in chunks
        #[arg(long)]
        max_events: Option<u64>,
        /// With --once: seconds without a message and without a partition newly at its end before
        /// the run stops with an error naming the partitions not at their end (a broker that
        /// cannot serve them)
        #[arg(long, default_value_t = crate::pipeline::DEFAULT_STALL_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
        stall_timeout: u64,
    },
    /// Generate deterministic synthetic events for every topic, into Kafka or JSONL files.
    Generate {
        /// Number of reps (8 per team, teams spread over five regions)
        #[arg(long, default_value_t = 50)]
        reps: usize,
        /// Days of history
        #[arg(long, default_value_t = 91)]
        days: u32,
        /// Random seed: the same flags give the same events
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// First day (YYYY-MM-DD) [default: today minus --days, so no event lies in the future]
        #[arg(long)]
        start: Option<NaiveDate>,
        /// Produce to these Kafka brokers (topics are created if missing)
        #[arg(
            long,
            env = "QUOTAFLOW_BROKERS",
            conflicts_with = "out_dir",
            required_unless_present = "out_dir"
        )]
        brokers: Option<String>,
        /// Write one JSONL file per topic (<topic>.jsonl, one message value per line) instead
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Partitions of topics that do not exist yet
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Messages per producer batch (Kafka record batch)
        #[arg(long, default_value_t = 10_000)]
        batch_messages: usize,
        /// Pipeline file whose topic names are used
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Reps (by number, e.g. 3,11 for rep-00003 and rep-00011) who fall silent: no activity,
        /// no new deal, no deal moving on, from --silent-from until --silent-until
        #[arg(long, value_delimiter = ',', requires = "silent_from")]
        silent_reps: Vec<usize>,
        /// First silent day (YYYY-MM-DD)
        #[arg(long, requires = "silent_reps")]
        silent_from: Option<NaiveDate>,
        /// First day the silent reps are back [default: never]
        #[arg(long, requires = "silent_from")]
        silent_until: Option<NaiveDate>,
        /// Produce at this steady rate (messages/s) instead of as fast as possible (benchmarks)
        #[arg(long, conflicts_with = "out_dir")]
        rate: Option<u64>,
        /// With --rate: write a CSV delivery log here, one line per (millisecond, topic,
        /// partition): produced_at_ms,topic,partition,max_offset,count
        #[arg(long, requires = "rate")]
        delivery_log: Option<PathBuf>,
    },
    /// Benchmark the read limit: read every topic of the pipeline from the beginning to its end
    /// with the consumer `run` uses, only counting messages and bytes, and print the rate.
    Limit {
        /// Pipeline file whose topics and Kafka properties are used
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Kafka bootstrap servers
        #[arg(long, env = "QUOTAFLOW_BROKERS")]
        brokers: String,
    },
    /// Query a snapshot with SQL (read-only). Every table of the snapshot is registered by name,
    /// at the Delta version the snapshot's checkpoint names.
    Sql {
        #[command(flatten)]
        at: SnapshotArgs,
        /// The query, e.g. "SELECT * FROM attainment WHERE level = 'team'"
        query: String,
    },
    /// Serve the latest snapshot's tables over the PostgreSQL wire protocol, for BI tools and
    /// any PostgreSQL client (read-only; a new snapshot is picked up without a restart).
    ///
    /// Clients log in as user and database `quotaflow` (serve.user, serve.database) with the
    /// password from QUOTAFLOW_SERVE_PASSWORD or --password-file (SCRAM-SHA-256). Without a
    /// password it listens on loopback only. TLS is on when --tls-cert and --tls-key are given.
    Serve {
        /// Pipeline file whose [serve] section gives the defaults [default: pipelines/default.toml, else the built-in copy]
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Snapshot location (as for `run`) [default: snapshot.output of the pipeline file]
        #[arg(long, env = "QUOTAFLOW_OUTPUT")]
        output: Option<String>,
        /// PostgreSQL-wire address, e.g. 0.0.0.0:5433 [default: serve.pg, 127.0.0.1:5433]
        #[arg(long)]
        pg: Option<std::net::SocketAddr>,
        /// Address of /healthz and /metrics, or "off" [default: serve.http, 127.0.0.1:9465]
        #[arg(long)]
        http: Option<String>,
        /// File whose first line is the password [default: serve.password_file, else QUOTAFLOW_SERVE_PASSWORD]
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// PEM certificate chain for TLS [default: serve.tls_cert]
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for TLS [default: serve.tls_key]
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// List the retained snapshots (time travel: `sql --snapshot ID`, or a Delta reader at the
    /// versions `_checkpoints/<id>.json` names).
    Snapshots {
        /// Snapshot location (as for `run`)
        #[arg(long, env = "QUOTAFLOW_OUTPUT")]
        output: String,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Check a snapshot: recompute every table in full from the snapshot's state (the batch
    /// path) and report every row that differs from the published tables. Exits 3 when any
    /// row differs.
    Verify {
        /// Pipeline file the snapshot was computed with [default: pipelines/default.toml, else the built-in copy]
        #[arg(long)]
        pipeline: Option<PathBuf>,
        /// Snapshot location (as for `run`) [default: snapshot.output of the pipeline file]
        #[arg(long, env = "QUOTAFLOW_OUTPUT")]
        output: Option<String>,
        /// Snapshot id [default: the one `_latest` names]
        #[arg(long)]
        snapshot: Option<u64>,
        /// Differing rows listed per table and side
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Explain one published figure: the row, the Kafka messages behind the column (topic,
    /// partition, offset, version and the fields that mattered) and the arithmetic from them
    /// to the figure, checked to reproduce the published value exactly (exit 3 if it does
    /// not). Computed from the snapshot's state, not by re-reading Kafka.
    ///
    /// e.g. quotaflow explain attainment --key level=rep --key entity_id=rep-00042
    /// --key period_type=quarter --key period_start=2026-07-01 --column attainment
    Explain(crate::explain::Args),
    /// List the alerts firing now, from the latest snapshot (or another one).
    Alerts {
        #[command(flatten)]
        at: SnapshotArgs,
    },
    /// Check a pipeline file and its SQL without touching the network.
    Validate {
        /// Pipeline file [default: pipelines/default.toml, else the built-in copy of it]
        #[arg(long)]
        pipeline: Option<PathBuf>,
    },
    /// Run the whole pipeline on an in-process Kafka cluster with synthetic data; no setup needed.
    Demo {
        /// Directory for the demo's snapshots (emptied first)
        #[arg(long, default_value = "quotaflow-demo")]
        dir: String,
        /// Then serve the demo's output (dashboard and PostgreSQL endpoint on loopback, the
        /// pipeline file's [serve] addresses) until Ctrl-C
        #[arg(long)]
        serve: bool,
    },
}

/// Which snapshot a read command looks at, and how it prints.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Snapshot location (as for `run`)
    #[arg(long, env = "QUOTAFLOW_OUTPUT")]
    output: String,
    /// Snapshot id [default: the one `_latest` names]
    #[arg(long)]
    snapshot: Option<u64>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

impl SnapshotArgs {
    /// Runs one read-only query over the chosen snapshot and renders the result.
    async fn query(&self, sql: &str) -> Result<String, Error> {
        let location = Location::parse(&self.output)?;
        let checkpoint = crate::query::checkpoint(&location, self.snapshot).await?;
        let ctx = crate::query::session(&location, &checkpoint).await?;
        let batches = crate::query::query(&ctx, sql).await?;
        crate::query::render(&batches, self.format)
    }
}

/// Runs a parsed command; returns what to print on stdout.
pub async fn execute(cli: Cli) -> Result<String, Error> {
    match cli.command {
        Command::Run {
            pipeline,
            brokers,
            output,
            once,
            max_events,
            stall_timeout,
        } => {
            let pipeline = Arc::new(Pipeline::load(pipeline.as_deref())?);
            let brokers = brokers
                .or_else(|| pipeline.source.brokers.clone())
                .ok_or(UsageError::NoBrokers)?;
            let output = output
                .or_else(|| pipeline.snapshot.output.clone())
                .ok_or(UsageError::NoOutput)?;
            Location::parse(&output)?;
            crate::engine::Engine::new(Arc::clone(&pipeline.metrics))
                .check()
                .await?;
            let opts = RunOptions {
                once,
                max_events,
                stall_timeout: std::time::Duration::from_secs(stall_timeout),
                ..RunOptions::once(&brokers, &output)
            };
            // The handlers are installed here, before the run says it is ready: a SIGTERM from
            // then on drains and writes a last snapshot.
            let shutdown =
                shutdown_signal("shutting down: writing a last snapshot").map_err(|e| {
                    Error::Io {
                        path: "signal handlers".into(),
                        source: e,
                    }
                })?;
            let report = run(pipeline, opts, shutdown).await?;
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            let last = report.last.as_ref();
            Ok(format!(
                "read {} messages ({:.1} MB) in {:.2} s: {:.0} messages/s; {} snapshot(s), latest {} as of {}",
                report.messages,
                report.bytes as f64 / 1e6,
                secs,
                report.messages as f64 / secs,
                report.snapshots,
                last.map_or("-".to_string(), |m| m.snapshot_id.to_string()),
                last.and_then(|m| m.as_of.clone()).unwrap_or_else(|| "-".into()),
            ))
        }
        Command::Generate {
            reps,
            days,
            seed,
            start,
            brokers,
            out_dir,
            partitions,
            batch_messages,
            pipeline,
            silent_reps,
            silent_from,
            silent_until,
            rate,
            delivery_log,
        } => {
            let pipeline = Pipeline::load(pipeline.as_deref())?;
            if reps == 0 || days == 0 {
                return Err(UsageError::Flag {
                    flag: if reps == 0 { "--reps" } else { "--days" },
                    message: "must be at least 1".into(),
                }
                .into());
            }
            let start = start.unwrap_or_else(|| {
                chrono::Utc::now().date_naive() - chrono::Duration::days(i64::from(days))
            });
            if let Some(r) = silent_reps.iter().find(|r| **r >= reps) {
                return Err(UsageError::Flag {
                    flag: "--silent-reps",
                    message: format!("{r}: there are only reps 0..{reps}"),
                }
                .into());
            }
            let spec = GenSpec {
                reps,
                days,
                seed,
                start,
                silence: silent_from.map(|from| crate::generate::Silence {
                    reps: silent_reps,
                    from,
                    until: silent_until.unwrap_or(NaiveDate::MAX),
                }),
            };
            if let Some(dir) = out_dir {
                crate::generate::write_jsonl(&spec, &pipeline, &dir)
            } else {
                let brokers = brokers.ok_or(UsageError::Flag {
                    flag: "--brokers",
                    message: "pass --brokers or --out-dir".into(),
                })?;
                let topics: Vec<&str> = pipeline
                    .source
                    .topics
                    .values()
                    .map(String::as_str)
                    .collect();
                crate::kafka::Cluster::new(&brokers, &pipeline.source.kafka)
                    .ensure_topics(&topics, partitions)
                    .await?;
                let started = std::time::Instant::now();
                if rate == Some(0) {
                    return Err(UsageError::Flag {
                        flag: "--rate",
                        message: "must be at least 1".into(),
                    }
                    .into());
                }
                let mut log = match &delivery_log {
                    Some(path) => Some(std::io::BufWriter::new(
                        std::fs::File::create(path).map_err(|source| Error::Io {
                            path: path.display().to_string(),
                            source,
                        })?,
                    )),
                    None => None,
                };
                let n = tokio::task::spawn_blocking(move || {
                    let (tx, rx) = std::sync::mpsc::sync_channel(10_000);
                    let topics = pipeline.source.topics.clone();
                    std::thread::spawn(move || {
                        generate(&spec, |g| {
                            let _ = tx.send((topics[&g.event_type].clone(), g.key, g.value));
                        })
                    });
                    match (rate, log.as_mut()) {
                        (Some(rate), Some(log)) => {
                            crate::kafka::produce_paced(&brokers, rate, rx, log).and_then(|n| {
                                std::io::Write::flush(log)?;
                                Ok(n)
                            })
                        }
                        (Some(rate), None) => {
                            crate::kafka::produce_paced(&brokers, rate, rx, &mut std::io::sink())
                        }
                        _ => crate::kafka::produce_all(&brokers, batch_messages, rx, |n| {
                            eprintln!("generate: {n} messages produced")
                        }),
                    }
                })
                .await
                .map_err(|e| InternalError::new(format!("producer task failed: {e}")))??;
                Ok(format!(
                    "produced {n} messages in {:.1} s (start {start})",
                    started.elapsed().as_secs_f64()
                ))
            }
        }
        Command::Limit { pipeline, brokers } => {
            let pipeline = Pipeline::load(pipeline.as_deref())?;
            let started = std::time::Instant::now();
            let (messages, bytes) = crate::source::consumer::read_limit(
                &crate::kafka::Cluster::new(&brokers, &pipeline.source.kafka),
                &crate::source::consumer::group_of(&pipeline.name),
                &pipeline.source.topics,
            )
            .await?;
            let secs = started.elapsed().as_secs_f64().max(1e-9);
            Ok(format!(
                "read {messages} messages ({:.1} MB) in {secs:.2} s: {:.0} messages/s (no-op consumer)",
                bytes as f64 / 1e6,
                messages as f64 / secs
            ))
        }
        Command::Sql { at, query } => at.query(&query).await,
        Command::Alerts { at } => at.query(FIRING_ALERTS).await,
        Command::Explain(args) => args.run().await,
        Command::Verify {
            pipeline,
            output,
            snapshot,
            limit,
        } => {
            let p = Arc::new(Pipeline::load(pipeline.as_deref())?);
            let output = output
                .or_else(|| p.snapshot.output.clone())
                .ok_or(UsageError::NoOutput)?;
            let location = Location::parse(&output)?;
            let report = crate::verify::verify(&location, &p, snapshot).await?;
            if report.differences() > 0 {
                return Err(Error::Differs {
                    report: report.render(limit),
                });
            }
            Ok(report.render(limit))
        }
        Command::Serve {
            pipeline,
            output,
            pg,
            http,
            password_file,
            tls_cert,
            tls_key,
        } => {
            let p = Arc::new(Pipeline::load(pipeline.as_deref())?);
            let defaults = &p.serve;
            let http = match http {
                Some(h) if h == "off" => None,
                Some(h) => Some(h.parse().map_err(|_| UsageError::Flag {
                    flag: "--http",
                    message: format!("`{h}` is not an address such as 127.0.0.1:9465 (or \"off\")"),
                })?),
                None => defaults.http,
            };
            let tls = match (tls_cert, tls_key) {
                (Some(c), Some(k)) => Some((c, k)),
                _ => defaults.tls_cert.clone().zip(defaults.tls_key.clone()),
            };
            let password_file = password_file.or_else(|| defaults.password_file.clone());
            let opts = crate::serve::Options {
                output: output
                    .or_else(|| p.snapshot.output.clone())
                    .ok_or(UsageError::NoOutput)?,
                pg: pg.unwrap_or(defaults.pg),
                http,
                user: defaults.user.clone(),
                database: defaults.database.clone(),
                password: crate::serve::password(
                    password_file.as_deref(),
                    std::env::var(crate::serve::PASSWORD_ENV).ok(),
                )?,
                tls,
                poll_interval: defaults.poll_interval,
                pipeline: Arc::clone(&p),
            };
            let shutdown =
                shutdown_signal("shutting down: no new connections").map_err(|e| Error::Io {
                    path: "signal handlers".into(),
                    source: e,
                })?;
            crate::serve::serve(opts, shutdown).await?;
            Ok(String::new())
        }
        Command::Snapshots { output, format } => {
            let location = Location::parse(&output)?;
            let batch = crate::query::snapshots(&location).await?;
            crate::query::render(&[batch], format)
        }
        Command::Validate { pipeline } => {
            let p = Arc::new(Pipeline::load(pipeline.as_deref())?);
            let tables = crate::engine::Engine::new(Arc::clone(&p.metrics))
                .check()
                .await?;
            let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
            Ok(format!(
                "{}: pipeline `{}` is valid; snapshots will hold {} tables: {}",
                p.file,
                p.name,
                names.len(),
                names.join(", ")
            ))
        }
        Command::Demo { dir, serve } => {
            let summary = crate::demo::demo(&dir).await?;
            if !serve {
                return Ok(summary);
            }
            println!("{summary}");
            let shutdown =
                shutdown_signal("shutting down: no new connections").map_err(|e| Error::Io {
                    path: "signal handlers".into(),
                    source: e,
                })?;
            crate::demo::serve(dir, shutdown).await?;
            Ok(String::new())
        }
    }
}

/// What `quotaflow alerts` and the demo show.
pub const FIRING_ALERTS: &str = "SELECT severity, rule, key, value, message, fired_at, alert_id FROM alerts \
     WHERE state = 'firing' ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, rule, key";

/// Installs the Ctrl-C and SIGTERM handlers now; the future resolves on the first of them.
fn shutdown_signal(what: &'static str) -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            tracing::info!("{what}");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("{what}");
        })
    }
}
