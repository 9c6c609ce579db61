//! quotaflow: a streaming analytics pipeline for sales performance management.
//!
//! # Layers
//!
//! The top-level modules form a chain in data-flow order, lowest first ([`LAYERS`]); a module
//! uses only modules below it (`tests/layers.rs` reads `src/` and fails on an upward name):
//!
//! ```text
//! memory    the allocator: jemalloc for Rust and C alike, trimming, heap counters
//! internal  InternalError: a bug, not bad input
//! event     typed events, the input contract's schemas (event::schema), money/rate scales
//! calendar  fiscal periods and the time zone
//! catalog   the tables quotaflow provides to SQL (reserved names, the SQL reference)
//! config    the pipeline file, validated before any I/O; one section per stage
//! kafka     the cluster: client configuration, producers, topics (shared by every stage)
//! source    decoder, Kafka consumer, dead letters (bad input → dead letters)
//! alert     rule lifecycles and their delivery (Kafka, webhook)
//! watermark which events are `late`
//! state     what is folded between snapshots, and its Arrow tables
//! ingest    the one ingest path: a message folded into the state (also the batch path)
//! engine    the DataFusion session over sql/*.sql and the UDFs
//! snapshot  the checkpoint: Delta tables, state files, checkpoint file, `_latest`, retention
//! health    /healthz and /metrics
//! pipeline  the run loop: cut, background snapshot, durable hand-over
//! error     the tools' error type and exit codes (no layer imports it)
//! query, explain, serve, verify, generate, demo, cli: `quotaflow sql`, `quotaflow explain`
//!           (a figure traced to its Kafka messages), the PostgreSQL endpoint `quotaflow serve`,
//!           `quotaflow verify`, synthetic data, the demo, the command line
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod alert;
pub mod calendar;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod error;
pub mod event;
pub mod explain;
pub mod generate;
pub mod health;
pub mod ingest;
pub mod internal;
pub mod kafka;
pub mod memory;
pub mod pipeline;
pub mod query;
pub mod serve;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod verify;
pub mod watermark;

pub use error::Error;

/// The top-level modules in layer order, lowest first: each may use only those before it.
pub const LAYERS: &[&str] = &[
    "memory",
    "internal",
    "event",
    "calendar",
    "catalog",
    "config",
    "kafka",
    "source",
    "alert",
    "watermark",
    "state",
    "ingest",
    "engine",
    "snapshot",
    "health",
    "pipeline",
    "error",
    "query",
    "explain",
    "serve",
    "verify",
    "generate",
    "demo",
    "cli",
];
