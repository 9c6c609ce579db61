//! Which months of the rep × day grain, and which deals (`deals`), are in memory.
//!
//! The grain is the largest part of the state and grows with the history, but a month the
//! stream has left behind changes no more. Once every rep-day of a month is durable in the
//! segments of the last durable snapshot (the grain is parted by calendar month, `segments`)
//! and the month is closed (it ended before the watermark minus `allowed_lateness`: an
//! activity in it is late), it may leave memory ([`State::evict`]). What stays: the reps'
//! activity spans, the rep-days of the reps that moved in the hierarchy during the month's
//! fiscal year (`activity_parts` sums a period in which a rep's place changed from its days,
//! and the year holds every such period of its months), and its period and week rollups until
//! all their months are out and their fiscal year is over (`sums`).
//!
//! A month comes back ([`State::bring_back`]) when a cut needs it ([`State::grain_needed`]):
//! an activity folded into it, a snapshot that recomputes its `rep_daily` partition (a deal
//! restated into it), the periods of a rep that moved after it left, or a full evaluation.
//! Still, an activity may fold into a month out of memory (the watermark can fall back when an
//! idle partition delivers again), so the fold never needs the month:
//! the cell starts from zero and holds what was folded since, and bringing the month back adds
//! what the segments hold. Counters add and offset spans widen, in any order.
//!
//! Which months leave is a matter of memory, never of results: any month may be out at any
//! cut (the property test evicts at random). Pure: the pipeline reads months and deals back
//! (`pipeline::residency`).

pub mod deals;
mod sorted;
pub mod sums;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::provenance::Origin;
use super::segments::{month, month_days, Dirty, Kind};
use super::{Grain, Map, RepDay, State};
use crate::calendar::{Calendar, PeriodType};
use crate::event::{Day, Micros};
pub use deals::{DealsNeeded, DealsOut};
pub use sums::{SumKey, SumsOut};

/// The grain's months and the deals out of memory.
#[derive(Debug, Clone)]
pub struct Residency {
    /// By first day.
    out: BTreeMap<Day, Out>,
    /// The last day of the latest month out: activities after it take no look-up.
    last: Day,
    pub deals: DealsOut,
    pub sums: SumsOut,
}

impl Default for Residency {
    fn default() -> Residency {
        Residency {
            out: BTreeMap::new(),
            last: Day::MIN,
            deals: DealsOut::default(),
            sums: SumsOut::default(),
        }
    }
}

/// Bookkeeping, not part of the state's value (as `changes::Pending`).
impl PartialEq for Residency {
    fn eq(&self, _: &Residency) -> bool {
        true
    }
}

/// One month out of memory.
#[derive(Debug, Clone)]
struct Out {
    /// Its grain part (`segments::month`).
    period: i32,
    last: Day,
    /// The first and last day of the fiscal year the month is in.
    year: (Day, Day),
    /// Reps whose rep-days of the month stayed in memory (they moved in the hierarchy during
    /// that fiscal year).
    kept: HashSet<u32>,
    /// An activity of a rep not kept folded into it since it left.
    faulted: bool,
}

impl Residency {
    /// Months out of memory.
    pub fn months_out(&self) -> usize {
        self.out.len()
    }

    /// Months out of memory an activity folded into since they left.
    pub fn faulted(&self) -> usize {
        self.out.values().filter(|o| o.faulted).count()
    }

    /// Notes an activity of `rep` folded into `day`.
    pub(super) fn folded(&mut self, rep: u32, day: Day) {
        if day > self.last {
            return;
        }
        if let Some((_, o)) = self.out.range_mut(..=day).next_back() {
            if day <= o.last && !o.kept.contains(&rep) {
                o.faulted = true;
            }
        }
    }

    /// Whether part `period` of `kind` holds data out of memory: a month out of the grain (its
    /// moved reps' rep-days stay), a hash bucket with a deal out.
    pub(super) fn partly_out(&self, kind: Kind, period: i32) -> bool {
        match kind {
            Kind::Daily => self.out.values().any(|o| o.period == period),
            Kind::Deals | Kind::DealActivity => self.deals.in_bucket(period),
            _ => false,
        }
    }

    /// Month (grain part) `period`, if it is out of memory.
    fn month_out(&self, period: i32) -> Option<&Out> {
        self.out
            .get(&month_days(period).0)
            .filter(|o| o.period == period)
    }

    fn month_of(&self, day: Day) -> Option<&Out> {
        let (_, o) = self.out.range(..=day).next_back()?;
        (day <= o.last).then_some(o)
    }

    fn relast(&mut self) {
        self.last = self.out.values().map(|o| o.last).max().unwrap_or(Day::MIN);
    }
}

/// The reps with a hierarchy range starting inside `year` after its first day (`starts`:
/// `tables::range_starts`): the reps whose periods of that year `activity_parts` splits.
fn moved_in(starts: &HashMap<u32, Vec<Day>>, year: (Day, Day)) -> HashSet<u32> {
    starts
        .iter()
        .filter(|(_, days)| days.iter().any(|d| *d > year.0 && *d <= year.1))
        .map(|(rep, _)| *rep)
        .collect()
}

/// Gives a map's room back once it is less than half full (after what it held left memory).
fn shrink<K: Eq + std::hash::Hash, V>(m: &mut Map<K, V>) {
    if m.len() < m.capacity() / 2 {
        m.shrink_to_fit();
    }
}

/// What [`State::evict`] took out of memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    pub months: usize,
    pub rep_days: usize,
    pub deals: usize,
    /// Period and week sums, each for every rep (`sums`).
    pub sums: usize,
}

/// What a cut needs back in memory (`State::needed`).
#[derive(Debug, Clone, Default)]
pub struct Needed {
    /// The grain's parts (months).
    pub months: BTreeSet<i32>,
    pub deals: DealsNeeded,
    /// The sums summed again once the months are back (`sums`).
    pub sums: BTreeSet<SumKey>,
}

impl Needed {
    pub fn is_empty(&self) -> bool {
        self.months.is_empty() && self.deals.is_empty() && self.sums.is_empty()
    }
}

impl RepDay {
    /// Adds a cell of the same rep-day folded apart (counters add, offset spans widen).
    pub fn absorb(&mut self, o: &RepDay) {
        self.counts.absorb(&o.counts);
        for s in o.from.all() {
            for offset in [s.first, s.last] {
                self.from.widen(Origin {
                    partition: s.partition,
                    offset,
                });
            }
        }
    }
}

/// The day before which a month is closed: an activity in it is older than `watermark` minus
/// `lateness`, so late.
pub fn closed_before(watermark: Micros, lateness: Micros, cal: &Calendar) -> Day {
    cal.day_of(watermark.saturating_sub(lateness))
}

impl State {
    /// Takes out of memory the rep-days of every closed month but the `keep` latest ones: those
    /// ending before `closed_before`, none of whose rep-days `dirty` names (the keys the cut
    /// being written took); the closed deals of the years before (`deals`), and the period and
    /// week sums of the years before whose months are all out (`sums`). Call only when every
    /// earlier cut is durable; nothing leaves before the rollups are first summed. The rep-days
    /// of a rep that moved in the hierarchy during the month's fiscal year stay.
    pub fn evict(
        &mut self,
        closed_before: Day,
        keep: usize,
        dirty: &Dirty,
        cal: &Calendar,
    ) -> Evicted {
        let mut evicted = self.evict_months(closed_before, keep, dirty, cal);
        if self.rollups.built {
            let year = cal.period_start(PeriodType::Year, closed_before);
            evicted.sums = self.evict_sums(year, cal);
        }
        evicted
    }

    fn evict_months(
        &mut self,
        closed_before: Day,
        keep: usize,
        dirty: &Dirty,
        cal: &Calendar,
    ) -> Evicted {
        let Some(lowest) = self.activity_span.values().map(|(a, _)| *a).min() else {
            return Evicted::default();
        };
        // Rollups summed again from the grain (after a restore) would miss the months out.
        if !self.rollups.built {
            return Evicted::default();
        }
        let mut closed: Vec<(i32, Day, Day)> = (month(lowest)..)
            .map(|p| (p, month_days(p)))
            .take_while(|(_, (_, last))| *last < closed_before)
            .map(|(p, (first, last))| (p, first, last))
            .collect();
        closed.truncate(closed.len().saturating_sub(keep));
        let Some(&(_, _, top)) = closed.last() else {
            return Evicted::default();
        };
        let year = cal.period_start(PeriodType::Year, closed_before);
        let deals = self.evict_deals(year.min(top.saturating_add(1)), dirty, cal);
        let Some(touched) = dirty.grain_months() else {
            return Evicted {
                deals,
                ..Evicted::default()
            };
        };
        closed.retain(|(p, first, _)| {
            !touched.contains(p) && !self.residency.out.contains_key(first)
        });
        if closed.is_empty() {
            return Evicted {
                deals,
                ..Evicted::default()
            };
        }
        let starts = super::tables::range_starts(self);
        let years: Vec<(Day, Day)> = closed
            .iter()
            .map(|(_, first, _)| {
                let start = cal.period_start(PeriodType::Year, *first);
                (start, cal.period_end(PeriodType::Year, start))
            })
            .collect();
        let kept: Vec<HashSet<u32>> = years.iter().map(|y| moved_in(&starts, *y)).collect();
        let top = closed
            .iter()
            .map(|(_, _, last)| *last)
            .max()
            .unwrap_or(Day::MIN);
        let leaves = |rep: u32, day: Day| {
            day <= top
                && closed
                    .binary_search_by(|(_, first, last)| {
                        if day < *first {
                            std::cmp::Ordering::Greater
                        } else if day > *last {
                            std::cmp::Ordering::Less
                        } else {
                            std::cmp::Ordering::Equal
                        }
                    })
                    .is_ok_and(|i| !kept[i].contains(&rep))
        };
        let before = self.daily.len();
        self.daily.retain(|(rep, day)| !leaves(*rep, *day));
        for (((period, first, last), year), kept) in closed.iter().zip(years).zip(kept) {
            let out = Out {
                period: *period,
                last: *last,
                year,
                kept,
                faulted: false,
            };
            self.residency.out.insert(*first, out);
        }
        self.residency.relast();
        Evicted {
            months: closed.len(),
            rep_days: before - self.daily.len(),
            deals,
            sums: 0,
        }
    }

    /// What the next cut needs back in memory: the grain's months ([`State::grain_needed`],
    /// and every month of a sum it needs: `sums`) and the deals (`State::deals_needed`).
    pub fn needed(&self, scope: Option<&super::changes::Scope>, grain_read: bool) -> Needed {
        let sums = self.sums_needed(scope, grain_read);
        let mut months = self.grain_needed(scope, grain_read);
        months.extend(self.months_of_sums(&sums));
        Needed {
            months,
            deals: self.deals_needed(scope),
            sums,
        }
    }

    /// The grain's parts (months) out of memory that the next cut needs back: those an
    /// activity folded into, and, when the snapshot computes a table over the grain
    /// (`grain_read`), those whose rep-days its scope keeps (all of them without a scope).
    pub fn grain_needed(
        &self,
        scope: Option<&super::changes::Scope>,
        grain_read: bool,
    ) -> BTreeSet<i32> {
        let starts = match (grain_read, scope) {
            (true, Some(_)) => super::tables::range_starts(self),
            _ => HashMap::new(),
        };
        // A scoped period holding the month sums a moved rep's days when the rep moved during
        // the month's fiscal year: its days must be in memory (those that left before the
        // rep moved come back).
        let needed = |first: Day, o: &Out| match scope {
            _ if o.faulted => true,
            _ if !grain_read => false,
            None => true,
            Some(s) => {
                s.overlaps_months(first, o.last)
                    || (s.overlaps(first, o.last)
                        && moved_in(&starts, o.year)
                            .iter()
                            .any(|r| !o.kept.contains(r)))
            }
        };
        self.residency
            .out
            .iter()
            .filter(|(first, o)| needed(**first, o))
            .map(|(_, o)| o.period)
            .collect()
    }

    /// Puts back what `needed` names from `read`, the state its parts' segments hold: the
    /// months' rep-days (a rep-day folded into while its month was out adds them to what it
    /// holds), the sums summed again from them, and the deals (`State::bring_back_deals`). Returns how many needed deals the
    /// segments did not hold.
    pub fn bring_back(&mut self, needed: &Needed, mut read: State) -> usize {
        let missing =
            self.bring_back_deals(&needed.deals, &mut read.deals, &read.deal_last_activity);
        self.bring_back_months(&needed.months, read.daily);
        self.resum(&needed.sums);
        missing
    }

    fn bring_back_months(&mut self, periods: &BTreeSet<i32>, rows: Grain) {
        if periods.is_empty() {
            return;
        }
        for (key, base) in rows.into_rows() {
            let Some(out) = self.residency.month_of(key.1) else {
                continue;
            };
            if !periods.contains(&out.period) || out.kept.contains(&key.0) {
                continue;
            }
            // (what was folded into the month while it was out, added to what it held)
            let cell = self.daily.cell(key);
            let since = std::mem::replace(cell, base);
            cell.absorb(&since);
        }
        self.residency
            .out
            .retain(|_, o| !periods.contains(&o.period));
        self.residency.relast();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Activity, ActivityType, Event};

    const DAY: Micros = 86_400_000_000;

    /// A connected call of `rep` on `day`, one hour into it.
    pub(super) fn call(id: u64, rep: &str, day: Day) -> Event {
        Event::Activity(Activity {
            event_id: format!("a{id}"),
            occurred_at: i64::from(day) * DAY + 3_600_000_000,
            rep_id: rep.into(),
            activity_type: ActivityType::Call,
            outcome: Some("connected".into()),
            duration_s: Some(60),
            deal_id: None,
            account_id: None,
        })
    }

    fn fold(s: &mut State, id: u64, rep: &str, day: Day, offset: i64) {
        let at = Origin {
            partition: (id % 3) as i32,
            offset,
        };
        s.fold(call(id, rep, day), at, &Calendar::default(), DAY);
    }

    /// Days 0..90 of 1970: January, February and March.
    fn three_months() -> State {
        let mut s = State::default();
        for d in 0..90 {
            fold(&mut s, d as u64, "r1", d, i64::from(d));
            fold(&mut s, 1000 + d as u64, "r2", d, 1000 + i64::from(d));
        }
        s.roll_up(&Calendar::default());
        s
    }

    #[test]
    fn closed_months_leave_and_come_back_with_what_was_folded_meanwhile() {
        let mut s = three_months();
        let all = s.daily.clone();
        s.take_dirty();
        // Closed before March 1st (day 59), one closed month kept: January leaves.
        let e = s.evict(59, 1, &Dirty::default(), &Calendar::default());
        assert_eq!(
            e,
            Evicted {
                months: 1,
                rep_days: 62,
                deals: 0,
                sums: 0,
            }
        );
        assert!(s.daily.keys().all(|(_, d)| *d >= 31));
        assert_eq!(s.grain_needed(None, false), BTreeSet::new());
        // An activity into January while it is out, and one into March.
        fold(&mut s, 5000, "r1", 3, 7);
        fold(&mut s, 5001, "r1", 80, 9);
        let january = month(0);
        assert_eq!(s.grain_needed(None, false), BTreeSet::from([january]));
        let rows: Grain = all
            .iter()
            .filter(|(k, _)| k.1 < 31)
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let needed = Needed {
            months: BTreeSet::from([january]),
            ..Needed::default()
        };
        let read = State {
            daily: rows,
            ..State::default()
        };
        assert_eq!(s.bring_back(&needed, read), 0);
        assert_eq!(s.residency.months_out(), 0);
        // The same as folding everything with nothing ever out.
        let mut never = three_months();
        fold(&mut never, 5000, "r1", 3, 7);
        fold(&mut never, 5001, "r1", 80, 9);
        assert_eq!(s.daily, never.daily);
    }

    #[test]
    fn a_month_with_a_touched_rep_day_or_open_stays() {
        let mut s = three_months();
        let dirty = s.take_dirty();
        // Every rep-day touched since the last cut: nothing is durable yet.
        assert_eq!(
            s.evict(90, 0, &dirty, &Calendar::default()),
            Evicted::default()
        );
        fold(&mut s, 7000, "r2", 40, 2000);
        let dirty = s.take_dirty();
        // February holds a touched rep-day; March is not closed.
        let e = s.evict(80, 0, &dirty, &Calendar::default());
        assert_eq!(e.months, 1);
        assert!(s.daily.keys().any(|(_, d)| (31..59).contains(d)));
        assert!(s.daily.keys().all(|(_, d)| *d >= 31));
    }

    /// `rep` in `team` from `from` (version `version`).
    fn placed(s: &mut State, rep: &str, version: i64, team: &str, from: Day) {
        let e = Event::Rep(crate::event::Rep {
            rep_id: rep.into(),
            version,
            occurred_at: i64::from(from) * DAY,
            name: rep.into(),
            team_id: team.into(),
            region: "emea".into(),
            manager_id: None,
            role: None,
            hired_on: None,
            active: true,
            effective_from: Some(from),
        });
        let at = Origin {
            partition: 0,
            offset: 9000 + version,
        };
        s.fold(e, at, &Calendar::default(), DAY);
    }

    /// A rep that moved keeps in memory only the rep-days of the fiscal year it moved in (whose
    /// periods `activity_parts` sums from days); those of other years leave as anyone's, and
    /// come back when a move lands in their year.
    #[test]
    fn a_moved_reps_days_stay_only_in_the_fiscal_year_of_its_move() {
        let cal = Calendar::default();
        let mut s = State::default();
        // 1970 and the first half of 1971; r1 moves on 1971-03-01 (day 424).
        for d in 0..546 {
            fold(&mut s, d as u64, "r1", d, i64::from(d));
            fold(&mut s, 1000 + d as u64, "r2", d, 1000 + i64::from(d));
        }
        placed(&mut s, "r1", 1, "team-a", 0);
        placed(&mut s, "r2", 1, "team-a", 0);
        placed(&mut s, "r1", 2, "team-b", 424);
        s.roll_up(&cal);
        s.take_dirty();
        // Every month before June 1971 (day 516) closed, none kept.
        let e = s.evict(516, 0, &Dirty::default(), &cal);
        assert_eq!(e.months, 17);
        let r1 = s.rep_ids.index["r1"];
        // r1's days of 1971 stay (January to May: 151), r2's leave; 1970 leaves for both.
        let kept: Vec<Day> = s
            .daily
            .keys()
            .filter(|(_, d)| *d < 516)
            .map(|k| k.1)
            .collect();
        assert_eq!(kept.len(), 151, "{kept:?}");
        assert!(s
            .daily
            .keys()
            .filter(|(_, d)| *d < 516)
            .all(|(r, d)| *r == r1 && *d >= 365));
        // A scope over 1971 needs no month back; r2 moving in 1970 brings 1970's months back.
        let scope = super::super::changes::Scope::of(&[(520, 520)], &cal, 545);
        assert!(s.grain_needed(Some(&scope), true).is_empty());
        placed(&mut s, "r2", 2, "team-b", 200);
        let scope = super::super::changes::Scope::of(&[(200, 200)], &cal, 545);
        let needed = s.grain_needed(Some(&scope), true);
        assert_eq!(
            needed,
            (0..12).map(|m| month(m * 31)).collect::<BTreeSet<_>>()
        );
    }

    #[test]
    fn a_scope_needs_the_months_it_recomputes_and_a_full_evaluation_needs_all() {
        let mut s = three_months();
        s.take_dirty();
        s.evict(90, 0, &Dirty::default(), &Calendar::default());
        assert_eq!(s.residency.months_out(), 3);
        assert!(s.daily.is_empty());
        assert_eq!(s.grain_needed(None, true).len(), 3);
        let scope = super::super::changes::Scope::of(&[(40, 40)], &Calendar::default(), 89);
        // February's rep_daily partition is recomputed; no table reads the grain otherwise.
        assert_eq!(
            s.grain_needed(Some(&scope), true),
            BTreeSet::from([month(40)])
        );
        assert_eq!(s.grain_needed(Some(&scope), false), BTreeSet::new());
    }
}
