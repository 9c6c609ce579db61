//! The crate's error type: one variant per layer, each carrying the context a user needs
//! (file and key, topic, object path, table). `InternalError` marks a bug, not bad input.

use crate::config::ConfigError;
use crate::engine::EngineError;
use crate::snapshot::SnapshotError;
use crate::source::kafka::KafkaIoError;

/// A broken invariant inside quotaflow: a bug to report, not something a user caused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error (a bug in quotaflow): {message}")]
pub struct InternalError {
    pub message: String,
}

impl InternalError {
    pub fn new(message: impl Into<String>) -> InternalError {
        InternalError {
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kafka(#[from] KafkaIoError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Internal(#[from] InternalError),
    /// A usage problem a user can fix (missing flag, wrong output, read-only violation).
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}
