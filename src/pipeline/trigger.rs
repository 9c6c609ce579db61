//! When a snapshot is cut: every `trigger_interval` of wall time that saw a message (in a
//! `--once` run, every `once_trigger_interval`: a replay pays only for the intermediate
//! snapshots that bound what a crash loses), and, with `trigger_events`, as soon as that many
//! messages were read since the last cut. One snapshot is in flight at a time; an interval that
//! comes due meanwhile is remembered, and the next cut starts as soon as the one in flight is
//! written. While one is in flight, reading goes on for the next until
//! `max_events_while_writing` messages, then waits for the write: a slow write (table
//! maintenance, a slow store) does not make the next cut, and the memory it holds, grow
//! without bound.

use crate::config::Snapshot;

pub(super) struct Trigger {
    interval: tokio::time::Interval,
    /// Messages that trigger a cut (0 = only the interval).
    events: u64,
    /// Messages read while a snapshot is in flight before reading waits for it (0 = no bound).
    while_writing: u64,
    /// An interval came due while a snapshot was in flight.
    due: bool,
}

impl Trigger {
    pub(super) fn new(snapshot: &Snapshot, once: bool) -> Trigger {
        let every = if once {
            snapshot.once_trigger_interval
        } else {
            snapshot.trigger_interval
        };
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Trigger {
            interval,
            events: snapshot.trigger_events,
            while_writing: snapshot.max_events_while_writing,
            due: false,
        }
    }

    /// The next interval tick.
    pub(super) async fn tick(&mut self) {
        self.interval.tick().await;
    }

    /// Whether `since_snapshot` messages call for a cut by count.
    pub(super) fn counted(&self, since_snapshot: u64) -> bool {
        self.events > 0 && since_snapshot >= self.events
    }

    /// Whether reading waits for the snapshot in flight (`writing`): `since_snapshot` messages
    /// are as many as the next cut may take in meanwhile.
    pub(super) fn waits_for_write(&self, since_snapshot: u64, writing: bool) -> bool {
        writing && self.while_writing > 0 && since_snapshot >= self.while_writing
    }

    /// Remembers an interval that came due while a snapshot was in flight.
    pub(super) fn set_due(&mut self) {
        self.due = true;
    }

    /// Whether an interval came due meanwhile (and forgets it).
    pub(super) fn take_due(&mut self) -> bool {
        std::mem::take(&mut self.due)
    }
}
