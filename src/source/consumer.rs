//! The consumer: assigned to every partition of the pipeline's topics at the offsets a
//! snapshot recorded (no group rebalancing; offsets live in the snapshot, the Kafka commit after
//! a snapshot is advisory), each partition read from a queue of its own so that the run can
//! leave a partition unread (watermark alignment), the end-of-partition checks of `--once`, and
//! the read limit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use super::{next_offset, Offsets};
use crate::event::schema::EventType;
use crate::kafka::{Cluster, KafkaIoError, Tp, METADATA_TIMEOUT};

/// The consumer group of a pipeline (its offsets are committed there, advisory, for lag tools).
pub fn group_of(pipeline: &str) -> String {
    format!("quotaflow-{pipeline}")
}

/// The consumer's client context: remembers when librdkafka last reported a client-level
/// error (a broker down, a request timed out), which never comes through `recv()`.
#[derive(Default)]
pub struct SourceContext {
    /// Milliseconds since the epoch of the last client-level error; 0 when none since cleared.
    last_error_ms: std::sync::atomic::AtomicI64,
}

impl rdkafka::ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // The end of a partition is reported here too; it is news, not an error.
        if matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            return;
        }
        tracing::warn!(error = %error, reason, "Kafka client error");
        self.last_error_ms.store(
            chrono::Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

impl rdkafka::consumer::ConsumerContext for SourceContext {}

impl SourceContext {
    /// Whether a client-level error came within `window` and since the last `clear`.
    pub fn errored_within(&self, window: Duration) -> bool {
        let at = self
            .last_error_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        at != 0 && chrono::Utc::now().timestamp_millis() - at < window.as_millis() as i64
    }

    /// Forgets the last error (a message or end of partition arrived since).
    pub fn clear(&self) {
        self.last_error_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The consumer side of a run.
pub struct KafkaSource {
    /// The client. Its own queue carries client events and errors (and a partition's messages
    /// fetched before its queue was split off); it must be read too.
    pub consumer: Arc<StreamConsumer<SourceContext>>,
    /// Every assigned partition with the offset reading starts at.
    pub assigned: BTreeMap<Tp, i64>,
    /// Each assigned partition's own queue (`split_partition_queue`), in `assigned` order. A
    /// partition that is not read keeps what the client fetched for it in its queue, and the
    /// client stops fetching it once that queue holds `queued.max.messages.kbytes`: nothing is
    /// dropped and fetched again, as pausing the partition would.
    queues: Vec<(Tp, StreamPartitionQueue<SourceContext>)>,
    /// The queue read last: reading stays on a partition while it has messages.
    next: AtomicUsize,
}

impl KafkaSource {
    /// Connects, discovers the partitions of the pipeline's topics and assigns them at the
    /// `offsets` a snapshot recorded (the beginning for partitions never read).
    pub fn connect(
        cluster: &Cluster,
        group: &str,
        topics: &BTreeMap<EventType, String>,
        offsets: &Offsets,
    ) -> Result<KafkaSource, KafkaIoError> {
        let mut cfg = cluster.client_config();
        cfg.set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // An offset out of range (the broker deleted it before it was read) is an error the
            // run handles, counting what it skips (`pipeline::reading::count_lost`), never a
            // silent reset.
            .set("auto.offset.reset", "error")
            .set("enable.partition.eof", "true");
        let consumer: Arc<StreamConsumer<SourceContext>> =
            Arc::new(cfg.create_with_context(SourceContext::default())?);
        let connect = |source| KafkaIoError::Connect {
            brokers: cluster.brokers.clone(),
            source,
        };
        // One metadata call for the whole cluster: proves the brokers answer.
        let md = consumer
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(connect)?;
        let mut tpl = TopicPartitionList::new();
        let mut assigned = BTreeMap::new();
        for topic in topics.values() {
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                tracing::warn!(topic, "topic does not exist; nothing to read from it");
                continue;
            };
            for p in t.partitions() {
                let start = next_offset(offsets, topic, p.id());
                let offset = start.map_or(Offset::Beginning, Offset::Offset);
                tpl.add_partition_offset(topic, p.id(), offset)
                    .map_err(|source| KafkaIoError::Topic {
                        topic: topic.clone(),
                        source,
                    })?;
                assigned.insert((topic.clone(), p.id()), start.unwrap_or(0));
            }
        }
        consumer.assign(&tpl)?;
        let queues = split(&consumer, &assigned)?;
        Ok(KafkaSource {
            consumer,
            assigned,
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Assigns every partition again, at its next offset in `offsets` (from its beginning if
    /// never read): reading goes on from there, and what the client had fetched beyond the
    /// state is fetched again. Each partition gets a new queue (an assign retires them).
    pub fn reassign(&mut self, offsets: &Offsets) -> Result<(), KafkaIoError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in self.assigned.keys() {
            let at = next_offset(offsets, t, *p).map_or(Offset::Beginning, Offset::Offset);
            tpl.add_partition_offset(t, *p, at)
                .map_err(|source| KafkaIoError::Topic {
                    topic: t.clone(),
                    source,
                })?;
        }
        self.consumer.assign(&tpl)?;
        self.queues = split(&self.consumer, &self.assigned)?;
        Ok(())
    }

    /// The next message or event of a partition not `held`, waiting for one. It starts a
    /// burst, so it looks at the partition after the one read last first: every partition
    /// with messages gets a turn, however fast another one's queue fills.
    pub async fn recv<'a>(&'a self, held: &BTreeSet<Tp>) -> KafkaResult<BorrowedMessage<'a>> {
        if let Some(m) = self.take(held, self.next.load(Ordering::Relaxed) + 1) {
            return m;
        }
        let waits: Vec<_> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, (tp, _))| !held.contains(tp))
            .map(|(i, (_, q))| q.recv().map(move |m| (i, m)).boxed())
            .collect();
        if waits.is_empty() {
            // Nothing assigned (no topic exists): the loop's other branches go on.
            return std::future::pending().await;
        }
        let ((i, m), _, _) = futures::future::select_all(waits).await;
        self.next.store(i, Ordering::Relaxed);
        m
    }

    /// A message or event already queued for a partition not `held`, if any: from the
    /// partition read last (a burst stays on it while it has messages), then the next ones.
    pub fn try_recv(&self, held: &BTreeSet<Tp>) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        self.take(held, self.next.load(Ordering::Relaxed))
    }

    /// A message or event already queued for a partition not `held`, looking at the queues
    /// in turn from `from`.
    fn take(&self, held: &BTreeSet<Tp>, from: usize) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        let n = self.queues.len();
        for k in 0..n {
            let i = (from + k) % n;
            let (tp, q) = &self.queues[i];
            if held.contains(tp) {
                continue;
            }
            if let Some(m) = q.recv().now_or_never() {
                self.next.store(i, Ordering::Relaxed);
                return Some(m);
            }
        }
        None
    }

    /// The assigned partitions.
    pub fn partitions(&self) -> impl Iterator<Item = (&str, i32)> + Clone {
        self.assigned.keys().map(|(t, p)| (t.as_str(), *p))
    }

    /// The current end (high watermark) and log start of every assigned partition.
    pub fn watermarks(&self) -> Result<BTreeMap<Tp, (i64, i64)>, KafkaIoError> {
        let mut out = BTreeMap::new();
        for (topic, p) in self.assigned.keys() {
            let (lo, hi) = self
                .consumer
                .fetch_watermarks(topic, *p, METADATA_TIMEOUT)
                .map_err(|source| KafkaIoError::Topic {
                    topic: topic.clone(),
                    source,
                })?;
            out.insert((topic.clone(), *p), (lo, hi));
        }
        Ok(out)
    }

    /// Partitions whose read position has reached the high watermark of their latest fetch.
    /// A partition not consumed from yet is at the offset `offsets` recorded for it.
    pub fn at_end(&self, offsets: &Offsets) -> Result<Vec<Tp>, KafkaIoError> {
        let positions = self.consumer.position()?;
        let mut out = Vec::new();
        for ((topic, p), start) in &self.assigned {
            let pos = match positions.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => next_offset(offsets, topic, *p).unwrap_or(*start),
            };
            let high = self.fetched_high_watermark(topic, *p);
            tracing::trace!(topic, partition = p, pos, ?high, "end check");
            if high.is_some_and(|high| pos >= high) {
                out.push((topic.clone(), *p));
            }
        }
        Ok(out)
    }

    /// Messages behind the end of each assigned partition, as of the latest fetch (for
    /// `/metrics`; a partition not fetched yet is left out).
    pub fn lag(&self, offsets: &Offsets) -> BTreeMap<Tp, i64> {
        let mut out = BTreeMap::new();
        for ((topic, p), start) in &self.assigned {
            if let Some(high) = self.fetched_high_watermark(topic, *p) {
                let next = next_offset(offsets, topic, *p).unwrap_or(*start);
                out.insert((topic.clone(), *p), (high - next).max(0));
            }
        }
        out
    }

    /// The high watermark of the latest fetch response for a partition (librdkafka's cached
    /// value; no request is sent). `None` before the first fetch.
    fn fetched_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid while `self.consumer` lives; the call only copies
        // librdkafka's cached offsets into the two out-parameters.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    /// Advisory commit of the offsets a durable snapshot holds (for lag monitoring tools).
    pub fn commit(&self, offsets: &Offsets) {
        let mut tpl = TopicPartitionList::new();
        for (topic, parts) in offsets {
            for (p, o) in parts {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*o));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                tracing::debug!(error = %e, "advisory offset commit failed");
            }
        }
    }
}

/// Each assigned partition's own queue.
fn split(
    consumer: &Arc<StreamConsumer<SourceContext>>,
    assigned: &BTreeMap<Tp, i64>,
) -> Result<Vec<(Tp, StreamPartitionQueue<SourceContext>)>, KafkaIoError> {
    assigned
        .keys()
        .map(|(topic, p)| {
            let queue =
                consumer
                    .split_partition_queue(topic, *p)
                    .ok_or_else(|| KafkaIoError::Topic {
                        topic: topic.clone(),
                        source: KafkaError::Subscription(format!(
                            "partition {p} could not be given a queue of its own"
                        )),
                    })?;
            Ok(((topic.clone(), *p), queue))
        })
        .collect()
}

/// Reads every partition of the pipeline's topics from the beginning to its end with the
/// consumer `run` uses, only counting messages and bytes: the limit of broker and client
/// that `run --once` is measured against. Returns (messages, bytes).
pub async fn read_limit(
    cluster: &Cluster,
    group: &str,
    topics: &BTreeMap<EventType, String>,
) -> Result<(u64, u64), KafkaIoError> {
    use rdkafka::Message;
    let empty = Offsets::default();
    let source = KafkaSource::connect(cluster, group, topics, &empty)?;
    let total = source.assigned.len();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut done = BTreeSet::new();
    let none = BTreeSet::new();
    while done.len() < total {
        let next = async {
            tokio::select! {
                m = source.recv(&none) => m,
                m = source.consumer.recv() => m,
            }
        };
        let Ok(first) = tokio::time::timeout(Duration::from_secs(30), next).await else {
            return Err(KafkaIoError::Stalled {
                partitions: total - done.len(),
            });
        };
        // A burst, as `run` reads: on from what is already queued, the same partition first.
        let mut m = Some(first);
        while let Some(r) = m.take() {
            match r {
                Ok(msg) => {
                    messages += 1;
                    bytes += msg.payload().map_or(0, <[u8]>::len) as u64;
                }
                Err(KafkaError::PartitionEOF(_)) => done.extend(source.at_end(&empty)?),
                Err(e) => tracing::warn!(error = %e, "Kafka consumer error; retrying"),
            }
            m = source.try_recv(&none);
        }
    }
    Ok((messages, bytes))
}
