//! The pipeline file's settings as tables (`catalog::Origin::Config`): the stage table, the
//! topics, the period types, the leaderboard weights and the commission plan's name.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::error::ArrowError;

use super::super::columns::{batch, strs};
use crate::calendar::PeriodType;
use crate::config::Metrics;
use crate::event::Stage;

pub(super) fn tables(pipeline: &Metrics) -> Result<Vec<(&'static str, RecordBatch)>, ArrowError> {
    Ok(vec![
        ("stages", stages(pipeline)?),
        ("topics", topics(pipeline)?),
        ("leaderboard_weights", leaderboard_weights(pipeline)?),
        (
            "commission_plan",
            batch(vec![(
                "plan",
                strs(std::iter::once(pipeline.commissions.name.as_str())),
            )])?,
        ),
        (
            "period_types",
            batch(vec![(
                "period_type",
                strs(PeriodType::ALL.iter().map(|p| p.as_str())),
            )])?,
        ),
    ])
}

fn leaderboard_weights(p: &Metrics) -> Result<RecordBatch, ArrowError> {
    let w = &p.leaderboard;
    let one = |x: f64| -> ArrayRef { Arc::new(Float64Array::from(vec![x])) };
    batch(vec![
        ("calls", one(w.calls)),
        ("emails", one(w.emails)),
        ("meetings_held", one(w.meetings_held)),
        ("demos_held", one(w.demos_held)),
        ("webinars", one(w.webinars)),
        ("tasks", one(w.tasks)),
        ("won_deals", one(w.won_deals)),
        ("per_1000_won", one(w.per_1000_won)),
    ])
}

fn stages(p: &Metrics) -> Result<RecordBatch, ArrowError> {
    batch(vec![
        ("stage", strs(p.stages.iter().map(|s| s.stage.as_str()))),
        (
            "funnel_rank",
            Arc::new(
                p.stages
                    .iter()
                    .map(|s| s.stage.funnel_rank())
                    .collect::<Int64Array>(),
            ),
        ),
        (
            "probability",
            Arc::new(
                p.stages
                    .iter()
                    .map(|s| Some(s.probability))
                    .collect::<Float64Array>(),
            ),
        ),
        (
            "forecast_category",
            strs(p.stages.iter().map(|s| s.forecast_category.as_str())),
        ),
        (
            "is_closed",
            Arc::new(
                p.stages
                    .iter()
                    .map(|s| Some(matches!(s.stage, Stage::ClosedWon | Stage::ClosedLost)))
                    .collect::<BooleanArray>(),
            ),
        ),
    ])
}

fn topics(p: &Metrics) -> Result<RecordBatch, ArrowError> {
    batch(vec![
        ("event_type", strs(p.topics.keys().map(|t| t.name()))),
        ("topic", strs(p.topics.values().map(String::as_str))),
    ])
}
