//! The dashboard of `quotaflow serve`'s HTTP port: one embedded page (`assets/dashboard.html`,
//! no build step, no network) and the small JSON API it shares with the tests.
//!
//! Every figure is a query over the served snapshot's published tables, money cast to text so
//! it stays exact to the cent on its way to the page:
//!
//! - `GET /api/snapshot`: the snapshot served (id, event clock, written at, age) — what the page
//!   polls to stay live;
//! - `GET /api/overview?period_type=&period_start=`: company and team attainment against
//!   pacing, the forecast against quota, the leaderboard, high and low performers, firing
//!   alerts, NPS, data quality, and the periods to pick from;
//! - `GET /api/team?team=…`: the team's reps; `GET /api/rep?rep=…`: a rep's attainment,
//!   deals and weekly activity trend.
//!
//! The period defaults to the current fiscal quarter (`attainment.is_current`).

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use serde_json::{json, Map, Value};

use super::served::Served;
use crate::health::Reply;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("../../assets/dashboard.html");

/// A query of the API: its name in the answer and its SQL over the published tables, with
/// `$1` the period type, `$2` the period start and `$3` a team or rep id where used.
type Named = (&'static str, &'static str);

const OVERVIEW: &[Named] = &[
    ("company", "SELECT period_start, period_end, CAST(quota AS VARCHAR) AS quota, CAST(closed_won AS VARCHAR) AS closed_won, \
        CAST(expected_to_date AS VARCHAR) AS expected_to_date, attainment, time_elapsed, pacing, attainment_band \
        FROM attainment WHERE level = 'company' AND period_type = $1 AND period_start = $2"),
    ("teams", "SELECT entity_id AS team, CAST(quota AS VARCHAR) AS quota, CAST(closed_won AS VARCHAR) AS closed_won, \
        CAST(expected_to_date AS VARCHAR) AS expected_to_date, attainment, time_elapsed, pacing, attainment_band \
        FROM attainment WHERE level = 'team' AND period_type = $1 AND period_start = $2 \
        ORDER BY attainment DESC NULLS LAST, entity_id"),
    ("forecast", "SELECT level, entity_id, CAST(closed_won AS VARCHAR) AS closed_won, \
        CAST(commit_forecast AS VARCHAR) AS commit_forecast, CAST(best_case_forecast AS VARCHAR) AS best_case_forecast, \
        CAST(weighted_forecast AS VARCHAR) AS weighted_forecast, CAST(quota AS VARCHAR) AS quota \
        FROM forecast WHERE level IN ('company', 'team') AND period_type = $1 AND period_start = $2 \
        ORDER BY CASE level WHEN 'company' THEN 0 ELSE 1 END, entity_id"),
    ("leaderboard", "SELECT rank, rep_id, points, won_deals, CAST(won_amount AS VARCHAR) AS won_amount FROM leaderboard \
        WHERE period_type = $1 AND period_start = $2 ORDER BY rank, rep_id LIMIT 10"),
    ("high_performers", "SELECT rep_id, team_id, attainment, company_rank FROM performance \
        WHERE period_type = $1 AND period_start = $2 AND performer_band = 'high' ORDER BY company_rank, rep_id LIMIT 5"),
    ("low_performers", "SELECT rep_id, team_id, attainment, company_rank FROM performance \
        WHERE period_type = $1 AND period_start = $2 AND performer_band = 'low' ORDER BY company_rank DESC, rep_id LIMIT 5"),
    ("alerts", "SELECT severity, rule, key, message, CAST(fired_at AS VARCHAR) AS fired_at FROM alerts WHERE state = 'firing' \
        ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END, rule, key LIMIT 50"),
    ("nps", "SELECT survey, responses, nps FROM survey_nps WHERE level = 'company' ORDER BY survey DESC LIMIT 6"),
    ("data_quality", "SELECT topic, reason, count FROM data_quality ORDER BY topic, reason"),
    ("periods", "SELECT DISTINCT CAST(period_start AS VARCHAR) AS period_start FROM attainment \
        WHERE level = 'company' AND period_type = $1 ORDER BY period_start DESC"),
];

const TEAM: &[Named] = &[(
    "reps",
    "SELECT a.entity_id AS rep_id, CAST(a.quota AS VARCHAR) AS quota, CAST(a.closed_won AS VARCHAR) AS closed_won, \
        CAST(a.expected_to_date AS VARCHAR) AS expected_to_date, a.attainment, a.pacing, p.performer_band \
        FROM attainment a JOIN performance p ON p.rep_id = a.entity_id AND p.period_type = a.period_type \
        AND p.period_start = a.period_start \
        WHERE a.level = 'rep' AND a.period_type = $1 AND a.period_start = $2 AND p.team_id = $3 \
        ORDER BY a.attainment DESC NULLS LAST, a.entity_id",
)];

const REP: &[Named] = &[
    (
        "attainment",
        "SELECT CAST(quota AS VARCHAR) AS quota, CAST(closed_won AS VARCHAR) AS closed_won, \
        CAST(expected_to_date AS VARCHAR) AS expected_to_date, attainment, pacing FROM attainment \
        WHERE level = 'rep' AND period_type = $1 AND period_start = $2 AND entity_id = $3",
    ),
    (
        "deals",
        "SELECT deal_id, stage, CAST(amount_corporate AS VARCHAR) AS amount_corporate, \
        CAST(close_date AS VARCHAR) AS close_date, forecast_category, is_won FROM deals_current \
        WHERE rep_id = $3 AND close_date >= $2 ORDER BY close_date, deal_id LIMIT 100",
    ),
    (
        "trend",
        "SELECT CAST(week_start AS VARCHAR) AS week_start, activities, meetings_held, \
        CAST(won_amount AS VARCHAR) AS won_amount, activity_trend FROM trends WHERE rep_id = $3 \
        ORDER BY week_start DESC LIMIT 13",
    ),
];

/// A request's query string as (key, value) pairs, percent-decoded.
fn params(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn bad_request(message: String) -> Reply {
    (
        "400 Bad Request",
        "application/json",
        json!({ "error": message }).to_string(),
    )
}

/// The answer to `GET path?query` on the dashboard's routes; `None` for another path.
pub async fn respond(served: Arc<Served>, path: &str, query: &str) -> Option<Reply> {
    let reply = match path {
        "/" | "/dashboard" => ("200 OK", "text/html; charset=utf-8", PAGE.to_string()),
        "/api/snapshot" => ("200 OK", "application/json", snapshot(&served).to_string()),
        "/api/overview" | "/api/team" | "/api/rep" => {
            let p = params(query);
            let get = |k: &str| p.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let period_type = get("period_type").unwrap_or_else(|| "quarter".into());
            if !matches!(period_type.as_str(), "month" | "quarter" | "year") {
                return Some(bad_request(format!(
                    "period_type `{period_type}`: month, quarter or year"
                )));
            }
            let period_start = match get("period_start") {
                Some(d) => match NaiveDate::parse_from_str(&d, "%Y-%m-%d") {
                    Ok(d) => Some(d),
                    Err(_) => return Some(bad_request(format!("period_start `{d}`: YYYY-MM-DD"))),
                },
                None => None,
            };
            let (queries, id) = match path {
                "/api/team" => (TEAM, get("team")),
                "/api/rep" => (REP, get("rep")),
                _ => (OVERVIEW, Some(String::new())),
            };
            let Some(id) = id else {
                return Some(bad_request(format!("{path} needs its id (team= or rep=)")));
            };
            match answer(&served, queries, &period_type, period_start, &id).await {
                Ok(v) => ("200 OK", "application/json", v.to_string()),
                Err(e) => (
                    "500 Internal Server Error",
                    "application/json",
                    json!({ "error": e.to_string() }).to_string(),
                ),
            }
        }
        _ => return None,
    };
    Some(reply)
}

/// What `/api/snapshot` says of the served snapshot.
pub fn snapshot(served: &Served) -> Value {
    json!({
        "snapshot_id": served.id,
        "as_of": served.as_of,
        "written_at": served.written_at,
        "age_seconds": super::served_age(served),
    })
}

/// Runs `queries` for the period (the current quarter when `start` is `None`) and `id`.
async fn answer(
    served: &Served,
    queries: &[Named],
    period_type: &str,
    start: Option<NaiveDate>,
    id: &str,
) -> Result<Value, datafusion::error::DataFusionError> {
    let ctx = &served.ctx;
    let start = match start {
        Some(d) => Some(d),
        None => current(ctx, period_type).await?,
    };
    let mut out = Map::new();
    out.insert("snapshot".into(), snapshot(served));
    out.insert(
        "period".into(),
        json!({ "type": period_type, "start": start.map(|d| d.to_string()) }),
    );
    let Some(start) = start else {
        return Ok(Value::Object(out));
    };
    // Date32 counts days since 1970-01-01, chrono's default date.
    let days = i32::try_from((start - NaiveDate::default()).num_days())
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let date = ScalarValue::Date32(Some(days));
    for (name, sql) in queries {
        let mut values = vec![ScalarValue::from(period_type), date.clone()];
        if sql.contains("$3") {
            values.push(ScalarValue::from(id));
        }
        let batches = ctx
            .sql(sql)
            .await?
            .with_param_values(values)?
            .collect()
            .await?;
        out.insert((*name).to_string(), rows(&batches)?);
    }
    Ok(Value::Object(out))
}

/// The start of the current period of `period_type`, as the company's attainment row says.
async fn current(
    ctx: &SessionContext,
    period_type: &str,
) -> Result<Option<NaiveDate>, datafusion::error::DataFusionError> {
    let batches = ctx
        .sql(
            "SELECT CAST(MAX(period_start) AS VARCHAR) AS s FROM attainment \
              WHERE level = 'company' AND period_type = $1 AND is_current",
        )
        .await?
        .with_param_values(vec![ScalarValue::from(period_type)])?
        .collect()
        .await?;
    let v = rows(&batches)?;
    Ok(v.get(0)
        .and_then(|r| r.get("s"))
        .and_then(Value::as_str)
        .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()))
}

/// Record batches as a JSON array of objects (NULLs kept as `null`).
fn rows(
    batches: &[datafusion::arrow::array::RecordBatch],
) -> Result<Value, datafusion::error::DataFusionError> {
    let mut w = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::JsonArray>(Vec::new());
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Ok(Value::Array(vec![]));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
}
