//! Alerting on the snapshot's tables. A rule (pipeline file `[[alerts]]`) is a query that
//! returns the rows breaching it: `key` (what the alert is about), `value`, `message`. Each
//! (rule, key) has a lifecycle kept in the state, so a restart neither re-fires nor forgets:
//! it fires when the key first breaches, stays firing without repeating while it breaches, and
//! resolves when it stops. Both transitions are events with a stable `alert_id`
//! (`rule/key/snapshot it fired in`), delivered to the log once the snapshot holding them is
//! durable.

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

/// A lifecycle transition to deliver.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent {
    pub alert_id: String,
    /// `fired` or `resolved`.
    pub transition: &'static str,
    pub rule: String,
    pub severity: String,
    pub key: String,
    pub value: Option<f64>,
    pub message: String,
    pub snapshot_id: u64,
}

/// Alerts by (rule, key).
pub type AlertBook = BTreeMap<(String, String), Alert>;

/// Moves every lifecycle on by one evaluation (snapshot `snapshot_id`, event clock `as_of`)
/// and returns the transitions.
pub fn apply(
    book: &mut AlertBook,
    breaches: Vec<Breach>,
    snapshot_id: u64,
    as_of: Option<Micros>,
) -> Vec<AlertEvent> {
    let mut events = Vec::new();
    let mut breaching: BTreeMap<(String, String), Breach> = BTreeMap::new();
    for b in breaches {
        breaching
            .entry((b.rule.clone(), b.key.clone()))
            .or_insert(b);
    }
    for (id, alert) in book.iter_mut() {
        if alert.firing && !breaching.contains_key(id) {
            alert.firing = false;
            alert.resolved_at = as_of;
            alert.resolved_snapshot = Some(snapshot_id);
            events.push(event(alert, "resolved", snapshot_id));
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
                events.push(event(&alert, "fired", snapshot_id));
                book.insert(id, alert);
            }
        }
    }
    events
}

fn event(a: &Alert, transition: &'static str, snapshot_id: u64) -> AlertEvent {
    AlertEvent {
        alert_id: a.alert_id.clone(),
        transition,
        rule: a.rule.clone(),
        severity: a.severity.clone(),
        key: a.key.clone(),
        value: a.value,
        message: a.message.clone(),
        snapshot_id,
    }
}

/// Delivers transitions to the log (one line each, JSON in the `alert` field).
pub fn deliver_to_log(events: &[AlertEvent]) {
    for e in events {
        let json = serde_json::to_string(e).unwrap_or_default();
        match e.transition {
            "fired" => tracing::warn!(alert = %json, "alert fired"),
            _ => tracing::info!(alert = %json, "alert resolved"),
        }
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
        let e = apply(&mut book, vec![breach("a", 1.0)], 1, Some(10));
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].transition, e[0].alert_id.as_str()),
            ("fired", "r/a/1")
        );
        // Still breaching: no event, the value follows.
        assert!(apply(&mut book, vec![breach("a", 2.0)], 2, Some(20)).is_empty());
        assert_eq!(book[&("r".into(), "a".into())].value, Some(2.0));
        // A restart restores the book from the snapshot: still no repeat.
        let mut restored: AlertBook =
            bincode::deserialize(&bincode::serialize(&book).unwrap()).unwrap();
        assert!(apply(&mut restored, vec![breach("a", 3.0)], 3, Some(30)).is_empty());
        let e = apply(&mut restored, vec![], 4, Some(40));
        assert_eq!(
            (e[0].transition, e[0].alert_id.as_str()),
            ("resolved", "r/a/1")
        );
        assert!(apply(&mut restored, vec![], 5, Some(50)).is_empty());
        let e = apply(&mut restored, vec![breach("a", 1.0)], 6, Some(60));
        assert_eq!(
            (e[0].transition, e[0].alert_id.as_str()),
            ("fired", "r/a/6")
        );
    }
}
