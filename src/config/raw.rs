//! The pipeline file as serde reads it: every section with its defaults and unknown keys
//! refused. Nothing here is validated; `validate` turns these into the sections of a
//! [`Pipeline`](super::Pipeline).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::LeaderboardWeights;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) name: String,
    #[serde(default)]
    pub(super) source: RawSource,
    #[serde(default)]
    pub(super) calendar: RawCalendar,
    #[serde(default)]
    pub(super) snapshot: RawSnapshot,
    #[serde(default)]
    pub(super) stages: BTreeMap<String, RawStage>,
    #[serde(default)]
    pub(super) leaderboard: LeaderboardWeights,
    #[serde(default)]
    pub(super) commissions: RawCommissions,
    #[serde(default)]
    pub(super) tables: Vec<RawTable>,
    #[serde(default)]
    pub(super) alerts: Vec<RawAlert>,
    #[serde(default)]
    pub(super) alert_delivery: RawDelivery,
    #[serde(default)]
    pub(super) http: RawHttp,
    #[serde(default)]
    pub(super) serve: RawServe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServe {
    pub(super) pg: String,
    pub(super) http: String,
    pub(super) user: String,
    pub(super) database: String,
    pub(super) password_file: String,
    pub(super) tls_cert: String,
    pub(super) tls_key: String,
    pub(super) poll_interval: String,
}

impl Default for RawServe {
    fn default() -> Self {
        RawServe {
            pg: "127.0.0.1:5433".into(),
            http: "127.0.0.1:9465".into(),
            user: "quotaflow".into(),
            database: "quotaflow".into(),
            password_file: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            poll_interval: "1s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    pub(super) bind: String,
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
pub(super) struct RawDelivery {
    pub(super) kafka_topic: String,
    pub(super) retry_initial: String,
    pub(super) retry_max: String,
    pub(super) drain_timeout: String,
    pub(super) webhooks: Vec<RawWebhook>,
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
pub(super) struct RawWebhook {
    pub(super) name: String,
    pub(super) url: String,
    #[serde(default = "webhook_timeout")]
    pub(super) timeout: String,
}

pub(super) fn webhook_timeout() -> String {
    "5s".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlert {
    pub(super) name: String,
    pub(super) severity: String,
    pub(super) description: String,
    pub(super) sql: String,
    #[serde(default)]
    pub(super) params: BTreeMap<String, String>,
    #[serde(default = "default_targets")]
    pub(super) deliver: Vec<String>,
}

pub(super) fn default_targets() -> Vec<String> {
    vec!["log".into(), "kafka".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCommissions {
    pub(super) plan: String,
    pub(super) cap: Option<String>,
    pub(super) tiers: Vec<RawTier>,
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
pub(super) struct RawTier {
    pub(super) from: String,
    pub(super) rate: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSource {
    pub(super) brokers: Option<String>,
    pub(super) max_message_bytes: usize,
    pub(super) max_clock_skew: String,
    pub(super) dedup_horizon: String,
    pub(super) allowed_lateness: String,
    pub(super) idle_timeout: String,
    pub(super) max_read_ahead: String,
    pub(super) dead_letter_topic: String,
    pub(super) dead_letter_rows: usize,
    pub(super) topics: BTreeMap<String, String>,
    pub(super) kafka: BTreeMap<String, String>,
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
            max_read_ahead: "30d".into(),
            dead_letter_topic: "spm.dead_letters".into(),
            dead_letter_rows: 10_000,
            topics: BTreeMap::new(),
            kafka: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCalendar {
    pub(super) timezone: String,
    pub(super) fiscal_year_start_month: i64,
    pub(super) corporate_currency: String,
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
pub(super) struct RawSnapshot {
    pub(super) output: Option<String>,
    pub(super) trigger_interval: String,
    pub(super) once_trigger_interval: String,
    pub(super) trigger_events: u64,
    pub(super) max_events_while_writing: u64,
    pub(super) retention: usize,
    pub(super) retention_days: usize,
    pub(super) log_checkpoint_interval: u32,
    pub(super) maintenance_every: u32,
    pub(super) compact_after: u32,
    pub(super) resident_closed_months: u32,
}

impl Default for RawSnapshot {
    fn default() -> Self {
        RawSnapshot {
            output: None,
            trigger_interval: "5s".into(),
            once_trigger_interval: "60s".into(),
            trigger_events: 0,
            max_events_while_writing: 1_000_000,
            retention: 20,
            retention_days: 7,
            log_checkpoint_interval: 10,
            maintenance_every: 10,
            compact_after: 8,
            resident_closed_months: 1,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    pub(super) probability: f64,
    pub(super) forecast_category: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTable {
    pub(super) name: String,
    pub(super) sql: String,
    #[serde(default = "yes")]
    pub(super) publish: bool,
    #[serde(default)]
    pub(super) partition_by: Option<String>,
}

pub(super) fn yes() -> bool {
    true
}
