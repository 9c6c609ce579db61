//! Arrow column builders shared by the state's tables: one spelling per column type (strings,
//! dates, UTC instants, decimals at a fixed precision and scale).

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::error::ArrowError;
use rust_decimal::Decimal;

use crate::event::{Day, Micros};

/// A batch of named columns, every one nullable: a table's schema must not depend on whether
/// its rows hold a NULL today (the SQL's output schemas, and so the Delta tables', follow it).
pub(crate) fn batch(cols: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ArrowError> {
    RecordBatch::try_from_iter_with_nullable(cols.into_iter().map(|(n, a)| (n, a, true)))
}

pub(crate) fn strs<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(it))
}
pub(crate) fn opt_strs<'a>(it: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(it.collect::<StringArray>())
}
pub(crate) fn i64s(it: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(it.collect::<Int64Array>())
}
pub(crate) fn dates(it: impl Iterator<Item = Day>) -> ArrayRef {
    Arc::new(Date32Array::from_iter_values(it))
}
pub(crate) fn opt_dates(it: impl Iterator<Item = Option<Day>>) -> ArrayRef {
    Arc::new(it.collect::<Date32Array>())
}
pub(crate) fn times(it: impl Iterator<Item = Option<Micros>>) -> ArrayRef {
    Arc::new(
        it.collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}
pub(crate) fn decimals(
    it: impl Iterator<Item = Decimal>,
    precision: u8,
    scale: u32,
) -> Result<ArrayRef, ArrowError> {
    let arr = it
        .map(|mut d| {
            d.rescale(scale);
            d.mantissa()
        })
        .collect::<Decimal128Array>()
        .with_precision_and_scale(precision, scale as i8)?;
    Ok(Arc::new(arr))
}
