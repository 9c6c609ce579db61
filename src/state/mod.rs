//! Pipeline state: everything a snapshot needs to resume, bounded by keys × days.
//!
//! Facts fold into the rep × day grain on arrival (`daily`), entities keep their latest version
//! plus the set of versions seen (for duplicates, `stage_entered_at` and, for the roster, the
//! effective-dated hierarchy: `hierarchy`) and every message received about them, with its
//! offset; the grain keeps the offsets its activities were read from (`provenance`, for
//! `quotaflow explain`); fact ids are kept for the dedup horizon only. The
//! state owns the event clock (`as_of`), the next offset of every topic-partition, the
//! data-quality counters and a bounded log of recent dead letters. It never does I/O;
//! `tables` turns it into Arrow record batches for the SQL engine, and `segments` into the
//! segments of what changed since the last snapshot (the fold marks the keys it touches).

pub mod changes;
pub(crate) mod columns;
mod grain;
pub mod hierarchy;
pub mod provenance;
mod rep_ids;
pub mod residency;
pub mod segments;
pub mod tables;

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::calendar::Calendar;
use crate::event::{Activity, Day, Deal, Event, FxRate, Micros, Quota, Rep, Stage, Survey};
use crate::source::DeadLetter;
pub use changes::Pending;
use changes::{deal_days, Input};
use grain::Starts;
pub use grain::{DailyCounts, Grain, RepDay, Rollups};
use hierarchy::Placement;
use provenance::fold_entity;
pub use provenance::{Arrival, Origin, Received, Span, Spans};
pub use rep_ids::RepIds;

/// What folding one valid event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    Ok,
    Duplicate,
}

impl Folded {
    pub fn as_str(self) -> &'static str {
        match self {
            Folded::Ok => "ok",
            Folded::Duplicate => "duplicate",
        }
    }
}

/// An entity with its winning (highest-version) after-image and every version received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T, H = ()> {
    pub latest: T,
    pub latest_version: i64,
    /// Every version received, in version order, with what the metrics need of it (a sorted
    /// vector: an entity has a handful of versions, and a tree node per entity costs more).
    pub history: Vec<(i64, H)>,
    /// Every message received about it, in the order read (`provenance`).
    pub received: Vec<Received>,
}

/// Stage and time of one deal version: enough for `stage_entered_at` and stage conversion.
pub type DealVersion = (Stage, Micros);

/// A deal as the state holds it: boxed, so that the map's slots are a key and a pointer. A
/// hash map keeps up to half its slots free after it doubles, and a deal with its versions
/// is about 250 bytes: boxing them freed 84 MiB at 610,000 deals (docs/performance.md). (A
/// box serialises as what it holds: the segments are the same.)
pub type DealEntry = Box<Versioned<Deal, DealVersion>>;

/// The data-quality reason (METRICS.md `data_quality`) counting offsets the broker deleted
/// before quotaflow read them: offsets, not messages read.
pub const LOST_OFFSETS: &str = "lost_offsets";

/// Per topic, the offsets counted under [`LOST_OFFSETS`] in data-quality counters (topic →
/// outcome or reason → count); topics that lost none are left out.
pub fn lost_offsets(quality: &BTreeMap<String, BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    quality
        .iter()
        .filter_map(|(t, o)| o.get(LOST_OFFSETS).map(|n| (t.clone(), *n)))
        .collect()
}

/// Bytes of payload kept per dead letter in the snapshot's log.
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 4096;

/// An id as the state keeps it where it keeps no string (activity `event_id`s in the dedup
/// map, deals out of memory): its 128-bit xxh3 hash as (low, high) words. As a `u128` it would
/// align a map's slots to 16 bytes (a dedup slot with its event time to 32; as words, 24).
pub type IdHash = [u64; 2];

/// The [`IdHash`] of `id`.
pub fn id_hash(id: &str) -> IdHash {
    let h = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
    [h as u64, (h >> 64) as u64]
}

/// The hash maps of the state: foldhash, seeded per process (several times faster than the
/// default SipHash on these short keys, and still not predictable from input).
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The whole resumable state of a pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Id of the last snapshot written from (or restored into) this state; 0 before the first.
    pub snapshot_id: u64,
    /// Highest `occurred_at` of accepted, non-duplicate events.
    pub as_of: Option<Micros>,
    /// topic → partition → next offset to read.
    pub offsets: crate::source::Offsets,
    /// The rep × day grain, by rep id (`rep_ids`), with the offsets each rep-day was read from.
    pub daily: Grain,
    pub rep_ids: RepIds,
    pub rollups: Rollups,
    pub deals: Map<SmolStr, DealEntry>,
    /// Latest `occurred_at` of an activity naming the deal.
    pub deal_last_activity: Map<SmolStr, Micros>,
    /// Earliest `occurred_at` of any deal version naming the rep (where the rep's trends start).
    pub rep_first_deal: Map<SmolStr, Micros>,
    pub quotas: Map<(String, Day), Versioned<Quota>>,
    /// Every roster version's placement is kept: the hierarchy is effective-dated.
    pub roster: Map<String, Versioned<Rep, Placement>>,
    pub fx: Map<(String, Day), Versioned<FxRate>>,
    /// Boxed, as deals are (`DealEntry`): a response is about 110 bytes, and the map's free
    /// slots then cost a key and a pointer each.
    pub surveys: Map<SmolStr, Box<Survey>>,
    /// Hash of each activity `event_id` within the dedup horizon → its `occurred_at`.
    pub seen_activities: Map<IdHash, Micros>,
    /// The event time under which `prune` forgot activity ids.
    pub seen_floor: Option<Micros>,
    /// topic → partition → highest `occurred_at` of a valid event read from it (the watermark's
    /// input, `crate::watermark`).
    pub partition_high: crate::watermark::Highs,
    /// topic → outcome or reason → messages.
    pub quality: BTreeMap<String, BTreeMap<String, u64>>,
    pub dead_letters: VecDeque<DeadLetter>,
    /// The alert lifecycles firing, and those resolved in a month the event clock has not
    /// left (the `alerts` table holds every one). (Kept beside the state in
    /// `_state/<id>/alerts.bin`, written after the rules ran: `snapshot`.)
    pub alerts: crate::alert::AlertBook,
    /// Alert events recorded by a snapshot and not yet acknowledged by their Kafka or webhook
    /// target (`alert::deliver`).
    pub outbox: Vec<crate::alert::deliver::Outgoing>,
    /// Deliveries per target.
    pub deliveries: BTreeMap<String, crate::alert::deliver::DeliveryCount>,
    /// First and last day with an activity, per rep id (derived from `daily`).
    pub activity_span: Map<u32, (Day, Day)>,
    /// What changed since the last cut (`State::take_changes`).
    pub changes: Pending,
    /// The keys touched since the last cut (`State::take_dirty`).
    pub dirty: segments::Dirty,
    /// The grain's months out of memory (`residency`).
    pub residency: residency::Residency,
}

impl State {
    /// The alert part: lifecycles, outbox, delivery counts (`_state/<id>/alerts.bin`).
    pub fn encode_alerts(&self) -> Result<Vec<u8>, bincode::Error> {
        bincode::serialize(&(&self.alerts, &self.outbox, &self.deliveries))
    }

    /// Puts back the alert part [`State::encode_alerts`] made.
    pub fn decode_alerts(&mut self, alerts: &[u8]) -> Result<(), bincode::Error> {
        (self.alerts, self.outbox, self.deliveries) = bincode::deserialize(alerts)?;
        Ok(())
    }

    /// Folds a valid event read at `origin` of its topic; `horizon` is the dedup horizon in
    /// microseconds.
    pub fn fold(&mut self, event: Event, origin: Origin, cal: &Calendar, horizon: i64) -> Folded {
        let t = event.occurred_at();
        let folded = match event {
            Event::Activity(a) => self.fold_activity(a, origin, cal, horizon),
            Event::Deal(d) => {
                let before = self.rep_first_deal.get(&d.rep_id).map(|t| cal.day_of(*t));
                let first = self
                    .rep_first_deal
                    .entry(d.rep_id.clone())
                    .or_insert(i64::MAX);
                if d.occurred_at < *first {
                    *first = d.occurred_at;
                    self.dirty
                        .rep_first_deal
                        .touch(d.rep_id.clone(), self.rep_first_deal.len());
                }
                let day = cal.day_of(d.occurred_at);
                let (rep, deal) = (d.rep_id.clone(), d.deal_id.clone());
                let old = match self.deals.get(&deal) {
                    Some(v) => Some(deal_days(&v.latest, cal)),
                    None => self.residency.deals.days(&deal),
                };
                let version_days = deal_days(&d, cal);
                // A deal out of memory takes the version at the next cut (`residency::deals`).
                let folded = match self.residency.deals.fold(&d, origin) {
                    Some(queued) => queued,
                    None => {
                        let h = (d.stage, d.occurred_at);
                        fold_entity(&mut self.deals, deal.clone(), d.version, d, h, origin)
                    }
                };
                self.first_day(&rep, day, before, cal);
                self.dirty.deals.touch(deal.clone(), self.deals.len());
                if folded == Folded::Ok {
                    self.rep_ids.id(&rep);
                    let new = match self.deals.get(&deal) {
                        Some(v) => deal_days(&v.latest, cal),
                        None => version_days,
                    };
                    for (close, created) in old.into_iter().chain(Some(new)) {
                        self.changes.changes.day(Input::Deals, close);
                        self.changes.changes.created(created);
                    }
                }
                folded
            }
            Event::Quota(q) => {
                let key = (q.rep_id.clone(), q.period_start);
                let old = self.quotas.get(&key).map(|v| v.latest.period_end);
                let (rep, start, end) = (q.rep_id.clone(), q.period_start, q.period_end);
                let folded = fold_entity(&mut self.quotas, key.clone(), q.version, q, (), origin);
                self.dirty.quotas.touch(key, self.quotas.len());
                if folded == Folded::Ok {
                    self.rep_ids.id(&rep);
                    let end = end.max(old.unwrap_or(end));
                    self.changes.changes.span(Input::Quotas, start, end);
                }
                folded
            }
            Event::Rep(mut r) => {
                let effective_from = *r
                    .effective_from
                    .get_or_insert_with(|| cal.day_of(r.occurred_at));
                let placement = Placement {
                    effective_from,
                    team_id: r.team_id.clone(),
                    region: r.region.clone(),
                };
                let rep = r.rep_id.clone();
                let first = self
                    .roster
                    .get(&rep)
                    .and_then(|v| v.history.iter().map(|(_, p)| p.effective_from).min());
                let folded = fold_entity(
                    &mut self.roster,
                    rep.clone(),
                    r.version,
                    r,
                    placement,
                    origin,
                );
                self.dirty.roster.touch(rep.clone(), self.roster.len());
                if folded == Folded::Ok {
                    self.rep_ids.id(&rep);
                    // The hierarchy is effective-dated: a placement from a day after the rep's
                    // first one changes the rep's facts from that day on. A rep's first
                    // placement (or one before it) reaches back to the first day: all of it.
                    match first {
                        Some(first) if effective_from > first => {
                            self.changes
                                .changes
                                .span(Input::Roster, effective_from, Day::MAX)
                        }
                        _ => {
                            self.changes.changes.all = true;
                            self.changes.changes.input(Input::Roster);
                        }
                    }
                }
                folded
            }
            Event::FxRate(f) => {
                let (currency, from) = (f.currency.clone(), f.effective_date);
                let key = (currency.clone(), from);
                let folded = fold_entity(&mut self.fx, key, f.version, f, (), origin);
                self.dirty.fx.touch((currency.clone(), from), self.fx.len());
                if folded == Folded::Ok {
                    self.fx_changed(&currency, from);
                }
                folded
            }
            Event::Survey(s) => {
                if self.surveys.contains_key(&s.response_id) {
                    Folded::Duplicate
                } else {
                    self.rep_ids.id(&s.rep_id);
                    self.changes.changes.input(Input::Surveys);
                    self.dirty
                        .surveys
                        .touch(s.response_id.clone(), self.surveys.len());
                    self.surveys.insert(s.response_id.clone(), Box::new(s));
                    Folded::Ok
                }
            }
        };
        if folded == Folded::Ok {
            self.as_of = Some(self.as_of.map_or(t, |c| c.max(t)));
        }
        folded
    }

    fn fold_activity(
        &mut self,
        a: Activity,
        origin: Origin,
        cal: &Calendar,
        horizon: i64,
    ) -> Folded {
        let id = id_hash(&a.event_id);
        // A repeat within the horizon of the remembered copy's event time is a duplicate. The
        // test compares the two events only, never the event clock, so the outcome does not
        // depend on how far other partitions have been read.
        if self
            .seen_activities
            .get(&id)
            .is_some_and(|seen| seen.abs_diff(a.occurred_at) <= horizon.unsigned_abs())
        {
            return Folded::Duplicate;
        }
        self.seen_activities.insert(id, a.occurred_at);
        self.dirty.seen.touch(id, self.seen_activities.len());
        if let Some(deal) = &a.deal_id {
            let deal = SmolStr::new(deal);
            let last = self
                .deal_last_activity
                .entry(deal.clone())
                .or_insert(i64::MIN);
            if a.occurred_at > *last {
                *last = a.occurred_at;
                self.dirty
                    .deal_activity
                    .touch(deal, self.deal_last_activity.len());
            }
        }
        if let Some(deal) = &a.deal_id {
            // its last_activity_at (a deal out of memory comes back for it)
            let close = match self.deals.get(deal.as_str()) {
                Some(d) => Some(d.latest.close_date),
                None => self.residency.deals.named(deal),
            };
            if let Some(close) = close {
                self.changes.changes.day(Input::Deals, close);
            }
        }
        let day = cal.day_of(a.occurred_at);
        self.add_to_grain(&a.rep_id, day, origin, cal, |c| c.add(&a));
        Folded::Ok
    }

    /// Brings the rollups up to date: adds what was folded since the last call (or, after a
    /// restore, sums the whole grain once). Called at every snapshot cut, so its cost follows
    /// what changed since the last snapshot.
    pub fn roll_up(&mut self, cal: &Calendar) {
        if !self.rollups.built {
            self.roll_up_all(cal);
            return;
        }
        let pending = std::mem::take(&mut self.rollups.pending);
        let mut starts = Starts::new(cal);
        for (key, c) in &pending {
            self.rollups
                .add(*key, c, &mut starts, &mut self.residency.sums);
        }
    }

    /// Sums the rollups again from the whole grain (every month of it in memory).
    pub fn roll_up_all(&mut self, cal: &Calendar) {
        self.rollups = Rollups::of(&self.daily, cal);
    }

    /// Offsets `next..log_start` of a topic-partition were deleted by the broker before they
    /// were read (retention overtook a stopped pipeline): counts them under [`LOST_OFFSETS`]
    /// for the topic and moves the partition's next offset to `log_start`, so that the next
    /// restore does not count them again. Returns how many; 0 for a partition never read.
    pub fn lose(&mut self, topic: &str, partition: i32, log_start: i64) -> u64 {
        let Some(next) = self.next_offset(topic, partition) else {
            return 0;
        };
        let Ok(lost) = u64::try_from(log_start - next) else {
            return 0;
        };
        if lost == 0 {
            return 0;
        }
        self.changes.changes.input(Input::Quality);
        *self
            .quality
            .entry(topic.to_string())
            .or_default()
            .entry(LOST_OFFSETS.to_string())
            .or_default() += lost;
        self.offsets
            .entry(topic.to_string())
            .or_default()
            .insert(partition, log_start);
        lost
    }

    /// Messages read so far, of every outcome (lost offsets are not messages).
    pub fn messages(&self) -> u64 {
        self.quality
            .values()
            .flat_map(|o| o.iter())
            .filter(|(reason, _)| *reason != LOST_OFFSETS)
            .map(|(_, n)| n)
            .sum()
    }

    /// Per topic, the offsets counted under [`LOST_OFFSETS`].
    pub fn lost_offsets(&self) -> BTreeMap<String, u64> {
        lost_offsets(&self.quality)
    }

    /// Counts one message outcome for `topic`.
    pub fn count(&mut self, topic: &str, outcome: &str) {
        self.changes.changes.input(Input::Quality);
        // Looked up by reference first: this runs for every message.
        if let Some(n) = self
            .quality
            .get_mut(topic)
            .and_then(|outcomes| outcomes.get_mut(outcome))
        {
            *n += 1;
            return;
        }
        *self
            .quality
            .entry(topic.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Records a refused message in the bounded log (`keep` most recent).
    pub fn log_dead_letter(&mut self, mut dl: DeadLetter, keep: usize) {
        self.changes.changes.input(Input::DeadLetters);
        self.dirty.dead_letters = true;
        dl.payload.truncate(DEAD_LETTER_PAYLOAD_BYTES);
        self.dead_letters.push_back(dl);
        while self.dead_letters.len() > keep {
            self.dead_letters.pop_front();
        }
    }

    /// Records a valid event read from a partition, for the watermark.
    pub fn see(&mut self, topic: &str, partition: i32, occurred_at: Micros) {
        let partitions = match self.partition_high.get_mut(topic) {
            Some(p) => p,
            None => self.partition_high.entry(topic.to_string()).or_default(),
        };
        let high = partitions.entry(partition).or_insert(occurred_at);
        *high = (*high).max(occurred_at);
    }

    /// Records that `offset` of `topic`/`partition` has been folded (the next one is read next).
    pub fn advance(&mut self, topic: &str, partition: i32, offset: i64) {
        let partitions = match self.offsets.get_mut(topic) {
            Some(p) => p,
            None => self.offsets.entry(topic.to_string()).or_default(),
        };
        let next = partitions.entry(partition).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    /// Takes acknowledged alert deliveries out of the outbox and adds the counts per target.
    pub fn settle_deliveries(
        &mut self,
        acked: &[String],
        counts: BTreeMap<String, crate::alert::deliver::DeliveryCount>,
    ) {
        if !acked.is_empty() {
            let acked: std::collections::BTreeSet<&str> =
                acked.iter().map(String::as_str).collect();
            self.outbox.retain(|o| !acked.contains(o.id().as_str()));
        }
        for (target, c) in counts {
            let total = self.deliveries.entry(target).or_default();
            total.delivered += c.delivered;
            total.failed_attempts += c.failed_attempts;
        }
    }

    /// The next offset to read of a topic-partition, if any was read.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        crate::source::next_offset(&self.offsets, topic, partition)
    }

    /// Forgets activity ids whose event time lies more than two horizons behind the event
    /// clock, so memory stays flat. The second horizon is slack for partitions read unevenly: a
    /// repeat that arrives later than that behind the clock is counted again.
    pub fn prune(&mut self, horizon: i64) {
        let Some(as_of) = self.as_of else {
            return;
        };
        let floor = as_of.saturating_sub(horizon.saturating_mul(2));
        self.seen_activities.retain(|_, t| *t >= floor);
        self.seen_floor = Some(floor);
    }

    /// Number of keys held, for logs and metrics.
    pub fn size(&self) -> usize {
        self.daily.len()
            + self.deals.len()
            + self.quotas.len()
            + self.roster.len()
            + self.fx.len()
            + self.surveys.len()
            + self.seen_activities.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    fn deal(v: i64, stage: Stage, t: Micros) -> Event {
        Event::Deal(Deal {
            deal_id: "d1".into(),
            version: v,
            occurred_at: t,
            rep_id: "r1".into(),
            account_id: None,
            stage,
            amount: Decimal::new(100, 2),
            currency: "USD".into(),
            close_date: 0,
            forecast_category: None,
            probability: None,
            created_at: 0,
        })
    }

    #[test]
    fn highest_version_wins_whatever_the_order() {
        let mut s = State::default();
        let cal = Calendar::default();
        assert_eq!(
            s.fold(deal(2, Stage::Proposal, 20), Origin::default(), &cal, 0),
            Folded::Ok
        );
        assert_eq!(
            s.fold(deal(1, Stage::Prospecting, 10), Origin::default(), &cal, 0),
            Folded::Ok
        );
        assert_eq!(
            s.fold(deal(2, Stage::Negotiation, 30), Origin::default(), &cal, 0),
            Folded::Duplicate
        );
        let d = &s.deals["d1"];
        assert_eq!(d.latest.stage, Stage::Proposal);
        assert_eq!(d.history.len(), 2);
        assert_eq!(s.as_of, Some(20));
    }

    /// An activity id repeated within the horizon of the copy remembered is a duplicate, one
    /// further away counts; the map keeps each id in a 24-byte slot (key and event time).
    #[test]
    fn activity_ids_are_duplicates_within_the_horizon() {
        use crate::event::{Activity, ActivityType};
        let activity = |t: Micros| {
            Event::Activity(Activity {
                event_id: "a1".into(),
                occurred_at: t,
                rep_id: "r1".into(),
                activity_type: ActivityType::Call,
                duration_s: None,
                outcome: None,
                deal_id: None,
                account_id: None,
            })
        };
        let (mut s, cal, horizon) = (State::default(), Calendar::default(), 1_000);
        let mut fold = |t| s.fold(activity(t), Origin::default(), &cal, horizon);
        assert_eq!(fold(5_000), Folded::Ok);
        assert_eq!(fold(5_900), Folded::Duplicate);
        assert_eq!(fold(4_000), Folded::Duplicate);
        assert_eq!(fold(6_001), Folded::Ok);
        assert_eq!(s.seen_activities[&id_hash("a1")], 6_001);
        assert_eq!(std::mem::size_of::<(IdHash, Micros)>(), 24);
    }
}
