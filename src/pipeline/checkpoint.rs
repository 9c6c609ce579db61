//! The checkpoint of a run: restore at start, and every snapshot's three steps.
//!
//! 1. **Cut** (on the consuming task, which pauses): dead letters delivered, acknowledged alert
//!    deliveries settled, state pruned and rolled up, its Arrow tables taken and its image
//!    serialised (side by side, on two threads).
//! 2. **Background job** (while reading goes on): the SQL, the alert rules on a copy of the
//!    alert part of the state, then Parquet, `_state.bin`, `_alerts.bin`, manifest, `_latest`.
//! 3. **Durable hand-over** (on the consuming task again): the alert lifecycles taken over,
//!    transitions logged and handed to the dispatcher, offsets committed (advisory), retention.
//!
//! One snapshot is in flight at a time. Offsets only move inside the state, so whatever the
//! snapshot holds is exactly what its offsets say was read.

use std::time::{Duration, Instant};

use super::{RunError, Runner};
use crate::alert::deliver::{self, DeliveryAcks};
use crate::config::Pipeline;
use crate::internal::InternalError;
use crate::snapshot::{AlertsImage, EncodedTable, Location, Manifest, SnapshotError, StateImage};
use crate::source::consumer::KafkaSource;
use crate::state::{State, STATE_FORMAT};

/// Attempts at writing one snapshot before a `--once` run gives up (a continuous run logs the
/// failure and tries again at the next trigger).
const SNAPSHOT_ATTEMPTS: u32 = 4;

/// A snapshot being computed and written in the background.
pub(super) struct InFlight {
    task: tokio::task::JoinHandle<Result<Written, RunError>>,
    /// The snapshot id before this one (restored if it fails).
    previous_id: u64,
    /// Messages its cut took in.
    messages: u64,
    started: Instant,
}

/// What a background snapshot produced.
pub(super) struct Written {
    manifest: Manifest,
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

/// Restores the state `_latest` names (with the alert deliveries acknowledged after it), or an
/// empty one.
pub async fn restore(location: &Location, pipeline: &Pipeline) -> Result<State, RunError> {
    let Some(latest) = location.latest().await? else {
        return Ok(State::default());
    };
    let manifest = location.manifest(latest.snapshot_id).await?;
    if manifest.pipeline != pipeline.name {
        return Err(RunError::OtherPipeline {
            output: location.url.to_string(),
            found: manifest.pipeline.clone(),
            expected: pipeline.name.clone(),
        });
    }
    let mut state = read_state(location, &manifest).await?;
    let acks = read_acks(location, manifest.snapshot_id).await?;
    state.settle_deliveries(&acks.acked, acks.counts);
    tracing::info!(snapshot_id = manifest.snapshot_id, as_of = ?manifest.as_of, "restored state");
    Ok(state)
}

/// The state snapshot `manifest` recorded, its alert part included.
pub async fn read_state(location: &Location, manifest: &Manifest) -> Result<State, RunError> {
    let images = location.read_images(manifest, STATE_FORMAT).await?;
    State::decode(&images.state, &images.alerts).map_err(|e| {
        let file = match e {
            crate::state::DecodeError::State(_) => &manifest.state,
            crate::state::DecodeError::Alerts(_) => &manifest.alerts,
        };
        RunError::from(SnapshotError::Format {
            path: location.file_path(manifest.snapshot_id, file),
            message: e.to_string(),
        })
    })
}

/// The deliveries a stopped run recorded after snapshot `id`.
async fn read_acks(location: &Location, id: u64) -> Result<DeliveryAcks, RunError> {
    match location.read_acks(id).await? {
        None => Ok(DeliveryAcks::default()),
        Some(bytes) => DeliveryAcks::decode(&bytes).map_err(|e| {
            RunError::from(SnapshotError::Format {
                path: location.file_path(id, "_alert_acks.json"),
                message: e.to_string(),
            })
        }),
    }
}

/// The image of `state` for a snapshot, from its encoding (`State::encode`).
pub fn state_image(state: &State, bytes: Vec<u8>) -> StateImage {
    StateImage {
        snapshot_id: state.snapshot_id,
        as_of: state.as_of,
        offsets: state.offsets.clone(),
        format: STATE_FORMAT,
        bytes: bytes.into(),
    }
}

fn encode_err(file: &str) -> impl FnOnce(bincode::Error) -> RunError + '_ {
    move |e| RunError::from(InternalError::new(format!("encoding {file}: {e}")))
}

impl Runner {
    /// Cuts a snapshot and starts computing and writing it in the background. A failure of
    /// the cut is an error with `fatal` (a `--once` run); otherwise it is logged and the next
    /// trigger tries again.
    pub(super) async fn begin(&mut self, fatal: bool) -> Result<(), RunError> {
        match self.cut().await {
            Ok(()) => Ok(()),
            Err(e) if fatal => Err(e),
            Err(e) => {
                tracing::error!(error = %e, "snapshot failed; offsets stay at the last durable snapshot, retrying at the next trigger");
                Ok(())
            }
        }
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
        let previous_id = self.state.snapshot_id;
        let id = previous_id + 1;
        self.state.snapshot_id = id;
        // The two halves of the cut read the state side by side (this pauses the reader):
        // its Arrow tables here, its serialised image on a second thread.
        let (state, engine) = (&self.state, &self.engine);
        let cut = std::thread::scope(|s| {
            let image = s.spawn(|| state.encode());
            let prepared = engine.prepare(state, id).map_err(RunError::from);
            let image = image
                .join()
                .map_err(|_| InternalError::new("serialising the state panicked"))?
                .map_err(encode_err("_state.bin"))?;
            Ok::<_, RunError>((prepared?, image))
        });
        let (prepared, bytes) = match cut {
            Ok(c) => c,
            Err(e) => {
                self.state.snapshot_id = previous_id;
                return Err(e);
            }
        };
        let image = state_image(&self.state, bytes);
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
            let breaches = prepared
                .run(|t| {
                    tables.push(EncodedTable::encode(&t.name, &t.schema, &t.batches)?);
                    Ok::<_, RunError>(())
                })
                .await?;
            let events = crate::alert::apply(
                &mut alerting.alerts,
                breaches,
                &pipeline.name,
                id,
                alerting.as_of,
            );
            alerting
                .outbox
                .extend(deliver::outgoing(&pipeline.metrics.alerts, &events));
            for (name, build) in [
                ("alerts", crate::state::tables::alerts as StateTableFn),
                ("alert_deliveries", crate::state::tables::alert_deliveries),
            ] {
                let t = state_table(&alerting, name, build)?;
                tables.push(EncodedTable::encode(&t.name, &t.schema, &t.batches)?);
            }
            let alerts_image = AlertsImage(
                alerting
                    .encode_alerts()
                    .map_err(encode_err("_alerts.bin"))?
                    .into(),
            );
            let manifest = write(&location, &image, &alerts_image, &tables, &pipeline.name).await?;
            Ok(Written {
                manifest,
                alerts: alerting.alerts,
                outbox: alerting.outbox,
                events,
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
        deliver::to_log(&self.pipeline.metrics.alerts, &w.events);
        self.alerts.submit(&self.state.outbox);
        let manifest = w.manifest;
        source.commit(&manifest.offsets);
        match self
            .location
            .retain(self.pipeline.snapshot.retention, manifest.snapshot_id)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "retention"),
            Err(e) => {
                tracing::warn!(error = %e, "retention failed; old snapshots stay until the next one")
            }
        }
        let took = inflight.started.elapsed();
        tracing::info!(
            snapshot_id = manifest.snapshot_id,
            as_of = ?manifest.as_of,
            messages = inflight.messages,
            state_keys = self.state.size(),
            ms = took.as_millis() as u64,
            "snapshot written"
        );
        self.health.update(|s| {
            s.last_snapshot = Some((Instant::now(), manifest.snapshot_id, took));
        });
        self.report.snapshots += 1;
        self.report.last = Some(manifest);
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
            let id = self.state.snapshot_id;
            match read_acks(&self.location, id).await {
                Ok(mut acks) => {
                    acks.merge(acked, counts);
                    let written = match acks.encode() {
                        Ok(bytes) => self
                            .location
                            .write_acks(id, bytes)
                            .await
                            .map_err(RunError::from),
                        Err(e) => Err(InternalError::new(format!(
                            "encoding _alert_acks.json: {e}"
                        ))
                        .into()),
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

/// Writes a snapshot, retrying the whole write with backoff (files are named by snapshot id,
/// so a retry overwrites what a failed attempt left).
async fn write(
    location: &Location,
    image: &StateImage,
    alerts: &AlertsImage,
    tables: &[EncodedTable],
    pipeline: &str,
) -> Result<Manifest, RunError> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match location.write_image(image, alerts, tables, pipeline).await {
            Ok(m) => return Ok(m),
            Err(e) if attempt == SNAPSHOT_ATTEMPTS => return Err(RunError::from(e)),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "snapshot write failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
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
) -> Result<crate::engine::Table, RunError> {
    let internal = |e: &dyn std::fmt::Display| InternalError::new(format!("{name} table: {e}"));
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
