#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The one integration-test binary (modules below), so tests link once.
//!
//! Tests marked `#[ignore = "needs services ..."]` use the real broker, S3 server and Python
//! readers that `scripts/test` starts; `scripts/test` runs them with the rest.

mod alerts;
mod catalog;
mod cli;
mod common;
mod contract;
mod dashboard;
mod delta;
mod explain;
mod external;
mod golden;
mod harness;
mod hostile;
mod incremental;
mod lateness;
mod layers;
mod pipeline_mock;
mod properties;
mod serve;
