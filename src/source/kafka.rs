//! Kafka I/O with rdkafka: a consumer assigned to every partition of the pipeline's topics at
//! the offsets a snapshot recorded, and a producer for dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Pipeline;
use crate::state::{DeadLetter, State};

/// A Kafka problem, with the brokers or topic it concerns.
#[derive(Debug, thiserror::Error)]
pub enum KafkaIoError {
    #[error("cannot reach the Kafka brokers `{brokers}`: {source}")]
    Connect { brokers: String, source: KafkaError },
    #[error("topic `{topic}`: {source}")]
    Topic { topic: String, source: KafkaError },
    #[error("dead-letter topic `{topic}`: delivery failed: {source}")]
    DeadLetter { topic: String, source: KafkaError },
    #[error("{failed} messages were not acknowledged by the brokers")]
    Undelivered { failed: u64 },
    #[error(
        "no message and no end of partition for 30 s; {partitions} partitions not at their end"
    )]
    Stalled { partitions: usize },
    #[error("cannot write the delivery log: {0}")]
    Log(#[from] std::io::Error),
    #[error("Kafka client: {0}")]
    Client(#[from] KafkaError),
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

fn client_config(brokers: &str, pipeline: &Pipeline) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &pipeline.kafka {
        c.set(k, v);
    }
    c.set("bootstrap.servers", brokers);
    c
}

/// A topic-partition.
pub type Tp = (String, i32);

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
    pub consumer: StreamConsumer<SourceContext>,
    /// Every assigned partition with the offset reading starts at.
    pub assigned: BTreeMap<Tp, i64>,
}

impl KafkaSource {
    /// Connects, discovers the partitions of the pipeline's topics and assigns them at the
    /// offsets `state` recorded (the beginning for partitions never read).
    pub fn connect(
        brokers: &str,
        pipeline: &Pipeline,
        state: &State,
    ) -> Result<KafkaSource, KafkaIoError> {
        let mut cfg = client_config(brokers, pipeline);
        cfg.set("group.id", format!("quotaflow-{}", pipeline.name))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true");
        let consumer: StreamConsumer<SourceContext> =
            cfg.create_with_context(SourceContext::default())?;
        let connect = |source| KafkaIoError::Connect {
            brokers: brokers.to_string(),
            source,
        };
        // One metadata call for the whole cluster: proves the brokers answer.
        let md = consumer
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(connect)?;
        let mut tpl = TopicPartitionList::new();
        let mut assigned = BTreeMap::new();
        for topic in pipeline.topics.values() {
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                tracing::warn!(topic, "topic does not exist; nothing to read from it");
                continue;
            };
            for p in t.partitions() {
                let start = state.next_offset(topic, p.id());
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
        Ok(KafkaSource { consumer, assigned })
    }

    /// The assigned partitions.
    pub fn partitions(&self) -> impl Iterator<Item = (&str, i32)> {
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
    /// A partition not consumed from yet is at the offset `state` recorded for it.
    pub fn at_end(&self, state: &State) -> Result<Vec<Tp>, KafkaIoError> {
        let positions = self.consumer.position()?;
        let mut out = Vec::new();
        for ((topic, p), start) in &self.assigned {
            let pos = match positions.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => state.next_offset(topic, *p).unwrap_or(*start),
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
    pub fn lag(&self, state: &State) -> BTreeMap<Tp, i64> {
        let mut out = BTreeMap::new();
        for ((topic, p), start) in &self.assigned {
            if let Some(high) = self.fetched_high_watermark(topic, *p) {
                let next = state.next_offset(topic, *p).unwrap_or(*start);
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
    pub fn commit(&self, offsets: &BTreeMap<String, BTreeMap<i32, i64>>) {
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

/// Sends dead letters as JSON to the dead-letter topic, keyed `topic/partition/offset`, so a
/// receiver can drop the repeats an at-least-once replay may send.
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    pipeline: String,
    max_payload: usize,
}

impl DeadLetterSink {
    pub fn connect(brokers: &str, pipeline: &Pipeline) -> Result<DeadLetterSink, KafkaIoError> {
        Ok(DeadLetterSink {
            producer: producer(brokers, pipeline, &[])?,
            topic: pipeline.dead_letter_topic.clone(),
            pipeline: pipeline.name.clone(),
            max_payload: pipeline.limits.max_message_bytes,
        })
    }

    /// Creates the dead-letter topic when it does not exist. Best effort: where the broker
    /// refuses, its auto-creation may still make the topic, and a failed delivery later stops
    /// the snapshot that would move past the dead letter, so nothing is lost either way.
    pub async fn ensure_topic(&self, brokers: &str, pipeline: &Pipeline) {
        if let Err(e) = ensure_topics(brokers, pipeline, &[self.topic.as_str()], 1).await {
            tracing::warn!(topic = self.topic, error = %e, "could not create the dead-letter topic");
        }
    }

    /// Delivers `letters` and waits for every acknowledgement.
    pub async fn deliver(&self, letters: &[(DeadLetter, Vec<u8>)]) -> Result<(), KafkaIoError> {
        let mut pending = Vec::with_capacity(letters.len());
        for (dl, full_payload) in letters {
            let truncated = full_payload.len() > self.max_payload;
            let (payload, encoding) =
                super::payload_text(&full_payload[..full_payload.len().min(self.max_payload)]);
            let body = serde_json::json!({
                "pipeline": self.pipeline,
                "topic": dl.topic,
                "partition": dl.partition,
                "offset": dl.offset,
                "reason": dl.reason,
                "detail": dl.detail,
                "payload": payload,
                "payload_encoding": encoding,
                "payload_truncated": truncated,
            })
            .to_string();
            let key = format!("{}/{}/{}", dl.topic, dl.partition, dl.offset);
            pending.push(async move {
                let rec = FutureRecord::to(&self.topic).key(&key).payload(&body);
                self.producer.send(rec, Duration::from_secs(30)).await
            });
        }
        for r in futures::future::join_all(pending).await {
            r.map_err(|(source, _)| KafkaIoError::DeadLetter {
                topic: self.topic.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// A producer with the pipeline's client properties (TLS, SASL), a 30 s delivery timeout and
/// `extra` properties.
pub fn producer(
    brokers: &str,
    pipeline: &Pipeline,
    extra: &[(&str, &str)],
) -> Result<FutureProducer, KafkaIoError> {
    let mut cfg = client_config(brokers, pipeline);
    // Consumer-only properties make the producer warn; keep the ones both understand.
    for k in [
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "fetch.max.bytes",
        "queued.max.messages.kbytes",
        "fetch.queue.backoff.ms",
    ] {
        cfg.remove(k);
    }
    cfg.set("linger.ms", "5").set("message.timeout.ms", "30000");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    Ok(cfg.create()?)
}

/// Creates the topics that do not exist yet (an existing one is left as it is).
pub async fn ensure_topics(
    brokers: &str,
    pipeline: &Pipeline,
    topics: &[&str],
    partitions: i32,
) -> Result<(), KafkaIoError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, pipeline).create()?;
    let probe: BaseConsumer = client_config(brokers, pipeline).create()?;
    let md = probe
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|source| KafkaIoError::Connect {
            brokers: brokers.to_string(),
            source,
        })?;
    let missing: Vec<NewTopic> = topics
        .iter()
        .filter(|t| {
            !md.topics()
                .iter()
                .any(|m| m.name() == **t && !m.partitions().is_empty())
        })
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(METADATA_TIMEOUT))
        .request_timeout(Some(METADATA_TIMEOUT));
    let results = admin.create_topics(missing.iter(), &options).await?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaIoError::Topic {
                    topic,
                    source: KafkaError::AdminOp(code),
                })
            }
        }
    }
    Ok(())
}

/// Produces `messages` (topic, key, value) in batches of up to `batch_messages` and waits
/// until every one is acknowledged. Used by `quotaflow generate`, the demo and the tests.
pub fn produce_all(
    brokers: &str,
    batch_messages: usize,
    messages: impl IntoIterator<Item = (String, String, String)>,
    mut progress: impl FnMut(u64),
) -> Result<u64, KafkaIoError> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    struct Ctx(Arc<AtomicU64>);
    impl rdkafka::ClientContext for Ctx {}
    impl rdkafka::producer::ProducerContext for Ctx {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
            if r.is_err() {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let failed = Arc::new(AtomicU64::new(0));
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", batch_messages.max(1).to_string())
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000")
        .create_with_context(Ctx(Arc::clone(&failed)))?;
    let mut n = 0u64;
    for (topic, key, value) in messages {
        send_waiting(
            &producer,
            BaseRecord::to(&topic)
                .key(key.as_str())
                .payload(value.as_str()),
            Duration::from_millis(10),
        )?;
        n += 1;
        if n.is_multiple_of(100_000) {
            progress(n);
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(KafkaIoError::Undelivered { failed });
    }
    Ok(n)
}

/// Sends one record, waiting (polling `wait` at a time) while the producer's queue is full.
fn send_waiting<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::ThreadedProducer<C>,
    mut rec: rdkafka::producer::BaseRecord<'_, str, str, C::DeliveryOpaque>,
    wait: Duration,
) -> Result<(), KafkaIoError> {
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                rec = back;
                producer.poll(wait);
            }
            Err((source, back)) => {
                return Err(KafkaIoError::Topic {
                    topic: back.topic.to_string(),
                    source,
                })
            }
        }
    }
}

/// Produces `messages` at a steady `rate` (messages per second) for freshness benchmarks, and
/// writes a delivery log to `log`: one CSV line per (millisecond of produce time, topic,
/// partition) with the highest offset the brokers gave and the number of messages,
/// `produced_at_ms,topic,partition,max_offset,count`.
pub fn produce_paced(
    brokers: &str,
    rate: u64,
    messages: impl IntoIterator<Item = (String, String, String)>,
    log: &mut dyn std::io::Write,
) -> Result<u64, KafkaIoError> {
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    type Deliveries = Vec<(usize, String, i32, i64)>;
    struct Ctx(Arc<Mutex<(Deliveries, u64)>>);
    impl rdkafka::ClientContext for Ctx {}
    impl rdkafka::producer::ProducerContext for Ctx {
        type DeliveryOpaque = usize;
        fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, sent_ms: usize) {
            use rdkafka::Message;
            let mut d = match self.0.lock() {
                Ok(d) => d,
                Err(poisoned) => poisoned.into_inner(),
            };
            match r {
                Ok(m) => {
                    d.0.push((sent_ms, m.topic().to_string(), m.partition(), m.offset()))
                }
                Err(_) => d.1 += 1,
            }
        }
    }
    let done = Arc::new(Mutex::new((Vec::new(), 0u64)));
    let producer: ThreadedProducer<Ctx> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000")
        .create_with_context(Ctx(Arc::clone(&done)))?;
    let started = Instant::now();
    let mut n = 0u64;
    for (topic, key, value) in messages {
        // Wait while ahead of the rate.
        while n as f64 > rate as f64 * started.elapsed().as_secs_f64() {
            std::thread::sleep(Duration::from_micros(200));
        }
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as usize;
        send_waiting(
            &producer,
            BaseRecord::with_opaque_to(&topic, now_ms)
                .key(key.as_str())
                .payload(value.as_str()),
            Duration::from_millis(1),
        )?;
        n += 1;
    }
    producer.flush(Duration::from_secs(120))?;
    let (mut deliveries, failed) = match done.lock() {
        Ok(mut d) => (std::mem::take(&mut d.0), d.1),
        Err(poisoned) => {
            let mut d = poisoned.into_inner();
            (std::mem::take(&mut d.0), d.1)
        }
    };
    if failed > 0 {
        return Err(KafkaIoError::Undelivered { failed });
    }
    deliveries.sort();
    let mut groups: Vec<(usize, String, i32, i64, u64)> = Vec::new();
    for (ms, topic, p, offset) in deliveries {
        match groups.last_mut() {
            Some(g) if g.0 == ms && g.1 == topic && g.2 == p => {
                g.3 = g.3.max(offset);
                g.4 += 1;
            }
            _ => groups.push((ms, topic, p, offset, 1)),
        }
    }
    for (ms, topic, p, offset, count) in groups {
        writeln!(log, "{ms},{topic},{p},{offset},{count}")?;
    }
    Ok(n)
}

/// Reads every partition of the pipeline's topics from the beginning to its end with the
/// consumer `run` uses, only counting messages and bytes: the limit of broker and client
/// that `run --once` is measured against. Returns (messages, bytes).
pub async fn read_limit(brokers: &str, pipeline: &Pipeline) -> Result<(u64, u64), KafkaIoError> {
    use rdkafka::Message;
    let empty = State::default();
    let source = KafkaSource::connect(brokers, pipeline, &empty)?;
    let total = source.assigned.len();
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut done = std::collections::BTreeSet::new();
    while done.len() < total {
        match tokio::time::timeout(Duration::from_secs(30), source.consumer.recv()).await {
            Err(_) => {
                return Err(KafkaIoError::Stalled {
                    partitions: total - done.len(),
                })
            }
            Ok(Ok(m)) => {
                messages += 1;
                bytes += m.payload().map_or(0, <[u8]>::len) as u64;
            }
            Ok(Err(KafkaError::PartitionEOF(_))) => done.extend(source.at_end(&empty)?),
            Ok(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error; retrying"),
        }
    }
    Ok((messages, bytes))
}
