//! The run loop: Kafka → decode → fold into state → (every trigger) SQL → snapshot.
//!
//! Order of a snapshot: dead letters delivered → state pruned → tables computed and alert
//! rules evaluated → Parquet, state (with the alert outbox), manifest, `_latest` written →
//! alert events handed to the log and the background dispatcher → advisory Kafka commit →
//! retention. Offsets only move
//! inside the state, so whatever the snapshot holds is exactly what its offsets say was read:
//! a restart resumes from `_latest` and reads on from there.

use std::collections::BTreeSet;
use std::future::Future;

use futures::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::Message;

use crate::alert::deliver::{self, Dispatcher};
use crate::config::Pipeline;
use crate::engine::Engine;
use crate::error::Error;
use crate::snapshot::{Location, Manifest};
use crate::source::decode::Decoder;
use crate::source::decode::{BadInput, Reason};
use crate::source::kafka::{DeadLetterSink, KafkaSource, Tp};
use crate::state::{DeadLetter, State};
use crate::watermark::Watermark;

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
    /// Alert events acknowledged by their Kafka or webhook target during this run.
    pub alerts_delivered: u64,
    /// Alert events not acknowledged when the run stopped (retried at the next start).
    pub alerts_pending: usize,
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
    let mut state = location.read_state(&manifest).await?;
    let acks = location.read_acks(manifest.snapshot_id).await?;
    deliver::settle(&mut state, &acks.acked, acks.counts);
    tracing::info!(snapshot_id = manifest.snapshot_id, as_of = ?manifest.as_of, "restored state");
    Ok(state)
}

struct Runner {
    pipeline: Arc<Pipeline>,
    location: Location,
    engine: Engine,
    source: KafkaSource,
    dead_letters: DeadLetterSink,
    alerts: Dispatcher,
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
/// Messages handled in a row once one arrived, before the trigger and shutdown are checked.
const BURST: usize = 1024;
/// Messages between two reads of the wall clock (the clock-skew bound of the decoder).
const CLOCK_EVERY: u64 = 1024;

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
    let alerts = Dispatcher::start(&opts.brokers, &pipeline).await?;
    // Alert events a previous run recorded but did not see acknowledged go out again.
    alerts.submit(state.outbox.iter().cloned());
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
        alerts,
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
            alerts_delivered: 0,
            alerts_pending: 0,
        },
    };
    let cal = pipeline.calendar;
    let horizon = pipeline.dedup_horizon_micros();
    let mut tick = tokio::time::interval(pipeline.trigger_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    tokio::pin!(shutdown);
    let total = r.source.assigned.len();
    // Progress for the `--once` stall guard: (messages, end-of-partition events) seen at the
    // last tick that saw them change.
    let (mut last_progress, mut progress_mark, mut eofs) = (Instant::now(), (0u64, 0u64), 0u64);
    // The wall clock for the clock-skew bound, read every CLOCK_EVERY messages (not each one).
    let mut now = chrono::Utc::now().timestamp_micros();
    let mut watermark = Watermark::new(
        pipeline.idle_timeout,
        pipeline.allowed_lateness_micros(),
        opts.once,
    );

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
                watermark.refresh(&r.state, r.source.partitions(), Instant::now());
                if r.since_snapshot > 0 {
                    r.snapshot_or_log(opts.once).await?;
                }
                now = chrono::Utc::now().timestamp_micros();
                if opts.once {
                    tracing::info!(messages = r.report.messages, partitions_done = done.len(), partitions = total, "reading");
                    if (r.report.messages, eofs) != progress_mark {
                        progress_mark = (r.report.messages, eofs);
                        last_progress = Instant::now();
                    }
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
            m = r.source.consumer.recv() => {
                // Then what is already queued, up to BURST messages, without going back
                // through the select (it costs more than a message when data flows).
                let mut m = m;
                let mut burst = 0usize;
                watermark.refresh(&r.state, r.source.partitions(), Instant::now());
                loop {
                    match m {
                        Ok(msg) => {
                            let topic = msg.topic();
                            let payload = msg.payload().unwrap_or_default();
                            r.report.messages += 1;
                            r.report.bytes += payload.len() as u64;
                            r.since_snapshot += 1;
                            if r.report.messages.is_multiple_of(CLOCK_EVERY) {
                                now = chrono::Utc::now().timestamp_micros();
                            }
                            watermark.read(topic, msg.partition());
                            if let Some(event_type) = pipeline.event_type_of(topic) {
                                let decoded = decoder.decode(event_type, payload, now).and_then(|event| {
                                    let t = event.occurred_at();
                                    r.state.see(topic, msg.partition(), t);
                                    if watermark.is_late(t) {
                                        Err(late(t, watermark.current(), pipeline.allowed_lateness))
                                    } else {
                                        Ok(event)
                                    }
                                });
                                match decoded {
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
                        }
                        Err(KafkaError::PartitionEOF(_)) => {
                            eofs += 1;
                            let at_end = r.source.at_end(&r.state)?;
                            let t = Instant::now();
                            for (topic, p) in &at_end {
                                watermark.reached_end(topic, *p, t);
                            }
                            if opts.once {
                                done.extend(at_end);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "Kafka consumer error; retrying"),
                    }
                    burst += 1;
                    let triggered = pipeline.trigger_events > 0 && r.since_snapshot >= pipeline.trigger_events;
                    let stop = opts.max_events.is_some_and(|max| r.report.messages >= max);
                    if burst >= BURST || triggered || stop {
                        break;
                    }
                    match r.source.consumer.recv().now_or_never() {
                        Some(next) => m = next,
                        None => break,
                    }
                }
            }
        }
    }
    if r.since_snapshot > 0 || r.state.snapshot_id == 0 {
        r.snapshot_or_log(true).await?;
    }
    r.drain_alerts().await;
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

    /// Waits (up to the pipeline's drain timeout) for alert deliveries in flight, and records
    /// those acknowledged since the last snapshot next to it.
    async fn drain_alerts(&mut self) {
        let left = self
            .alerts
            .drain(self.pipeline.alert_delivery.drain_timeout)
            .await;
        let (acked, counts) = self.alerts.take();
        self.report.alerts_delivered += counts.values().map(|c| c.delivered).sum::<u64>();
        self.report.alerts_pending = left;
        if !acked.is_empty() || !counts.is_empty() {
            // An earlier run may have recorded acknowledgements after the same snapshot.
            let id = self.state.snapshot_id;
            let mut acks = self.location.read_acks(id).await.unwrap_or_default();
            acks.acked.extend(acked);
            for (target, c) in counts {
                let total = acks.counts.entry(target).or_default();
                total.delivered += c.delivered;
                total.failed_attempts += c.failed_attempts;
            }
            if let Err(e) = self.location.write_acks(id, &acks).await {
                tracing::warn!(error = %e, "could not record alert acknowledgements; the next start sends those events again");
            }
        }
        if left > 0 {
            tracing::warn!(
                pending = left,
                "alert deliveries still pending at stop; the next start retries them"
            );
        }
    }

    async fn snapshot(&mut self) -> Result<(), Error> {
        let t0 = Instant::now();
        self.dead_letters.deliver(&self.pending).await?;
        self.pending.clear();
        let (acked, counts) = self.alerts.take();
        self.report.alerts_delivered += counts.values().map(|c| c.delivered).sum::<u64>();
        deliver::settle(&mut self.state, &acked, counts);
        let previous = self.state.snapshot_id;
        self.state.snapshot_id = previous + 1;
        self.state.prune(self.pipeline.dedup_horizon_micros());
        let (alerts_before, outbox_before) = (self.state.alerts.clone(), self.state.outbox.len());
        let written = async {
            let (mut tables, breaches) = self
                .engine
                .compute_with_alerts(&self.state, self.state.snapshot_id)
                .await?;
            let events = crate::alert::apply(
                &mut self.state.alerts,
                breaches,
                &self.pipeline.name,
                self.state.snapshot_id,
                self.state.as_of,
            );
            let outgoing = deliver::outgoing(&self.pipeline, &events);
            self.state.outbox.extend(outgoing.iter().cloned());
            tables.push(state_table(
                &self.state,
                "alerts",
                crate::state::tables::alerts,
            )?);
            tables.push(state_table(
                &self.state,
                "alert_deliveries",
                crate::state::tables::alert_deliveries,
            )?);
            let manifest = self
                .location
                .write(&self.state, &tables, &self.pipeline.name)
                .await?;
            Ok::<_, Error>((manifest, events, outgoing))
        }
        .await;
        let manifest = match written {
            Ok((m, events, outgoing)) => {
                // Transitions go out only once the snapshot that records them is durable.
                deliver::to_log(&self.pipeline, &events);
                self.alerts.submit(outgoing);
                m
            }
            Err(e) => {
                // The same id is reused next time: files are named by id, so the retry overwrites.
                self.state.snapshot_id = previous;
                self.state.alerts = alerts_before;
                self.state.outbox.truncate(outbox_before);
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

/// The dead-letter reason of an event older than the watermark minus the allowed lateness.
fn late(occurred_at: i64, watermark: Option<i64>, lateness: Duration) -> BadInput {
    let instant = |t: i64| {
        chrono::DateTime::from_timestamp_micros(t).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
    };
    BadInput {
        reason: Reason::Late,
        detail: format!(
            "occurred_at {} is older than the watermark {} minus allowed_lateness ({} days)",
            instant(occurred_at),
            watermark.map_or_else(|| "-".into(), instant),
            lateness.as_secs() / 86_400
        ),
    }
}

/// A snapshot table built from the state in Rust (`alerts`, `alert_deliveries`), with the
/// snapshot-wide columns.
fn state_table(
    state: &State,
    name: &str,
    build: fn(
        &State,
    ) -> Result<
        datafusion::arrow::array::RecordBatch,
        datafusion::arrow::error::ArrowError,
    >,
) -> Result<crate::engine::Table, Error> {
    let internal =
        |e: &dyn std::fmt::Display| crate::error::InternalError::new(format!("{name} table: {e}"));
    let batch = build(state).map_err(|e| internal(&e))?;
    let (schema, batches) = crate::engine::with_snapshot_columns(
        &batch.schema(),
        vec![batch],
        state.snapshot_id,
        state.as_of,
    )
    .map_err(|e| internal(&e))?;
    Ok(crate::engine::Table {
        name: name.into(),
        schema,
        batches,
    })
}
