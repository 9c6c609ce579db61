//! What changed in the state since the last snapshot cut, as the fold records it: which kinds
//! of input changed (`Input`) and on which days the facts they hold lie (`Changes::days`).
//! The engine turns it into the partitions a snapshot must recompute (`Scope`); a state
//! restricted to a scope (`Scope::holds`) is what the tables of those partitions read.
//! Pure: no I/O, no clock.

use std::collections::BTreeSet;

use super::{Map, State};
use crate::calendar::{week_start, Calendar, PeriodType};
use crate::event::{Day, Deal, Micros, Stage};

/// A kind of input a table can read; `Changes` records which changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Input {
    Activities,
    Deals,
    Quotas,
    Fx,
    Roster,
    Surveys,
    /// Message counts (every message changes them) and the dead-letter log.
    Quality,
    DeadLetters,
    /// The day of the event clock (`as_of_date`).
    Day,
    /// A rep no fact or entity named before.
    Reps,
}

/// The changes folded since the last cut.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Anything may have changed (a restore, a rep's first placement): evaluate in full.
    pub all: bool,
    /// The inputs that changed.
    pub inputs: BTreeSet<Input>,
    /// Closed day ranges holding every changed fact (unmerged; `Day::MAX` ends an open range).
    pub days: Vec<(Day, Day)>,
    /// Those of activity facts alone (`Scope::activities`).
    pub activity_days: Vec<(Day, Day)>,
    /// The created days of changed deal versions, which only the cohort tables read (by the
    /// day's fiscal quarter: `Scope::cohorts`); not in `days`, whose periods would be whole
    /// years of a deal's past.
    pub created_days: Vec<(Day, Day)>,
    /// Published tables and alert rules (`rule:<name>`) whose SQL or settings changed since
    /// the checkpoint (their fingerprints differ): recomputed in full, evaluated. Set by the
    /// pipeline at a restore, not by the fold.
    pub redefined: BTreeSet<String>,
}

impl Changes {
    pub fn input(&mut self, i: Input) {
        self.inputs.insert(i);
    }

    /// Whether any of `inputs` changed.
    pub fn touches(&self, inputs: &BTreeSet<Input>) -> bool {
        !self.inputs.is_disjoint(inputs)
    }

    /// A changed fact of input `i` on `day`.
    pub fn day(&mut self, i: Input, day: Day) {
        self.span(i, day, day);
    }

    /// A changed deal version created on `day`: its cohort changes, not its periods.
    pub fn created(&mut self, day: Day) {
        self.inputs.insert(Input::Deals);
        add_span(&mut self.created_days, day, day);
    }

    /// Changed facts of input `i` on the days `from..=to`.
    pub fn span(&mut self, i: Input, from: Day, to: Day) {
        self.inputs.insert(i);
        add_span(&mut self.days, from, to);
        if i == Input::Activities {
            add_span(&mut self.activity_days, from, to);
        }
    }
}

/// Adds `from..=to` to unmerged ranges, merging them once they grow long.
fn add_span(days: &mut Vec<(Day, Day)>, from: Day, to: Day) {
    // Most facts of a cut fall on the same day as the one before.
    if days.last() != Some(&(from, to)) {
        days.push((from, to));
        if days.len() > 4096 {
            *days = merge(std::mem::take(days));
        }
    }
}

/// Sorted, non-overlapping, non-adjacent closed ranges covering the same days.
pub fn merge(mut r: Vec<(Day, Day)>) -> Vec<(Day, Day)> {
    r.sort_unstable();
    let mut out: Vec<(Day, Day)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Weeks of context a week of `trends` reads before it (its 8-week windows), and so the weeks
/// after a changed week whose rows change with it.
pub const TREND_WEEKS: Day = 7;

/// The partitions a snapshot recomputes, and the days whose facts they read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    /// Days whose facts the scoped tables keep (sorted, merged closed ranges).
    pub spans: Vec<(Day, Day)>,
    /// Period starts (of any period type) whose periods are recomputed: for a period
    /// partition, every period starting that day is in `spans`.
    pub periods: BTreeSet<Day>,
    /// Fiscal quarters (by start) recomputed by the cohort tables: those of the changed days
    /// and of the changed deals' created days (`Scope::cohorts`).
    pub quarters: BTreeSet<Day>,
    /// The days of `quarters`: a deal created on one of them is kept for its cohort
    /// (`Scope::keeps_deal`).
    pub quarter_spans: Vec<(Day, Day)>,
    /// Fiscal months (by start) recomputed by the month-partitioned tables.
    pub months: BTreeSet<Day>,
    /// Those holding changed activity facts: all that a month-partitioned table over the
    /// activities alone (`rep_daily`) recomputes (`Scope::activities`; all `months` without).
    pub activity_months: BTreeSet<Day>,
    /// ISO weeks (by Monday) recomputed by `trends`; `spans` holds their context weeks too.
    pub weeks: BTreeSet<Day>,
    /// The days of `weeks` and of their context weeks alone: what the week tables, which
    /// only `trends` reads, keep (a subset of `spans`, which also hold whole years).
    pub week_spans: Vec<(Day, Day)>,
    /// The days of `activity_months` alone: what `activity_days` keeps of reps that did not
    /// move in the hierarchy (`rep_daily` reads it per month; only a move splits a longer
    /// period).
    pub month_spans: Vec<(Day, Day)>,
}

impl Scope {
    /// The scope of changed days `days` (any order); an open range (to `Day::MAX`) ends at
    /// `hi`, the last day the state holds.
    pub fn of(days: &[(Day, Day)], cal: &Calendar, hi: Day) -> Scope {
        let mut s = Scope::default();
        let mut spans = Vec::new();
        for (a, b) in clipped(days, hi) {
            for pt in PeriodType::ALL {
                for start in starts(pt, a, b, cal) {
                    s.periods.insert(start);
                    match pt {
                        PeriodType::Month => s.months.insert(start),
                        PeriodType::Quarter => s.quarters.insert(start),
                        PeriodType::Year => false,
                    };
                }
            }
            let mut w = week_start(a);
            while w <= b {
                for k in 0..=TREND_WEEKS {
                    s.weeks.insert(w + 7 * k);
                }
                w += 7;
            }
        }
        // Every period starting on a recomputed period start, whole.
        for p in &s.periods {
            for pt in PeriodType::ALL {
                if cal.period_start(pt, *p) == *p {
                    spans.push((*p, cal.period_end(pt, *p)));
                }
            }
        }
        s.week_spans = merge(
            s.weeks
                .iter()
                .map(|w| (w - 7 * TREND_WEEKS, w + 6))
                .collect(),
        );
        spans.extend(&s.week_spans);
        s.activity_months = s.months.clone();
        s.month_spans = month_spans(&s.months, cal);
        s.quarter_spans = quarter_spans(&s.quarters, cal);
        s.spans = merge(spans);
        s
    }

    /// Adds the fiscal quarters of the created days `days` (as `Changes::created_days`
    /// records them) to those the cohort tables recompute. Only those: a deal revised years
    /// after it was created brings back the deals of its cohort quarter, not its fiscal year.
    pub fn cohorts(mut self, days: &[(Day, Day)], cal: &Calendar) -> Scope {
        for (a, b) in merge(days.to_vec()) {
            self.quarters.extend(starts(PeriodType::Quarter, a, b, cal));
        }
        self.quarter_spans = quarter_spans(&self.quarters, cal);
        self
    }

    /// Whether a deal closing on `close` and created on `created` is kept: its close date
    /// lies in the scope's days (the tables by close date), or its created day in a
    /// recomputed quarter (its cohort).
    pub fn keeps_deal(&self, close: Day, created: Day) -> bool {
        self.holds(close) || overlaps(&self.quarter_spans, created, created)
    }

    /// Narrows the months of the activity tables to those holding a changed activity fact
    /// (`days`, as `Changes::activity_days` records them; an open range ends at `hi`): a
    /// month where only a deal changed keeps its `rep_daily` partition.
    pub fn activities(mut self, days: &[(Day, Day)], cal: &Calendar, hi: Day) -> Scope {
        self.activity_months = BTreeSet::new();
        for (a, b) in clipped(days, hi) {
            self.activity_months
                .extend(starts(PeriodType::Month, a, b, cal));
        }
        self.month_spans = month_spans(&self.activity_months, cal);
        self
    }

    /// Whether any day of `from..=to` lies in the days of the week tables.
    pub fn overlaps_weeks(&self, from: Day, to: Day) -> bool {
        overlaps(&self.week_spans, from, to)
    }

    /// Whether `day` lies in a month the activity tables recompute.
    pub fn holds_month(&self, day: Day) -> bool {
        self.overlaps_months(day, day)
    }

    /// Whether any day of `from..=to` lies in a month the activity tables recompute.
    pub fn overlaps_months(&self, from: Day, to: Day) -> bool {
        overlaps(&self.month_spans, from, to)
    }

    /// Whether `day` lies in the scope's days.
    pub fn holds(&self, day: Day) -> bool {
        overlaps(&self.spans, day, day)
    }

    /// Whether any day of `from..=to` lies in the scope's days.
    pub fn overlaps(&self, from: Day, to: Day) -> bool {
        overlaps(&self.spans, from, to)
    }
}

/// Changed-day ranges sorted and merged, an open range (to `Day::MAX`) ending at `hi`. Only
/// an open range is clipped (before merging): a closed one may hold a fact's old day, beyond
/// what the state holds now, whose rows must go.
fn clipped(days: &[(Day, Day)], hi: Day) -> Vec<(Day, Day)> {
    merge(
        days.iter()
            .map(|(a, b)| (*a, if *b == Day::MAX { hi.max(*a) } else { *b }))
            .collect(),
    )
}

/// The starts of the periods of type `pt` overlapping `a..=b`.
fn starts(pt: PeriodType, a: Day, b: Day, cal: &Calendar) -> impl Iterator<Item = Day> + '_ {
    std::iter::successors(Some(cal.period_start(pt, a)), move |s| {
        Some(cal.period_end(pt, *s) + 1)
    })
    .take_while(move |s| *s <= b)
}

/// The days of `months` (by start).
fn month_spans(months: &BTreeSet<Day>, cal: &Calendar) -> Vec<(Day, Day)> {
    period_spans(months, PeriodType::Month, cal)
}

/// The days of `quarters` (by start).
fn quarter_spans(quarters: &BTreeSet<Day>, cal: &Calendar) -> Vec<(Day, Day)> {
    period_spans(quarters, PeriodType::Quarter, cal)
}

/// The days of the periods of type `pt` starting on `starts`.
fn period_spans(starts: &BTreeSet<Day>, pt: PeriodType, cal: &Calendar) -> Vec<(Day, Day)> {
    merge(
        starts
            .iter()
            .map(|m| (*m, cal.period_end(pt, *m)))
            .collect(),
    )
}

/// Whether any day of `from..=to` lies in `spans` (sorted, merged).
fn overlaps(spans: &[(Day, Day)], from: Day, to: Day) -> bool {
    let i = spans.partition_point(|(_, b)| *b < from);
    spans.get(i).is_some_and(|(a, _)| *a <= to)
}

// The state's side: what the fold and the cut record.

/// What changed since the last cut, with the event clock at that cut. Bookkeeping of the
/// snapshots, not part of the state's value: two states holding the same facts are equal
/// whatever their cuts.
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub changes: Changes,
    /// `as_of` at the last cut (or restore).
    pub cut_as_of: Option<Micros>,
    /// Reps known at the last cut.
    pub cut_reps: usize,
}

impl PartialEq for Pending {
    fn eq(&self, _: &Pending) -> bool {
        true
    }
}

impl State {
    /// Rebuilds what is derived from the serialised fields (after a restore): the activity
    /// spans, every rep named by any entity in `rep_ids`, and the clock of the last cut.
    pub fn rebuild_derived(&mut self) {
        self.activity_span = Map::default();
        for (rep, day) in self.daily.keys() {
            let e = self.activity_span.entry(*rep).or_insert((*day, *day));
            *e = (e.0.min(*day), e.1.max(*day));
        }
        let State {
            deals,
            quotas,
            roster,
            surveys,
            rep_ids,
            ..
        } = self;
        let names = (deals.values().map(|d| d.latest.rep_id.as_str()))
            .chain(quotas.keys().map(|(r, _)| r.as_str()))
            .chain(roster.keys().map(String::as_str))
            .chain(surveys.values().map(|s| s.rep_id.as_str()));
        for n in names {
            rep_ids.id(n);
        }
        self.changes = Pending {
            changes: Changes::default(),
            cut_as_of: self.as_of,
            cut_reps: self.rep_ids.names.len(),
        };
    }

    /// Takes what changed since the last cut. A new day of the event clock changes the days
    /// from the old `as_of_date` to the new one and every open deal (its age).
    pub fn take_changes(&mut self, cal: &Calendar) -> Changes {
        let mut c = std::mem::take(&mut self.changes.changes);
        let before = self.changes.cut_as_of.map(|t| cal.day_of(t));
        let now = self.as_of.map(|t| cal.day_of(t));
        if let (Some(a), Some(b)) = (before, now) {
            if a != b {
                c.span(Input::Day, a.min(b), a.max(b));
                let open: std::collections::BTreeSet<Day> = self
                    .deals
                    .values()
                    .filter(|d| !matches!(d.latest.stage, Stage::ClosedWon | Stage::ClosedLost))
                    .map(|d| d.latest.close_date)
                    .collect();
                for d in open {
                    c.day(Input::Deals, d);
                }
            }
        } else if before != now {
            c.input(Input::Day);
        }
        self.changes.cut_as_of = self.as_of;
        if self.rep_ids.names.len() != self.changes.cut_reps {
            c.input(Input::Reps);
            self.changes.cut_reps = self.rep_ids.names.len();
        }
        c
    }

    /// The day of the event clock, or `day` before there is one.
    pub(super) fn clock_day(&self, cal: &Calendar, day: Day) -> Day {
        self.as_of.map_or(day, |t| cal.day_of(t)).max(day)
    }

    /// Records that `rep`'s trends may start earlier: on `day`, if that is before the
    /// first day of its activities and deals so far (their weeks from there on change).
    pub(super) fn first_day(&mut self, rep: &str, day: Day, before: Option<Day>, cal: &Calendar) {
        let activity = self
            .rep_ids
            .index
            .get(rep)
            .and_then(|id| self.activity_span.get(id))
            .map(|s| s.0);
        let first = [activity, before].into_iter().flatten().min();
        if first.is_none_or(|f| day < f) {
            let to = self.clock_day(cal, day);
            self.changes.changes.span(Input::Activities, day, to);
        }
    }
}

/// The close date and the day of `created_at` of a deal version.
pub(super) fn deal_days(d: &Deal, cal: &Calendar) -> (Day, Day) {
    (d.close_date, cal.day_of(d.created_at))
}

impl State {
    /// An fx rate of `currency` from `from` was added or revised: the days until the
    /// currency's next rate convert differently, and so do quota records starting in them.
    pub(super) fn fx_changed(&mut self, currency: &str, from: Day) {
        let next = self
            .fx
            .keys()
            .filter(|(c, d)| c == currency && *d > from)
            .map(|(_, d)| *d)
            .min();
        let to = next.map_or(Day::MAX, |n| n - 1);
        self.changes.changes.span(Input::Fx, from, to);
        let quotas: Vec<(Day, Day)> = self
            .quotas
            .values()
            .filter(|q| q.latest.currency == currency)
            .filter(|q| (from..=to).contains(&q.latest.period_start))
            .map(|q| (q.latest.period_start, q.latest.period_end))
            .collect();
        for (a, b) in quotas {
            self.changes.changes.span(Input::Quotas, a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::day_number;
    use chrono::NaiveDate;

    fn d(y: i32, m: u32, day: u32) -> Day {
        day_number(NaiveDate::from_ymd_opt(y, m, day).unwrap())
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        assert_eq!(
            merge(vec![(5, 6), (1, 2), (3, 3), (9, 9)]),
            vec![(1, 3), (5, 6), (9, 9)]
        );
        assert_eq!(merge(vec![(5, 6), (1, 2), (4, 4), (3, 3)]), vec![(1, 6)]);
    }

    #[test]
    fn a_day_recomputes_its_periods_whole_and_its_weeks_with_their_context() {
        let cal = Calendar::default();
        let day = d(2026, 5, 13);
        let s = Scope::of(&[(day, day)], &cal, d(2027, 1, 1));
        let starts: Vec<Day> = s.periods.iter().copied().collect();
        // month May, quarter Q2 (April), year (January)
        assert_eq!(starts, vec![d(2026, 1, 1), d(2026, 4, 1), d(2026, 5, 1)]);
        // the year is recomputed whole, with January and Q1, which start the same day
        assert!(s.holds(d(2026, 1, 1)) && s.holds(d(2026, 12, 31)));
        // the week and the seven after it; the context reaches seven weeks before
        assert_eq!(s.weeks.len(), 8);
        assert_eq!(s.weeks.first(), Some(&week_start(day)));
        assert!(s.holds(week_start(day) - 49));
        assert!(s.overlaps(d(2026, 12, 31), d(2027, 3, 1)));
        assert!(!s.overlaps(d(2027, 3, 1), d(2027, 4, 1)));
    }

    #[test]
    fn open_ranges_are_clipped_to_the_state() {
        let cal = Calendar::default();
        let s = Scope::of(&[(d(2026, 3, 2), Day::MAX)], &cal, d(2026, 3, 10));
        assert!(s.months.contains(&d(2026, 3, 1)) && !s.months.contains(&d(2026, 4, 1)));
        // A closed range beyond the state (a deal's old close date) is kept whole, also when
        // an open range starts before it.
        let s = Scope::of(
            &[
                (d(2026, 12, 22), d(2026, 12, 22)),
                (d(2026, 8, 24), Day::MAX),
            ],
            &cal,
            d(2026, 10, 1),
        );
        assert!(s.months.contains(&d(2026, 12, 1)) && !s.months.contains(&d(2026, 11, 1)));
    }

    #[test]
    fn a_created_day_recomputes_its_cohort_quarter_alone() {
        let cal = Calendar::default();
        let mut c = Changes::default();
        // a revision today of a deal created last year
        c.day(Input::Deals, d(2026, 5, 13));
        c.created(d(2025, 8, 20));
        assert!(c.inputs.contains(&Input::Deals));
        let s = Scope::of(&c.days, &cal, d(2026, 5, 13)).cohorts(&c.created_days, &cal);
        // Q3 2025 for the cohort, beside Q2 2026 of the close day
        assert_eq!(
            s.quarters.iter().copied().collect::<Vec<_>>(),
            vec![d(2025, 7, 1), d(2026, 4, 1)]
        );
        // but no period of 2025 and none of its days: its sums stay where they are
        assert!(s.periods.iter().all(|p| *p >= d(2026, 1, 1)));
        assert!(!s.overlaps(d(2025, 1, 1), d(2025, 12, 31)));
        // a deal created in the quarter is kept for its cohort, one created before it is not
        assert!(s.keeps_deal(d(2024, 1, 1), d(2025, 9, 30)));
        assert!(!s.keeps_deal(d(2024, 1, 1), d(2025, 6, 30)));
        // and a deal closing in scope is kept whenever it was created
        assert!(s.keeps_deal(d(2026, 5, 1), d(2020, 1, 1)));
    }
}
