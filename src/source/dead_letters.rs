//! The dead-letter producer: every refused message goes to the dead-letter topic as JSON,
//! with its reason, before the snapshot that moves past it (nothing is lost).

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::DeadLetter;
use crate::config::Source;
use crate::kafka::{Cluster, KafkaIoError};

/// Sends dead letters as JSON to the dead-letter topic, keyed `topic/partition/offset`, so a
/// receiver can drop the repeats an at-least-once replay may send.
pub struct DeadLetterSink {
    producer: FutureProducer,
    topic: String,
    pipeline: String,
    max_payload: usize,
}

impl DeadLetterSink {
    /// A sink for `pipeline`'s dead letters to `source.dead_letter_topic`.
    pub fn connect(
        cluster: &Cluster,
        pipeline: &str,
        source: &Source,
    ) -> Result<DeadLetterSink, KafkaIoError> {
        Ok(DeadLetterSink {
            producer: cluster.producer(&[])?,
            topic: source.dead_letter_topic.clone(),
            pipeline: pipeline.to_string(),
            max_payload: source.limits.max_message_bytes,
        })
    }

    /// Creates the dead-letter topic when it does not exist. Best effort: where the broker
    /// refuses, its auto-creation may still make the topic, and a failed delivery later stops
    /// the snapshot that would move past the dead letter, so nothing is lost either way.
    pub async fn ensure_topic(&self, cluster: &Cluster) {
        if let Err(e) = cluster.ensure_topics(&[self.topic.as_str()], 1).await {
            tracing::warn!(topic = self.topic, error = %e, "could not create the dead-letter topic");
        }
    }

    /// Delivers `letters` (each with its whole payload) and waits for every acknowledgement.
    pub async fn deliver(&self, letters: &[DeadLetter]) -> Result<(), KafkaIoError> {
        let mut pending = Vec::with_capacity(letters.len());
        for dl in letters {
            let full_payload = &dl.payload;
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
