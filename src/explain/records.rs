//! The tables of records and counters: `rep_daily` (a rep-day's counters and the offsets its
//! activities were read from), `leaderboard` (points by weight × count), `deals_current`
//! (every message received about the deal, in order) and `data_quality` (the dead letters,
//! duplicates and unconverted amounts behind a count).

use super::figures::{deal_input, deals, Period, Rates};
use super::members::{Entity, Level};
use super::{cents, day_text, Ctx, Input, Keys, Traced, Value};
use crate::error::ExplainError;
use crate::event::schema::EventType;
use crate::event::{Day, Stage};
use crate::state::{DailyCounts, Received};

pub(super) fn trace(
    ctx: &Ctx<'_>,
    table: &str,
    keys: &Keys<'_>,
    column: &str,
) -> Result<Traced, ExplainError> {
    let untraced = || ExplainError::Untraced {
        table: table.into(),
        column: column.into(),
    };
    match table {
        "rep_daily" => rep_daily(ctx, keys, column).ok_or_else(untraced),
        "leaderboard" => leaderboard(ctx, keys, column),
        "deals_current" => deal(ctx, keys, column)?.ok_or_else(untraced),
        _ => data_quality(ctx, keys),
    }
}

/// A counter of the rep × day grain by its published column name.
fn counter(c: &DailyCounts, column: &str) -> Option<i64> {
    Some(match column {
        "calls" => c.calls.into(),
        "emails" => c.emails.into(),
        "meetings" => c.meetings.into(),
        "webinars" => c.webinars.into(),
        "demos" => c.demos.into(),
        "tasks" => c.tasks.into(),
        "activities" => c.activities.into(),
        "call_seconds" => c.call_seconds,
        "connected_calls" => c.connected_calls.into(),
        "replied_emails" => c.replied_emails.into(),
        "meetings_held" => c.meetings_held.into(),
        "demos_held" => c.demos_held.into(),
        _ => return None,
    })
}

/// The offsets the activities of `rep` on `day` were read from, one input per partition.
fn activity_ranges(ctx: &Ctx<'_>, rep: u32, day: Day) -> Vec<Input> {
    let topic = ctx.topic(EventType::Activity);
    let name = ctx.state.rep_ids.name(rep);
    let Some(cell) = ctx.state.daily.get(&(rep, day)) else {
        return Vec::new();
    };
    cell.from
        .all()
        .into_iter()
        .map(|s| {
            let mut i = Input::new(
                "activities",
                topic,
                Some(crate::state::Origin {
                    partition: s.partition,
                    offset: s.first,
                }),
                format!("{name} {}", day_text(day)),
            )
            .field("rep_id", name)
            .field("day", day_text(day));
            i.last_offset = Some(s.last);
            i
        })
        .collect()
}

fn rep_daily(ctx: &Ctx<'_>, keys: &Keys<'_>, column: &str) -> Option<Traced> {
    let rep = keys.get("rep_id").ok()?;
    let day = keys.day("day").ok()?;
    let id = ctx.state.rep_ids.find(rep)?;
    let cell = &ctx.state.daily.get(&(id, day))?.counts;
    let n = counter(cell, column)?;
    let inputs = activity_ranges(ctx, id, day);
    let mut t = Traced {
        value: Some(Value::Int(n)),
        ..Traced::default()
    };
    t.arithmetic.push(format!(
        "{column} = {n}: the activities of {rep} on {} (day in the pipeline's time zone), each event_id counted once",
        day_text(day)
    ));
    for i in &inputs {
        t.arithmetic.push(format!(
            "  read from {} partition {} offsets {}..={} (the range also holds other reps' activities and resent copies, counted as duplicates)",
            i.topic,
            i.partition.unwrap_or(0),
            i.offset.unwrap_or(0),
            i.last_offset.unwrap_or(0)
        ));
    }
    t.inputs = inputs;
    Some(t)
}

fn leaderboard(ctx: &Ctx<'_>, keys: &Keys<'_>, column: &str) -> Result<Traced, ExplainError> {
    let untraced = || ExplainError::Untraced {
        table: "leaderboard".into(),
        column: column.into(),
    };
    if column != "points" {
        return Err(untraced());
    }
    let period = Period::of(ctx, keys)?;
    let rep = keys.get("rep_id")?;
    let mut c = DailyCounts::default();
    let mut inputs = Vec::new();
    if let Some(id) = ctx.state.rep_ids.find(rep) {
        for day in period.start..=period.end {
            if let Some(cell) = ctx.state.daily.get(&(id, day)).map(|c| &c.counts) {
                c.absorb(cell);
                inputs.extend(activity_ranges(ctx, id, day).into_iter().map(|i| {
                    let calls = cell.calls;
                    i.field(
                        "counted",
                        format!("{} activities, {calls} calls", cell.activities),
                    )
                }));
            }
        }
    }
    let e = Entity {
        level: Level::Rep,
        id: rep,
    };
    let won: Vec<_> = deals(ctx, e, &period)
        .into_iter()
        .filter(|d| d.won)
        .collect();
    let won_amount: i128 = won.iter().filter_map(|d| d.corporate).sum();
    let w = &ctx.metrics.leaderboard;
    let n = |x: u32| f64::from(x);
    // The SQL's order of operations, so the DOUBLE comes out bit for bit the same.
    let points = n(c.calls) * w.calls
        + n(c.emails) * w.emails
        + n(c.meetings_held) * w.meetings_held
        + n(c.demos_held) * w.demos_held
        + n(c.webinars) * w.webinars
        + n(c.tasks) * w.tasks
        + won.len() as f64 * w.won_deals
        + (won_amount as f64 / 100.0) / 1000.0 * w.per_1000_won;
    let mut t = Traced {
        value: Some(Value::Double(points)),
        ..Traced::default()
    };
    t.arithmetic = vec![
        format!("calls          {:>8} × {}", c.calls, w.calls),
        format!("emails         {:>8} × {}", c.emails, w.emails),
        format!(
            "meetings_held  {:>8} × {}",
            c.meetings_held, w.meetings_held
        ),
        format!(
            "demos_held     {:>8} × {} (on top of meetings_held)",
            c.demos_held, w.demos_held
        ),
        format!("webinars       {:>8} × {}", c.webinars, w.webinars),
        format!("tasks          {:>8} × {}", c.tasks, w.tasks),
        format!("won deals      {:>8} × {}", won.len(), w.won_deals),
        format!(
            "won amount {:>12} / 1000 × {}",
            cents(won_amount),
            w.per_1000_won
        ),
        format!("points = Σ weight × count = {points}"),
    ];
    let mut rates = Rates::default();
    for d in &won {
        t.inputs.push(deal_input(ctx, d));
        rates.note(ctx, d.rate.as_ref());
    }
    t.inputs.extend(rates.inputs());
    t.inputs.extend(inputs);
    Ok(t)
}

/// One message received about a deal, as an input.
fn received(ctx: &Ctx<'_>, key: &str, r: &Received, stage: Option<(Stage, i64)>) -> Input {
    let mut i = Input::received("deal", ctx.topic(EventType::Deal), key.to_string(), r);
    if let Some((s, at)) = stage {
        i = i.field("stage", s.as_str()).field(
            "occurred_at",
            chrono::DateTime::from_timestamp_micros(at).map_or(at.to_string(), |d| d.to_rfc3339()),
        );
    }
    i
}

fn deal(ctx: &Ctx<'_>, keys: &Keys<'_>, column: &str) -> Result<Option<Traced>, ExplainError> {
    let id = keys.get("deal_id")?;
    let Some(v) = ctx.state.deals.get(id) else {
        return Ok(None);
    };
    let l = &v.latest;
    let (corporate, rate) = ctx.to_corporate(l.amount, &l.currency, l.close_date);
    let value = match column {
        "amount_corporate" => corporate.map_or(Value::Null, Value::Money),
        "amount" => {
            let mut a = l.amount;
            a.rescale(2);
            Value::Money(a.mantissa())
        }
        "stage" => Value::Text(l.stage.as_str().into()),
        "version" => Value::Int(v.latest_version),
        "close_date" => Value::Text(day_text(l.close_date)),
        "rep_id" => Value::Text(l.rep_id.to_string()),
        _ => return Ok(None),
    };
    let mut t = Traced {
        value: Some(value),
        ..Traced::default()
    };
    t.arithmetic.push(format!(
        "the latest of {} versions received is version {} (the highest version wins, whatever the order of arrival)",
        v.history.len(),
        v.latest_version
    ));
    if column == "amount_corporate" {
        let r = rate.map_or("no rate in force: NULL".to_string(), |r| {
            crate::explain::decimal(r.mantissa, crate::event::RATE_SCALE)
        });
        t.arithmetic.push(format!(
            "amount_corporate = {} {} × {r} (rate in force on close_date {}), half-even to cents = {}",
            l.amount,
            l.currency,
            day_text(l.close_date),
            corporate.map_or("NULL".into(), cents)
        ));
    }
    for r in &v.received {
        let stage = v
            .history
            .iter()
            .find(|(version, _)| *version == r.version)
            .map(|(_, h)| *h);
        let mut i = received(ctx, id, r, stage);
        if r.version == v.latest_version && r.arrival == crate::state::Arrival::Applied {
            i = i
                .field("amount", l.amount)
                .field("currency", &l.currency)
                .field("close_date", day_text(l.close_date))
                .field("rep_id", &l.rep_id);
        }
        t.inputs.push(i);
    }
    if let Some(i) = rate.as_ref().and_then(|r| ctx.fx_input(r)) {
        t.inputs.push(i);
    }
    Ok(Some(t))
}

fn data_quality(ctx: &Ctx<'_>, keys: &Keys<'_>) -> Result<Traced, ExplainError> {
    let topic = keys.get("topic")?;
    let reason = keys.get("reason")?;
    let s = ctx.state;
    let mut t = Traced::default();
    let kind_of = |e: EventType| ctx.topic(e) == topic;
    if reason == "unconverted" {
        let mut inputs = Vec::new();
        if kind_of(EventType::Deal) {
            for v in s.deals.values() {
                let l = &v.latest;
                if ctx
                    .to_corporate(l.amount, &l.currency, l.close_date)
                    .0
                    .is_none()
                {
                    let mut i = Input::new(
                        "deal",
                        topic,
                        v.origin_of(v.latest_version),
                        l.deal_id.to_string(),
                    )
                    .field("currency", &l.currency)
                    .field("close_date", day_text(l.close_date));
                    i.version = Some(v.latest_version);
                    inputs.push(i);
                }
            }
        }
        if kind_of(EventType::Quota) {
            for v in s.quotas.values() {
                let q = &v.latest;
                if ctx
                    .to_corporate(q.amount, &q.currency, q.period_start)
                    .0
                    .is_none()
                {
                    let key = format!("{} {}", q.rep_id, day_text(q.period_start));
                    let mut i = Input::new("quota", topic, v.origin_of(v.latest_version), key)
                        .field("currency", &q.currency)
                        .field("period_start", day_text(q.period_start));
                    i.version = Some(v.latest_version);
                    inputs.push(i);
                }
            }
        }
        inputs.sort_by(|a, b| a.key.cmp(&b.key));
        let n = inputs.len() as i64;
        t.value = Some(Value::Int(n));
        t.arithmetic.push(format!(
            "count = {n} latest versions on {topic} whose amount has no fx rate in force (deals on their close_date, quota records on their period_start)"
        ));
        t.inputs = inputs;
        return Ok(t);
    }
    let n = s
        .quality
        .get(topic)
        .and_then(|o| o.get(reason))
        .copied()
        .unwrap_or(0);
    t.value = Some(Value::Int(n as i64));
    let mut inputs: Vec<Input> = s
        .dead_letters
        .iter()
        .filter(|d| d.topic == topic && d.reason == reason)
        .map(|d| {
            Input::new(
                "dead_letter",
                topic,
                Some(crate::state::Origin {
                    partition: d.partition,
                    offset: d.offset,
                }),
                format!("{}:{}", d.partition, d.offset),
            )
            .field("reason", &d.reason)
            .field("detail", &d.detail)
        })
        .collect();
    let logged = inputs.len();
    // Entity messages that changed nothing are kept on the entity.
    if matches!(reason, "duplicate" | "late") {
        let mut add = |kind: &'static str, key: String, rs: &[Received]| {
            for r in rs.iter().filter(|r| r.arrival.as_str() == reason) {
                let i = Input::received(kind, topic, key.clone(), r);
                if !inputs
                    .iter()
                    .any(|x| x.partition == i.partition && x.offset == i.offset)
                {
                    inputs.push(i);
                }
            }
        };
        if kind_of(EventType::Deal) {
            s.deals
                .iter()
                .for_each(|(k, v)| add("deal", k.to_string(), &v.received));
        }
        if kind_of(EventType::Quota) {
            s.quotas
                .iter()
                .for_each(|((r, d), v)| add("quota", format!("{r} {}", day_text(*d)), &v.received));
        }
        if kind_of(EventType::FxRate) {
            s.fx.iter().for_each(|((c, d), v)| {
                add("fx_rate", format!("{c} {}", day_text(*d)), &v.received)
            });
        }
        if kind_of(EventType::Rep) {
            s.roster
                .iter()
                .for_each(|(k, v)| add("roster", k.clone(), &v.received));
        }
    }
    inputs.sort_by_key(|i| (i.partition, i.offset));
    t.arithmetic.push(format!(
        "count = {n} messages of {topic} counted as `{reason}`"
    ));
    if logged > 0 || reason != "ok" {
        t.arithmetic.push(format!(
            "  {logged} of them are in the snapshot's dead-letter log (it keeps the most recent; the dead-letter topic has every one), {} known on the entities they were about",
            inputs.len() - logged
        ));
    }
    t.inputs = inputs;
    Ok(t)
}
