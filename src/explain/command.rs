//! The `quotaflow explain` command: its arguments, and the explanation printed as text or
//! JSON (exit 3 when it does not reproduce the published value).

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Pipeline;
use crate::error::{Error, UsageError};
use crate::internal::InternalError;
use crate::snapshot::Location;

/// `quotaflow explain`'s arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// attainment, forecast, win_rates, commissions, leaderboard, rep_daily, deals_current or data_quality
    table: String,
    /// COLUMN=VALUE of the row's grain, once per key (e.g. --key deal_id=deal-000123)
    #[arg(long = "key", value_parser = key_value)]
    keys: Vec<(String, String)>,
    /// The column to explain [default: the table's headline figure, e.g. attainment, payout]
    #[arg(long)]
    column: Option<String>,
    /// Pipeline file the snapshot was computed with [default: pipelines/default.toml, else the built-in copy]
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Snapshot location (as for `run`) [default: snapshot.output of the pipeline file]
    #[arg(long, env = "QUOTAFLOW_OUTPUT")]
    output: Option<String>,
    /// Snapshot id [default: the one `_latest` names]
    #[arg(long)]
    snapshot: Option<u64>,
    /// Also show how the figure moved across the retained snapshots, with the inputs that
    /// arrived between them
    #[arg(long)]
    history: bool,
    /// Contributions listed (reps of a team, region or company row, largest first), and
    /// inputs listed above the rep level
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Output format: table (for reading) or json
    #[arg(long, value_enum, default_value_t = ExplainFormat::Table)]
    format: ExplainFormat,
}

/// Output formats of `quotaflow explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainFormat {
    Table,
    Json,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{s}` is not COLUMN=VALUE"))
}

impl Args {
    /// Runs the command; returns what to print on stdout.
    pub async fn run(self) -> Result<String, Error> {
        let p = Arc::new(Pipeline::load(self.pipeline.as_deref())?);
        let output = self
            .output
            .or_else(|| p.snapshot.output.clone())
            .ok_or(UsageError::NoOutput)?;
        let location = Location::parse(&output)?;
        let req = super::Request {
            table: self.table,
            keys: self.keys,
            column: self.column,
            snapshot: self.snapshot,
            limit: self.limit,
            history: self.history,
        };
        let e = super::explain(&location, &p, &req).await?;
        let out = match self.format {
            ExplainFormat::Table => super::text(&e),
            ExplainFormat::Json => serde_json::to_string_pretty(&e)
                .map_err(|e| InternalError::new(format!("explanation as JSON: {e}")))?,
        };
        if !e.reproduced {
            return Err(Error::Differs { report: out });
        }
        Ok(out)
    }
}
