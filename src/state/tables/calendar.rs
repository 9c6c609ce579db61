//! The clock and calendar tables: `clock`, the fiscal `calendar` between the days the state
//! holds, and the ISO `weeks` of the trends.

use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::error::ArrowError;

use super::super::columns::{batch, dates, i64s, opt_dates, strs, times};
use super::super::State;
use crate::calendar::PeriodType;
use crate::config::Metrics;
use crate::event::Day;

pub(super) fn clock(s: &State, p: &Metrics, snapshot_id: u64) -> Result<RecordBatch, ArrowError> {
    batch(vec![
        ("snapshot_id", i64s(std::iter::once(snapshot_id as i64))),
        ("as_of", times(std::iter::once(s.as_of))),
        (
            "as_of_date",
            opt_dates(std::iter::once(s.as_of.map(|t| p.calendar.day_of(t)))),
        ),
    ])
}

/// The earliest and latest day the state mentions: activities, quota records, deals'
/// close and created days (also of deals out of memory), `as_of_date`.
pub fn day_bounds(s: &State, cal: &crate::calendar::Calendar) -> Option<(Day, Day)> {
    let as_of_date = s.as_of.map(|t| cal.day_of(t));
    let days = s
        .activity_span
        .values()
        .flat_map(|(a, b)| [*a, *b])
        .chain(
            s.quotas
                .values()
                .flat_map(|q| [q.latest.period_start, q.latest.period_end]),
        )
        .chain(
            s.deals
                .values()
                .flat_map(|d| [d.latest.close_date, cal.day_of(d.latest.created_at)]),
        )
        .chain(s.residency.deals.all_days())
        .chain(as_of_date);
    let (lo, hi) = days.fold((Day::MAX, Day::MIN), |(lo, hi), d| (lo.min(d), hi.max(d)));
    (lo <= hi).then_some((lo, hi))
}

/// Every fiscal period between the earliest and latest day the state mentions, with the
/// elapsed-time columns relative to `as_of_date`.
pub(super) fn calendar(s: &State, p: &Metrics) -> Result<RecordBatch, ArrowError> {
    let cal = &p.calendar;
    let as_of_date = s.as_of.map(|t| cal.day_of(t));
    let (lo, hi) = day_bounds(s, cal).unwrap_or((Day::MAX, Day::MIN));
    let mut rows: Vec<(PeriodType, Day, Day)> = Vec::new();
    if lo <= hi {
        for pt in PeriodType::ALL {
            let mut start = cal.period_start(pt, lo);
            while start <= hi {
                let end = cal.period_end(pt, start);
                rows.push((pt, start, end));
                start = end + 1;
            }
        }
    }
    let period_days = |(_, s, e): &(PeriodType, Day, Day)| i64::from(e - s + 1);
    let elapsed = |r: &(PeriodType, Day, Day)| {
        as_of_date.map(|a| i64::from(a - r.1 + 1).clamp(0, period_days(r)))
    };
    batch(vec![
        ("period_type", strs(rows.iter().map(|r| r.0.as_str()))),
        ("period_start", dates(rows.iter().map(|r| r.1))),
        ("period_end", dates(rows.iter().map(|r| r.2))),
        ("period_days", i64s(rows.iter().map(period_days))),
        (
            "is_current",
            Arc::new(
                rows.iter()
                    .map(|r| as_of_date.map(|a| r.1 <= a && a <= r.2))
                    .collect::<BooleanArray>(),
            ),
        ),
        (
            "elapsed_days",
            Arc::new(rows.iter().map(elapsed).collect::<Int64Array>()),
        ),
        (
            "remaining_days",
            Arc::new(
                rows.iter()
                    .map(|r| elapsed(r).map(|e| period_days(r) - e))
                    .collect::<Int64Array>(),
            ),
        ),
        (
            "time_elapsed",
            Arc::new(
                rows.iter()
                    .map(|r| elapsed(r).map(|e| e as f64 / period_days(r) as f64))
                    .collect::<Float64Array>(),
            ),
        ),
    ])
}
/// Every ISO week (by its Monday) from the earliest activity or deal event to `as_of_date`.
pub(super) fn weeks(
    s: &State,
    p: &Metrics,
    keep: &dyn Fn(Day) -> bool,
) -> Result<RecordBatch, ArrowError> {
    let cal = &p.calendar;
    let first = s
        .activity_span
        .values()
        .map(|(a, _)| *a)
        .chain(s.rep_first_deal.values().map(|t| cal.day_of(*t)))
        .min();
    let last = s.as_of.map(|t| cal.day_of(t));
    let mut mondays = Vec::new();
    if let (Some(first), Some(last)) = (first, last) {
        let mut w = crate::calendar::week_start(first);
        while w <= last {
            if keep(w) {
                mondays.push(w);
            }
            w += 7;
        }
    }
    batch(vec![("week_start", dates(mondays.into_iter()))])
}
