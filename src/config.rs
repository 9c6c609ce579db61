//! The pipeline file (`pipelines/*.toml`): parsed with unknown keys refused, then validated in
//! one pure step before any network or storage I/O. Every error names the file, the key and
//! what is wrong. The SQL files a pipeline names are read here too, so a `Pipeline` is
//! complete: nothing later goes back to the file system for configuration.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::calendar::Calendar;
use crate::event::Stage;
use crate::source::decode::DecodeLimits;
use crate::source::schema::EventType;

/// The default pipeline and its SQL, compiled in so that `quotaflow demo` needs no files.
const BUILTIN_PIPELINE: &str = include_str!("../pipelines/default.toml");
const BUILTIN_SQL: &[(&str, &str)] = &[
    ("reps.sql", include_str!("../sql/reps.sql")),
    ("rep_levels.sql", include_str!("../sql/rep_levels.sql")),
    ("rep_daily.sql", include_str!("../sql/rep_daily.sql")),
    (
        "deals_current.sql",
        include_str!("../sql/deals_current.sql"),
    ),
    ("rep_periods.sql", include_str!("../sql/rep_periods.sql")),
    ("quota_parts.sql", include_str!("../sql/quota_parts.sql")),
    ("quota_totals.sql", include_str!("../sql/quota_totals.sql")),
    (
        "deals_by_period.sql",
        include_str!("../sql/deals_by_period.sql"),
    ),
    ("attainment.sql", include_str!("../sql/attainment.sql")),
    ("forecast.sql", include_str!("../sql/forecast.sql")),
    ("win_rates.sql", include_str!("../sql/win_rates.sql")),
    (
        "activity_kpis.sql",
        include_str!("../sql/activity_kpis.sql"),
    ),
    (
        "survey_responses.sql",
        include_str!("../sql/survey_responses.sql"),
    ),
    ("survey_nps.sql", include_str!("../sql/survey_nps.sql")),
    ("performance.sql", include_str!("../sql/performance.sql")),
    ("leaderboard.sql", include_str!("../sql/leaderboard.sql")),
    (
        "stage_conversion.sql",
        include_str!("../sql/stage_conversion.sql"),
    ),
    ("commissions.sql", include_str!("../sql/commissions.sql")),
    ("trends.sql", include_str!("../sql/trends.sql")),
    (
        "pacing_behind.sql",
        include_str!("../sql/alerts/pacing_behind.sql"),
    ),
    (
        "team_commit_short.sql",
        include_str!("../sql/alerts/team_commit_short.sql"),
    ),
    (
        "rep_inactive.sql",
        include_str!("../sql/alerts/rep_inactive.sql"),
    ),
    (
        "stalled_deal.sql",
        include_str!("../sql/alerts/stalled_deal.sql"),
    ),
    (
        "detractor_spike.sql",
        include_str!("../sql/alerts/detractor_spike.sql"),
    ),
    ("data_quality.sql", include_str!("../sql/data_quality.sql")),
    ("dead_letters.sql", include_str!("../sql/dead_letters.sql")),
];
const DEFAULT_PIPELINE_PATH: &str = "pipelines/default.toml";

/// A pipeline-file problem a user can fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: String,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    calendar: RawCalendar,
    #[serde(default)]
    snapshot: RawSnapshot,
    #[serde(default)]
    stages: BTreeMap<String, RawStage>,
    #[serde(default)]
    leaderboard: LeaderboardWeights,
    #[serde(default)]
    commissions: RawCommissions,
    #[serde(default)]
    tables: Vec<RawTable>,
    #[serde(default)]
    alerts: Vec<RawAlert>,
    #[serde(default)]
    alert_delivery: RawDelivery,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    bind: String,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            bind: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    kafka_topic: String,
    retry_initial: String,
    retry_max: String,
    drain_timeout: String,
    webhooks: Vec<RawWebhook>,
}

impl Default for RawDelivery {
    fn default() -> Self {
        RawDelivery {
            kafka_topic: "spm.alerts".into(),
            retry_initial: "1s".into(),
            retry_max: "5m".into(),
            drain_timeout: "10s".into(),
            webhooks: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: String,
    url: String,
    #[serde(default = "webhook_timeout")]
    timeout: String,
}

fn webhook_timeout() -> String {
    "5s".into()
}

/// Where alert transitions go (`[alert_delivery]`); each rule picks targets by name.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertDelivery {
    /// The topic of the `kafka` target.
    pub kafka_topic: String,
    /// First wait after a failed delivery; it doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// How long a run that stops waits for pending deliveries (the rest go at the next start).
    pub drain_timeout: Duration,
    pub webhooks: Vec<Webhook>,
}

/// An HTTP endpoint receiving alert events as JSON POSTs.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub name: String,
    pub url: url::Url,
    pub timeout: Duration,
}

/// Targets every pipeline knows besides its webhooks.
pub const BUILTIN_TARGETS: &[&str] = &["log", "kafka"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlert {
    name: String,
    severity: String,
    description: String,
    sql: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default = "default_targets")]
    deliver: Vec<String>,
}

fn default_targets() -> Vec<String> {
    vec!["log".into(), "kafka".into()]
}

/// An alert rule: a query over the snapshot's tables returning the rows that breach it, with
/// columns `key` (what the alert is about), `value` (DOUBLE) and `message`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub name: String,
    pub severity: String,
    pub description: String,
    /// Where the SQL came from, for error messages.
    pub origin: String,
    /// The SQL with its `${param}` placeholders filled in.
    pub sql: String,
    /// Names of the targets its transitions go to: `log`, `kafka` or a webhook's name.
    pub deliver: Vec<String>,
}

const SEVERITIES: &[&str] = &["info", "warning", "critical"];

/// Gamification points per counted thing (METRICS.md `leaderboard`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderboardWeights {
    pub calls: f64,
    pub emails: f64,
    pub meetings_held: f64,
    /// On top of the `meetings_held` points a held demo already earns.
    pub demos_held: f64,
    pub webinars: f64,
    pub tasks: f64,
    pub won_deals: f64,
    /// Points per 1,000 of won amount (corporate currency).
    pub per_1000_won: f64,
}

impl Default for LeaderboardWeights {
    fn default() -> Self {
        LeaderboardWeights {
            calls: 1.0,
            emails: 0.5,
            meetings_held: 5.0,
            demos_held: 8.0,
            webinars: 3.0,
            tasks: 0.0,
            won_deals: 50.0,
            per_1000_won: 1.0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCommissions {
    plan: String,
    cap: Option<String>,
    tiers: Vec<RawTier>,
}

impl Default for RawCommissions {
    fn default() -> Self {
        let tier = |from: &str, rate: &str| RawTier {
            from: from.into(),
            rate: rate.into(),
        };
        RawCommissions {
            plan: "default".into(),
            cap: None,
            tiers: vec![
                tier("0", "0"),
                tier("0.50", "0.08"),
                tier("1.00", "0.12"),
                tier("1.25", "0.15"),
            ],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    from: String,
    rate: String,
}

/// A commission plan: marginal tiers on attainment, each slice of closed-won paying its rate.
#[derive(Debug, Clone, PartialEq)]
pub struct CommissionPlan {
    pub name: String,
    /// (attainment fraction where the tier starts, rate), ascending, the first from 0.
    pub tiers: Vec<(rust_decimal::Decimal, rust_decimal::Decimal)>,
    /// Highest payout per rep and quarter, if any.
    pub cap: Option<rust_decimal::Decimal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSource {
    brokers: Option<String>,
    max_message_bytes: usize,
    max_clock_skew: String,
    dedup_horizon: String,
    allowed_lateness: String,
    idle_timeout: String,
    dead_letter_topic: String,
    dead_letter_rows: usize,
    topics: BTreeMap<String, String>,
    kafka: BTreeMap<String, String>,
}

impl Default for RawSource {
    fn default() -> Self {
        RawSource {
            brokers: None,
            max_message_bytes: 1 << 20,
            max_clock_skew: "1d".into(),
            dedup_horizon: "30d".into(),
            allowed_lateness: "120d".into(),
            idle_timeout: "10s".into(),
            dead_letter_topic: "spm.dead_letters".into(),
            dead_letter_rows: 10_000,
            topics: BTreeMap::new(),
            kafka: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCalendar {
    timezone: String,
    fiscal_year_start_month: i64,
    corporate_currency: String,
}

impl Default for RawCalendar {
    fn default() -> Self {
        RawCalendar {
            timezone: "UTC".into(),
            fiscal_year_start_month: 1,
            corporate_currency: "USD".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSnapshot {
    output: Option<String>,
    trigger_interval: String,
    trigger_events: u64,
    retention: usize,
}

impl Default for RawSnapshot {
    fn default() -> Self {
        RawSnapshot {
            output: None,
            trigger_interval: "5s".into(),
            trigger_events: 0,
            retention: 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    probability: f64,
    forecast_category: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    sql: String,
    #[serde(default = "yes")]
    publish: bool,
}

fn yes() -> bool {
    true
}

/// Default probability and forecast category of a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRule {
    pub stage: Stage,
    pub probability: f64,
    pub forecast_category: String,
}

/// One SQL file of the pipeline: a metric table (published in every snapshot) or a helper view.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: String,
    /// Where the SQL came from, for error messages.
    pub origin: String,
    pub sql: String,
    pub publish: bool,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The pipeline file (or `<built-in default>`).
    pub file: String,
    pub brokers: Option<String>,
    pub output: Option<String>,
    /// Topic of each event type.
    pub topics: BTreeMap<EventType, String>,
    pub dead_letter_topic: String,
    pub dead_letter_rows: usize,
    pub limits: DecodeLimits,
    pub dedup_horizon: Duration,
    /// Events older than the watermark minus this are `late`.
    pub allowed_lateness: Duration,
    /// A partition at its end for this long stops holding the watermark back.
    pub idle_timeout: Duration,
    pub kafka: BTreeMap<String, String>,
    pub calendar: Calendar,
    pub corporate_currency: String,
    pub trigger_interval: Duration,
    /// Snapshot after this many events as well as on the interval (0 = off).
    pub trigger_events: u64,
    pub retention: usize,
    pub stages: Vec<StageRule>,
    pub leaderboard: LeaderboardWeights,
    pub commissions: CommissionPlan,
    pub tables: Vec<TableSpec>,
    pub alerts: Vec<AlertRule>,
    pub alert_delivery: AlertDelivery,
    /// Where `/healthz` and `/metrics` are served (`http.bind`); `None` when "off".
    pub http_bind: Option<std::net::SocketAddr>,
}

/// Names of tables the engine provides from state; pipeline tables may not reuse them.
pub const STATE_TABLES: &[&str] = &[
    "activity_days",
    "deals",
    "quotas",
    "roster",
    "fx_rates",
    "surveys",
    "quality_counts",
    "dead_letter_log",
    "clock",
    "calendar",
    "stages",
    "topics",
    "period_types",
    "rep_first_deal",
    "weeks",
    "leaderboard_weights",
    "commission_plan",
    "alerts",
    "alert_deliveries",
];

impl Pipeline {
    /// Loads `path`, or `pipelines/default.toml` if it exists, or the built-in default.
    pub fn load(path: Option<&Path>) -> Result<Pipeline, ConfigError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_PIPELINE_PATH)).filter(|p| p.exists()),
        };
        match path {
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
                let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                Pipeline::parse(&text, &file, &|rel: &str| {
                    let sql_path = dir.join(rel);
                    std::fs::read_to_string(&sql_path)
                        .map_err(|e| format!("cannot read {}: {e}", sql_path.display()))
                })
            }
            None => Pipeline::builtin(),
        }
    }

    /// The compiled-in default pipeline (identical to `pipelines/default.toml`).
    pub fn builtin() -> Result<Pipeline, ConfigError> {
        Pipeline::parse(
            BUILTIN_PIPELINE,
            "<built-in pipelines/default.toml>",
            &|rel: &str| {
                let name = Path::new(rel)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or(rel);
                BUILTIN_SQL
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, text)| text.to_string())
                    .ok_or_else(|| format!("no built-in SQL file named {name}"))
            },
        )
    }

    /// Parses and validates pipeline text; `read_sql` resolves a table's `sql` path.
    pub fn parse(
        text: &str,
        file: &str,
        read_sql: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Pipeline, ConfigError> {
        let raw: RawPipeline = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            message,
        };

        if !is_identifier(&raw.name) {
            return Err(invalid(
                "name",
                format!(
                    "`{}` must be lower-case letters, digits, '_' or '-'",
                    raw.name
                ),
            ));
        }
        let s = &raw.source;
        if s.max_message_bytes == 0 {
            return Err(invalid(
                "source.max_message_bytes",
                "must be at least 1".into(),
            ));
        }
        let max_clock_skew =
            parse_duration(&s.max_clock_skew).map_err(|m| invalid("source.max_clock_skew", m))?;
        let dedup_horizon =
            parse_duration(&s.dedup_horizon).map_err(|m| invalid("source.dedup_horizon", m))?;
        let allowed_lateness = parse_duration(&s.allowed_lateness)
            .map_err(|m| invalid("source.allowed_lateness", m))?;
        let idle_timeout =
            parse_duration(&s.idle_timeout).map_err(|m| invalid("source.idle_timeout", m))?;
        let mut topics = BTreeMap::new();
        for (key, topic) in &s.topics {
            let t = EventType::ALL
                .into_iter()
                .find(|t| t.name() == key)
                .ok_or_else(|| {
                    invalid(
                        &format!("source.topics.{key}"),
                        "not an event type (activity, deal, quota, rep, survey, fx_rate)".into(),
                    )
                })?;
            if !is_topic(topic) {
                return Err(invalid(
                    &format!("source.topics.{key}"),
                    format!("`{topic}` is not a valid Kafka topic name"),
                ));
            }
            topics.insert(t, topic.clone());
        }
        for t in EventType::ALL {
            if let std::collections::btree_map::Entry::Vacant(slot) = topics.entry(t) {
                let default = crate::source::schema::Schema::builtin(t)
                    .map_err(|e| invalid("source.topics", e.to_string()))?;
                slot.insert(default.default_topic);
            }
        }
        let mut seen: Vec<&String> = topics.values().collect();
        seen.sort();
        seen.dedup();
        if seen.len() != topics.len() {
            return Err(invalid(
                "source.topics",
                "two event types share a topic".into(),
            ));
        }
        if !is_topic(&s.dead_letter_topic) || topics.values().any(|t| *t == s.dead_letter_topic) {
            return Err(invalid(
                "source.dead_letter_topic",
                format!(
                    "`{}` must be a valid topic distinct from the input topics",
                    s.dead_letter_topic
                ),
            ));
        }
        for key in s.kafka.keys() {
            if matches!(
                key.as_str(),
                "bootstrap.servers"
                    | "group.id"
                    | "enable.auto.commit"
                    | "enable.auto.offset.store"
            ) {
                return Err(invalid(
                    &format!("source.kafka.\"{key}\""),
                    "is set by quotaflow itself (use --brokers for bootstrap.servers)".into(),
                ));
            }
        }

        let c = &raw.calendar;
        let timezone: chrono_tz::Tz = c.timezone.parse().map_err(|_| {
            invalid(
                "calendar.timezone",
                format!(
                    "`{}` is not an IANA time zone such as `Europe/Berlin`",
                    c.timezone
                ),
            )
        })?;
        if !(1..=12).contains(&c.fiscal_year_start_month) {
            return Err(invalid(
                "calendar.fiscal_year_start_month",
                format!("{} is not a month 1..12", c.fiscal_year_start_month),
            ));
        }
        if c.corporate_currency.len() != 3
            || !c.corporate_currency.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(invalid(
                "calendar.corporate_currency",
                format!("`{}` is not three upper-case letters", c.corporate_currency),
            ));
        }

        let sn = &raw.snapshot;
        let trigger_interval = parse_duration(&sn.trigger_interval)
            .map_err(|m| invalid("snapshot.trigger_interval", m))?;
        if trigger_interval.is_zero() {
            return Err(invalid(
                "snapshot.trigger_interval",
                "must be longer than 0".into(),
            ));
        }
        if sn.retention == 0 {
            return Err(invalid(
                "snapshot.retention",
                "must keep at least 1 snapshot".into(),
            ));
        }

        let mut stages = default_stages();
        for (key, rule) in &raw.stages {
            let stage = Stage::parse(key).ok_or_else(|| {
                invalid(&format!("stages.{key}"), "not a stage of EVENTS.md".into())
            })?;
            if !(0.0..=1.0).contains(&rule.probability) {
                return Err(invalid(
                    &format!("stages.{key}.probability"),
                    format!("{} is outside 0..1", rule.probability),
                ));
            }
            if !FORECAST_CATEGORIES.contains(&rule.forecast_category.as_str()) {
                return Err(invalid(
                    &format!("stages.{key}.forecast_category"),
                    format!(
                        "`{}` is not one of {}",
                        rule.forecast_category,
                        FORECAST_CATEGORIES.join(", ")
                    ),
                ));
            }
            if let Some(s) = stages.iter_mut().find(|s| s.stage == stage) {
                s.probability = rule.probability;
                s.forecast_category = rule.forecast_category.clone();
            }
        }

        let lb = &raw.leaderboard;
        let weights = [
            lb.calls,
            lb.emails,
            lb.meetings_held,
            lb.demos_held,
            lb.webinars,
            lb.tasks,
            lb.won_deals,
            lb.per_1000_won,
        ];
        if weights.iter().any(|w| !w.is_finite()) {
            return Err(invalid(
                "leaderboard",
                "weights must be finite numbers".into(),
            ));
        }
        let commissions = commission_plan(&raw.commissions).map_err(|(key, m)| invalid(&key, m))?;

        if raw.tables.is_empty() {
            return Err(invalid(
                "tables",
                "names no SQL file: a pipeline needs at least one table".into(),
            ));
        }
        let mut tables: Vec<TableSpec> = Vec::new();
        for (i, t) in raw.tables.iter().enumerate() {
            let key = format!("tables[{i}]");
            if !is_identifier(&t.name) || t.name.contains('-') {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("`{}` must be lower-case letters, digits and '_'", t.name),
                ));
            }
            if STATE_TABLES.contains(&t.name.as_str()) || tables.iter().any(|o| o.name == t.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("`{}` is already a table name", t.name),
                ));
            }
            let sql = read_sql(&t.sql).map_err(|m| invalid(&format!("{key}.sql"), m))?;
            tables.push(TableSpec {
                name: t.name.clone(),
                origin: t.sql.clone(),
                sql,
                publish: t.publish,
            });
        }

        let alert_delivery =
            alert_delivery(&raw.alert_delivery).map_err(|(k, m)| invalid(&k, m))?;
        let http_bind = match raw.http.bind.as_str() {
            "off" => None,
            b => Some(b.parse::<std::net::SocketAddr>().map_err(|_| {
                invalid(
                    "http.bind",
                    format!("`{b}` is not an address such as 127.0.0.1:9464 (or \"off\")"),
                )
            })?),
        };
        let mut alerts: Vec<AlertRule> = Vec::new();
        for (i, a) in raw.alerts.iter().enumerate() {
            let key = format!("alerts[{i}]");
            if !is_identifier(&a.name) || alerts.iter().any(|o| o.name == a.name) {
                return Err(invalid(
                    &format!("{key}.name"),
                    format!("`{}` must be a unique lower-case name", a.name),
                ));
            }
            if !SEVERITIES.contains(&a.severity.as_str()) {
                return Err(invalid(
                    &format!("{key}.severity"),
                    format!("`{}` is not one of {}", a.severity, SEVERITIES.join(", ")),
                ));
            }
            let mut sql = read_sql(&a.sql).map_err(|m| invalid(&format!("{key}.sql"), m))?;
            for (name, value) in &a.params {
                // Parameters are thresholds: numbers, so nothing can be injected into the SQL.
                if value.parse::<f64>().is_err() {
                    return Err(invalid(
                        &format!("{key}.params.{name}"),
                        format!("`{value}` is not a number"),
                    ));
                }
                sql = sql.replace(&format!("${{{name}}}"), value);
            }
            if let Some(at) = sql.find("${") {
                let rest: String = sql[at..].chars().take_while(|c| *c != '}').collect();
                return Err(invalid(
                    &format!("{key}.params"),
                    format!("the SQL uses {rest}}} but params do not set it"),
                ));
            }
            for (j, target) in a.deliver.iter().enumerate() {
                let known = BUILTIN_TARGETS.contains(&target.as_str())
                    || alert_delivery.webhooks.iter().any(|w| &w.name == target);
                if !known || a.deliver[..j].contains(target) {
                    return Err(invalid(
                        &format!("{key}.deliver[{j}]"),
                        format!(
                            "`{target}` is not `log`, `kafka` or the name of an [[alert_delivery.webhooks]] entry, or is named twice"
                        ),
                    ));
                }
            }
            alerts.push(AlertRule {
                name: a.name.clone(),
                severity: a.severity.clone(),
                description: a.description.clone(),
                origin: a.sql.clone(),
                sql,
                deliver: a.deliver.clone(),
            });
        }

        Ok(Pipeline {
            name: raw.name,
            file: file.to_string(),
            brokers: s.brokers.clone(),
            output: sn.output.clone(),
            topics,
            dead_letter_topic: s.dead_letter_topic.clone(),
            dead_letter_rows: s.dead_letter_rows,
            limits: DecodeLimits {
                max_message_bytes: s.max_message_bytes,
                max_clock_skew_micros: i64::try_from(max_clock_skew.as_micros())
                    .unwrap_or(i64::MAX),
            },
            dedup_horizon,
            allowed_lateness,
            idle_timeout,
            kafka: s.kafka.clone(),
            calendar: Calendar {
                fiscal_year_start_month: c.fiscal_year_start_month as u32,
                timezone,
            },
            corporate_currency: c.corporate_currency.clone(),
            trigger_interval,
            trigger_events: sn.trigger_events,
            retention: sn.retention,
            stages,
            leaderboard: raw.leaderboard.clone(),
            commissions,
            tables,
            alerts,
            alert_delivery,
            http_bind,
        })
    }

    /// The dedup horizon in microseconds of event time, as `State::fold` and `prune` take it.
    pub fn dedup_horizon_micros(&self) -> i64 {
        i64::try_from(self.dedup_horizon.as_micros()).unwrap_or(i64::MAX)
    }

    /// The allowed lateness in microseconds of event time.
    pub fn allowed_lateness_micros(&self) -> i64 {
        i64::try_from(self.allowed_lateness.as_micros()).unwrap_or(i64::MAX)
    }

    /// The event type read from `topic`, if it is one of the pipeline's.
    pub fn event_type_of(&self, topic: &str) -> Option<EventType> {
        self.topics
            .iter()
            .find(|(_, t)| t.as_str() == topic)
            .map(|(e, _)| *e)
    }
}

fn alert_delivery(raw: &RawDelivery) -> Result<AlertDelivery, (String, String)> {
    let key = |k: &str| format!("alert_delivery.{k}");
    let duration = |k: &str, v: &str| parse_duration(v).map_err(|m| (key(k), m));
    if !is_topic(&raw.kafka_topic) {
        return Err((
            key("kafka_topic"),
            format!("`{}` is not a valid topic name", raw.kafka_topic),
        ));
    }
    let retry_initial = duration("retry_initial", &raw.retry_initial)?;
    let retry_max = duration("retry_max", &raw.retry_max)?;
    if retry_initial.is_zero() || retry_max < retry_initial {
        return Err((
            key("retry_max"),
            "retry_initial must be above zero and retry_max at least retry_initial".into(),
        ));
    }
    let mut webhooks: Vec<Webhook> = Vec::new();
    for (i, w) in raw.webhooks.iter().enumerate() {
        let k = |f: &str| key(&format!("webhooks[{i}].{f}"));
        if !is_identifier(&w.name)
            || BUILTIN_TARGETS.contains(&w.name.as_str())
            || webhooks.iter().any(|o| o.name == w.name)
        {
            return Err((
                k("name"),
                format!(
                    "`{}` must be a unique lower-case name other than log and kafka",
                    w.name
                ),
            ));
        }
        let url = url::Url::parse(&w.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                (
                    k("url"),
                    format!("`{}` is not an http:// or https:// URL", w.url),
                )
            })?;
        let timeout = parse_duration(&w.timeout).map_err(|m| (k("timeout"), m))?;
        if timeout.is_zero() {
            return Err((k("timeout"), "must be above zero".into()));
        }
        webhooks.push(Webhook {
            name: w.name.clone(),
            url,
            timeout,
        });
    }
    Ok(AlertDelivery {
        kafka_topic: raw.kafka_topic.clone(),
        retry_initial,
        retry_max,
        drain_timeout: duration("drain_timeout", &raw.drain_timeout)?,
        webhooks,
    })
}

fn commission_plan(raw: &RawCommissions) -> Result<CommissionPlan, (String, String)> {
    use rust_decimal::Decimal;
    let dec = |key: String, v: &str| -> Result<Decimal, (String, String)> {
        match v.parse::<Decimal>() {
            Ok(d) if d >= Decimal::ZERO => Ok(d),
            Ok(_) => Err((key, format!("`{v}` is negative"))),
            Err(_) => Err((
                key,
                format!("`{v}` is not a decimal string such as \"0.08\""),
            )),
        }
    };
    if !is_identifier(&raw.plan) {
        return Err((
            "commissions.plan".into(),
            format!(
                "`{}` must be lower-case letters, digits, '_' or '-'",
                raw.plan
            ),
        ));
    }
    let mut tiers = Vec::with_capacity(raw.tiers.len());
    for (i, t) in raw.tiers.iter().enumerate() {
        let from = dec(format!("commissions.tiers[{i}].from"), &t.from)?;
        let rate = dec(format!("commissions.tiers[{i}].rate"), &t.rate)?;
        if let Some((prev, _)) = tiers.last() {
            if from <= *prev {
                return Err((
                    format!("commissions.tiers[{i}].from"),
                    format!("{from} does not rise above the tier before ({prev})"),
                ));
            }
        } else if !from.is_zero() {
            return Err((
                format!("commissions.tiers[{i}].from"),
                "the first tier must start at 0".into(),
            ));
        }
        tiers.push((from, rate));
    }
    if tiers.is_empty() {
        return Err((
            "commissions.tiers".into(),
            "a plan needs at least one tier".into(),
        ));
    }
    let cap = raw
        .cap
        .as_deref()
        .map(|c| dec("commissions.cap".into(), c))
        .transpose()?;
    Ok(CommissionPlan {
        name: raw.plan.clone(),
        tiers,
        cap,
    })
}

const FORECAST_CATEGORIES: &[&str] = &["pipeline", "best_case", "commit", "closed", "omitted"];

/// The stage table of EVENTS.md.
pub fn default_stages() -> Vec<StageRule> {
    let rule = |stage, probability, cat: &str| StageRule {
        stage,
        probability,
        forecast_category: cat.to_string(),
    };
    vec![
        rule(Stage::Prospecting, 0.10, "pipeline"),
        rule(Stage::Qualification, 0.25, "pipeline"),
        rule(Stage::Proposal, 0.50, "best_case"),
        rule(Stage::Negotiation, 0.75, "commit"),
        rule(Stage::ClosedWon, 1.00, "closed"),
        rule(Stage::ClosedLost, 0.00, "omitted"),
    ]
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !s.starts_with('-')
}

fn is_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses `250ms`, `5s`, `10m`, `1h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 250ms, 5s, 10m, 1h or 30d"))?;
    let secs = |k: u64| Duration::from_secs(n.saturating_mul(k));
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "d" => Ok(secs(86_400)),
        _ => Err(format!(
            "`{s}` has no unit: write 250ms, 5s, 10m, 1h or 30d"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pipeline_is_valid() {
        let p = Pipeline::builtin().unwrap();
        assert_eq!(p.topics[&EventType::Deal], "spm.deals");
        assert_eq!(p.trigger_interval, Duration::from_secs(5));
        assert_eq!(p.retention, 20);
    }

    #[test]
    fn errors_name_file_and_key() {
        let text = BUILTIN_PIPELINE.replace(
            "fiscal_year_start_month = 1",
            "fiscal_year_start_month = 13",
        );
        let err = Pipeline::parse(&text, "p.toml", &|_| Ok("SELECT 1".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml: key `calendar.fiscal_year_start_month`"),
            "{err}"
        );
        let text = format!("{BUILTIN_PIPELINE}\n[snapshot.extra]\nx = 1\n");
        let err = Pipeline::parse(&text, "p.toml", &|_| Ok("SELECT 1".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.toml") && err.contains("unknown field"),
            "{err}"
        );
    }

    #[test]
    fn commission_and_leaderboard_settings_are_checked() {
        let sql = |_: &str| Ok("SELECT 1".to_string());
        let bad = BUILTIN_PIPELINE.replace(
            r#"{ from = "1.00", rate = "0.12" }"#,
            r#"{ from = "0.40", rate = "0.12" }"#,
        );
        let err = Pipeline::parse(&bad, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("commissions.tiers[2].from") && err.contains("does not rise"),
            "{err}"
        );
        let bad = BUILTIN_PIPELINE.replace(
            r#"{ from = "0.50", rate = "0.08" }"#,
            r#"{ from = "0.50", rate = "8%" }"#,
        );
        let err = Pipeline::parse(&bad, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(err.contains("commissions.tiers[1].rate"), "{err}");
        let bad = BUILTIN_PIPELINE.replace("# cap = \"50000.00\"", "cap = \"-1\"");
        let err = Pipeline::parse(&bad, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("commissions.cap") && err.contains("negative"),
            "{err}"
        );
        let bad = BUILTIN_PIPELINE.replace("calls = 1.0", "calls = \"many\"");
        let err = Pipeline::parse(&bad, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml") && err.contains("calls"), "{err}");
        let capped = BUILTIN_PIPELINE.replace("# cap = \"50000.00\"", "cap = \"50000.00\"");
        assert_eq!(
            Pipeline::parse(&capped, "p.toml", &sql)
                .unwrap()
                .commissions
                .cap,
            Some("50000.00".parse().unwrap())
        );
    }

    #[test]
    fn alert_rules_are_checked() {
        let plain = |_: &str| Ok("SELECT 'k' AS key, 1 AS value, 'm' AS message".to_string());
        let sql = |_: &str| Ok("SELECT 'k' AS key, ${x} AS value, 'm' AS message".to_string());
        let bad = BUILTIN_PIPELINE.replace(
            r#"params = { days = "5" }"#,
            r#"params = { days = "5; DROP TABLE x" }"#,
        );
        let err = Pipeline::parse(&bad, "p.toml", &plain)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alerts[2].params.days") && err.contains("not a number"),
            "{err}"
        );
        let err = Pipeline::parse(BUILTIN_PIPELINE, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alerts[0].params") && err.contains("${x}"),
            "{err}"
        );
        let bad = BUILTIN_PIPELINE.replace(r#"severity = "info""#, r#"severity = "meh""#);
        let err = Pipeline::parse(&bad, "p.toml", &|_| Ok("SELECT 1".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("alerts[3].severity"), "{err}");
    }

    #[test]
    fn alert_delivery_is_checked() {
        let sql = |_: &str| Ok("SELECT 1".to_string());
        let with = |hook: &str, deliver: &str| {
            let text = BUILTIN_PIPELINE
                .replace(
                    r#"params = { days = "5" }"#,
                    &format!("params = {{ days = \"5\" }}\ndeliver = {deliver}"),
                )
                .replace(r#"retry_initial = "1s""#, r#"retry_initial = "100ms""#)
                .replace(
                    r#"drain_timeout = "10s""#,
                    &format!("drain_timeout = \"10s\"\n{hook}"),
                );
            Pipeline::parse(&text, "p.toml", &sql).map_err(|e| e.to_string())
        };
        let hook =
            "[[alert_delivery.webhooks]]\nname = \"managers\"\nurl = \"http://127.0.0.1:9/hook\"";
        let p = with(hook, r#"["log", "managers"]"#).unwrap();
        assert_eq!(p.alerts[2].deliver, ["log", "managers"]);
        assert_eq!(p.alerts[0].deliver, ["log", "kafka"]);
        assert_eq!(p.alert_delivery.webhooks[0].timeout, Duration::from_secs(5));
        assert_eq!(p.alert_delivery.retry_initial, Duration::from_millis(100));
        let err = with(hook, r#"["log", "slack"]"#).unwrap_err();
        assert!(
            err.contains("p.toml")
                && err.contains("alerts[2].deliver[1]")
                && err.contains("`slack`"),
            "{err}"
        );
        let err = with(&hook.replace("http://127.0.0.1:9/hook", "ftp://x/"), "[]").unwrap_err();
        assert!(err.contains("alert_delivery.webhooks[0].url"), "{err}");
        let err = with(&hook.replace("\"managers\"", "\"kafka\""), "[]").unwrap_err();
        assert!(err.contains("alert_delivery.webhooks[0].name"), "{err}");
    }

    #[test]
    fn names_that_become_paths_cannot_leave_the_output() {
        let sql = |_: &str| Ok("SELECT 1 AS x".to_string());
        for (from, to, key) in [
            ("name = \"default\"", "name = \"../../etc\"", "name"),
            ("name = \"default\"", "name = \"a/b\"", "name"),
            (
                "name = \"rep_daily\"",
                "name = \"../rep_daily\"",
                "tables[2].name",
            ),
            ("name = \"rep_daily\"", "name = \"x/y\"", "tables[2].name"),
            ("name = \"rep_daily\"", "name = \"..\"", "tables[2].name"),
        ] {
            let text = BUILTIN_PIPELINE.replacen(from, to, 1);
            let err = Pipeline::parse(&text, "p.toml", &sql)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("key `{key}`")), "{to}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("five s").is_err());
    }
}
