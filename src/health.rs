//! Operability: `/healthz` and `/metrics` (Prometheus text format) of a running pipeline,
//! served over plain HTTP/1.1 on the pipeline file's `http.bind` (loopback by default).
//!
//! The run loop publishes a [`Status`] at every trigger tick and after every snapshot, never
//! per message; the server only reads the last one published.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::state::{lost_offsets, LOST_OFFSETS};

/// What the endpoint reports, as last published by the run loop.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// State restored and partitions assigned.
    pub ready: bool,
    /// No consumer error since the last message or end-of-partition event.
    pub broker_connected: bool,
    /// When the last snapshot became durable, its id and how long it took.
    pub last_snapshot: Option<(Instant, u64, Duration)>,
    /// topic → outcome or reason → messages (the state's data-quality counters).
    pub messages: BTreeMap<String, BTreeMap<String, u64>>,
    /// (topic, partition) → messages behind the partition's end, as of the latest fetch.
    pub lag: BTreeMap<(String, i32), i64>,
    pub state_keys: usize,
    /// Partitions paused now for reading too far ahead, and pauses over the run.
    pub paused: (usize, u64),
    /// Times reading waited for the snapshot being written (`max_events_while_writing`).
    pub waits_for_write: u64,
    /// Event-time watermark, microseconds since the epoch.
    pub watermark: Option<i64>,
    /// Alert events not yet acknowledged by their Kafka or webhook target.
    pub alerts_pending: usize,
    /// A snapshot older than this makes the pipeline unhealthy.
    pub max_snapshot_age: Duration,
    /// What the last snapshot's Delta commits did, and the sums over the run.
    pub last_write: Option<SnapshotWrite>,
    pub writes_total: SnapshotWrite,
    /// Table maintenance (vacuum and log cleanup) runs, and the data files they removed.
    pub vacuum_runs: u64,
    pub vacuum_files_removed: u64,
    /// The allocator's counters, read as a request is answered (not published by the loop).
    pub heap: Option<crate::memory::Heap>,
}

/// What one snapshot's Delta commits did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SnapshotWrite {
    pub tables_committed: u64,
    pub files_added: u64,
    pub files_removed: u64,
    pub bytes_written: u64,
    /// Bytes of state segments written (the delta, and the base of compacted parts).
    pub state_bytes_written: u64,
    /// State parts compacted.
    pub state_parts_compacted: u64,
    /// From the first state file put to `_latest`.
    pub commit_seconds: f64,
}

impl SnapshotWrite {
    pub fn add(&mut self, w: &SnapshotWrite) {
        self.tables_committed += w.tables_committed;
        self.files_added += w.files_added;
        self.files_removed += w.files_removed;
        self.bytes_written += w.bytes_written;
        self.state_bytes_written += w.state_bytes_written;
        self.state_parts_compacted += w.state_parts_compacted;
        self.commit_seconds += w.commit_seconds;
    }
}

/// The published status, shared between the run loop and the server.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Status>>);

impl Health {
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = match self.0.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut s);
    }

    fn get(&self) -> Status {
        match self.0.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Binds `addr` and serves until the returned task is aborted. A bind failure is logged
    /// (the pipeline runs on without the endpoint).
    pub async fn serve(&self, addr: SocketAddr) -> Option<tokio::task::AbortHandle> {
        let health = self.clone();
        let answer = move |req: Request| {
            let mut status = health.get();
            status.heap = crate::memory::heap();
            let reply = respond(&status, &req.path);
            Box::pin(async move { reply }) as futures::future::BoxFuture<'static, Reply>
        };
        match http(addr, answer).await {
            Ok((bound, task)) => {
                tracing::info!(addr = %bound, "serving /healthz and /metrics");
                Some(task)
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot serve /healthz and /metrics (http.bind); running without them");
                None
            }
        }
    }
}

/// What an HTTP endpoint answers for a path: (status line, content type, body).
pub type Reply = (&'static str, &'static str, String);

/// What an endpoint is asked: the path, the query string, and the `Authorization` header.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
}

impl Request {
    /// The request line and headers of an HTTP/1.1 request head.
    fn parse(head: &str) -> Request {
        let target = head.split_whitespace().nth(1).unwrap_or("");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let authorization = head.lines().skip(1).find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_string())
        });
        Request {
            path: path.to_string(),
            query: query.to_string(),
            authorization,
        }
    }
}

/// Binds `addr` and answers every GET with `respond(request)`, over plain HTTP/1.1, until the
/// returned task is aborted; returns the bound address too (port 0 picks a free one). A `401`
/// reply asks for HTTP Basic credentials.
pub async fn http(
    addr: SocketAddr,
    respond: impl Fn(Request) -> futures::future::BoxFuture<'static, Reply> + Send + Sync + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::AbortHandle)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let respond = Arc::new(respond);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let respond = Arc::clone(&respond);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                // Read the request head (the endpoints have no request bodies).
                while n < buf.len() {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let (status, content_type, body) = respond(Request::parse(&head)).await;
                let challenge = if status.starts_with("401") {
                    "www-authenticate: Basic realm=\"quotaflow\", charset=\"UTF-8\"\r\n"
                } else {
                    ""
                };
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\n{challenge}connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok((bound, task.abort_handle()))
}

/// A `/healthz` answer: 200 when healthy, else 503, with its JSON body.
pub fn health_reply(healthy: bool, body: String) -> Reply {
    let status = if healthy {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    (status, "application/json", body)
}

/// The answer to a request for `path`: (status line, content type, body).
fn respond(s: &Status, path: &str) -> Reply {
    match path {
        "/healthz" => {
            let age = s.last_snapshot.map(|(at, _, _)| at.elapsed());
            let fresh = age.is_some_and(|a| a <= s.max_snapshot_age);
            let healthy = s.ready && s.broker_connected && fresh;
            let body = serde_json::json!({
                "status": if healthy { "ok" } else { "unhealthy" },
                "ready": s.ready,
                "broker_connected": s.broker_connected,
                "last_snapshot_id": s.last_snapshot.map(|(_, id, _)| id),
                "last_snapshot_age_seconds": age.map(|a| a.as_secs_f64()),
                "lost_offsets": lost_offsets(&s.messages),
            })
            .to_string();
            health_reply(healthy, body)
        }
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(s)),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /healthz or /metrics\n".into(),
        ),
    }
}

fn metrics(s: &Status) -> String {
    let mut e = Exposition::default();
    e.family(
        "quotaflow_messages_total",
        "counter",
        "Messages read, by topic and outcome (ok, duplicate) or dead-letter reason.",
        s.messages.iter().flat_map(|(topic, outcomes)| {
            outcomes
                .iter()
                .filter(|(o, _)| *o != LOST_OFFSETS)
                .map(move |(outcome, count)| {
                    (
                        labels(&[("topic", topic.as_str()), ("outcome", outcome.as_str())]),
                        *count,
                    )
                })
        }),
    );
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for outcomes in s.messages.values() {
        for (outcome, count) in outcomes {
            if outcome != "ok" && outcome != "duplicate" && outcome != LOST_OFFSETS {
                *by_reason.entry(outcome).or_default() += count;
            }
        }
    }
    e.family(
        "quotaflow_dead_letters_total",
        "counter",
        "Messages sent to the dead letters, by reason.",
        by_reason
            .into_iter()
            .map(|(reason, count)| (labels(&[("reason", reason)]), count)),
    );
    e.family(
        "quotaflow_lost_offsets_total",
        "counter",
        "Offsets the broker deleted before quotaflow read them (those events are lost), by topic.",
        lost_offsets(&s.messages)
            .into_iter()
            .map(|(topic, lost)| (labels(&[("topic", topic.as_str())]), lost)),
    );
    e.family(
        "quotaflow_consumer_lag",
        "gauge",
        "Messages behind the end of each partition, as of the latest fetch.",
        s.lag.iter().map(|((topic, p), lag)| {
            (
                labels(&[("topic", topic.as_str()), ("partition", &p.to_string())]),
                *lag,
            )
        }),
    );
    let snapshot = s.last_snapshot;
    let write = s.last_write;
    let (heap, t) = (s.heap, s.writes_total);
    let watermark = s.watermark.map(|w| w as f64 / 1e6);
    let gauges: [(&str, &str, Option<f64>); 15] = [
        ("quotaflow_partitions_paused", "Partitions paused for reading more than source.max_read_ahead past the slowest one.", Some(s.paused.0 as f64)),
        ("quotaflow_snapshot_age_seconds", "Seconds since the last snapshot became durable.", snapshot.map(|(at, _, _)| at.elapsed().as_secs_f64())),
        ("quotaflow_snapshot_duration_seconds", "How long the last snapshot took, cut to durable.", snapshot.map(|(_, _, took)| took.as_secs_f64())),
        ("quotaflow_snapshot_id", "Id of the last durable snapshot.", snapshot.map(|(_, id, _)| id as f64)),
        ("quotaflow_snapshot_commit_seconds", "Seconds the last snapshot took to write (state segments and compaction, Delta commits, checkpoint, _latest).", write.map(|w| w.commit_seconds)),
        ("quotaflow_snapshot_tables_committed", "Tables the last snapshot committed to (unchanged tables get no commit).", write.map(|w| w.tables_committed as f64)),
        ("quotaflow_snapshot_files_added", "Data files the last snapshot added.", write.map(|w| w.files_added as f64)),
        ("quotaflow_snapshot_bytes_written", "Bytes of data files the last snapshot wrote.", write.map(|w| w.bytes_written as f64)),
        ("quotaflow_snapshot_state_bytes_written", "Bytes of state segments the last snapshot wrote (what changed, and the parts it compacted).", write.map(|w| w.state_bytes_written as f64)),
        ("quotaflow_heap_allocated_bytes", "Bytes of the process's live allocations, Rust's and the C libraries' (jemalloc's stats.allocated).", heap.map(|h| h.allocated as f64)),
        ("quotaflow_heap_resident_bytes", "Bytes of memory pages jemalloc holds for them, freed pages not yet returned included (stats.resident).", heap.map(|h| h.resident as f64)),
        ("quotaflow_state_keys", "Keys held in the state.", Some(s.state_keys as f64)),
        ("quotaflow_watermark_seconds", "Event-time watermark, seconds since the epoch.", watermark),
        ("quotaflow_alert_deliveries_pending", "Alert events not yet acknowledged by their target.", Some(s.alerts_pending as f64)),
        ("quotaflow_up", "1 when ready and the broker connected.", Some(f64::from(u8::from(s.ready && s.broker_connected)))),
    ];
    for (name, help, v) in gauges {
        e.family(name, "gauge", help, v.map(|v| (String::new(), v)));
    }
    let counters = [
        ("quotaflow_partition_pauses_total", "Times a partition was paused for reading too far ahead.", s.paused.1),
        ("quotaflow_waits_for_write_total", "Times reading waited for the snapshot being written, having read snapshot.max_events_while_writing for the next.", s.waits_for_write),
        ("quotaflow_table_commits_total", "Delta commits made by snapshots.", t.tables_committed),
        ("quotaflow_files_added_total", "Data files added by snapshots.", t.files_added),
        ("quotaflow_files_replaced_total", "Data files snapshots removed from their tables' latest versions (kept for time travel until vacuumed).", t.files_removed),
        ("quotaflow_bytes_written_total", "Bytes of data files written by snapshots.", t.bytes_written),
        ("quotaflow_state_bytes_written_total", "Bytes of state segments written by snapshots.", t.state_bytes_written),
        ("quotaflow_state_parts_compacted_total", "State parts compacted into a base.", t.state_parts_compacted),
        ("quotaflow_vacuum_runs_total", "Table maintenance runs (vacuum and log cleanup).", s.vacuum_runs),
        ("quotaflow_vacuum_files_removed_total", "Data files deleted by vacuum.", s.vacuum_files_removed),
    ];
    for (name, help, v) in counters {
        e.family(name, "counter", help, [(String::new(), v)]);
    }
    e.0
}

/// The Prometheus text exposition, built a family at a time: its HELP and TYPE lines, then
/// its samples, so every sample follows its own family's metadata.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// One family and its samples, each `(labels, value)` with labels as [`labels`] writes
    /// them (empty for a family of one unlabelled sample). A family without samples keeps its
    /// HELP and TYPE lines, so a scraper learns of it before its first value.
    fn family<V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {v}");
        }
    }
}

/// `{k="v",…}`, the values escaped.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_readiness_broker_and_snapshot_age() {
        let mut s = Status {
            max_snapshot_age: Duration::from_secs(60),
            ..Status::default()
        };
        assert_eq!(respond(&s, "/healthz").0, "503 Service Unavailable");
        s.ready = true;
        s.broker_connected = true;
        s.last_snapshot = Some((Instant::now(), 3, Duration::from_millis(250)));
        let (status, _, body) = respond(&s, "/healthz");
        assert_eq!(status, "200 OK", "{body}");
        assert!(body.contains("\"last_snapshot_id\":3"), "{body}");
        s.broker_connected = false;
        assert_eq!(respond(&s, "/healthz").0, "503 Service Unavailable");
        assert_eq!(respond(&s, "/nope").0, "404 Not Found");
    }

    #[test]
    fn metrics_are_prometheus_text_grouped_by_family() {
        let mut s = Status::default();
        s.messages
            .entry("spm.deals".into())
            .or_default()
            .insert("ok".into(), 7);
        s.messages
            .entry("spm.deals".into())
            .or_default()
            .insert("negative_amount".into(), 2);
        s.lag.insert(("spm.deals".into(), 0), 5);
        s.heap = Some(crate::memory::Heap {
            allocated: 300,
            resident: 400,
        });
        s.lag.insert(("we\"ird".into(), 1), 0);
        let text = metrics(&s);
        let lines: std::collections::BTreeSet<&str> = text.lines().collect();
        let missing: Vec<&str> = [
            "quotaflow_heap_allocated_bytes 300",
            "quotaflow_heap_resident_bytes 400",
            "quotaflow_messages_total{topic=\"spm.deals\",outcome=\"ok\"} 7",
            "quotaflow_dead_letters_total{reason=\"negative_amount\"} 2",
            "quotaflow_consumer_lag{topic=\"spm.deals\",partition=\"0\"} 5",
            "quotaflow_consumer_lag{topic=\"we\\\"ird\",partition=\"1\"} 0",
            "quotaflow_up 0",
            "# TYPE quotaflow_snapshot_id gauge",
        ]
        .into_iter()
        .filter(|l| !lines.contains(l))
        .collect();
        assert!(missing.is_empty(), "missing {missing:?} in\n{text}");
        // No snapshot yet: its families say so by having no sample.
        assert!(!text.contains("\nquotaflow_snapshot_id "), "{text}");
        // Lost offsets are no messages: a family of their own, and in /healthz.
        assert!(!text.contains("quotaflow_lost_offsets_total{"), "{text}");
        s.messages
            .entry("spm.deals".into())
            .or_default()
            .insert(LOST_OFFSETS.into(), 40);
        let text = metrics(&s);
        assert!(
            text.contains("quotaflow_lost_offsets_total{topic=\"spm.deals\"} 40\n"),
            "{text}"
        );
        assert!(!text.contains("outcome=\"lost_offsets\""), "{text}");
        assert!(!text.contains("reason=\"lost_offsets\""), "{text}");
        let (_, _, body) = respond(&s, "/healthz");
        assert!(
            body.contains("\"lost_offsets\":{\"spm.deals\":40}"),
            "{body}"
        );
        // Every sample follows its own family's TYPE line, and every family is there once.
        let mut family = "";
        let mut families = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split_whitespace().next().unwrap();
                assert!(families.insert(family), "{family} twice");
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line} outside {family}");
            }
        }
    }
}
