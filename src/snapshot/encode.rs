//! A table's rows encoded for a snapshot, before any I/O: split by the table's partition
//! column, each partition's rows hashed as a multiset (every row hashed, the hashes summed),
//! then written as Parquet files without the partition column (the Delta protocol keeps
//! partition values in the log). Equal rows give an equal hash whatever order the SQL returned
//! them in, with no sort, which is how `delta` tells an unchanged partition from a changed one.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use super::delta::{arrow_err, Layout};
use super::{parquet_bytes, SnapshotError, ROWS_PER_PART};

/// One partition of a table, encoded: the hash of its rows (in any order), and its
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
    /// The partitions these rows replace (`None`: all of them; the NULL partition by
    /// `NULL_PARTITION`); the table's other partitions stay as its latest version has them.
    pub only: Option<std::collections::BTreeSet<String>>,
}

impl EncodedTable {
    /// The rows of a table split by partition value (the value as Delta writes it: a DATE as
    /// `YYYY-MM-DD`), each hashed and encoded in the order the SQL returned them.
    pub fn encode(
        layout: &Layout,
        schema: &SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<EncodedTable, SnapshotError> {
        EncodedTable::encode_only(layout, schema, batches, None)
    }

    /// A table none of whose rows were computed: its latest version stays.
    pub fn unchanged(layout: &Layout) -> EncodedTable {
        EncodedTable {
            layout: layout.clone(),
            schema: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            parts: BTreeMap::new(),
            rows: 0,
            only: Some(Default::default()),
        }
    }

    /// The rows of the partitions `only` (`None`: every partition), encoded.
    pub fn encode_only(
        layout: &Layout,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        only: Option<std::collections::BTreeSet<String>>,
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
        let row_hashes = row_hashes(&all).map_err(|e| SnapshotError::Table {
            table: name.to_string(),
            message: format!("hashing rows: {e}"),
        })?;
        let keep = data_indices(schema, layout);
        let data_schema = Arc::new(schema.project(&keep).map_err(arrow_err(name))?);
        let mut parts = BTreeMap::new();
        for (key, idx) in groups {
            // A multiset hash: the same rows in any order give the same hash.
            let (mut a, mut b) = (0u64, 0u64);
            for i in &idx {
                let (x, y) = row_hashes[*i as usize];
                a = a.wrapping_add(x);
                b = b.wrapping_add(y);
            }
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(schema.to_string().as_bytes());
            h.update(&(idx.len() as u64).to_le_bytes());
            h.update(&a.to_le_bytes());
            h.update(&b.to_le_bytes());
            let hash = format!("{:032x}", h.digest128());
            let mut files = Vec::new();
            for (n, chunk) in idx.chunks(ROWS_PER_PART).enumerate() {
                let batch = if layout.partition_by.is_none() {
                    // One partition, its rows in order: a slice, not a copy.
                    all.slice(n * ROWS_PER_PART, chunk.len())
                } else {
                    let indices = UInt32Array::from(chunk.to_vec());
                    let cols = keep
                        .iter()
                        .map(|i| take(all.column(*i).as_ref(), &indices, None))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(arrow_err(name))?;
                    RecordBatch::try_new(Arc::clone(&data_schema), cols).map_err(arrow_err(name))?
                };
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
            only,
        })
    }
}

/// Two independent 64-bit hashes of every row (of every column's value, and of which columns
/// are NULL), by DataFusion's vectorised hashing with fixed seeds: stable across runs of the
/// same build.
fn row_hashes(batch: &RecordBatch) -> Result<Vec<(u64, u64)>, datafusion::error::DataFusionError> {
    use datafusion::common::hash_utils::{create_hashes, QualityRandomState};
    let n = batch.num_rows();
    let (mut a, mut b) = (vec![0u64; n], vec![0u64; n]);
    create_hashes(
        batch.columns(),
        &QualityRandomState::with_seed(0x51_7c_c1_b7),
        &mut a,
    )?;
    create_hashes(
        batch.columns(),
        &QualityRandomState::with_seed(0x27_22_0a_95),
        &mut b,
    )?;
    // The hashing skips NULLs: mark which columns are NULL, per row.
    let mut nulls = vec![0u64; n];
    for (c, col) in batch.columns().iter().enumerate() {
        if let Some(mask) = col.nulls() {
            let mark = mix(c as u64 + 1);
            for i in (0..n).filter(|i| mask.is_null(*i)) {
                nulls[i] ^= mark;
            }
        }
    }
    Ok((0..n)
        .map(|i| (mix(a[i] ^ nulls[i]), mix(b[i] ^ nulls[i].rotate_left(29))))
        .collect())
}

/// splitmix64's finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
