//! The snapshot `quotaflow serve` answers from, and the follower that swaps in each new one.
//!
//! A [`Served`] is one snapshot's tables, each at the Delta version its checkpoint names, in
//! their own DataFusion session with `pg_catalog` and `information_schema`. Queries take the
//! current one when they start and keep it (an `Arc`) until their last row is sent; the
//! follower polls `_latest` and, when it names a newer snapshot, builds the next `Served`
//! beside the current one, re-reading only the tables whose Delta version changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{source_as_provider, MemTable};
use datafusion::logical_expr::{ColumnarValue, LogicalPlan, ScalarUDF, Volatility};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::DfSessionService;
use tokio::sync::watch;

use super::comments;
use crate::error::{Error, QueryError};
use crate::query::checkpoint;
use crate::snapshot::{Checkpoint, Location};

/// The schema of the tables (the database clients connect to, `serve.database`, is the
/// DataFusion catalog: `current_database()` names it).
pub const SCHEMA: &str = "public";

/// One snapshot, ready to answer queries.
pub struct Served {
    pub id: u64,
    /// The database name clients connect to (`serve.database`).
    pub database: String,
    /// The snapshot's event clock and when it was written (RFC 3339), from its checkpoint.
    pub as_of: Option<String>,
    pub written_at: String,
    /// Table → (Delta version, provider): unchanged tables are shared with the next snapshot.
    tables: BTreeMap<String, (u64, Arc<dyn TableProvider>)>,
    /// This snapshot's session (the dashboard's queries run on it).
    pub ctx: Arc<SessionContext>,
    /// The query handler over the same session (datafusion-postgres).
    pub service: Arc<DfSessionService>,
}

impl Served {
    /// The snapshot of `checkpoint`, sharing with `previous` every table at the same version.
    pub async fn load(
        location: &Location,
        checkpoint: &Checkpoint,
        previous: Option<&Served>,
        database: &str,
    ) -> Result<Served, Error> {
        let mut tables = BTreeMap::new();
        for (name, t) in &checkpoint.tables {
            let kept = previous
                .and_then(|p| p.tables.get(name))
                .filter(|(version, _)| *version == t.version);
            let provider = match kept {
                Some((_, provider)) => Arc::clone(provider),
                None => {
                    let (schema, batches) = location.read_table(checkpoint, name).await?;
                    let mem = MemTable::try_new(schema, vec![batches]).map_err(table_err(name))?;
                    Arc::new(mem) as Arc<dyn TableProvider>
                }
            };
            tables.insert(name.clone(), (t.version, provider));
        }
        let ctx = Arc::new(session(&tables, database).await?);
        Ok(Served {
            id: checkpoint.snapshot_id,
            database: database.to_string(),
            as_of: checkpoint.as_of.clone(),
            written_at: checkpoint.written_at.clone(),
            tables,
            service: Arc::new(DfSessionService::new_with_hooks(
                Arc::clone(&ctx),
                super::settings::hooks(),
            )),
            ctx,
        })
    }

    /// No snapshot yet (the pipeline has not written one): no tables, until the follower
    /// finds the first.
    pub async fn none(database: &str) -> Result<Served, Error> {
        let tables = BTreeMap::new();
        let ctx = Arc::new(session(&tables, database).await?);
        Ok(Served {
            id: 0,
            database: database.to_string(),
            as_of: None,
            written_at: String::new(),
            tables,
            service: Arc::new(DfSessionService::new_with_hooks(
                Arc::clone(&ctx),
                super::settings::hooks(),
            )),
            ctx,
        })
    }

    /// Whether `plan` (planned earlier, perhaps on another snapshot) reads only this
    /// snapshot's tables, and so can run as it is; otherwise it is planned again.
    pub fn holds_plan(&self, plan: &LogicalPlan) -> bool {
        let mut current = true;
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                if let Some((_, ours)) = self.tables.get(scan.table_name.table()) {
                    let same = source_as_provider(&scan.source)
                        .is_ok_and(|p| std::ptr::addr_eq(Arc::as_ptr(&p), Arc::as_ptr(ours)));
                    if !same {
                        current = false;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        current
    }

    pub fn table_count(&self) -> usize {
        self.tables.len()
    }
}

/// The session over `tables`: registered in catalog `database`, schema [`SCHEMA`], with
/// `pg_catalog`, `information_schema`, the contract's comments and a PostgreSQL-shaped
/// `version()`.
async fn session(
    tables: &BTreeMap<String, (u64, Arc<dyn TableProvider>)>,
    database: &str,
) -> Result<SessionContext, Error> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema(database, SCHEMA);
    let ctx = SessionContext::new_with_config(config);
    for (name, (_, provider)) in tables {
        ctx.register_table(name.as_str(), Arc::clone(provider))
            .map_err(table_err(name))?;
    }
    setup_pg_catalog(&ctx, database, EmptyContextProvider)
        .map_err(|e| table_err("pg_catalog")(*e))?;
    comments::install(&ctx, tables.keys(), database)
        .await
        .map_err(table_err("pg_catalog.pg_description"))?;
    ctx.register_udf(version());
    ctx.register_udf(to_regtype(&ctx).await?);
    ctx.register_udf(visible("pg_type_is_visible"));
    Ok(ctx)
}

fn table_err(table: &str) -> impl FnOnce(datafusion::error::DataFusionError) -> Error + '_ {
    move |source| {
        QueryError::Table {
            table: table.to_string(),
            source,
        }
        .into()
    }
}

/// `version()` as PostgreSQL words it (clients such as SQLAlchemy parse the leading
/// `PostgreSQL <major>.<minor>`), naming quotaflow and DataFusion after it.
fn version() -> ScalarUDF {
    let text = format!(
        "PostgreSQL 16.6 on x86_64-pc-linux-gnu, served by quotaflow {} (Apache DataFusion {})",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    );
    datafusion::logical_expr::create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::Utf8(Some(text.clone())),
            ))
        }),
    )
}

/// `pg_type_is_visible(oid)` and the like: every object of this server lives in `pg_catalog`
/// or `public`, both on the search path, so each is visible (NULL for a NULL oid).
fn visible(name: &str) -> ScalarUDF {
    use datafusion::arrow::array::{Array, BooleanArray};
    datafusion::logical_expr::create_udf(
        name,
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let oids = &arrays[0];
            let out: BooleanArray = (0..oids.len())
                .map(|i| (!oids.is_null(i)).then_some(true))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// `to_regtype(name)`: the oid of the type `name` in `pg_catalog.pg_type` (optionally
/// schema-qualified), NULL when there is none — what psycopg asks when it looks a type up.
async fn to_regtype(ctx: &SessionContext) -> Result<ScalarUDF, Error> {
    use datafusion::arrow::array::{Array, AsArray, Int32Array, StringArray};
    use datafusion::arrow::datatypes::Int32Type;
    let err = table_err("pg_catalog.pg_type");
    let batches = ctx
        .sql("SELECT typname, CAST(oid AS INT) AS oid FROM pg_catalog.pg_type")
        .await
        .map_err(table_err("pg_catalog.pg_type"))?
        .collect()
        .await
        .map_err(err)?;
    let mut oids = std::collections::HashMap::new();
    for b in &batches {
        let names = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)
            .map_err(|e| table_err("pg_catalog.pg_type")(e.into()))?;
        let names = names.as_string::<i32>();
        let ids = b.column(1).as_primitive::<Int32Type>();
        for i in 0..b.num_rows() {
            if !names.is_null(i) && !ids.is_null(i) {
                oids.insert(names.value(i).to_string(), ids.value(i));
            }
        }
    }
    Ok(datafusion::logical_expr::create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let names = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
            let names: &StringArray = names.as_string::<i32>();
            let out: Int32Array = names
                .iter()
                .map(|n| {
                    n.and_then(|n| {
                        let n = n.trim().trim_matches('"');
                        let n = n.strip_prefix("pg_catalog.").unwrap_or(n);
                        oids.get(n).copied()
                    })
                })
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    ))
}

/// Polls `_latest` every `poll` and publishes each newer snapshot on `tx`. A snapshot that
/// cannot be loaded is logged and tried again at the next poll; the current one stays.
pub async fn follow(
    location: Location,
    tx: watch::Sender<Arc<Served>>,
    poll: Duration,
    on_error: impl Fn(),
) {
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let current = Arc::clone(&tx.borrow());
        let next = match location.latest().await {
            Ok(Some(l)) if l.snapshot_id != current.id => l.snapshot_id,
            Ok(_) => continue,
            Err(e) => {
                on_error();
                tracing::warn!(error = %e, "cannot read _latest; serving snapshot {} still", current.id);
                continue;
            }
        };
        let started = Instant::now();
        let loaded = match checkpoint(&location, Some(next)).await {
            Ok(c) => Served::load(&location, &c, Some(&current), &current.database).await,
            Err(e) => Err(e),
        };
        match loaded {
            Ok(served) => {
                tracing::info!(
                    snapshot = served.id,
                    ms = started.elapsed().as_millis() as u64,
                    "serving the new snapshot"
                );
                tx.send_replace(Arc::new(served));
            }
            Err(e) => {
                on_error();
                tracing::warn!(snapshot = next, error = %e, "cannot load the new snapshot; serving snapshot {} still", current.id);
            }
        }
    }
}
