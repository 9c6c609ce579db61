//! `quotaflow sql`: every table of one snapshot registered by name in a read-only DataFusion
//! session, each at the Delta version the snapshot's checkpoint names (so the tables agree
//! with each other). DDL, DML, COPY and other statements are refused before planning.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;

use crate::error::{Error, QueryError, UsageError};
use crate::snapshot::{Checkpoint, Location};

/// Output formats of `quotaflow sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// The checkpoint of snapshot `id`, or of the one `_latest` names.
pub async fn checkpoint(location: &Location, id: Option<u64>) -> Result<Checkpoint, Error> {
    let id = match id {
        Some(id) => id,
        None => {
            location
                .latest()
                .await?
                .ok_or_else(|| UsageError::NoSnapshot {
                    output: location.url.to_string(),
                })?
                .snapshot_id
        }
    };
    Ok(location.checkpoint(id).await?)
}

/// The retained snapshots, oldest first: id, event clock, wall clock, messages, and which
/// tables each committed to (`quotaflow snapshots`).
pub async fn snapshots(location: &Location) -> Result<RecordBatch, Error> {
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    if location.latest().await?.is_none() {
        return Err(UsageError::NoSnapshot {
            output: location.url.to_string(),
        }
        .into());
    }
    let mut rows = Vec::new();
    for id in location.checkpoint_ids().await? {
        // None: forgotten by retention while listing.
        rows.extend(location.find_checkpoint(id).await?);
    }
    let strs = |f: &dyn Fn(&Checkpoint) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&Checkpoint) -> i64| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Int64Array>())
    };
    let batch = RecordBatch::try_from_iter(vec![
        ("snapshot_id", ints(&|c| c.snapshot_id as i64)),
        ("as_of", strs(&|c| c.as_of.clone())),
        ("written_at", strs(&|c| Some(c.written_at.clone()))),
        ("events", ints(&|c| c.events as i64)),
        ("tables_committed", ints(&|c| c.committed.len() as i64)),
        ("committed", strs(&|c| Some(c.committed.join(" ")))),
        (
            "lost_offsets",
            strs(&|c| {
                let lost: Vec<String> = c
                    .lost_offsets
                    .iter()
                    .map(|(topic, n)| format!("{topic}:{n}"))
                    .collect();
                Some(lost.join(" "))
            }),
        ),
    ])
    .map_err(QueryError::Render)?;
    Ok(batch)
}

/// A read-only session with every table of the snapshot registered.
pub async fn session(location: &Location, c: &Checkpoint) -> Result<SessionContext, Error> {
    let ctx = SessionContext::new();
    for name in c.tables.keys() {
        let (schema, batches) = location.read_table(c, name).await?;
        let table_err = |source| QueryError::Table {
            table: name.clone(),
            source,
        };
        let mem = MemTable::try_new(schema, vec![batches]).map_err(table_err)?;
        ctx.register_table(name.as_str(), Arc::new(mem))
            .map_err(table_err)?;
    }
    Ok(ctx)
}

/// Runs one read-only query.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, Error> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(QueryError::Refused)?;
    Ok(df.collect().await.map_err(QueryError::Failed)?)
}

/// Renders batches in `format`.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String, Error> {
    let fail = |e| Error::from(QueryError::Render(e));
    match format {
        Format::Table => Ok(
            datafusion::arrow::util::pretty::pretty_format_batches(batches)
                .map_err(fail)?
                .to_string(),
        ),
        Format::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = datafusion::arrow::csv::Writer::new(&mut buf);
                for b in batches {
                    w.write(b).map_err(fail)?;
                }
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
            for b in batches {
                w.write(b).map_err(fail)?;
            }
            w.finish().map_err(fail)?;
            let mut out = String::from_utf8_lossy(&w.into_inner()).into_owned();
            if out.is_empty() {
                out.push_str("[]");
            }
            Ok(out)
        }
    }
}
