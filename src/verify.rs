//! `quotaflow verify`: an operator's check that a snapshot's published tables are what the
//! batch path computes. It restores the snapshot's state from its checkpoint, evaluates every
//! table in full over it (no scope, no skipped table) and compares, table by table, the rows as
//! a multiset with the rows of the versions the checkpoint names. Snapshots are evaluated
//! incrementally (`engine::plan`); this is the proof that they equal a full recompute.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::config::Pipeline;
use crate::engine::Engine;
use crate::error::{Error, QueryError};
use crate::snapshot::Location;

/// What `verify` found in one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableCheck {
    pub table: String,
    pub published_rows: usize,
    pub recomputed_rows: usize,
    /// Rows only the published table holds (with how many copies too many).
    pub only_published: Vec<(String, i64)>,
    /// Rows only the recomputation gives.
    pub only_recomputed: Vec<(String, i64)>,
}

impl TableCheck {
    pub fn differs(&self) -> bool {
        !self.only_published.is_empty() || !self.only_recomputed.is_empty()
    }
}

/// What `verify` found in a snapshot.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub snapshot_id: u64,
    pub tables: Vec<TableCheck>,
}

impl Report {
    /// Rows that differ, over every table.
    pub fn differences(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.only_published.len() + t.only_recomputed.len())
            .sum()
    }

    /// The report as text, listing at most `limit` differing rows per table and side.
    pub fn render(&self, limit: usize) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let verdict = if t.differs() { "DIFFERS" } else { "ok" };
            out.push_str(&format!(
                "{:<18} {verdict:<8} published {} rows, recomputed {} rows\n",
                t.table, t.published_rows, t.recomputed_rows
            ));
            for (side, rows) in [
                ("only published ", &t.only_published),
                ("only recomputed", &t.only_recomputed),
            ] {
                for (row, n) in rows.iter().take(limit) {
                    out.push_str(&format!("  {side} ×{n}: {row}\n"));
                }
                if rows.len() > limit {
                    out.push_str(&format!("  {side}: {} more\n", rows.len() - limit));
                }
            }
        }
        out.push_str(&format!(
            "snapshot {}: {} tables, {} differing rows\n",
            self.snapshot_id,
            self.tables.len(),
            self.differences()
        ));
        out
    }
}

/// Recomputes snapshot `id` (default: the one `_latest` names) of `pipeline` under
/// `location` in full and compares it with its published tables.
pub async fn verify(
    location: &Location,
    pipeline: &Arc<Pipeline>,
    id: Option<u64>,
) -> Result<Report, Error> {
    let checkpoint = crate::query::checkpoint(location, id).await?;
    let mut state = crate::pipeline::read_state(location, &checkpoint).await?;
    state.snapshot_id = checkpoint.snapshot_id;
    state.roll_up_all(&pipeline.metrics.calendar);
    let engine = Engine::new(Arc::clone(&pipeline.metrics));
    let recomputed = engine.compute(&state, checkpoint.snapshot_id).await?;
    let mut report = Report {
        snapshot_id: checkpoint.snapshot_id,
        tables: Vec::new(),
    };
    for t in recomputed {
        if !checkpoint.tables.contains_key(&t.name) {
            continue;
        }
        let (schema, published) = location.read_table(&checkpoint, &t.name).await?;
        report
            .tables
            .push(compare(&t.name, &schema, &published, &t.batches)?);
    }
    Ok(report)
}

/// Compares two tables' rows as multisets, in the published table's columns and types.
pub fn compare(
    table: &str,
    schema: &SchemaRef,
    published: &[RecordBatch],
    recomputed: &[RecordBatch],
) -> Result<TableCheck, Error> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let (mut p, mut r) = (0, 0);
    for b in published {
        p += b.num_rows();
        for row in rows(table, schema, b)? {
            *counts.entry(row).or_default() += 1;
        }
    }
    for b in recomputed {
        r += b.num_rows();
        for row in rows(table, schema, b)? {
            *counts.entry(row).or_default() -= 1;
        }
    }
    let mut check = TableCheck {
        table: table.to_string(),
        published_rows: p,
        recomputed_rows: r,
        ..TableCheck::default()
    };
    for (row, n) in counts {
        match n {
            0 => {}
            n if n > 0 => check.only_published.push((row, n)),
            n => check.only_recomputed.push((row, -n)),
        }
    }
    Ok(check)
}

/// Every row of `b` as text, its columns those of `schema` (cast to their types).
fn rows(table: &str, schema: &SchemaRef, b: &RecordBatch) -> Result<Vec<String>, Error> {
    let err = |e: datafusion::arrow::error::ArrowError| {
        Error::from(QueryError::Table {
            table: table.to_string(),
            source: e.into(),
        })
    };
    let options = FormatOptions::default().with_null("NULL");
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let c = b.column_by_name(f.name()).ok_or_else(|| {
            err(datafusion::arrow::error::ArrowError::SchemaError(format!(
                "no column `{}`",
                f.name()
            )))
        })?;
        cols.push(datafusion::arrow::compute::cast(c, f.data_type()).map_err(err)?);
    }
    let formatters = cols
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    Ok((0..b.num_rows())
        .map(|i| {
            schema
                .fields()
                .iter()
                .zip(&formatters)
                .map(|(f, v)| format!("{}={}", f.name(), v.value(i)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect())
}
