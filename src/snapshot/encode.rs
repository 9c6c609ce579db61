//! A table's rows encoded for a snapshot, before any I/O: split by the table's partition
//! column, each partition's rows put in a canonical order (by every column) and hashed, then
//! written as Parquet files without the partition column (the Delta protocol keeps partition
//! values in the log). Equal rows give an equal hash whatever order the SQL returned them in,
//! which is how `delta` tells an unchanged partition from a changed one.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};

use super::delta::{arrow_err, Layout};
use super::{parquet_bytes, SnapshotError, ROWS_PER_PART};

/// One partition of a table, encoded: the hash of its rows in canonical order, and its
/// Parquet files (at most `ROWS_PER_PART` rows each) with their row counts.
#[derive(Debug, Clone)]
pub struct EncodedPart {
    pub hash: String,
    pub files: Vec<(bytes::Bytes, usize)>,
}

/// A published table encoded for a snapshot: every partition's files, ready to put (and to
/// put again when a write is retried) — a snapshot keeps its tables in this compressed form,
/// not as Arrow arrays. Which partitions get written is decided against the table's log.
#[derive(Debug, Clone)]
pub struct EncodedTable {
    pub layout: Layout,
    /// Every column, the partition column included.
    pub schema: SchemaRef,
    pub parts: BTreeMap<Option<String>, EncodedPart>,
    pub rows: u64,
}

impl EncodedTable {
    /// The rows of a table split by partition value (the value as Delta writes it: a DATE as
    /// `YYYY-MM-DD`), each in a canonical order (by every column), hashed and encoded.
    pub fn encode(
        layout: &Layout,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<EncodedTable, SnapshotError> {
        let name = layout.name.as_str();
        let all =
            datafusion::arrow::compute::concat_batches(schema, batches).map_err(arrow_err(name))?;
        let mut groups: BTreeMap<Option<String>, Vec<u32>> = BTreeMap::new();
        match &layout.partition_by {
            None => {
                groups.insert(None, (0..all.num_rows() as u32).collect());
            }
            Some(c) => {
                let col = all.column_by_name(c).ok_or_else(|| SnapshotError::Table {
                    table: name.to_string(),
                    message: format!("partition column `{c}` is not one of its columns"),
                })?;
                let strings = cast(col, &DataType::Utf8).map_err(arrow_err(name))?;
                let strings = strings
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .ok_or_else(|| SnapshotError::Table {
                        table: name.to_string(),
                        message: format!("partition column `{c}` cannot be written as text"),
                    })?;
                for i in 0..strings.len() {
                    let key = (!strings.is_null(i)).then(|| strings.value(i).to_string());
                    groups.entry(key).or_default().push(i as u32);
                }
            }
        }
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(arrow_err(name))?;
        let rows = converter
            .convert_columns(all.columns())
            .map_err(arrow_err(name))?;
        let keep = data_indices(schema, layout);
        let data_schema = Arc::new(schema.project(&keep).map_err(arrow_err(name))?);
        let mut parts = BTreeMap::new();
        for (key, mut idx) in groups {
            idx.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(schema.to_string().as_bytes());
            for i in &idx {
                let r = rows.row(*i as usize);
                h.update(&(r.as_ref().len() as u64).to_le_bytes());
                h.update(r.as_ref());
            }
            let hash = format!("{:032x}", h.digest128());
            let mut files = Vec::new();
            for chunk in idx.chunks(ROWS_PER_PART) {
                let indices = UInt32Array::from(chunk.to_vec());
                let cols = keep
                    .iter()
                    .map(|i| take(all.column(*i).as_ref(), &indices, None))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(arrow_err(name))?;
                let batch = RecordBatch::try_new(Arc::clone(&data_schema), cols)
                    .map_err(arrow_err(name))?;
                let bytes =
                    parquet_bytes(&data_schema, &[batch]).map_err(|e| SnapshotError::Format {
                        path: format!("tables/{name}"),
                        message: e.to_string(),
                    })?;
                files.push((bytes::Bytes::from(bytes), chunk.len()));
            }
            parts.insert(key, EncodedPart { hash, files });
        }
        Ok(EncodedTable {
            layout: layout.clone(),
            schema: Arc::clone(schema),
            parts,
            rows: all.num_rows() as u64,
        })
    }
}

/// The indices of the columns a data file holds (all but the partition column).
fn data_indices(schema: &SchemaRef, layout: &Layout) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| Some(f.name()) != layout.partition_by.as_ref())
        .map(|(i, _)| i)
        .collect()
}

/// The partition hash in a data file's name (`.../part-<hash>-<id>-<n>.parquet`).
pub(super) fn hash_of_path(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let rest = file.strip_prefix("part-")?;
    let (hash, _) = rest.split_once('-')?;
    Some(hash.to_string())
}

/// A partition value as a path segment: characters outside `[A-Za-z0-9._-]` are
/// percent-encoded, as Hive-style writers do.
pub(super) fn encode_segment(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_name_carries_its_partition_hash() {
        assert_eq!(
            hash_of_path("period_start=2026-01-01/part-00ff-00000000000000000003-0.parquet")
                .as_deref(),
            Some("00ff")
        );
        assert_eq!(hash_of_path("x.parquet"), None);
    }

    #[test]
    fn partition_values_are_safe_path_segments() {
        assert_eq!(encode_segment("2026-01-01"), "2026-01-01");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
