//! Which period and week sums (`Rollups`) are out of memory.
//!
//! The rollups are derived from the grain and never written, so a sum can leave memory only
//! with all of its months, and comes back by being summed again from them. At a cut that lets
//! months go (`State::evict`), the sums of every fiscal period and ISO week that ends before
//! the fiscal year the closed months end in, and all of whose months are out (none faulted),
//! leave, for every rep at once. Those of the current fiscal year stay: every cut's scope holds
//! the whole fiscal year of a changed day, so they would come back at each one.
//!
//! An activity rolled up into a sum out of memory (late, or into a month read back for another
//! reason) is not added to it: the sum is marked *faulted*. A cut needs a sum back when it is
//! faulted, or when the cut computes a table over the activities whose scope keeps the sum (all
//! of them without a scope). Then every one of its months comes back, and the sum is summed
//! again from the grain ([`State::resum`]).

use std::collections::{BTreeMap, BTreeSet};

use super::super::changes::Scope;
use super::super::segments::month;
use super::super::{Map, State};
use super::Residency;
use crate::calendar::{Calendar, PeriodType};
use crate::event::Day;

/// What a sum is over: a fiscal period of a type, or (`None`) an ISO week.
pub type Which = Option<PeriodType>;

/// A sum out of memory, for every rep: its first day and what it is over.
pub type SumKey = (Day, Which);

/// The period and week sums out of memory.
#[derive(Debug, Clone)]
pub struct SumsOut {
    out: BTreeMap<SumKey, Out>,
    /// The last day of any sum out: rep-days after it take no look-up.
    last: Day,
}

impl Default for SumsOut {
    fn default() -> SumsOut {
        SumsOut {
            out: BTreeMap::new(),
            last: Day::MIN,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Out {
    last: Day,
    /// An activity rolled up into it while out: the next cut sums it again.
    faulted: bool,
}

impl SumsOut {
    /// Sums out of memory (each for every rep).
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Whether the sum `key` of a rep-day on `day` is out of memory; marks it faulted if so.
    pub(in crate::state) fn fault(&mut self, day: Day, key: SumKey) -> bool {
        if day > self.last {
            return false;
        }
        match self.out.get_mut(&key) {
            Some(o) => {
                o.faulted = true;
                true
            }
            None => false,
        }
    }

    fn relast(&mut self) {
        self.last = self.out.values().map(|o| o.last).max().unwrap_or(Day::MIN);
    }
}

impl Residency {
    /// Whether every month of `first..=last` is out of memory, none faulted.
    fn all_out(&self, first: Day, last: Day) -> bool {
        (month(first)..=month(last)).all(|p| self.month_out(p).is_some_and(|o| !o.faulted))
    }
}

impl State {
    /// Takes out of memory the sums ending before `before` all of whose months are out.
    /// Returns how many (each for every rep).
    pub(super) fn evict_sums(&mut self, before: Day, cal: &Calendar) -> usize {
        let residency = &self.residency;
        let mut leaving: Map<SumKey, Option<Day>> = Map::default();
        let mut leaves = |key: SumKey| {
            leaving
                .entry(key)
                .or_insert_with(|| {
                    let last = match key.1 {
                        Some(p) => cal.period_end(p, key.0),
                        None => key.0 + 6,
                    };
                    (last < before && residency.all_out(key.0, last)).then_some(last)
                })
                .is_some()
        };
        let r = &mut self.rollups;
        r.periods
            .retain(|(_, p, first), _| !leaves((*first, Some(*p))));
        r.weeks.retain(|(_, first), _| !leaves((*first, None)));
        super::shrink(&mut r.periods);
        super::shrink(&mut r.weeks);
        let sums = &mut self.residency.sums;
        let before = sums.len();
        for (key, last) in leaving {
            if let Some(last) = last {
                sums.out.insert(
                    key,
                    Out {
                        last,
                        faulted: false,
                    },
                );
            }
        }
        sums.relast();
        sums.len() - before
    }

    /// The sums out of memory the next cut needs back: the faulted ones, and, when it
    /// computes a table over the activities (`grain_read`), those its scope keeps (all of them
    /// without a scope).
    pub(super) fn sums_needed(&self, scope: Option<&Scope>, grain_read: bool) -> BTreeSet<SumKey> {
        let kept = |(first, which): &SumKey, last: Day| match scope {
            None => true,
            Some(s) if which.is_none() => s.overlaps_weeks(*first, last),
            Some(s) => s.overlaps(*first, last),
        };
        self.residency
            .sums
            .out
            .iter()
            .filter(|(key, o)| o.faulted || (grain_read && kept(key, o.last)))
            .map(|(key, _)| *key)
            .collect()
    }

    /// The grain's parts (months) out of memory holding a day of one of `sums`.
    pub(super) fn months_of_sums(&self, sums: &BTreeSet<SumKey>) -> BTreeSet<i32> {
        sums.iter()
            .filter_map(|key| Some((key.0, self.residency.sums.out.get(key)?.last)))
            .flat_map(|(first, last)| month(first)..=month(last))
            .filter(|p| self.residency.month_out(*p).is_some())
            .collect()
    }

    /// Sums `sums` again from the grain, for every rep, and takes them off the sums out of
    /// memory. Every month of them must be in memory (`months_of_sums` came back).
    pub(super) fn resum(&mut self, sums: &BTreeSet<SumKey>) {
        let mut of_day: Map<Day, Vec<SumKey>> = Map::default();
        for key in sums {
            if let Some(o) = self.residency.sums.out.remove(key) {
                for day in key.0..=o.last {
                    of_day.entry(day).or_default().push(*key);
                }
            }
        }
        if of_day.is_empty() {
            return;
        }
        self.residency.sums.relast();
        let r = &mut self.rollups;
        for ((rep, day), cell) in self.daily.iter() {
            for (first, which) in of_day.get(day).into_iter().flatten() {
                let sum = match which {
                    Some(p) => r.periods.entry((*rep, *p, *first)).or_default(),
                    None => r.weeks.entry((*rep, *first)).or_default(),
                };
                sum.absorb(&cell.counts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::provenance::Origin;
    use super::super::super::segments::Dirty;
    use super::super::tests::call;
    use super::super::Needed;
    use super::*;
    use crate::event::Micros;

    const DAY: Micros = 86_400_000_000;

    fn fold(s: &mut State, id: u64, rep: &str, day: Day) {
        let at = Origin {
            partition: 0,
            offset: id as i64,
        };
        s.fold(call(id, rep, day), at, &Calendar::default(), DAY);
        s.roll_up(&Calendar::default());
    }

    /// Two reps active every third day of 1970 and 1971 (fiscal years from January).
    fn two_years() -> State {
        let mut s = State::default();
        for d in (0..730).step_by(3) {
            fold(&mut s, d as u64, "r1", d);
            fold(&mut s, 10_000 + d as u64, "r2", d + 1);
        }
        s
    }

    /// Brings back what `needed` names from `all` (what the segments would hold).
    fn bring_back(s: &mut State, needed: &Needed, all: &State) {
        let months = &needed.months;
        let read = State {
            daily: all
                .daily
                .iter()
                .filter(|((_, d), _)| months.contains(&month(*d)))
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            ..State::default()
        };
        s.bring_back(needed, read);
    }

    #[test]
    fn past_years_sums_leave_with_their_months_and_are_summed_again_when_needed() {
        let cal = Calendar::default();
        let mut s = two_years();
        let all = s.clone();
        s.take_dirty();
        // Closed before March 1971: January 1970 to February 1971 leave; 1970's sums with them.
        let e = s.evict(424, 0, &Dirty::default(), &cal);
        assert_eq!(e.months, 14);
        // 12 months, 4 quarters, a year and the 51 weeks ending before 1971 began but the
        // first, whose December 1969 never left (nothing before the first activity does).
        assert_eq!(e.sums, 12 + 4 + 1 + 51);
        assert!(s.rollups.periods.keys().all(|(_, _, first)| *first >= 365));
        let weeks: BTreeSet<Day> = s.rollups.weeks.keys().map(|(_, w)| *w).collect();
        assert_eq!(weeks.range(..365 - 6).collect::<Vec<_>>(), [&-3]);
        assert!(s.needed(None, false).is_empty());

        // An activity into June 1970: its month, quarter, year and week are faulted, so every
        // month of 1970 comes back and those sums are summed again.
        fold(&mut s, 99_999, "r1", 160);
        let mut never = all.clone();
        fold(&mut never, 99_999, "r1", 160);
        let needed = s.needed(None, false);
        assert_eq!(needed.sums.len(), 4);
        assert_eq!(needed.months, (month(0)..=month(364)).collect());
        bring_back(&mut s, &needed, &all);
        assert_eq!(s.residency.sums.len(), e.sums - 4);
        let r1 = s.rep_ids.find("r1").unwrap();
        let june = (r1, PeriodType::Month, 151);
        assert_eq!(
            s.rollups.periods.get(&june),
            never.rollups.periods.get(&june)
        );
        assert_eq!(s.rollups.periods[&june].calls, 11);

        // A full evaluation needs every sum: they come back equal to those of a state that
        // never let anything go.
        let needed = s.needed(None, true);
        bring_back(&mut s, &needed, &all);
        assert!(s.residency.sums.is_empty());
        assert_eq!(s.rollups.periods, never.rollups.periods);
        assert_eq!(s.rollups.weeks, never.rollups.weeks);
    }
}
