//! Snapshots: the metric tables as Parquet, the state needed to resume, and the manifest that
//! ties them to the Kafka offsets they include — the pipeline's checkpoint.
//!
//! Layout under the output URL:
//! ```text
//! snapshots/<id, 20 digits>/<table>/part-<n>.parquet
//! snapshots/<id>/_state.bin          resumable state (bincode)
//! snapshots/<id>/_manifest.json      id, as_of, offsets, tables and their files, version
//! _latest                            {"snapshot_id": N, "manifest": "snapshots/<id>/_manifest.json"}
//! snapshots/<id>/_alerts.bin         alert lifecycles, outbox, delivery counts
//! snapshots/<id>/_alert_acks.json    deliveries acknowledged after the snapshot (a run that stopped)
//! ```
//! The state, alert and acknowledgement files are opaque bytes here: their owners (`state`,
//! `alert`) encode and decode them; this module only stores them and checks the state format.
//! Write order: data files → state → manifest → `_latest`. Each put is atomic and files are
//! named by snapshot id, so a crash leaves the old snapshot or the new one, and a retried write
//! is idempotent. Retention deletes old snapshot directories, never the one `_latest` names.

pub mod faults;
mod store;

use std::collections::BTreeMap;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

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

/// The `_latest` pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub snapshot_id: u64,
    pub manifest: String,
}

/// One table's files in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    /// Paths relative to the snapshot directory.
    pub files: Vec<String>,
    pub rows: u64,
}

/// `_manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub snapshot_id: u64,
    /// Event clock (RFC 3339, UTC); null before the first event.
    pub as_of: Option<String>,
    /// Wall-clock time the snapshot was written.
    pub written_at: String,
    pub pipeline: String,
    pub quotaflow_version: String,
    /// topic → partition → next offset to read.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    pub tables: Vec<TableEntry>,
    /// The resumable state, relative to the snapshot directory.
    pub state: String,
    /// Alert lifecycles, outbox and delivery counts, relative to the snapshot directory.
    pub alerts: String,
    pub state_format: u32,
}

/// A state cut for a snapshot: what its manifest records and the state's serialised bytes
/// (encoded by its owner, `state`, in format `format`; the alert part is written after the
/// rules ran, as [`AlertsImage`]). Taken at the moment of the cut, so the pipeline can read on
/// while the snapshot is computed and written.
#[derive(Debug, Clone)]
pub struct StateImage {
    pub snapshot_id: u64,
    pub as_of: Option<i64>,
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// The encoding's version: a restore refuses another one.
    pub format: u32,
    pub bytes: bytes::Bytes,
}

/// The alert part of a state, serialised by its owner (`alert`): lifecycles, outbox, counts.
#[derive(Debug, Clone)]
pub struct AlertsImage(pub bytes::Bytes);

/// The serialised images a snapshot holds, as read back.
#[derive(Debug, Clone)]
pub struct Images {
    pub state: Vec<u8>,
    pub alerts: Vec<u8>,
}

const ALERTS_FILE: &str = "_alerts.bin";
const ACKS_FILE: &str = "_alert_acks.json";

/// Rows per Parquet file.
const ROWS_PER_PART: usize = 1_000_000;

/// The snapshot directory of an id, relative to the output.
pub fn dir(id: u64) -> String {
    format!("snapshots/{id:020}")
}

impl Location {
    async fn put(&self, rel: &str, data: impl Into<PutPayload>) -> Result<(), SnapshotError> {
        let path = self.path(rel);
        let data = data.into();
        retrying(|| self.store.put(&path, data.clone()))
            .await
            .map_err(store_err(&path))?;
        Ok(())
    }

    async fn get(&self, rel: &str) -> Result<Option<Vec<u8>>, SnapshotError> {
        let path = self.path(rel);
        let got = retrying(|| async {
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await;
        match got {
            Ok(bytes) => Ok(bytes.map(|b| b.to_vec())),
            Err(e) => Err(store_err(&path)(e)),
        }
    }

    /// The `_latest` pointer, if a snapshot was ever written.
    pub async fn latest(&self) -> Result<Option<Latest>, SnapshotError> {
        let Some(bytes) = self.get("_latest").await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format_err(&self.path("_latest"), e))
    }

    /// The manifest of snapshot `id`.
    pub async fn manifest(&self, id: u64) -> Result<Manifest, SnapshotError> {
        let rel = format!("{}/_manifest.json", dir(id));
        let bytes = self
            .get(&rel)
            .await?
            .ok_or_else(|| format_err(&self.path(&rel), "no such snapshot"))?;
        serde_json::from_slice(&bytes).map_err(|e| format_err(&self.path(&rel), e))
    }

    /// The state and alert images a snapshot recorded; `format` is the state format the
    /// caller reads (another one is refused, naming the file).
    pub async fn read_images(&self, m: &Manifest, format: u32) -> Result<Images, SnapshotError> {
        let rel = format!("{}/{}", dir(m.snapshot_id), m.state);
        let path = self.path(&rel);
        if m.state_format != format {
            return Err(format_err(
                &path,
                format!(
                    "state format {} is not {format}: written by another quotaflow version",
                    m.state_format
                ),
            ));
        }
        let state = self
            .get(&rel)
            .await?
            .ok_or_else(|| format_err(&path, "missing"))?;
        let rel = format!("{}/{}", dir(m.snapshot_id), m.alerts);
        let alerts = self
            .get(&rel)
            .await?
            .ok_or_else(|| format_err(&self.path(&rel), "missing"))?;
        Ok(Images { state, alerts })
    }

    /// The path of a snapshot's file, for the messages of those who decode it.
    pub fn file_path(&self, id: u64, file: &str) -> String {
        self.path(&format!("{}/{file}", dir(id))).to_string()
    }

    /// Reads one table of a snapshot.
    pub async fn read_table(
        &self,
        m: &Manifest,
        name: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), SnapshotError> {
        let entry = m.tables.iter().find(|t| t.name == name).ok_or_else(|| {
            format_err(
                &self.path(&dir(m.snapshot_id)),
                format!("snapshot has no table `{name}`"),
            )
        })?;
        let mut schema = None;
        let mut out = Vec::new();
        for f in &entry.files {
            let rel = format!("{}/{f}", dir(m.snapshot_id));
            let path = self.path(&rel);
            let bytes = self
                .get(&rel)
                .await?
                .ok_or_else(|| format_err(&path, "missing"))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
                .map_err(|e| format_err(&path, e))?;
            schema.get_or_insert_with(|| reader.schema().clone());
            for b in reader.build().map_err(|e| format_err(&path, e))? {
                out.push(b.map_err(|e| format_err(&path, e))?);
            }
        }
        let schema = schema.ok_or_else(|| {
            format_err(
                &self.path(&dir(m.snapshot_id)),
                format!("table `{name}` has no files"),
            )
        })?;
        Ok((schema, out))
    }

    /// Writes the snapshot of a state cut: Parquet per table, `_state.bin`, `_alerts.bin`,
    /// `_manifest.json`, then `_latest`. Files are named by snapshot id, so a retry overwrites.
    pub async fn write_image(
        &self,
        image: &StateImage,
        alerts: &AlertsImage,
        tables: &[EncodedTable],
        pipeline: &str,
    ) -> Result<Manifest, SnapshotError> {
        let id = image.snapshot_id;
        let base = dir(id);
        let mut entries = Vec::with_capacity(tables.len());
        for t in tables {
            let mut files = Vec::new();
            for (n, part) in t.parts.iter().enumerate() {
                let rel = format!("{}/part-{n}.parquet", t.name);
                self.put(&format!("{base}/{rel}"), part.clone()).await?;
                files.push(rel);
            }
            entries.push(TableEntry {
                name: t.name.clone(),
                files,
                rows: t.rows,
            });
        }
        crash_point("before_state", id);
        let state_rel = "_state.bin".to_string();
        self.put(&format!("{base}/{state_rel}"), image.bytes.clone())
            .await?;
        self.put(&format!("{base}/{ALERTS_FILE}"), alerts.0.clone())
            .await?;
        crash_point("before_manifest", id);
        let manifest = Manifest {
            snapshot_id: id,
            as_of: image
                .as_of
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
            written_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            pipeline: pipeline.to_string(),
            quotaflow_version: env!("CARGO_PKG_VERSION").to_string(),
            offsets: image.offsets.clone(),
            tables: entries,
            state: state_rel,
            alerts: ALERTS_FILE.to_string(),
            state_format: image.format,
        };
        let manifest_rel = format!("{base}/_manifest.json");
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| format_err(&self.path(&manifest_rel), e))?;
        self.put(&manifest_rel, json).await?;
        crash_point("before_latest", id);
        let latest = Latest {
            snapshot_id: id,
            manifest: manifest_rel,
        };
        let json = serde_json::to_vec(&latest).map_err(|e| format_err(&self.path("_latest"), e))?;
        self.put("_latest", json).await?;
        Ok(manifest)
    }

    /// Records alert deliveries acknowledged after snapshot `id` was written (by a run that
    /// stopped), so that the next start does not send them again.
    /// (`acks` encoded by `alert`: `_alert_acks.json`.)
    pub async fn write_acks(&self, id: u64, acks: Vec<u8>) -> Result<(), SnapshotError> {
        self.put(&format!("{}/{ACKS_FILE}", dir(id)), acks).await
    }

    /// What `write_acks` recorded for snapshot `id`, if anything.
    pub async fn read_acks(&self, id: u64) -> Result<Option<Vec<u8>>, SnapshotError> {
        self.get(&format!("{}/{ACKS_FILE}", dir(id))).await
    }

    /// Ids of every snapshot directory under the output, ascending.
    pub async fn snapshot_ids(&self) -> Result<Vec<u64>, SnapshotError> {
        let root = self.path("snapshots");
        let listing = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(store_err(&root))?;
        let mut ids: Vec<u64> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().and_then(|f| f.parse().ok()))
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Deletes all but the newest `keep` snapshots, never the one `_latest` names.
    /// Returns how many were deleted.
    pub async fn retain(&self, keep: usize, latest: u64) -> Result<usize, SnapshotError> {
        let ids = self.snapshot_ids().await?;
        let doomed: Vec<u64> = ids
            .iter()
            .rev()
            .skip(keep)
            .copied()
            .filter(|id| *id != latest)
            .collect();
        for id in &doomed {
            let prefix = self.path(&dir(*id));
            let objects: Vec<_> = self
                .store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(store_err(&prefix))?;
            // The manifest goes first, so a half-deleted snapshot is never taken for a whole one.
            let mut paths: Vec<_> = objects.into_iter().map(|o| o.location).collect();
            paths.sort_by_key(|p| p.filename() != Some("_manifest.json"));
            for p in paths {
                match self.store.delete(&p).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(&p)(e)),
                }
            }
        }
        Ok(doomed.len())
    }
}

/// The crash tests' fail points: with `QUOTAFLOW_CRASH_AT=<point>:<snapshot id>` the process
/// aborts at that point of writing that snapshot (`before_state`: its Parquet files written;
/// `before_manifest`: its state written too; `before_latest`: its manifest written too), as a
/// power cut would. Never set in production.
fn crash_point(point: &str, id: u64) {
    if let Ok(at) = std::env::var("QUOTAFLOW_CRASH_AT") {
        if at == format!("{point}:{id}") {
            tracing::error!(point, snapshot_id = id, "QUOTAFLOW_CRASH_AT: aborting");
            std::process::abort();
        }
    }
}

/// Calls of one object-store operation: a failure that may pass (a server error, a timeout)
/// is retried with backoff; a definite answer (not found, refused) is not.
const STORE_ATTEMPTS: u32 = 5;

async fn retrying<T, F, Fut>(mut call: F) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, object_store::Error>>,
{
    let mut delay = std::time::Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(
                e @ (object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }),
            ) if attempt < STORE_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "object-store call failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(2));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A metric table encoded as its Parquet files, ready to put (and to put again when a write is
/// retried): a snapshot keeps its tables in this compressed form, not as Arrow arrays.
#[derive(Debug, Clone)]
pub struct EncodedTable {
    pub name: String,
    /// One Parquet file per part of at most `ROWS_PER_PART` rows.
    pub parts: Vec<bytes::Bytes>,
    pub rows: u64,
}

impl EncodedTable {
    /// Table `name` with `schema` and `batches`, as Parquet parts.
    pub fn encode(
        name: &str,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<EncodedTable, SnapshotError> {
        let parts = chunks(batches)
            .iter()
            .enumerate()
            .map(|(n, chunk)| {
                parquet_bytes(schema, chunk)
                    .map(bytes::Bytes::from)
                    .map_err(|e| SnapshotError::Format {
                        path: format!("{name}/part-{n}.parquet"),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(EncodedTable {
            name: name.to_string(),
            parts,
            rows: batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64,
        })
    }
}

/// Batches cut into parts of at most `ROWS_PER_PART` rows (at least one part).
fn chunks(batches: &[RecordBatch]) -> Vec<Vec<RecordBatch>> {
    let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new()];
    let mut rows = 0;
    for b in batches {
        if rows > 0 && rows + b.num_rows() > ROWS_PER_PART {
            parts.push(Vec::new());
            rows = 0;
        }
        rows += b.num_rows();
        if let Some(last) = parts.last_mut() {
            last.push(b.clone());
        }
    }
    parts
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
