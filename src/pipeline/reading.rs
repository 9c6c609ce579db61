//! The message path of the run loop: a burst of messages through ingest, the ends of
//! partitions, offsets lost to retention, and the watermark with the partitions alignment
//! holds back (refreshed before every burst).

use std::time::Instant;

use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::Message as _;

use super::trigger::Trigger;
use super::{RunError, RunOptions, Runner, BURST, CLOCK_EVERY};
use crate::ingest::Message;
use crate::kafka::KafkaIoError;
use crate::source::consumer::KafkaSource;
use crate::state::State;
use crate::watermark::Changes;

/// Offsets the broker deleted before they were read, found from every partition's log start
/// (at start, and whenever a fetch is out of range): counted in the state (`data_quality`,
/// `/metrics`, `/healthz`, `quotaflow snapshots`) and said once per partition. Reading must
/// then go on from the log start (`KafkaSource::reassign`), so none of them is also read (a
/// broker may still serve some). Returns whether any were lost. Only log starts are trusted:
/// tansu 0.6 reports stale ends.
pub(super) fn count_lost(state: &mut State, source: &KafkaSource) -> Result<bool, KafkaIoError> {
    let mut moved = false;
    for ((topic, p), (low, _)) in source.watermarks()? {
        let next = state.next_offset(&topic, p);
        let lost = state.lose(&topic, p, low);
        if lost > 0 {
            tracing::error!(topic, partition = p, next, log_start = low, lost,
                "offsets were deleted by the broker before quotaflow read them: those events are lost (counted as lost_offsets in data_quality)");
            moved = true;
        }
    }
    Ok(moved)
}

impl Runner {
    /// Counts the offsets lost since a fetch was out of range, and asks the loop to move the
    /// consumer past them (`reassign`); on failure, left for the next housekeeping tick.
    pub(super) fn recount_lost(&mut self, source: &KafkaSource) {
        match count_lost(&mut self.state, source) {
            Ok(lost) => {
                self.out_of_range = false;
                self.reassign = lost;
                if !lost {
                    tracing::error!("a fetch was out of range, but no partition's log start is past the offset it reads next (was a topic recreated or truncated?): that partition is not read until the pipeline restarts");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a fetch was out of range and the log starts could not be read; retrying");
                self.broker_health(false, source);
            }
        }
    }

    /// Recomputes the watermark from the state's highs, and which partitions are held back
    /// for reading too far ahead (every HOUSEKEEPING, every burst of messages and every cut).
    pub(super) fn refresh_watermark(&mut self, source: &KafkaSource) {
        let highs = &self.state.partition_high;
        self.watermark
            .refresh(highs, source.partitions(), Instant::now());
        let Changes { pause, resume } =
            self.alignment
                .align(highs, source.partitions(), &self.watermark);
        if !pause.is_empty() {
            tracing::debug!(partitions = ?pause, watermark = ?self.watermark.current(),
                "held back: read too far ahead of the slowest partition");
            self.report.partitions_paused += pause.len() as u64;
        }
        if !resume.is_empty() {
            tracing::debug!(partitions = ?resume, "read again");
        }
    }

    /// The message path: `first`, then what is already queued, up to BURST messages, without
    /// going back through the loop's select (it costs more than a message when data flows).
    pub(super) fn on_messages(
        &mut self,
        first: KafkaResult<BorrowedMessage<'_>>,
        source: &KafkaSource,
        opts: &RunOptions,
        trigger: &Trigger,
    ) -> Result<(), RunError> {
        self.refresh_watermark(source);
        let mut m = first;
        let mut handled = 0;
        loop {
            match m {
                Ok(msg) => {
                    self.broker_health(true, source);
                    self.on_message(&msg);
                }
                Err(KafkaError::PartitionEOF(_)) => {
                    self.broker_health(true, source);
                    self.mark_ends(source, opts)?;
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                    // A partition's next offset is out of range: retention overtook the reader.
                    self.out_of_range = true;
                    self.recount_lost(source);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying");
                    self.broker_health(false, source);
                }
            }
            handled += 1;
            let cut = trigger.counted(self.since_snapshot) && self.inflight.is_none();
            let wait = trigger.waits_for_write(self.since_snapshot, self.inflight.is_some());
            let stop = opts
                .max_events
                .is_some_and(|max| self.report.messages >= max);
            if handled >= BURST || cut || wait || stop {
                break;
            }
            // Only what is already queued: a message taken here is always handled.
            match source.try_recv(self.alignment.held()) {
                Some(next) => m = next,
                None => break,
            }
        }
        Ok(())
    }

    /// Marks the partitions whose read position is at the end of their latest fetch: at an
    /// end-of-partition event, and at every housekeeping tick. The client tells an end once,
    /// and the check beside it can miss (the partition's position or high watermark not known
    /// yet); a missed end would hold a partition read ahead of it back for good.
    pub(super) fn mark_ends(
        &mut self,
        source: &KafkaSource,
        opts: &RunOptions,
    ) -> Result<(), RunError> {
        let at_end = source.at_end(&self.state.offsets)?;
        let t = Instant::now();
        for (topic, p) in &at_end {
            self.watermark.reached_end(topic, *p, t);
        }
        if opts.once {
            self.ended.extend(at_end);
        }
        Ok(())
    }

    /// One message through the ingest path; a refused one waits to go to the dead letters.
    fn on_message(&mut self, msg: &BorrowedMessage<'_>) {
        let payload = msg.payload().unwrap_or_default();
        self.report.messages += 1;
        self.report.bytes += payload.len() as u64;
        self.since_snapshot += 1;
        if self.report.messages.is_multiple_of(CLOCK_EVERY) {
            self.now = chrono::Utc::now().timestamp_micros();
        }
        self.watermark.read(msg.topic(), msg.partition());
        let m = Message {
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
            payload,
        };
        if let Some(dl) = self
            .ingest
            .message(&mut self.state, &self.watermark, m, self.now)
        {
            self.pending.push(dl);
        }
    }
}
