//! The Delta layout of `quotaflow::snapshot` on its own: unchanged tables get no commit, a
//! commit replaces only the partitions whose rows differ, a snapshot's `txn` makes a retried
//! commit a no-op, older versions stay readable (time travel), maintenance removes only what
//! no retained snapshot needs, and a lazy scan of the latest version reads only the files its
//! query's filters may match.

use std::sync::Arc;

use datafusion::arrow::array::{Date32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use quotaflow::snapshot::{
    AlertsImage, CalendarRef, Checkpoint, EncodedTable, Layout, Location, LogSettings,
    SnapshotMeta, StateImage,
};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("period_start", DataType::Date32, false),
        Field::new("rep", DataType::Int64, false),
        Field::new("calls", DataType::Int64, false),
    ]))
}

/// Rows (period_start day number, rep, calls), in the order given.
fn table(rows: &[(i32, i64, i64)]) -> EncodedTable {
    let b = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Date32Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
        ],
    )
    .unwrap();
    let layout = Layout {
        name: "activity".into(),
        partition_by: Some("period_start".into()),
    };
    EncodedTable::encode(&layout, &schema(), &[b]).unwrap()
}

/// What a snapshot write is given besides its tables, for pipeline `test`.
pub fn meta(checkpoint_interval: u32) -> SnapshotMeta {
    SnapshotMeta {
        pipeline: "test".into(),
        calendar: CalendarRef {
            time_zone: "UTC".into(),
            fiscal_year_start_month: 1,
            corporate_currency: "USD".into(),
        },
        events: 0,
        written_at: chrono::Utc::now(),
        log: LogSettings {
            checkpoint_interval,
        },
        fingerprints: Default::default(),
        lost_offsets: Default::default(),
    }
}

async fn write(loc: &Location, id: u64, t: &EncodedTable, log_every: u32) -> Checkpoint {
    let image = StateImage {
        snapshot_id: id,
        as_of: None,
        offsets: Default::default(),
        format: 1,
        manifest: bytes::Bytes::from_static(b"state"),
        segments: Vec::new(),
    };
    let alerts = AlertsImage(bytes::Bytes::from_static(b"alerts"));
    let (c, commits) = loc
        .write_snapshot(&image, &alerts, std::slice::from_ref(t), &meta(log_every))
        .await
        .unwrap();
    assert_eq!(commits.len(), 1);
    c
}

/// The rows of `activity` at `version`, sorted, as (day, rep, calls).
async fn rows_at(loc: &Location, version: u64) -> Vec<(i32, i64, i64)> {
    let (_, batches) = loc.read_delta("activity", Some(version)).await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let d = b.column(0).as_any().downcast_ref::<Date32Array>().unwrap();
        let r = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let c = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            out.push((d.value(i), r.value(i), c.value(i)));
        }
    }
    out.sort_unstable();
    out
}

fn data_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for part in std::fs::read_dir(dir.join("tables/activity")).unwrap() {
        let part = part.unwrap().path();
        if part.is_dir() && !part.ends_with("_delta_log") {
            for f in std::fs::read_dir(&part).unwrap() {
                out.push(f.unwrap().path().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn only_changed_partitions_are_rewritten_and_a_retry_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
    let v1 = [(100, 1, 5), (100, 2, 7), (131, 1, 3)];
    let c1 = write(&loc, 1, &table(&v1), 10).await;
    assert_eq!(c1.committed, vec!["activity".to_string()]);
    assert_eq!(data_files(dir.path()).len(), 2, "one file per partition");

    // The same rows in another order: no commit, the checkpoint names the same version.
    let c2 = write(
        &loc,
        2,
        &table(&[(131, 1, 3), (100, 2, 7), (100, 1, 5)]),
        10,
    )
    .await;
    assert!(c2.committed.is_empty());
    assert_eq!(c2.tables["activity"].version, c1.tables["activity"].version);

    // One partition changes: one file added, one removed, the other partition's file shared.
    let v3 = [(100, 1, 5), (100, 2, 7), (131, 1, 4)];
    let (_, commits) = loc
        .write_snapshot(
            &StateImage {
                snapshot_id: 3,
                as_of: None,
                offsets: Default::default(),
                format: 1,
                manifest: bytes::Bytes::from_static(b"state"),
                segments: Vec::new(),
            },
            &AlertsImage(bytes::Bytes::from_static(b"alerts")),
            &[table(&v3)],
            &meta(10),
        )
        .await
        .unwrap();
    let done = &commits[0].1;
    assert!(done.committed);
    assert_eq!((done.files_added, done.files_removed), (1, 1));
    assert_eq!(rows_at(&loc, done.version).await, v3.to_vec());
    // Time travel: the version snapshot 1 names still reads its rows.
    assert_eq!(
        rows_at(&loc, c1.tables["activity"].version).await,
        v1.to_vec()
    );

    // Snapshot 3 again (a retry after a commit that landed): its txn is in the log.
    let again = loc
        .commit_table(
            &table(&[(100, 9, 9)]),
            "test",
            3,
            LogSettings {
                checkpoint_interval: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!((again.version, again.files_added), (done.version, 0));
    assert_eq!(loc.table_txn("activity", "test").await.unwrap(), Some(3));
    assert_eq!(rows_at(&loc, done.version).await, v3.to_vec());
}

#[tokio::test]
async fn maintenance_keeps_what_retained_snapshots_need_and_removes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
    // Five snapshots, each changing partition 131; a Delta log checkpoint at every commit.
    let mut checkpoints = Vec::new();
    for id in 1..=5 {
        let rows = [(100, 1, 5), (131, 1, id as i64)];
        checkpoints.push((write(&loc, id, &table(&rows), 1).await, rows));
    }
    assert_eq!(data_files(dir.path()).len(), 6);
    let log = dir.path().join("tables/activity/_delta_log");
    let commits = |log: &std::path::Path| {
        std::fs::read_dir(log)
            .unwrap()
            .filter(|f| {
                f.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".json")
            })
            .count()
    };
    let before = commits(&log);
    // Retained: snapshots 4 and 5.
    let latest = &checkpoints[4].0;
    let m = loc.maintain(&[4, 5], latest).await.unwrap();
    assert_eq!(
        m.files_removed, 3,
        "the files of snapshots 1..3's partition 131"
    );
    assert_eq!(data_files(dir.path()).len(), 3);
    assert!(m.log_entries_removed > 0);
    assert!(commits(&log) < before);
    // Both retained snapshots read whole, at the versions their checkpoints name.
    for (c, rows) in &checkpoints[3..] {
        assert_eq!(
            rows_at(&loc, c.tables["activity"].version).await,
            rows.to_vec()
        );
    }
    // The table's latest version (after maintenance's own commits) holds snapshot 5's rows.
    let t = loc.open_table("activity", None).await.unwrap().unwrap();
    assert_eq!(
        rows_at(&loc, t.version().unwrap()).await,
        checkpoints[4].1.to_vec()
    );
}

/// The table's properties as its latest version has them.
async fn properties(loc: &Location) -> std::collections::HashMap<String, String> {
    let t = loc.open_table("activity", None).await.unwrap().unwrap();
    t.snapshot().unwrap().metadata().configuration().clone()
}

/// Remove actions (tombstones) in the table's latest Delta log checkpoint.
async fn tombstones_in_last_log_checkpoint(dir: &std::path::Path) -> i64 {
    let log = dir.join("tables/activity/_delta_log");
    let last = std::fs::read_dir(&log)
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".checkpoint.parquet"))
        .max()
        .expect("a Delta log checkpoint");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet("cp", last.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let b = ctx
        .sql("SELECT count(*) FROM cp WHERE remove IS NOT NULL")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    b[0].column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// Replaced files leave no tombstones in the log's checkpoints (what retained snapshots read
/// is kept by maintenance from their versions), so the log does not grow with every file ever
/// replaced; and the log settings of the pipeline reach a table that exists already.
#[tokio::test]
async fn log_checkpoints_carry_no_tombstones_and_tables_follow_the_log_settings() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
    write(&loc, 1, &table(&[(100, 1, 5), (131, 1, 0)]), 10).await;
    let before = properties(&loc).await;
    assert_eq!(before["delta.checkpointInterval"], "10");
    assert_eq!(
        before["delta.deletedFileRetentionDuration"],
        "interval 0 seconds"
    );
    // Now a Delta log checkpoint at every commit; each snapshot replaces partition 131's file.
    for id in 2..=5 {
        write(&loc, id, &table(&[(100, 1, 5), (131, 1, id as i64)]), 1).await;
    }
    assert_eq!(properties(&loc).await["delta.checkpointInterval"], "1");
    assert_eq!(tombstones_in_last_log_checkpoint(dir.path()).await, 0);
    // The replaced files are still there until maintenance, which removes what no retained
    // snapshot needs all the same.
    assert_eq!(data_files(dir.path()).len(), 6);
    let latest = loc.checkpoint(5).await.unwrap();
    let m = loc.maintain(&[5], &latest).await.unwrap();
    assert_eq!(
        m.files_removed, 4,
        "partition 131's files of snapshots 1..4"
    );
    assert_eq!(
        rows_at(&loc, latest.tables["activity"].version).await,
        vec![(100, 1, 5), (131, 1, 5)]
    );
}

/// Runs `sql` over `activity` scanned lazily (its partitions `except` left out): the rows
/// of its three columns `(day, rep, calls)`, sorted, and how many rows the scan itself
/// gave (before the filter above it).
async fn scan_query(loc: &Location, except: &[&str], sql: &str) -> (Vec<(i32, i64, i64)>, usize) {
    use datafusion::physical_plan::{collect, ExecutionPlan};
    let except: std::collections::BTreeSet<String> = except.iter().map(|s| s.to_string()).collect();
    let scan = loc
        .scan_delta("activity", None, Some(&except))
        .await
        .unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("activity", Arc::new(scan)).unwrap();
    let plan = ctx
        .sql(sql)
        .await
        .unwrap()
        .create_physical_plan()
        .await
        .unwrap();
    let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
    fn scanned(p: &Arc<dyn ExecutionPlan>) -> usize {
        if p.name() == "DataSourceExec" {
            return p.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
        }
        p.children().into_iter().map(scanned).sum()
    }
    let mut rows = Vec::new();
    for b in batches {
        let d = b.column_by_name("period_start").unwrap();
        let d = d.as_any().downcast_ref::<Date32Array>().unwrap();
        let r = b.column_by_name("rep").unwrap();
        let r = r.as_any().downcast_ref::<Int64Array>().unwrap();
        let c = b.column_by_name("calls").unwrap();
        let c = c.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..b.num_rows() {
            rows.push((d.value(i), r.value(i), c.value(i)));
        }
    }
    rows.sort_unstable();
    (rows, scanned(&plan))
}

#[tokio::test]
async fn a_lazy_scan_reads_the_latest_version_less_what_is_left_out_and_its_filters_prune_files() {
    let dir = tempfile::tempdir().unwrap();
    let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
    let day = |d: i32| {
        (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap() + chrono::Days::new(d as u64))
            .to_string()
    };
    write(
        &loc,
        1,
        &table(&[(100, 1, 5), (100, 2, 7), (131, 1, 3), (161, 1, 100)]),
        10,
    )
    .await;
    // The latest version: partition 131 replaced, the others' files from the first commit.
    let latest = [
        (100, 1, 5),
        (100, 2, 7),
        (131, 1, 4),
        (131, 2, 1),
        (161, 1, 100),
        (161, 2, 200),
    ];
    write(&loc, 2, &table(&latest), 10).await;
    let all = "SELECT period_start, rep, calls FROM activity";

    let (rows, scanned) = scan_query(&loc, &[], all).await;
    assert_eq!(rows, latest.to_vec());
    assert_eq!(scanned, latest.len());

    // The partitions a snapshot recomputed are left out of the scan.
    let (rows, _) = scan_query(&loc, &[&day(131)], all).await;
    let kept: Vec<_> = latest.iter().copied().filter(|r| r.0 != 131).collect();
    assert_eq!(rows, kept);

    // A filter no row of a file can match (by its statistics) skips the file's rows: the
    // scan gives only the rows of partition 161, the filter above it keeps one.
    let (rows, scanned) = scan_query(&loc, &[], &format!("{all} WHERE calls > 150")).await;
    assert_eq!(rows, vec![(161, 2, 200)]);
    assert_eq!(
        scanned, 2,
        "files whose statistics rule the filter out are not read"
    );

    // A filter on the partition column reads that partition's file only.
    let (rows, scanned) = scan_query(
        &loc,
        &[],
        &format!("{all} WHERE period_start = DATE '{}'", day(100)),
    )
    .await;
    assert_eq!(rows, vec![(100, 1, 5), (100, 2, 7)]);
    assert_eq!(scanned, 2, "files of other partitions are not read");
}
