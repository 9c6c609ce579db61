//! The state's files under the output, opaque here (their owners, `state` and `alert`,
//! encode them): where they live, reading them (whole, or the byte ranges of a segment's
//! parts), and deleting those of forgotten snapshots and the segments no retained snapshot
//! names.

use std::collections::{BTreeMap, BTreeSet};

use object_store::{ObjectStore, ObjectStoreExt};

use super::{checkpoint_path, format_err, store_err, Checkpoint, Location, SnapshotError};
use crate::state::segments::SegmentRef;

/// The directory of a snapshot's state files, relative to the output.
pub fn state_dir(id: u64) -> String {
    format!("_state/{id:020}")
}

const SEGMENTS: &str = "_state/segments";

/// A segment file, relative to the output.
pub fn segment_path(r: SegmentRef) -> String {
    let ext = if r.base { "base" } else { "delta" };
    format!("{SEGMENTS}/{:020}.{ext}", r.snapshot_id)
}

const ACKS_FILE: &str = "alert_acks.json";

/// The segment a [`segment_path`] (or its file name) names.
pub fn segment_of(path: &str) -> Option<SegmentRef> {
    let name = path.rsplit('/').next()?;
    let (id, ext) = name.split_once('.')?;
    let base = match ext {
        "base" => true,
        "delta" => false,
        _ => return None,
    };
    Some(SegmentRef {
        snapshot_id: id.parse().ok()?,
        base,
    })
}

/// Where the acknowledgements recorded after snapshot `id` are, relative to the output.
pub fn acks_path(id: u64) -> String {
    format!("{}/{ACKS_FILE}", state_dir(id))
}

/// A state cut for a snapshot: what its checkpoint records and the state's manifest
/// (encoded by its owner, `state`, in format `format`, naming `segments`, which are written
/// before; the alert part is written after the rules ran, as [`AlertsImage`]).
#[derive(Debug, Clone)]
pub struct StateImage {
    pub snapshot_id: u64,
    pub as_of: Option<i64>,
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The encoding's version: a restore refuses another one.
    pub format: u32,
    pub manifest: bytes::Bytes,
    pub segments: Vec<SegmentRef>,
}

/// The alert part of a state, serialised by its owner (`alert`): lifecycles, outbox, counts.
#[derive(Debug, Clone)]
pub struct AlertsImage(pub bytes::Bytes);

/// The serialised images a snapshot holds, as read back.
#[derive(Debug, Clone)]
pub struct Images {
    pub manifest: Vec<u8>,
    pub alerts: Vec<u8>,
}

impl Location {
    /// The manifest and alert images a checkpoint names; `format` is the state format the
    /// caller reads (another one is refused, naming the file).
    pub async fn read_images(&self, c: &Checkpoint, format: u32) -> Result<Images, SnapshotError> {
        if c.state.format != format {
            return Err(format_err(
                &self.path(&checkpoint_path(c.snapshot_id)),
                format!(
                    "state format {} is not {format}: written by another quotaflow version; \
                     replay the topics into a new output",
                    c.state.format
                ),
            ));
        }
        let manifest = self.get_file(&c.state.manifest).await?;
        let alerts = self.get_file(&c.state.alerts).await?;
        Ok(Images { manifest, alerts })
    }

    /// A file under the output that must be there (a state file), or an error naming it.
    pub async fn get_file(&self, rel: &str) -> Result<Vec<u8>, SnapshotError> {
        self.get(rel)
            .await?
            .ok_or_else(|| format_err(&self.path(rel), "missing"))
    }

    /// A byte range of a file under the output (a state segment's index), or an error naming
    /// it.
    pub async fn get_range(
        &self,
        rel: &str,
        range: std::ops::Range<u64>,
    ) -> Result<bytes::Bytes, SnapshotError> {
        let mut got = self.get_ranges(rel, std::slice::from_ref(&range)).await?;
        Ok(got.pop().unwrap_or_default())
    }

    /// Byte ranges of a file under the output (parts of a state segment), or an error naming
    /// it.
    pub async fn get_ranges(
        &self,
        rel: &str,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>, SnapshotError> {
        let path = self.path(rel);
        self.store
            .get_ranges(&path, ranges)
            .await
            .map_err(store_err(&path))
    }

    /// Writes segment `r` of the state (atomic; the same bytes again on a retry).
    pub async fn put_segment(
        &self,
        r: SegmentRef,
        bytes: bytes::Bytes,
    ) -> Result<(), SnapshotError> {
        self.put(&segment_path(r), bytes).await
    }

    /// The path of a file under the output, for the messages of those who decode it.
    pub fn file_path(&self, rel: &str) -> String {
        self.path(rel).to_string()
    }

    /// Records alert deliveries acknowledged after snapshot `id` was written (by a run that
    /// stopped), so that the next start does not send them again.
    /// (`acks` encoded by `alert`: `alert_acks.json`.)
    pub async fn write_acks(&self, id: u64, acks: Vec<u8>) -> Result<(), SnapshotError> {
        self.put(&acks_path(id), acks).await
    }

    /// What `write_acks` recorded for snapshot `id`, if anything.
    pub async fn read_acks(&self, id: u64) -> Result<Option<Vec<u8>>, SnapshotError> {
        self.get(&acks_path(id)).await
    }

    /// Deletes the checkpoints and state files of snapshots not in `keep` (never `latest`'s),
    /// then the segments of snapshots up to `upto` that no retained snapshot names
    /// (`referenced`): those of compacted chains and of snapshots that never became durable. The checkpoint goes
    /// first, so a half-deleted snapshot is never taken for a whole one. Returns how many
    /// checkpoints and segments were deleted.
    pub async fn forget(
        &self,
        keep: &[u64],
        latest: u64,
        upto: u64,
        referenced: &BTreeSet<SegmentRef>,
    ) -> Result<(usize, usize), SnapshotError> {
        let doomed: Vec<u64> = self
            .checkpoint_ids()
            .await?
            .into_iter()
            .filter(|id| *id != latest && !keep.contains(id))
            .collect();
        for id in &doomed {
            self.delete(&self.path(&checkpoint_path(*id))).await?;
            for o in self.list(&state_dir(*id)).await? {
                self.delete(&o.location).await?;
            }
        }
        let mut segments = 0;
        for o in self.list(SEGMENTS).await? {
            let Some(r) = o.location.filename().and_then(segment_of) else {
                continue;
            };
            if r.snapshot_id <= upto && !referenced.contains(&r) {
                self.delete(&o.location).await?;
                segments += 1;
            }
        }
        Ok((doomed.len(), segments))
    }

    async fn delete(&self, p: &object_store::path::Path) -> Result<(), SnapshotError> {
        match self.store.delete(p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(p)(e)),
        }
    }
}
