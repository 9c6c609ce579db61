//! `quotaflow explain`: one published figure traced to the Kafka messages that made it.
//!
//! The explanation is computed from the state of the chosen snapshot (restored from its
//! checkpoint, as `verify` restores it), never by re-reading Kafka: the state keeps where
//! every entity version and every rep-day came from (`state::provenance`). For the row the
//! keys name, the figure is recomputed from the state with the contract's arithmetic (fx
//! conversion at the rate in force, day-based proration, the commission tiers, the leaderboard
//! weights), its inputs are listed with topic, partition and offset, and the result is checked
//! against the published value: an explanation that does not reproduce it fails (exit 3).
//! `figures` covers the deal and quota tables, `records` the grain and entity tables,
//! `history` follows a figure across the retained snapshots, `render` prints it.

mod command;
mod commission;
mod figures;
mod history;
mod members;
mod published;
mod records;
mod render;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::config::{Metrics, Pipeline};
use crate::engine::udf::rescale;
use crate::error::{Error, ExplainError};
use crate::event::schema::EventType;
use crate::event::{Day, FxRate, RATE_SCALE};
use crate::snapshot::{Checkpoint, Location};
use crate::state::{Origin, State, Versioned};
use members::Hierarchy;
use published::published_row;

/// The tables explain covers: name, grain (the keys a row needs) and the column explained by
/// default.
pub const TABLES: [(&str, &[&str], &str); 8] = [
    (
        "attainment",
        &["level", "entity_id", "period_type", "period_start"],
        "attainment",
    ),
    (
        "forecast",
        &["level", "entity_id", "period_type", "period_start"],
        "commit_forecast",
    ),
    (
        "win_rates",
        &["level", "entity_id", "period_type", "period_start"],
        "win_rate",
    ),
    (
        "commissions",
        &["rep_id", "period_type", "period_start"],
        "payout",
    ),
    (
        "leaderboard",
        &["period_type", "period_start", "rep_id"],
        "points",
    ),
    ("rep_daily", &["rep_id", "day"], "activities"),
    ("deals_current", &["deal_id"], "amount_corporate"),
    ("data_quality", &["topic", "reason"], "count"),
];

/// What to explain.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub table: String,
    /// `COLUMN=VALUE` pairs naming the row (its grain).
    pub keys: Vec<(String, String)>,
    /// The column to trace (default: the table's headline figure).
    pub column: Option<String>,
    /// The snapshot (default: the one `_latest` names).
    pub snapshot: Option<u64>,
    /// Contributions (and, above the rep level, inputs) listed at most.
    pub limit: usize,
    /// Also follow the figure across the retained snapshots.
    pub history: bool,
}

/// A figure as computed, in the published column's kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// DECIMAL(18,2), in cents.
    Money(i128),
    Int(i64),
    Double(f64),
    Text(String),
}

impl Value {
    /// As the published table prints it (`None` for NULL).
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Money(c) => Some(cents(*c)),
            Value::Int(n) => Some(n.to_string()),
            Value::Double(x) => Some(format!("{x:?}")),
            Value::Text(s) => Some(s.clone()),
        }
    }

    /// Whether the published cell (as text) holds this value exactly.
    pub fn equals(&self, published: Option<&str>) -> bool {
        match (self, published) {
            (Value::Null, None) => true,
            (Value::Money(c), Some(p)) => {
                p.parse::<Decimal>().ok().map(|d| {
                    let mut d = d;
                    d.rescale(2);
                    d.mantissa()
                }) == Some(*c)
            }
            (Value::Int(n), Some(p)) => p.parse::<i64>().ok() == Some(*n),
            (Value::Double(x), Some(p)) => {
                p.parse::<f64>().ok().map(f64::to_bits) == Some(x.to_bits())
            }
            (Value::Text(s), Some(p)) => s == p,
            _ => false,
        }
    }
}

/// Cents as decimal text: `-1234.05`.
pub fn cents(c: i128) -> String {
    let sign = if c < 0 { "-" } else { "" };
    let a = c.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

/// A mantissa at `scale` as exact decimal text.
pub fn decimal(m: i128, scale: u32) -> String {
    Decimal::try_from_i128_with_scale(m, scale)
        .map_or_else(|_| format!("{m}e-{scale}"), |d| d.normalize().to_string())
}

/// One Kafka message (or, for the rep × day grain, a range of them) behind a figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Input {
    /// `deal`, `quota`, `fx_rate`, `roster`, `activities` or `dead_letter`.
    pub kind: &'static str,
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// For `activities`: the last offset of the range (the first is `offset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_offset: Option<i64>,
    /// The entity's key (`deal_id`; `rep_id period_start`; `currency effective_date`; ...).
    pub key: String,
    pub version: Option<i64>,
    /// How the fold took it (`applied`, `superseded`, `duplicate`, `late`), where kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival: Option<String>,
    /// The fields that mattered, as text.
    pub fields: BTreeMap<String, String>,
    /// What it adds to the figure, where it adds something.
    pub adds: Option<String>,
}

impl Input {
    fn new(kind: &'static str, topic: &str, origin: Option<Origin>, key: String) -> Input {
        Input {
            kind,
            topic: topic.to_string(),
            partition: origin.map(|o| o.partition),
            offset: origin.map(|o| o.offset),
            last_offset: None,
            key,
            version: None,
            arrival: None,
            fields: BTreeMap::new(),
            adds: None,
        }
    }

    /// A message received about an entity, with its version and how the fold took it.
    fn received(kind: &'static str, topic: &str, key: String, r: &crate::state::Received) -> Input {
        let mut i = Input::new(kind, topic, Some(r.origin()), key);
        i.version = Some(r.version);
        i.arrival = Some(r.arrival.as_str().to_string());
        i
    }

    /// Names the fx rate an amount was converted at, if it was not in the corporate currency.
    fn rate_field(self, rate: Option<Rate<'_>>) -> Input {
        match rate.and_then(|r| r.record) {
            Some(r) => {
                let f = &r.latest;
                let at = format!(
                    "{} from {}",
                    f.rate_to_corporate,
                    day_text(f.effective_date)
                );
                self.field("fx_rate", at)
            }
            None => self,
        }
    }

    fn field(mut self, name: &str, value: impl ToString) -> Input {
        self.fields.insert(name.to_string(), value.to_string());
        self
    }
}

/// What one rep of a team, region or company row brings to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contribution {
    pub rep_id: String,
    /// The additive figure the rep brings (`closed_won` to an attainment, ...), and its value.
    pub column: String,
    pub value: Option<String>,
    pub detail: String,
}

/// A figure recomputed from the state: its value, the arithmetic that gave it, its inputs and,
/// above the rep level, the reps' contributions (largest first).
#[derive(Debug, Clone, Default)]
pub struct Traced {
    pub value: Option<Value>,
    pub arithmetic: Vec<String>,
    pub inputs: Vec<Input>,
    pub contributions: Vec<(f64, Contribution)>,
}

/// The figure at one retained snapshot, and the inputs of the row that arrived since the
/// snapshot before.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moment {
    pub snapshot_id: u64,
    pub as_of: Option<String>,
    /// The published value then; `None` when the row did not exist.
    pub value: Option<String>,
    pub row_exists: bool,
    pub arrived: Vec<Input>,
    pub arrived_total: usize,
}

/// `quotaflow explain`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub table: String,
    pub snapshot_id: u64,
    pub as_of: Option<String>,
    /// The row's keys (a JSON object, in the order given).
    #[serde(serialize_with = "as_map")]
    pub keys: Vec<(String, String)>,
    /// The published row, column by column (`None` for NULL; a JSON object in the table's
    /// column order).
    #[serde(serialize_with = "as_map")]
    pub row: Vec<(String, Option<String>)>,
    pub column: String,
    pub published: Option<String>,
    pub computed: Option<String>,
    /// The recomputed figure equals the published one exactly.
    pub reproduced: bool,
    pub arithmetic: Vec<String>,
    pub inputs: Vec<Input>,
    pub inputs_total: usize,
    pub contributions: Vec<Contribution>,
    pub contributions_total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<Moment>>,
}

pub use command::{Args, ExplainFormat};

/// Pairs as a JSON object, in their order.
fn as_map<S: serde::Serializer, V: Serialize>(
    pairs: &[(String, V)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}
pub use render::text;

/// A currency's rates: (effective_date, rate mantissa at `RATE_SCALE`, record), ascending.
type Rates<'s> = Vec<(Day, i128, &'s Versioned<FxRate>)>;

/// What a covered table's tracer works from.
pub(crate) struct Ctx<'s> {
    pub state: &'s State,
    pub metrics: &'s Metrics,
    pub hierarchy: Hierarchy<'s>,
    /// currency → (effective_date, rate mantissa at `RATE_SCALE`, record), ascending.
    fx: HashMap<&'s str, Rates<'s>>,
    pub as_of_date: Option<Day>,
}

/// The rate that converted an amount: its mantissa and, unless the amount was already in the
/// corporate currency, the fx record.
#[derive(Clone, Copy)]
pub(crate) struct Rate<'s> {
    pub mantissa: i128,
    pub record: Option<&'s Versioned<FxRate>>,
}

impl<'s> Ctx<'s> {
    pub fn new(state: &'s State, metrics: &'s Metrics) -> Ctx<'s> {
        let mut fx: HashMap<&str, Rates<'s>> = HashMap::new();
        for v in state.fx.values() {
            let mut r = v.latest.rate_to_corporate;
            r.rescale(RATE_SCALE);
            fx.entry(v.latest.currency.as_str()).or_default().push((
                v.latest.effective_date,
                r.mantissa(),
                v,
            ));
        }
        fx.values_mut().for_each(|v| v.sort_by_key(|(d, _, _)| *d));
        Ctx {
            state,
            metrics,
            hierarchy: Hierarchy::of(state),
            fx,
            as_of_date: state.as_of.map(|t| metrics.calendar.day_of(t)),
        }
    }

    pub fn topic(&self, t: EventType) -> &str {
        self.metrics.topics.get(&t).map_or("", String::as_str)
    }

    /// The rate in force for `currency` on `day` (as `to_corporate` looks it up).
    pub fn rate(&self, currency: &str, day: Day) -> Option<Rate<'s>> {
        if currency == self.metrics.corporate_currency {
            return Some(Rate {
                mantissa: 10i128.pow(RATE_SCALE),
                record: None,
            });
        }
        let v = self.fx.get(currency)?;
        let i = v.partition_point(|(d, _, _)| *d <= day).checked_sub(1)?;
        Some(Rate {
            mantissa: v[i].1,
            record: Some(v[i].2),
        })
    }

    /// `to_corporate(amount, currency, day)`: the amount in cents of the corporate currency,
    /// rounded half-even once, with the rate used; `None` without a rate in force.
    pub fn to_corporate(
        &self,
        amount: Decimal,
        currency: &str,
        day: Day,
    ) -> (Option<i128>, Option<Rate<'s>>) {
        let mut a = amount;
        a.rescale(2);
        let rate = self.rate(currency, day);
        let cents = rate.and_then(|r| {
            a.mantissa()
                .checked_mul(r.mantissa)
                .map(|v| rescale(v, 2 + RATE_SCALE as i8, 2))
        });
        (cents, rate)
    }

    /// The fx record behind a rate, as an input.
    pub fn fx_input(&self, rate: &Rate<'_>) -> Option<Input> {
        let v = rate.record?;
        let f = &v.latest;
        let topic = self.topic(EventType::FxRate);
        let mut i = Input::new(
            "fx_rate",
            topic,
            v.origin_of(v.latest_version),
            format!("{} {}", f.currency, day_text(f.effective_date)),
        )
        .field("rate_to_corporate", f.rate_to_corporate)
        .field("effective_date", day_text(f.effective_date));
        i.version = Some(v.latest_version);
        Some(i)
    }
}

/// A day as `YYYY-MM-DD`.
pub fn day_text(d: Day) -> String {
    crate::calendar::date_of(d).format("%Y-%m-%d").to_string()
}

/// Parses a `--key` date.
fn parse_day(key: &str, v: &str) -> Result<Day, ExplainError> {
    chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map(crate::calendar::day_number)
        .map_err(|_| ExplainError::Key {
            key: key.to_string(),
            message: format!("`{v}` is not a date (YYYY-MM-DD)"),
        })
}

/// The keys of a request, checked against the table's grain.
pub(crate) struct Keys<'r> {
    table: &'r str,
    keys: &'r [(String, String)],
}

impl Keys<'_> {
    pub fn get(&self, name: &str) -> Result<&str, ExplainError> {
        self.keys
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ExplainError::MissingKey {
                table: self.table.to_string(),
                key: name.to_string(),
            })
    }

    pub fn day(&self, name: &str) -> Result<Day, ExplainError> {
        parse_day(name, self.get(name)?)
    }
}

/// The table of `req`, its grain and default column, once the keys are checked against it.
fn check(
    req: &Request,
) -> Result<(&'static str, &'static [&'static str], &'static str), ExplainError> {
    let Some((table, grain, default)) = TABLES.iter().find(|(t, _, _)| *t == req.table) else {
        return Err(ExplainError::Table {
            table: req.table.clone(),
            covered: TABLES.iter().map(|t| t.0).collect::<Vec<_>>().join(", "),
        });
    };
    for (k, v) in &req.keys {
        if matches!(k.as_str(), "period_start" | "day") {
            parse_day(k, v)?;
        }
        if !grain.contains(&k.as_str()) {
            return Err(ExplainError::Key {
                key: k.clone(),
                message: format!("not a key of {table}; its grain is {}", grain.join(", ")),
            });
        }
    }
    let keys = Keys {
        table,
        keys: &req.keys,
    };
    for k in *grain {
        // `commissions` rows are all quarters.
        if !(*table == "commissions" && *k == "period_type") {
            keys.get(k)?;
        }
    }
    Ok((table, grain, default))
}

/// The whole state of the snapshot `checkpoint` names, restored as a pipeline restores it.
pub async fn state_of(location: &Location, checkpoint: &Checkpoint) -> Result<State, Error> {
    let mut state = crate::pipeline::read_state(location, checkpoint).await?;
    state.snapshot_id = checkpoint.snapshot_id;
    Ok(state)
}

/// Explains `req` over the snapshot it names under `location`.
pub async fn explain(
    location: &Location,
    pipeline: &Arc<Pipeline>,
    req: &Request,
) -> Result<Explanation, Error> {
    // Checked before the restore, so that a bad request costs no I/O (`explain_at`, which
    // `serve` calls with a state it holds, checks it again).
    check(req)?;
    let checkpoint = crate::query::checkpoint(location, req.snapshot).await?;
    let state = state_of(location, &checkpoint).await?;
    explain_at(location, pipeline, &checkpoint, &state, req).await
}

/// Explains `req` over snapshot `checkpoint`, whose state is `state` (`state_of`).
pub async fn explain_at(
    location: &Location,
    pipeline: &Arc<Pipeline>,
    checkpoint: &Checkpoint,
    state: &State,
    req: &Request,
) -> Result<Explanation, Error> {
    let (table, _, default) = check(req)?;
    let keys = Keys {
        table,
        keys: &req.keys,
    };
    let column = req.column.clone().unwrap_or_else(|| default.to_string());
    let row = published_row(location, checkpoint, table, &req.keys).await?;
    let Some(row) = row else {
        return Err(ExplainError::NoRow {
            table: table.to_string(),
            snapshot: checkpoint.snapshot_id,
            keys: keys_text(&req.keys),
        }
        .into());
    };
    if !row.iter().any(|(c, _)| *c == column) {
        return Err(ExplainError::Column {
            table: table.to_string(),
            column,
            columns: row
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }
    let ctx = Ctx::new(state, &pipeline.metrics);
    let traced = match table {
        "rep_daily" | "deals_current" | "data_quality" | "leaderboard" => {
            records::trace(&ctx, table, &keys, &column)?
        }
        _ => figures::trace(&ctx, table, &keys, &column)?,
    };
    let published = row
        .iter()
        .find(|(c, _)| *c == column)
        .and_then(|(_, v)| v.clone());
    let value = traced.value.clone().ok_or_else(|| ExplainError::Untraced {
        table: table.to_string(),
        column: column.clone(),
    })?;
    let reproduced = value.equals(published.as_deref());
    let inputs_total = traced.inputs.len();
    let mut inputs = traced.inputs;
    // A rep's row lists every input; a team's, region's or company's, or a count of messages,
    // the first `limit`.
    let above_rep = keys.get("level").is_ok_and(|l| l != "rep");
    if above_rep || table == "data_quality" {
        inputs.truncate(req.limit);
    }
    let mut contributions = traced.contributions;
    contributions.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.rep_id.cmp(&b.1.rep_id))
    });
    let contributions_total = contributions.len();
    let mut explanation = Explanation {
        table: table.to_string(),
        snapshot_id: checkpoint.snapshot_id,
        as_of: checkpoint.as_of.clone(),
        keys: req.keys.clone(),
        row,
        column: column.clone(),
        published,
        computed: value.text(),
        reproduced,
        arithmetic: traced.arithmetic,
        inputs,
        inputs_total,
        contributions: contributions
            .into_iter()
            .take(req.limit)
            .map(|(_, c)| c)
            .collect(),
        contributions_total,
        history: None,
    };
    if req.history {
        explanation.history =
            Some(history::moments(location, &ctx, checkpoint, &explanation, req.limit).await?);
    }
    Ok(explanation)
}

/// `k=v, k=v`.
fn keys_text(keys: &[(String, String)]) -> String {
    keys.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
