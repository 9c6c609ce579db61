//! One published table as a Delta Lake table at `<output>/tables/<table>/` (METRICS.md, "Where
//! the tables live"): a snapshot's rows are split by the table's partition column, each
//! partition's rows hashed as a multiset (`encode`), and only the partitions whose hash
//! differs from the table's latest version are rewritten, in one commit that carries the
//! snapshot's `txn` action. A table whose rows did not change gets no commit.
//!
//! The hash of a partition is part of its files' names (`part-<hash>-<snapshot id>-<n>.parquet`)
//! and their add actions' tags (`quotaflow.hash`), so the next snapshot knows what a version
//! holds from its log alone. Partition columns live in the log (`partitionValues`) and the
//! directory name, not in the Parquet files, as the Delta protocol has it.
//!
//! The log goes through the output's own object store (handed to delta-rs as its storage
//! backend), so the fault-injecting store and the S3 client the project builds are the ones in
//! the path. Commits are atomic by the store's conditional put (`PutMode::Create`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Once};

use datafusion::arrow::array::{new_null_array, ArrayRef};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake_core::kernel::{
    new_metadata, Action, Add, MetadataExt, Remove, StructType, Transaction,
};
use deltalake_core::logstore::{
    default_logstore, logstore_factories, LogStore, LogStoreFactory, StorageConfig,
};
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use object_store::ObjectStoreExt;
use url::Url;

use super::encode::{encode_segment, hash_of_path, EncodedTable};
use super::{Location, SnapshotError};

/// The tag of an add action that holds its partition's hash.
const HASH_TAG: &str = "quotaflow.hash";
/// Hive's name for a NULL partition value, which every Delta reader knows (and what names the
/// NULL partition among the partitions an [`EncodedTable`] replaces).
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// How one table is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub name: String,
    /// The column whose value decides a row's partition (`None`: one partition).
    pub partition_by: Option<String>,
}

/// What committing one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The table's latest version after it (the one the checkpoint names).
    pub version: u64,
    /// Whether the table holds a commit of this snapshot: made by this call, or by an
    /// earlier attempt whose `txn` was found in the log (false: its rows did not change).
    pub committed: bool,
    pub files_added: u64,
    pub files_removed: u64,
    pub bytes_written: u64,
}

/// What one maintenance run removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintained {
    pub files_removed: u64,
    pub log_entries_removed: u64,
}

/// Log settings of every table quotaflow creates.
#[derive(Debug, Clone, Copy)]
pub struct LogSettings {
    /// A Delta log checkpoint every this many commits.
    pub checkpoint_interval: u32,
}

/// The table properties quotaflow sets on its tables: its own log settings, no log cleanup by
/// the writer (maintenance does it, from the oldest retained version), and no retention of
/// removed files in the log. What a retained snapshot still reads is kept by maintenance from
/// the retained checkpoints' versions, not by tombstones; and tombstones kept for the default
/// week would make every Delta log checkpoint, every load of the log and every vacuum carry
/// each file ever replaced in that week (hundreds a snapshot), a cost growing with time.
fn table_config(log: &LogSettings) -> [(String, String); 3] {
    [
        (
            TableProperty::CheckpointInterval.as_ref().to_string(),
            log.checkpoint_interval.to_string(),
        ),
        (
            TableProperty::EnableExpiredLogCleanup.as_ref().to_string(),
            "false".to_string(),
        ),
        (
            TableProperty::DeletedFileRetentionDuration
                .as_ref()
                .to_string(),
            "interval 0 seconds".to_string(),
        ),
    ]
}

fn delta_err(table: &str) -> impl Fn(DeltaTableError) -> SnapshotError + '_ {
    move |e| SnapshotError::Table {
        table: table.to_string(),
        message: e.to_string(),
    }
}

pub(super) fn arrow_err(
    table: &str,
) -> impl Fn(datafusion::arrow::error::ArrowError) -> SnapshotError + '_ {
    move |e| SnapshotError::Table {
        table: table.to_string(),
        message: e.to_string(),
    }
}

/// delta-rs builds log stores for `memory://` and `file://` only; object stores get the same
/// default log store (commits by conditional put) over the store we hand it.
struct ConditionalPutLogStores;

impl LogStoreFactory for ConditionalPutLogStores {
    fn with_options(
        &self,
        prefixed_store: deltalake_core::logstore::ObjectStoreRef,
        root_store: deltalake_core::logstore::ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> Result<Arc<dyn LogStore>, DeltaTableError> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_log_stores() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in [
            "s3://", "s3a://", "gs://", "az://", "abfs://", "abfss://", "azure://",
        ] {
            if let Ok(url) = Url::parse(scheme) {
                logstore_factories().insert(url, Arc::new(ConditionalPutLogStores));
            }
        }
    });
}

impl Location {
    /// The URL of table `name`'s directory.
    pub fn table_url(&self, name: &str) -> Url {
        let mut url = self.url.clone();
        let path = format!("{}/tables/{name}/", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    /// Table `name`'s directory, if the output is on local disk.
    fn local_dir(&self, name: &str) -> Option<std::path::PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.table_url(name).to_file_path().ok())
            .flatten()
    }

    /// Table `name` as delta-rs sees it, over this output's store (not loaded).
    pub fn delta_table(&self, name: &str) -> Result<DeltaTable, SnapshotError> {
        register_log_stores();
        let url = self.table_url(name);
        DeltaTableBuilder::from_url(url.clone())
            .and_then(|b| b.with_storage_backend(Arc::clone(&self.store), url).build())
            .map_err(delta_err(name))
    }

    /// Table `name` loaded at `version` (`None`: its latest), or `None` if it has no log yet.
    pub async fn open_table(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<DeltaTable>, SnapshotError> {
        // delta-rs refuses a local table location that does not exist (rather than saying
        // there is no table): no directory, no table.
        if self.local_dir(name).is_some_and(|d| !d.exists()) {
            return Ok(None);
        }
        let mut table = self.delta_table(name)?;
        let loaded = match version {
            Some(v) => table.load_version(v).await,
            None => table.load().await,
        };
        match loaded {
            Ok(()) => Ok(Some(table)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(delta_err(name)(e)),
        }
    }

    /// The highest snapshot id (`txn` version of `app_id`) committed to table `name`.
    pub async fn table_txn(&self, name: &str, app_id: &str) -> Result<Option<i64>, SnapshotError> {
        match self.open_table(name, None).await? {
            Some(table) => txn_of(&table, name, app_id).await,
            None => Ok(None),
        }
    }

    /// Commits `table` at snapshot `snapshot_id` of pipeline `app_id`: only partitions whose
    /// rows differ from its latest version are replaced, and nothing is committed if none do
    /// or if the log already holds this snapshot's `txn`.
    pub async fn commit_table(
        &self,
        encoded: &EncodedTable,
        app_id: &str,
        snapshot_id: u64,
        log: LogSettings,
    ) -> Result<Committed, SnapshotError> {
        let layout = &encoded.layout;
        let name = layout.name.as_str();
        let table = self.open_table(name, None).await?;
        if let Some(t) = &table {
            if txn_of(t, name, app_id)
                .await?
                .is_some_and(|v| v >= snapshot_id as i64)
            {
                return Ok(Committed {
                    version: t.version().unwrap_or_default(),
                    committed: true,
                    ..Committed::default()
                });
            }
        }
        if encoded.only.is_some() && table.is_none() {
            return Err(SnapshotError::Table {
                table: name.to_string(),
                message: "a snapshot computed part of a table that has no version yet".into(),
            });
        }
        if encoded.only.as_ref().is_some_and(|o| o.is_empty()) {
            return Ok(Committed {
                version: table.as_ref().and_then(|t| t.version()).unwrap_or_default(),
                ..Committed::default()
            });
        }
        let kernel_schema: StructType =
            encoded
                .schema
                .as_ref()
                .try_into_kernel()
                .map_err(|e| SnapshotError::Table {
                    table: name.to_string(),
                    message: format!("schema: {e}"),
                })?;
        let partition_columns: Vec<String> = layout.partition_by.iter().cloned().collect();

        // What the latest version holds, per partition: its hashes and its files.
        let mut old: BTreeMap<Option<String>, (BTreeSet<String>, Vec<Remove>)> = BTreeMap::new();
        let config = table_config(&log);
        let (mut same_shape, mut same_config) = (false, false);
        if let Some(t) = &table {
            let state = t.snapshot().map_err(delta_err(name))?;
            same_shape = state.schema().as_ref() == &kernel_schema
                && state.metadata().partition_columns() == partition_columns;
            let has = state.metadata().configuration();
            same_config = config.iter().all(|(k, v)| has.get(k) == Some(v));
            for f in state.log_data().iter() {
                let key = layout
                    .partition_by
                    .as_ref()
                    .and_then(|c| f.partition_values_map().get(c).cloned().flatten());
                let entry = old.entry(key).or_default();
                entry.0.insert(hash_of_path(&f.path()).unwrap_or_default());
                entry.1.push(f.remove_action(true));
            }
        }

        let mut actions = Vec::new();
        let mut out = Committed::default();
        let now = chrono::Utc::now().timestamp_millis();
        for (key, part) in &encoded.parts {
            let unchanged = same_shape
                && old
                    .get(key)
                    .is_some_and(|(hashes, _)| hashes.len() == 1 && hashes.contains(&part.hash));
            if unchanged {
                continue;
            }
            let dir = match (&layout.partition_by, key) {
                (Some(c), Some(v)) => format!("{c}={}/", encode_segment(v)),
                (Some(c), None) => format!("{c}={NULL_PARTITION}/"),
                (None, _) => String::new(),
            };
            for (n, (bytes, rows)) in part.files.iter().enumerate() {
                let rel = format!("{dir}part-{}-{snapshot_id:020}-{n}.parquet", part.hash);
                let size = bytes.len() as i64;
                let path = self.path(&format!("tables/{name}/{rel}"));
                let payload = object_store::PutPayload::from(bytes.clone());
                self.store
                    .put(&path, payload)
                    .await
                    .map_err(super::store_err(&path))?;
                let mut partition_values = HashMap::new();
                if let Some(c) = &layout.partition_by {
                    partition_values.insert(c.clone(), key.clone());
                }
                actions.push(Action::Add(Add {
                    path: rel,
                    partition_values,
                    size,
                    modification_time: now,
                    data_change: true,
                    stats: Some(format!("{{\"numRecords\":{rows}}}")),
                    tags: Some(HashMap::from([(
                        HASH_TAG.to_string(),
                        Some(part.hash.clone()),
                    )])),
                    deletion_vector: None,
                    base_row_id: None,
                    default_row_commit_version: None,
                    clustering_provider: None,
                }));
                out.files_added += 1;
                out.bytes_written += size as u64;
            }
            if let Some((_, removes)) = old.remove(key) {
                out.files_removed += removes.len() as u64;
                actions.extend(removes.into_iter().map(Action::Remove));
            }
        }
        // Partitions that changed shape or have no rows any more (of those recomputed).
        let recomputed = |key: &Option<String>| {
            encoded
                .only
                .as_ref()
                .is_none_or(|o| o.contains(key.as_deref().unwrap_or(NULL_PARTITION)))
        };
        if encoded.only.is_some() && !same_shape {
            return Err(SnapshotError::Table {
                table: name.to_string(),
                message: "a snapshot computed part of a table whose schema changed".into(),
            });
        }
        let gone: Vec<_> = old
            .into_iter()
            .filter(|(key, _)| recomputed(key) && (!same_shape || !encoded.parts.contains_key(key)))
            .flat_map(|(_, (_, removes))| removes)
            .collect();
        out.files_removed += gone.len() as u64;
        actions.extend(gone.into_iter().map(Action::Remove));

        let created = table.is_none();
        if actions.is_empty() && !created {
            out.version = table.as_ref().and_then(|t| t.version()).unwrap_or_default();
            return Ok(out);
        }
        let txn = Transaction::new(app_id, snapshot_id as i64);
        let properties = CommitProperties::default()
            .with_application_transaction(txn)
            .with_create_checkpoint(true)
            .with_cleanup_expired_logs(Some(false));
        let version = match table {
            None => {
                if let Some(dir) = self.local_dir(name) {
                    std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::Table {
                        table: name.to_string(),
                        message: format!("creating {}: {e}", dir.display()),
                    })?;
                }
                let create = deltalake_core::operations::create::CreateBuilder::new()
                    .with_log_store(self.delta_table(name)?.log_store())
                    .with_table_name(name)
                    .with_columns(kernel_schema.fields().cloned())
                    .with_partition_columns(partition_columns.clone())
                    .with_configuration(config.iter().map(|(k, v)| (k.clone(), Some(v.clone()))))
                    .with_actions(actions)
                    .with_commit_properties(properties);
                let t = create.await.map_err(delta_err(name))?;
                t.version().unwrap_or_default()
            }
            Some(t) => {
                let state = t.snapshot().map_err(delta_err(name))?;
                // A new shape, or table properties of an older quotaflow or other log
                // settings: the commit carries the table's metadata anew.
                if !same_shape || !same_config {
                    let metadata = new_metadata(&kernel_schema, partition_columns.clone(), config)
                        .and_then(|m| m.with_table_id(state.metadata().id().to_string()))
                        .map_err(|e| delta_err(name)(DeltaTableError::from(e)))?;
                    actions.insert(0, Action::Metadata(metadata));
                }
                let operation = DeltaOperation::Write {
                    mode: SaveMode::Overwrite,
                    partition_by: layout.partition_by.clone().map(|c| vec![c]),
                    predicate: None,
                };
                let done = CommitBuilder::from(properties)
                    .with_actions(actions)
                    .build(Some(state as &dyn TableReference), t.log_store(), operation)
                    .await
                    .map_err(delta_err(name))?;
                done.version()
            }
        };
        out.version = version;
        out.committed = true;
        Ok(out)
    }

    /// Table maintenance from the oldest retained version: in every table of `latest`, the
    /// data files no version named by a retained checkpoint (`keep`, with `latest`) needs are
    /// vacuumed (full mode: files a crashed attempt left unreferenced go too), then the log
    /// entries before the last Delta log checkpoint at or before the oldest such version.
    pub async fn maintain(
        &self,
        keep: &[u64],
        latest: &super::Checkpoint,
    ) -> Result<Maintained, SnapshotError> {
        let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (name, t) in &latest.tables {
            versions.entry(name.clone()).or_default().insert(t.version);
        }
        for id in keep.iter().filter(|id| **id != latest.snapshot_id) {
            // Forgotten meanwhile: nothing of it needs keeping.
            let Some(c) = self.find_checkpoint(*id).await? else {
                continue;
            };
            for (name, t) in &c.tables {
                versions.entry(name.clone()).or_default().insert(t.version);
            }
        }
        let mut out = Maintained::default();
        for name in latest.tables.keys() {
            let Some(table) = self.open_table(name, None).await? else {
                continue;
            };
            let keep_versions: Vec<u64> = versions
                .get(name)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            let (table, metrics) = table
                .vacuum()
                .with_retention_period(chrono::Duration::zero())
                .with_enforce_retention_duration(false)
                .with_keep_versions(&keep_versions)
                .with_mode(deltalake_core::operations::vacuum::VacuumMode::Full)
                .await
                .map_err(delta_err(name))?;
            out.files_removed += metrics.files_deleted.len() as u64;
            if let Some(oldest) = keep_versions.first() {
                let removed = deltalake_core::protocol::checkpoints::cleanup_expired_logs_for(
                    *oldest,
                    table.log_store().as_ref(),
                    chrono::Utc::now().timestamp_millis(),
                    None,
                )
                .await
                .map_err(delta_err(name))?;
                out.log_entries_removed += removed as u64;
            }
        }
        Ok(out)
    }
}

/// The `txn` version of `app_id` in `table`'s log (the last snapshot id committed there).
async fn txn_of(
    table: &DeltaTable,
    name: &str,
    app_id: &str,
) -> Result<Option<i64>, SnapshotError> {
    table
        .snapshot()
        .map_err(delta_err(name))?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(delta_err(name))
}

/// `n` copies of a partition value, typed as its column.
pub(super) fn constant(
    value: Option<&str>,
    ty: &DataType,
    n: usize,
) -> Result<ArrayRef, datafusion::arrow::error::ArrowError> {
    match value {
        None => Ok(new_null_array(ty, n)),
        Some(v) => {
            let strings: ArrayRef =
                Arc::new(datafusion::arrow::array::StringArray::from(vec![v; n]));
            cast(&strings, ty)
        }
    }
}
