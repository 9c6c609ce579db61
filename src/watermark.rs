//! The watermark and lateness of EVENTS.md ("Duplicates, order and lateness").
//!
//! The watermark is the minimum, over the assigned partitions that are not idle, of the highest
//! `occurred_at` read from each. The highest instants live in the state (`State::partition_high`),
//! so a restart goes on with the same watermark; idleness is a property of the running consumer
//! and lives here: a partition is idle once it has been at its end for `idle_timeout` of wall
//! time, or at once in `--once` mode. An event older than watermark − `allowed_lateness` is
//! `late`. While a partition that is not idle has delivered no event yet, there is no
//! watermark and nothing is late: a replay that reads one partition long before another must
//! not drop the other's older events.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::event::Micros;

/// topic → partition → highest `occurred_at` of a valid event read from it (kept in the state).
pub type Highs = BTreeMap<String, BTreeMap<i32, Micros>>;

/// Idleness of the partitions of one run, and the watermark computed from it.
pub struct Watermark {
    idle_timeout: Duration,
    /// Idle as soon as at the end (`--once`).
    once: bool,
    allowed_lateness: Micros,
    /// Partitions at their end: topic → partition → since when.
    at_end: HashMap<String, BTreeMap<i32, Instant>>,
    /// The watermark as last computed (`refresh`); lower than the true one at worst, so a
    /// stale value only ever lets an event through, never marks it late.
    current: Option<Micros>,
    /// The partition that set `current`: the one holding the watermark back.
    held_by: Option<(String, i32)>,
}

impl Watermark {
    pub fn new(idle_timeout: Duration, allowed_lateness: Micros, once: bool) -> Watermark {
        Watermark {
            idle_timeout,
            once,
            allowed_lateness,
            at_end: HashMap::new(),
            current: None,
            held_by: None,
        }
    }

    /// A message arrived from the partition: it is not at its end.
    pub fn read(&mut self, topic: &str, partition: i32) {
        if let Some(parts) = self.at_end.get_mut(topic) {
            parts.remove(&partition);
        }
    }

    /// The partition reached its end (an end-of-partition event).
    pub fn reached_end(&mut self, topic: &str, partition: i32, now: Instant) {
        self.at_end
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_insert(now);
    }

    fn idle(&self, topic: &str, partition: i32, now: Instant) -> bool {
        self.at_end
            .get(topic)
            .and_then(|parts| parts.get(&partition))
            .is_some_and(|since| self.once || now.duration_since(*since) >= self.idle_timeout)
    }

    /// Recomputes the watermark over the `assigned` partitions from the state's highs.
    pub fn refresh<'a>(
        &mut self,
        highs: &Highs,
        assigned: impl IntoIterator<Item = (&'a str, i32)>,
        now: Instant,
    ) {
        let mut min: Option<(Micros, &str, i32)> = None;
        for (topic, p) in assigned {
            if self.idle(topic, p, now) {
                continue;
            }
            match highs.get(topic).and_then(|h| h.get(&p)) {
                Some(high) if min.is_none_or(|(m, _, _)| *high < m) => {
                    min = Some((*high, topic, p));
                }
                Some(_) => {}
                None => {
                    self.current = None;
                    self.held_by = Some((topic.to_string(), p));
                    return;
                }
            }
        }
        // Every partition idle: the watermark stays where it was.
        if let Some((high, topic, p)) = min {
            self.current = Some(high);
            if self
                .held_by
                .as_ref()
                .is_none_or(|(t, q)| t != topic || *q != p)
            {
                self.held_by = Some((topic.to_string(), p));
            }
        }
    }

    /// The partition that holds the watermark back (the one with the lowest high among those
    /// not idle, or one that has delivered nothing yet), as last refreshed.
    pub fn held_by(&self) -> Option<(&str, i32)> {
        self.held_by.as_ref().map(|(t, p)| (t.as_str(), *p))
    }

    /// The watermark as last refreshed.
    pub fn current(&self) -> Option<Micros> {
        self.current
    }

    /// Whether an event at `occurred_at` is late: older than watermark − allowed lateness.
    pub fn is_late(&self, occurred_at: Micros) -> bool {
        self.current
            .is_some_and(|w| occurred_at < w.saturating_sub(self.allowed_lateness))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Micros = 86_400_000_000;

    fn state(highs: &[(&str, i32, Micros)]) -> Highs {
        let mut s = Highs::new();
        for (t, p, h) in highs {
            s.entry(t.to_string()).or_default().insert(*p, *h);
        }
        s
    }

    const ASSIGNED: [(&str, i32); 3] = [("a", 0), ("a", 1), ("b", 0)];

    #[test]
    fn minimum_over_partitions_that_are_not_idle() {
        let t0 = Instant::now();
        let mut w = Watermark::new(Duration::from_secs(10), 120 * DAY, false);
        // b/0 has delivered nothing yet: no watermark, nothing late.
        let early = state(&[("a", 0, 300 * DAY), ("a", 1, 100 * DAY)]);
        w.refresh(&early, ASSIGNED, t0);
        assert_eq!(w.current(), None);
        assert_eq!(w.held_by(), Some(("b", 0)));
        assert!(!w.is_late(0));
        let s = state(&[
            ("a", 0, 300 * DAY),
            ("a", 1, 100 * DAY),
            ("b", 0, 250 * DAY),
        ]);
        w.refresh(&s, ASSIGNED, t0);
        assert_eq!(w.current(), Some(100 * DAY));
        assert_eq!(w.held_by(), Some(("a", 1)));
        // Exactly at watermark − lateness is not late; a microsecond older is.
        assert!(!w.is_late(-20 * DAY));
        assert!(w.is_late(-20 * DAY - 1));
        // The slow partition at its end holds the watermark back until idle_timeout has passed.
        w.reached_end("a", 1, t0);
        w.refresh(&s, ASSIGNED, t0 + Duration::from_secs(9));
        assert_eq!(w.current(), Some(100 * DAY));
        w.refresh(&s, ASSIGNED, t0 + Duration::from_secs(10));
        assert_eq!(w.current(), Some(250 * DAY));
        assert_eq!(w.held_by(), Some(("b", 0)));
        assert!(w.is_late(129 * DAY));
        // A message from it makes it active again.
        w.read("a", 1);
        w.refresh(&s, ASSIGNED, t0 + Duration::from_secs(11));
        assert_eq!(w.current(), Some(100 * DAY));
    }

    #[test]
    fn once_mode_is_idle_at_the_end_and_all_idle_keeps_the_watermark() {
        let t0 = Instant::now();
        let s = state(&[("a", 0, 300 * DAY), ("a", 1, 100 * DAY)]);
        let assigned = [("a", 0), ("a", 1), ("b", 0)];
        let mut w = Watermark::new(Duration::from_secs(10), 120 * DAY, true);
        assert!(!w.is_late(0), "no watermark before the first refresh");
        // b/0 is empty: at its end at once, so idle in --once mode.
        w.reached_end("b", 0, t0);
        w.reached_end("a", 1, t0);
        w.refresh(&s, assigned, t0);
        assert_eq!(w.current(), Some(300 * DAY));
        w.reached_end("a", 0, t0);
        w.refresh(&s, assigned, t0);
        assert_eq!(w.current(), Some(300 * DAY));
    }
}
