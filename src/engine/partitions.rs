//! The partitions a snapshot replaces of a partitioned table: its rows restricted to them,
//! as a filter on the statement (so that its inputs are read for them alone) or over the
//! rows computed (when a later statement reads the scope's context rows too).

use std::collections::BTreeSet;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{lit, Expr};

/// The rows of `df` whose column `c` is one of `keep` (the partition values as Delta writes
/// them, cast to the column's type), as a filter the optimizer pushes towards the inputs.
pub(super) fn in_partitions(
    df: DataFrame,
    c: &str,
    keep: &BTreeSet<String>,
) -> Result<DataFrame, DataFusionError> {
    let column = Column::from_name(c);
    let ty = df
        .schema()
        .field_with_unqualified_name(c)?
        .data_type()
        .clone();
    let values = (keep.iter())
        .map(|v| Ok(lit(ScalarValue::Utf8(Some(v.clone())).cast_to(&ty)?)))
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    df.filter(Expr::Column(column).in_list(values, false))
}

/// The rows of `batches` whose column `c` (a DATE) is one of `keep` (as `YYYY-MM-DD`).
pub(super) fn only_partitions(
    batches: &[RecordBatch],
    c: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    use datafusion::arrow::array::BooleanArray;
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let col = b
            .column_by_name(c)
            .ok_or_else(|| DataFusionError::Plan(format!("no partition column `{c}`")))?;
        let text = datafusion::arrow::compute::cast(col, &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let mask: BooleanArray = (0..text.len())
            .map(|i| Some(!text.is_null(i) && keep.contains(text.value(i))))
            .collect();
        // (every row kept: the same buffers, not a copy of them)
        let kept = match mask.true_count() {
            0 => continue,
            n if n == b.num_rows() => b.clone(),
            _ => datafusion::arrow::compute::filter_record_batch(b, &mask)?,
        };
        out.push(kept);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use datafusion::arrow::array::{ArrayRef, Date32Array, Int64Array, StringArray};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;

    /// What makes a period table cheap under a year's scope: the filter on the partition
    /// column reaches the table read, below the sort and the projection computing it.
    #[tokio::test]
    async fn the_filter_on_the_partitions_kept_reaches_the_input() {
        let day = |d: &str| {
            let d = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
            (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
        };
        let month: ArrayRef = Arc::new(Date32Array::from(vec![
            day("2026-01-01"),
            day("2026-02-01"),
            day("2026-02-01"),
            day("2026-03-01"),
        ]));
        let x: ArrayRef = Arc::new(Int64Array::from(vec![4, 3, 2, 1]));
        let b = RecordBatch::try_from_iter([("m", month), ("x", x)]).unwrap();
        let ctx = SessionContext::new();
        let t = MemTable::try_new(b.schema(), vec![vec![b]]).unwrap();
        ctx.register_table("t", Arc::new(t)).unwrap();
        let sql = "SELECT m AS month, x * 10 AS y FROM t ORDER BY x";
        let keep: BTreeSet<String> = ["2026-02-01".to_string()].into();
        let df = in_partitions(ctx.sql(sql).await.unwrap(), "month", &keep).unwrap();
        let plan = df.clone().into_optimized_plan().unwrap();
        let plan = plan.display_indent().to_string();
        let at = |what: &str| {
            plan.find(what)
                .unwrap_or_else(|| panic!("{what} in {plan}"))
        };
        assert!(
            at("Sort:") < at("Filter:"),
            "the filter stays above the sort: {plan}"
        );
        assert!(at("Filter:") < at("TableScan: t"), "{plan}");
        let rows = df.collect().await.unwrap();
        let y: Vec<i64> = (rows.iter())
            .flat_map(|b| {
                b.column(1)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(y, vec![20, 30]);
        let none = in_partitions(ctx.sql(sql).await.unwrap(), "month", &BTreeSet::new());
        assert_eq!(none.unwrap().count().await.unwrap(), 0);
    }

    #[test]
    fn the_partitions_kept_share_a_batch_kept_whole() {
        let months: ArrayRef = Arc::new(StringArray::from(vec!["2026-01-01", "2026-02-01"]));
        let b = RecordBatch::try_from_iter([("month", months)]).unwrap();
        let keep = |m: &[&str]| m.iter().map(|s| s.to_string()).collect();
        let all = only_partitions(
            std::slice::from_ref(&b),
            "month",
            &keep(&["2026-01-01", "2026-02-01"]),
        );
        let all = all.unwrap();
        assert!(Arc::ptr_eq(all[0].column(0), b.column(0)), "a copy");
        let one =
            only_partitions(std::slice::from_ref(&b), "month", &keep(&["2026-02-01"])).unwrap();
        assert_eq!(one[0].column(0).as_string::<i32>().value(0), "2026-02-01");
        assert_eq!(one[0].num_rows(), 1);
        assert!(only_partitions(&[b], "month", &keep(&[]))
            .unwrap()
            .is_empty());
    }
}
