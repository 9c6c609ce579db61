//! `quotaflow sql`: every table of one snapshot registered by name in a read-only DataFusion
//! session. DDL, DML, COPY and other statements are refused before planning.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;

use crate::error::{Error, QueryError, UsageError};
use crate::snapshot::{Location, Manifest};

/// Output formats of `quotaflow sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// The manifest of snapshot `id`, or of the one `_latest` names.
pub async fn manifest(location: &Location, id: Option<u64>) -> Result<Manifest, Error> {
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
    Ok(location.manifest(id).await?)
}

/// A read-only session with every table of the snapshot registered.
pub async fn session(location: &Location, m: &Manifest) -> Result<SessionContext, Error> {
    let ctx = SessionContext::new();
    for t in &m.tables {
        let (schema, batches) = location.read_table(m, &t.name).await?;
        let table_err = |source| QueryError::Table {
            table: t.name.clone(),
            source,
        };
        let mem = MemTable::try_new(schema, vec![batches]).map_err(table_err)?;
        ctx.register_table(t.name.as_str(), Arc::new(mem))
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
