//! The pipeline file (`pipelines/*.toml`): parsed with unknown keys refused (`raw`), then
//! validated in one pure step before any network or storage I/O (`validate`, one function per
//! section). Every error names the file, the key and what is wrong. The SQL files a pipeline
//! names are read here too, so a `Pipeline` is complete: nothing later goes back to the file
//! system for configuration. Each stage takes its own section: the source [`Source`], the
//! engine [`Metrics`], the run loop [`Snapshot`], alert delivery [`AlertDelivery`].

pub mod builtin;
mod raw;
mod serve;
mod validate;

pub use serve::Serve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::calendar::Calendar;
use crate::event::schema::EventType;
use crate::event::Stage;

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

/// Limits the decoder applies; from the pipeline file.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_message_bytes: usize,
    /// An instant later than `now + max_clock_skew` is `out_of_range`.
    pub max_clock_skew_micros: i64,
}

/// A validated pipeline: its name and file, and one section per stage.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The pipeline file (or `<built-in default>`).
    pub file: String,
    pub source: Source,
    /// What the engine evaluates (shared with every snapshot's background job).
    pub metrics: Arc<Metrics>,
    pub snapshot: Snapshot,
    pub alert_delivery: AlertDelivery,
    /// Where `/healthz` and `/metrics` are served (`http.bind`); `None` when "off".
    pub http_bind: Option<std::net::SocketAddr>,
    /// `quotaflow serve`'s defaults (`[serve]`).
    pub serve: Serve,
}

/// `[source]`: what is read, how it is decoded, what counts as a repeat or late.
#[derive(Debug, Clone)]
pub struct Source {
    pub brokers: Option<String>,
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
    /// A partition whose events run this far (event time) past the slowest partition still
    /// reading is paused until it catches up (`watermark::Alignment`); zero turns that off.
    pub max_read_ahead: Duration,
    /// librdkafka client properties (TLS, SASL, fetch sizes).
    pub kafka: BTreeMap<String, String>,
}

impl Source {
    /// The dedup horizon in microseconds of event time, as `State::fold` and `prune` take it.
    pub fn dedup_horizon_micros(&self) -> i64 {
        micros(self.dedup_horizon)
    }

    /// The allowed lateness in microseconds of event time.
    pub fn allowed_lateness_micros(&self) -> i64 {
        micros(self.allowed_lateness)
    }

    /// The read-ahead bound in microseconds of event time.
    pub fn max_read_ahead_micros(&self) -> i64 {
        micros(self.max_read_ahead)
    }

    /// The event type read from `topic`, if it is one of the pipeline's.
    pub fn event_type_of(&self, topic: &str) -> Option<EventType> {
        self.topics
            .iter()
            .find(|(_, t)| t.as_str() == topic)
            .map(|(e, _)| *e)
    }
}

/// `[calendar]`, `[stages]`, `[leaderboard]`, `[commissions]`, `[[tables]]`, `[[alerts]]`:
/// everything the metric SQL and the alert rules see.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub calendar: Calendar,
    pub corporate_currency: String,
    /// Topic of each event type (the `topics` table; the same map as `Source::topics`).
    pub topics: BTreeMap<EventType, String>,
    pub stages: Vec<StageRule>,
    pub leaderboard: LeaderboardWeights,
    pub commissions: CommissionPlan,
    pub tables: Vec<TableSpec>,
    pub alerts: Vec<AlertRule>,
}

/// `[snapshot]`: where snapshots go and when they are taken.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub output: Option<String>,
    pub trigger_interval: Duration,
    /// The interval of `--once` runs instead: a replay needs no fresh intermediate snapshots,
    /// only a bound on the reading a crash loses.
    pub once_trigger_interval: Duration,
    /// Snapshot after this many events as well as on the interval (0 = off).
    pub trigger_events: u64,
    /// While a snapshot is being written, read at most this many messages for the next one,
    /// then wait for the write (0 = no bound): what the next cut takes in, and the memory it
    /// holds, stay bounded when writing is slower than reading.
    pub max_events_while_writing: u64,
    /// The last this many snapshots stay readable...
    pub retention: usize,
    /// ... and the last one of each of this many days.
    pub retention_days: usize,
    /// A Delta log checkpoint every this many commits of a table.
    pub log_checkpoint_interval: u32,
    /// Vacuum and log cleanup every this many snapshots (not at every one).
    pub maintenance_every: u32,
    /// A part of the state whose chain holds more than this many segments is compacted into
    /// one (`state::segments`).
    pub compact_after: u32,
    /// Closed months of the rep × day grain kept in memory beyond the open ones (the latest
    /// ones; the others leave memory once durable: `state::residency`).
    pub resident_closed_months: u32,
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

/// A commission plan: marginal tiers on attainment, each slice of closed-won paying its rate.
#[derive(Debug, Clone, PartialEq)]
pub struct CommissionPlan {
    pub name: String,
    /// (attainment fraction where the tier starts, rate), ascending, the first from 0.
    pub tiers: Vec<(rust_decimal::Decimal, rust_decimal::Decimal)>,
    /// Highest payout per rep and quarter, if any.
    pub cap: Option<rust_decimal::Decimal>,
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
    /// The column whose value decides a published row's partition (None: one partition).
    pub partition_by: Option<String>,
}

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

/// A duration in microseconds (of event time), saturating.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
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
            builtin::PIPELINE,
            "<built-in pipelines/default.toml>",
            &builtin::sql,
        )
    }

    /// Parses and validates pipeline text; `read_sql` resolves a table's `sql` path.
    pub fn parse(
        text: &str,
        file: &str,
        read_sql: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Pipeline, ConfigError> {
        let raw: raw::RawPipeline = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate::pipeline(raw, file, read_sql).map_err(|validate::Invalid { key, message }| {
            ConfigError::Invalid {
                file: file.to_string(),
                key,
                message,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pipeline_is_valid() {
        let p = Pipeline::builtin().unwrap();
        assert_eq!(p.source.topics[&EventType::Deal], "spm.deals");
        assert_eq!(p.snapshot.trigger_interval, Duration::from_secs(5));
        assert_eq!(p.snapshot.retention, 20);
    }

    #[test]
    fn errors_name_file_and_key() {
        let text = builtin::PIPELINE.replace(
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
        let text = format!("{}\n[snapshot.extra]\nx = 1\n", builtin::PIPELINE);
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
        let bad = builtin::PIPELINE.replace(
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
        let bad = builtin::PIPELINE.replace(
            r#"{ from = "0.50", rate = "0.08" }"#,
            r#"{ from = "0.50", rate = "8%" }"#,
        );
        let err = Pipeline::parse(&bad, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(err.contains("commissions.tiers[1].rate"), "{err}");
        let bad = builtin::PIPELINE.replace("# cap = \"50000.00\"", "cap = \"-1\"");
        let err = Pipeline::parse(&bad, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("commissions.cap") && err.contains("negative"),
            "{err}"
        );
        let bad = builtin::PIPELINE.replace("calls = 1.0", "calls = \"many\"");
        let err = Pipeline::parse(&bad, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml") && err.contains("calls"), "{err}");
        let capped = builtin::PIPELINE.replace("# cap = \"50000.00\"", "cap = \"50000.00\"");
        assert_eq!(
            Pipeline::parse(&capped, "p.toml", &sql)
                .unwrap()
                .metrics
                .commissions
                .cap,
            Some("50000.00".parse().unwrap())
        );
    }

    #[test]
    fn partitioning_and_retention_settings_are_checked() {
        let sql = |_: &str| Ok("SELECT 1 AS x".to_string());
        let p = Pipeline::parse(builtin::PIPELINE, "p.toml", &sql).unwrap();
        let att = p
            .metrics
            .tables
            .iter()
            .find(|t| t.name == "attainment")
            .unwrap();
        assert_eq!(att.partition_by.as_deref(), Some("period_start"));
        assert_eq!(
            (p.snapshot.retention_days, p.snapshot.maintenance_every),
            (7, 10)
        );
        // A helper view is not written, so it cannot be partitioned.
        let helper = builtin::PIPELINE.replace(
            "name = \"reps\"\n",
            "name = \"reps\"\npartition_by = \"team_id\"\n",
        );
        let err = Pipeline::parse(&helper, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tables[0].partition_by") && err.contains("published"),
            "{err}"
        );
        for (key, value) in [
            ("log_checkpoint_interval", "10"),
            ("maintenance_every", "10"),
            ("compact_after", "8"),
        ] {
            let zero =
                builtin::PIPELINE.replace(&format!("{key} = {value}"), &format!("{key} = 0"));
            let err = Pipeline::parse(&zero, "p.toml", &sql)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("snapshot.{key}")), "{err}");
        }
    }

    #[test]
    fn alert_rules_are_checked() {
        let plain = |_: &str| Ok("SELECT 'k' AS key, 1 AS value, 'm' AS message".to_string());
        let sql = |_: &str| Ok("SELECT 'k' AS key, ${x} AS value, 'm' AS message".to_string());
        let bad = builtin::PIPELINE.replace(
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
        let err = Pipeline::parse(builtin::PIPELINE, "p.toml", &sql)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alerts[0].params") && err.contains("${x}"),
            "{err}"
        );
        let bad = builtin::PIPELINE.replace(r#"severity = "info""#, r#"severity = "meh""#);
        let err = Pipeline::parse(&bad, "p.toml", &|_| Ok("SELECT 1".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("alerts[3].severity"), "{err}");
    }

    #[test]
    fn alert_delivery_is_checked() {
        let sql = |_: &str| Ok("SELECT 1".to_string());
        let with = |hook: &str, deliver: &str| {
            let text = builtin::PIPELINE
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
        assert_eq!(p.metrics.alerts[2].deliver, ["log", "managers"]);
        assert_eq!(p.metrics.alerts[0].deliver, ["log", "kafka"]);
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
                "tables[5].name",
            ),
            ("name = \"rep_daily\"", "name = \"x/y\"", "tables[5].name"),
            ("name = \"rep_daily\"", "name = \"..\"", "tables[5].name"),
        ] {
            let text = builtin::PIPELINE.replacen(from, to, 1);
            let err = Pipeline::parse(&text, "p.toml", &sql)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("key `{key}`")), "{to}: {err}");
        }
    }

    #[test]
    fn a_pipeline_table_may_not_take_a_provided_name() {
        let sql = |_: &str| Ok("SELECT 1 AS x".to_string());
        for reserved in ["activity_periods", "activity_weeks", "deals", "alerts"] {
            let text = builtin::PIPELINE.replacen(
                "name = \"rep_daily\"",
                &format!("name = \"{reserved}\""),
                1,
            );
            let err = Pipeline::parse(&text, "p.toml", &sql)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("p.toml")
                    && err.contains("key `tables[5].name`")
                    && err.contains(&format!("`{reserved}` is reserved")),
                "{reserved}: {err}"
            );
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
