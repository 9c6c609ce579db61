//! The run loop: Kafka → decode → fold into state → (every trigger) SQL → snapshot.
//!
//! A snapshot starts with a cut, on the consuming task: dead letters delivered, state pruned,
//! the state's Arrow tables built and the state serialised. The rest runs in the background
//! while reading goes on: the SQL, the alert rules (on a copy of the alert part of the state),
//! then Parquet, `_state.bin`, `_alerts.bin`, manifest and `_latest`. When it is durable the
//! consuming task takes over the alert lifecycles, hands the alert events to the log and the
//! dispatcher, commits the offsets (advisory) and applies retention. One snapshot is in flight
//! at a time; a trigger that comes due meanwhile starts the next one when it is done. Offsets
//! only move inside the state, so whatever the snapshot holds is exactly what its offsets say
//! was read: a restart resumes from `_latest` and reads on from there.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::Message;

use crate::alert::deliver::{self, Dispatcher};
use crate::config::Pipeline;
use crate::engine::Engine;
use crate::error::Error;
use crate::health::Health;
use crate::snapshot::{AlertsImage, EncodedTable, Location, Manifest, StateImage};
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
    /// The snapshot being computed and written in the background, if any.
    inflight: Option<InFlight>,
    /// What `/healthz` and `/metrics` report.
    health: Health,
    report: RunReport,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// A snapshot being computed and written in the background.
struct InFlight {
    task: tokio::task::JoinHandle<Result<Written, Error>>,
    /// The snapshot id before this one (restored if it fails).
    previous_id: u64,
    /// Messages its cut took in.
    messages: u64,
    started: Instant,
}

/// What a background snapshot produced.
struct Written {
    manifest: Manifest,
    alerts: crate::alert::AlertBook,
    outbox: Vec<deliver::Outgoing>,
    events: Vec<crate::alert::AlertEvent>,
    outgoing: Vec<deliver::Outgoing>,
}

/// Waits for the snapshot in flight; never resolves when there is none.
async fn written(inflight: &mut Option<InFlight>) -> Result<Written, Error> {
    match inflight {
        Some(f) => (&mut f.task).await.map_err(|e| {
            Error::from(crate::error::InternalError::new(format!(
                "snapshot task: {e}"
            )))
        })?,
        None => std::future::pending().await,
    }
}

const SNAPSHOT_ATTEMPTS: u32 = 4;
/// A `--once` run that receives neither a message nor an end-of-partition event for this long
/// stops with an error naming the partitions, instead of waiting forever (a broker that cannot
/// serve an offset, a partition without a leader).
const ONCE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A client error this recent (and no message since) makes the broker count as unreachable.
const BROKER_ERROR_WINDOW: Duration = Duration::from_secs(15);
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

    let health = Health::default();
    let server = match pipeline.http_bind {
        Some(addr) => health.serve(addr).await,
        None => None,
    };
    // Stops the endpoint however the run ends.
    let _server = AbortOnDrop(server);
    health.update(|s| {
        s.ready = true;
        s.broker_connected = true;
        s.max_snapshot_age = (pipeline.trigger_interval * 3).max(Duration::from_secs(60));
    });
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
        inflight: None,
        health,
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
    let mut broker_ok = true;
    // An interval trigger that came due while a snapshot was in flight: the next cut starts as
    // soon as that one is written, not at the tick after.
    let mut cut_due = false;
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
        if pipeline.trigger_events > 0
            && r.since_snapshot >= pipeline.trigger_events
            && r.inflight.is_none()
        {
            r.begin(opts.once).await?;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            done_snapshot = written(&mut r.inflight) => {
                r.finish(done_snapshot, opts.once).await?;
                if std::mem::take(&mut cut_due) && r.since_snapshot > 0 {
                    r.begin(opts.once).await?;
                }
            }
            _ = tick.tick() => {
                watermark.refresh(&r.state, r.source.partitions(), Instant::now());
                // Unhealthy while librdkafka reports client errors (a broker down or frozen);
                // healthy again at the next message or end of partition, or once they stop.
                let down = r.source.consumer.context().errored_within(BROKER_ERROR_WINDOW);
                if down == broker_ok {
                    broker_ok = !down;
                    r.health.update(|s| s.broker_connected = !down);
                }
                r.publish(watermark.current());
                if r.since_snapshot > 0 {
                    if r.inflight.is_none() {
                        r.begin(opts.once).await?;
                    } else {
                        cut_due = true;
                    }
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
                            if !broker_ok {
                                broker_ok = true;
                                r.source.consumer.context().clear();
                                r.health.update(|s| s.broker_connected = true);
                            }
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
                            if !broker_ok {
                                broker_ok = true;
                                r.source.consumer.context().clear();
                                r.health.update(|s| s.broker_connected = true);
                            }
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
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka consumer error; retrying");
                            broker_ok = false;
                            r.health.update(|s| s.broker_connected = false);
                        }
                    }
                    burst += 1;
                    let triggered = pipeline.trigger_events > 0
                        && r.since_snapshot >= pipeline.trigger_events
                        && r.inflight.is_none();
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
    // The snapshot in flight, then a last one for what was read since.
    r.settle_inflight().await?;
    if r.since_snapshot > 0 || r.state.snapshot_id == 0 {
        r.begin(true).await?;
        r.settle_inflight().await?;
    }
    r.drain_alerts().await;
    r.report.elapsed = started.elapsed();
    Ok(r.report)
}

impl Runner {
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

    /// Cuts a snapshot and starts computing and writing it in the background. A failure of
    /// the cut is an error with `fatal` (a `--once` run); otherwise it is logged and the next
    /// trigger tries again.
    async fn begin(&mut self, fatal: bool) -> Result<(), Error> {
        match self.cut().await {
            Ok(()) => Ok(()),
            Err(e) if fatal => Err(e),
            Err(e) => {
                tracing::error!(error = %e, "snapshot failed; offsets stay at the last durable snapshot, retrying at the next trigger");
                Ok(())
            }
        }
    }

    async fn cut(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        self.dead_letters.deliver(&self.pending).await?;
        self.pending.clear();
        let (acked, counts) = self.alerts.take();
        self.report.alerts_delivered += counts.values().map(|c| c.delivered).sum::<u64>();
        deliver::settle(&mut self.state, &acked, counts);
        self.state.prune(self.pipeline.dedup_horizon_micros());
        self.state.roll_up(&self.pipeline.calendar);
        let previous_id = self.state.snapshot_id;
        let id = previous_id + 1;
        self.state.snapshot_id = id;
        // The two halves of the cut read the state side by side (this pauses the reader):
        // its Arrow tables here, its serialised image on a second thread.
        let (state, engine) = (&self.state, &self.engine);
        let cut = std::thread::scope(|s| {
            let image = s.spawn(|| StateImage::of(state));
            let prepared = engine.prepare(state, id).map_err(Error::from);
            let image = image
                .join()
                .map_err(|_| crate::error::InternalError::new("serialising the state panicked"))?;
            Ok::<_, Error>((prepared?, image?))
        });
        let (prepared, image) = match cut {
            Ok(c) => c,
            Err(e) => {
                self.state.snapshot_id = previous_id;
                return Err(e);
            }
        };
        // The alert part goes on in a state of its own: the rules run on the computed tables.
        let mut alerting = State {
            snapshot_id: id,
            as_of: self.state.as_of,
            alerts: self.state.alerts.clone(),
            outbox: self.state.outbox.clone(),
            deliveries: self.state.deliveries.clone(),
            ..State::default()
        };
        let (pipeline, location) = (Arc::clone(&self.pipeline), self.location.clone());
        let task = tokio::spawn(async move {
            let mut tables = Vec::new();
            let breaches = prepared
                .run(|t| {
                    tables.push(EncodedTable::encode(&t)?);
                    Ok::<_, Error>(())
                })
                .await?;
            let events = crate::alert::apply(
                &mut alerting.alerts,
                breaches,
                &pipeline.name,
                id,
                alerting.as_of,
            );
            let outgoing = deliver::outgoing(&pipeline, &events);
            alerting.outbox.extend(outgoing.iter().cloned());
            for (name, build) in [
                ("alerts", crate::state::tables::alerts as StateTableFn),
                ("alert_deliveries", crate::state::tables::alert_deliveries),
            ] {
                tables.push(EncodedTable::encode(&state_table(&alerting, name, build)?)?);
            }
            let alerts_image = AlertsImage::of(&alerting)?;
            let mut delay = Duration::from_millis(250);
            let mut attempt = 1;
            let manifest = loop {
                match location
                    .write_image(&image, &alerts_image, &tables, &pipeline.name)
                    .await
                {
                    Ok(m) => break m,
                    Err(e) if attempt == SNAPSHOT_ATTEMPTS => return Err(Error::from(e)),
                    Err(e) => {
                        tracing::warn!(error = %e, attempt, "snapshot write failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                    }
                }
            };
            Ok(Written {
                manifest,
                alerts: alerting.alerts,
                outbox: alerting.outbox,
                events,
                outgoing,
            })
        });
        self.inflight = Some(InFlight {
            task,
            previous_id,
            messages: self.since_snapshot,
            started,
        });
        self.since_snapshot = 0;
        Ok(())
    }

    /// Publishes the counters `/metrics` reports (at every trigger tick, not per message).
    fn publish(&self, watermark: Option<i64>) {
        let lag = self.source.lag(&self.state);
        let (messages, state_keys) = (self.state.quality.clone(), self.state.size());
        let alerts_pending = self.alerts.pending();
        self.health.update(|s| {
            s.messages = messages;
            s.lag = lag;
            s.state_keys = state_keys;
            s.watermark = watermark;
            s.alerts_pending = alerts_pending;
        });
    }

    /// Waits for the snapshot in flight, if any, and takes it over; its failure is an error.
    async fn settle_inflight(&mut self) -> Result<(), Error> {
        if self.inflight.is_some() {
            let result = written(&mut self.inflight).await;
            self.finish(result, true).await?;
        }
        Ok(())
    }

    /// Takes over a finished background snapshot.
    async fn finish(&mut self, result: Result<Written, Error>, fatal: bool) -> Result<(), Error> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let w = match result {
            Ok(w) => w,
            Err(e) => {
                // Not durable: the next snapshot (same id, files overwritten) covers its messages.
                self.state.snapshot_id = inflight.previous_id;
                self.since_snapshot += inflight.messages;
                if fatal {
                    return Err(e);
                }
                tracing::error!(error = %e, "snapshot failed; offsets stay at the last durable snapshot, retrying at the next trigger");
                return Ok(());
            }
        };
        // The outbox has not changed since the cut (only a cut settles it).
        self.state.alerts = w.alerts;
        self.state.outbox = w.outbox;
        // Transitions go out only once the snapshot that records them is durable.
        deliver::to_log(&self.pipeline, &w.events);
        self.alerts.submit(w.outgoing);
        let manifest = w.manifest;
        self.source.commit(&manifest.offsets);
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
            messages = inflight.messages,
            state_keys = self.state.size(),
            ms = inflight.started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        let took = inflight.started.elapsed();
        self.health.update(|s| {
            s.last_snapshot = Some((Instant::now(), manifest.snapshot_id, took));
        });
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

/// A builder of one Arrow table from the state (`state::tables`).
type StateTableFn =
    fn(
        &State,
    ) -> Result<datafusion::arrow::array::RecordBatch, datafusion::arrow::error::ArrowError>;

/// A snapshot table built from the state in Rust (`alerts`, `alert_deliveries`), with the
/// snapshot-wide columns.
fn state_table(
    state: &State,
    name: &str,
    build: StateTableFn,
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
