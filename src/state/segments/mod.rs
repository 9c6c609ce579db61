//! The state as segments: what a snapshot writes of the state is what changed since the last
//! one, not the whole of it.
//!
//! The state is split into **parts**, a kind of data and a period of it ([`PartKey`]): the
//! rep × day grain by calendar month, dedup ids by week, entities (deals, quotas, roster,
//! fx rates, surveys, the first deal and last activity per rep and deal) in hash buckets of
//! their ids, the rep names and the dead-letter log. The fold marks what it touches
//! ([`Dirty`]); each cut takes the touched keys' current values as one **delta segment**. A
//! part's content is the upsert of its **chain** of segments, oldest first; a [`Manifest`]
//! (one per snapshot, next to its checkpoint) names every part's chain and holds the small
//! counters written whole each time ([`Head`]). A chain longer than the compaction limit is
//! merged into a **base** of that part alone ([`Merge::add_to`], a few parts at a time into
//! one [`SegmentBuilder`]), so a restore reads a base plus a bounded number of deltas per
//! part. Dedup ids under the prune floor are dropped at restore and compaction, and a week
//! wholly under it leaves the manifest.
//!
//! Pure: no I/O. `pipeline::state_write` writes the files and `pipeline::restore` reads them;
//! `snapshot` names and stores them.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::Hash;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use super::hierarchy::Placement;
use super::{DealEntry, IdHash, Map, RepDay, State, Versioned};
use crate::event::{Day, FxRate, Micros, Quota, Rep, Survey};
use crate::source::DeadLetter;
pub use file::{
    Encoded, PartEntry, Segment, SegmentBuilder, SegmentError, SegmentIndex, INDEX_LENGTH_BYTES,
};
use file::{PartOut, PartRows, Rows};

mod file;
mod merge;
pub use merge::{Applied, Merge, Wants};

/// Bump when the encoding of segments, manifests or the alert part changes: a snapshot in
/// another format is refused at restore, naming the file. (8: the alert book holds firing
/// and this month's resolved lifecycles apart.)
pub const FORMAT: u32 = 8;

/// Hash buckets of the entity kinds; at most 256 (`residency::deals` keeps one in a byte).
const BUCKETS: u64 = 64;
const _: () = assert!(BUCKETS <= 256);
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// A kind of state data; with a period, a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// The rep × day grain; period: calendar month (`year × 12 + month − 1`).
    Daily,
    /// Activity ids within the dedup horizon; period: UTC week of the event (days since the
    /// epoch ÷ 7).
    Seen,
    /// The rest by hash bucket of the key's id.
    Deals,
    DealActivity,
    RepFirstDeal,
    Quotas,
    Roster,
    Fx,
    Surveys,
    /// The rep id interning, appended to (period 0).
    RepNames,
    /// The bounded dead-letter log, written whole (period 0).
    DeadLetters,
}

/// A part of the state: the unit of segments and compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartKey {
    pub kind: Kind,
    pub period: i32,
}

/// The data of one part in one segment: upserts of keys with their values (a base holds all
/// of the part's keys). Written as `file::PartRows`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum PartData {
    Daily(Vec<((u32, Day), RepDay)>),
    Seen(Vec<(IdHash, Micros)>),
    Deals(Vec<(SmolStr, DealEntry)>),
    DealActivity(Vec<(SmolStr, Micros)>),
    RepFirstDeal(Vec<(SmolStr, Micros)>),
    Quotas(Vec<((String, Day), Versioned<Quota>)>),
    Roster(Vec<(String, Versioned<Rep, Placement>)>),
    Fx(Vec<((String, Day), Versioned<FxRate>)>),
    Surveys(Vec<(SmolStr, Box<Survey>)>),
    /// Names from index `.0` on.
    RepNames(u32, Vec<String>),
    DeadLetters(VecDeque<DeadLetter>),
}

impl PartData {
    /// How many keys it upserts.
    pub fn rows(&self) -> usize {
        match self {
            PartData::Daily(r) => r.len(),
            PartData::Seen(r) => r.len(),
            PartData::Deals(r) => r.len(),
            PartData::DealActivity(r) | PartData::RepFirstDeal(r) => r.len(),
            PartData::Quotas(r) => r.len(),
            PartData::Roster(r) => r.len(),
            PartData::Fx(r) => r.len(),
            PartData::Surveys(r) => r.len(),
            PartData::RepNames(_, r) => r.len(),
            PartData::DeadLetters(r) => r.len(),
        }
    }

    /// The kind of state data it holds.
    pub fn kind(&self) -> Kind {
        match self {
            PartData::Daily(_) => Kind::Daily,
            PartData::Seen(_) => Kind::Seen,
            PartData::Deals(_) => Kind::Deals,
            PartData::DealActivity(_) => Kind::DealActivity,
            PartData::RepFirstDeal(_) => Kind::RepFirstDeal,
            PartData::Quotas(_) => Kind::Quotas,
            PartData::Roster(_) => Kind::Roster,
            PartData::Fx(_) => Kind::Fx,
            PartData::Surveys(_) => Kind::Surveys,
            PartData::RepNames(..) => Kind::RepNames,
            PartData::DeadLetters(_) => Kind::DeadLetters,
        }
    }
}

/// One part in a segment; `whole` when it holds all of the part (its chain starts again).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub key: PartKey,
    pub whole: bool,
    pub data: PartData,
}

/// Names a segment file (`snapshot::segment_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SegmentRef {
    /// The snapshot that wrote it.
    pub snapshot_id: u64,
    /// A compaction's output rather than the snapshot's delta.
    pub base: bool,
}

/// What is written whole with every manifest: small, and changed by nearly every message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub snapshot_id: u64,
    pub as_of: Option<Micros>,
    pub offsets: crate::source::Offsets,
    pub partition_high: crate::watermark::Highs,
    pub quality: BTreeMap<String, BTreeMap<String, u64>>,
    /// Dedup ids older than this were pruned (`State::prune`).
    pub seen_floor: Option<Micros>,
}

/// A snapshot's state: the head and every part's chain of segments, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub head: Head,
    pub chains: BTreeMap<PartKey, Vec<SegmentRef>>,
}

/// Keys touched since the last cut, per kind (bookkeeping of the state, not part of it).
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    pub(super) daily: Touched<(u32, Day)>,
    pub(super) seen: Touched<IdHash>,
    pub(super) deals: Touched<SmolStr>,
    pub(super) deal_activity: Touched<SmolStr>,
    pub(super) rep_first_deal: Touched<SmolStr>,
    pub(super) quotas: Touched<(String, Day)>,
    pub(super) roster: Touched<String>,
    pub(super) fx: Touched<(String, Day)>,
    pub(super) surveys: Touched<SmolStr>,
    pub(super) dead_letters: bool,
    /// Rep names already in a segment.
    pub(super) rep_names: usize,
}

type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// The keys of one map touched since the last cut, or all of them: once more than a quarter of
/// the map is touched (a replay, a first snapshot), listing keys costs more than writing the
/// kind whole, so the list is dropped and every part of the kind is written whole.
#[derive(Debug, Clone)]
pub(super) struct Touched<K> {
    keys: Set<K>,
    all: bool,
}

impl<K> Default for Touched<K> {
    fn default() -> Self {
        Touched {
            keys: Set::default(),
            all: false,
        }
    }
}

impl<K: Hash + Eq> Touched<K> {
    /// Records `key` of a map of `len` keys.
    pub(super) fn touch(&mut self, key: K, len: usize) {
        if self.all {
            return;
        }
        self.keys.insert(key);
        if self.keys.len() > len / 4 + 1024 {
            self.all = true;
            self.keys = Set::default();
        }
    }

    /// Whether `key` was touched (every key is, once the list was dropped).
    pub(super) fn has(&self, key: &K) -> bool {
        self.all || self.keys.contains(key)
    }

    /// The keys to write, or `None` for all of them.
    fn keys(&self, all: bool) -> Option<impl Iterator<Item = &K>> {
        (!all && !self.all).then(|| self.keys.iter())
    }
}

impl Dirty {
    /// The grain's parts (calendar months) that hold a touched rep-day; `None` when so many
    /// were touched that every part is written whole.
    pub(crate) fn grain_months(&self) -> Option<BTreeSet<i32>> {
        let keys = self.daily.keys(false)?;
        Some(keys.map(|(_, day)| month(*day)).collect())
    }
}

impl PartialEq for Dirty {
    fn eq(&self, _: &Dirty) -> bool {
        true
    }
}

/// The hash bucket of an entity id: its part of the entity kinds.
pub(super) fn bucket(id: &str) -> i32 {
    (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % BUCKETS) as i32
}

/// The grain's part of `day`: its calendar month, `year × 12 + month − 1`.
pub(crate) fn month(day: Day) -> i32 {
    use chrono::Datelike;
    let d = crate::calendar::date_of(day);
    d.year() * 12 + d.month0() as i32
}

/// The first and last day of the grain's part `period` (a calendar month, [`month`]).
pub(crate) fn month_days(period: i32) -> (Day, Day) {
    let first = |p: i32| {
        chrono::NaiveDate::from_ymd_opt(p.div_euclid(12), p.rem_euclid(12) as u32 + 1, 1)
            .map_or(Day::MAX, crate::calendar::day_number)
    };
    (first(period), first(period + 1).saturating_sub(1))
}

fn week(t: Micros) -> i32 {
    let day = t
        .div_euclid(MICROS_PER_DAY)
        .clamp(i32::MIN.into(), i32::MAX.into()) as i32;
    day.div_euclid(7)
}

/// The week the prune floor `floor` falls in: weeks before it hold no id the floor keeps.
fn floor_week(floor: Micros) -> i32 {
    week(floor)
}

fn key(kind: Kind, period: i32) -> PartKey {
    PartKey { kind, period }
}

/// Groups the `keys` of `map` present in it (all of it with `None`) by part, borrowed.
fn pick<'a, K, V>(
    map: &'a Map<K, V>,
    keys: Option<impl Iterator<Item = &'a K>>,
    part: impl Fn(&K, &V) -> i32,
) -> BTreeMap<i32, Vec<(&'a K, &'a V)>>
where
    K: Hash + Eq + 'a,
{
    let mut out: BTreeMap<i32, Vec<(&K, &V)>> = BTreeMap::new();
    let mut add = |(k, v): (&'a K, &'a V)| out.entry(part(k, v)).or_default().push((k, v));
    match keys {
        Some(keys) => keys.filter_map(|k| map.get_key_value(k)).for_each(&mut add),
        None => map.iter().for_each(&mut add),
    }
    out
}

/// Upserts `rows` into `map`.
fn upsert<K: Hash + Eq, V>(map: &mut Map<K, V>, rows: Vec<(K, V)>) {
    map.reserve(rows.len());
    map.extend(rows);
}

/// One kind's parts, for [`State::encode_segment`]. A part is written whole when every key of
/// the kind is written (`every`), unless it has data out of memory (`residency`): what memory
/// holds of such a part is upserted onto its chain.
fn parts_of<'a, K, V>(
    out: &mut Vec<PartOut<'a>>,
    kind: Kind,
    every: bool,
    residency: &super::residency::Residency,
    grouped: BTreeMap<i32, Rows<'a, K, V>>,
    wrap: fn(Rows<'a, K, V>) -> PartRows<'a>,
) {
    out.extend(grouped.into_iter().map(|(period, rows)| PartOut {
        key: key(kind, period),
        whole: every && !residency.partly_out(kind, period),
        data: wrap(rows),
    }));
}

impl State {
    /// The head of the state (written whole with every manifest).
    pub fn head(&self) -> Head {
        Head {
            snapshot_id: self.snapshot_id,
            as_of: self.as_of,
            offsets: self.offsets.clone(),
            partition_high: self.partition_high.clone(),
            quality: self.quality.clone(),
            seen_floor: self.seen_floor,
        }
    }

    /// Takes the keys the fold touched since the last cut (for [`State::segment`]).
    pub fn take_dirty(&mut self) -> Dirty {
        let d = std::mem::take(&mut self.dirty);
        self.dirty.rep_names = self.rep_ids.names.len();
        d
    }

    /// Segment `at`: the current values of the keys `d` names (with `all`, every part whole:
    /// the first snapshot, or the first after one whose segment was lost), encoded straight
    /// from the state.
    pub fn encode_segment(
        &self,
        d: &Dirty,
        all: bool,
        at: SegmentRef,
    ) -> Result<Encoded, bincode::Error> {
        file::encode(at, &self.segment_parts(d, all))
    }

    /// The parts of [`State::encode_segment`], borrowed from the state.
    fn segment_parts<'a>(&'a self, d: &'a Dirty, all: bool) -> Vec<PartOut<'a>> {
        let mut out = Vec::new();
        let r = &self.residency;
        macro_rules! kind {
            ($map:ident, $dirty:expr, $kind:expr, $part:expr, $wrap:expr) => {{
                let keys = $dirty.keys(all);
                let every = keys.is_none();
                let grouped = pick(&self.$map, keys, $part);
                parts_of(&mut out, $kind, every, r, grouped, $wrap);
            }};
        }
        {
            // The grain is held by month already: a month in memory is a part.
            let keys = d.daily.keys(all);
            let every = keys.is_none();
            let mut grouped: BTreeMap<i32, Vec<_>> = BTreeMap::new();
            match keys {
                Some(keys) => keys
                    .filter_map(|k| self.daily.get_key_value(k))
                    .for_each(|(k, v)| grouped.entry(month(k.1)).or_default().push((k, v))),
                None => grouped.extend(self.daily.months().map(|(p, m)| (p, m.iter().collect()))),
            }
            parts_of(&mut out, Kind::Daily, every, r, grouped, PartRows::Daily);
        }
        kind!(
            seen_activities,
            d.seen,
            Kind::Seen,
            |_, t: &Micros| week(*t),
            PartRows::Seen
        );
        kind!(
            deals,
            d.deals,
            Kind::Deals,
            |k: &SmolStr, _| bucket(k),
            PartRows::Deals
        );
        kind!(
            deal_last_activity,
            d.deal_activity,
            Kind::DealActivity,
            |k: &SmolStr, _| bucket(k),
            PartRows::DealActivity
        );
        kind!(
            rep_first_deal,
            d.rep_first_deal,
            Kind::RepFirstDeal,
            |k: &SmolStr, _| bucket(k),
            PartRows::RepFirstDeal
        );
        kind!(
            quotas,
            d.quotas,
            Kind::Quotas,
            |k: &(String, Day), _| bucket(&k.0),
            PartRows::Quotas
        );
        kind!(
            roster,
            d.roster,
            Kind::Roster,
            |k: &String, _| bucket(k),
            PartRows::Roster
        );
        kind!(
            fx,
            d.fx,
            Kind::Fx,
            |k: &(String, Day), _| bucket(&k.0),
            PartRows::Fx
        );
        kind!(
            surveys,
            d.surveys,
            Kind::Surveys,
            |k: &SmolStr, _| bucket(k),
            PartRows::Surveys
        );
        let from = if all {
            0
        } else {
            d.rep_names.min(self.rep_ids.names.len())
        };
        if from < self.rep_ids.names.len() {
            out.push(PartOut {
                key: key(Kind::RepNames, 0),
                whole: from == 0,
                data: PartRows::RepNames(from as u32, &self.rep_ids.names[from..]),
            });
        }
        if (all && !self.dead_letters.is_empty()) || d.dead_letters {
            out.push(PartOut {
                key: key(Kind::DeadLetters, 0),
                whole: true,
                data: PartRows::DeadLetters(&self.dead_letters),
            });
        }
        out
    }

    /// Makes room for the keys `parts` upsert, in every map at once (grown part by part, a map
    /// of millions of keys moves them, and faults in fresh pages, at every doubling).
    pub fn reserve_for(&mut self, parts: &[PartData]) {
        let mut rows: BTreeMap<Kind, usize> = BTreeMap::new();
        for p in parts {
            *rows.entry(p.kind()).or_default() += p.rows();
        }
        for (kind, n) in rows {
            match kind {
                // (each part's rows are one month's: `Grain::extend` makes room for them)
                Kind::Daily => {}
                Kind::Seen => self.seen_activities.reserve(n),
                Kind::Deals => self.deals.reserve(n),
                Kind::DealActivity => self.deal_last_activity.reserve(n),
                Kind::RepFirstDeal => self.rep_first_deal.reserve(n),
                Kind::Quotas => self.quotas.reserve(n),
                Kind::Roster => self.roster.reserve(n),
                Kind::Fx => self.fx.reserve(n),
                Kind::Surveys => self.surveys.reserve(n),
                Kind::RepNames | Kind::DeadLetters => {}
            }
        }
    }

    /// Upserts one part's data (a restore or compaction applies each chain oldest first).
    pub fn apply(&mut self, data: PartData) {
        match data {
            PartData::Daily(rows) => self.daily.extend(rows),
            PartData::Seen(rows) => upsert(&mut self.seen_activities, rows),
            PartData::Deals(rows) => upsert(&mut self.deals, rows),
            PartData::DealActivity(rows) => upsert(&mut self.deal_last_activity, rows),
            PartData::RepFirstDeal(rows) => upsert(&mut self.rep_first_deal, rows),
            PartData::Quotas(rows) => upsert(&mut self.quotas, rows),
            PartData::Roster(rows) => upsert(&mut self.roster, rows),
            PartData::Fx(rows) => upsert(&mut self.fx, rows),
            PartData::Surveys(rows) => upsert(&mut self.surveys, rows),
            PartData::RepNames(from, names) => self.rep_ids.put(from as usize, names),
            PartData::DeadLetters(log) => self.dead_letters = log,
        }
    }
}

impl Manifest {
    /// The manifest after segment `at` with `parts` (written whole or not), under `head`:
    /// a whole part starts its chain again, a delta extends it, and dedup weeks wholly under
    /// the prune floor leave.
    pub fn next(&self, head: Head, at: SegmentRef, parts: &[(PartKey, bool)]) -> Manifest {
        let mut chains = self.chains.clone();
        for (k, whole) in parts {
            let chain = chains.entry(*k).or_default();
            if *whole {
                chain.clear();
            }
            chain.push(at);
        }
        if let Some(floor) = head.seen_floor {
            let below = floor_week(floor);
            chains.retain(|k, _| k.kind != Kind::Seen || k.period >= below);
        }
        Manifest {
            format: FORMAT,
            head,
            chains,
        }
    }

    /// Whether part `k`'s chain holds segment `at`.
    pub fn holds(&self, k: PartKey, at: SegmentRef) -> bool {
        self.chains.get(&k).is_some_and(|c| c.contains(&at))
    }

    /// The parts whose chain is longer than `limit` segments.
    pub fn overlong(&self, limit: usize) -> BTreeSet<PartKey> {
        self.chains
            .iter()
            .filter(|(_, c)| c.len() > limit)
            .map(|(k, _)| *k)
            .collect()
    }

    /// The segment files the chains of `parts` (all with `None`) read, in the order a restore
    /// applies them (oldest first).
    pub fn files(&self, parts: Option<&BTreeSet<PartKey>>) -> BTreeSet<SegmentRef> {
        self.chains
            .iter()
            .filter(|(k, _)| parts.is_none_or(|p| p.contains(k)))
            .flat_map(|(_, c)| c.iter().copied())
            .collect()
    }

    /// Puts the compacted `parts` on `base` alone (parts it does not hold — dedup weeks that
    /// came out empty — leave).
    pub fn rebase(&mut self, compacted: &BTreeSet<PartKey>, base: &Encoded) {
        let written: BTreeSet<PartKey> = base.parts.iter().map(|(k, _)| *k).collect();
        for k in compacted {
            if written.contains(k) {
                self.chains.insert(*k, vec![base.at]);
            } else {
                self.chains.remove(k);
            }
        }
    }
}

#[cfg(test)]
mod tests;
