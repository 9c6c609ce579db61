//! Snapshots: the published tables as Delta Lake tables, the state needed to resume, and the
//! checkpoint that ties them to the Kafka offsets they include (METRICS.md, "Where the tables
//! live", contract version 2).
//!
//! Layout under the output URL:
//! ```text
//! tables/<table>/                    a Delta table: _delta_log/ and <partition>=<value>/part-*.parquet
//! _state/segments/<id, 20 digits>.delta  what a snapshot changed in the state (`state::segments`)
//! _state/segments/<id>.base          parts of the state compacted by that snapshot
//! _state/<id>/manifest.bin           the snapshot's state: counters, every part's segments
//! _state/<id>/alerts.bin             alert lifecycles, outbox, delivery counts
//! _state/<id>/alert_acks.json        deliveries acknowledged after the snapshot (a run that stopped)
//! _checkpoints/<id>.json             the checkpoint: offsets, table versions, state files
//! _latest                            {"snapshot_id": N, "checkpoint": "_checkpoints/<id>.json"}
//! ```
//! The state, alert and acknowledgement files are opaque bytes here: their owners (`state`,
//! `alert`) encode and decode them; this module only stores them and checks the state format.
//! Write order: segments (written by `pipeline::checkpoint`) → manifest and alert part → one
//! Delta commit per changed table (each with the snapshot's `txn`; `snapshots` last) →
//! checkpoint → `_latest`. Every put is atomic and every file is named by snapshot id or
//! content, so a crash leaves the old snapshot or the new one, and a retried write is
//! idempotent (a table whose log holds the `txn` is not committed again). A segment outlives
//! its snapshot while a retained checkpoint names it.

mod delta;
mod encode;
pub mod faults;
pub mod retention;
mod retry;
mod scan;
mod state_files;
mod store;

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

pub use delta::{Committed, Layout, LogSettings, Maintained, NULL_PARTITION};
pub use encode::{EncodedPart, EncodedTable};
pub use retention::{retained, SnapshotRow};
pub use scan::DeltaScan;
pub use state_files::{
    acks_path, segment_of, segment_path, state_dir, AlertsImage, Images, StateImage,
};
pub use store::Location;

/// A storage or snapshot-format problem, naming the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("output `{url}`: {message}")]
    Url { url: String, message: String },
    #[error("{path}: {source}")]
    Store {
        path: String,
        source: object_store::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("table `{table}`: {message}")]
    Table { table: String, message: String },
}

fn store_err(
    path: &object_store::path::Path,
) -> impl FnOnce(object_store::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Store {
        path: path.to_string(),
        source,
    }
}

fn format_err(path: &object_store::path::Path, e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Format {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// The version of the output contract this layout follows.
pub const CONTRACT_VERSION: u32 = 2;

/// The `_latest` pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub snapshot_id: u64,
    /// The checkpoint's path, relative to the output.
    pub checkpoint: String,
}

/// One table's place in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableRef {
    /// Relative to the output.
    pub path: String,
    /// The Delta version that holds this snapshot's rows.
    pub version: u64,
}

/// The calendar a snapshot was computed in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalendarRef {
    pub time_zone: String,
    pub fiscal_year_start_month: u32,
    pub corporate_currency: String,
}

/// Where a snapshot's resumable state is, relative to the output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFiles {
    /// The state's counters and the segments of each of its parts (`state::segments`). (An
    /// older format has none: its `format` is refused first.)
    #[serde(default)]
    pub manifest: String,
    /// Every segment file the manifest names (shared with other snapshots).
    #[serde(default)]
    pub segments: Vec<String>,
    pub alerts: String,
    /// The state encoding's version: a restore refuses another one.
    pub format: u32,
}

/// `_checkpoints/<id>.json`: the pipeline's checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub snapshot_id: u64,
    pub pipeline: String,
    pub contract_version: u32,
    pub quotaflow_version: String,
    /// Event clock (RFC 3339, UTC); null before the first event.
    pub as_of: Option<String>,
    /// Wall-clock time the snapshot was written (RFC 3339, UTC).
    pub written_at: String,
    /// Messages of every outcome before the offsets.
    pub events: u64,
    pub calendar: CalendarRef,
    /// topic → partition → next offset to read.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    pub tables: BTreeMap<String, TableRef>,
    pub state: StateFiles,
    /// The tables this snapshot committed to (the others were unchanged). Not in the
    /// contract: for `quotaflow snapshots`.
    #[serde(default)]
    pub committed: Vec<String>,
    /// Per published table, the fingerprint of the SQL files and settings it reads: a table
    /// whose fingerprint changed is recomputed in full. Not in the contract.
    #[serde(default)]
    pub fingerprints: BTreeMap<String, String>,
    /// Per topic, offsets the broker deleted before the pipeline read them, over its whole
    /// life (as `data_quality`'s `lost_offsets`). Not in the contract: for `quotaflow
    /// snapshots`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lost_offsets: BTreeMap<String, u64>,
}

/// The checkpoint of an id, relative to the output.
pub fn checkpoint_path(id: u64) -> String {
    format!("_checkpoints/{id:020}.json")
}

/// Rows per Parquet file.
const ROWS_PER_PART: usize = 1_000_000;

/// Crash points of `QUOTAFLOW_CRASH_AT`, in the order a snapshot passes them (a snapshot
/// that compacts no part passes no `after_compaction`).
pub const CRASH_POINTS: [&str; 6] = [
    "after_segment",
    "after_compaction",
    "after_first_table",
    "after_tables",
    "after_checkpoint",
    "after_latest",
];

/// What a snapshot's write is given besides its tables.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    pub pipeline: String,
    pub calendar: CalendarRef,
    pub events: u64,
    pub written_at: chrono::DateTime<chrono::Utc>,
    pub log: LogSettings,
    /// Per published table, the fingerprint of the SQL and settings it reads.
    pub fingerprints: BTreeMap<String, String>,
    /// Per topic, offsets the broker deleted before they were read, over the pipeline's life.
    pub lost_offsets: BTreeMap<String, u64>,
}

impl Location {
    async fn put(&self, rel: &str, data: impl Into<PutPayload>) -> Result<(), SnapshotError> {
        let path = self.path(rel);
        let data = data.into();
        self.store
            .put(&path, data)
            .await
            .map_err(store_err(&path))?;
        Ok(())
    }

    async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        let path = self.path(rel);
        let got = match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map(Some),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        };
        match got {
            Ok(bytes) => Ok(bytes.map(|b| b.to_vec())),
            Err(e) => Err(store_err(&path)(e)),
        }
    }

    /// The `_latest` pointer, if a snapshot was ever written. An output in the version-1
    /// layout (`snapshots/<id>/_manifest.json`) is refused with what to do.
    pub async fn latest(&self) -> Result<Option<Latest>, SnapshotError> {
        let Some(bytes) = self.get("_latest").await? else {
            return Ok(None);
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format_err(&self.path("_latest"), e))?;
        if value.get("manifest").is_some() {
            return Err(format_err(
                &self.path("_latest"),
                "this output is in the version-1 layout (snapshots/<id>/, _manifest.json), \
                 which this quotaflow does not read: replay the topics into a new output \
                 (README, \"Upgrading an output\")",
            ));
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| format_err(&self.path("_latest"), e))
    }

    /// The checkpoint of snapshot `id`.
    pub async fn checkpoint(&self, id: u64) -> Result<Checkpoint, SnapshotError> {
        self.find_checkpoint(id)
            .await?
            .ok_or_else(|| format_err(&self.path(&checkpoint_path(id)), "no such snapshot"))
    }

    /// The checkpoint of snapshot `id`, or `None` if there is none (never written, or
    /// forgotten by retention); an unreadable one is an error.
    pub async fn find_checkpoint(&self, id: u64) -> Result<Option<Checkpoint>, SnapshotError> {
        let rel = checkpoint_path(id);
        match self.get(&rel).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format_err(&self.path(&rel), e)),
        }
    }

    /// Every object under `rel`.
    async fn list(&self, rel: &str) -> Result<Vec<object_store::ObjectMeta>, SnapshotError> {
        let root = self.path(rel);
        self.store
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(store_err(&root))
    }

    /// Ids of every checkpoint under the output, ascending.
    pub async fn checkpoint_ids(&self) -> Result<Vec<u64>, SnapshotError> {
        let listing = self.list("_checkpoints").await?;
        let mut ids: Vec<u64> = listing
            .iter()
            .filter_map(|o| o.location.filename())
            .filter_map(|f| f.strip_suffix(".json"))
            .filter_map(|f| f.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads one table at the version a checkpoint names.
    pub async fn read_table(
        &self,
        c: &Checkpoint,
        name: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SnapshotError> {
        let t = c.tables.get(name).ok_or_else(|| SnapshotError::Table {
            table: name.to_string(),
            message: format!("snapshot {} has no such table", c.snapshot_id),
        })?;
        self.read_delta(name, Some(t.version)).await
    }

    /// The highest snapshot id any of `tables` holds a commit of (`txn` of `pipeline`): a
    /// snapshot whose checkpoint was never written still used its id.
    pub async fn highest_txn(
        &self,
        tables: &[String],
        pipeline: &str,
    ) -> Result<u64, SnapshotError> {
        let mut high = 0;
        for t in tables {
            if let Some(v) = self.table_txn(t, pipeline).await? {
                high = high.max(v.max(0) as u64);
            }
        }
        Ok(high)
    }

    /// Writes the snapshot of a state cut (its segments already written): its manifest and
    /// alert part, a Delta commit per changed table (`snapshots` last), the checkpoint, then
    /// `_latest`.
    pub async fn write_snapshot(
        &self,
        image: &StateImage,
        alerts: &AlertsImage,
        tables: &[EncodedTable],
        meta: &SnapshotMeta,
    ) -> Result<(Checkpoint, Vec<(String, Committed)>), SnapshotError> {
        let id = image.snapshot_id;
        let dir = state_dir(id);
        let files = StateFiles {
            manifest: format!("{dir}/manifest.bin"),
            segments: image.segments.iter().map(|r| segment_path(*r)).collect(),
            alerts: format!("{dir}/alerts.bin"),
            format: image.format,
        };
        self.put(&files.manifest, image.manifest.clone()).await?;
        self.put(&files.alerts, alerts.0.clone()).await?;
        let mut refs = BTreeMap::new();
        let mut commits = Vec::with_capacity(tables.len());
        for (i, t) in tables.iter().enumerate() {
            let done = self.commit_table(t, &meta.pipeline, id, meta.log).await?;
            if i == 0 {
                crash_point("after_first_table", id);
            }
            refs.insert(
                t.layout.name.clone(),
                TableRef {
                    path: format!("tables/{}", t.layout.name),
                    version: done.version,
                },
            );
            commits.push((t.layout.name.clone(), done));
        }
        crash_point("after_tables", id);
        let checkpoint = Checkpoint {
            snapshot_id: id,
            pipeline: meta.pipeline.clone(),
            contract_version: CONTRACT_VERSION,
            quotaflow_version: env!("CARGO_PKG_VERSION").to_string(),
            as_of: image
                .as_of
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            written_at: meta
                .written_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            events: meta.events,
            calendar: meta.calendar.clone(),
            offsets: image.offsets.clone(),
            tables: refs,
            state: files,
            committed: commits
                .iter()
                .filter(|(_, c)| c.committed)
                .map(|(name, _)| name.clone())
                .collect(),
            fingerprints: meta.fingerprints.clone(),
            lost_offsets: meta.lost_offsets.clone(),
        };
        let rel = checkpoint_path(id);
        let json =
            serde_json::to_vec_pretty(&checkpoint).map_err(|e| format_err(&self.path(&rel), e))?;
        self.put(&rel, json).await?;
        crash_point("after_checkpoint", id);
        let latest = Latest {
            snapshot_id: id,
            checkpoint: rel,
        };
        let json = serde_json::to_vec(&latest).map_err(|e| format_err(&self.path("_latest"), e))?;
        self.put("_latest", json).await?;
        crash_point("after_latest", id);
        Ok((checkpoint, commits))
    }
}

/// The crash tests' fail points: with `QUOTAFLOW_CRASH_AT=<point>:<snapshot id>` the process
/// aborts at that point of writing that snapshot, as a power cut would ([`CRASH_POINTS`]:
/// after its first table commit, after every table commit, after its checkpoint, after
/// `_latest`). Never set in production.
pub(crate) fn crash_point(point: &str, id: u64) {
    if let Ok(at) = std::env::var("QUOTAFLOW_CRASH_AT") {
        if at == format!("{point}:{id}") {
            tracing::error!(point, snapshot_id = id, "QUOTAFLOW_CRASH_AT: aborting");
            std::process::abort();
        }
    }
}

fn parquet_bytes(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(buf)
}
