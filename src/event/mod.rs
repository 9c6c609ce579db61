//! Typed events of the input contract (../spec/EVENTS.md), after validation.
//!
//! Instants are UTC microseconds since the epoch, dates are days since the epoch (Arrow's
//! Date32), money is `rust_decimal::Decimal` with two decimals. Nothing here parses JSON; the
//! decoder in `source::decode` builds these values.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

pub mod schema;

/// Decimals kept for money amounts (DECIMAL(18,2)).
pub const MONEY_SCALE: u32 = 2;
/// Decimals kept for fx rates.
pub const RATE_SCALE: u32 = 12;

/// UTC microseconds since 1970-01-01.
pub type Micros = i64;
/// Days since 1970-01-01 (Arrow Date32).
pub type Day = i32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActivityType {
    Call,
    Email,
    Meeting,
    Webinar,
    Demo,
    Task,
}

impl ActivityType {
    pub fn parse(s: &str) -> Option<ActivityType> {
        Some(match s {
            "call" => ActivityType::Call,
            "email" => ActivityType::Email,
            "meeting" => ActivityType::Meeting,
            "webinar" => ActivityType::Webinar,
            "demo" => ActivityType::Demo,
            "task" => ActivityType::Task,
            _ => return None,
        })
    }
}

/// Deal stages in the order deals move through them; `ClosedLost` sits outside the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Stage {
    Prospecting,
    Qualification,
    Proposal,
    Negotiation,
    ClosedWon,
    ClosedLost,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Prospecting,
        Stage::Qualification,
        Stage::Proposal,
        Stage::Negotiation,
        Stage::ClosedWon,
        Stage::ClosedLost,
    ];

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prospecting => "prospecting",
            Stage::Qualification => "qualification",
            Stage::Proposal => "proposal",
            Stage::Negotiation => "negotiation",
            Stage::ClosedWon => "closed_won",
            Stage::ClosedLost => "closed_lost",
        }
    }

    /// Position in the funnel (prospecting = 1 .. closed_won = 5); closed_lost has none.
    pub fn funnel_rank(self) -> Option<i64> {
        match self {
            Stage::ClosedLost => None,
            s => Some(s as i64 + 1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub event_id: String,
    pub occurred_at: Micros,
    pub rep_id: String,
    pub activity_type: ActivityType,
    pub duration_s: Option<i64>,
    pub outcome: Option<String>,
    pub deal_id: Option<String>,
    pub account_id: Option<String>,
}

/// A deal version. Its ids and codes are `SmolStr`s: inline up to 23 bytes, so a deal the state
/// keeps holds no allocation for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deal {
    pub deal_id: SmolStr,
    pub version: i64,
    pub occurred_at: Micros,
    pub rep_id: SmolStr,
    pub account_id: Option<SmolStr>,
    pub stage: Stage,
    pub amount: Decimal,
    pub currency: SmolStr,
    pub close_date: Day,
    pub forecast_category: Option<SmolStr>,
    pub probability: Option<f64>,
    pub created_at: Micros,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    pub rep_id: String,
    pub period_start: Day,
    pub period_end: Day,
    pub amount: Decimal,
    pub currency: String,
    pub version: i64,
    pub occurred_at: Micros,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rep {
    pub rep_id: String,
    pub version: i64,
    pub occurred_at: Micros,
    pub name: String,
    pub team_id: String,
    pub region: String,
    pub manager_id: Option<String>,
    pub role: Option<String>,
    pub hired_on: Option<Day>,
    pub active: bool,
    /// First day this version's team and region apply; `None`: the day of `occurred_at` in
    /// the pipeline's time zone (resolved when the state folds it, `state::Placement`).
    pub effective_from: Option<Day>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Survey {
    pub response_id: SmolStr,
    pub occurred_at: Micros,
    pub rep_id: SmolStr,
    pub survey: SmolStr,
    pub score: i64,
    pub comment: Option<SmolStr>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FxRate {
    pub currency: String,
    pub effective_date: Day,
    /// 1 unit of `currency` in corporate currency; up to 12 decimals.
    pub rate_to_corporate: Decimal,
    pub version: i64,
    pub occurred_at: Micros,
}

/// One valid event of any type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Activity(Activity),
    Deal(Deal),
    Quota(Quota),
    Rep(Rep),
    Survey(Survey),
    FxRate(FxRate),
}

impl Event {
    /// The event time that moves the event clock.
    pub fn occurred_at(&self) -> Micros {
        match self {
            Event::Activity(e) => e.occurred_at,
            Event::Deal(e) => e.occurred_at,
            Event::Quota(e) => e.occurred_at,
            Event::Rep(e) => e.occurred_at,
            Event::Survey(e) => e.occurred_at,
            Event::FxRate(e) => e.occurred_at,
        }
    }
}
