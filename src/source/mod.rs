//! The source stage: Kafka → typed events or dead letters.
//!
//! `decode` checks a message against the input contract (`event::schema`),
//! `consumer` owns the Kafka consumer (assignment from the snapshot's offsets, end of partition
//! for `--once`), `dead_letters` the dead-letter producer. The source never commits an offset itself: offsets live in the
//! snapshot, and the Kafka commit after a snapshot is advisory.

pub mod consumer;
pub mod dead_letters;
pub mod decode;
mod json;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// A refused message, kept in the bounded dead-letter log of the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    pub detail: String,
    /// The raw payload, cut to `DEAD_LETTER_PAYLOAD_BYTES` in the log (the topic gets all of it).
    pub payload: Vec<u8>,
}

/// topic → partition → next offset to read (what a snapshot records as read).
pub type Offsets = std::collections::BTreeMap<String, std::collections::BTreeMap<i32, i64>>;

/// The next offset to read of a topic-partition, if any was read.
pub fn next_offset(offsets: &Offsets, topic: &str, partition: i32) -> Option<i64> {
    offsets.get(topic)?.get(&partition).copied()
}

/// A payload as text when it is UTF-8, else as base64: `(payload, encoding)`.
pub fn payload_text(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), "text"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            "base64",
        ),
    }
}
