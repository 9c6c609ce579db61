//! State → Arrow: the tables the SQL in `sql/` reads. Each function here names its columns;
//! together they are the state schema (the SQL reference in docs/sql.md is generated from them
//! and `catalog`).

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch,
};
use datafusion::arrow::error::ArrowError;
use smol_str::SmolStr;

mod calendar;
mod settings;

pub use calendar::day_bounds;
use calendar::{calendar, clock, weeks};

use super::changes::Scope;
use super::columns::{batch, dates, decimals, i64s, opt_dates, opt_strs, strs, times};
use super::hierarchy::{ranges, Range};
use super::{DailyCounts, Rollups, State};
use crate::calendar::PeriodType;
use crate::config::Metrics;
use crate::event::RATE_SCALE;
use crate::event::{Day, Micros};

/// The state tables that hold facts by day, and so are restricted to a snapshot's scope.
pub const SCOPED: [&str; 6] = [
    "activity_days",
    "activity_periods",
    "activity_weeks",
    "deals",
    "quotas",
    "weeks",
];

/// The state tables for one snapshot, with the snapshot id the engine is computing. With a
/// scope, the tables of [`SCOPED`] hold only the facts their readers need: a period sum or a
/// quota record overlapping the scope's days, a deal whose close date lies in them or whose
/// created day lies in a recomputed cohort quarter; the week sums and weeks of the trend
/// weeks and their context; the rep-days of the recomputed months, and of the scope's days
/// for reps that moved in the hierarchy. Only the tables `wanted` names are built (the
/// settings tables, a few rows each, always are).
pub fn build(
    state: &State,
    pipeline: &Metrics,
    snapshot_id: u64,
    scope: Option<&Scope>,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<(&'static str, RecordBatch)>, ArrowError> {
    let cal = &pipeline.calendar;
    let keep = |from: Day, to: Day| scope.is_none_or(|s| s.overlaps(from, to));
    let keep_week = |w: Day| scope.is_none_or(|s| s.overlaps_weeks(w, w + 6));
    // `rep_daily` needs the recomputed months; `activity_parts` the whole scoped periods of
    // the reps whose hierarchy range starts inside one (only reps that moved).
    let moved = match scope {
        Some(_) => moved_reps(state),
        None => Default::default(),
    };
    let keep_day = |rep: u32, d: Day| {
        scope.is_none_or(|s| s.holds_month(d) || (moved.contains(&rep) && s.holds(d)))
    };
    // The pipeline brings the rollups up to date at every cut; any other caller gets them
    // summed here.
    let summed;
    let rollups = if state.rollups.is_current() {
        &state.rollups
    } else {
        summed = Rollups::of(&state.daily, &pipeline.calendar);
        &summed
    };
    let keep_deal = |c: Day, t: Micros| scope.is_none_or(|s| s.keeps_deal(c, cal.day_of(t)));
    let (deals, rest) = std::thread::scope(|s| {
        // The largest table on a second core: the cut pauses the reader while these are built.
        let deals = s.spawn(|| timed(wanted, "deals", || deals(state, &keep_deal)));
        let rest = (|| -> Result<Vec<_>, ArrowError> {
            Ok([
                timed(wanted, "activity_days", || activity_days(state, &keep_day))?,
                timed(wanted, "activity_periods", || {
                    activity_periods(state, rollups, &|p, d| keep(d, cal.period_end(p, d)))
                })?,
                timed(wanted, "activity_weeks", || {
                    activity_weeks(state, rollups, &|_, w| keep_week(w))
                })?,
                timed(wanted, "quotas", || quotas(state, &keep))?,
                timed(wanted, "roster", || roster(state))?,
                timed(wanted, "roster_ranges", || roster_ranges(state))?,
                timed(wanted, "fx_rates", || fx_rates(state))?,
                timed(wanted, "surveys", || surveys(state))?,
                timed(wanted, "quality_counts", || quality_counts(state))?,
                timed(wanted, "dead_letter_log", || dead_letter_log(state))?,
                timed(wanted, "clock", || clock(state, pipeline, snapshot_id))?,
                timed(wanted, "calendar", || calendar(state, pipeline))?,
                timed(wanted, "rep_first_deal", || rep_first_deal(state))?,
                timed(wanted, "rep_ids", || rep_ids(state))?,
                timed(wanted, "rep_activity", || rep_activity(state))?,
                timed(wanted, "weeks", || weeks(state, pipeline, &keep_week))?,
            ]
            .into_iter()
            .flatten()
            .collect())
        })();
        let deals = deals
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (deals, rest)
    });
    let mut tables = rest?;
    tables.extend(deals?);
    tables.extend(settings::tables(pipeline)?);
    Ok(tables)
}

/// Builds state table `name` with `f` if it is `wanted`, logging (at trace level) how long it
/// took.
fn timed(
    wanted: &(dyn Fn(&str) -> bool + Sync),
    name: &'static str,
    f: impl FnOnce() -> Result<RecordBatch, ArrowError>,
) -> Result<Option<(&'static str, RecordBatch)>, ArrowError> {
    if !wanted(name) {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let batch = f()?;
    let ms = started.elapsed().as_millis() as u64;
    tracing::trace!(table = name, ms, "state table built");
    Ok(Some((name, batch)))
}

/// The counter columns of the rep × day grain and of its rollups, in one order.
fn counters(cells: &[&DailyCounts]) -> Vec<(&'static str, ArrayRef)> {
    let c = |f: fn(&DailyCounts) -> i64| i64s(cells.iter().map(move |v| f(v)));
    vec![
        ("calls", c(|v| i64::from(v.calls))),
        ("emails", c(|v| i64::from(v.emails))),
        ("meetings", c(|v| i64::from(v.meetings))),
        ("webinars", c(|v| i64::from(v.webinars))),
        ("demos", c(|v| i64::from(v.demos))),
        ("tasks", c(|v| i64::from(v.tasks))),
        ("activities", c(|v| i64::from(v.activities))),
        ("call_seconds", c(|v| v.call_seconds)),
        ("connected_calls", c(|v| i64::from(v.connected_calls))),
        ("replied_emails", c(|v| i64::from(v.replied_emails))),
        ("meetings_held", c(|v| i64::from(v.meetings_held))),
        ("demos_held", c(|v| i64::from(v.demos_held))),
    ]
}

fn activity_days(s: &State, keep: &dyn Fn(u32, Day) -> bool) -> Result<RecordBatch, ArrowError> {
    let cells = s.daily.iter().map(|(k, c)| (k, &c.counts));
    by_rep_and_day(s, cells, "day", keep)
}

/// A rep × day-keyed map of counters as a table: `rep_id`, the day column, the counters.
fn by_rep_and_day<'a>(
    s: &State,
    cells: impl Iterator<Item = (&'a (u32, Day), &'a DailyCounts)>,
    day_column: &'static str,
    keep: &dyn Fn(u32, Day) -> bool,
) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = cells.filter(|((r, d), _)| keep(*r, *d)).collect();
    let counts: Vec<_> = rows.iter().map(|(_, c)| *c).collect();
    let mut cols = vec![
        (
            "rep_id",
            strs(rows.iter().map(|((r, _), _)| s.rep_ids.name(*r))),
        ),
        (day_column, dates(rows.iter().map(|((_, d), _)| *d))),
    ];
    cols.extend(counters(&counts));
    batch(cols)
}

/// `activity_days` summed per rep and fiscal period.
fn activity_periods(
    s: &State,
    r: &Rollups,
    keep: &dyn Fn(PeriodType, Day) -> bool,
) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = r
        .periods
        .iter()
        .filter(|((_, p, d), _)| keep(*p, *d))
        .collect();
    let cells: Vec<_> = rows.iter().map(|(_, c)| *c).collect();
    let mut cols = vec![
        (
            "rep_id",
            strs(rows.iter().map(|((r, _, _), _)| s.rep_ids.name(*r))),
        ),
        (
            "period_type",
            strs(rows.iter().map(|((_, p, _), _)| p.as_str())),
        ),
        ("period_start", dates(rows.iter().map(|((_, _, d), _)| *d))),
    ];
    cols.extend(counters(&cells));
    batch(cols)
}

/// `activity_days` summed per rep and ISO week (by its Monday).
fn activity_weeks(
    s: &State,
    r: &Rollups,
    keep: &dyn Fn(u32, Day) -> bool,
) -> Result<RecordBatch, ArrowError> {
    by_rep_and_day(s, r.weeks.iter(), "week_start", keep)
}

/// Latest version of each deal, with what the history tells: when the current stage was
/// entered and the furthest funnel stage ever reached.
fn deals(s: &State, keep: &dyn Fn(Day, Micros) -> bool) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = s
        .deals
        .values()
        .filter(|d| keep(d.latest.close_date, d.latest.created_at))
        .collect();
    let entered: Vec<Micros> = rows
        .iter()
        .map(|d| {
            let mut at = d.latest.occurred_at;
            for (_, (stage, t)) in d.history.iter().rev() {
                if *stage != d.latest.stage {
                    break;
                }
                at = *t;
            }
            at
        })
        .collect();
    let reached: Vec<Option<i64>> = rows
        .iter()
        .map(|d| {
            d.history
                .iter()
                .filter_map(|(_, (st, _))| st.funnel_rank())
                .max()
        })
        .collect();
    batch(vec![
        (
            "deal_id",
            strs(rows.iter().map(|d| d.latest.deal_id.as_str())),
        ),
        (
            "rep_id",
            strs(rows.iter().map(|d| d.latest.rep_id.as_str())),
        ),
        (
            "account_id",
            opt_strs(rows.iter().map(|d| d.latest.account_id.as_deref())),
        ),
        ("stage", strs(rows.iter().map(|d| d.latest.stage.as_str()))),
        (
            "amount",
            decimals(rows.iter().map(|d| d.latest.amount), 18, 2)?,
        ),
        (
            "currency",
            strs(rows.iter().map(|d| d.latest.currency.as_str())),
        ),
        (
            "close_date",
            dates(rows.iter().map(|d| d.latest.close_date)),
        ),
        (
            "forecast_category",
            opt_strs(rows.iter().map(|d| d.latest.forecast_category.as_deref())),
        ),
        (
            "probability",
            Arc::new(
                rows.iter()
                    .map(|d| d.latest.probability)
                    .collect::<Float64Array>(),
            ),
        ),
        (
            "created_at",
            times(rows.iter().map(|d| Some(d.latest.created_at))),
        ),
        ("version", i64s(rows.iter().map(|d| d.latest_version))),
        (
            "updated_at",
            times(rows.iter().map(|d| Some(d.latest.occurred_at))),
        ),
        ("stage_entered_at", times(entered.into_iter().map(Some))),
        (
            "last_activity_at",
            times(
                rows.iter()
                    .map(|d| s.deal_last_activity.get(&d.latest.deal_id).copied()),
            ),
        ),
        (
            "reached_rank",
            Arc::new(reached.into_iter().collect::<Int64Array>()),
        ),
    ])
}

fn quotas(s: &State, keep: &dyn Fn(Day, Day) -> bool) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = s
        .quotas
        .values()
        .map(|v| &v.latest)
        .filter(|q| keep(q.period_start, q.period_end))
        .collect();
    batch(vec![
        ("rep_id", strs(rows.iter().map(|q| q.rep_id.as_str()))),
        ("period_start", dates(rows.iter().map(|q| q.period_start))),
        ("period_end", dates(rows.iter().map(|q| q.period_end))),
        ("amount", decimals(rows.iter().map(|q| q.amount), 18, 2)?),
        ("currency", strs(rows.iter().map(|q| q.currency.as_str()))),
        ("version", i64s(rows.iter().map(|q| q.version))),
        (
            "occurred_at",
            times(rows.iter().map(|q| Some(q.occurred_at))),
        ),
    ])
}

fn roster(s: &State) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = s.roster.values().map(|v| &v.latest).collect();
    batch(vec![
        ("rep_id", strs(rows.iter().map(|r| r.rep_id.as_str()))),
        ("version", i64s(rows.iter().map(|r| r.version))),
        (
            "occurred_at",
            times(rows.iter().map(|r| Some(r.occurred_at))),
        ),
        ("name", strs(rows.iter().map(|r| r.name.as_str()))),
        ("team_id", strs(rows.iter().map(|r| r.team_id.as_str()))),
        ("region", strs(rows.iter().map(|r| r.region.as_str()))),
        (
            "manager_id",
            opt_strs(rows.iter().map(|r| r.manager_id.as_deref())),
        ),
        ("role", opt_strs(rows.iter().map(|r| r.role.as_deref()))),
        ("hired_on", opt_dates(rows.iter().map(|r| r.hired_on))),
        (
            "active",
            Arc::new(
                rows.iter()
                    .map(|r| Some(r.active))
                    .collect::<BooleanArray>(),
            ),
        ),
        (
            "effective_from",
            opt_dates(rows.iter().map(|r| r.effective_from)),
        ),
    ])
}

/// The first day of every hierarchy range but the first of each rep that moved: the days its
/// place changed (`activity_parts` splits a period holding one after its first day).
pub(crate) fn range_starts(s: &State) -> std::collections::HashMap<u32, Vec<Day>> {
    s.roster
        .iter()
        .filter_map(|(rep, v)| {
            let starts: Vec<Day> = ranges(&v.history)
                .iter()
                .skip(1)
                .map(|r| r.valid_from)
                .collect();
            let rep = s.rep_ids.index.get(rep.as_str()).copied()?;
            (!starts.is_empty()).then_some((rep, starts))
        })
        .collect()
}

/// The (interned) reps with more than one place in the hierarchy.
pub(crate) fn moved_reps(s: &State) -> HashSet<u32> {
    range_starts(s).into_keys().collect()
}

/// The effective-dated hierarchy: per rep in the roster, the days each team and region held.
fn roster_ranges(s: &State) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<(&str, Range<'_>)> = s
        .roster
        .iter()
        .flat_map(|(rep, v)| {
            ranges(&v.history)
                .into_iter()
                .map(move |r| (rep.as_str(), r))
        })
        .collect();
    batch(vec![
        ("rep_id", strs(rows.iter().map(|(rep, _)| *rep))),
        ("valid_from", dates(rows.iter().map(|(_, r)| r.valid_from))),
        ("valid_to", dates(rows.iter().map(|(_, r)| r.valid_to))),
        ("team_id", strs(rows.iter().map(|(_, r)| r.team_id))),
        ("region", strs(rows.iter().map(|(_, r)| r.region))),
    ])
}

fn fx_rates(s: &State) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = s.fx.values().map(|v| &v.latest).collect();
    batch(vec![
        ("currency", strs(rows.iter().map(|f| f.currency.as_str()))),
        (
            "effective_date",
            dates(rows.iter().map(|f| f.effective_date)),
        ),
        (
            "rate_to_corporate",
            decimals(rows.iter().map(|f| f.rate_to_corporate), 28, RATE_SCALE)?,
        ),
        ("version", i64s(rows.iter().map(|f| f.version))),
        (
            "occurred_at",
            times(rows.iter().map(|f| Some(f.occurred_at))),
        ),
    ])
}

fn surveys(s: &State) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = s.surveys.values().collect();
    batch(vec![
        (
            "response_id",
            strs(rows.iter().map(|r| r.response_id.as_str())),
        ),
        (
            "occurred_at",
            times(rows.iter().map(|r| Some(r.occurred_at))),
        ),
        ("rep_id", strs(rows.iter().map(|r| r.rep_id.as_str()))),
        ("survey", strs(rows.iter().map(|r| r.survey.as_str()))),
        ("score", i64s(rows.iter().map(|r| r.score))),
        (
            "comment",
            opt_strs(rows.iter().map(|r| r.comment.as_deref())),
        ),
    ])
}

fn quality_counts(s: &State) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<(&str, &str, u64)> = s
        .quality
        .iter()
        .flat_map(|(topic, outcomes)| {
            outcomes
                .iter()
                .map(move |(outcome, n)| (topic.as_str(), outcome.as_str(), *n))
        })
        .collect();
    let counts = || rows.iter().copied();
    batch(vec![
        ("topic", strs(counts().map(|(t, _, _)| t))),
        ("reason", strs(counts().map(|(_, r, _)| r))),
        ("count", i64s(counts().map(|(_, _, c)| c as i64))),
    ])
}

fn dead_letter_log(s: &State) -> Result<RecordBatch, ArrowError> {
    let payloads: Vec<(String, &str)> = s
        .dead_letters
        .iter()
        .map(|d| crate::source::payload_text(&d.payload))
        .collect();
    batch(vec![
        (
            "topic",
            strs(s.dead_letters.iter().map(|d| d.topic.as_str())),
        ),
        (
            "partition",
            Arc::new(
                s.dead_letters
                    .iter()
                    .map(|d| d.partition)
                    .collect::<Int32Array>(),
            ),
        ),
        ("offset", i64s(s.dead_letters.iter().map(|d| d.offset))),
        (
            "reason",
            strs(s.dead_letters.iter().map(|d| d.reason.as_str())),
        ),
        (
            "detail",
            strs(s.dead_letters.iter().map(|d| d.detail.as_str())),
        ),
        ("payload", strs(payloads.iter().map(|(p, _)| p.as_str()))),
        ("payload_encoding", strs(payloads.iter().map(|(_, e)| *e))),
    ])
}

fn rep_first_deal(s: &State) -> Result<RecordBatch, ArrowError> {
    batch(vec![
        ("rep_id", strs(s.rep_first_deal.keys().map(SmolStr::as_str))),
        (
            "first_deal_at",
            times(s.rep_first_deal.values().map(|t| Some(*t))),
        ),
    ])
}

/// Every rep any fact or entity of the state names.
fn rep_ids(s: &State) -> Result<RecordBatch, ArrowError> {
    batch(vec![(
        "rep_id",
        strs(s.rep_ids.names.iter().map(String::as_str)),
    )])
}

/// The first and last day of each rep's activities, over the whole history.
fn rep_activity(s: &State) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = s.activity_span.iter().collect();
    batch(vec![
        (
            "rep_id",
            strs(rows.iter().map(|(r, _)| s.rep_ids.name(**r))),
        ),
        ("first_day", dates(rows.iter().map(|(_, (a, _))| *a))),
        ("last_day", dates(rows.iter().map(|(_, (_, b))| *b))),
    ])
}

/// The `alerts` table: every lifecycle the book holds (the firing ones and those resolved in
/// a month the event clock has not left), with `resolved_month`, the first day of the month
/// (`month_of`) it resolved in, NULL while firing: the column the table is partitioned by.
pub fn alerts(
    book: &crate::alert::AlertBook,
    month_of: impl Fn(Micros) -> Day,
) -> Result<RecordBatch, ArrowError> {
    let rows: Vec<_> = book.iter().collect();
    batch(vec![
        ("rule", strs(rows.iter().map(|a| a.rule.as_str()))),
        ("key", strs(rows.iter().map(|a| a.key.as_str()))),
        ("severity", strs(rows.iter().map(|a| a.severity.as_str()))),
        (
            "state",
            strs(
                rows.iter()
                    .map(|a| if a.firing { "firing" } else { "resolved" }),
            ),
        ),
        (
            "value",
            Arc::new(rows.iter().map(|a| a.value).collect::<Float64Array>()),
        ),
        ("message", strs(rows.iter().map(|a| a.message.as_str()))),
        ("alert_id", strs(rows.iter().map(|a| a.alert_id.as_str()))),
        ("fired_at", times(rows.iter().map(|a| a.fired_at))),
        ("resolved_at", times(rows.iter().map(|a| a.resolved_at))),
        (
            "resolved_month",
            opt_dates(rows.iter().map(|a| a.resolved_at.map(&month_of))),
        ),
        (
            "fired_snapshot",
            i64s(rows.iter().map(|a| a.fired_snapshot as i64)),
        ),
        (
            "resolved_snapshot",
            Arc::new(
                rows.iter()
                    .map(|a| a.resolved_snapshot.map(|v| v as i64))
                    .collect::<Int64Array>(),
            ),
        ),
    ])
}

/// The `alert_deliveries` table: per Kafka or webhook target, events delivered, failed
/// attempts (each retried) and events still in the outbox.
pub fn alert_deliveries(s: &State) -> Result<RecordBatch, ArrowError> {
    let mut targets: std::collections::BTreeSet<&str> =
        s.deliveries.keys().map(String::as_str).collect();
    targets.extend(s.outbox.iter().map(|o| o.target.as_str()));
    let count = |t: &str| s.deliveries.get(t).copied().unwrap_or_default();
    batch(vec![
        ("target", strs(targets.iter().copied())),
        (
            "delivered",
            i64s(targets.iter().map(|t| count(t).delivered as i64)),
        ),
        (
            "failed_attempts",
            i64s(targets.iter().map(|t| count(t).failed_attempts as i64)),
        ),
        (
            "pending",
            i64s(
                targets
                    .iter()
                    .map(|t| s.outbox.iter().filter(|o| o.target == *t).count() as i64),
            ),
        ),
    ])
}
