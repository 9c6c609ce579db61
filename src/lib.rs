//! quotaflow: a streaming analytics pipeline for sales performance management.
//!
//! # Layout
//!
//! The modules follow the data flow, one stage each:
//!
//! ```text
//! Kafka ─▶ source ──────────────▶ state ─────────▶ engine ─────────▶ snapshot ─▶ object store
//!          schema/decode/kafka     fold, dedup,     DataFusion over   Parquet + manifest
//!          (bad input → dead       versions, clock  sql/*.sql + udf   + _latest; restore
//!           letters)                                                  and retention
//! ```
//!
//! * [`config`]: the pipeline file, validated before any I/O.
//! * [`source`]: JSON schemas of the input contract, the decoder, the Kafka consumer and the
//!   dead-letter producer.
//! * [`event`]: typed events; [`calendar`]: fiscal periods and the time zone.
//! * [`state`]: what is folded between snapshots (rep × day rollups, latest entity versions,
//!   dedup horizon, offsets, data-quality counters) and its Arrow tables.
//! * [`engine`]: the DataFusion session that evaluates the pipeline's SQL files.
//! * [`snapshot`]: the checkpoint: Parquet tables, state, manifest, `_latest`.
//! * [`watermark`]: which events are `late` (the watermark over partitions that are not idle).
//! * [`pipeline`]: the run loop tying the stages together; [`alert`]: rule lifecycles and
//!   their delivery; [`health`]: `/healthz` and `/metrics`.
//! * [`generate`], [`demo`], [`query`], [`cli`]: synthetic data, the zero-setup demo,
//!   `quotaflow sql`, and the command line.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod alert;
pub mod calendar;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod error;
pub mod event;
pub mod generate;
pub mod health;
pub mod pipeline;
pub mod query;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod watermark;

pub use error::Error;
