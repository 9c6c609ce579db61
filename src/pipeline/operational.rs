//! The tables a snapshot writes beside those its SQL computes, built in Rust after the alert
//! rules ran: `alerts` (partitioned by the month a lifecycle resolved in), `alert_deliveries`
//! and `snapshots`.

use std::collections::BTreeSet;

use datafusion::arrow::array::RecordBatch;

use super::RunError;
use crate::calendar::{date_of, Calendar, PeriodType};
use crate::internal::InternalError;
use crate::snapshot::{retention, EncodedTable, Layout, SnapshotRow, NULL_PARTITION};
use crate::state::State;

/// The `snapshots` table's name (METRICS.md, "Where the tables live").
pub const SNAPSHOTS: &str = "snapshots";
/// The table of alert deliveries per target (`state::tables::alert_deliveries`).
pub const ALERT_DELIVERIES: &str = "alert_deliveries";
/// The `alerts` table's name, and the column it is partitioned by.
pub const ALERTS: &str = "alerts";
const ALERTS_PARTITION: &str = "resolved_month";

/// The tables [`tables`] builds, in its order (`snapshots` last, as commits want it).
pub const NAMES: [&str; 3] = [ALERTS, ALERT_DELIVERIES, SNAPSHOTS];

/// The three tables of a snapshot whose alert part is `alerting` (after the rules ran) and
/// whose retained snapshots are `history`. `first_snapshot`: none is durable yet, so the
/// `alerts` table may have no version and is written whole.
pub(super) fn tables(
    alerting: &mut State,
    history: &[SnapshotRow],
    cal: &Calendar,
    first_snapshot: bool,
) -> Result<[EncodedTable; 3], RunError> {
    let alerts = alerts_table(alerting, cal, first_snapshot)?;
    let deliveries = crate::state::tables::alert_deliveries(alerting)
        .map_err(|e| InternalError::new(format!("{ALERT_DELIVERIES} table: {e}")))?;
    let snapshots = retention::table(history, cal)
        .map_err(|e| InternalError::new(format!("{SNAPSHOTS} table: {e}")))?;
    Ok([
        alerts,
        unpartitioned(ALERT_DELIVERIES, &deliveries)?,
        unpartitioned(SNAPSHOTS, &snapshots)?,
    ])
}

/// The `alerts` table of this snapshot, from the book after the rules ran, partitioned by
/// the month a lifecycle resolved in (NULL while firing). It replaces the firing partition and
/// the months whose resolved lifecycles the book still holds; the months before `as_of`'s then
/// leave the book (`AlertBook::leave_before`), and their partitions stay as last written.
fn alerts_table(
    alerting: &mut State,
    cal: &Calendar,
    first_snapshot: bool,
) -> Result<EncodedTable, RunError> {
    let month_of = |t| cal.period_start(PeriodType::Month, cal.day_of(t));
    let batch = crate::state::tables::alerts(&alerting.alerts, month_of)
        .map_err(|e| InternalError::new(format!("{ALERTS} table: {e}")))?;
    let layout = Layout {
        name: ALERTS.into(),
        partition_by: Some(ALERTS_PARTITION.into()),
    };
    let only = (!first_snapshot).then(|| {
        let mut only: BTreeSet<String> = alerting
            .alerts
            .resolved_months(month_of)
            .into_iter()
            .map(|m| date_of(m).to_string())
            .collect();
        only.insert(NULL_PARTITION.into());
        only
    });
    let table = EncodedTable::encode_only(&layout, &batch.schema(), &[batch], only)?;
    if let Some(now) = alerting.as_of {
        alerting.alerts.leave_before(month_of(now), month_of);
    }
    Ok(table)
}

fn unpartitioned(name: &str, batch: &RecordBatch) -> Result<EncodedTable, RunError> {
    let layout = Layout {
        name: name.into(),
        partition_by: None,
    };
    Ok(EncodedTable::encode(
        &layout,
        &batch.schema(),
        std::slice::from_ref(batch),
    )?)
}
