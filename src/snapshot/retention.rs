//! Which snapshots stay readable: the last K and, besides, the last one of each of the last D
//! days (by the UTC day of `written_at`, the wall clock: "yesterday's numbers as they were").
//! Pure: the pipeline hands in what it knows and deletes what is not kept.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;

/// One snapshot as the `snapshots` table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub snapshot_id: u64,
    /// Event clock, microseconds (None before the first event).
    pub as_of: Option<i64>,
    /// Wall clock, microseconds.
    pub written_at: i64,
    pub events: u64,
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The rows of `rows` that retention keeps: the `last` newest, plus the newest of each of the
/// `days` most recent days among them. Ascending by id.
pub fn retained(rows: &[SnapshotRow], last: usize, days: usize) -> Vec<SnapshotRow> {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|r| r.snapshot_id);
    sorted.dedup_by_key(|r| r.snapshot_id);
    let mut keep: std::collections::BTreeSet<u64> = sorted
        .iter()
        .rev()
        .take(last)
        .map(|r| r.snapshot_id)
        .collect();
    let mut seen_days = Vec::new();
    for r in sorted.iter().rev() {
        let day = r.written_at.div_euclid(DAY_MICROS);
        if seen_days.last() != Some(&day) && !seen_days.contains(&day) {
            if seen_days.len() == days {
                break;
            }
            seen_days.push(day);
            keep.insert(r.snapshot_id);
        }
    }
    sorted
        .into_iter()
        .filter(|r| keep.contains(&r.snapshot_id))
        .collect()
}

/// The `snapshots` table: one row per retained snapshot.
pub fn table(
    rows: &[SnapshotRow],
    cal: &crate::calendar::Calendar,
) -> Result<RecordBatch, ArrowError> {
    use crate::state::columns::{i64s, opt_dates, times};
    crate::state::columns::batch(vec![
        (
            "snapshot_id",
            i64s(rows.iter().map(|r| r.snapshot_id as i64)),
        ),
        ("as_of", times(rows.iter().map(|r| r.as_of))),
        (
            "as_of_date",
            opt_dates(rows.iter().map(|r| r.as_of.map(|t| cal.day_of(t)))),
        ),
        ("written_at", times(rows.iter().map(|r| Some(r.written_at)))),
        ("events", i64s(rows.iter().map(|r| r.events as i64))),
    ])
}

/// The rows of a `snapshots` table read back (as [`table`] writes them).
pub fn rows(batches: &[RecordBatch]) -> Result<Vec<SnapshotRow>, String> {
    use datafusion::arrow::array::{Array, Int64Array, TimestampMicrosecondArray};
    let mut out = Vec::new();
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| format!("no column `{name}`"))
        };
        let ints = |name: &str| -> Result<Int64Array, String> {
            let c = datafusion::arrow::compute::cast(
                col(name)?,
                &datafusion::arrow::datatypes::DataType::Int64,
            )
            .map_err(|e| format!("`{name}`: {e}"))?;
            c.as_any()
                .downcast_ref::<Int64Array>()
                .cloned()
                .ok_or_else(|| format!("`{name}` is not an integer"))
        };
        let times = |name: &str| -> Result<TimestampMicrosecondArray, String> {
            col(name)?
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .cloned()
                .ok_or_else(|| format!("`{name}` is not a timestamp in microseconds"))
        };
        let (ids, events) = (ints("snapshot_id")?, ints("events")?);
        let (as_of, written_at) = (times("as_of")?, times("written_at")?);
        for i in 0..b.num_rows() {
            out.push(SnapshotRow {
                snapshot_id: ids.value(i).max(0) as u64,
                as_of: (!as_of.is_null(i)).then(|| as_of.value(i)),
                written_at: written_at.value(i),
                events: events.value(i).max(0) as u64,
            });
        }
    }
    out.sort_by_key(|r| r.snapshot_id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: u64, day: i64, hour: i64) -> SnapshotRow {
        SnapshotRow {
            snapshot_id: id,
            as_of: None,
            written_at: day * DAY_MICROS + hour * 3_600_000_000,
            events: id,
        }
    }

    fn ids(rows: &[SnapshotRow]) -> Vec<u64> {
        rows.iter().map(|r| r.snapshot_id).collect()
    }

    #[test]
    fn keeps_the_last_k_and_the_last_of_each_of_d_days() {
        // Days 10..=14, three snapshots a day: ids 1..=15, the last of day d is 3(d-9).
        let rows: Vec<_> = (0..15)
            .map(|i| row(i + 1, 10 + i as i64 / 3, i as i64 % 3))
            .collect();
        assert_eq!(ids(&retained(&rows, 2, 0)), vec![14, 15]);
        assert_eq!(ids(&retained(&rows, 2, 3)), vec![9, 12, 14, 15]);
        assert_eq!(ids(&retained(&rows, 0, 7)), vec![3, 6, 9, 12, 15]);
        assert_eq!(ids(&retained(&rows, 100, 0)).len(), 15);
    }
}
