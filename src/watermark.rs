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
//!
//! [`Alignment`] keeps the partitions reading at about the same event time: one that reads
//! more than `source.max_read_ahead` past the slowest partition still reading is paused until
//! that one catches up. Without it a partition the broker serves slowly holds the watermark
//! back while the others read on, and every month between the two stays open in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

    /// Whether the partition is at its end (idle or not yet).
    fn is_at_end(&self, topic: &str, partition: i32) -> bool {
        self.at_end
            .get(topic)
            .is_some_and(|parts| parts.contains_key(&partition))
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
        match lowest(highs, assigned, |t, p| self.idle(t, p, now)) {
            Lowest::Undelivered(topic, p) => {
                self.current = None;
                self.held_by = Some((topic.to_string(), p));
            }
            Lowest::At(high, topic, p) => {
                self.current = Some(high);
                if self
                    .held_by
                    .as_ref()
                    .is_none_or(|(t, q)| t != topic || *q != p)
                {
                    self.held_by = Some((topic.to_string(), p));
                }
            }
            // Every partition idle: the watermark stays where it was.
            Lowest::Nothing => {}
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

/// Which partitions are held back because they read too far ahead in event time (watermark
/// alignment). Pure: the run loop does not read the partitions it holds.
pub struct Alignment {
    /// How far a partition's highest event time may run past the slowest partition still
    /// reading before it is paused; zero turns alignment off.
    max_ahead: Micros,
    held: BTreeSet<(String, i32)>,
}

/// Partitions newly held back and newly released, as [`Alignment::align`] decided.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub pause: Vec<(String, i32)>,
    pub resume: Vec<(String, i32)>,
}

impl Alignment {
    pub fn new(max_ahead: Micros) -> Alignment {
        Alignment {
            max_ahead,
            held: BTreeSet::new(),
        }
    }

    /// Decides, from the state's highs, which `assigned` partitions are paused from now on.
    /// The floor is the lowest high among the partitions still reading (not at their end;
    /// paused ones count, so the lowest of them is resumed when every other one is at its
    /// end). A partition more than `max_ahead` past the floor is paused; a paused one is
    /// resumed once within half of it (the gap keeps a partition from being paused and
    /// resumed at every refresh). The
    /// partition at the floor always reads, so reading never stops. Before every partition
    /// still reading has delivered an event there is no floor and nothing is paused.
    pub fn align<'a>(
        &mut self,
        highs: &Highs,
        assigned: impl IntoIterator<Item = (&'a str, i32)> + Clone,
        watermark: &Watermark,
    ) -> Changes {
        let floor = match lowest(highs, assigned.clone(), |t, p| watermark.is_at_end(t, p)) {
            Lowest::At(floor, _, _) if self.max_ahead > 0 => Some(floor),
            _ => None,
        };
        let ahead = |t: &str, p: i32| match (floor, high_of(highs, t, p)) {
            (Some(f), Some(h)) => h.saturating_sub(f),
            _ => 0,
        };
        let mut changes = Changes::default();
        for (t, p) in assigned {
            if ahead(t, p) > self.max_ahead && !self.held.iter().any(|(ht, hp)| ht == t && *hp == p)
            {
                changes.pause.push((t.to_string(), p));
            }
        }
        self.held.retain(|(t, p)| {
            let keep = ahead(t, *p) > self.max_ahead / 2;
            if !keep {
                changes.resume.push((t.clone(), *p));
            }
            keep
        });
        self.held.extend(changes.pause.iter().cloned());
        changes
    }

    /// The partitions held back now: the run does not read them.
    pub fn held(&self) -> &BTreeSet<(String, i32)> {
        &self.held
    }
}

/// The highest event time read from a partition, if it has delivered one.
fn high_of(highs: &Highs, topic: &str, partition: i32) -> Option<Micros> {
    highs.get(topic).and_then(|h| h.get(&partition)).copied()
}

/// The lowest high among partitions, as [`lowest`] finds it.
enum Lowest<'a> {
    /// This partition has delivered nothing yet: no lowest high is known.
    Undelivered(&'a str, i32),
    /// The lowest high and its partition.
    At(Micros, &'a str, i32),
    /// Every partition was skipped.
    Nothing,
}

/// The lowest high among the `assigned` partitions that `skip` does not leave out (the
/// watermark leaves out idle ones, alignment those at their end).
fn lowest<'a>(
    highs: &Highs,
    assigned: impl IntoIterator<Item = (&'a str, i32)>,
    skip: impl Fn(&str, i32) -> bool,
) -> Lowest<'a> {
    let mut min = Lowest::Nothing;
    for (topic, p) in assigned {
        if skip(topic, p) {
            continue;
        }
        match high_of(highs, topic, p) {
            None => return Lowest::Undelivered(topic, p),
            Some(high) if matches!(min, Lowest::At(m, _, _) if m <= high) => {}
            Some(high) => min = Lowest::At(high, topic, p),
        }
    }
    min
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

    #[test]
    fn a_partition_too_far_ahead_is_paused_until_the_slowest_reading_one_catches_up() {
        let w = Watermark::new(Duration::from_secs(10), 120 * DAY, false);
        let mut a = Alignment::new(10 * DAY);
        // b/0 has delivered nothing yet: no floor, nothing paused.
        let early = state(&[("a", 0, 300 * DAY), ("a", 1, 100 * DAY)]);
        assert_eq!(a.align(&early, ASSIGNED, &w), Changes::default());
        // a/0 is 200 days past the floor (a/1), b/0 exactly 10 days: only a/0 pauses.
        let s = state(&[
            ("a", 0, 300 * DAY),
            ("a", 1, 100 * DAY),
            ("b", 0, 110 * DAY),
        ]);
        let pause_a0 = Changes {
            pause: vec![("a".into(), 0)],
            resume: vec![],
        };
        assert_eq!(a.align(&s, ASSIGNED, &w), pause_a0);
        assert!(a.held().contains(&("a".to_string(), 0)));
        // Nothing changes while nothing moves.
        assert_eq!(a.align(&s, ASSIGNED, &w), Changes::default());
        // a/1 catches up to within 10 days, then within 5: only then is a/0 resumed.
        let closer = state(&[
            ("a", 0, 300 * DAY),
            ("a", 1, 290 * DAY),
            ("b", 0, 294 * DAY),
        ]);
        assert_eq!(a.align(&closer, ASSIGNED, &w), Changes::default());
        let caught_up = state(&[
            ("a", 0, 300 * DAY),
            ("a", 1, 295 * DAY),
            ("b", 0, 296 * DAY),
        ]);
        let resume_a0 = Changes {
            pause: vec![],
            resume: vec![("a".into(), 0)],
        };
        assert_eq!(a.align(&caught_up, ASSIGNED, &w), resume_a0);
        assert!(a.held().is_empty());
    }

    #[test]
    fn partitions_at_their_end_do_not_hold_the_others_back() {
        let t0 = Instant::now();
        let mut w = Watermark::new(Duration::from_secs(10), 120 * DAY, false);
        let mut a = Alignment::new(10 * DAY);
        let s = state(&[
            ("a", 0, 300 * DAY),
            ("a", 1, 100 * DAY),
            ("b", 0, 200 * DAY),
        ]);
        let paused = a.align(&s, ASSIGNED, &w);
        assert_eq!(paused.pause, vec![("a".into(), 0), ("b".into(), 0)]);
        // a/1 reaches its end (not idle yet for the watermark): the floor is the lowest paused
        // partition, which resumes; the other stays paused, 100 days past it.
        w.reached_end("a", 1, t0);
        let changes = a.align(&s, ASSIGNED, &w);
        assert_eq!(changes.resume, vec![("b".into(), 0)]);
        assert!(changes.pause.is_empty());
        assert_eq!(a.held().len(), 1);
        // Every partition at its end: nothing stays paused.
        w.reached_end("b", 0, t0);
        w.reached_end("a", 0, t0);
        assert_eq!(a.align(&s, ASSIGNED, &w).resume, vec![("a".into(), 0)]);
        // Alignment off: nothing is ever paused.
        let mut off = Alignment::new(0);
        let fresh = Watermark::new(Duration::from_secs(10), 120 * DAY, false);
        assert_eq!(off.align(&s, ASSIGNED, &fresh), Changes::default());
        assert!(a.held().is_empty());
    }
}
