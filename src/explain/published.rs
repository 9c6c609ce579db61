//! The published row a figure is explained against: read from the snapshot's Delta table at
//! the version its checkpoint names, every cell as the table prints it.

use std::sync::Arc;

use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{Error, QueryError};
use crate::snapshot::{Checkpoint, Location};

/// The published row of `table` with `keys` at `checkpoint`, column by column as text.
pub(crate) async fn published_row(
    location: &Location,
    checkpoint: &Checkpoint,
    table: &str,
    keys: &[(String, String)],
) -> Result<Option<Vec<(String, Option<String>)>>, Error> {
    if !checkpoint.tables.contains_key(table) {
        return Ok(None);
    }
    let (schema, batches) = location.read_table(checkpoint, table).await?;
    let table_err = |source| QueryError::Table {
        table: table.to_string(),
        source,
    };
    let mem = datafusion::datasource::MemTable::try_new(Arc::clone(&schema), vec![batches])
        .map_err(table_err)?;
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", Arc::new(mem)).map_err(table_err)?;
    let filter = keys
        .iter()
        .map(|(k, v)| {
            format!(
                "CAST(\"{}\" AS VARCHAR) = '{}'",
                k.replace('"', "\"\""),
                v.replace('\'', "''")
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let where_ = if filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {filter}")
    };
    let batches = crate::query::query(&ctx, &format!("SELECT * FROM t{where_} LIMIT 1")).await?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    let options = FormatOptions::default();
    let mut row = Vec::with_capacity(b.num_columns());
    for (f, c) in schema.fields().iter().zip(b.columns()) {
        let cell = if c.is_null(0) {
            None
        } else {
            let fmt = ArrayFormatter::try_new(c.as_ref(), &options).map_err(QueryError::Render)?;
            Some(fmt.value(0).to_string())
        };
        row.push((f.name().clone(), cell));
    }
    Ok(Some(row))
}
