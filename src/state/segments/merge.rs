//! Segments merged back into a state: a restore applies every part of a manifest, a
//! compaction the parts it rewrites.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::{Dirty, Kind, Manifest, PartData, PartKey, Segment, SegmentBuilder, SegmentRef};
use crate::state::State;

/// How long applying one file's parts took on each thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    /// Filling the rep-day grain.
    pub grain: Duration,
    /// Filling every other map.
    pub others: Duration,
}

/// Which parts of which segments a merge applies: those of `only` (every part with `None`)
/// whose chain in `manifest` holds the segment.
#[derive(Debug, Clone, Copy)]
pub struct Wants<'a> {
    manifest: &'a Manifest,
    only: Option<&'a BTreeSet<PartKey>>,
}

impl Wants<'_> {
    pub fn part(&self, key: PartKey, at: SegmentRef) -> bool {
        self.only.is_none_or(|o| o.contains(&key)) && self.manifest.holds(key, at)
    }
}

/// Segments merged into a state: a restore (every part) or a compaction (some parts). Apply
/// the parts [`Merge::wants`] of the files `manifest.files(..)` names, in that order.
pub struct Merge<'a> {
    wants: Wants<'a>,
    state: State,
}

impl<'a> Merge<'a> {
    /// A merge of the parts `only` (every part with `None`) of `manifest`.
    pub fn new(manifest: &'a Manifest, only: Option<&'a BTreeSet<PartKey>>) -> Merge<'a> {
        Merge {
            wants: Wants { manifest, only },
            state: State::default(),
        }
    }

    /// The parts this merge applies.
    pub fn wants(&self) -> Wants<'a> {
        self.wants
    }

    /// Upserts the wanted parts of one file (files oldest first). Every map gets room for
    /// the file's keys at once ([`State::reserve_for`]); the rep-day grain, the largest map,
    /// fills on a second thread while the others fill on this one.
    pub fn apply_file(&mut self, parts: Vec<PartData>) -> Applied {
        self.state.reserve_for(&parts);
        let (grain_parts, rest): (Vec<_>, Vec<_>) =
            parts.into_iter().partition(|p| p.kind() == Kind::Daily);
        let mut grain = std::mem::take(&mut self.state.daily);
        let state = &mut self.state;
        let applied = std::thread::scope(|s| {
            let filling = s.spawn(|| {
                let at = Instant::now();
                for p in grain_parts {
                    if let PartData::Daily(rows) = p {
                        grain.extend(rows);
                    }
                }
                at.elapsed()
            });
            let at = Instant::now();
            for p in rest {
                state.apply(p);
            }
            let others = at.elapsed();
            let grain = filling
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            Applied { grain, others }
        });
        self.state.daily = grain;
        applied
    }

    /// A whole segment's wanted parts.
    pub fn add(&mut self, segment: Segment) {
        for part in segment.parts {
            if self.wants.part(part.key, segment.at) {
                self.state.apply(part.data);
            }
        }
    }

    fn pruned(mut self) -> State {
        if let Some(floor) = self.wants.manifest.head.seen_floor {
            self.state.seen_activities.retain(|_, t| *t >= floor);
        }
        self.state
    }

    /// The restored state, with the manifest's head (the alert part left empty).
    pub fn state(self) -> State {
        let h = self.wants.manifest.head.clone();
        let mut s = self.pruned();
        s.snapshot_id = h.snapshot_id;
        s.as_of = h.as_of;
        s.offsets = h.offsets;
        s.partition_high = h.partition_high;
        s.quality = h.quality;
        s.seen_floor = h.seen_floor;
        s.rebuild_derived();
        s.dirty = Dirty {
            rep_names: s.rep_ids.names.len(),
            ..Dirty::default()
        };
        s
    }

    /// What the merged parts hold, as a state of those parts alone (what a cut reads back).
    pub fn parts(self) -> State {
        self.pruned()
    }

    /// Adds the merged parts to `base`, a base segment (parts left empty are not in it).
    pub fn add_to(self, base: &mut SegmentBuilder) -> Result<(), bincode::Error> {
        // The merge holds only the parts it was given: all of it, whole, is their base.
        base.add(&self.pruned().segment_parts(&Dirty::default(), true))
    }
}
