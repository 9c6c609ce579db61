//! A Delta table's version as a DataFusion table whose files are read when a query runs, not
//! before: the query's filters prune files and row groups by their partition values and
//! Parquet statistics, its projection reads only the columns it names, and its rows stream
//! through the plan instead of being held whole. The alert rules read the partitions a
//! snapshot did not recompute this way (`Location::scan_delta`), so what a cut holds for them
//! is what their filters keep, not the table's history. A whole read (`Location::read_delta`:
//! a restore's check, `verify`) is the same scan, collected.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{FieldRef, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoArrow;
use object_store::ObjectStore;

use super::{Location, SnapshotError};

/// The files of one version of a Delta table, as a table provider. Its columns are the data
/// files' columns, then the partition column (a query names columns, so the order is free).
pub struct DeltaScan {
    table: String,
    schema: SchemaRef,
    /// The index in `schema` of each column of the table, in the table's order.
    table_order: Vec<usize>,
    table_schema: TableSchema,
    files: Vec<PartitionedFile>,
    store_url: ObjectStoreUrl,
    store: Arc<dyn ObjectStore>,
}

impl fmt::Debug for DeltaScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeltaScan")
            .field("table", &self.table)
            .field("files", &self.files.len())
            .finish()
    }
}

impl Location {
    /// Table `name` at `version` (`None`: its latest), leaving out the partitions (values of
    /// its partition column, as Delta writes them) in `except`, as a table whose files are
    /// read lazily. Only the Delta log is read here.
    pub async fn scan_delta(
        &self,
        name: &str,
        version: Option<u64>,
        except: Option<&std::collections::BTreeSet<String>>,
    ) -> Result<DeltaScan, SnapshotError> {
        let err = |message: String| SnapshotError::Table {
            table: name.to_string(),
            message,
        };
        let table = self
            .open_table(name, version)
            .await?
            .ok_or_else(|| err("no Delta log".into()))?;
        let state = table.snapshot().map_err(|e| err(e.to_string()))?;
        let whole: Schema = state
            .schema()
            .as_ref()
            .try_into_arrow()
            .map_err(|e| err(format!("schema: {e}")))?;
        let partition_columns = state.metadata().partition_columns().to_vec();
        let (partition_fields, file_fields): (Vec<FieldRef>, Vec<FieldRef>) = whole
            .fields()
            .iter()
            .cloned()
            .partition(|f| partition_columns.contains(f.name()));
        let mut files = Vec::new();
        for f in state.log_data().iter() {
            let values = f.partition_values_map();
            let value = |c: &str| values.get(c).cloned().flatten();
            if partition_fields
                .iter()
                .any(|c| value(c.name()).is_some_and(|v| except.is_some_and(|e| e.contains(&v))))
            {
                continue;
            }
            let partition_values = partition_fields
                .iter()
                .map(|c| {
                    let one = super::delta::constant(value(c.name()).as_deref(), c.data_type(), 1)
                        .map_err(|e| err(format!("partition value of `{}`: {e}", c.name())))?;
                    ScalarValue::try_from_array(&one as &ArrayRef, 0)
                        .map_err(|e| err(format!("partition value of `{}`: {e}", c.name())))
                })
                .collect::<Result<Vec<_>, SnapshotError>>()?;
            let path = self.path(&format!("tables/{name}/{}", f.path()));
            files.push(
                PartitionedFile::new(path.to_string(), f.size().max(0) as u64)
                    .with_partition_values(partition_values),
            );
        }
        let table_schema = TableSchema::builder(Arc::new(Schema::new(file_fields)))
            .with_table_partition_cols(partition_fields)
            .build();
        let schema = Arc::clone(table_schema.table_schema());
        let table_order = whole
            .fields()
            .iter()
            .map(|f| schema.index_of(f.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        Ok(DeltaScan {
            table: name.to_string(),
            schema,
            table_order,
            table_schema,
            files,
            // The store is registered in the session under this URL at each scan: one per
            // output, so scans of two outputs in one session do not take each other's store.
            store_url: ObjectStoreUrl::parse(format!(
                "quotaflow-output://{:016x}",
                xxhash_rust::xxh3::xxh3_64(self.url.as_str().as_bytes())
            ))
            .map_err(|e| err(e.to_string()))?,
            store: Arc::clone(&self.store),
        })
    }

    /// Reads table `name` at `version` (`None`: its latest) whole: its rows with the partition
    /// column put back, in the table's column order.
    pub async fn read_delta(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SnapshotError> {
        let scan = self.scan_delta(name, version, None).await?;
        let err = |e: datafusion::error::DataFusionError| SnapshotError::Table {
            table: name.to_string(),
            message: e.to_string(),
        };
        let ctx = SessionContext::new();
        let plan = scan
            .scan(&ctx.state(), Some(&scan.table_order), &[], None)
            .await
            .map_err(err)?;
        let schema = plan.schema();
        let batches = collect(plan, ctx.task_ctx()).await.map_err(err)?;
        Ok((schema, batches))
    }
}

#[async_trait]
impl TableProvider for DeltaScan {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => Arc::clone(&self.schema),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        state
            .runtime_env()
            .register_object_store(self.store_url.as_ref(), Arc::clone(&self.store));
        // The query's filters reach the Parquet source through DataFusion's physical filter
        // pushdown: files and row groups are pruned by partition values and statistics.
        let source = ParquetSource::new(self.table_schema.clone());
        // As many groups as the session reads in parallel, files dealt round-robin.
        let n = state
            .config()
            .target_partitions()
            .clamp(1, self.files.len());
        let mut groups = vec![Vec::new(); n];
        for (i, f) in self.files.iter().enumerate() {
            groups[i % n].push(f.clone());
        }
        let config = FileScanConfigBuilder::new(self.store_url.clone(), Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>)
    }
}
