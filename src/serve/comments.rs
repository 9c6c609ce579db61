//! Table and column comments from the output contract (`spec/METRICS.md`), as
//! `pg_catalog.pg_description` rows: what psql's `\d+`, SQLAlchemy's inspector and JDBC's
//! `DatabaseMetaData` show beside each table and column.
//!
//! A table's comment is its contract section (heading, then text); a column's is the first
//! bullet or sentence of that section naming the column in backticks.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::JoinType;
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{col, lit, SessionContext};

use super::served::SCHEMA;

/// The output contract quotaflow serves (a copy of the steering spec's METRICS.md).
const CONTRACT: &str = include_str!("../../spec/METRICS.md");

/// Comments of one table: its own, and per column.
#[derive(Debug, Default, PartialEq)]
pub struct Described {
    pub table: String,
    pub columns: BTreeMap<String, String>,
}

/// Every table section of the contract, by table name.
pub fn contract() -> BTreeMap<String, Described> {
    let mut out = BTreeMap::new();
    let mut sections: Vec<(String, String, Vec<String>)> = Vec::new();
    for line in CONTRACT.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            let name = heading.split_whitespace().next().unwrap_or("").to_string();
            sections.push((name, heading.trim().to_string(), Vec::new()));
        } else if line.starts_with("## ") {
            sections.push((String::new(), String::new(), Vec::new()));
        } else if let Some((_, _, lines)) = sections.last_mut() {
            lines.push(line.to_string());
        }
    }
    for (name, heading, lines) in sections.into_iter().filter(|(n, _, _)| !n.is_empty()) {
        let items = items(&lines);
        let text = items.join(" ");
        let mut d = Described {
            table: format!("{heading}. {text}").trim().to_string(),
            ..Described::default()
        };
        for item in &items {
            for name in backticked(item) {
                d.columns.entry(name).or_insert_with(|| item.clone());
            }
        }
        out.insert(name, d);
    }
    out
}

/// A section's bullets (continuation lines joined) and the sentences of its paragraphs.
fn items(lines: &[String]) -> Vec<String> {
    let mut bullets: Vec<String> = Vec::new();
    let mut prose = String::new();
    for line in lines {
        let t = line.trim();
        if let Some(b) = t.strip_prefix("- ") {
            bullets.push(b.to_string());
        } else if t.is_empty() {
            prose.push(' ');
        } else if line.starts_with("  ") && !bullets.is_empty() && prose.trim().is_empty() {
            if let Some(last) = bullets.last_mut() {
                last.push(' ');
                last.push_str(t);
            }
        } else {
            prose.push(' ');
            prose.push_str(t);
        }
    }
    let mut out: Vec<String> = prose
        .split(". ")
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect();
    out.extend(bullets);
    out
}

/// The identifiers an item names in backticks (`a`, or a list `a, b, c`).
fn backticked(item: &str) -> Vec<String> {
    item.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(|quoted| quoted.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

/// Replaces `pg_catalog.pg_description` of `ctx` by the contract's comments on `tables`:
/// a view joining them to `pg_class` (whose oids are assigned as it is read).
pub async fn install(
    ctx: &SessionContext,
    tables: impl Iterator<Item = &String>,
    database: &str,
) -> Result<()> {
    let contract = contract();
    let (mut relname, mut objsubid, mut description) = (Vec::new(), Vec::new(), Vec::new());
    for table in tables {
        let Some(d) = contract.get(table) else {
            continue;
        };
        relname.push(table.clone());
        objsubid.push(0);
        description.push(d.table.clone());
        let schema = ctx.table(table.as_str()).await?.schema().as_arrow().clone();
        for (i, field) in schema.fields().iter().enumerate() {
            if let Some(c) = d.columns.get(field.name()) {
                relname.push(table.clone());
                objsubid.push(i32::try_from(i + 1).unwrap_or(i32::MAX));
                description.push(c.clone());
            }
        }
    }
    let rows = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("d_relname", DataType::Utf8, false),
            Field::new("objsubid", DataType::Int32, false),
            Field::new("description", DataType::Utf8, false),
        ])),
        vec![
            Arc::new(StringArray::from(relname)),
            Arc::new(Int32Array::from(objsubid)),
            Arc::new(StringArray::from(description)),
        ],
    )?;
    let comments = ctx.read_batch(rows)?;
    let classes = ctx.table("pg_catalog.pg_class").await?.select(vec![
        col("oid").alias("objoid"),
        col("relname"),
        col("relnamespace"),
    ])?;
    let ours = ctx
        .table("pg_catalog.pg_namespace")
        .await?
        .filter(col("nspname").eq(lit(SCHEMA)))?
        .select(vec![col("oid").alias("ns_oid")])?;
    let class_of_classes = ctx
        .table("pg_catalog.pg_class")
        .await?
        .filter(col("relname").eq(lit("pg_class")))?
        .select(vec![col("oid").alias("classoid")])?;
    let view = comments
        .join(classes, JoinType::Inner, &["d_relname"], &["relname"], None)?
        .join(ours, JoinType::Inner, &["relnamespace"], &["ns_oid"], None)?
        .join_on(class_of_classes, JoinType::Inner, [])?
        .select(vec![
            col("objoid"),
            col("classoid"),
            col("objsubid"),
            col("description"),
        ])?
        .into_unoptimized_plan();
    let catalog = ctx
        .catalog(database)
        .ok_or_else(|| DataFusionError::Plan(format!("no catalog {database}")))?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| DataFusionError::Plan("no pg_catalog schema".into()))?;
    catalog.register_schema(
        "pg_catalog",
        Arc::new(WithComments {
            inner,
            description: Arc::new(ViewTable::new(view, None)),
        }),
    )?;
    Ok(())
}

/// `pg_catalog` with `pg_description` replaced.
#[derive(Debug)]
struct WithComments {
    inner: Arc<dyn SchemaProvider>,
    description: Arc<dyn TableProvider>,
}

#[async_trait]
impl SchemaProvider for WithComments {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name == "pg_description" {
            return Ok(Some(Arc::clone(&self.description)));
        }
        self.inner.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_table_and_its_formula_columns_have_comments() {
        let c = contract();
        for t in [
            "rep_daily",
            "deals_current",
            "attainment",
            "forecast",
            "win_rates",
            "stage_conversion",
            "activity_kpis",
            "trends",
            "performance",
            "leaderboard",
            "survey_responses",
            "survey_nps",
            "commissions",
            "data_quality",
        ] {
            let d = c.get(t).unwrap_or_else(|| panic!("no section for {t}"));
            assert!(
                d.table.starts_with(&format!("{t} — grain")),
                "{t}: {}",
                d.table
            );
        }
        let a = &c["attainment"];
        assert!(
            a.columns["quota"].contains("day-based proration"),
            "{:?}",
            a.columns["quota"]
        );
        assert!(a.columns["pacing"].starts_with("`pacing` = attainment / time_elapsed"));
        // A backticked list names each column.
        assert!(c["deals_current"].columns.contains_key("account_id"));
        assert!(c["rep_daily"].columns["connected_calls"].contains("outcome `connected`"));
    }
}
