//! Validation of the raw pipeline file, one function per section; pure (the SQL files are read
//! through the `read_sql` the caller gives). An error names the key and what is wrong; the
//! caller adds the file.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{
    RawAlert, RawCalendar, RawCommissions, RawDelivery, RawPipeline, RawSnapshot, RawSource,
    RawStage, RawTable,
};
use super::{
    default_stages, parse_duration, AlertDelivery, AlertRule, CommissionPlan, DecodeLimits,
    LeaderboardWeights, Metrics, Pipeline, Snapshot, Source, StageRule, TableSpec, Webhook,
    BUILTIN_TARGETS,
};
use crate::calendar::Calendar;
use crate::event::schema::{EventType, Schema};
use crate::event::Stage;

/// A key of the pipeline file and what is wrong with it.
#[derive(Debug)]
pub(super) struct Invalid {
    pub key: String,
    pub message: String,
}

pub(super) type Checked<T> = Result<T, Invalid>;

pub(super) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        message: message.into(),
    }
}

pub(super) fn duration(key: &str, value: &str) -> Checked<Duration> {
    parse_duration(value).map_err(|m| invalid(key, m))
}

const SEVERITIES: &[&str] = &["info", "warning", "critical"];
const FORECAST_CATEGORIES: &[&str] = &["pipeline", "best_case", "commit", "closed", "omitted"];
/// Client properties quotaflow sets itself.
const OWN_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

/// The whole file `file`, section by section.
pub(super) fn pipeline(
    raw: RawPipeline,
    file: &str,
    read_sql: &dyn Fn(&str) -> Result<String, String>,
) -> Checked<Pipeline> {
    if !is_identifier(&raw.name) {
        return Err(invalid(
            "name",
            format!(
                "`{}` must be lower-case letters, digits, '_' or '-'",
                raw.name
            ),
        ));
    }
    let source = source(&raw.source)?;
    let (calendar, corporate_currency) = calendar(&raw.calendar)?;
    let snapshot = snapshot(&raw.snapshot)?;
    let stages = stages(&raw.stages)?;
    let leaderboard = leaderboard(&raw.leaderboard)?;
    let commissions = commission_plan(&raw.commissions)?;
    let tables = tables(&raw.tables, read_sql)?;
    let alert_delivery = alert_delivery(&raw.alert_delivery)?;
    let alerts = alerts(&raw.alerts, &alert_delivery, read_sql)?;
    let http_bind = http_bind("http.bind", &raw.http.bind)?;
    let serve = super::serve::validate(&raw.serve)?;
    Ok(Pipeline {
        name: raw.name,
        file: file.to_string(),
        metrics: std::sync::Arc::new(Metrics {
            calendar,
            corporate_currency,
            topics: source.topics.clone(),
            stages,
            leaderboard,
            commissions,
            tables,
            alerts,
        }),
        source,
        snapshot,
        alert_delivery,
        http_bind,
        serve,
    })
}

/// `[source]`.
fn source(s: &RawSource) -> Checked<Source> {
    if s.max_message_bytes == 0 {
        return Err(invalid("source.max_message_bytes", "must be at least 1"));
    }
    let max_clock_skew = duration("source.max_clock_skew", &s.max_clock_skew)?;
    let mut topics = BTreeMap::new();
    for (key, topic) in &s.topics {
        let t = EventType::ALL
            .into_iter()
            .find(|t| t.name() == key)
            .ok_or_else(|| {
                invalid(
                    format!("source.topics.{key}"),
                    "not an event type (activity, deal, quota, rep, survey, fx_rate)",
                )
            })?;
        if !is_topic(topic) {
            return Err(invalid(
                format!("source.topics.{key}"),
                format!("`{topic}` is not a valid Kafka topic name"),
            ));
        }
        topics.insert(t, topic.clone());
    }
    for t in EventType::ALL {
        if let std::collections::btree_map::Entry::Vacant(slot) = topics.entry(t) {
            let default =
                Schema::builtin(t).map_err(|e| invalid("source.topics", e.to_string()))?;
            slot.insert(default.default_topic);
        }
    }
    let mut seen: Vec<&String> = topics.values().collect();
    seen.sort();
    seen.dedup();
    if seen.len() != topics.len() {
        return Err(invalid("source.topics", "two event types share a topic"));
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
    if let Some(key) = s
        .kafka
        .keys()
        .find(|k| OWN_KAFKA_PROPERTIES.contains(&k.as_str()))
    {
        return Err(invalid(
            format!("source.kafka.\"{key}\""),
            "is set by quotaflow itself (use --brokers for bootstrap.servers)",
        ));
    }
    Ok(Source {
        brokers: s.brokers.clone(),
        topics,
        dead_letter_topic: s.dead_letter_topic.clone(),
        dead_letter_rows: s.dead_letter_rows,
        limits: DecodeLimits {
            max_message_bytes: s.max_message_bytes,
            max_clock_skew_micros: super::micros(max_clock_skew),
        },
        dedup_horizon: duration("source.dedup_horizon", &s.dedup_horizon)?,
        allowed_lateness: duration("source.allowed_lateness", &s.allowed_lateness)?,
        idle_timeout: duration("source.idle_timeout", &s.idle_timeout)?,
        max_read_ahead: duration("source.max_read_ahead", &s.max_read_ahead)?,
        kafka: s.kafka.clone(),
    })
}

/// `[calendar]`: the calendar and the corporate currency.
fn calendar(c: &RawCalendar) -> Checked<(Calendar, String)> {
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
    let calendar = Calendar {
        fiscal_year_start_month: c.fiscal_year_start_month as u32,
        timezone,
    };
    Ok((calendar, c.corporate_currency.clone()))
}

/// `[snapshot]`.
fn snapshot(sn: &RawSnapshot) -> Checked<Snapshot> {
    let trigger_interval = duration("snapshot.trigger_interval", &sn.trigger_interval)?;
    let once_trigger_interval =
        duration("snapshot.once_trigger_interval", &sn.once_trigger_interval)?;
    for (key, d) in [
        ("snapshot.trigger_interval", trigger_interval),
        ("snapshot.once_trigger_interval", once_trigger_interval),
    ] {
        if d.is_zero() {
            return Err(invalid(key, "must be longer than 0"));
        }
    }
    if sn.retention == 0 {
        return Err(invalid(
            "snapshot.retention",
            "must keep at least 1 snapshot",
        ));
    }
    if sn.log_checkpoint_interval == 0 {
        return Err(invalid(
            "snapshot.log_checkpoint_interval",
            "must be at least 1 commit",
        ));
    }
    if sn.maintenance_every == 0 {
        return Err(invalid(
            "snapshot.maintenance_every",
            "must be at least 1 snapshot",
        ));
    }
    if sn.compact_after == 0 {
        return Err(invalid(
            "snapshot.compact_after",
            "must be at least 1 segment",
        ));
    }
    Ok(Snapshot {
        output: sn.output.clone(),
        trigger_interval,
        once_trigger_interval,
        trigger_events: sn.trigger_events,
        max_events_while_writing: sn.max_events_while_writing,
        retention: sn.retention,
        retention_days: sn.retention_days,
        log_checkpoint_interval: sn.log_checkpoint_interval,
        maintenance_every: sn.maintenance_every,
        compact_after: sn.compact_after,
        resident_closed_months: sn.resident_closed_months,
    })
}

/// `[stages.<stage>]`: overrides of EVENTS.md's stage table.
fn stages(raw: &BTreeMap<String, RawStage>) -> Checked<Vec<StageRule>> {
    let mut stages = default_stages();
    for (key, rule) in raw {
        let stage = Stage::parse(key)
            .ok_or_else(|| invalid(format!("stages.{key}"), "not a stage of EVENTS.md"))?;
        if !(0.0..=1.0).contains(&rule.probability) {
            return Err(invalid(
                format!("stages.{key}.probability"),
                format!("{} is outside 0..1", rule.probability),
            ));
        }
        if !FORECAST_CATEGORIES.contains(&rule.forecast_category.as_str()) {
            return Err(invalid(
                format!("stages.{key}.forecast_category"),
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
    Ok(stages)
}

/// `[leaderboard]`.
fn leaderboard(lb: &LeaderboardWeights) -> Checked<LeaderboardWeights> {
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
        return Err(invalid("leaderboard", "weights must be finite numbers"));
    }
    Ok(lb.clone())
}

/// `[commissions]`.
fn commission_plan(raw: &RawCommissions) -> Checked<CommissionPlan> {
    use rust_decimal::Decimal;
    let dec = |key: String, v: &str| -> Checked<Decimal> {
        match v.parse::<Decimal>() {
            Ok(d) if d >= Decimal::ZERO => Ok(d),
            Ok(_) => Err(invalid(key, format!("`{v}` is negative"))),
            Err(_) => Err(invalid(
                key,
                format!("`{v}` is not a decimal string such as \"0.08\""),
            )),
        }
    };
    if !is_identifier(&raw.plan) {
        return Err(invalid(
            "commissions.plan",
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
                return Err(invalid(
                    format!("commissions.tiers[{i}].from"),
                    format!("{from} does not rise above the tier before ({prev})"),
                ));
            }
        } else if !from.is_zero() {
            return Err(invalid(
                format!("commissions.tiers[{i}].from"),
                "the first tier must start at 0",
            ));
        }
        tiers.push((from, rate));
    }
    if tiers.is_empty() {
        return Err(invalid(
            "commissions.tiers",
            "a plan needs at least one tier",
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

/// `[[tables]]`: names unique, not a table quotaflow provides (`catalog`), SQL read.
fn tables(
    raw: &[RawTable],
    read_sql: &dyn Fn(&str) -> Result<String, String>,
) -> Checked<Vec<TableSpec>> {
    if raw.is_empty() {
        return Err(invalid(
            "tables",
            "names no SQL file: a pipeline needs at least one table",
        ));
    }
    let mut tables: Vec<TableSpec> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let key = format!("tables[{i}]");
        if !is_identifier(&t.name) || t.name.contains('-') {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` must be lower-case letters, digits and '_'", t.name),
            ));
        }
        if let Some(provided) = crate::catalog::provided(&t.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!(
                    "`{}` is reserved: quotaflow provides a table of that name ({}); choose another",
                    provided.name, provided.about
                ),
            ));
        }
        if tables.iter().any(|o| o.name == t.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is already the name of an earlier table", t.name),
            ));
        }
        if let Some(c) = &t.partition_by {
            if !t.publish {
                return Err(invalid(
                    format!("{key}.partition_by"),
                    "only a published table is partitioned: remove it or the `publish = false`",
                ));
            }
            if !is_identifier(c) {
                return Err(invalid(
                    format!("{key}.partition_by"),
                    format!("`{c}` must be one of the table's column names"),
                ));
            }
        }
        let sql = read_sql(&t.sql).map_err(|m| invalid(format!("{key}.sql"), m))?;
        tables.push(TableSpec {
            name: t.name.clone(),
            origin: t.sql.clone(),
            sql,
            publish: t.publish,
            partition_by: t.partition_by.clone(),
        });
    }
    Ok(tables)
}

/// `[[alerts]]`: severities, numeric parameters filled in, targets `delivery` knows.
fn alerts(
    raw: &[RawAlert],
    delivery: &AlertDelivery,
    read_sql: &dyn Fn(&str) -> Result<String, String>,
) -> Checked<Vec<AlertRule>> {
    let mut alerts: Vec<AlertRule> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let key = format!("alerts[{i}]");
        if !is_identifier(&a.name) || alerts.iter().any(|o| o.name == a.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` must be a unique lower-case name", a.name),
            ));
        }
        if !SEVERITIES.contains(&a.severity.as_str()) {
            return Err(invalid(
                format!("{key}.severity"),
                format!("`{}` is not one of {}", a.severity, SEVERITIES.join(", ")),
            ));
        }
        let mut sql = read_sql(&a.sql).map_err(|m| invalid(format!("{key}.sql"), m))?;
        for (name, value) in &a.params {
            // Parameters are thresholds: numbers, so nothing can be injected into the SQL.
            if value.parse::<f64>().is_err() {
                return Err(invalid(
                    format!("{key}.params.{name}"),
                    format!("`{value}` is not a number"),
                ));
            }
            sql = sql.replace(&format!("${{{name}}}"), value);
        }
        if let Some(at) = sql.find("${") {
            let rest: String = sql[at..].chars().take_while(|c| *c != '}').collect();
            return Err(invalid(
                format!("{key}.params"),
                format!("the SQL uses {rest}}} but params do not set it"),
            ));
        }
        for (j, target) in a.deliver.iter().enumerate() {
            let known = BUILTIN_TARGETS.contains(&target.as_str())
                || delivery.webhooks.iter().any(|w| &w.name == target);
            if !known || a.deliver[..j].contains(target) {
                return Err(invalid(
                    format!("{key}.deliver[{j}]"),
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
    Ok(alerts)
}

/// `[alert_delivery]`.
fn alert_delivery(raw: &RawDelivery) -> Checked<AlertDelivery> {
    let key = |k: &str| format!("alert_delivery.{k}");
    if !is_topic(&raw.kafka_topic) {
        return Err(invalid(
            key("kafka_topic"),
            format!("`{}` is not a valid topic name", raw.kafka_topic),
        ));
    }
    let retry_initial = duration(&key("retry_initial"), &raw.retry_initial)?;
    let retry_max = duration(&key("retry_max"), &raw.retry_max)?;
    if retry_initial.is_zero() || retry_max < retry_initial {
        return Err(invalid(
            key("retry_max"),
            "retry_initial must be above zero and retry_max at least retry_initial",
        ));
    }
    let mut webhooks: Vec<Webhook> = Vec::new();
    for (i, w) in raw.webhooks.iter().enumerate() {
        let k = |f: &str| key(&format!("webhooks[{i}].{f}"));
        if !is_identifier(&w.name)
            || BUILTIN_TARGETS.contains(&w.name.as_str())
            || webhooks.iter().any(|o| o.name == w.name)
        {
            return Err(invalid(
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
                invalid(
                    k("url"),
                    format!("`{}` is not an http:// or https:// URL", w.url),
                )
            })?;
        let timeout = duration(&k("timeout"), &w.timeout)?;
        if timeout.is_zero() {
            return Err(invalid(k("timeout"), "must be above zero"));
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
        drain_timeout: duration(&key("drain_timeout"), &raw.drain_timeout)?,
        webhooks,
    })
}

/// `[http] bind` (or `serve.http`): an address, or "off".
pub(super) fn http_bind(key: &str, bind: &str) -> Checked<Option<std::net::SocketAddr>> {
    match bind {
        "off" => Ok(None),
        b => b.parse::<std::net::SocketAddr>().map(Some).map_err(|_| {
            invalid(
                key,
                format!("`{b}` is not an address such as 127.0.0.1:9464 (or \"off\")"),
            )
        }),
    }
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
