//! The metric engine: a DataFusion session over the state tables, evaluating the pipeline's
//! SQL files in order. Each file's result is registered under its name while a later file or
//! alert rule names it, so later files can build on earlier ones (helper views have
//! `publish = false`); every published table goes to the caller as soon as it is computed,
//! with no snapshot-wide columns (a row stays the same bytes until its inputs change). The
//! engine owns no state between calls.

mod partitions;
pub mod plan;
pub mod udf;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::alert::Breach;
use crate::config::Metrics;
use crate::state::changes::Changes;
use crate::state::State;
use partitions::{in_partitions, only_partitions};
pub use plan::fingerprints;
use plan::{Analysis, Plan, Publish};
use udf::{FxTable, UdfContext};

/// A metric table a snapshot holds.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    /// Its partition column in the output (`partition_by` of the pipeline file).
    pub partition_by: Option<String>,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Which of its partitions these rows replace.
    pub publish: Publish,
}

impl Table {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A failure of the SQL stage, naming the table (and so the SQL file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("table `{table}` ({origin}): {source}")]
    Sql {
        table: String,
        origin: String,
        source: DataFusionError,
    },
    #[error("building state table `{table}`: {source}")]
    State {
        table: String,
        source: DataFusionError,
    },
}

/// Evaluates a pipeline's SQL over a state.
#[derive(Debug, Clone)]
pub struct Engine {
    metrics: Arc<Metrics>,
    analysis: Arc<Analysis>,
}

/// Threads a snapshot's SQL may use: bounded, so the consumer keeps a core.
const TARGET_PARTITIONS: usize = 2;

impl Engine {
    pub fn new(metrics: Arc<Metrics>) -> Engine {
        let analysis = Arc::new(Analysis::of(&metrics));
        Engine { metrics, analysis }
    }

    /// Why every snapshot of this pipeline is evaluated in full, if it is.
    pub fn full_because(&self) -> Option<&str> {
        self.analysis.full_because.as_deref()
    }

    /// Whether the snapshot of `plan` computes a statement over the activity facts (and so
    /// may need the rep × day grain's months out of memory: `state::residency`).
    pub fn reads_grain(&self, plan: &Plan) -> bool {
        let activities = crate::state::changes::Input::Activities;
        plan.compute
            .iter()
            .zip(&self.analysis.inputs)
            .any(|(computed, inputs)| *computed && inputs.contains(&activities))
    }

    /// The plan of a snapshot of `state` after `changes`.
    pub fn plan(&self, state: &State, changes: &Changes) -> Plan {
        let bounds = crate::state::tables::day_bounds(state, &self.metrics.calendar);
        Plan::of(&self.analysis, &self.metrics, changes, bounds)
    }

    /// The plan that evaluates everything over the whole state (the batch path).
    pub fn full_plan(&self) -> Plan {
        Plan::full(&self.analysis, &self.metrics)
    }

    /// Plans and runs every SQL file over an empty state: catches unknown tables, columns and
    /// functions without any I/O (`quotaflow validate`).
    pub async fn check(&self) -> Result<Vec<Table>, EngineError> {
        let tables = self.compute_with_alerts(&State::default(), 0).await?.0;
        for t in &tables {
            if let Some(c) = &t.partition_by {
                if t.schema.column_with_name(c).is_none() {
                    let spec = self.metrics.tables.iter().find(|s| s.name == t.name);
                    return Err(EngineError::Sql {
                        table: t.name.clone(),
                        origin: spec.map(|s| s.origin.clone()).unwrap_or_default(),
                        source: DataFusionError::Plan(format!(
                            "partition_by = \"{c}\" is not one of the columns it returns"
                        )),
                    });
                }
            }
        }
        Ok(tables)
    }

    /// Computes every published table for `state` as snapshot `snapshot_id`.
    pub async fn compute(
        &self,
        state: &State,
        snapshot_id: u64,
    ) -> Result<Vec<Table>, EngineError> {
        Ok(self.compute_with_alerts(state, snapshot_id).await?.0)
    }

    /// Computes every published table, then evaluates the alert rules over them.
    pub async fn compute_with_alerts(
        &self,
        state: &State,
        snapshot_id: u64,
    ) -> Result<(Vec<Table>, Vec<Breach>), EngineError> {
        let mut tables = Vec::new();
        let rules = self
            .prepare(state, snapshot_id, self.full_plan())?
            .run(|t| {
                tables.push(t);
                Ok::<_, EngineError>(())
            })
            .await?;
        let (breaches, _) = rules.evaluate().await?;
        Ok((tables, breaches))
    }

    /// Takes what a snapshot's SQL reads from `state` (its Arrow tables, restricted to the
    /// plan's scope): after this the state may change while [`Prepared::run`] computes.
    pub fn prepare(
        &self,
        state: &State,
        snapshot_id: u64,
        plan: Plan,
    ) -> Result<Prepared, EngineError> {
        let (ctx, state_tables) = self.session(state, snapshot_id, &plan)?;
        Ok(Prepared {
            ctx,
            state_tables,
            metrics: Arc::clone(&self.metrics),
            analysis: Arc::clone(&self.analysis),
            plan,
        })
    }

    fn session(
        &self,
        state: &State,
        snapshot_id: u64,
        plan: &Plan,
    ) -> Result<(SessionContext, Vec<String>), EngineError> {
        let p = &self.metrics;
        let config = SessionConfig::new()
            .with_target_partitions(TARGET_PARTITIONS)
            .with_information_schema(false);
        let ctx = SessionContext::new_with_config(config);
        let started = std::time::Instant::now();
        let mut rates: HashMap<String, Vec<(i32, i128)>> = HashMap::new();
        for f in state.fx.values().map(|v| &v.latest) {
            let mut r = f.rate_to_corporate;
            r.rescale(crate::event::RATE_SCALE);
            rates
                .entry(f.currency.clone())
                .or_default()
                .push((f.effective_date, r.mantissa()));
        }
        rates.values_mut().for_each(|v| v.sort_unstable());
        let fx = FxTable {
            corporate: p.corporate_currency.clone(),
            rates,
        };
        // Only the state tables a statement or rule of this plan names (a word of its SQL) are
        // built: a cut that computes no survey table builds no table of every survey response.
        let statements = p.tables.len();
        let wanted = |name: &str| {
            let ran = plan.compute.iter().chain(&plan.rules);
            (ran.zip(&self.analysis.words)).any(|(on, words)| *on && words.contains(name))
        };
        debug_assert_eq!(plan.rules.len(), self.analysis.words.len() - statements);
        let unconverted = if wanted("unconverted") {
            Some(
                udf::unconverted(state, &fx).map_err(|e| EngineError::State {
                    table: "unconverted".into(),
                    source: e.into(),
                })?,
            )
        } else {
            None
        };
        let udf_ctx = Arc::new(UdfContext {
            calendar: p.calendar,
            fx,
            commissions: p.commissions.clone(),
        });
        for f in udf::all(udf_ctx) {
            ctx.register_udf(f);
        }
        let converted = started.elapsed();
        let scope = plan.scope.as_ref();
        let mut tables = crate::state::tables::build(state, p, snapshot_id, scope, &wanted)
            .map_err(|e| EngineError::State {
                table: "*".into(),
                source: e.into(),
            })?;
        tables.extend(unconverted.map(|u| ("unconverted", u)));
        tracing::debug!(
            fx_and_unconverted_ms = converted.as_millis() as u64,
            state_tables_ms = (started.elapsed() - converted).as_millis() as u64,
            "state tables built"
        );
        let names = tables.iter().map(|(name, _)| name.to_string()).collect();
        for (name, batch) in tables {
            let state_err = |source| EngineError::State {
                table: name.to_string(),
                source,
            };
            let mem = MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(state_err)?;
            ctx.register_table(name, Arc::new(mem)).map_err(state_err)?;
        }
        Ok((ctx, names))
    }
}

/// A snapshot's SQL with the state tables it reads, ready to run independently of the state.
pub struct Prepared {
    ctx: SessionContext,
    /// Names of the state tables registered in `ctx`.
    state_tables: Vec<String>,
    metrics: Arc<Metrics>,
    analysis: Arc<Analysis>,
    plan: Plan,
}

/// A snapshot's alert rules, ready to run once the tables they read whole are provided.
pub struct Rules {
    ctx: SessionContext,
    metrics: Arc<Metrics>,
    /// Per rule, whether it is evaluated.
    evaluate: Vec<bool>,
    merges: Vec<Merge>,
}

/// A published table a rule reads whole, of which this snapshot computed only a part.
pub struct Merge {
    pub table: String,
    pub partition_by: Option<String>,
    /// `Partitions`: the latest version's rows outside them are needed; `Unchanged`: all.
    pub publish: Publish,
    computed: Option<Vec<RecordBatch>>,
}

impl Prepared {
    /// The state tables this snapshot built: those a statement it computes, or a rule it
    /// evaluates, names.
    pub fn state_tables(&self) -> &[String] {
        &self.state_tables
    }

    /// Runs every SQL file in order, handing each published table to `publish` as soon as it
    /// is computed, then the alert rules over the results.
    ///
    /// Memory stays bounded by what is still to be read, not by the whole snapshot: a table
    /// (state or computed) stays registered only until the last computed statement that
    /// names it has run, or to the end if an evaluated rule names it, unless the rules read it
    /// merged with its latest version ([`Merge`]: then they hold only its partitions in
    /// scope). So `publish` can encode a table and drop it while later ones are computed.
    pub async fn run<E: From<EngineError>>(
        self,
        mut publish: impl FnMut(Table) -> Result<(), E>,
    ) -> Result<Rules, E> {
        let ctx = self.ctx;
        let plan = self.plan;
        let merging = plan.merges(&self.analysis);
        let statements = self.metrics.tables.len();
        let (stmt_words, rule_words) = self.analysis.words.split_at(statements);
        let mut last_read: HashMap<&str, usize> = HashMap::new();
        for (i, words) in stmt_words.iter().enumerate() {
            if plan.compute[i] {
                last_read.extend(words.iter().map(|w| (w.as_str(), i)));
            }
        }
        let merged: BTreeSet<&str> = (merging.keys())
            .map(|i| self.metrics.tables[*i].name.as_str())
            .collect();
        let by_rules: BTreeSet<&str> = (rule_words.iter().zip(&plan.rules))
            .filter(|(_, on)| **on)
            .flat_map(|(words, _)| words.iter().map(String::as_str))
            .filter(|w| !merged.contains(w))
            .collect();
        let live = |name: &str, now: usize| {
            let name = name.to_ascii_lowercase();
            by_rules.contains(name.as_str())
                || last_read.get(name.as_str()).is_some_and(|at| *at > now)
        };
        let mut registered = self.state_tables;
        let mut merges = Vec::new();
        for (i, spec) in self.metrics.tables.iter().enumerate() {
            if !plan.compute[i] {
                if spec.publish {
                    publish(Table {
                        name: spec.name.clone(),
                        partition_by: spec.partition_by.clone(),
                        schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                        batches: Vec::new(),
                        publish: Publish::Unchanged,
                    })?;
                }
                if let Some(p) = merging.get(&i) {
                    merges.push(Merge {
                        table: spec.name.clone(),
                        partition_by: spec.partition_by.clone(),
                        publish: p.clone(),
                        computed: None,
                    });
                }
                continue;
            }
            let sql_err = |source| EngineError::Sql {
                table: spec.name.clone(),
                origin: spec.origin.clone(),
                source,
            };
            let started = std::time::Instant::now();
            let mut df = ctx.sql(&spec.sql).await.map_err(sql_err)?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            // A table no later statement reads is computed for the partitions it replaces
            // alone: the filter on its partition column goes down to its inputs where it can
            // (the scope holds a whole year for its year periods: a period table aggregated
            // every period in it, to publish those that changed).
            let mut filtered = false;
            if let (false, Publish::Partitions(keep), Some(c)) =
                (live(&spec.name, i), &plan.publish[i], &spec.partition_by)
            {
                df = in_partitions(df, c, keep).map_err(sql_err)?;
                filtered = true;
            }
            let all = df.collect().await.map_err(sql_err)?;
            tracing::debug!(
                table = spec.name,
                ms = started.elapsed().as_millis() as u64,
                "table computed"
            );
            // Later statements read every row computed (the scope's context included); the
            // table publishes the partitions it replaces.
            if live(&spec.name, i) {
                let mem =
                    MemTable::try_new(Arc::clone(&schema), vec![all.clone()]).map_err(sql_err)?;
                ctx.register_table(spec.name.as_str(), Arc::new(mem))
                    .map_err(sql_err)?;
                registered.push(spec.name.clone());
            }
            registered.retain(|name| {
                live(name, i) || {
                    let _ = ctx.deregister_table(name.as_str());
                    false
                }
            });
            // (rows computed under the filter are those of the partitions already)
            let batches = match (&plan.publish[i], &spec.partition_by) {
                (Publish::Partitions(keep), Some(c)) if !filtered => {
                    only_partitions(&all, c, keep).map_err(sql_err)?
                }
                _ => all,
            };
            if let Some(p) = merging.get(&i) {
                merges.push(Merge {
                    table: spec.name.clone(),
                    partition_by: spec.partition_by.clone(),
                    publish: p.clone(),
                    computed: Some(batches.clone()),
                });
            }
            if spec.publish {
                publish(Table {
                    name: spec.name.clone(),
                    partition_by: spec.partition_by.clone(),
                    schema,
                    batches,
                    publish: plan.publish[i].clone(),
                })?;
            }
        }
        Ok(Rules {
            ctx,
            metrics: self.metrics,
            evaluate: plan.rules,
            merges,
        })
    }
}

impl Rules {
    /// Whether `table` is registered for the rules now. Before [`Rules::provide`], a table the
    /// rules read merged is not: its computed partitions wait in [`Rules::merges`].
    pub fn holds(&self, table: &str) -> bool {
        self.ctx.table_exist(table).unwrap_or(false)
    }

    /// The tables to provide (`Rules::provide`) before the rules run.
    pub fn merges(&self) -> &[Merge] {
        &self.merges
    }

    /// Registers table `merges()[i]` for the rules: `previous` is the latest version of the
    /// partitions this snapshot did not replace (a table read as the rules' queries run, so
    /// their filters prune it), united with the rows this snapshot computed.
    pub fn provide(
        &mut self,
        i: usize,
        previous: Arc<dyn TableProvider>,
    ) -> Result<(), EngineError> {
        let m = &mut self.merges[i];
        let table = m.table.clone();
        let err = |source: DataFusionError| EngineError::Sql {
            table: table.clone(),
            origin: "its latest version".into(),
            source,
        };
        let schema = previous.schema();
        let merged = match m.computed.take() {
            None => previous,
            Some(computed) => {
                // The computed rows in the latest version's columns and types, by name.
                let mut batches = Vec::with_capacity(computed.len());
                for b in computed {
                    let cols = schema
                        .fields()
                        .iter()
                        .map(|f| {
                            let c = b.column_by_name(f.name()).ok_or_else(|| {
                                DataFusionError::Plan(format!("no column `{}`", f.name()))
                            })?;
                            Ok(datafusion::arrow::compute::cast(c, f.data_type())?)
                        })
                        .collect::<Result<Vec<_>, DataFusionError>>()
                        .map_err(err)?;
                    batches.push(
                        RecordBatch::try_new(Arc::clone(&schema), cols)
                            .map_err(|e| err(e.into()))?,
                    );
                }
                let mem = MemTable::try_new(Arc::clone(&schema), vec![batches]).map_err(err)?;
                self.ctx
                    .read_table(previous)
                    .and_then(|p| p.union(self.ctx.read_table(Arc::new(mem))?))
                    .map_err(err)?
                    .into_view()
            }
        };
        let _ = self.ctx.deregister_table(table.as_str());
        self.ctx
            .register_table(table.as_str(), merged)
            .map_err(err)?;
        Ok(())
    }

    /// Runs the rules the plan evaluates: their breaches, and the names of the rules run
    /// (the alerts of the others stay as they are).
    pub async fn evaluate(self) -> Result<(Vec<Breach>, Vec<String>), EngineError> {
        let ctx = self.ctx;
        let mut breaches = Vec::new();
        let mut evaluated = Vec::new();
        for (rule, on) in self.metrics.alerts.iter().zip(&self.evaluate) {
            if !on {
                continue;
            }
            evaluated.push(rule.name.clone());
            let sql_err = |source| EngineError::Sql {
                table: format!("alert {}", rule.name),
                origin: rule.origin.clone(),
                source,
            };
            let batches = ctx
                .sql(&rule.sql)
                .await
                .map_err(sql_err)?
                .collect()
                .await
                .map_err(sql_err)?;
            for b in batches {
                let col = |name: &str, ty: &DataType| -> Result<ArrayRef, EngineError> {
                    let c = b.column_by_name(name).ok_or_else(|| {
                        sql_err(DataFusionError::Plan(format!("an alert query must return `key`, `value` and `message`; `{name}` is missing")))
                    })?;
                    datafusion::arrow::compute::cast(c, ty).map_err(|e| sql_err(e.into()))
                };
                let key = col("key", &DataType::Utf8)?;
                let value = col("value", &DataType::Float64)?;
                let message = col("message", &DataType::Utf8)?;
                let (key, value, message) = (
                    key.as_string::<i32>(),
                    value.as_primitive::<Float64Type>(),
                    message.as_string::<i32>(),
                );
                for i in 0..b.num_rows() {
                    breaches.push(Breach {
                        rule: rule.name.clone(),
                        severity: rule.severity.clone(),
                        key: if key.is_null(i) {
                            String::new()
                        } else {
                            key.value(i).to_string()
                        },
                        value: (!value.is_null(i)).then(|| value.value(i)),
                        message: if message.is_null(i) {
                            String::new()
                        } else {
                            message.value(i).to_string()
                        },
                    });
                }
            }
        }
        Ok((breaches, evaluated))
    }
}
