//! Alerting on the snapshot's tables. A rule (pipeline file `[[alerts]]`) is a query that
//! returns the rows breaching it: `key` (what the alert is about), `value`, `message`. Each
//! (rule, key) has a lifecycle kept in the state, so a restart neither re-fires nor forgets:
//! it fires when the key first breaches, stays firing without repeating while it breaches, and
//! resolves when it stops. Both transitions are events with a stable `alert_id`
//! (`rule/key/snapshot it fired in`), handed to `deliver` once the snapshot holding them is
//! durable.

pub mod deliver;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::Micros;

/// One (rule, key) and where its lifecycle stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub rule: String,
    pub severity: String,
    pub key: String,
    pub firing: bool,
    pub value: Option<f64>,
    pub message: String,
    pub fired_at: Option<Micros>,
    pub resolved_at: Option<Micros>,
    pub fired_snapshot: u64,
    pub resolved_snapshot: Option<u64>,
}

/// A row a rule returned.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    pub rule: String,
    pub severity: String,
    pub key: String,
    pub value: Option<f64>,
    pub message: String,
}

/// A lifecycle transition to deliver; its JSON form is `schemas/alert_event.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// `alert_id/transition`: unique per event, the receiver's de-duplication key.
    pub event_id: String,
    /// The same for the `fired` and the `resolved` event of one alert.
    pub alert_id: String,
    /// `fired` or `resolved`.
    pub transition: String,
    pub pipeline: String,
    pub rule: String,
    pub severity: String,
    pub key: String,
    pub value: Option<f64>,
    pub message: String,
    /// Event-clock instants (RFC 3339).
    pub fired_at: Option<String>,
    pub resolved_at: Option<String>,
    /// The snapshot that recorded the transition.
    pub snapshot_id: u64,
}

/// Alerts by (rule, key).
pub type AlertBook = BTreeMap<(String, String), Alert>;

/// Moves every lifecycle on by one evaluation (snapshot `snapshot_id`, event clock `as_of`)
/// and returns the transitions.
pub fn apply(
    book: &mut AlertBook,
    breaches: Vec<Breach>,
    pipeline: &str,
    snapshot_id: u64,
    as_of: Option<Micros>,
) -> Vec<AlertEvent> {
    apply_evaluated(book, breaches, None, pipeline, snapshot_id, as_of)
}

/// [`apply`] when only the rules `evaluated` ran (`None`: all): the firing alerts of the
/// others stay as they are (their inputs did not change).
pub fn apply_evaluated(
    book: &mut AlertBook,
    breaches: Vec<Breach>,
    evaluated: Option<&[String]>,
    pipeline: &str,
    snapshot_id: u64,
    as_of: Option<Micros>,
) -> Vec<AlertEvent> {
    let ran = |rule: &str| evaluated.is_none_or(|e| e.iter().any(|r| r == rule));
    let mut events = Vec::new();
    let mut breaching: BTreeMap<(String, String), Breach> = BTreeMap::new();
    for b in breaches {
        breaching
            .entry((b.rule.clone(), b.key.clone()))
            .or_insert(b);
    }
    for (id, alert) in book.iter_mut() {
        if alert.firing && ran(&id.0) && !breaching.contains_key(id) {
            alert.firing = false;
            alert.resolved_at = as_of;
            alert.resolved_snapshot = Some(snapshot_id);
            events.push(event(alert, "resolved", pipeline, snapshot_id));
        }
    }
    for (id, b) in breaching {
        match book.get_mut(&id) {
            Some(alert) if alert.firing => {
                alert.value = b.value;
                alert.message = b.message;
            }
            _ => {
                let alert = Alert {
                    alert_id: format!("{}/{}/{snapshot_id}", b.rule, b.key),
                    rule: b.rule,
                    severity: b.severity,
                    key: b.key,
                    firing: true,
                    value: b.value,
                    message: b.message,
                    fired_at: as_of,
                    resolved_at: None,
                    fired_snapshot: snapshot_id,
                    resolved_snapshot: None,
                };
                events.push(event(&alert, "fired", pipeline, snapshot_id));
                book.insert(id, alert);
            }
        }
    }
    events
}

fn event(a: &Alert, transition: &str, pipeline: &str, snapshot_id: u64) -> AlertEvent {
    let instant = |t: Option<Micros>| {
        t.and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    AlertEvent {
        event_id: format!("{}/{transition}", a.alert_id),
        alert_id: a.alert_id.clone(),
        transition: transition.to_string(),
        pipeline: pipeline.to_string(),
        rule: a.rule.clone(),
        severity: a.severity.clone(),
        key: a.key.clone(),
        value: a.value,
        message: a.message.clone(),
        fired_at: instant(a.fired_at),
        resolved_at: instant(a.resolved_at),
        snapshot_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breach(key: &str, value: f64) -> Breach {
        Breach {
            rule: "r".into(),
            severity: "warning".into(),
            key: key.into(),
            value: Some(value),
            message: format!("{key} at {value}"),
        }
    }

    #[test]
    fn fires_once_resolves_once_and_fires_anew() {
        let mut book = AlertBook::new();
        let e = apply(&mut book, vec![breach("a", 1.0)], "p", 1, Some(10));
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].event_id.as_str(), e[0].alert_id.as_str()),
            ("r/a/1/fired", "r/a/1")
        );
        assert_eq!(
            e[0].fired_at.as_deref(),
            Some("1970-01-01T00:00:00.000010Z")
        );
        // Still breaching: no event, the value follows.
        assert!(apply(&mut book, vec![breach("a", 2.0)], "p", 2, Some(20)).is_empty());
        assert_eq!(book[&("r".into(), "a".into())].value, Some(2.0));
        // A restart restores the book from the snapshot: still no repeat.
        let mut restored: AlertBook =
            bincode::deserialize(&bincode::serialize(&book).unwrap()).unwrap();
        assert!(apply(&mut restored, vec![breach("a", 3.0)], "p", 3, Some(30)).is_empty());
        let e = apply(&mut restored, vec![], "p", 4, Some(40));
        assert_eq!(
            (e[0].event_id.as_str(), e[0].alert_id.as_str()),
            ("r/a/1/resolved", "r/a/1")
        );
        assert!(apply(&mut restored, vec![], "p", 5, Some(50)).is_empty());
        let e = apply(&mut restored, vec![breach("a", 1.0)], "p", 6, Some(60));
        assert_eq!(
            (e[0].event_id.as_str(), e[0].alert_id.as_str()),
            ("r/a/6/fired", "r/a/6")
        );
    }
}
