//! The source stage: Kafka → typed events or dead letters.
//!
//! `schema` loads the input contract from `schemas/`, `decode` checks a message against it,
//! `kafka` owns the consumer (assignment from the snapshot's offsets, end offsets for `--once`)
//! and the dead-letter producer. The source never commits an offset itself: offsets live in the
//! snapshot, and the Kafka commit after a snapshot is advisory.

pub mod decode;
pub mod kafka;
pub mod schema;

use base64::Engine as _;

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
