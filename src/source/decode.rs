//! JSON message → typed [`Event`] or a [`BadInput`] with exactly one reason.
//!
//! Follows EVENTS.md "Bad input": `too_large`, `invalid_json`, `wrong_type` (not an object),
//! `missing_field` (any required field), then the fields one by one in schema order, the first
//! problem of the first faulty field winning. The rules come from `schemas/` via
//! [`Schema`]; this module owns how a JSON value is checked against a [`FieldKind`].
//! It never touches state: duplicates and lateness are decided when events are folded.

use chrono::{DateTime, NaiveDate};
use rust_decimal::Decimal;

use super::json::{json_kind, Doc, Members, J};

use crate::config::DecodeLimits;
use crate::event::schema::{EventType, FieldKind, Schema};
use crate::event::{
    Activity, ActivityType, Day, Deal, Event, FxRate, Micros, Quota, Rep, Stage, Survey,
    MONEY_SCALE, RATE_SCALE,
};
use crate::internal::InternalError;

/// Why a message was refused (or set aside): the `reason` of a dead letter.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Reason {
    TooLarge,
    InvalidJson,
    WrongType,
    MissingField,
    EmptyId,
    UnknownEnum,
    BadCurrency,
    NegativeAmount,
    OutOfRange,
    Late,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::InvalidJson => "invalid_json",
            Reason::WrongType => "wrong_type",
            Reason::MissingField => "missing_field",
            Reason::EmptyId => "empty_id",
            Reason::UnknownEnum => "unknown_enum",
            Reason::BadCurrency => "bad_currency",
            Reason::NegativeAmount => "negative_amount",
            Reason::OutOfRange => "out_of_range",
            Reason::Late => "late",
        }
    }
}

/// A refused message: the reason and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq)]
pub struct BadInput {
    pub reason: Reason,
    pub detail: String,
}

fn bad(reason: Reason, detail: impl Into<String>) -> BadInput {
    BadInput {
        reason,
        detail: detail.into(),
    }
}

/// Decodes messages of every event type; built once, shared by the source.
#[derive(Debug, Clone)]
pub struct Decoder {
    schemas: Vec<Schema>,
    limits: DecodeLimits,
}

/// A validated value of one field.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Text(String),
    Int(i64),
    Num(f64),
    Bool(bool),
    Dec(Decimal),
    Instant(Micros),
    Date(Day),
}

/// DECIMAL(18,2) holds 16 integer digits.
const MAX_INTEGER_DIGITS: usize = 16;

impl Decoder {
    pub fn new(limits: DecodeLimits) -> Result<Decoder, InternalError> {
        let schemas = EventType::ALL
            .iter()
            .map(|t| Schema::builtin(*t))
            .collect::<Result<_, _>>()?;
        Ok(Decoder { schemas, limits })
    }

    pub fn schema(&self, t: EventType) -> &Schema {
        // ALL and `schemas` share an order.
        &self.schemas[t as usize]
    }

    /// Decodes one message payload of type `t`; `now` is the wall clock in UTC microseconds.
    pub fn decode(&self, t: EventType, payload: &[u8], now: Micros) -> Result<Event, BadInput> {
        if payload.len() > self.limits.max_message_bytes {
            return Err(bad(
                Reason::TooLarge,
                format!(
                    "{} bytes, more than max_message_bytes = {}",
                    payload.len(),
                    self.limits.max_message_bytes
                ),
            ));
        }
        let doc: Doc = serde_json::from_slice(payload)
            .map_err(|e| bad(Reason::InvalidJson, format!("not JSON: {e}")))?;
        let obj = match doc {
            Doc::Object(fields) => Members(fields),
            Doc::Other(kind) => {
                return Err(bad(
                    Reason::WrongType,
                    format!("expected a JSON object, got {kind}"),
                ))
            }
        };
        let schema = self.schema(t);
        let present = |name: &str| obj.get(name).is_some_and(|v| !matches!(v, J::Null));
        if let Some(f) = schema
            .fields
            .iter()
            .find(|f| f.required && !present(&f.name))
        {
            return Err(bad(
                Reason::MissingField,
                format!("required field `{}` is absent or null", f.name),
            ));
        }
        let mut vals: Vec<Option<Val>> = Vec::with_capacity(schema.fields.len());
        for f in &schema.fields {
            let v = match obj.get(&f.name) {
                None | Some(J::Null) => None,
                Some(v) => {
                    let checked = self.check(&f.kind, v, now, |n| lookup(schema, &vals, n));
                    Some(checked.map_err(|(reason, why)| {
                        bad(reason, format!("field `{}`: {why}", f.name))
                    })?)
                }
            };
            vals.push(v);
        }
        build(schema, vals).map_err(|missing| {
            // The schema and `build` disagree: a bug, but still no panic and nothing lost.
            bad(
                Reason::MissingField,
                format!("field `{missing}` could not be read"),
            )
        })
    }

    fn check<'a>(
        &self,
        kind: &FieldKind,
        v: &J<'_>,
        now: Micros,
        earlier: impl Fn(&str) -> Option<&'a Val>,
    ) -> Result<Val, (Reason, String)> {
        use Reason::*;
        let as_str = |what: &str| {
            v.as_str()
                .ok_or_else(|| (WrongType, format!("expected {what}, got {}", json_kind(v))))
        };
        match kind {
            FieldKind::Text => Ok(Val::Text(as_str("a string")?.to_string())),
            FieldKind::Id => {
                let s = as_str("a string id")?;
                if s.is_empty() {
                    return Err((EmptyId, "id is the empty string".into()));
                }
                Ok(Val::Text(s.to_string()))
            }
            FieldKind::Enum(allowed) => {
                let s = as_str("a string")?;
                if !allowed.iter().any(|a| a == s) {
                    return Err((
                        UnknownEnum,
                        format!("`{s}` is not one of {}", allowed.join(", ")),
                    ));
                }
                Ok(Val::Text(s.to_string()))
            }
            FieldKind::Currency => {
                let s = as_str("a currency code string")?;
                if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err((
                        BadCurrency,
                        format!("`{s}` is not three upper-case letters"),
                    ));
                }
                Ok(Val::Text(s.to_string()))
            }
            FieldKind::Money => Ok(Val::Dec(parse_decimal(
                as_str("a decimal string such as \"48000.00\"")?,
                MONEY_SCALE,
            )?)),
            FieldKind::Rate => Ok(Val::Dec(parse_decimal(
                as_str("a decimal string such as \"1.0842\"")?,
                RATE_SCALE,
            )?)),
            FieldKind::Instant => {
                let s = as_str("an RFC 3339 instant string")?;
                let t = DateTime::parse_from_rfc3339(s).map_err(|e| {
                    (
                        WrongType,
                        format!("`{s}` is not an RFC 3339 instant with an offset ({e})"),
                    )
                })?;
                let micros = t.timestamp_micros();
                if micros > now.saturating_add(self.limits.max_clock_skew_micros) {
                    return Err((
                        OutOfRange,
                        format!("`{s}` is later than the wall clock plus max_clock_skew"),
                    ));
                }
                Ok(Val::Instant(micros))
            }
            FieldKind::Date { not_before } => {
                let s = as_str("a YYYY-MM-DD date string")?;
                let day = parse_date(s).ok_or_else(|| {
                    (
                        WrongType,
                        format!("`{s}` is not an existing YYYY-MM-DD date"),
                    )
                })?;
                if let Some(Val::Date(start)) = not_before.as_deref().and_then(&earlier) {
                    if day < *start {
                        return Err((
                            OutOfRange,
                            format!("{s} is before `{}`", not_before.as_deref().unwrap_or("")),
                        ));
                    }
                }
                Ok(Val::Date(day))
            }
            FieldKind::Integer { min, max } => {
                let n = match v {
                    J::Int(n) => *n,
                    J::UInt(n) => return Err((OutOfRange, format!("{n} is too large"))),
                    _ => {
                        return Err((
                            WrongType,
                            format!("expected an integer, got {}", json_kind(v)),
                        ))
                    }
                };
                if min.is_some_and(|m| n < m) || max.is_some_and(|m| n > m) {
                    return Err((OutOfRange, format!("{n} is outside {}", bounds(min, max))));
                }
                Ok(Val::Int(n))
            }
            FieldKind::Number { min, max } => {
                let x = v.as_f64().ok_or_else(|| {
                    (
                        WrongType,
                        format!("expected a number, got {}", json_kind(v)),
                    )
                })?;
                if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
                    return Err((OutOfRange, format!("{x} is outside {}", bounds(min, max))));
                }
                Ok(Val::Num(x))
            }
            FieldKind::Bool => v.as_bool().map(Val::Bool).ok_or_else(|| {
                (
                    WrongType,
                    format!("expected true or false, got {}", json_kind(v)),
                )
            }),
        }
    }
}

fn bounds<T: std::fmt::Display>(min: &Option<T>, max: &Option<T>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("{a}..{b}"),
        (Some(a), None) => format!(">= {a}"),
        (None, Some(b)) => format!("<= {b}"),
        (None, None) => "any".into(),
    }
}

fn lookup<'a>(schema: &Schema, vals: &'a [Option<Val>], name: &str) -> Option<&'a Val> {
    let i = schema.fields.iter().position(|f| f.name == name)?;
    vals.get(i)?.as_ref()
}

/// Parses `YYYY-MM-DD` strictly (four-two-two digits, a date that exists) into days since epoch.
pub fn parse_date(s: &str) -> Option<Day> {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return None;
    }
    let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(crate::calendar::day_number(d))
}

/// Parses a decimal string (`^-?[0-9]+(\.[0-9]+)?$`) exactly, rounding half-even to `scale`
/// decimals on the digits themselves (no intermediate rounding), with at most 16 integer digits.
pub fn parse_decimal(s: &str, scale: u32) -> Result<Decimal, (Reason, String)> {
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err((
            Reason::WrongType,
            format!("`{s}` is not a decimal string (digits, one optional '.', optional '-')"),
        ));
    }
    let frac = frac.unwrap_or("");
    if negative && s.bytes().any(|c| (b'1'..=b'9').contains(&c)) {
        return Err((Reason::NegativeAmount, format!("`{s}` is below zero")));
    }
    let int = int.trim_start_matches('0');
    let too_big = || {
        (
            Reason::OutOfRange,
            format!("`{s}` has more than {MAX_INTEGER_DIGITS} integer digits"),
        )
    };
    if int.len() > MAX_INTEGER_DIGITS {
        return Err(too_big());
    }
    let scale_digits = scale as usize;
    let kept: String = frac
        .chars()
        .chain(std::iter::repeat('0'))
        .take(scale_digits)
        .collect();
    let rest = frac.get(scale_digits..).unwrap_or("");
    let mut units: i128 = format!("{int}{kept}").parse::<i128>().unwrap_or(0);
    let round_up = match rest.as_bytes().first() {
        Some(b'6'..=b'9') => true,
        Some(b'5') => rest[1..].bytes().any(|c| c != b'0') || units % 2 == 1,
        _ => false,
    };
    if round_up {
        units += 1;
    }
    if units >= 10i128.pow(MAX_INTEGER_DIGITS as u32 + scale) {
        return Err(too_big());
    }
    Ok(Decimal::from_i128_with_scale(units, scale))
}

/// Assembles the typed event from validated values; `Err` names a field the schema lacks.
fn build(schema: &Schema, vals: Vec<Option<Val>>) -> Result<Event, String> {
    let mut f = Fields { schema, vals };
    Ok(match schema.event_type {
        EventType::Activity => Event::Activity(Activity {
            event_id: f.text("event_id")?,
            occurred_at: f.instant("occurred_at")?,
            rep_id: f.text("rep_id")?,
            activity_type: ActivityType::parse(&f.text("activity_type")?).ok_or("activity_type")?,
            duration_s: f.opt_int("duration_s"),
            outcome: f.opt_text("outcome"),
            deal_id: f.opt_text("deal_id"),
            account_id: f.opt_text("account_id"),
        }),
        EventType::Deal => Event::Deal(Deal {
            deal_id: f.text("deal_id")?.into(),
            version: f.int("version")?,
            occurred_at: f.instant("occurred_at")?,
            rep_id: f.text("rep_id")?.into(),
            account_id: f.opt_text("account_id").map(Into::into),
            stage: Stage::parse(&f.text("stage")?).ok_or("stage")?,
            amount: f.dec("amount")?,
            currency: f.text("currency")?.into(),
            close_date: f.date("close_date")?,
            forecast_category: f.opt_text("forecast_category").map(Into::into),
            probability: f.opt_num("probability"),
            created_at: f.instant("created_at")?,
        }),
        EventType::Quota => Event::Quota(Quota {
            rep_id: f.text("rep_id")?,
            period_start: f.date("period_start")?,
            period_end: f.date("period_end")?,
            amount: f.dec("amount")?,
            currency: f.text("currency")?,
            version: f.int("version")?,
            occurred_at: f.instant("occurred_at")?,
        }),
        EventType::Rep => Event::Rep(Rep {
            rep_id: f.text("rep_id")?,
            version: f.int("version")?,
            occurred_at: f.instant("occurred_at")?,
            name: f.text("name")?,
            team_id: f.text("team_id")?,
            region: f.text("region")?,
            manager_id: f.opt_text("manager_id"),
            role: f.opt_text("role"),
            hired_on: f.opt_date("hired_on"),
            active: f.bool("active")?,
            effective_from: f.opt_date("effective_from"),
        }),
        EventType::Survey => Event::Survey(Survey {
            response_id: f.text("response_id")?.into(),
            occurred_at: f.instant("occurred_at")?,
            rep_id: f.text("rep_id")?.into(),
            survey: f.text("survey")?.into(),
            score: f.int("score")?,
            comment: f.opt_text("comment").map(Into::into),
        }),
        EventType::FxRate => Event::FxRate(FxRate {
            currency: f.text("currency")?,
            effective_date: f.date("effective_date")?,
            rate_to_corporate: f.dec("rate_to_corporate")?,
            version: f.int("version")?,
            occurred_at: f.instant("occurred_at")?,
        }),
    })
}

struct Fields<'a> {
    schema: &'a Schema,
    vals: Vec<Option<Val>>,
}

impl Fields<'_> {
    fn take(&mut self, name: &str) -> Option<Val> {
        let i = self.schema.fields.iter().position(|f| f.name == name)?;
        self.vals.get_mut(i)?.take()
    }
    fn text(&mut self, n: &str) -> Result<String, String> {
        self.opt_text(n).ok_or_else(|| n.to_string())
    }
    fn opt_text(&mut self, n: &str) -> Option<String> {
        match self.take(n)? {
            Val::Text(s) => Some(s),
            _ => None,
        }
    }
    fn int(&mut self, n: &str) -> Result<i64, String> {
        self.opt_int(n).ok_or_else(|| n.to_string())
    }
    fn opt_int(&mut self, n: &str) -> Option<i64> {
        match self.take(n)? {
            Val::Int(i) => Some(i),
            _ => None,
        }
    }
    fn opt_num(&mut self, n: &str) -> Option<f64> {
        match self.take(n)? {
            Val::Num(x) => Some(x),
            Val::Int(i) => Some(i as f64),
            _ => None,
        }
    }
    fn bool(&mut self, n: &str) -> Result<bool, String> {
        match self.take(n) {
            Some(Val::Bool(b)) => Ok(b),
            _ => Err(n.to_string()),
        }
    }
    fn dec(&mut self, n: &str) -> Result<Decimal, String> {
        match self.take(n) {
            Some(Val::Dec(d)) => Ok(d),
            _ => Err(n.to_string()),
        }
    }
    fn instant(&mut self, n: &str) -> Result<Micros, String> {
        match self.take(n) {
            Some(Val::Instant(t)) => Ok(t),
            _ => Err(n.to_string()),
        }
    }
    fn date(&mut self, n: &str) -> Result<Day, String> {
        self.opt_date(n).ok_or_else(|| n.to_string())
    }
    fn opt_date(&mut self, n: &str) -> Option<Day> {
        match self.take(n)? {
            Val::Date(d) => Some(d),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_rounds_half_even_on_the_digits() {
        let p = |s| parse_decimal(s, 2).map(|d| d.to_string());
        assert_eq!(p("1.005"), Ok("1.00".into()));
        assert_eq!(p("1.015"), Ok("1.02".into()));
        assert_eq!(p("1.0050000000000000000000000000000001"), Ok("1.01".into()));
        assert_eq!(p("-0.00"), Ok("0.00".into()));
        assert_eq!(p("9999999999999999.99"), Ok("9999999999999999.99".into()));
        assert_eq!(
            p("9999999999999999.995").map_err(|e| e.0),
            Err(Reason::OutOfRange)
        );
        assert_eq!(p("00000000000000000001.5"), Ok("1.50".into()));
        assert_eq!(p("1e5").map_err(|e| e.0), Err(Reason::WrongType));
        assert_eq!(p("-1").map_err(|e| e.0), Err(Reason::NegativeAmount));
    }

    #[test]
    fn dates_are_strict() {
        assert!(parse_date("2026-02-28").is_some());
        assert!(parse_date("2026-02-30").is_none());
        assert!(parse_date("2026-2-28").is_none());
        assert!(parse_date("2026-02-28T00:00:00Z").is_none());
    }
}
