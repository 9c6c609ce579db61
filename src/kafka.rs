//! The Kafka cluster as every stage reaches it: the client configuration (brokers plus the
//! pipeline's librdkafka properties), producers, topic creation and bulk produce. Shared by the
//! source (consumer, dead letters), alert delivery and the tools.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;

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

/// How long a metadata or admin request may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A topic-partition.
pub type Tp = (String, i32);

/// The brokers and the client properties (TLS, SASL, fetch sizes) of `[source.kafka]`.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub brokers: String,
    pub properties: BTreeMap<String, String>,
}

impl Cluster {
    pub fn new(brokers: &str, properties: &BTreeMap<String, String>) -> Cluster {
        Cluster {
            brokers: brokers.to_string(),
            properties: properties.clone(),
        }
    }

    /// The client configuration every client of this cluster starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    /// A producer with the cluster's client properties, a 30 s delivery timeout and `extra`
    /// properties.
    pub fn producer(&self, extra: &[(&str, &str)]) -> Result<FutureProducer, KafkaIoError> {
        let mut cfg = self.client_config();
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
        &self,
        topics: &[&str],
        partitions: i32,
    ) -> Result<(), KafkaIoError> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
        let probe: BaseConsumer = self.client_config().create()?;
        let md = probe
            .fetch_metadata(None, METADATA_TIMEOUT)
            .map_err(|source| KafkaIoError::Connect {
                brokers: self.brokers.clone(),
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
