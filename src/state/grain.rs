//! The rep × day grain of activity counters (`DailyCounts`), held a map per calendar month
//! (`Grain`), and its rollups per rep and fiscal period and per rep and ISO week (`Rollups`),
//! kept up to date as activities fold (`State::add_to_grain`).

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::changes::Input;
use super::provenance::Spans;
use super::residency::SumsOut;
use super::segments::month;
use super::{Map, Origin, State};
use crate::calendar::{Calendar, PeriodType};
use crate::event::{Activity, ActivityType, Day};

/// Activity counters of one rep on one day: the `rep_daily` grain. Counters are 32-bit (a
/// rep-day holds far fewer than 4 billion activities); seconds are 64-bit. The grain is the
/// largest part of the state, so every byte here counts once per rep-day of history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyCounts {
    pub calls: u32,
    pub emails: u32,
    pub meetings: u32,
    pub webinars: u32,
    pub demos: u32,
    pub tasks: u32,
    pub activities: u32,
    pub connected_calls: u32,
    pub replied_emails: u32,
    pub meetings_held: u32,
    /// Held demos alone (they also count in `meetings_held`); the leaderboard weighs them extra.
    pub demos_held: u32,
    pub call_seconds: i64,
}

impl DailyCounts {
    /// Adds another cell's counters to this one.
    pub fn absorb(&mut self, o: &DailyCounts) {
        self.calls += o.calls;
        self.emails += o.emails;
        self.meetings += o.meetings;
        self.webinars += o.webinars;
        self.demos += o.demos;
        self.tasks += o.tasks;
        self.activities += o.activities;
        self.connected_calls += o.connected_calls;
        self.replied_emails += o.replied_emails;
        self.meetings_held += o.meetings_held;
        self.demos_held += o.demos_held;
        self.call_seconds = self.call_seconds.saturating_add(o.call_seconds);
    }

    pub(super) fn add(&mut self, a: &Activity) {
        let outcome = a.outcome.as_deref();
        self.activities += 1;
        match a.activity_type {
            ActivityType::Call => {
                self.calls += 1;
                self.call_seconds = self.call_seconds.saturating_add(a.duration_s.unwrap_or(0));
                self.connected_calls += u32::from(outcome == Some("connected"));
            }
            ActivityType::Email => {
                self.emails += 1;
                self.replied_emails += u32::from(outcome == Some("replied"));
            }
            ActivityType::Meeting => {
                self.meetings += 1;
                self.meetings_held += u32::from(outcome == Some("held"));
            }
            ActivityType::Demo => {
                self.demos += 1;
                self.meetings_held += u32::from(outcome == Some("held"));
                self.demos_held += u32::from(outcome == Some("held"));
            }
            ActivityType::Webinar => self.webinars += 1,
            ActivityType::Task => self.tasks += 1,
        }
    }
}

/// One rep-day of the grain: its counters, and the offsets its activities were read from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepDay {
    pub counts: DailyCounts,
    pub from: Spans,
}

/// The rep × day grain: a map per calendar month (`segments::month`, the months its segments
/// are parted by). A month leaves memory by dropping its map and comes back into one of its
/// own, so no map keeps the churn of months coming and going: one map of every month kept
/// the slots of the months gone as tombstones, and doubled to make room for them at 1.5
/// million rep-days, holding the old 226 MiB and the new 453 MiB at once
/// (docs/performance.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grain {
    months: BTreeMap<i32, Map<(u32, Day), RepDay>>,
    /// The rep-days of every month (the fold reads it at every activity: `Dirty`).
    len: usize,
}

impl Grain {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.months.values().all(Map::is_empty)
    }

    pub fn get(&self, key: &(u32, Day)) -> Option<&RepDay> {
        self.months.get(&month(key.1))?.get(key)
    }

    pub fn get_key_value(&self, key: &(u32, Day)) -> Option<(&(u32, Day), &RepDay)> {
        self.months.get(&month(key.1))?.get_key_value(key)
    }

    /// The cell of `key`, an empty one put there if it has none.
    pub fn cell(&mut self, key: (u32, Day)) -> &mut RepDay {
        match self.months.entry(month(key.1)).or_default().entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.len += 1;
                e.insert(RepDay::default())
            }
        }
    }

    /// Every rep-day, month by month.
    pub fn iter(&self) -> impl Iterator<Item = (&(u32, Day), &RepDay)> {
        self.months.values().flat_map(|m| m.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &(u32, Day)> {
        self.months.values().flat_map(|m| m.keys())
    }

    /// Every rep-day, taken.
    pub fn into_rows(self) -> impl Iterator<Item = ((u32, Day), RepDay)> {
        self.months.into_values().flatten()
    }

    /// The rep-days of each month (`segments::month`) in memory.
    pub fn months(&self) -> impl Iterator<Item = (i32, &Map<(u32, Day), RepDay>)> {
        self.months.iter().map(|(p, m)| (*p, m))
    }

    /// Keeps the rep-days `keep` returns true for. A month left empty goes with its map; one
    /// less than half full gets a map of its size (the rep-days kept of reps that moved).
    pub fn retain(&mut self, mut keep: impl FnMut(&(u32, Day)) -> bool) {
        self.months.retain(|_, m| {
            m.retain(|k, _| keep(k));
            if m.len() < m.capacity() / 2 {
                m.shrink_to_fit();
            }
            !m.is_empty()
        });
        self.len = self.months.values().map(Map::len).sum();
    }

    /// Upserts `rows`, room made in a month's map for the rows still to come when it runs
    /// out (a part's rows are of one month: one allocation).
    pub fn extend(&mut self, rows: Vec<((u32, Day), RepDay)>) {
        let mut left = rows.len();
        for (key, v) in rows {
            let m = self.months.entry(month(key.1)).or_default();
            if m.capacity() == m.len() {
                m.reserve(left);
            }
            if m.insert(key, v).is_none() {
                self.len += 1;
            }
            left -= 1;
        }
    }
}

impl FromIterator<((u32, Day), RepDay)> for Grain {
    fn from_iter<I: IntoIterator<Item = ((u32, Day), RepDay)>>(rows: I) -> Grain {
        let mut g = Grain::default();
        g.extend(rows.into_iter().collect());
        g
    }
}

/// The rep × day grain summed per rep and fiscal period and per rep and ISO week: the
/// grains that `rep_periods` and `trends` group by. Kept up to date from what changed since
/// the last snapshot (`State::roll_up`), so a snapshot does not sum the whole history again.
/// Derived from `daily`, so never serialised: a restored state rebuilds it once. The sums of
/// past years leave memory with their months (`residency::sums`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollups {
    /// (rep id, period type, period start) → counters.
    pub periods: Map<(u32, PeriodType, Day), DailyCounts>,
    /// (rep id, Monday of the week) → counters.
    pub weeks: Map<(u32, Day), DailyCounts>,
    /// Activities folded since the last `roll_up`, per rep × day.
    pub(super) pending: Map<(u32, Day), DailyCounts>,
    /// Whether `periods` and `weeks` cover all of `daily` but `pending`.
    pub(super) built: bool,
}

impl Rollups {
    /// Adds the counters `c` of `rep` on `day` to the rep's period and week sums.
    /// A sum out of memory (`out`) is not added to but marked faulted: it is summed again
    /// from the grain when its months come back.
    pub(super) fn add(
        &mut self,
        (rep, day): (u32, Day),
        c: &DailyCounts,
        starts: &mut Starts,
        out: &mut SumsOut,
    ) {
        let (periods, week) = starts.of(day);
        for (p, start) in PeriodType::ALL.into_iter().zip(periods) {
            if !out.fault(day, (start, Some(p))) {
                self.periods.entry((rep, p, start)).or_default().absorb(c);
            }
        }
        if !out.fault(day, (week, None)) {
            self.weeks.entry((rep, week)).or_default().absorb(c);
        }
    }

    /// Whether the rollups hold every activity folded so far.
    pub fn is_current(&self) -> bool {
        self.built && self.pending.is_empty()
    }

    /// The rollups of a whole grain, summed from scratch.
    pub fn of(daily: &Grain, cal: &Calendar) -> Rollups {
        let mut r = Rollups {
            built: true,
            ..Rollups::default()
        };
        let (mut starts, mut out) = (Starts::new(cal), SumsOut::default());
        for (key, c) in daily.iter() {
            r.add(*key, &c.counts, &mut starts, &mut out);
        }
        r
    }
}

/// The period starts and the week of a day, remembered per day: a grain has many rep-days
/// but few distinct days.
pub(super) struct Starts<'a> {
    cal: &'a Calendar,
    known: Map<Day, ([Day; 3], Day)>,
}

impl<'a> Starts<'a> {
    pub(super) fn new(cal: &'a Calendar) -> Starts<'a> {
        Starts {
            cal,
            known: Map::default(),
        }
    }

    pub(super) fn of(&mut self, day: Day) -> ([Day; 3], Day) {
        let cal = self.cal;
        *self.known.entry(day).or_insert_with(|| {
            (
                PeriodType::ALL.map(|p| cal.period_start(p, day)),
                crate::calendar::week_start(day),
            )
        })
    }
}

impl State {
    /// Adds `counts` to the rep-day of `rep` on `day` as folding those activities does (the
    /// rollups, the changes, the segment's dirty keys, a month out of memory), without their
    /// ids or deals: for building a state directly (benchmarks). The event clock is the
    /// caller's to set.
    pub fn add_counts(&mut self, rep: &str, day: Day, counts: &DailyCounts, cal: &Calendar) {
        self.add_to_grain(rep, day, Origin::default(), cal, |c| c.absorb(counts));
    }

    /// Adds to the rep-day of `rep` on `day`, and to its pending rollups, what `add` adds to
    /// a cell (an activity, folding; a rep-day's counters, `add_counts`).
    pub(super) fn add_to_grain(
        &mut self,
        rep: &str,
        day: Day,
        origin: Origin,
        cal: &Calendar,
        add: impl Fn(&mut DailyCounts),
    ) {
        let key = (self.rep_ids.id(rep), day);
        self.changes.changes.day(Input::Activities, key.1);
        match self.activity_span.get_mut(&key.0) {
            Some(span) if span.0 <= key.1 => span.1 = span.1.max(key.1),
            _ => {
                let deal = self.rep_first_deal.get(rep).map(|t| cal.day_of(*t));
                self.first_day(rep, key.1, deal, cal);
                let span = self.activity_span.entry(key.0).or_insert((key.1, key.1));
                *span = (span.0.min(key.1), span.1.max(key.1));
            }
        }
        self.residency.folded(key.0, key.1);
        let cell = self.daily.cell(key);
        add(&mut cell.counts);
        cell.from.widen(origin);
        self.dirty.daily.touch(key, self.daily.len());
        if self.rollups.built {
            add(self.rollups.pending.entry(key).or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    /// A rep-day's counters added at once change the state as folding those activities does
    /// (but their ids): the grain, the rollups of a state whose sums are built, the changes.
    #[test]
    fn counters_added_at_once_fold_as_their_activities() {
        use crate::event::{Activity, ActivityType};
        let cal = Calendar::default();
        let activity = |i: i64, activity_type, outcome: &str| {
            Event::Activity(Activity {
                event_id: format!("a{i}"),
                occurred_at: 20_000 * 86_400_000_000 + i * 60_000_000,
                rep_id: "r1".into(),
                activity_type,
                duration_s: Some(30),
                outcome: Some(outcome.into()),
                deal_id: None,
                account_id: None,
            })
        };
        let events = [
            activity(0, ActivityType::Call, "connected"),
            activity(1, ActivityType::Call, "no_answer"),
            activity(2, ActivityType::Demo, "held"),
        ];
        let (mut folded, mut added) = (State::default(), State::default());
        for s in [&mut folded, &mut added] {
            s.fold(
                activity(9, ActivityType::Email, "replied"),
                Origin::default(),
                &cal,
                0,
            );
            s.roll_up(&cal);
            let _ = s.take_changes(&cal);
        }
        let mut counts = DailyCounts::default();
        for e in events {
            if let Event::Activity(a) = &e {
                counts.add(a);
            }
            folded.fold(e, Origin::default(), &cal, 0);
        }
        added.add_counts("r1", 20_000, &counts, &cal);
        assert_eq!(counts.calls, 2);
        assert_eq!(added.daily, folded.daily);
        for s in [&mut folded, &mut added] {
            s.roll_up(&cal);
        }
        assert_eq!(added.rollups, folded.rollups);
        added.as_of = folded.as_of; // (the caller's to set)
        assert_eq!(added.take_changes(&cal), folded.take_changes(&cal));
    }

    /// A month leaves with its map, and the maps of the others are not touched: a map of
    /// every month would keep the slots of the month gone, and grow to make room for them.
    #[test]
    fn the_grain_holds_a_map_a_month_and_a_month_leaves_with_it() {
        let cell = |n: u32| RepDay {
            counts: DailyCounts {
                calls: n,
                ..DailyCounts::default()
            },
            ..RepDay::default()
        };
        // Three reps over January to March 1970 (days 0..90), a part's rows a month.
        let mut g = Grain::default();
        for (first, last) in [(0, 30), (31, 58), (59, 89)] {
            g.extend(
                (first..=last)
                    .flat_map(|d| (0..3).map(move |r| ((r, d), cell(1))))
                    .collect(),
            );
        }
        assert_eq!(g.len(), 270);
        assert_eq!(
            g.months().map(|(p, m)| (p, m.len())).collect::<Vec<_>>(),
            [(month(0), 93), (month(31), 84), (month(59), 93)]
        );
        let march = g.months().last().map(|(_, m)| m.capacity());
        *g.cell((1, 40)) = cell(7);
        assert_eq!(g.get(&(1, 40)), Some(&cell(7)));
        assert_eq!(g.len(), 270, "a cell there is not counted again");
        *g.cell((5, 40)) = cell(1);
        assert_eq!(g.len(), 271, "a new cell is");
        // January leaves, and rep 2 of February.
        g.retain(|(r, d)| *d > 30 && !(*r == 2 && *d <= 58));
        assert_eq!(
            g.months().map(|(p, _)| p).collect::<Vec<_>>(),
            [month(31), month(59)]
        );
        assert_eq!(g.months().last().map(|(_, m)| m.capacity()), march);
        assert_eq!(g.len(), 57 + 93);
        assert!(g.get(&(0, 3)).is_none() && g.get(&(2, 40)).is_none());
        let rows: Grain = g.clone().into_rows().collect();
        assert_eq!(rows, g);
    }
}
