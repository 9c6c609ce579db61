//! Scalar functions the SQL files call where plain SQL cannot be exact or does not know the
//! pipeline's calendar: money rounding (half-even), exact proration, fx conversion at the rate
//! in force, fiscal periods and days in the pipeline's time zone; and `ratio`, the one spelling
//! of a DOUBLE share that is NULL rather than infinite over zero.
//!
//! | function | returns | what |
//! |---|---|---|
//! | `money(x)` | DECIMAL(18,2) | any decimal or integer rounded half-even to cents |
//! | `prorate(x, num, den)` | DECIMAL(38,12) | x × num / den, exact to 12 decimals; NULL when den = 0 |
//! | `ratio(a, b)` | DOUBLE | `CAST(a AS DOUBLE) / CAST(b AS DOUBLE)`, bit for bit; NULL when b = 0 |
//! | `to_corporate(amount, currency, day)` | DECIMAL(18,2) | amount × rate in force on day, half-even to cents; NULL without a rate |
//! | `fiscal_period_start(period_type, day)` | DATE | first day of the fiscal month/quarter/year containing day |
//! | `day_of(ts)` | DATE | the date of an instant in the pipeline's time zone |
//! | `days_between(a, b)` | BIGINT | b − a in days |
//! | `week_start(day)` | DATE | the Monday of the ISO week containing day |
//! | `commission(quota, closed_won)` | DECIMAL(18,2) | payout of the pipeline's commission plan; NULL when quota is NULL or 0 |

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::common::{exec_err, DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use rust_decimal::{Decimal, RoundingStrategy};

use crate::calendar::{Calendar, PeriodType};
use crate::config::CommissionPlan;
use crate::event::Day;
use crate::event::RATE_SCALE;

/// fx rates by currency, sorted by effective date: what `to_corporate` looks up.
#[derive(Debug, Default)]
pub struct FxTable {
    pub corporate: String,
    /// currency → [(effective_date, rate mantissa at RATE_SCALE)], ascending.
    pub rates: HashMap<String, Vec<(Day, i128)>>,
}

impl FxTable {
    /// The rate in force on `day` (latest effective_date <= day), at `RATE_SCALE`.
    pub fn rate(&self, currency: &str, day: Day) -> Option<i128> {
        if currency == self.corporate {
            return Some(10i128.pow(RATE_SCALE));
        }
        let v = self.rates.get(currency)?;
        let i = v.partition_point(|(d, _)| *d <= day);
        i.checked_sub(1).map(|i| v[i].1)
    }
}

/// The `unconverted` table: per event type (`deal`, `quota`), the latest deal versions and
/// quota records whose amount `to_corporate` cannot convert (no rate in force on the deal's
/// close date or the record's period_start), over the whole state.
pub fn unconverted(
    state: &crate::state::State,
    fx: &FxTable,
) -> std::result::Result<datafusion::arrow::array::RecordBatch, datafusion::arrow::error::ArrowError>
{
    let fails = |amount: Decimal, currency: &str, day: Day| {
        let mut a = amount;
        a.rescale(2);
        fx.rate(currency, day)
            .is_none_or(|r| a.mantissa().checked_mul(r).is_none())
    };
    let deals = state
        .deals
        .values()
        .filter(|d| fails(d.latest.amount, &d.latest.currency, d.latest.close_date))
        .count()
        + state.residency.deals.count(fails);
    let quotas = state
        .quotas
        .values()
        .filter(|q| fails(q.latest.amount, &q.latest.currency, q.latest.period_start))
        .count();
    datafusion::arrow::array::RecordBatch::try_from_iter(vec![
        (
            "event_type",
            Arc::new(datafusion::arrow::array::StringArray::from(vec![
                "deal", "quota",
            ])) as ArrayRef,
        ),
        (
            "count",
            Arc::new(Int64Array::from(vec![deals as i64, quotas as i64])) as ArrayRef,
        ),
    ])
}

/// What a UDF needs to know of the pipeline.
#[derive(Debug)]
pub struct UdfContext {
    pub calendar: Calendar,
    pub fx: FxTable,
    pub commissions: CommissionPlan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Money,
    Prorate,
    Ratio,
    ToCorporate,
    FiscalPeriodStart,
    DayOf,
    DaysBetween,
    WeekStart,
    Commission,
}

#[derive(Debug)]
struct Udf {
    kind: Kind,
    signature: Signature,
    ctx: Arc<UdfContext>,
}

impl PartialEq for Udf {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.ctx, &other.ctx)
    }
}
impl Eq for Udf {}
impl Hash for Udf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        (Arc::as_ptr(&self.ctx) as usize).hash(state);
    }
}

/// All functions of this module, bound to one snapshot's calendar and fx rates.
pub fn all(ctx: Arc<UdfContext>) -> Vec<ScalarUDF> {
    let udf = |kind, n| {
        ScalarUDF::new_from_impl(Udf {
            kind,
            signature: Signature::any(n, Volatility::Immutable),
            ctx: Arc::clone(&ctx),
        })
    };
    vec![
        udf(Kind::Money, 1),
        udf(Kind::Prorate, 3),
        udf(Kind::Ratio, 2),
        udf(Kind::ToCorporate, 3),
        udf(Kind::FiscalPeriodStart, 2),
        udf(Kind::DayOf, 1),
        udf(Kind::DaysBetween, 2),
        udf(Kind::WeekStart, 1),
        udf(Kind::Commission, 2),
    ]
}

const PRORATE_SCALE: i8 = 12;

impl ScalarUDFImpl for Udf {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Money => "money",
            Kind::Prorate => "prorate",
            Kind::Ratio => "ratio",
            Kind::ToCorporate => "to_corporate",
            Kind::FiscalPeriodStart => "fiscal_period_start",
            Kind::DayOf => "day_of",
            Kind::DaysBetween => "days_between",
            Kind::WeekStart => "week_start",
            Kind::Commission => "commission",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::Money | Kind::ToCorporate | Kind::Commission => DataType::Decimal128(18, 2),
            Kind::Prorate => DataType::Decimal128(38, PRORATE_SCALE),
            Kind::Ratio => DataType::Float64,
            Kind::FiscalPeriodStart | Kind::DayOf | Kind::WeekStart => DataType::Date32,
            Kind::DaysBetween => DataType::Int64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<Vec<_>>>()?;
        let out: ArrayRef = match self.kind {
            Kind::Money => {
                let (x, s) = decimals(self.name(), &arrays[0])?;
                money_array(x.into_iter().map(|v| v.map(|v| rescale(v, s, 2))))?
            }
            Kind::Prorate => {
                let (x, sx) = decimals(self.name(), &arrays[0])?;
                let (num, sa) = decimals(self.name(), &arrays[1])?;
                let (den, sb) = decimals(self.name(), &arrays[2])?;
                // x·10^-sx × a·10^-sa / (b·10^-sb) at scale PRORATE_SCALE: the mantissas
                // x·a / b times 10^(PRORATE_SCALE − sx − sa + sb), the power on whichever side
                // keeps it whole.
                let shift =
                    i32::from(PRORATE_SCALE) - i32::from(sx) - i32::from(sa) + i32::from(sb);
                let power = 10i128.checked_pow(shift.unsigned_abs());
                let v = (0..n).map(|i| match (x[i], num[i], den[i]) {
                    (Some(x), Some(a), Some(b)) if b != 0 => {
                        let (top, bottom) = if shift >= 0 {
                            (x.checked_mul(a)?.checked_mul(power?)?, b)
                        } else {
                            (x.checked_mul(a)?, b.checked_mul(power?)?)
                        };
                        Some(div_half_even(top, bottom))
                    }
                    _ => None,
                });
                Arc::new(
                    v.collect::<Decimal128Array>()
                        .with_precision_and_scale(38, PRORATE_SCALE)?,
                )
            }
            Kind::Ratio => {
                // Each side converted by the kernel SQL's CAST(… AS DOUBLE) uses (a decimal
                // mantissa as f64 divided by 10^scale, not the nearest double to the decimal),
                // then one IEEE division: the same bits as the expression ratio replaces.
                let a = doubles(self.name(), &arrays[0])?;
                let b = doubles(self.name(), &arrays[1])?;
                Arc::new(
                    a.iter()
                        .zip(b.iter())
                        .map(|(a, b)| match (a, b) {
                            (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                            _ => None,
                        })
                        .collect::<Float64Array>(),
                )
            }
            Kind::ToCorporate => {
                let (amount, s) = decimals(self.name(), &arrays[0])?;
                let currency = arrays[1]
                    .as_string_opt::<i32>()
                    .ok_or_else(|| type_err(self.name(), &arrays[1]))?;
                let day = dates(self.name(), &arrays[2])?;
                let v = (0..n).map(|i| {
                    let (a, d) = (amount[i]?, day.is_valid(i).then(|| day.value(i))?);
                    if currency.is_null(i) {
                        return None;
                    }
                    let rate = self.ctx.fx.rate(currency.value(i), d)?;
                    Some(rescale(a.checked_mul(rate)?, s + RATE_SCALE as i8, 2))
                });
                money_array(v)?
            }
            Kind::FiscalPeriodStart => {
                let pt = arrays[0]
                    .as_string_opt::<i32>()
                    .ok_or_else(|| type_err(self.name(), &arrays[0]))?;
                let day = dates(self.name(), &arrays[1])?;
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    if pt.is_null(i) || day.is_null(i) {
                        out.push(None);
                        continue;
                    }
                    let Some(p) = PeriodType::parse(pt.value(i)) else {
                        return exec_err!(
                            "fiscal_period_start: `{}` is not month, quarter or year",
                            pt.value(i)
                        );
                    };
                    out.push(Some(self.ctx.calendar.period_start(p, day.value(i))));
                }
                Arc::new(Date32Array::from(out))
            }
            Kind::DayOf => {
                let ts = arrays[0]
                    .as_primitive_opt::<TimestampMicrosecondType>()
                    .ok_or_else(|| type_err(self.name(), &arrays[0]))?;
                Arc::new(
                    ts.iter()
                        .map(|t| t.map(|t| self.ctx.calendar.day_of(t)))
                        .collect::<Date32Array>(),
                )
            }
            Kind::DaysBetween => {
                let (a, b) = (
                    dates(self.name(), &arrays[0])?,
                    dates(self.name(), &arrays[1])?,
                );
                Arc::new(
                    a.iter()
                        .zip(b.iter())
                        .map(|(a, b)| Some(i64::from(b? - a?)))
                        .collect::<Int64Array>(),
                )
            }
            Kind::WeekStart => {
                let day = dates(self.name(), &arrays[0])?;
                Arc::new(
                    day.iter()
                        .map(|d| d.map(crate::calendar::week_start))
                        .collect::<Date32Array>(),
                )
            }
            Kind::Commission => {
                let (quota, qs) = decimals(self.name(), &arrays[0])?;
                let (won, ws) = decimals(self.name(), &arrays[1])?;
                let plan = &self.ctx.commissions;
                money_array((0..n).map(|i| {
                    let q = Decimal::try_from_i128_with_scale(quota[i]?, qs as u32).ok()?;
                    let w = Decimal::try_from_i128_with_scale(won[i]?, ws as u32).ok()?;
                    let pay = payout(plan, q, w)?;
                    Some(rescale(pay.mantissa(), pay.scale() as i8, 2))
                }))?
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Marginal tiers: the slice of `won` between quota × from(i) and quota × from(i+1) pays
/// rate(i); capped, then rounded half-even to cents. `None` when quota is 0.
pub fn payout(plan: &CommissionPlan, quota: Decimal, won: Decimal) -> Option<Decimal> {
    if quota.is_zero() {
        return None;
    }
    let mut total = Decimal::ZERO;
    for (i, (from, rate)) in plan.tiers.iter().enumerate() {
        let lo = quota.checked_mul(*from)?;
        let top = match plan.tiers.get(i + 1) {
            Some((next, _)) => won.min(quota.checked_mul(*next)?),
            None => won,
        };
        if top > lo {
            total = total.checked_add((top - lo).checked_mul(*rate)?)?;
        }
    }
    if let Some(cap) = plan.cap {
        total = total.min(cap);
    }
    Some(total.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven))
}

fn type_err(name: &str, a: &ArrayRef) -> DataFusionError {
    DataFusionError::Execution(format!(
        "{name}: unsupported argument type {}",
        a.data_type()
    ))
}

/// Values of a decimal or integer column as i128 mantissas with their scale.
fn decimals(name: &str, a: &ArrayRef) -> Result<(Vec<Option<i128>>, i8)> {
    Ok(match a.data_type() {
        DataType::Decimal128(_, s) => (a.as_primitive::<Decimal128Type>().iter().collect(), *s),
        DataType::Int64 => (
            a.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map(i128::from))
                .collect(),
            0,
        ),
        DataType::Int32 => (
            a.as_primitive::<Int32Type>()
                .iter()
                .map(|v| v.map(i128::from))
                .collect(),
            0,
        ),
        DataType::Null => (vec![None; a.len()], 0),
        _ => return Err(type_err(name, a)),
    })
}

/// Values of a numeric column as DOUBLE, converted exactly as `CAST(x AS DOUBLE)` converts them.
fn doubles(name: &str, a: &ArrayRef) -> Result<Float64Array> {
    let t = a.data_type();
    if !(t.is_numeric() || *t == DataType::Null) {
        return Err(type_err(name, a));
    }
    Ok(cast(a, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

fn dates(name: &str, a: &ArrayRef) -> Result<Date32Array> {
    match a.data_type() {
        DataType::Date32 => Ok(a.as_primitive::<Date32Type>().clone()),
        DataType::Null => Ok(Date32Array::from(vec![None; a.len()])),
        DataType::Timestamp(TimeUnit::Microsecond, _) => Err(DataFusionError::Execution(format!(
            "{name}: got a timestamp where a date is needed; wrap it in day_of(...)"
        ))),
        _ => Err(type_err(name, a)),
    }
}

fn money_array(v: impl Iterator<Item = Option<i128>>) -> Result<ArrayRef> {
    const LIMIT: i128 = 1_000_000_000_000_000_000; // 10^18: DECIMAL(18,2)
    let vals: Vec<Option<i128>> = v.collect();
    if let Some(big) = vals.iter().flatten().find(|x| x.abs() >= LIMIT) {
        return exec_err!("money: {big} cents does not fit DECIMAL(18,2)");
    }
    Ok(Arc::new(
        Decimal128Array::from(vals).with_precision_and_scale(18, 2)?,
    ))
}

/// `v` at scale `from` re-expressed at scale `to`, rounding half-even when digits are dropped.
pub fn rescale(v: i128, from: i8, to: i8) -> i128 {
    if from <= to {
        v * 10i128.pow((to - from) as u32)
    } else {
        div_half_even(v, 10i128.pow((from - to) as u32))
    }
}

/// `a / b` rounded half-even (b != 0).
pub fn div_half_even(a: i128, b: i128) -> i128 {
    let (q, r) = (a / b, a % b);
    if r == 0 {
        return q;
    }
    let twice = (r.abs() * 2).cmp(&b.abs());
    let away = match twice {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => q % 2 != 0,
    };
    if !away {
        q
    } else if (a < 0) != (b < 0) {
        q - 1
    } else {
        q + 1
    }
}

#[cfg(test)]
mod tests;
