//! The input contract as data: loads `schemas/*.json` (JSON Schema with a few `x-` keywords)
//! into an ordered list of field rules that the decoder walks.
//!
//! The field order of a schema is the order of EVENTS.md's table, and therefore the order in
//! which a message's problems are looked for. This module never decodes a message itself.

use serde_json::Value;

use crate::internal::InternalError;

/// The six event types of the contract.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum EventType {
    Activity,
    Deal,
    Quota,
    Rep,
    Survey,
    FxRate,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Activity,
        EventType::Deal,
        EventType::Quota,
        EventType::Rep,
        EventType::Survey,
        EventType::FxRate,
    ];

    /// Name of the schema file and of the event in EVENTS.md.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Activity => "activity",
            EventType::Deal => "deal",
            EventType::Quota => "quota",
            EventType::Rep => "rep",
            EventType::Survey => "survey",
            EventType::FxRate => "fx_rate",
        }
    }

    fn schema_text(self) -> &'static str {
        match self {
            EventType::Activity => include_str!("../../schemas/activity.json"),
            EventType::Deal => include_str!("../../schemas/deal.json"),
            EventType::Quota => include_str!("../../schemas/quota.json"),
            EventType::Rep => include_str!("../../schemas/rep.json"),
            EventType::Survey => include_str!("../../schemas/survey.json"),
            EventType::FxRate => include_str!("../../schemas/fx_rate.json"),
        }
    }
}

/// What a field holds, as the decoder checks it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// Any JSON string (names, regions, comments; may be empty).
    Text,
    /// A non-empty string id.
    Id,
    /// A string from a closed list.
    Enum(Vec<String>),
    /// ISO 4217-shaped code: three upper-case ASCII letters.
    Currency,
    /// Decimal string, rounded half-even to cents, at most 16 integer digits.
    Money,
    /// Decimal string without rounding to cents (fx rates).
    Rate,
    /// RFC 3339 instant with an offset.
    Instant,
    /// `YYYY-MM-DD` calendar date; `not_before` names a date field it may not precede.
    Date { not_before: Option<String> },
    /// JSON integer with optional bounds.
    Integer { min: Option<i64>, max: Option<i64> },
    /// JSON number with optional bounds.
    Number { min: Option<f64>, max: Option<f64> },
    /// JSON boolean.
    Bool,
}

/// One field of an event type, in contract order.
#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub required: bool,
    pub kind: FieldKind,
}

/// The rules of one event type.
#[derive(Debug, Clone)]
pub struct Schema {
    pub event_type: EventType,
    pub default_topic: String,
    pub fields: Vec<FieldSpec>,
}

impl Schema {
    /// Loads the schema compiled into the binary from `schemas/<name>.json`.
    pub fn builtin(event_type: EventType) -> Result<Schema, InternalError> {
        let doc: Value = serde_json::from_str(event_type.schema_text())
            .map_err(|e| InternalError::new(format!("schemas/{}.json: {e}", event_type.name())))?;
        Schema::from_json(event_type, &doc)
    }

    /// Builds the field rules from a JSON Schema document.
    pub fn from_json(event_type: EventType, doc: &Value) -> Result<Schema, InternalError> {
        let bad =
            |what: &str| InternalError::new(format!("schemas/{}.json: {what}", event_type.name()));
        let required: Vec<&str> = doc["required"]
            .as_array()
            .ok_or_else(|| bad("`required` is not an array"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let props = doc["properties"]
            .as_object()
            .ok_or_else(|| bad("`properties` is not an object"))?;
        let mut fields = Vec::with_capacity(props.len());
        for (name, p) in props {
            let kind = field_kind(p)
                .ok_or_else(|| bad(&format!("field `{name}` has no kind the decoder knows")))?;
            fields.push(FieldSpec {
                name: name.clone(),
                required: required.contains(&name.as_str()),
                kind,
            });
        }
        let default_topic = doc["x-topic"]
            .as_str()
            .ok_or_else(|| bad("`x-topic` is missing"))?
            .to_string();
        Ok(Schema {
            event_type,
            default_topic,
            fields,
        })
    }
}

fn field_kind(p: &Value) -> Option<FieldKind> {
    if let Some(kind) = p["x-quotaflow"].as_str() {
        return match kind {
            "id" => Some(FieldKind::Id),
            "money" => Some(FieldKind::Money),
            "rate" => Some(FieldKind::Rate),
            "currency" => Some(FieldKind::Currency),
            _ => None,
        };
    }
    match p["format"].as_str() {
        Some("date-time") => return Some(FieldKind::Instant),
        Some("date") => {
            return Some(FieldKind::Date {
                not_before: p["x-not-before"].as_str().map(str::to_string),
            })
        }
        _ => {}
    }
    if let Some(values) = p["enum"].as_array() {
        return Some(FieldKind::Enum(
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
        ));
    }
    // "type" may be a string or ["string", "null"] for optional fields.
    let ty = match &p["type"] {
        Value::String(s) => s.as_str(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).find(|t| *t != "null")?,
        _ => return None,
    };
    match ty {
        "string" => Some(FieldKind::Text),
        "boolean" => Some(FieldKind::Bool),
        "integer" => Some(FieldKind::Integer {
            min: p["minimum"].as_i64(),
            max: p["maximum"].as_i64(),
        }),
        "number" => Some(FieldKind::Number {
            min: p["minimum"].as_f64(),
            max: p["maximum"].as_f64(),
        }),
        _ => None,
    }
}
