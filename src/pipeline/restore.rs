//! Where a run starts: the state `_latest` names (or an empty one), refused when the output
//! belongs to another pipeline or was computed in another calendar, with whether its first
//! snapshot must be evaluated in full and which tables' SQL or settings changed.

use std::collections::BTreeSet;

use super::checkpoint::table_names;
use super::operational::SNAPSHOTS;
use super::RunError;
use crate::alert::deliver::DeliveryAcks;
use crate::config::Pipeline;
use crate::snapshot::{retention, CalendarRef, Checkpoint, Location, SnapshotError, SnapshotRow};
use crate::state::segments::{
    self, Applied, Manifest, Merge, PartData, SegmentError, SegmentIndex, SegmentRef, Wants,
    INDEX_LENGTH_BYTES,
};
use crate::state::State;

/// What a run starts from.
pub struct Restored {
    /// The state `_latest` names (empty without one), its `snapshot_id` raised to the highest
    /// id any table's log holds, so that the next snapshot takes an unused id.
    pub state: State,
    /// The checkpoint it came from.
    pub checkpoint: Option<Checkpoint>,
    /// Its manifest: the next snapshot's segment extends its chains.
    pub manifest: Manifest,
    /// The retained snapshots, as its `snapshots` table has them.
    pub history: Vec<SnapshotRow>,
    /// Whether the first snapshot must be evaluated in full.
    pub full: bool,
    /// The tables and rules (`rule:<name>`) whose fingerprint differs from the checkpoint's
    /// (`Changes::redefined`).
    pub redefined: BTreeSet<String>,
}

/// Restores the state `_latest` names (with the alert deliveries acknowledged after it), or an
/// empty one.
pub async fn restore(location: &Location, pipeline: &Pipeline) -> Result<Restored, RunError> {
    let metrics = &pipeline.metrics;
    let calendar = CalendarRef {
        time_zone: metrics.calendar.timezone.name().to_string(),
        fiscal_year_start_month: metrics.calendar.fiscal_year_start_month,
        corporate_currency: metrics.corporate_currency.clone(),
    };
    let checkpoint = match location.latest().await? {
        Some(latest) => Some(location.checkpoint(latest.snapshot_id).await?),
        None => None,
    };
    let (mut state, manifest, history) = match &checkpoint {
        None => (State::default(), Manifest::default(), Vec::new()),
        Some(c) => {
            if c.pipeline != pipeline.name {
                return Err(RunError::OtherPipeline {
                    output: location.url.to_string(),
                    found: c.pipeline.clone(),
                    expected: pipeline.name.clone(),
                });
            }
            if c.calendar != calendar {
                return Err(RunError::CalendarChanged {
                    output: location.url.to_string(),
                    calendars: Box::new((c.calendar.clone(), calendar)),
                });
            }
            let started = std::time::Instant::now();
            let (mut state, manifest) = read_state_and_manifest(location, c).await?;
            let acks = read_acks(location, c.snapshot_id).await?;
            state.settle_deliveries(&acks.acked, acks.counts);
            let history = read_history(location, c).await?;
            tracing::info!(
                snapshot_id = c.snapshot_id,
                as_of = ?c.as_of,
                segments = c.state.segments.len(),
                ms = started.elapsed().as_millis() as u64,
                "restored state"
            );
            (state, manifest, history)
        }
    };
    // A snapshot that crashed after some commits used its id: go above it.
    let used = location
        .highest_txn(&table_names(pipeline), &pipeline.name)
        .await?;
    // Evaluate the first snapshot in full with no earlier tables, or after a crashed snapshot
    // left commits; recompute in full the tables whose SQL or settings changed since the
    // checkpoint.
    let full = checkpoint.as_ref().is_none_or(|c| used > c.snapshot_id);
    let fingerprints = crate::engine::fingerprints(metrics);
    let redefined = checkpoint.as_ref().map_or_else(BTreeSet::new, |c| {
        fingerprints
            .iter()
            .filter(|(t, f)| c.fingerprints.get(*t) != Some(*f))
            .map(|(t, _)| t.clone())
            .collect()
    });
    if !redefined.is_empty() && !full {
        tracing::info!(changed = ?redefined, "SQL or settings changed since the checkpoint: these tables are recomputed in full and these rules evaluated");
    }
    if used > state.snapshot_id {
        tracing::info!(
            restored = state.snapshot_id,
            used,
            "a later snapshot was partly committed; the next one takes the id after it"
        );
        state.snapshot_id = used;
    }
    Ok(Restored {
        state,
        checkpoint,
        manifest,
        history,
        full,
        redefined,
    })
}

/// The `snapshots` table of checkpoint `c`, as rows.
async fn read_history(location: &Location, c: &Checkpoint) -> Result<Vec<SnapshotRow>, RunError> {
    let (_, batches) = location.read_table(c, SNAPSHOTS).await?;
    retention::rows(&batches).map_err(|message| {
        RunError::from(SnapshotError::Table {
            table: SNAPSHOTS.into(),
            message,
        })
    })
}

/// The state checkpoint `c` recorded, its alert part included.
pub async fn read_state(location: &Location, c: &Checkpoint) -> Result<State, RunError> {
    Ok(read_state_and_manifest(location, c).await?.0)
}

/// Segment files read ahead of the one being merged.
const READ_AHEAD: usize = 8;

/// The state checkpoint `c` recorded, and its manifest: the manifest, then every segment it
/// names (read ahead, merged oldest first), then the alert part.
async fn read_state_and_manifest(
    location: &Location,
    c: &Checkpoint,
) -> Result<(State, Manifest), RunError> {
    let images = location.read_images(c, segments::FORMAT).await?;
    let manifest = Manifest::decode(&images.manifest)
        .map_err(|e| format_error(location, &c.state.manifest, e))?;
    let mut merge = Merge::new(&manifest, None);
    merge_segments(location, &mut merge, manifest.files(None)).await?;
    let at = std::time::Instant::now();
    let mut state = merge.state();
    tracing::debug!(
        ms = at.elapsed().as_millis() as u64,
        "state rebuilt from its parts"
    );
    state
        .decode_alerts(&images.alerts)
        .map_err(|e| format_error(location, &c.state.alerts, e))?;
    Ok((state, manifest))
}

/// Applies to `merge` the parts it wants of each file of `files` (oldest first), reading
/// only those parts (the file's index, then their byte ranges), `READ_AHEAD` files ahead.
pub(super) async fn merge_segments(
    location: &Location,
    merge: &mut Merge<'_>,
    files: BTreeSet<SegmentRef>,
) -> Result<(), RunError> {
    use futures::StreamExt;
    let wants = merge.wants();
    let mut reads = futures::stream::iter(files)
        .map(|r| read_parts(location, r, wants))
        .buffered(READ_AHEAD);
    let started = std::time::Instant::now();
    let (mut applying, mut applied) = (std::time::Duration::ZERO, Applied::default());
    while let Some(parts) = reads.next().await {
        let at = std::time::Instant::now();
        let a = merge.apply_file(parts?);
        applying += at.elapsed();
        applied.grain += a.grain;
        applied.others += a.others;
    }
    tracing::debug!(
        read_and_decode_ms = (started.elapsed() - applying).as_millis() as u64,
        apply_ms = applying.as_millis() as u64,
        grain_ms = applied.grain.as_millis() as u64,
        other_maps_ms = applied.others.as_millis() as u64,
        "state segments merged"
    );
    Ok(())
}

/// The parts of segment `r` that `wants` names, decoded.
async fn read_parts(
    location: &Location,
    r: SegmentRef,
    wants: Wants<'_>,
) -> Result<Vec<PartData>, RunError> {
    let rel = crate::snapshot::segment_path(r);
    let bad = |e: SegmentError| format_error(location, &rel, e);
    let head = location.get_range(&rel, 0..INDEX_LENGTH_BYTES).await?;
    let length = SegmentIndex::length(&head).map_err(bad)?;
    let at = INDEX_LENGTH_BYTES..INDEX_LENGTH_BYTES + length;
    let index = SegmentIndex::decode(&location.get_range(&rel, at).await?).map_err(bad)?;
    if index.at != r {
        return Err(format_error(
            location,
            &rel,
            "its index names another segment",
        ));
    }
    let ranges: Vec<_> = index
        .parts
        .iter()
        .filter(|e| wants.part(e.key, r))
        .map(|e| SegmentIndex::range(length, e))
        .collect();
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let blobs = location.get_ranges(&rel, &ranges).await?;
    decode_parts(&blobs).map_err(bad)
}

/// Decodes a file's parts on two threads, alternate parts each (a base file holds millions
/// of keys; parts never share a key, so their order within a file does not matter).
fn decode_parts(blobs: &[impl AsRef<[u8]> + Sync]) -> Result<Vec<PartData>, SegmentError> {
    let decode = |half: usize| {
        blobs
            .iter()
            .skip(half)
            .step_by(2)
            .map(|b| PartData::decode(b.as_ref()))
            .collect::<Result<Vec<_>, _>>()
    };
    std::thread::scope(|s| {
        let odd = s.spawn(|| decode(1));
        let mut parts = decode(0)?;
        parts.extend(
            odd.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
        );
        Ok(parts)
    })
}

fn format_error(location: &Location, rel: &str, e: impl std::fmt::Display) -> RunError {
    RunError::from(SnapshotError::Format {
        path: location.file_path(rel),
        message: e.to_string(),
    })
}

/// The deliveries a stopped run recorded after snapshot `id`.
pub(super) async fn read_acks(location: &Location, id: u64) -> Result<DeliveryAcks, RunError> {
    match location.read_acks(id).await? {
        None => Ok(DeliveryAcks::default()),
        Some(bytes) => DeliveryAcks::decode(&bytes).map_err(|e| {
            RunError::from(SnapshotError::Format {
                path: location.file_path(&crate::snapshot::acks_path(id)),
                message: e.to_string(),
            })
        }),
    }
}
