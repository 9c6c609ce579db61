//! Unit tests of the UDFs: exact money, proration, fx, fiscal periods, commissions, ratio.

use super::*;

#[test]
fn half_even() {
    assert_eq!(div_half_even(25, 10), 2);
    assert_eq!(div_half_even(35, 10), 4);
    assert_eq!(div_half_even(-25, 10), -2);
    assert_eq!(div_half_even(26, 10), 3);
    assert_eq!(rescale(12345, 3, 2), 1234);
    assert_eq!(rescale(12355, 3, 2), 1236);
    assert_eq!(rescale(5, 0, 2), 500);
}

#[test]
fn commission_worked_check() {
    let plan = crate::config::Pipeline::builtin()
        .unwrap()
        .metrics
        .commissions
        .clone();
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    // METRICS.md: quota 250,000.00 and closed_won 325,000.00 (130 %) pay 19,375.00.
    assert_eq!(
        payout(&plan, d("250000.00"), d("325000.00")),
        Some(d("19375.00"))
    );
    assert_eq!(
        payout(&plan, d("250000.00"), d("100000.00")),
        Some(d("0.00"))
    );
    assert_eq!(payout(&plan, d("0.00"), d("100.00")), None);
    let capped = CommissionPlan {
        cap: Some(d("10000")),
        ..plan
    };
    assert_eq!(
        payout(&capped, d("250000.00"), d("325000.00")),
        Some(d("10000.00"))
    );
}

/// A session with every function of this module registered (UTC calendar, no fx rates).
fn session() -> datafusion::prelude::SessionContext {
    let ctx = datafusion::prelude::SessionContext::new();
    for f in all(Arc::new(UdfContext {
        calendar: Calendar::default(),
        fx: FxTable {
            corporate: "USD".into(),
            rates: HashMap::new(),
        },
        commissions: crate::config::Pipeline::builtin()
            .unwrap()
            .metrics
            .commissions
            .clone(),
    })) {
        ctx.register_udf(f);
    }
    ctx
}

/// The DOUBLE columns of a one-row query.
async fn doubles_of(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Vec<Option<f64>> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0]
        .columns()
        .iter()
        .map(|c| {
            let c = c.as_primitive::<Float64Type>();
            (!c.is_null(0)).then(|| c.value(0))
        })
        .collect()
}

/// `ratio` is NULL over zero or NULL and otherwise the very DOUBLE of the
/// `CAST(a AS DOUBLE) / CAST(b AS DOUBLE)` it replaces, whatever the types and scales.
#[tokio::test]
async fn ratio_is_the_cast_division_or_null() {
    let ctx = session();
    let zero_or_null = "SELECT ratio(1, 0), ratio(0, 0), \
                               ratio(CAST(5.00 AS DECIMAL(18,2)), CAST(0.00 AS DECIMAL(18,2))), \
                               ratio(CAST(5 AS DECIMAL(18,2)), CAST(0 AS DECIMAL(5,1))), \
                               ratio(NULL, 2), ratio(2, NULL), ratio(CAST(NULL AS BIGINT), 0)";
    assert_eq!(doubles_of(&ctx, zero_or_null).await, vec![None; 7]);
    let integers = "SELECT ratio(1, 3), ratio(-7, 2), ratio(CAST(6 AS INT), CAST(4 AS BIGINT)), \
                           ratio(0, 5), ratio(CAST(9007199254740993 AS BIGINT), 1)";
    assert_eq!(
        doubles_of(&ctx, integers).await,
        vec![
            Some(1.0 / 3.0),
            Some(-3.5),
            Some(1.5),
            Some(0.0),
            Some(9007199254740992.0)
        ]
    );
    let decimals = "SELECT ratio(CAST(1.50 AS DECIMAL(10,2)), CAST(0.5 AS DECIMAL(5,1))), \
                           ratio(CAST(250000.00 AS DECIMAL(18,2)), 100000), \
                           ratio(CAST(-0.25 AS DECIMAL(18,2)), CAST(0.125 AS DECIMAL(10,3))), \
                           ratio(7, CAST(2.000000 AS DECIMAL(38,6)))";
    assert_eq!(
        doubles_of(&ctx, decimals).await,
        vec![Some(3.0), Some(2.5), Some(-2.0), Some(3.5)]
    );
    // Bit for bit the CAST division, also where that CAST does not give the double nearest
    // the decimal: a money amount of 15 integer digits converts as mantissa / 100.
    let cast = doubles_of(
        &ctx,
        "SELECT ratio(CAST('987654321098765.43' AS DECIMAL(18,2)), 1)",
    );
    assert_eq!(cast.await, vec![Some(987_654_321_098_765.5)]);
    assert_eq!(
        "987654321098765.43".parse::<f64>(),
        Ok(987_654_321_098_765.4)
    );
    for (a, b) in [
        ("CAST(0.10 AS DECIMAL(18,2))", "CAST(3 AS BIGINT)"),
        (
            "CAST(1234567.89 AS DECIMAL(18,2))",
            "CAST(7654321.07 AS DECIMAL(18,2))",
        ),
        (
            "CAST(333333333333.333333333333 AS DECIMAL(38,12))",
            "CAST(0.07 AS DECIMAL(18,2))",
        ),
        (
            "CAST(0.1234567890123456789012345 AS DECIMAL(38,25))",
            "CAST(-3.3 AS DECIMAL(5,1))",
        ),
        (
            "CAST(12345678901234567.89 AS DECIMAL(38,2))",
            "CAST(98765432109876543.21 AS DECIMAL(38,2))",
        ),
        (
            "CAST('987654321098765.43' AS DECIMAL(18,2))",
            "CAST(3 AS BIGINT)",
        ),
        (
            "CAST(-41 AS BIGINT)",
            "CAST(0.000000000003 AS DECIMAL(20,18))",
        ),
    ] {
        let sql = format!("SELECT ratio({a}, {b}), CAST({a} AS DOUBLE) / CAST({b} AS DOUBLE)");
        let v = doubles_of(&ctx, &sql).await;
        let (r, c) = (v[0].unwrap(), v[1].unwrap());
        assert_eq!(
            r.to_bits(),
            c.to_bits(),
            "ratio({a}, {b}) = {r}, the CAST division {c}"
        );
    }
    let typed = ctx
        .sql("SELECT arrow_typeof(ratio(CAST(1 AS DECIMAL(5,0)), 2)) AS t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        datafusion::arrow::util::display::array_value_to_string(typed[0].column(0), 0).unwrap(),
        "Float64"
    );
    let text = ctx.sql("SELECT ratio('1', 2)").await;
    let err = match text {
        Ok(df) => df.collect().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("ratio: unsupported argument type"), "{err}");
}

/// `prorate` honours the scale of every argument, not only of the amount.
#[tokio::test]
async fn prorate_with_decimal_factors() {
    let ctx = session();
    let sql = "SELECT CAST(prorate(CAST(10.00 AS DECIMAL(10,2)), CAST(1.5 AS DECIMAL(5,1)), CAST(3.00 AS DECIMAL(5,2))) AS VARCHAR) AS a, \
                      CAST(prorate(CAST(-50000.000000 AS DECIMAL(38,6)), 1, CAST(1.00000000 AS DECIMAL(38,8))) AS VARCHAR) AS b, \
                      CAST(prorate(CAST(2 AS BIGINT), CAST(1 AS BIGINT), CAST(3 AS BIGINT)) AS VARCHAR) AS c, \
                      CAST(prorate(CAST(1.00 AS DECIMAL(5,2)), 1, CAST(0.000000000003 AS DECIMAL(20,18))) AS VARCHAR) AS d";
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let col = |i: usize| {
        datafusion::arrow::util::display::array_value_to_string(batches[0].column(i), 0).unwrap()
    };
    assert_eq!(col(0), "5.000000000000");
    assert_eq!(col(1), "-50000.000000000000");
    assert_eq!(col(2), "0.666666666667");
    assert_eq!(col(3), "333333333333.333333333333");
}

#[test]
fn fx_rate_in_force() {
    let fx = FxTable {
        corporate: "USD".into(),
        rates: HashMap::from([("EUR".into(), vec![(10, 1), (20, 2)])]),
    };
    assert_eq!(fx.rate("EUR", 9), None);
    assert_eq!(fx.rate("EUR", 10), Some(1));
    assert_eq!(fx.rate("EUR", 19), Some(1));
    assert_eq!(fx.rate("EUR", 25), Some(2));
    assert_eq!(fx.rate("USD", 0), Some(10i128.pow(RATE_SCALE)));
}
