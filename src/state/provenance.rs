//! Where the state's figures came from, kept cheaply enough to live in the state: for every
//! entity (deal, quota record, roster entry, fx rate) each message received about it, with its
//! partition, offset and how the fold took it ([`Received`]); in each rep-day of the grain the
//! range of offsets of each partition its activities were read from ([`Spans`]).
//! Bounded by keys × versions and rep-days × partitions like the rest of the state, never one
//! record per event: `quotaflow explain` names the Kafka messages behind a figure from this.

use serde::{Deserialize, Serialize};

use super::{Folded, Map, State, Versioned};
use crate::event::Event;

/// A message's place in its topic (the topic is the entity kind's, from the pipeline file).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
}

/// The offsets of one partition that a rep-day's activities were read from, first and last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

/// The spans of a rep-day: the first partition inline, any other in `more` (a rep's
/// activities share a key, so they come from one partition nearly always, and the grain holds
/// no allocation per rep-day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spans {
    /// `partition` < 0: none yet (a cell built without messages, as benchmarks build them).
    head: Span,
    /// Other partitions (a boxed slice: no allocation, and two words, while empty).
    more: Box<[Span]>,
}

impl Default for Spans {
    fn default() -> Spans {
        Spans {
            head: Span {
                partition: -1,
                first: 0,
                last: 0,
            },
            more: Box::default(),
        }
    }
}

impl Spans {
    /// Widens the span of `at`'s partition to take in its offset.
    pub fn widen(&mut self, at: Origin) {
        let grow = |s: &mut Span| {
            s.first = s.first.min(at.offset);
            s.last = s.last.max(at.offset);
        };
        let fresh = Span {
            partition: at.partition,
            first: at.offset,
            last: at.offset,
        };
        if self.head.partition < 0 {
            self.head = fresh;
        } else if self.head.partition == at.partition {
            grow(&mut self.head);
        } else {
            match self.more.iter_mut().find(|s| s.partition == at.partition) {
                Some(s) => grow(s),
                None => {
                    let mut more = std::mem::take(&mut self.more).into_vec();
                    more.push(fresh);
                    self.more = more.into_boxed_slice();
                }
            }
        }
    }

    /// Every span, by partition.
    pub fn all(&self) -> Vec<Span> {
        let mut out: Vec<Span> = std::iter::once(self.head)
            .filter(|s| s.partition >= 0)
            .chain(self.more.iter().copied())
            .collect();
        out.sort_by_key(|s| s.partition);
        out
    }
}

/// How the fold took one message about an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arrival {
    /// A new version, the highest so far: it became the entity's after-image.
    Applied,
    /// A new version lower than one already received (out of order): kept in the history,
    /// never the after-image.
    Superseded,
    /// A version already received: counted as `duplicate`, changed nothing.
    Duplicate,
    /// Older than the watermark minus the allowed lateness: refused as `late` (a dead letter).
    Late,
}

impl Arrival {
    pub fn as_str(self) -> &'static str {
        match self {
            Arrival::Applied => "applied",
            Arrival::Superseded => "superseded",
            Arrival::Duplicate => "duplicate",
            Arrival::Late => "late",
        }
    }
}

/// One message received about an entity: 24 bytes, its origin's fields side by side (an
/// `Origin` inside would be padded to 16 bytes and the whole to 32; an entity keeps one per
/// message). Serialised as `(version, origin, arrival)`, as it always was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ReceivedAs", into = "ReceivedAs")]
pub struct Received {
    pub version: i64,
    offset: i64,
    partition: i32,
    pub arrival: Arrival,
}

impl Received {
    pub fn new(version: i64, origin: Origin, arrival: Arrival) -> Received {
        Received {
            version,
            offset: origin.offset,
            partition: origin.partition,
            arrival,
        }
    }

    /// Where the message was read.
    pub fn origin(&self) -> Origin {
        Origin {
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// [`Received`] as segments hold it.
#[derive(Serialize, Deserialize)]
struct ReceivedAs {
    version: i64,
    origin: Origin,
    arrival: Arrival,
}

impl From<ReceivedAs> for Received {
    fn from(r: ReceivedAs) -> Received {
        Received::new(r.version, r.origin, r.arrival)
    }
}

impl From<Received> for ReceivedAs {
    fn from(r: Received) -> ReceivedAs {
        ReceivedAs {
            version: r.version,
            origin: r.origin(),
            arrival: r.arrival,
        }
    }
}

/// Arrivals kept per entity: every new version, and duplicates and late copies up to this many
/// arrivals in all (a resend storm must not grow an entity without bound).
pub const RECEIVED_KEPT: usize = 64;

impl<T, H> Versioned<T, H> {
    /// The message that carried `version` (its first arrival), if it is known.
    pub fn origin_of(&self, version: i64) -> Option<Origin> {
        self.received
            .iter()
            .find(|r| {
                r.version == version && matches!(r.arrival, Arrival::Applied | Arrival::Superseded)
            })
            .map(|r| r.origin())
    }

    /// Records a message about this entity that changed nothing (a duplicate or a late copy),
    /// within [`RECEIVED_KEPT`].
    pub(super) fn note(&mut self, version: i64, origin: Origin, arrival: Arrival) -> bool {
        if self.received.len() >= RECEIVED_KEPT {
            return false;
        }
        self.received.reserve_exact(1);
        self.received.push(Received::new(version, origin, arrival));
        true
    }
}

impl State {
    /// Records that the entity version `event` carries, read at `origin`, was refused as late
    /// (older than the watermark minus the allowed lateness), on the entity if the state
    /// holds it: its explanation lists every message received about it.
    pub fn note_late(&mut self, event: &Event, origin: Origin) {
        let late = Arrival::Late;
        match event {
            Event::Deal(d) => {
                if let Some(e) = self.deals.get_mut(&d.deal_id) {
                    if e.note(d.version, origin, late) {
                        self.dirty.deals.touch(d.deal_id.clone(), self.deals.len());
                    }
                } else {
                    self.residency.deals.late(&d.deal_id, d.version, origin);
                }
            }
            Event::Quota(q) => {
                let key = (q.rep_id.clone(), q.period_start);
                if let Some(e) = self.quotas.get_mut(&key) {
                    if e.note(q.version, origin, late) {
                        self.dirty.quotas.touch(key, self.quotas.len());
                    }
                }
            }
            Event::FxRate(f) => {
                let key = (f.currency.clone(), f.effective_date);
                if let Some(e) = self.fx.get_mut(&key) {
                    if e.note(f.version, origin, late) {
                        self.dirty.fx.touch(key, self.fx.len());
                    }
                }
            }
            Event::Rep(r) => {
                if let Some(e) = self.roster.get_mut(&r.rep_id) {
                    if e.note(r.version, origin, late) {
                        self.dirty.roster.touch(r.rep_id.clone(), self.roster.len());
                    }
                }
            }
            Event::Activity(_) | Event::Survey(_) => {}
        }
    }
}

/// Folds version `v` of an entity, read at `origin`; the first arrival of an (entity, version)
/// wins, the highest version is the after-image. The map holds an entity as it is or boxed
/// (`V` is a `Versioned` or a `Box` of one).
pub(super) fn fold_entity<K, T, H, V>(
    map: &mut Map<K, V>,
    key: K,
    v: i64,
    item: T,
    h: H,
    origin: Origin,
) -> Folded
where
    K: std::hash::Hash + Eq,
    V: std::borrow::BorrowMut<Versioned<T, H>> + From<Versioned<T, H>>,
{
    use std::collections::hash_map::Entry;
    match map.entry(key) {
        Entry::Occupied(mut o) => {
            let e: &mut Versioned<T, H> = o.get_mut().borrow_mut();
            match e.history.binary_search_by_key(&v, |(version, _)| *version) {
                Ok(_) => {
                    e.note(v, origin, Arrival::Duplicate);
                    return Folded::Duplicate;
                }
                Err(at) => {
                    // Grown one at a time: an entity (a deal, quota, roster or fx record)
                    // holds a handful of versions, and a vector doubled to four (its least)
                    // holds up to twice what it needs (32 bytes a deal of three versions).
                    e.history.reserve_exact(1);
                    e.history.insert(at, (v, h));
                }
            }
            let arrival = if v > e.latest_version {
                e.latest = item;
                e.latest_version = v;
                Arrival::Applied
            } else {
                Arrival::Superseded
            };
            e.received.reserve_exact(1);
            e.received.push(Received::new(v, origin, arrival));
            Folded::Ok
        }
        Entry::Vacant(slot) => {
            slot.insert(V::from(Versioned {
                latest: item,
                latest_version: v,
                history: vec![(v, h)],
                received: vec![Received::new(v, origin, Arrival::Applied)],
            }));
            Folded::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: i64) -> Origin {
        Origin {
            partition: 2,
            offset,
        }
    }

    /// An entity keeps one per message: 24 bytes, and the segments hold it as they did when
    /// it was 32 (as do a deal's ids, inline now).
    #[test]
    fn a_message_received_is_24_bytes_and_segments_hold_it_as_before() {
        assert_eq!(std::mem::size_of::<Received>(), 24);
        let origin = Origin {
            partition: 3,
            offset: 1 << 40,
        };
        let r = Received::new(7, origin, Arrival::Superseded);
        let bytes = bincode::serialize(&r).unwrap();
        let before = (7i64, origin, Arrival::Superseded);
        assert_eq!(bytes, bincode::serialize(&before).unwrap());
        assert_eq!(bincode::deserialize::<Received>(&bytes).unwrap(), r);
        assert_eq!(r.origin(), origin);
        let id = smol_str::SmolStr::new("deal-42-0001234");
        assert!(!id.is_heap_allocated());
        let as_string = bincode::serialize(&id.to_string()).unwrap();
        assert_eq!(bincode::serialize(&id).unwrap(), as_string);
    }

    #[test]
    fn every_arrival_is_kept_with_how_it_was_taken() {
        let mut m: Map<&str, Versioned<&str>> = Map::default();
        assert_eq!(fold_entity(&mut m, "d", 2, "two", (), at(10)), Folded::Ok);
        assert_eq!(fold_entity(&mut m, "d", 1, "one", (), at(11)), Folded::Ok);
        assert_eq!(
            fold_entity(&mut m, "d", 2, "again", (), at(12)),
            Folded::Duplicate
        );
        assert_eq!(fold_entity(&mut m, "d", 3, "three", (), at(13)), Folded::Ok);
        let d = &m["d"];
        let got: Vec<_> = d
            .received
            .iter()
            .map(|r| (r.version, r.origin().offset, r.arrival))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, 10, Arrival::Applied),
                (1, 11, Arrival::Superseded),
                (2, 12, Arrival::Duplicate),
                (3, 13, Arrival::Applied),
            ]
        );
        assert_eq!(
            (d.latest, d.origin_of(3), d.origin_of(2)),
            ("three", Some(at(13)), Some(at(10)))
        );
        // grown one at a time, not doubled
        assert_eq!((d.history.capacity(), d.received.capacity()), (3, 4));
    }

    #[test]
    fn a_rep_days_spans_cover_every_partition_it_was_read_from() {
        let mut s = Spans::default();
        assert!(s.all().is_empty());
        for (partition, offset) in [(1, 50), (1, 40), (1, 70), (0, 9), (1, 60), (0, 3)] {
            s.widen(Origin { partition, offset });
        }
        let got: Vec<_> = s
            .all()
            .iter()
            .map(|s| (s.partition, s.first, s.last))
            .collect();
        assert_eq!(got, vec![(0, 3, 9), (1, 40, 70)]);
    }

    #[test]
    fn a_resend_storm_is_bounded() {
        let mut m: Map<&str, Versioned<&str>> = Map::default();
        fold_entity(&mut m, "d", 1, "one", (), at(0));
        for i in 1..1000 {
            fold_entity(&mut m, "d", 1, "one", (), at(i));
        }
        assert_eq!(m["d"].received.len(), RECEIVED_KEPT);
        // A new version is always kept.
        fold_entity(&mut m, "d", 2, "two", (), at(5000));
        assert_eq!(m["d"].origin_of(2), Some(at(5000)));
    }
}
