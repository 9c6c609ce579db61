//! The checkpoint of a run: restore at start, and every snapshot's three steps.
//!
//! 1. **Cut** (on the consuming task, which pauses): dead letters delivered, acknowledged alert
//!    deliveries settled, state pruned and rolled up, its Arrow tables taken and what changed
//!    in it since the last cut encoded as a segment (side by side, on two threads).
//! 2. **Background job** (while reading goes on): the SQL, the alert rules on a copy of the
//!    alert part of the state, then the state: the segment, the parts whose chains grew past
//!    `compact_after` merged into a base (`state::segments`), the manifest; then a Delta
//!    commit per changed table (`snapshots` last), the checkpoint and `_latest`
//!    (`snapshot::Location::write_snapshot`). Once durable, still in the background:
//!    retention of checkpoints and segments (and, every `maintenance_every` snapshots, vacuum
//!    and log cleanup).
//! 3. **Durable hand-over** (on the consuming task again): the alert lifecycles taken over,
//!    transitions logged and handed to the dispatcher, offsets committed (advisory).
//!
//! One snapshot is in flight at a time. Offsets only move inside the state, so whatever the
//! snapshot holds is exactly what its offsets say was read. Snapshot ids are never reused: a
//! snapshot that failed (or whose run crashed) may have committed to some tables with its id,
//! so the next one takes the id after it, and a restart starts above every `txn` in the logs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::operational;
use super::restore::read_acks;
use super::state_write::{cut_segment, retained_segments, state_image, write_state, StateWrite};
use super::{RunError, Runner};
use crate::alert::deliver;
use crate::config::Pipeline;
use crate::engine::plan::Publish;
use crate::health::SnapshotWrite;
use crate::internal::InternalError;
use crate::snapshot::{
    AlertsImage, CalendarRef, Checkpoint, Committed, EncodedTable, Layout, Location, LogSettings,
    Maintained, SnapshotMeta, SnapshotRow, StateImage,
};
use crate::source::consumer::KafkaSource;
use crate::state::segments::{Manifest, SegmentRef};
use crate::state::State;

/// Attempts at writing one snapshot before a `--once` run gives up (a continuous run logs the
/// failure and tries again at the next trigger).
const SNAPSHOT_ATTEMPTS: u32 = 4;

/// A snapshot being computed and written in the background.
pub(super) struct InFlight {
    task: tokio::task::JoinHandle<Result<Written, RunError>>,
    /// Messages its cut took in.
    messages: u64,
    started: Instant,
}

/// What a background snapshot produced.
pub(super) struct Written {
    checkpoint: Checkpoint,
    write: SnapshotWrite,
    /// The retained snapshots, this one included (the `snapshots` table it committed).
    history: Vec<SnapshotRow>,
    /// What table maintenance removed, if it ran after this snapshot.
    maintained: Option<Maintained>,
    /// The state this snapshot holds.
    manifest: Manifest,
    /// The segments each retained snapshot names, this one included.
    segments: BTreeMap<u64, BTreeSet<SegmentRef>>,
    alerts: crate::alert::AlertBook,
    outbox: Vec<deliver::Outgoing>,
    events: Vec<crate::alert::AlertEvent>,
}

/// Waits for the snapshot in flight; never resolves when there is none.
pub(super) async fn written(inflight: &mut Option<InFlight>) -> Result<Written, RunError> {
    match inflight {
        Some(f) => (&mut f.task)
            .await
            .map_err(|e| RunError::from(InternalError::new(format!("snapshot task: {e}"))))?,
        None => std::future::pending().await,
    }
}

/// Every table a snapshot of `pipeline` commits to, `snapshots` last.
pub fn table_names(pipeline: &Pipeline) -> Vec<String> {
    let mut names: Vec<String> = pipeline
        .metrics
        .tables
        .iter()
        .filter(|t| t.publish)
        .map(|t| t.name.clone())
        .collect();
    names.extend(operational::NAMES.map(String::from));
    names
}

pub(super) fn encode_err(file: &str) -> impl FnOnce(bincode::Error) -> RunError + '_ {
    move |e| RunError::from(InternalError::new(format!("encoding {file}: {e}")))
}

impl Runner {
    /// Cuts a snapshot and starts computing and writing it in the background. A failure of
    /// the cut is an error with `fatal` (a `--once` run); otherwise it is logged and the next
    /// trigger tries again.
    pub(super) async fn begin(
        &mut self,
        fatal: bool,
        source: &KafkaSource,
    ) -> Result<(), RunError> {
        // The closed months the cut lets go follow the watermark as it stands.
        self.refresh_watermark(source);
        match self.cut().await {
            Ok(()) => Ok(()),
            Err(e) if fatal => Err(e),
            Err(e) => {
                self.cut_lost();
                tracing::error!(error = %e, "snapshot failed; offsets stay at the last durable snapshot, retrying at the next trigger");
                Ok(())
            }
        }
    }

    /// A snapshot failed: what its cut took as changed is lost with it, so the next one
    /// evaluates every table and writes the state whole.
    fn cut_lost(&mut self) {
        self.full_next = true;
        self.segments_lost = true;
    }

    async fn cut(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        self.dead_letters.deliver(&self.pending).await?;
        self.pending.clear();
        let (acked, counts) = self.alerts.take();
        self.report.alerts_delivered += counts.values().map(|c| c.delivered).sum::<u64>();
        self.state.settle_deliveries(&acked, counts);
        self.state
            .prune(self.pipeline.source.dedup_horizon_micros());
        self.state.roll_up(&self.pipeline.metrics.calendar);
        let mut changes = self.state.take_changes(&self.pipeline.metrics.calendar);
        changes.all |= std::mem::take(&mut self.full_next);
        changes.redefined = std::mem::take(&mut self.redefined_next);
        let plan = self.engine.plan(&self.state, &changes);
        self.bring_back(&plan).await?;
        // Never reused: an id that failed may have commits in some tables.
        let id = self.state.snapshot_id + 1;
        self.state.snapshot_id = id;
        let dirty = self.state.take_dirty();
        let all = std::mem::take(&mut self.segments_lost);
        // The two halves of the cut read the state side by side (this pauses the reader):
        // its Arrow tables here, what changed in it on a second thread.
        let (state, engine) = (&self.state, &self.engine);
        let cut = std::thread::scope(|s| {
            let segment = s.spawn(|| cut_segment(state, &dirty, all));
            let prepared = engine.prepare(state, id, plan).map_err(RunError::from);
            let segment = segment
                .join()
                .map_err(|_| InternalError::new("encoding the state segment panicked"))?
                .map_err(encode_err("a state segment"))?;
            Ok::<_, RunError>((prepared?, segment))
        });
        let (prepared, segment) = cut?;
        self.let_go(&dirty, all);
        drop(dirty);
        let head = self.state.head();
        let previous = self.manifest.clone();
        let mut known = self.segments.clone();
        let compact_after = self.pipeline.snapshot.compact_after as usize;
        let written_at = chrono::Utc::now();
        let snapshot = &self.pipeline.snapshot;
        let mut history = self.history.clone();
        history.push(SnapshotRow {
            snapshot_id: id,
            as_of: self.state.as_of,
            written_at: written_at.timestamp_micros(),
            events: self.state.messages(),
        });
        let history =
            crate::snapshot::retained(&history, snapshot.retention, snapshot.retention_days);
        // Table maintenance when this snapshot's id passes a multiple of `maintenance_every`
        // since the last durable one: every N snapshots over the output's life, also for runs
        // of fewer than N snapshots each (a `--once` from cron).
        let every = u64::from(snapshot.maintenance_every.max(1));
        let maintain = id / every != self.durable / every;
        let cal = &self.pipeline.metrics;
        let meta = SnapshotMeta {
            pipeline: self.pipeline.name.clone(),
            calendar: CalendarRef {
                time_zone: cal.calendar.timezone.name().to_string(),
                fiscal_year_start_month: cal.calendar.fiscal_year_start_month,
                corporate_currency: cal.corporate_currency.clone(),
            },
            events: history.last().map_or(0, |r| r.events),
            written_at,
            log: LogSettings {
                checkpoint_interval: snapshot.log_checkpoint_interval,
            },
            fingerprints: self.fingerprints.clone(),
            lost_offsets: self.state.lost_offsets(),
        };
        // No snapshot durable yet: the alerts table is written whole (it may have no version).
        let first_snapshot = self.durable == 0;
        // The alert part goes on in a state of its own: the rules run on the computed tables.
        let mut alerting = State {
            snapshot_id: id,
            as_of: self.state.as_of,
            alerts: self.state.alerts.clone(),
            outbox: self.state.outbox.clone(),
            deliveries: self.state.deliveries.clone(),
            ..State::default()
        };
        let (pipeline, location) = (std::sync::Arc::clone(&self.pipeline), self.location.clone());
        let task = tokio::spawn(async move {
            let mut tables = Vec::new();
            let mut rules = prepared
                .run(|t| {
                    let layout = Layout {
                        name: t.name,
                        partition_by: t.partition_by,
                    };
                    tables.push(match t.publish {
                        Publish::Full => EncodedTable::encode(&layout, &t.schema, &t.batches)?,
                        Publish::Partitions(only) => {
                            EncodedTable::encode_only(&layout, &t.schema, &t.batches, Some(only))?
                        }
                        Publish::Unchanged => EncodedTable::unchanged(&layout),
                    });
                    Ok::<_, RunError>(())
                })
                .await?;
            // The rules read whole tables: what this snapshot did not compute comes from
            // the tables' latest versions, read as the rules run (their filters prune files).
            for i in 0..rules.merges().len() {
                let m = &rules.merges()[i];
                let except = match &m.publish {
                    Publish::Partitions(p) => Some(p),
                    _ => None,
                };
                let previous = with_retries("reading a table's log for the rules", || {
                    location.scan_delta(&m.table, None, except)
                })
                .await?;
                rules.provide(i, std::sync::Arc::new(previous))?;
            }
            let (breaches, evaluated) = rules.evaluate().await?;
            let events = crate::alert::apply_evaluated(
                &mut alerting.alerts,
                breaches,
                Some(&evaluated),
                &pipeline.name,
                id,
                alerting.as_of,
            );
            alerting
                .outbox
                .extend(deliver::outgoing(&pipeline.metrics.alerts, &events));
            tables.extend(operational::tables(
                &mut alerting,
                &history,
                &pipeline.metrics.calendar,
                first_snapshot,
            )?);
            let alerts_image = AlertsImage(
                alerting
                    .encode_alerts()
                    .map_err(encode_err("alerts.bin"))?
                    .into(),
            );
            let writing = Instant::now();
            let (manifest, state_write) = with_retries("writing the state", || {
                write_state(&location, &previous, head.clone(), &segment, compact_after)
            })
            .await?;
            let image = state_image(&manifest)?;
            let (checkpoint, commits) =
                write(&location, &image, &alerts_image, &tables, &meta).await?;
            known.insert(id, image.segments.iter().copied().collect());
            let segments = retained_segments(&location, known, &history).await;
            let maintained = retain(&location, &history, &checkpoint, &segments, maintain).await;
            Ok(Written {
                maintained,
                manifest,
                segments: segments.unwrap_or_default(),
                checkpoint,
                write: write_summary(state_write, &commits, writing.elapsed()),
                history,
                alerts: alerting.alerts,
                outbox: alerting.outbox,
                events,
            })
        });
        self.inflight = Some(InFlight {
            task,
            messages: self.since_snapshot,
            started,
        });
        self.since_snapshot = 0;
        Ok(())
    }

    /// Waits for the snapshot in flight, if any, and takes it over; its failure is an error.
    pub(super) async fn settle_inflight(&mut self, source: &KafkaSource) -> Result<(), RunError> {
        if self.inflight.is_some() {
            let result = written(&mut self.inflight).await;
            self.finish(result, true, source).await?;
        }
        Ok(())
    }

    /// Takes over a finished background snapshot.
    pub(super) async fn finish(
        &mut self,
        result: Result<Written, RunError>,
        fatal: bool,
        source: &KafkaSource,
    ) -> Result<(), RunError> {
        let Some(inflight) = self.inflight.take() else {
            return Ok(());
        };
        let w = match result {
            Ok(w) => w,
            Err(e) => {
                // Not durable: the next snapshot (the next id) covers its messages.
                self.since_snapshot += inflight.messages;
                self.cut_lost();
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
        deliver::to_log(&self.pipeline.metrics.alerts, &w.events);
        self.alerts.submit(&self.state.outbox);
        let checkpoint = w.checkpoint;
        source.commit(&checkpoint.offsets);
        self.durable = checkpoint.snapshot_id;
        self.history = w.history;
        self.manifest = w.manifest;
        self.segments = w.segments;
        if let Some(m) = w.maintained {
            self.health.update(|s| {
                s.vacuum_runs += 1;
                s.vacuum_files_removed += m.files_removed;
            });
        }
        let took = inflight.started.elapsed();
        let written = w.write;
        tracing::info!(
            snapshot_id = checkpoint.snapshot_id,
            as_of = ?checkpoint.as_of,
            messages = inflight.messages,
            state_keys = self.state.size(),
            state_bytes_written = written.state_bytes_written,
            state_parts_compacted = written.state_parts_compacted,
            tables_committed = written.tables_committed,
            files_added = written.files_added,
            bytes_written = written.bytes_written,
            ms = took.as_millis() as u64,
            "snapshot written"
        );
        self.health.update(|s| {
            s.last_snapshot = Some((Instant::now(), checkpoint.snapshot_id, took));
            s.last_write = Some(written);
            s.writes_total.add(&written);
        });
        self.report.snapshots += 1;
        self.report.last = Some(checkpoint);
        // The snapshot's tables and plans are freed: their pages go back to the system, off
        // the reading thread (it takes 10–50 ms at 20M events).
        tokio::task::spawn_blocking(|| {
            let trimming = Instant::now();
            crate::memory::trim();
            let ms = trimming.elapsed().as_millis() as u64;
            tracing::debug!(ms, "freed memory returned to the system");
        });
        Ok(())
    }

    /// Waits (up to the pipeline's drain timeout) for alert deliveries in flight, and records
    /// those acknowledged since the last snapshot next to it.
    pub(super) async fn drain_alerts(&mut self) {
        let left = self
            .alerts
            .drain(self.pipeline.alert_delivery.drain_timeout)
            .await;
        let (acked, counts) = self.alerts.take();
        self.report.alerts_delivered += counts.values().map(|c| c.delivered).sum::<u64>();
        self.report.alerts_pending = left;
        if !acked.is_empty() || !counts.is_empty() {
            // An earlier run may have recorded acknowledgements after the same snapshot: they
            // are kept. If they cannot be read, nothing is written over them (the next start
            // then sends this run's acknowledged events again: at least once).
            let id = self.durable;
            match read_acks(&self.location, id).await {
                Ok(mut acks) => {
                    acks.merge(acked, counts);
                    let written = match acks.encode() {
                        Ok(bytes) => self
                            .location
                            .write_acks(id, bytes)
                            .await
                            .map_err(RunError::from),
                        Err(e) => {
                            Err(InternalError::new(format!("encoding alert_acks.json: {e}")).into())
                        }
                    };
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "could not record alert acknowledgements; the next start sends those events again");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the alert acknowledgements recorded earlier; not overwriting them (the next start sends this run's acknowledged events again)");
                }
            }
        }
        if left > 0 {
            tracing::warn!(
                pending = left,
                "alert deliveries still pending at stop; the next start retries them"
            );
        }
    }
}

/// Retention once a snapshot is durable, in its background task (the reader reads on): the
/// checkpoints and state files of snapshots no longer retained go at once, and the segments
/// no retained snapshot names (`segments`; none when unknown); with `maintain`, the tables'
/// files and log entries no retained version needs go too (vacuum, log cleanup). A failure
/// is logged: what it did not delete goes next time.
async fn retain(
    location: &Location,
    history: &[SnapshotRow],
    latest: &Checkpoint,
    segments: &Option<BTreeMap<u64, BTreeSet<SegmentRef>>>,
    maintain: bool,
) -> Option<Maintained> {
    let keep: Vec<u64> = history.iter().map(|r| r.snapshot_id).collect();
    // Unknown: every segment up to snapshot 0 (none) may go.
    let (upto, referenced) = match segments {
        Some(s) => (latest.snapshot_id, s.values().flatten().copied().collect()),
        None => (0, BTreeSet::new()),
    };
    match location
        .forget(&keep, latest.snapshot_id, upto, &referenced)
        .await
    {
        Ok((0, 0)) => {}
        Ok((checkpoints, segments)) => {
            tracing::debug!(
                checkpoints,
                segments,
                "retention: checkpoints and segments forgotten"
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "retention failed; old checkpoints stay until the next snapshot");
            return None;
        }
    }
    if !maintain {
        return None;
    }
    let started = Instant::now();
    match location.maintain(&keep, latest).await {
        Ok(m) => {
            tracing::info!(
                oldest_retained = keep.first().copied().unwrap_or(latest.snapshot_id),
                files_removed = m.files_removed,
                log_entries_removed = m.log_entries_removed,
                ms = started.elapsed().as_millis() as u64,
                "table maintenance"
            );
            Some(m)
        }
        Err(e) => {
            tracing::warn!(error = %e, "table maintenance failed; retried at the next one");
            None
        }
    }
}

/// Writes a snapshot, retrying the whole write with backoff: a retry commits only to the
/// tables whose logs do not hold the snapshot's `txn` yet, and overwrites the state files and
/// the checkpoint (named by snapshot id) with the same bytes.
async fn write(
    location: &Location,
    image: &StateImage,
    alerts: &AlertsImage,
    tables: &[EncodedTable],
    meta: &SnapshotMeta,
) -> Result<(Checkpoint, Vec<(String, Committed)>), RunError> {
    with_retries("snapshot write", || {
        location.write_snapshot(image, alerts, tables, meta)
    })
    .await
}

/// Runs a step against the output (a restore, a snapshot's write or reads) up to
/// `SNAPSHOT_ATTEMPTS` times with backoff: the object-store calls inside it are retried
/// already, so this covers a step whose calls kept failing for longer. The step must be safe
/// to repeat; a user's error (another pipeline's output, a changed calendar) is not retried.
pub(super) async fn with_retries<T, E, F, Fut>(what: &str, mut step: F) -> Result<T, RunError>
where
    RunError: From<E>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match step().await.map_err(RunError::from) {
            Ok(done) => return Ok(done),
            Err(e) if attempt == SNAPSHOT_ATTEMPTS || e.is_user_error() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// What one snapshot's commits did, for the log and `/metrics`.
fn write_summary(
    state: StateWrite,
    commits: &[(String, Committed)],
    took: Duration,
) -> SnapshotWrite {
    let mut w = SnapshotWrite {
        commit_seconds: took.as_secs_f64(),
        state_bytes_written: state.delta_bytes + state.base_bytes,
        state_parts_compacted: state.parts_compacted,
        ..SnapshotWrite::default()
    };
    for (_, c) in commits {
        w.tables_committed += u64::from(c.committed);
        w.files_added += c.files_added;
        w.files_removed += c.files_removed;
        w.bytes_written += c.bytes_written;
    }
    w
}
