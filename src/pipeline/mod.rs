//! The run loop: Kafka → ingest (decode, fold into state) → (every trigger) a snapshot.
//!
//! `run` reads as the loop it is: each turn it stops, cuts a snapshot the event trigger asks
//! for, or waits for the first of shutdown, the snapshot in flight, the trigger tick and the
//! next messages. The message path is [`Runner::on_messages`] (through `ingest`), the trigger
//! is [`trigger`], the checkpoint (restore, cut, background job, durable hand-over) is
//! [`checkpoint`] (with the tables it writes beside the SQL's, [`operational`]). Offsets only
//! move inside the state, so whatever a snapshot holds is exactly what its offsets say was
//! read: a restart resumes from `_latest` and reads on from there.

mod checkpoint;
mod operational;
mod reading;
mod residency;
mod restore;
mod state_write;
mod trigger;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;

pub use checkpoint::table_names;
pub use operational::SNAPSHOTS;
pub use residency::bring_back;
pub use restore::{read_state, restore, Restored};
pub use state_write::{cut_segment, state_image, write_state, StateWrite};

use crate::alert::deliver::Dispatcher;
use crate::config::Pipeline;
use crate::engine::{Engine, EngineError};
use crate::health::Health;
use crate::ingest::Ingest;
use crate::internal::InternalError;
use crate::kafka::{Cluster, KafkaIoError, Tp};
use crate::snapshot::{Checkpoint, Location, SnapshotError, SnapshotRow};
use crate::source::consumer::{group_of, KafkaSource};
use crate::source::dead_letters::DeadLetterSink;
use crate::source::DeadLetter;
use crate::state::State;
use crate::watermark::{Alignment, Watermark};
use checkpoint::{written, InFlight};
use reading::count_lost;
use trigger::Trigger;

/// How a run is started.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub brokers: String,
    pub output: String,
    /// Read until the broker reports the end of every partition, snapshot, stop.
    pub once: bool,
    /// Stop (with a snapshot) after this many messages.
    pub max_events: Option<u64>,
    /// A `--once` run that reads no message and sees no partition newly at its end for this
    /// long stops with [`RunError::Stalled`] ([`DEFAULT_STALL_TIMEOUT`] unless set).
    pub stall_timeout: Duration,
}

impl RunOptions {
    /// A `--once` run from `brokers` into `output`, with the default stall timeout.
    pub fn once(brokers: &str, output: &str) -> RunOptions {
        RunOptions {
            brokers: brokers.to_string(),
            output: output.to_string(),
            once: true,
            max_events: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// Why a run stopped with an error: the failing layer's error with its context, or one of the
/// run's own conditions.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kafka(#[from] KafkaIoError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Internal(#[from] InternalError),
    /// `--output` holds another pipeline's snapshots (a user error).
    #[error("output `{output}` holds snapshots of pipeline `{found}`, not `{expected}`: use another --output")]
    OtherPipeline {
        output: String,
        found: String,
        expected: String,
    },
    /// The pipeline's calendar is not the one the output was computed in (a user error).
    #[error(
        "output `{output}` was computed with time zone {}, fiscal year from month {}, corporate currency {}; \
         the pipeline now says {}, {}, {}: every figure would change, so quotaflow does not mix them. \
         To rebuild, run the pipeline into a new --output (it replays the topics from the start), \
         or put the calendar back",
        .calendars.0.time_zone, .calendars.0.fiscal_year_start_month, .calendars.0.corporate_currency,
        .calendars.1.time_zone, .calendars.1.fiscal_year_start_month, .calendars.1.corporate_currency
    )]
    CalendarChanged {
        output: String,
        /// (the output's, the pipeline's)
        calendars: Box<(crate::snapshot::CalendarRef, crate::snapshot::CalendarRef)>,
    },
    /// A `--once` run saw no progress for its stall timeout.
    #[error(
        "--once: no message and no partition newly at its end for {} s; partitions not at their end: {} \
         (the last snapshot holds everything read so far)", .timeout.as_secs(), .partitions.join(", ")
    )]
    Stalled {
        timeout: Duration,
        partitions: Vec<String>,
    },
}

impl RunError {
    /// Whether the user caused it (a wrong `--output`), rather than the brokers, the store or a bug.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            RunError::OtherPipeline { .. } | RunError::CalendarChanged { .. }
        )
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub restored_from: Option<u64>,
    pub messages: u64,
    pub bytes: u64,
    pub snapshots: u64,
    pub elapsed: Duration,
    pub last: Option<Checkpoint>,
    /// Alert events acknowledged by their Kafka or webhook target during this run.
    pub alerts_delivered: u64,
    /// Alert events not acknowledged when the run stopped (retried at the next start).
    pub alerts_pending: usize,
    /// Closed months of the rep × day grain that left memory during this run (a month that
    /// came back and left again counts again).
    pub grain_months_evicted: u64,
    /// Closed deals that left memory during this run (counted again the same way).
    pub deals_evicted: u64,
    /// Times a partition was paused for reading too far ahead of the others.
    pub partitions_paused: u64,
    /// Times reading waited for the snapshot in flight (`max_events_while_writing` read).
    pub waits_for_write: u64,
}

/// A `--once` run that reads no message and sees no partition newly at its end for this long
/// stops with an error naming the partitions, instead of waiting forever (a broker that cannot
/// serve an offset, a partition without a leader). `quotaflow run --stall-timeout` changes it.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// A client error this recent (and no message since) makes the broker count as unreachable.
const BROKER_ERROR_WINDOW: Duration = Duration::from_secs(15);
/// How often the watermark, broker health, `/metrics`, the wall clock and the `--once` stall
/// guard are refreshed, whatever the trigger interval.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Messages handled in a row once one arrived, before the trigger and shutdown are checked.
const BURST: usize = 1024;
/// Messages between two reads of the wall clock (the clock-skew bound of the decoder).
const CLOCK_EVERY: u64 = 1024;

/// Runs a pipeline until `shutdown` resolves (or, with `once`, to the end of every partition).
pub async fn run(
    pipeline: Arc<Pipeline>,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunReport, RunError> {
    let (mut r, mut source, _server) = Runner::start(pipeline, &opts).await?;
    let mut trigger = Trigger::new(&r.pipeline.snapshot, opts.once);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        if r.done(&opts, &source) {
            break;
        }
        if r.reassign {
            // Lost offsets were counted: read on from the log starts.
            match source.reassign(&r.state.offsets) {
                Ok(()) => r.reassign = false,
                Err(e) => {
                    tracing::warn!(error = %e, "moving past the lost offsets failed; retrying")
                }
            }
        }
        if trigger.counted(r.since_snapshot) && r.inflight.is_none() {
            r.begin(opts.once, &source).await?;
        }
        // Enough read for the next cut while one is written: the loop waits for the write.
        let waiting = trigger.waits_for_write(r.since_snapshot, r.inflight.is_some());
        if waiting && !r.waiting_for_write {
            r.report.waits_for_write += 1;
            tracing::debug!(
                messages = r.since_snapshot,
                "reading waits for the snapshot being written"
            );
        }
        r.waiting_for_write = waiting;
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            result = written(&mut r.inflight) => {
                r.finish(result, opts.once, &source).await?;
                if trigger.take_due() && r.since_snapshot > 0 {
                    r.begin(opts.once, &source).await?;
                }
            }
            _ = housekeeping.tick() => r.on_tick(&opts, &source)?,
            _ = trigger.tick() => {
                if r.since_snapshot > 0 {
                    if r.inflight.is_none() {
                        r.begin(opts.once, &source).await?;
                    } else {
                        trigger.set_due();
                    }
                }
            }
            m = source.recv(r.alignment.held()), if !waiting => {
                r.on_messages(m, &source, &opts, &trigger)?
            }
            // The consumer's own queue (client errors, events) is served all the same.
            m = source.consumer.recv() => r.on_messages(m, &source, &opts, &trigger)?,
        }
    }
    // The snapshot in flight, then a last one for what was read since.
    r.settle_inflight(&source).await?;
    if r.since_snapshot > 0 || r.durable == 0 {
        r.begin(true, &source).await?;
        r.settle_inflight(&source).await?;
    }
    r.drain_alerts().await;
    r.report.elapsed = r.started.elapsed();
    Ok(r.report)
}

/// Everything a run holds but the consumer (which the loop borrows while a message is handled).
struct Runner {
    pipeline: Arc<Pipeline>,
    location: Location,
    engine: Engine,
    ingest: Ingest,
    dead_letters: DeadLetterSink,
    alerts: Dispatcher,
    state: State,
    /// The last durable snapshot's id (0 before the first): acknowledgements go next to it.
    durable: u64,
    /// The retained snapshots, the last durable one included (rows of `snapshots`).
    history: Vec<SnapshotRow>,
    watermark: Watermark,
    /// The partitions paused for reading too far ahead of the others.
    alignment: Alignment,
    /// Dead letters not yet delivered (delivered before the snapshot that moves past them).
    pending: Vec<DeadLetter>,
    since_snapshot: u64,
    /// The snapshot being computed and written in the background, if any.
    inflight: Option<InFlight>,
    /// Reading waits for it (`Trigger::waits_for_write`).
    waiting_for_write: bool,
    /// Whether the next snapshot is evaluated in full (the first after a restore that needs
    /// it, or after a failed snapshot, whose changes are lost with it).
    full_next: bool,
    /// Whether the next snapshot writes the state whole (after one that failed: the segment
    /// of what it took as changed is lost with it).
    segments_lost: bool,
    /// A fetch was out of range and its lost offsets are not counted yet (`count_lost`
    /// failed): tried again every housekeeping tick, since the client waits for a new position.
    out_of_range: bool,
    /// Lost offsets were counted: the consumer moves past them before the next read.
    reassign: bool,
    /// The last durable snapshot's state (the next segment extends its chains).
    manifest: crate::state::segments::Manifest,
    /// The segments each retained snapshot names (filled as snapshots are written; a restore
    /// leaves the older ones to be read from their checkpoints).
    segments: std::collections::BTreeMap<u64, BTreeSet<crate::state::segments::SegmentRef>>,
    /// The tables the next snapshot recomputes in full because their SQL or settings changed
    /// since the restored checkpoint (`Changes::redefined`).
    redefined_next: BTreeSet<String>,
    /// The pipeline's fingerprints, for the checkpoint.
    fingerprints: std::collections::BTreeMap<String, String>,
    /// Partitions at their end as the broker reports it in fetch responses (librdkafka's
    /// end-of-partition event), where `--once` stops; not ListOffsets results: some
    /// Kafka-protocol brokers (tansu 0.6) answer ListOffsets with stale offsets.
    ended: BTreeSet<Tp>,
    /// The `--once` stall guard: when (messages, partitions at their end) last changed.
    progress: (Instant, (u64, u64)),
    /// The wall clock for the clock-skew bound, read every CLOCK_EVERY messages.
    now: i64,
    broker_ok: bool,
    /// What `/healthz` and `/metrics` report.
    health: Health,
    started: Instant,
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

impl Runner {
    /// Restores the state, connects the consumer, the dead-letter sink and the alert
    /// dispatcher, serves `/healthz`, and says it is ready.
    async fn start(
        pipeline: Arc<Pipeline>,
        opts: &RunOptions,
    ) -> Result<(Runner, KafkaSource, AbortOnDrop), RunError> {
        let started = Instant::now();
        let location = Location::parse(&opts.output)?;
        let Restored {
            mut state,
            checkpoint,
            manifest,
            history,
            full,
            redefined,
        } = checkpoint::with_retries("restoring the last checkpoint", || {
            restore(&location, &pipeline)
        })
        .await?;
        let engine = Engine::new(Arc::clone(&pipeline.metrics));
        if let Some(why) = engine.full_because() {
            tracing::info!(reason = why, "every snapshot is evaluated in full");
        }
        let durable = checkpoint.as_ref().map_or(0, |c| c.snapshot_id);
        let restored_from = (durable > 0).then_some(durable);
        let cluster = Cluster::new(&opts.brokers, &pipeline.source.kafka);
        let mut source = KafkaSource::connect(
            &cluster,
            &group_of(&pipeline.name),
            &pipeline.source.topics,
            &state.offsets,
        )?;
        let dead_letters = DeadLetterSink::connect(&cluster, &pipeline.name, &pipeline.source)?;
        dead_letters.ensure_topic(&cluster).await;
        let alerts =
            Dispatcher::start(&cluster, &pipeline.alert_delivery, &pipeline.metrics.alerts).await?;
        // Alert events a previous run recorded but did not see acknowledged go out again.
        alerts.submit(&state.outbox);
        if count_lost(&mut state, &source)? {
            source.reassign(&state.offsets)?;
        }
        let health = Health::default();
        let server = match pipeline.http_bind {
            Some(addr) => health.serve(addr).await,
            None => None,
        };
        let max_snapshot_age =
            (pipeline.snapshot.trigger_interval * 3).max(Duration::from_secs(60));
        health.update(|s| {
            s.ready = true;
            s.broker_connected = true;
            s.max_snapshot_age = max_snapshot_age;
        });
        let r = Runner {
            engine,
            full_next: full,
            segments_lost: false,
            out_of_range: false,
            reassign: false,
            manifest,
            segments: Default::default(),
            redefined_next: redefined,
            fingerprints: crate::engine::fingerprints(&pipeline.metrics),
            ingest: Ingest::new(&pipeline.source, pipeline.metrics.calendar)?,
            watermark: Watermark::new(
                pipeline.source.idle_timeout,
                pipeline.source.allowed_lateness_micros(),
                opts.once,
            ),
            alignment: Alignment::new(pipeline.source.max_read_ahead_micros()),
            pipeline,
            location,
            dead_letters,
            alerts,
            state,
            durable,
            history,
            pending: Vec::new(),
            since_snapshot: 0,
            inflight: None,
            waiting_for_write: false,
            ended: BTreeSet::new(),
            progress: (Instant::now(), (0, 0)),
            now: chrono::Utc::now().timestamp_micros(),
            broker_ok: true,
            health,
            started,
            report: RunReport {
                restored_from,
                messages: 0,
                bytes: 0,
                snapshots: 0,
                elapsed: Duration::ZERO,
                last: None,
                alerts_delivered: 0,
                alerts_pending: 0,
                grain_months_evicted: 0,
                deals_evicted: 0,
                partitions_paused: 0,
                waits_for_write: 0,
            },
        };
        Ok((r, source, AbortOnDrop(server)))
    }

    /// Whether the run has read what it was asked to: every partition at its end (`--once`),
    /// or `--max-events` messages.
    fn done(&self, opts: &RunOptions, source: &KafkaSource) -> bool {
        (opts.once && self.ended.len() >= source.assigned.len())
            || opts.max_events.is_some_and(|m| self.report.messages >= m)
    }

    /// Every HOUSEKEEPING: partitions at their end marked, watermark, broker health and
    /// `/metrics` refreshed, the wall clock read, the `--once` stall guard checked, and lost
    /// offsets counted if that failed before.
    fn on_tick(&mut self, opts: &RunOptions, source: &KafkaSource) -> Result<(), RunError> {
        if self.out_of_range {
            self.recount_lost(source);
        }
        self.mark_ends(source, opts)?;
        self.refresh_watermark(source);
        // Unhealthy while librdkafka reports client errors (a broker down or frozen); healthy
        // again at the next message or end of partition, or once they stop.
        let errored = source
            .consumer
            .context()
            .errored_within(BROKER_ERROR_WINDOW);
        self.broker_health(!errored, source);
        self.publish(source);
        self.now = chrono::Utc::now().timestamp_micros();
        if opts.once {
            tracing::info!(
                messages = self.report.messages,
                partitions_done = self.ended.len(),
                partitions = source.assigned.len(),
                "reading"
            );
            // Progress is a message or a partition newly at its end: a broker that answers a
            // fetch with nothing, over and over, is not progress.
            let mark = (self.report.messages, self.ended.len() as u64);
            if mark != self.progress.1 {
                self.progress = (Instant::now(), mark);
            }
            if self.progress.0.elapsed() > opts.stall_timeout {
                let partitions = source
                    .assigned
                    .keys()
                    .filter(|tp| !self.ended.contains(*tp))
                    .map(|(t, p)| format!("{t}/{p}"))
                    .collect();
                return Err(RunError::Stalled {
                    timeout: opts.stall_timeout,
                    partitions,
                });
            }
        }
        Ok(())
    }

    /// Records whether the broker answers; `/healthz` follows. A message or an end of partition
    /// says it does (and clears the client's error), a client error that it does not.
    fn broker_health(&mut self, ok: bool, source: &KafkaSource) {
        if ok && !self.broker_ok {
            source.consumer.context().clear();
        }
        if ok != self.broker_ok {
            self.broker_ok = ok;
            self.health.update(|s| s.broker_connected = ok);
        }
    }

    /// Publishes the counters `/metrics` reports (at every trigger tick, not per message).
    fn publish(&self, source: &KafkaSource) {
        let lag = source.lag(&self.state.offsets);
        let (messages, state_keys) = (self.state.quality.clone(), self.state.size());
        let alerts_pending = self.alerts.pending();
        let watermark = self.watermark.current();
        let paused = (self.alignment.held().len(), self.report.partitions_paused);
        let waits_for_write = self.report.waits_for_write;
        self.health.update(|s| {
            s.paused = paused;
            s.waits_for_write = waits_for_write;
            s.messages = messages;
            s.lag = lag;
            s.state_keys = state_keys;
            s.watermark = watermark;
            s.alerts_pending = alerts_pending;
        });
    }
}
