//! The one ingest path: a Kafka message folded into the state. Decoding against the input
//! contract, lateness against the watermark, dedup and versions (`State::fold`), the outcome
//! counters, the dead-letter log and the read offsets all happen here, in this order, for the
//! run loop, the batch path ([`batch`]), the benches and the property tests alike.
//!
//! Pure: no I/O and no clock; the caller hands in the wall clock `now` (the clock-skew bound of
//! the decoder) and the watermark as it stands.

use std::time::Duration;

use crate::calendar::Calendar;
use crate::config::Source;
use crate::event::Micros;
use crate::internal::InternalError;
use crate::source::decode::{BadInput, Decoder, Reason};
use crate::source::DeadLetter;
use crate::state::{Origin, State};
use crate::watermark::Watermark;

/// A message as read from a topic-partition.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub payload: &'a [u8],
}

/// Folds messages of one pipeline's topics into a state.
#[derive(Debug, Clone)]
pub struct Ingest {
    decoder: Decoder,
    source: Source,
    calendar: Calendar,
}

impl Ingest {
    pub fn new(source: &Source, calendar: Calendar) -> Result<Ingest, InternalError> {
        Ok(Ingest {
            decoder: Decoder::new(source.limits)?,
            source: source.clone(),
            calendar,
        })
    }

    /// Folds one message into `state`. A message the pipeline refuses (it breaks the input
    /// contract, or is older than the watermark minus `allowed_lateness`) is counted, kept in
    /// the state's dead-letter log, and returned with its whole payload for the dead-letter
    /// topic. A message of a topic that is not the pipeline's is ignored.
    pub fn message(
        &self,
        state: &mut State,
        watermark: &Watermark,
        m: Message<'_>,
        now: Micros,
    ) -> Option<DeadLetter> {
        let event_type = self.source.event_type_of(m.topic)?;
        let origin = Origin {
            partition: m.partition,
            offset: m.offset,
        };
        let decoded = self
            .decoder
            .decode(event_type, m.payload, now)
            .and_then(|event| {
                let t = event.occurred_at();
                state.see(m.topic, m.partition, t);
                if watermark.is_late(t) {
                    state.note_late(&event, origin);
                    Err(late(t, watermark.current(), self.source.allowed_lateness))
                } else {
                    Ok(event)
                }
            });
        let refused = match decoded {
            Ok(event) => {
                let horizon = self.source.dedup_horizon_micros();
                let folded = state.fold(event, origin, &self.calendar, horizon);
                state.count(m.topic, folded.as_str());
                None
            }
            Err(bad) => {
                state.count(m.topic, bad.reason.as_str());
                let dl = DeadLetter {
                    topic: m.topic.to_string(),
                    partition: m.partition,
                    offset: m.offset,
                    reason: bad.reason.as_str().to_string(),
                    detail: bad.detail,
                    payload: m.payload.to_vec(),
                };
                state.log_dead_letter(dl.clone(), self.source.dead_letter_rows);
                Some(dl)
            }
        };
        state.advance(m.topic, m.partition, m.offset);
        refused
    }
}

/// The batch path (DESIGN.md §4): every message folded at once into a fresh state, which the
/// same SQL then evaluates. It reads everything before anything is judged late, so there is no
/// watermark and nothing is `late`; for streams without late events it must equal the run loop
/// whatever the cuts, restarts and partition order (the property tests).
pub fn batch<'a>(
    ingest: &Ingest,
    messages: impl IntoIterator<Item = Message<'a>>,
    now: Micros,
) -> (State, Vec<DeadLetter>) {
    let no_watermark = Watermark::new(Duration::ZERO, i64::MAX, true);
    let mut state = State::default();
    let mut refused = Vec::new();
    for m in messages {
        refused.extend(ingest.message(&mut state, &no_watermark, m, now));
    }
    state.roll_up(&ingest.calendar);
    (state, refused)
}

/// The dead-letter reason of an event older than the watermark minus the allowed lateness.
fn late(occurred_at: Micros, watermark: Option<Micros>, lateness: Duration) -> BadInput {
    let instant = |t: i64| {
        chrono::DateTime::from_timestamp_micros(t).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
    };
    BadInput {
        reason: Reason::Late,
        detail: format!(
            "occurred_at {} is older than the watermark {} minus allowed_lateness ({} days)",
            instant(occurred_at),
            watermark.map_or_else(|| "-".into(), instant),
            lateness.as_secs() / 86_400
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest() -> Ingest {
        let p = crate::config::Pipeline::builtin().unwrap();
        Ingest::new(&p.source, p.metrics.calendar).unwrap()
    }

    const NOW: Micros = 4_000_000_000_000_000;

    #[test]
    fn offsets_deleted_before_they_were_read_are_counted_once_and_read_past() {
        let i = ingest();
        let mut s = State::default();
        let w = Watermark::new(Duration::ZERO, 0, true);
        let m = Message {
            topic: "spm.activities",
            partition: 1,
            offset: 9,
            payload: b"{not json",
        };
        let _ = i.message(&mut s, &w, m, NOW);
        // Never read from partition 0: nothing known lost there.
        assert_eq!(s.lose("spm.activities", 0, 500), 0);
        // Partition 1 next reads 10; the broker's log starts at 25.
        assert_eq!(s.lose("spm.activities", 1, 25), 15);
        assert_eq!(s.next_offset("spm.activities", 1), Some(25));
        assert_eq!(s.lose("spm.activities", 1, 25), 0, "counted once");
        assert_eq!(s.lose("spm.activities", 1, 20), 0, "a log start behind");
        assert_eq!(s.quality["spm.activities"][crate::state::LOST_OFFSETS], 15);
        assert_eq!(s.messages(), 1, "lost offsets are no messages");
        assert_eq!(s.lost_offsets()["spm.activities"], 15);
    }

    #[test]
    fn a_refused_message_is_counted_logged_returned_and_read_past() {
        let i = ingest();
        let mut s = State::default();
        let w = Watermark::new(Duration::ZERO, 0, true);
        let m = Message {
            topic: "spm.activities",
            partition: 2,
            offset: 41,
            payload: b"{not json",
        };
        let dl = i.message(&mut s, &w, m, NOW).expect("a dead letter");
        assert_eq!((dl.reason.as_str(), dl.offset), ("invalid_json", 41));
        assert_eq!(dl.payload, b"{not json");
        assert_eq!(s.dead_letters.len(), 1);
        assert_eq!(s.quality["spm.activities"]["invalid_json"], 1);
        assert_eq!(s.next_offset("spm.activities", 2), Some(42));
        // A topic that is not the pipeline's is not read at all.
        let other = Message {
            topic: "elsewhere",
            ..m
        };
        assert!(i.message(&mut s, &w, other, NOW).is_none());
        assert_eq!(s.next_offset("elsewhere", 2), None);
    }

    #[test]
    fn an_event_older_than_the_watermark_minus_lateness_is_late() {
        let i = ingest();
        let activity = |at: &str, id: &str| {
            format!(
                r#"{{"event_id":"{id}","occurred_at":"{at}","rep_id":"r1","activity_type":"call"}}"#
            )
        };
        let mut s = State::default();
        let (new, old) = (
            activity("2026-06-01T00:00:00Z", "a1"),
            activity("2026-01-01T00:00:00Z", "a2"),
        );
        fn msg(payload: &[u8], offset: i64) -> Message<'_> {
            Message {
                topic: "spm.activities",
                partition: 0,
                offset,
                payload,
            }
        }
        let mut w = Watermark::new(Duration::ZERO, 86_400_000_000 * 120, true);
        assert!(i.message(&mut s, &w, msg(new.as_bytes(), 0), NOW).is_none());
        w.refresh(
            &s.partition_high,
            [("spm.activities", 0)],
            std::time::Instant::now(),
        );
        let dl = i
            .message(&mut s, &w, msg(old.as_bytes(), 1), NOW)
            .expect("late");
        assert_eq!(dl.reason, "late");
        assert!(
            dl.detail.contains("allowed_lateness (120 days)"),
            "{}",
            dl.detail
        );
    }

    #[test]
    fn every_message_about_a_deal_is_kept_on_it_with_its_offset_and_how_it_was_taken() {
        let i = ingest();
        let deal = |v: i64, at: &str| {
            format!(
                r#"{{"deal_id":"d1","version":{v},"occurred_at":"{at}","rep_id":"r1","stage":"prospecting","amount":"10.00","currency":"USD","close_date":"2026-09-30","created_at":"2026-01-01T00:00:00Z"}}"#
            )
        };
        let msg = |payload: &str, offset: i64| {
            let topic = "spm.deals";
            (topic.to_string(), payload.to_string(), offset)
        };
        let msgs = [
            msg(&deal(2, "2026-06-02T00:00:00Z"), 10),
            msg(&deal(1, "2026-06-01T00:00:00Z"), 11),
            msg(&deal(2, "2026-06-02T00:00:00Z"), 12),
            msg(&deal(3, "2025-01-01T00:00:00Z"), 13),
        ];
        let mut s = State::default();
        let mut w = Watermark::new(Duration::ZERO, 86_400_000_000 * 120, true);
        for (n, (topic, payload, offset)) in msgs.iter().enumerate() {
            let m = Message {
                topic,
                partition: 4,
                offset: *offset,
                payload: payload.as_bytes(),
            };
            let _ = i.message(&mut s, &w, m, NOW);
            if n == 0 {
                w.refresh(
                    &s.partition_high,
                    [("spm.deals", 4)],
                    std::time::Instant::now(),
                );
            }
        }
        use crate::state::Arrival::*;
        let got: Vec<_> = s.deals["d1"]
            .received
            .iter()
            .map(|r| {
                (
                    r.version,
                    r.origin().partition,
                    r.origin().offset,
                    r.arrival,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, 4, 10, Applied),
                (1, 4, 11, Superseded),
                (2, 4, 12, Duplicate),
                (3, 4, 13, Late)
            ]
        );
        assert_eq!(s.quality["spm.deals"]["late"], 1);
    }
}
