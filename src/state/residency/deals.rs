//! Which deals are out of memory.
//!
//! Deals grow with the history like the grain, and a closed deal of a closed year changes no
//! more. At a cut that lets the grain's months go (`State::evict`), a deal leaves memory too
//! when it is closed (won or lost), its close and created days lie before the fiscal year the
//! closed months end in (every cut recomputes the whole fiscal year of a changed day, so a deal
//! of that year would come back at each one) and before the months that stay, and no key of it
//! is in the cut being written (`Dirty`). Its `deal_last_activity` entry leaves with it. What
//! stays is an index entry ([`DealOut`]): its days, the versions received (to tell a duplicate)
//! and the amount and currency of its latest version (what `unconverted` counts over the whole
//! state).
//!
//! A message about a deal out of memory never needs the deal at the fold: a version is told new
//! or duplicate from the index and queued, a late copy is queued, and an activity naming it
//! updates a fresh `deal_last_activity` entry. The deal is then *faulted*: the next cut brings
//! it back (`State::needed`) and applies the queue in the order read, as the fold would have.
//! A cut also brings back the deals its scope keeps (`Scope::keeps_deal`: their close day in
//! it, or their created day in a recomputed cohort quarter; all of them for a full
//! evaluation). Pure, like the rest of the state: `pipeline::residency` reads
//! them back.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rust_decimal::Decimal;
use smol_str::SmolStr;

use super::super::changes::{deal_days, Scope};
use super::super::provenance::{fold_entity, Arrival, Origin};
use super::super::segments::{bucket, Dirty};
use super::super::{DealEntry, Folded, Map, State};
use super::sorted::SortedMap;
use crate::calendar::Calendar;
use crate::event::{Day, Deal, Stage};
use crate::state::id_hash as key;

/// A deal's key in the index: its id's hash (no string per deal out of memory).
type Key = crate::state::IdHash;

/// The deals out of memory.
#[derive(Debug, Clone, Default)]
pub struct DealsOut {
    out: SortedMap<Key, DealOut>,
    /// Deals out per hash bucket of their id (`segments`): a bucket holding one is never
    /// written whole from memory.
    per_bucket: BTreeMap<i32, usize>,
    /// The currencies of `DealOut::currency`.
    currencies: Vec<String>,
    /// The versions received of the deals whose versions are not one run (`Versions`).
    scattered: Map<Key, Vec<i64>>,
    /// Messages about deals out of memory, in the order read.
    queued: Vec<Queued>,
}

/// What stays in memory of a deal out of it: 40 bytes, 56 with its key (an entry of the
/// index, which has no spare slots: `sorted`).
#[derive(Debug, Clone)]
struct DealOut {
    amount: Decimal,
    /// Its `Versions`, the fields side by side (a struct of them would be padded).
    lo: i64,
    n: u32,
    close: Day,
    created: Day,
    /// Index into `DealsOut::currencies`.
    currency: u16,
    /// Its hash bucket (`segments::bucket`, fewer than 256).
    bucket: u8,
    /// A message about it was read since it left: the next cut brings it back.
    faulted: bool,
}

impl DealOut {
    fn versions(&self) -> Versions {
        Versions {
            lo: self.lo,
            n: self.n,
        }
    }

    fn set_versions(&mut self, v: Versions) {
        (self.lo, self.n) = (v.lo, v.n);
    }
}

/// Every version received of a deal out of memory. Almost always one run, `lo..lo + n`
/// (versions count up); any other set (`n == 0`) is kept sorted in `DealsOut::scattered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Versions {
    lo: i64,
    n: u32,
}

impl Versions {
    /// The run of `sorted`, if it is one.
    fn run(sorted: &[i64]) -> Option<Versions> {
        let lo = *sorted.first()?;
        let n = u32::try_from(sorted.len()).ok()?;
        let is_run = sorted.iter().zip(lo..).all(|(v, w)| *v == w);
        is_run.then_some(Versions { lo, n })
    }

    fn scattered(self) -> bool {
        self.n == 0
    }

    /// Adds `v` to the run; `false` when it neither is in it nor extends it.
    fn extend(&mut self, v: i64) -> bool {
        if self.n == u32::MAX {
            return false;
        }
        if v == self.lo.saturating_sub(1) {
            self.lo = v;
        } else if v != self.lo.saturating_add(i64::from(self.n)) {
            return false;
        }
        self.n += 1;
        true
    }

    fn holds(self, v: i64) -> bool {
        v.checked_sub(self.lo)
            .is_some_and(|d| (0..i64::from(self.n)).contains(&d))
    }

    fn all(self) -> impl Iterator<Item = i64> {
        (0..i64::from(self.n)).map(move |i| self.lo + i)
    }
}

/// A message about a deal out of memory, applied when it comes back.
#[derive(Debug, Clone)]
enum Queued {
    Version(Box<Deal>, Origin),
    Late {
        deal_id: SmolStr,
        version: i64,
        origin: Origin,
    },
}

impl DealsOut {
    /// Deals out of memory.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Whether a deal of hash bucket `bucket` is out of memory.
    pub(in crate::state) fn in_bucket(&self, bucket: i32) -> bool {
        self.per_bucket.get(&bucket).is_some_and(|n| *n > 0)
    }

    /// The close and created days of deal `id`, if it is out of memory.
    pub(in crate::state) fn days(&self, id: &str) -> Option<(Day, Day)> {
        self.find(id).map(|o| (o.close, o.created))
    }

    /// The index entry of deal `id` (no hashing while nothing is out: the fold of every deal
    /// and of every activity naming one asks).
    fn find(&self, id: &str) -> Option<&DealOut> {
        if self.out.is_empty() {
            return None;
        }
        self.out.get(&key(id))
    }

    fn find_mut(&mut self, id: &str) -> Option<&mut DealOut> {
        if self.out.is_empty() {
            return None;
        }
        self.out.get_mut(&key(id))
    }

    /// Folds version `d` of a deal out of memory (queued, told new or duplicate from the
    /// versions received); `None` when the deal is not out.
    pub(in crate::state) fn fold(&mut self, d: &Deal, origin: Origin) -> Option<Folded> {
        if self.out.is_empty() {
            return None;
        }
        let k = key(&d.deal_id);
        let o = self.out.get_mut(&k)?;
        o.faulted = true;
        let (v, mut run) = (d.version, o.versions());
        let folded = if !run.scattered() && run.holds(v) {
            Folded::Duplicate
        } else if !run.scattered() && run.extend(v) {
            o.set_versions(run);
            Folded::Ok
        } else {
            // Not one run (any more): every version, sorted, on the side.
            o.set_versions(Versions { lo: 0, n: 0 });
            let list = self
                .scattered
                .entry(k)
                .or_insert_with(|| run.all().collect());
            match list.binary_search(&v) {
                Ok(_) => Folded::Duplicate,
                Err(at) => {
                    list.insert(at, v);
                    Folded::Ok
                }
            }
        };
        self.queued
            .push(Queued::Version(Box::new(d.clone()), origin));
        Some(folded)
    }

    /// Queues a late copy of version `version` of deal `id`, if it is out of memory.
    pub(in crate::state) fn late(&mut self, id: &str, version: i64, origin: Origin) {
        if let Some(o) = self.find_mut(id) {
            o.faulted = true;
            self.queued.push(Queued::Late {
                deal_id: SmolStr::new(id),
                version,
                origin,
            });
        }
    }

    /// An activity named deal `id`: its close day if it is out of memory (it comes back).
    pub(in crate::state) fn named(&mut self, id: &str) -> Option<Day> {
        let o = self.find_mut(id)?;
        o.faulted = true;
        Some(o.close)
    }

    /// The close and created days of every deal out of memory.
    pub fn all_days(&self) -> impl Iterator<Item = Day> + '_ {
        self.out.values().flat_map(|o| [o.close, o.created])
    }

    /// How many deals out of memory `fails` (amount, currency, close day) counts.
    pub fn count(&self, fails: impl Fn(Decimal, &str, Day) -> bool) -> usize {
        let currency = |i: u16| {
            self.currencies
                .get(usize::from(i))
                .map_or("", String::as_str)
        };
        self.out
            .values()
            .filter(|o| fails(o.amount, currency(o.currency), o.close))
            .count()
    }

    fn currency(&mut self, c: &str) -> u16 {
        match self.currencies.iter().position(|k| k == c) {
            Some(i) => i as u16,
            None => {
                self.currencies.push(c.to_string());
                (self.currencies.len() - 1) as u16
            }
        }
    }
}

/// The deals a cut brings back: their keys and the hash buckets they are read from.
#[derive(Debug, Clone, Default)]
pub struct DealsNeeded {
    keys: HashSet<Key, foldhash::fast::RandomState>,
    pub buckets: BTreeSet<i32>,
}

impl DealsNeeded {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

impl State {
    /// Takes out of memory the closed deals whose close and created days are before `before`
    /// and none of whose keys `dirty` names; returns how many left.
    pub(super) fn evict_deals(&mut self, before: Day, dirty: &Dirty, cal: &Calendar) -> usize {
        let leaves: Vec<SmolStr> = self
            .deals
            .iter()
            .filter(|(id, d)| {
                let (close, created) = deal_days(&d.latest, cal);
                matches!(d.latest.stage, Stage::ClosedWon | Stage::ClosedLost)
                    && close < before
                    && created < before
                    && !dirty.deals.has(*id)
                    && !dirty.deal_activity.has(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut batch = Vec::with_capacity(leaves.len());
        for id in &leaves {
            let Some(d) = self.deals.remove(id) else {
                continue;
            };
            self.deal_last_activity.remove(id);
            let out = &mut self.residency.deals;
            let (close, created) = deal_days(&d.latest, cal);
            let bucket = bucket(id);
            let (k, versions) = (
                key(id),
                d.history.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            );
            let run = Versions::run(&versions).unwrap_or_else(|| {
                out.scattered.insert(k, versions);
                Versions { lo: 0, n: 0 }
            });
            let entry = DealOut {
                amount: d.latest.amount,
                lo: run.lo,
                n: run.n,
                close,
                created,
                currency: out.currency(&d.latest.currency),
                bucket: bucket as u8,
                faulted: false,
            };
            batch.push((k, entry));
            *out.per_bucket.entry(bucket).or_default() += 1;
        }
        self.residency.deals.out.extend(batch);
        super::shrink(&mut self.deals);
        super::shrink(&mut self.deal_last_activity);
        leaves.len()
    }

    /// The deals out of memory the next cut needs back: those a message was read about, and
    /// those the scope keeps (`Scope::keeps_deal`; all of them without a scope).
    pub fn deals_needed(&self, scope: Option<&Scope>) -> DealsNeeded {
        let mut needed = DealsNeeded::default();
        let keeps = |o: &DealOut| match scope {
            _ if o.faulted => true,
            None => true,
            Some(s) => s.keeps_deal(o.close, o.created),
        };
        for (k, o) in self.residency.deals.out.iter() {
            if keeps(o) {
                needed.keys.insert(*k);
                needed.buckets.insert(i32::from(o.bucket));
            }
        }
        needed
    }

    /// Puts back the deals `needed` from `read` (the deals and last activities of their
    /// buckets, as the segments hold them), then applies what was queued about them. Returns
    /// how many needed deals the segments did not hold (they stay out, their messages queued).
    pub(super) fn bring_back_deals(
        &mut self,
        needed: &DealsNeeded,
        read: &mut Map<SmolStr, DealEntry>,
        last_activity: &Map<SmolStr, crate::event::Micros>,
    ) -> usize {
        let mut back: HashSet<Key, foldhash::fast::RandomState> = HashSet::default();
        for (id, d) in read.drain() {
            let k = key(&id);
            if !needed.keys.contains(&k) {
                continue;
            }
            let Some(bucket) = self.residency.deals.out.get(&k).map(|o| o.bucket) else {
                continue;
            };
            if let Some(n) = self.residency.deals.per_bucket.get_mut(&i32::from(bucket)) {
                *n = n.saturating_sub(1);
            }
            self.residency.deals.scattered.remove(&k);
            if let Some(t) = last_activity.get(&id) {
                // An activity folded since it left started a fresh entry: the later one wins.
                let e = self.deal_last_activity.entry(id.clone()).or_insert(*t);
                *e = (*e).max(*t);
            }
            self.deals.insert(id, d);
            back.insert(k);
        }
        // (the index leaves its entries in one pass)
        if !back.is_empty() {
            self.residency.deals.out.retain(|k, _| !back.contains(k));
        }
        let queued = std::mem::take(&mut self.residency.deals.queued);
        for q in queued {
            let id = match &q {
                Queued::Version(d, _) => d.deal_id.as_str(),
                Queued::Late { deal_id, .. } => deal_id.as_str(),
            };
            if self.residency.deals.out.contains_key(&key(id)) {
                self.residency.deals.queued.push(q);
                continue;
            }
            match q {
                Queued::Version(d, origin) => {
                    let (id, v, h) = (d.deal_id.clone(), d.version, (d.stage, d.occurred_at));
                    fold_entity(&mut self.deals, id, v, *d, h, origin);
                }
                Queued::Late {
                    deal_id,
                    version,
                    origin,
                } => {
                    if let Some(e) = self.deals.get_mut(&deal_id) {
                        if e.note(version, origin, Arrival::Late) {
                            self.dirty.deals.touch(deal_id, self.deals.len());
                        }
                    }
                }
            }
        }
        needed.len() - back.len().min(needed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::Calendar;
    use crate::event::{Activity, ActivityType, Event, Micros};
    use crate::state::changes::Scope;
    use crate::state::residency::Needed;

    const DAY: Micros = 86_400_000_000;

    fn deal(v: i64, stage: Stage, day: Day) -> Event {
        Event::Deal(Deal {
            deal_id: "d1".into(),
            version: v,
            occurred_at: i64::from(day) * DAY,
            rep_id: "r1".into(),
            account_id: None,
            stage,
            amount: Decimal::new(100 + v, 2),
            currency: "EUR".into(),
            close_date: day,
            forecast_category: None,
            probability: None,
            created_at: 0,
        })
    }

    fn call_about_d1(day: Day) -> Event {
        Event::Activity(Activity {
            event_id: format!("a{day}"),
            occurred_at: i64::from(day) * DAY,
            rep_id: "r1".into(),
            activity_type: ActivityType::Call,
            outcome: None,
            duration_s: None,
            deal_id: Some("d1".into()),
            account_id: None,
        })
    }

    fn fold(s: &mut State, e: Event, offset: i64) -> Folded {
        let at = Origin {
            partition: 0,
            offset,
        };
        s.fold(e, at, &Calendar::default(), DAY)
    }

    #[test]
    fn a_deal_out_of_memory_takes_what_was_read_about_it_when_it_comes_back() {
        let cal = Calendar::default();
        let mut s = State::default();
        let mut never = State::default();
        let before = [
            (deal(1, Stage::Prospecting, 10), 0),
            (deal(2, Stage::ClosedWon, 20), 1),
            (call_about_d1(25), 2),
        ];
        for (e, offset) in before {
            fold(&mut s, e.clone(), offset);
            fold(&mut never, e, offset);
        }
        s.take_dirty();
        let durable = s.clone();
        // Closed and created in 1970, before 1971: it leaves, with its last activity.
        assert_eq!(s.evict_deals(365, &Dirty::default(), &cal), 1);
        assert!(s.deals.is_empty() && s.deal_last_activity.is_empty());
        assert_eq!(s.residency.deals.days("d1"), Some((20, 0)));
        assert!(s
            .residency
            .partly_out(crate::state::segments::Kind::Deals, bucket("d1")));
        // What it counts as unconverted is what it counted in memory.
        assert_eq!(
            s.residency
                .deals
                .count(|a, c, d| c == "EUR" && d == 20 && a == Decimal::new(102, 2)),
            1
        );
        // A new version, a repeat of an old one, an activity naming it, a late copy: told
        // and counted as if it were in memory.
        let after = [
            (deal(3, Stage::Negotiation, 400), 3),
            (deal(1, Stage::Prospecting, 10), 4),
            (call_about_d1(410), 5),
            (deal(3, Stage::Negotiation, 400), 6),
        ];
        for (e, offset) in after {
            assert_eq!(fold(&mut s, e.clone(), offset), fold(&mut never, e, offset));
        }
        let late = deal(2, Stage::ClosedWon, 20);
        s.note_late(
            &late,
            Origin {
                partition: 0,
                offset: 7,
            },
        );
        never.note_late(
            &late,
            Origin {
                partition: 0,
                offset: 7,
            },
        );
        // Needed at the next cut though its scope (1971) does not hold its old days.
        let scope = Scope::of(&[(400, 410)], &cal, 410);
        let needed = Needed {
            deals: s.deals_needed(Some(&scope)),
            ..Needed::default()
        };
        assert_eq!(needed.deals.len(), 1);
        assert_eq!(s.bring_back(&needed, durable), 0);
        assert!(s.residency.deals.is_empty());
        assert_eq!(s.deals, never.deals);
        assert_eq!(s.deal_last_activity, never.deal_last_activity);
    }

    #[test]
    fn versions_out_of_memory_tell_duplicates_whether_or_not_they_count_up() {
        let cal = Calendar::default();
        let (mut s, mut never) = (State::default(), State::default());
        for (e, offset) in [
            (deal(1, Stage::Prospecting, 10), 0),
            (deal(2, Stage::ClosedWon, 20), 1),
        ] {
            fold(&mut s, e.clone(), offset);
            fold(&mut never, e, offset);
        }
        s.take_dirty();
        assert_eq!(s.evict_deals(365, &Dirty::default(), &cal), 1);
        // Before the run, after it, past a gap, into the gap, and each again.
        for (offset, v) in (10..).zip([0, 3, 7, 5, 0, 3, 7, 5, 1, 2, 4, 6]) {
            let e = deal(v, Stage::ClosedWon, 20);
            let folded = fold(&mut s, e.clone(), offset);
            assert_eq!(folded, fold(&mut never, e, offset), "version {v}");
        }
        assert_eq!(
            s.residency.deals.scattered.values().next().map(Vec::len),
            Some(8)
        );
        // What the index holds per deal out of memory, its slot in the map.
        assert_eq!(std::mem::size_of::<(Key, DealOut)>(), 56);
    }

    #[test]
    fn a_bucket_with_a_deal_out_of_memory_is_never_written_whole() {
        let cal = Calendar::default();
        let mut s = State::default();
        fold(&mut s, deal(1, Stage::ClosedWon, 20), 0);
        // An open deal in the same hash bucket, which stays.
        let same = (0..)
            .map(|i| format!("open-{i}"))
            .find(|id| bucket(id) == bucket("d1"))
            .unwrap_or_default();
        let Event::Deal(mut open) = deal(1, Stage::Proposal, 20) else {
            unreachable!()
        };
        open.deal_id = same.as_str().into();
        fold(&mut s, Event::Deal(open), 1);
        s.take_dirty();
        assert_eq!(s.evict_deals(365, &Dirty::default(), &cal), 1);
        // Every part whole (as after a lost snapshot): that bucket is upserted, not restarted.
        let at = crate::state::segments::SegmentRef {
            snapshot_id: 2,
            base: false,
        };
        let segment = s.encode_segment(&Dirty::default(), true, at).unwrap();
        let deals = crate::state::segments::PartKey {
            kind: crate::state::segments::Kind::Deals,
            period: bucket(&same),
        };
        assert_eq!(
            segment.parts.iter().find(|(k, _)| *k == deals),
            Some(&(deals, false))
        );
    }
}
