//! A commission payout: the plan's marginal tiers on the quarter's closed_won against its
//! rounded quota, slice by slice (`engine::udf::payout` computes the published figure).

use super::{Ctx, Traced, Value};
use crate::engine::udf::payout;

/// The payout of a rep-quarter: each slice of closed_won between two tier bounds (fractions
/// of the rounded quarter quota) pays its tier's rate, then the cap, then half-even to cents.
pub(super) fn trace(ctx: &Ctx<'_>, quota: Option<i128>, won: i128, t: &mut Traced) {
    let plan = &ctx.metrics.commissions;
    let (Some(q), won) = (quota, won) else {
        t.value = Some(Value::Null);
        t.arithmetic
            .push("payout = NULL: no quota for the quarter".into());
        return;
    };
    let (quota, won) = (
        rust_decimal::Decimal::from_i128_with_scale(q, 2),
        rust_decimal::Decimal::from_i128_with_scale(won, 2),
    );
    t.arithmetic.push(format!(
        "payout under plan `{}`: marginal tiers on closed_won {won} against quota {quota}",
        plan.name
    ));
    for (i, (from, rate)) in plan.tiers.iter().enumerate() {
        let lo = quota * from;
        let hi = plan.tiers.get(i + 1).map(|(next, _)| quota * next);
        let top = hi.map_or(won, |h| won.min(h));
        let slice = if top > lo {
            top - lo
        } else {
            rust_decimal::Decimal::ZERO
        };
        let bound = hi.map_or("∞".to_string(), |h| h.normalize().to_string());
        t.arithmetic.push(format!(
            "  tier {}: {} .. {bound} at {rate}: slice {} pays {}",
            i + 1,
            lo.normalize(),
            slice.normalize(),
            (slice * rate).normalize()
        ));
    }
    if let Some(cap) = plan.cap {
        t.arithmetic.push(format!("  capped at {cap}"));
    }
    let pay = payout(plan, quota, won);
    let value = pay.map_or(Value::Null, |p| {
        let mut p = p;
        p.rescale(2);
        Value::Money(p.mantissa())
    });
    t.arithmetic.push(format!(
        "payout = Σ slices, rounded half-even to cents = {}",
        value.text().unwrap_or("NULL".into())
    ));
    t.value = Some(value);
}
