//! The crate's error type, at the top of the layers: one variant per layer, each carrying the
//! context a user needs (file and key, topic, object path, table). No layer imports this
//! module; the tools (`cli`, `query`, `demo`) return it, and `main` maps it to an exit code.

use crate::config::ConfigError;
use crate::engine::EngineError;
use crate::kafka::KafkaIoError;
use crate::pipeline::RunError;
use crate::snapshot::SnapshotError;

pub use crate::internal::InternalError;

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
    Run(#[from] RunError),
    #[error(transparent)]
    Internal(#[from] InternalError),
    #[error(transparent)]
    Usage(#[from] UsageError),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Explain(#[from] ExplainError),
    /// `quotaflow verify` found rows that differ from a full recompute; `report` is its
    /// result, for stdout like any command's.
    #[error("the published tables differ from a full recompute (the report above says where)")]
    Differs { report: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A command used wrongly: what is missing or wrong, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("no Kafka brokers: pass --brokers, set QUOTAFLOW_BROKERS or source.brokers in the pipeline file")]
    NoBrokers,
    #[error(
        "no output: pass --output, set QUOTAFLOW_OUTPUT or snapshot.output in the pipeline file"
    )]
    NoOutput,
    #[error("no snapshot under `{output}` yet: run the pipeline first")]
    NoSnapshot { output: String },
    /// A flag's value (or a combination of flags) that the command cannot take.
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

/// `quotaflow sql`: a query refused or failing, or a snapshot table or result it cannot use.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("query refused or invalid (quotaflow sql is read-only): {0}")]
    Refused(datafusion::error::DataFusionError),
    #[error("query failed: {0}")]
    Failed(datafusion::error::DataFusionError),
    #[error("table `{table}` of the snapshot: {source}")]
    Table {
        table: String,
        source: datafusion::error::DataFusionError,
    },
    #[error("cannot render the result: {0}")]
    Render(datafusion::arrow::error::ArrowError),
}

/// `quotaflow explain`: a row or column it cannot explain, named with what it can.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("explain covers {covered}; `{table}` is not one of them")]
    Table { table: String, covered: String },
    #[error("explain {table} needs --key {key}=VALUE (the grain of the row)")]
    MissingKey { table: String, key: String },
    #[error("--key {key}: {message}")]
    Key { key: String, message: String },
    #[error("no row of `{table}` in snapshot {snapshot} has {keys}")]
    NoRow {
        table: String,
        snapshot: u64,
        keys: String,
    },
    #[error("--column {column}: `{table}` has no such column (it has {columns})")]
    Column {
        table: String,
        column: String,
        columns: String,
    },
    #[error(
        "explain does not trace {table}.{column}; docs/explain.md lists the columns it traces"
    )]
    Untraced { table: String, column: String },
}

/// Exit code of a user error: bad config, SQL, input or usage (fix the command and run again).
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a runtime failure: brokers, storage, the file system (retry once it is back).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of `quotaflow verify` when a published table differs from a full recompute.
pub const EXIT_DIFFERS: u8 = 3;
/// Exit code of a bug in quotaflow (EX_SOFTWARE).
pub const EXIT_INTERNAL: u8 = 70;

impl Error {
    /// The process exit code for this error: [`EXIT_USAGE`], [`EXIT_FAILURE`] or [`EXIT_INTERNAL`].
    pub fn exit_code(&self) -> u8 {
        match self {
            // A pipeline's SQL refused when it is checked before a run, or by `quotaflow sql`.
            Error::Config(_)
            | Error::Usage(_)
            | Error::Explain(_)
            | Error::Query(QueryError::Refused(_) | QueryError::Failed(_))
            | Error::Engine(EngineError::Sql { .. }) => EXIT_USAGE,
            Error::Run(e) if e.is_user_error() => EXIT_USAGE,
            Error::Differs { .. } => EXIT_DIFFERS,
            // The state's own tables always build: one that does not is a bug.
            Error::Internal(_)
            | Error::Engine(EngineError::State { .. })
            | Error::Run(RunError::Internal(_))
            | Error::Run(RunError::Engine(EngineError::State { .. })) => EXIT_INTERNAL,
            _ => EXIT_FAILURE,
        }
    }
}
