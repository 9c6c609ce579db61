//! The deal and quota figures of `attainment`, `forecast`, `win_rates` and `commissions`,
//! recomputed from the state as the SQL computes them (`sql/deals_by_period.sql`,
//! `sql/quota_parts.sql` and the tables on them): deals by the fiscal period of their
//! `close_date` and their owner's place that day, converted at the rate in force on it; quota
//! records prorated by days onto the period and the days the rep belonged to the entity,
//! exact to 12 decimals; every sum rounded half-even to cents once, at the end.

use std::collections::BTreeMap;

use super::members::{Entity, Level};
use super::{cents, day_text, decimal, Contribution, Ctx, Input, Keys, Rate, Traced, Value};
use crate::calendar::PeriodType;
use crate::engine::udf::{div_half_even, rescale};
use crate::error::ExplainError;
use crate::event::schema::EventType;
use crate::event::{Day, Deal, Quota, Stage, RATE_SCALE};
use crate::state::{DealVersion, Versioned};

/// A fiscal period.
#[derive(Debug, Clone, Copy)]
pub(super) struct Period {
    pub start: Day,
    pub end: Day,
}

impl Period {
    pub fn of(ctx: &Ctx<'_>, keys: &Keys<'_>) -> Result<Period, ExplainError> {
        let name = keys.get("period_type").unwrap_or("quarter");
        let ptype = PeriodType::parse(name).ok_or_else(|| ExplainError::Key {
            key: "period_type".into(),
            message: format!("`{name}` is not month, quarter or year"),
        })?;
        let start = keys.day("period_start")?;
        let cal = &ctx.metrics.calendar;
        if cal.period_start(ptype, start) != start {
            return Err(ExplainError::Key {
                key: "period_start".into(),
                message: format!("{} does not start a fiscal {name}", day_text(start)),
            });
        }
        Ok(Period {
            start,
            end: cal.period_end(ptype, start),
        })
    }

    fn holds(&self, d: Day) -> bool {
        self.start <= d && d <= self.end
    }

    fn days(&self) -> i64 {
        i64::from(self.end - self.start + 1)
    }
}

/// A deal of the row (closing in the period, its owner in the entity that day).
pub(super) struct DealIn<'s> {
    pub v: &'s Versioned<Deal, DealVersion>,
    pub corporate: Option<i128>,
    pub rate: Option<Rate<'s>>,
    pub category: String,
    pub probability: f64,
    pub closed: bool,
    pub won: bool,
}

/// One quota record prorated onto the period and one range of days the rep belonged to the
/// entity.
pub(super) struct QuotaPart<'s> {
    v: &'s Versioned<Quota>,
    from: Day,
    to: Day,
    overlap: i64,
    days: i64,
    corporate: Option<i128>,
    rate: Option<Rate<'s>>,
    /// At scale 12.
    part: Option<i128>,
}

/// What a row's deals and quota records add up to (for the entity, or one of its reps).
#[derive(Debug, Clone, Default)]
pub(super) struct Sums {
    /// Σ quota parts at scale 12; `None` when no part converts.
    quota: Option<i128>,
    pub won: i64,
    lost: i64,
    open: i64,
    /// Cents.
    pub closed_won: i128,
    cycle_days: i64,
    commit: i128,
    best_case: i128,
    pipeline: i128,
    /// At scale 8 (amount × probability to 6 decimals).
    weighted: i128,
}

const PRORATE_SHIFT: u32 = 10; // 12 − the 2 decimals of money

impl Sums {
    fn add_deal(&mut self, d: &DealIn<'_>, ctx: &Ctx<'_>) {
        let c = d.corporate;
        if d.won {
            self.won += 1;
            self.closed_won += c.unwrap_or(0);
            let created = ctx.metrics.calendar.day_of(d.v.latest.created_at);
            self.cycle_days += i64::from(d.v.latest.close_date - created);
        } else if d.closed {
            self.lost += 1;
        } else {
            self.open += 1;
            let c = c.unwrap_or(0);
            match d.category.as_str() {
                "commit" => self.commit += c,
                "best_case" => self.best_case += c,
                "pipeline" => self.pipeline += c,
                _ => {}
            }
            if d.category != "omitted" {
                let p6 = (1e6 * d.probability).round() as i128;
                self.weighted += c * p6;
            }
        }
    }

    fn add_quota(&mut self, q: &QuotaPart<'_>) {
        if let Some(p) = q.part {
            self.quota = Some(self.quota.unwrap_or(0) + p);
        }
    }

    /// The quota, rounded to cents.
    fn quota_cents(&self) -> Option<i128> {
        self.quota.map(|q| rescale(q, 12, 2))
    }

    fn ratio(a: i128, b: Option<i128>) -> Value {
        match b {
            Some(b) if b != 0 => Value::Double((a as f64 / 100.0) / (b as f64 / 100.0)),
            _ => Value::Null,
        }
    }

    fn count_ratio(a: i64, b: i64) -> Value {
        if b == 0 {
            Value::Null
        } else {
            Value::Double(a as f64 / b as f64)
        }
    }

    /// Column `column` of this row, with the arithmetic that gives it.
    fn figure(&self, column: &str, elapsed: i64, period_days: i64) -> Option<(Value, String)> {
        let m = Value::Money;
        let q = self.quota_cents();
        let qt = q.map_or("NULL".to_string(), cents);
        let cw = cents(self.closed_won);
        let commit_fc = self.closed_won + self.commit;
        let weighted = rescale(self.weighted, 8, 2);
        Some(match column {
            "quota" => (
                q.map_or(Value::Null, m),
                match self.quota {
                    Some(s) => format!("quota = money(Σ parts {}) = {qt}", decimal(s, 12)),
                    None => "quota = NULL (no overlapping quota record converts)".into(),
                },
            ),
            "closed_won" | "won_amount" => (
                m(self.closed_won),
                format!("{column} = Σ amount_corporate of {} won deals = {cw}", self.won),
            ),
            "attainment" => (
                Sums::ratio(self.closed_won, q),
                format!("attainment = closed_won / quota = {cw} / {qt}"),
            ),
            "gap_to_quota" => (
                q.map_or(Value::Null, |q| m(q - self.closed_won)),
                format!("gap_to_quota = quota − closed_won = {qt} − {cw}"),
            ),
            "expected_to_date" => (
                q.map_or(Value::Null, |q| {
                    let x = div_half_even(q * i128::from(elapsed) * 10i128.pow(PRORATE_SHIFT), i128::from(period_days));
                    m(rescale(x, 12, 2))
                }),
                format!("expected_to_date = quota × elapsed_days / period_days = {qt} × {elapsed} / {period_days}"),
            ),
            "commit" => (m(self.commit), format!("commit = Σ amount_corporate of open commit deals = {}", cents(self.commit))),
            "best_case" => (m(self.best_case), format!("best_case = Σ amount_corporate of open best_case deals = {}", cents(self.best_case))),
            "pipeline" => (m(self.pipeline), format!("pipeline = Σ amount_corporate of open pipeline deals = {}", cents(self.pipeline))),
            "commit_forecast" => (
                m(commit_fc),
                format!("commit_forecast = closed_won + commit = {cw} + {}", cents(self.commit)),
            ),
            "best_case_forecast" => (
                m(commit_fc + self.best_case),
                format!("best_case_forecast = closed_won + commit + best_case = {cw} + {} + {}", cents(self.commit), cents(self.best_case)),
            ),
            "open_pipeline" => (
                m(self.commit + self.best_case + self.pipeline),
                format!("open_pipeline = commit + best_case + pipeline = {} + {} + {}", cents(self.commit), cents(self.best_case), cents(self.pipeline)),
            ),
            "weighted_pipeline" => (
                m(weighted),
                format!("weighted_pipeline = money(Σ amount_corporate × probability of open deals) = money({})", decimal(self.weighted, 8)),
            ),
            "weighted_forecast" => (
                m(self.closed_won + weighted),
                format!("weighted_forecast = closed_won + weighted_pipeline = {cw} + money({})", decimal(self.weighted, 8)),
            ),
            "won_count" => (Value::Int(self.won), format!("won_count = {} deals won", self.won)),
            "lost_count" => (Value::Int(self.lost), format!("lost_count = {} deals lost", self.lost)),
            "open_deals" => (Value::Int(self.open), format!("open_deals = {} open deals closing in the period", self.open)),
            "win_rate" => (
                Sums::count_ratio(self.won, self.won + self.lost),
                format!("win_rate = won / (won + lost) = {} / ({} + {})", self.won, self.won, self.lost),
            ),
            "avg_deal_size" => (
                if self.won == 0 {
                    Value::Null
                } else {
                    let x = div_half_even(self.closed_won * 10i128.pow(PRORATE_SHIFT), i128::from(self.won));
                    m(rescale(x, 12, 2))
                },
                format!("avg_deal_size = won_amount / won_count = {cw} / {}", self.won),
            ),
            "avg_cycle_days" => (
                Sums::count_ratio(self.cycle_days, self.won),
                format!("avg_cycle_days = Σ (close_date − day(created_at)) / won_count = {} / {}", self.cycle_days, self.won),
            ),
            _ => return None,
        })
    }

    /// The additive figure a rep brings to `column` of a team, region or company row.
    fn basis(column: &str) -> &str {
        match column {
            "attainment" | "gap_to_quota" | "won_amount" | "avg_deal_size" => "closed_won",
            "expected_to_date" => "quota",
            "win_rate" | "avg_cycle_days" => "won_count",
            c => c,
        }
    }
}

/// The deals of `e`'s row of `period`.
pub(super) fn deals<'s>(ctx: &Ctx<'s>, e: Entity<'_>, period: &Period) -> Vec<DealIn<'s>> {
    let mut out = Vec::new();
    for v in ctx.state.deals.values() {
        let d = &v.latest;
        if !period.holds(d.close_date) || !ctx.hierarchy.holds(e, &d.rep_id, d.close_date) {
            continue;
        }
        let Some(rule) = ctx.metrics.stages.iter().find(|s| s.stage == d.stage) else {
            continue; // the SQL joins the stage table
        };
        let (corporate, rate) = ctx.to_corporate(d.amount, &d.currency, d.close_date);
        out.push(DealIn {
            v,
            corporate,
            rate,
            category: d
                .forecast_category
                .as_deref()
                .unwrap_or(&rule.forecast_category)
                .to_string(),
            probability: d.probability.unwrap_or(rule.probability),
            closed: matches!(d.stage, Stage::ClosedWon | Stage::ClosedLost),
            won: d.stage == Stage::ClosedWon,
        });
    }
    out.sort_by(|a, b| {
        b.corporate
            .cmp(&a.corporate)
            .then_with(|| a.v.latest.deal_id.cmp(&b.v.latest.deal_id))
    });
    out
}

/// The quota records of `e`'s row of `period`, prorated.
fn quota_parts<'s>(ctx: &Ctx<'s>, e: Entity<'_>, period: &Period) -> Vec<QuotaPart<'s>> {
    let mut out = Vec::new();
    for v in ctx.state.quotas.values() {
        let q = &v.latest;
        if q.period_start > period.end || q.period_end < period.start {
            continue;
        }
        for (a, b) in ctx.hierarchy.member_ranges(e, &q.rep_id) {
            let from = q.period_start.max(period.start).max(a);
            let to = q.period_end.min(period.end).min(b);
            if from > to {
                continue;
            }
            let (corporate, rate) = ctx.to_corporate(q.amount, &q.currency, q.period_start);
            let overlap = i64::from(to - from + 1);
            let days = i64::from(q.period_end - q.period_start + 1);
            let part = corporate.and_then(|c| {
                let top = c
                    .checked_mul(i128::from(overlap))?
                    .checked_mul(10i128.pow(PRORATE_SHIFT))?;
                (days != 0).then(|| div_half_even(top, i128::from(days)))
            });
            out.push(QuotaPart {
                v,
                from,
                to,
                overlap,
                days,
                corporate,
                rate,
                part,
            });
        }
    }
    out.sort_by(|a, b| {
        b.part
            .cmp(&a.part)
            .then_with(|| a.v.latest.rep_id.cmp(&b.v.latest.rep_id))
    });
    out
}

/// The fx rates the amounts of a figure were converted at, each listed once, after the
/// deals and quota records that used them.
#[derive(Default)]
pub(super) struct Rates(BTreeMap<String, Input>);

impl Rates {
    pub(super) fn note(&mut self, ctx: &Ctx<'_>, rate: Option<&Rate<'_>>) {
        if let Some(i) = rate.and_then(|r| ctx.fx_input(r)) {
            self.0.insert(i.key.clone(), i);
        }
    }

    pub(super) fn inputs(self) -> impl Iterator<Item = Input> {
        self.0.into_values()
    }
}

/// The input of a deal of a row.
pub(super) fn deal_input(ctx: &Ctx<'_>, d: &DealIn<'_>) -> Input {
    let l = &d.v.latest;
    let mut i = Input::new(
        "deal",
        ctx.topic(EventType::Deal),
        d.v.origin_of(d.v.latest_version),
        l.deal_id.to_string(),
    )
    .field("rep_id", &l.rep_id)
    .field("stage", l.stage.as_str())
    .field("amount", l.amount)
    .field("currency", &l.currency)
    .field("close_date", day_text(l.close_date));
    i.version = Some(d.v.latest_version);
    if !d.closed {
        i = i
            .field("forecast_category", &d.category)
            .field("probability", d.probability);
    }
    i = i.rate_field(d.rate);
    i = i.field(
        "amount_corporate",
        d.corporate
            .map_or("NULL (no fx rate in force)".into(), cents),
    );
    i.adds = d.corporate.map(cents);
    i
}

fn quota_input(ctx: &Ctx<'_>, p: &QuotaPart<'_>) -> Input {
    let q = &p.v.latest;
    let mut i = Input::new(
        "quota",
        ctx.topic(EventType::Quota),
        p.v.origin_of(p.v.latest_version),
        format!("{} {}", q.rep_id, day_text(q.period_start)),
    )
    .field("rep_id", &q.rep_id)
    .field("amount", q.amount)
    .field("currency", &q.currency)
    .field("period_start", day_text(q.period_start))
    .field("period_end", day_text(q.period_end))
    .field(
        "amount_corporate",
        p.corporate
            .map_or("NULL (no fx rate in force)".into(), cents),
    )
    .field(
        "proration",
        format!(
            "{} days ({}..{}) of {}",
            p.overlap,
            day_text(p.from),
            day_text(p.to),
            p.days
        ),
    );
    i = i.rate_field(p.rate);
    i.version = Some(p.v.latest_version);
    i.adds = p.part.map(|x| decimal(x, 12));
    i
}

/// Traces `column` of the row of `table` (`attainment`, `forecast`, `win_rates`,
/// `commissions`) that `keys` name.
pub(super) fn trace(
    ctx: &Ctx<'_>,
    table: &str,
    keys: &Keys<'_>,
    column: &str,
) -> Result<Traced, ExplainError> {
    let period = Period::of(ctx, keys)?;
    let (level, id) = if table == "commissions" {
        (Level::Rep, keys.get("rep_id")?)
    } else {
        let l = keys.get("level")?;
        let level = Level::parse(l).ok_or_else(|| ExplainError::Key {
            key: "level".into(),
            message: format!("`{l}` is not rep, team, region or company"),
        })?;
        (level, keys.get("entity_id")?)
    };
    let e = Entity { level, id };
    let deals = deals(ctx, e, &period);
    let quotas = quota_parts(ctx, e, &period);
    let mut total = Sums::default();
    let mut per_rep: BTreeMap<&str, Sums> = BTreeMap::new();
    for d in &deals {
        total.add_deal(d, ctx);
        per_rep
            .entry(d.v.latest.rep_id.as_str())
            .or_default()
            .add_deal(d, ctx);
    }
    for q in &quotas {
        total.add_quota(q);
        per_rep
            .entry(q.v.latest.rep_id.as_str())
            .or_default()
            .add_quota(q);
    }
    let elapsed = ctx.as_of_date.map_or(0, |today| {
        i64::from(today - period.start + 1).clamp(0, period.days())
    });
    let mut t = Traced::default();
    let wanted = if table == "commissions" && column == "payout" {
        "attainment"
    } else {
        column
    };
    let Some((value, line)) = total.figure(wanted, elapsed, period.days()) else {
        return Err(ExplainError::Untraced {
            table: table.into(),
            column: column.into(),
        });
    };
    // What the figure is made of, then the figure.
    for part in ["quota", "closed_won"] {
        if wanted != part && matches!(wanted, "attainment" | "gap_to_quota" | "expected_to_date") {
            if let Some((_, l)) = total.figure(part, elapsed, period.days()) {
                t.arithmetic.push(l);
            }
        }
    }
    let counts = |d: &DealIn<'_>| match column {
        "closed_won" | "won_amount" | "won_count" | "avg_deal_size" | "avg_cycle_days" => d.won,
        "lost_count" => d.closed && !d.won,
        "win_rate" => d.closed,
        "open_deals" | "open_pipeline" | "weighted_pipeline" => !d.closed,
        "commit" => !d.closed && d.category == "commit",
        "best_case" => !d.closed && d.category == "best_case",
        "pipeline" => !d.closed && d.category == "pipeline",
        "commit_forecast" => d.won || (!d.closed && d.category == "commit"),
        "best_case_forecast" => {
            d.won || (!d.closed && matches!(d.category.as_str(), "commit" | "best_case"))
        }
        "weighted_forecast" => d.won || (!d.closed && d.category != "omitted"),
        "quota" | "expected_to_date" => false,
        _ => d.won,
    };
    // A rep's deals, each converted once.
    if level == Level::Rep {
        for d in deals.iter().filter(|d| counts(d)) {
            let l = &d.v.latest;
            let rate = d
                .rate
                .map_or("no rate".into(), |r| decimal(r.mantissa, RATE_SCALE));
            let c = d.corporate.map_or("NULL".into(), cents);
            t.arithmetic.push(format!(
                "  {}: {} {} × {rate} (in force on {}) = {c}",
                l.deal_id,
                l.amount,
                l.currency,
                day_text(l.close_date)
            ));
        }
    }
    t.arithmetic.push(format!(
        "{line} = {}",
        value.text().unwrap_or("NULL".into())
    ));
    t.value = Some(value);
    if table == "commissions" && column == "payout" {
        super::commission::trace(ctx, total.quota_cents(), total.closed_won, &mut t);
    }
    // Inputs: the deals and quota records that count toward the column, then the fx rates
    // they were converted at.
    let uses_quota = matches!(
        column,
        "quota" | "attainment" | "gap_to_quota" | "expected_to_date" | "payout"
    );
    let mut rates = Rates::default();
    for d in deals.iter().filter(|d| counts(d)) {
        t.inputs.push(deal_input(ctx, d));
        rates.note(ctx, d.rate.as_ref());
    }
    if uses_quota {
        for q in &quotas {
            t.inputs.push(quota_input(ctx, q));
            rates.note(ctx, q.rate.as_ref());
        }
    }
    t.inputs.extend(rates.inputs());
    if level != Level::Rep {
        let basis = Sums::basis(wanted);
        for (rep, s) in &per_rep {
            let Some((v, _)) = s.figure(basis, elapsed, period.days()) else {
                continue;
            };
            let key = match &v {
                Value::Money(c) => *c as f64,
                Value::Int(n) => *n as f64,
                Value::Double(x) => *x,
                _ => f64::NEG_INFINITY,
            };
            let detail = format!(
                "closed_won {} of {} won deals, quota {}",
                cents(s.closed_won),
                s.won,
                s.quota_cents().map_or("NULL".into(), cents)
            );
            t.contributions.push((
                key,
                Contribution {
                    rep_id: rep.to_string(),
                    column: basis.to_string(),
                    value: v.text(),
                    detail,
                },
            ));
        }
    }
    Ok(t)
}
