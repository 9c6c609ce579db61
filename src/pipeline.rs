//! The run loop: Kafka → decode → fold into state → (every trigger) SQL → snapshot.
//!
//! Order of a snapshot: dead letters delivered → state pruned → tables computed → Parquet,
//! state, manifest, `_latest` written → advisory Kafka commit → retention. Offsets only move
//! inside the state, so whatever the snapshot holds is exactly what its offsets say was read:
//! a restart resumes from `_latest` and reads on from there.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::Message;

use crate::config::Pipeline;
use crate::engine::Engine;
use crate::error::Error;
use crate::snapshot::{Location, Manifest};
use crate::source::decode::Decoder;
use crate::source::kafka::{DeadLetterSink, KafkaSource, Tp};
use crate::state::{DeadLetter, State};

/// How a run is started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub brokers: String,
    pub output: String,
    /// Read up to the end offsets found at start, snapshot, stop.
    pub once: bool,
    /// Stop (with a snapshot) after this many messages.
    pub max_events: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub restored_from: Option<u64>,
    pub messages: u64,
    pub bytes: u64,
    pub snapshots: u64,
    pub elapsed: Duration,
    pub last: Option<Manifest>,
}

/// Restores the state `_latest` names, or an empty one.
pub async fn restore(location: &Location, pipeline: &Pipeline) -> Result<State, Error> {
    let Some(latest) = location.latest().await? else {
        return Ok(State::default());
    };
    let manifest = location.manifest(latest.snapshot_id).await?;
    if manifest.pipeline != pipeline.name {
        return Err(Error::Usage(format!(
            "output `{}` holds snapshots of pipeline `{}`, not `{}`: use another --output",
            location.url, manifest.pipeline, pipeline.name
        )));
    }
    let state = location.read_state(&manifest).await?;
    tracing::info!(snapshot_id = manifest.snapshot_id, as_of = ?manifest.as_of, "restored state");
    Ok(state)
}

struct Runner {
    pipeline: Arc<Pipeline>,
    location: Location,
    engine: Engine,
    source: KafkaSource,
    dead_letters: DeadLetterSink,
    state: State,
    /// Dead letters not yet delivered (delivered before the snapshot that moves past them).
    pending: Vec<(DeadLetter, Vec<u8>)>,
    since_snapshot: u64,
    report: RunReport,
}

const SNAPSHOT_ATTEMPTS: u32 = 4;
/// A `--once` run that receives neither a message nor an end-of-partition event for this long
/// stops with an error naming the partitions, instead of waiting forever (a broker that cannot
/// serve an offset, a partition without a leader).
const ONCE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a pipeline until `shutdown` resolves (or, with `once`, to the end offsets).
pub async fn run(
    pipeline: Arc<Pipeline>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, Error> {
    let started = Instant::now();
    let location = Location::parse(&opts.output)?;
    let state = restore(&location, &pipeline).await?;
    let restored_from = (state.snapshot_id > 0).then_some(state.snapshot_id);
    let source = KafkaSource::connect(&opts.brokers, &pipeline, &state)?;
    let dead_letters = DeadLetterSink::connect(&opts.brokers, &pipeline)?;
    dead_letters.ensure_topic(&opts.brokers, &pipeline).await;
    let decoder = Decoder::new(pipeline.limits)?;

    let marks = source.watermarks()?;
    for ((topic, p), (low, _)) in &marks {
        if let Some(next) = state.next_offset(topic, *p) {
            if *low > next {
                tracing::error!(topic, partition = p, next, log_start = low,
                    "offsets {next}..{low} were deleted by the broker before quotaflow read them: those events are lost");
            }
        }
    }
    // `--once` stops when every partition is at its end as the broker reports it in fetch
    // responses (librdkafka's end-of-partition event), not at ListOffsets results: some
    // Kafka-protocol brokers (tansu 0.6) answer ListOffsets with stale offsets.
    let mut done: BTreeSet<Tp> = BTreeSet::new();

    let mut r = Runner {
        engine: Engine::new(Arc::clone(&pipeline)),
        pipeline: Arc::clone(&pipeline),
        location,
        source,
        dead_letters,
        state,
        pending: Vec::new(),
        since_snapshot: 0,
        report: RunReport {
            restored_from,
            messages: 0,
            bytes: 0,
            snapshots: 0,
            elapsed: Duration::ZERO,
            last: None,
        },
    };
    let cal = pipeline.calendar;
    let horizon = pipeline.dedup_horizon_micros();
    let mut tick = tokio::time::interval(pipeline.trigger_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    tokio::pin!(shutdown);
    let total = r.source.assigned.len();
    let mut last_progress = Instant::now();

    loop {
        if opts.once && done.len() >= total {
            break;
        }
        if opts.max_events.is_some_and(|m| r.report.messages >= m) {
            break;
        }
        if pipeline.trigger_events > 0 && r.since_snapshot >= pipeline.trigger_events {
            r.snapshot_or_log(opts.once).await?;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if r.since_snapshot > 0 {
                    r.snapshot_or_log(opts.once).await?;
                }
                if opts.once {
                    tracing::info!(messages = r.report.messages, partitions_done = done.len(), partitions = total, "reading");
                    if last_progress.elapsed() > ONCE_STALL_TIMEOUT {
                        let stalled: Vec<String> = r.source.assigned.keys().filter(|tp| !done.contains(*tp)).map(|(t, p)| format!("{t}/{p}")).collect();
                        return Err(Error::Usage(format!(
                            "--once: no message and no end of partition for {} s; partitions not at their end: {} \
                             (the last snapshot holds everything read so far)",
                            ONCE_STALL_TIMEOUT.as_secs(),
                            stalled.join(", ")
                        )));
                    }
                }
            }
            m = r.source.consumer.recv() => match m {
                Ok(msg) => {
                    last_progress = Instant::now();
                    let topic = msg.topic();
                    let payload = msg.payload().unwrap_or_default();
                    r.report.messages += 1;
                    r.report.bytes += payload.len() as u64;
                    r.since_snapshot += 1;
                    let Some(event_type) = pipeline.event_type_of(topic) else { continue };
                    let now = chrono::Utc::now().timestamp_micros();
                    match decoder.decode(event_type, payload, now) {
                        Ok(event) => {
                            let folded = r.state.fold(event, &cal, horizon);
                            r.state.count(topic, folded.as_str());
                        }
                        Err(bad) => {
                            r.state.count(topic, bad.reason.as_str());
                            let dl = DeadLetter {
                                topic: topic.to_string(),
                                partition: msg.partition(),
                                offset: msg.offset(),
                                reason: bad.reason.as_str().to_string(),
                                detail: bad.detail,
                                payload: Vec::new(),
                            };
                            let mut logged = dl.clone();
                            logged.payload = payload.to_vec();
                            r.state.log_dead_letter(logged, pipeline.dead_letter_rows);
                            r.pending.push((dl, payload.to_vec()));
                        }
                    }
                    r.state.advance(topic, msg.partition(), msg.offset());
                }
                Err(KafkaError::PartitionEOF(_)) => {
                    last_progress = Instant::now();
                    if opts.once {
                        done.extend(r.source.at_end(&r.state)?);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error; retrying"),
            }
        }
    }
    if r.since_snapshot > 0 || r.state.snapshot_id == 0 {
        r.snapshot_or_log(true).await?;
    }
    r.report.elapsed = started.elapsed();
    Ok(r.report)
}

impl Runner {
    /// Takes a snapshot, retrying with backoff; `fatal` turns a final failure into an error
    /// (a `--once` run), otherwise it is logged and the next trigger tries again.
    async fn snapshot_or_log(&mut self, fatal: bool) -> Result<(), Error> {
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=SNAPSHOT_ATTEMPTS {
            match self.snapshot().await {
                Ok(()) => return Ok(()),
                Err(e) if attempt == SNAPSHOT_ATTEMPTS => {
                    if fatal {
                        return Err(e);
                    }
                    tracing::error!(error = %e, "snapshot failed; offsets stay at the last durable snapshot, retrying at the next trigger");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "snapshot failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        Ok(())
    }

    async fn snapshot(&mut self) -> Result<(), Error> {
        let t0 = Instant::now();
        self.dead_letters.deliver(&self.pending).await?;
        self.pending.clear();
        let previous = self.state.snapshot_id;
        self.state.snapshot_id = previous + 1;
        self.state.prune(self.pipeline.dedup_horizon_micros());
        let before = self.state.alerts.clone();
        let written = async {
            let (mut tables, breaches) = self
                .engine
                .compute_with_alerts(&self.state, self.state.snapshot_id)
                .await?;
            let events = crate::alert::apply(
                &mut self.state.alerts,
                breaches,
                self.state.snapshot_id,
                self.state.as_of,
            );
            tables.push(alerts_table(&self.state)?);
            let manifest = self
                .location
                .write(&self.state, &tables, &self.pipeline.name)
                .await?;
            Ok::<_, Error>((manifest, events))
        }
        .await;
        let manifest = match written {
            Ok((m, events)) => {
                // Transitions are delivered only once the snapshot that records them is durable.
                crate::alert::deliver_to_log(&events);
                m
            }
            Err(e) => {
                // The same id is reused next time: files are named by id, so the retry overwrites.
                self.state.snapshot_id = previous;
                self.state.alerts = before;
                return Err(e);
            }
        };
        self.source.commit(&self.state);
        match self
            .location
            .retain(self.pipeline.retention, manifest.snapshot_id)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "retention"),
            Err(e) => {
                tracing::warn!(error = %e, "retention failed; old snapshots stay until the next one")
            }
        }
        tracing::info!(
            snapshot_id = manifest.snapshot_id,
            as_of = ?manifest.as_of,
            messages = self.since_snapshot,
            state_keys = self.state.size(),
            ms = t0.elapsed().as_millis() as u64,
            "snapshot written"
        );
        self.since_snapshot = 0;
        self.report.snapshots += 1;
        self.report.last = Some(manifest);
        Ok(())
    }
}

/// The `alerts` table of a snapshot, with the snapshot-wide columns.
fn alerts_table(state: &State) -> Result<crate::engine::Table, Error> {
    let internal =
        |e: &dyn std::fmt::Display| crate::error::InternalError::new(format!("alerts table: {e}"));
    let batch = crate::state::tables::alerts(state).map_err(|e| internal(&e))?;
    let (schema, batches) = crate::engine::with_snapshot_columns(
        &batch.schema(),
        vec![batch],
        state.snapshot_id,
        state.as_of,
    )
    .map_err(|e| internal(&e))?;
    Ok(crate::engine::Table {
        name: "alerts".into(),
        schema,
        batches,
    })
}
