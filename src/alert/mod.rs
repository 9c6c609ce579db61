//! Alerting on the snapshot's tables. A rule (pipeline file `[[alerts]]`) is a query that
//! returns the rows breaching it: `key` (what the alert is about), `value`, `message`. Each
//! (rule, key) has a lifecycle kept in the state, so a restart neither re-fires nor forgets:
//! it fires when the key first breaches, stays firing without repeating while it breaches, and
//! resolves when it stops. Both transitions are events with a stable `alert_id`
//! (`rule/key/snapshot it fired in`), handed to `deliver` once the snapshot holding them is
//! durable.
//!
//! A resolved lifecycle never changes again. The book keeps it only until the event clock
//! leaves the month it resolved in ([`AlertBook::leave_before`]): the `alerts` table is
//! partitioned by that month, so the partition a snapshot last wrote holds it from then on,
//! and the book stays the size of what is firing and what resolved this month.

pub mod deliver;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::event::{Day, Micros};

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

/// The lifecycles a snapshot can still change or has still to write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    /// The firing lifecycle of each (rule, key) that breaches.
    pub firing: BTreeMap<(String, String), Alert>,
    /// Resolved lifecycles, by `alert_id`, of the months the event clock has not left.
    pub resolved: BTreeMap<String, Alert>,
}

impl AlertBook {
    /// Every lifecycle held: the firing ones by (rule, key), then the resolved ones by id.
    pub fn iter(&self) -> impl Iterator<Item = &Alert> {
        self.firing.values().chain(self.resolved.values())
    }

    pub fn len(&self) -> usize {
        self.firing.len() + self.resolved.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The months (first days, by `month_of` of `resolved_at`) that resolved lifecycles held
    /// here resolved in.
    pub fn resolved_months(&self, month_of: impl Fn(Micros) -> Day) -> BTreeSet<Day> {
        self.resolved
            .values()
            .filter_map(|a| a.resolved_at.map(&month_of))
            .collect()
    }

    /// Lets go of the lifecycles resolved in a month before `month` (by `month_of` of
    /// `resolved_at`): once the `alerts` table's partition of that month is written, nothing
    /// can resolve in it any more (the event clock only moves on). Returns how many left.
    pub fn leave_before(&mut self, month: Day, month_of: impl Fn(Micros) -> Day) -> usize {
        let before = self.resolved.len();
        self.resolved
            .retain(|_, a| a.resolved_at.is_none_or(|t| month_of(t) >= month));
        before - self.resolved.len()
    }
}

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
    let stopped: Vec<_> = book
        .firing
        .keys()
        .filter(|id| ran(&id.0) && !breaching.contains_key(*id))
        .cloned()
        .collect();
    for id in stopped {
        if let Some(mut alert) = book.firing.remove(&id) {
            alert.firing = false;
            alert.resolved_at = as_of;
            alert.resolved_snapshot = Some(snapshot_id);
            events.push(event(&alert, "resolved", pipeline, snapshot_id));
            book.resolved.insert(alert.alert_id.clone(), alert);
        }
    }
    for (id, b) in breaching {
        match book.firing.get_mut(&id) {
            Some(alert) => {
                alert.value = b.value;
                alert.message = b.message;
            }
            None => {
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
                book.firing.insert(id, alert);
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
        let mut book = AlertBook::default();
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
        assert_eq!(book.firing[&("r".into(), "a".into())].value, Some(2.0));
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

    /// A key that resolves and fires again within a month has both lifecycles in the book;
    /// the resolved one leaves once the month is over, and only then.
    #[test]
    fn resolved_lifecycles_stay_until_their_month_is_left() {
        let month = |t: Micros| (t / 100) as Day; // a "month" of 100 µs
        let mut book = AlertBook::default();
        apply(&mut book, vec![breach("a", 1.0)], "p", 1, Some(110));
        let e = apply(&mut book, vec![], "p", 2, Some(120));
        assert_eq!(e[0].event_id, "r/a/1/resolved");
        apply(&mut book, vec![breach("a", 1.0)], "p", 3, Some(130));
        assert_eq!(book.firing.len(), 1);
        assert_eq!(book.resolved.keys().collect::<Vec<_>>(), ["r/a/1"]);
        assert_eq!(
            book.iter().map(|a| a.alert_id.as_str()).collect::<Vec<_>>(),
            ["r/a/3", "r/a/1"]
        );
        assert_eq!(book.resolved_months(month), BTreeSet::from([1]));
        assert_eq!(book.leave_before(1, month), 0, "its month is not over");
        apply(&mut book, vec![], "p", 4, Some(250));
        assert_eq!(book.leave_before(2, month), 1);
        assert_eq!(book.resolved.keys().collect::<Vec<_>>(), ["r/a/3"]);
        assert!(book.firing.is_empty());
    }
}
