//! A snapshot's state on the output: the cut's segment of what changed, written in the
//! background with a base of every part whose chain grew past `compact_after`, then the
//! manifest (`state::segments` says what they hold); and the segments retention must keep.
//! Crash points `after_segment` and `after_compaction` sit between the writes.

use std::collections::{BTreeMap, BTreeSet};

use super::checkpoint::{encode_err, with_retries};
use super::restore::merge_segments;
use super::RunError;
use crate::snapshot::{segment_of, Location, SnapshotRow, StateImage};
use crate::state::segments::{
    self, Encoded, Head, Manifest, Merge, PartKey, SegmentBuilder, SegmentRef,
};
use crate::state::State;

/// What writing a snapshot's state did.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateWrite {
    /// Bytes of its delta segment.
    pub delta_bytes: u64,
    /// Parts compacted, and the bytes of their base.
    pub parts_compacted: u64,
    pub base_bytes: u64,
}

/// The segment of what `state` changed since the last cut (`dirty`; everything with `all`),
/// as snapshot `state.snapshot_id` writes it.
pub fn cut_segment(
    state: &State,
    dirty: &segments::Dirty,
    all: bool,
) -> Result<Encoded, bincode::Error> {
    state.encode_segment(dirty, all, delta_at(state.snapshot_id))
}

/// Parts a compaction merges at once. A part is a month of rep-days, a week of dedup ids or a
/// bucket of 1/64 of the deals (and so on), so a batch holds a few of those decoded, where
/// merging every overlong part at once held them all: at 10,000 reps × two years the 64 deal
/// buckets, every deal of the history, came due together.
const COMPACTION_BATCH: usize = 8;

fn delta_at(id: u64) -> SegmentRef {
    SegmentRef {
        snapshot_id: id,
        base: false,
    }
}

/// Writes snapshot `id`'s state onto `previous`: its delta segment, then a base of the parts
/// whose chains grew longer than `compact_after` (merged from the segments they name,
/// `COMPACTION_BATCH` parts at a time). Returns the snapshot's manifest. Safe to repeat: the
/// same files get the same bytes.
pub async fn write_state(
    location: &Location,
    previous: &Manifest,
    head: Head,
    cut: &Encoded,
    compact_after: usize,
) -> Result<(Manifest, StateWrite), RunError> {
    let id = head.snapshot_id;
    location.put_segment(cut.at, cut.bytes.clone()).await?;
    crate::snapshot::crash_point("after_segment", id);
    let mut manifest = previous.next(head, cut.at, &cut.parts);
    let mut w = StateWrite {
        delta_bytes: cut.bytes.len() as u64,
        ..StateWrite::default()
    };
    let long = manifest.overlong(compact_after);
    if !long.is_empty() {
        let at = SegmentRef {
            snapshot_id: id,
            base: true,
        };
        // A batch of parts at a time: only one batch's rows are decoded at once.
        let mut base = SegmentBuilder::new(at);
        let keys: Vec<PartKey> = long.iter().copied().collect();
        for batch in keys.chunks(COMPACTION_BATCH) {
            let batch: BTreeSet<PartKey> = batch.iter().copied().collect();
            let mut merge = Merge::new(&manifest, Some(&batch));
            merge_segments(location, &mut merge, manifest.files(Some(&batch))).await?;
            merge
                .add_to(&mut base)
                .map_err(encode_err("a state segment"))?;
        }
        let base = base.finish().map_err(encode_err("a state segment"))?;
        w.parts_compacted = long.len() as u64;
        w.base_bytes = base.bytes.len() as u64;
        location.put_segment(at, base.bytes.clone()).await?;
        crate::snapshot::crash_point("after_compaction", id);
        manifest.rebase(&long, &base);
    }
    Ok((manifest, w))
}

/// The image of a state for its snapshot's checkpoint: the manifest and what it names.
pub fn state_image(manifest: &Manifest) -> Result<StateImage, RunError> {
    Ok(StateImage {
        snapshot_id: manifest.head.snapshot_id,
        as_of: manifest.head.as_of,
        offsets: manifest.head.offsets.clone(),
        format: segments::FORMAT,
        manifest: manifest
            .encode()
            .map_err(encode_err("manifest.bin"))?
            .into(),
        segments: manifest.files(None).into_iter().collect(),
    })
}

/// The segments each retained snapshot (`history`) names: those `known` holds, the others
/// read from their checkpoints (after a restore). `None` if one could not be read: then no
/// segment may be deleted.
pub(super) async fn retained_segments(
    location: &Location,
    mut known: BTreeMap<u64, BTreeSet<SegmentRef>>,
    history: &[SnapshotRow],
) -> Option<BTreeMap<u64, BTreeSet<SegmentRef>>> {
    known.retain(|id, _| history.iter().any(|r| r.snapshot_id == *id));
    for r in history {
        if known.contains_key(&r.snapshot_id) {
            continue;
        }
        let read = with_retries("reading a retained checkpoint", || {
            location.find_checkpoint(r.snapshot_id)
        })
        .await;
        match read {
            Ok(Some(c)) => {
                let refs = c.state.segments.iter().filter_map(|p| segment_of(p));
                known.insert(r.snapshot_id, refs.collect());
            }
            // Forgotten already: it protects nothing.
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, snapshot_id = r.snapshot_id, "cannot read a retained checkpoint; no state segment is deleted until it can be");
                return None;
            }
        }
    }
    Some(known)
}
