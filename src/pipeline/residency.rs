//! The cut's side of residency (`state::residency` says which of the grain's months and which
//! deals are out of memory, and why): what a snapshot needs is read back from the last durable
//! snapshot's segments before anything is built from the state, and closed months and deals
//! leave memory once the cut has taken what it writes. Every cut logs (debug) what stays
//! resident.

use std::collections::BTreeSet;

use super::restore::merge_segments;
use super::{RunError, Runner};
use crate::engine::plan::Plan;
use crate::event::Micros;
use crate::snapshot::Location;
use crate::state::changes::Scope;
use crate::state::residency::{closed_before, Evicted};
use crate::state::segments::{Dirty, Kind, Manifest, Merge, PartKey};
use crate::state::State;

/// Brings back into `state` the grain's months and the deals its next cut needs
/// (`State::needed`), read from the segments `manifest` names (the last durable snapshot's:
/// nothing leaves memory before it is durable there). Returns how many months and deals came
/// back.
pub async fn bring_back(
    location: &Location,
    manifest: &Manifest,
    state: &mut State,
    scope: Option<&Scope>,
    grain_read: bool,
) -> Result<(usize, usize), RunError> {
    let needed = state.needed(scope, grain_read);
    if needed.is_empty() {
        return Ok((0, 0));
    }
    let faulted = state.residency.faulted();
    let started = std::time::Instant::now();
    let part = |kind, period: &i32| PartKey {
        kind,
        period: *period,
    };
    let parts: BTreeSet<PartKey> = needed
        .months
        .iter()
        .map(|p| part(Kind::Daily, p))
        .chain(needed.deals.buckets.iter().map(|p| part(Kind::Deals, p)))
        .chain(
            needed
                .deals
                .buckets
                .iter()
                .map(|p| part(Kind::DealActivity, p)),
        )
        .collect();
    let mut merge = Merge::new(manifest, Some(&parts));
    merge_segments(location, &mut merge, manifest.files(Some(&parts))).await?;
    let read = merge.parts();
    let rep_days = read.daily.len();
    let missing = state.bring_back(&needed, read);
    if missing > 0 {
        // Not expected: a deal leaves memory only once durable in these segments. Its
        // messages stay queued and it is asked for again at the next cut.
        tracing::warn!(
            missing,
            snapshot_id = manifest.head.snapshot_id,
            "deals out of memory not found in the state segments"
        );
    }
    tracing::debug!(
        months = needed.months.len(),
        faulted,
        sums = needed.sums.len(),
        full = scope.is_none(),
        rep_days,
        deals = needed.deals.len() - missing,
        ms = started.elapsed().as_millis() as u64,
        "grain months and deals read back"
    );
    Ok((needed.months.len(), needed.deals.len() - missing))
}

impl Runner {
    /// Brings back the grain's months the cut of `plan` needs.
    pub(super) async fn bring_back(&mut self, plan: &Plan) -> Result<(), RunError> {
        let grain_read = self.engine.reads_grain(plan);
        let scope = plan.scope.as_ref();
        bring_back(
            &self.location,
            &self.manifest,
            &mut self.state,
            scope,
            grain_read,
        )
        .await?;
        Ok(())
    }

    /// Lets the closed months go that no key of this cut's segment (`dirty`) is in, unless
    /// that segment is written whole (`all`: the last snapshot failed, so what the earlier
    /// ones wrote is not all durable) or the watermark is unknown; then says (debug) what
    /// stays resident.
    pub(super) fn let_go(&mut self, dirty: &Dirty, all: bool) -> Evicted {
        let evicted = match (self.watermark.current(), all) {
            (Some(watermark), false) => self.evict_closed(watermark, dirty),
            _ => Evicted::default(),
        };
        let (s, cal) = (&self.state, &self.pipeline.metrics.calendar);
        let watermark = self.watermark.current().map(|w| cal.day_of(w));
        tracing::debug!(
            rep_days = s.daily.len(),
            period_sums = s.rollups.periods.len(),
            week_sums = s.rollups.weeks.len(),
            sums_out = s.residency.sums.len(),
            deals = s.deals.len(),
            deals_out = s.residency.deals.len(),
            deal_activity = s.deal_last_activity.len(),
            surveys = s.surveys.len(),
            quotas = s.quotas.len(),
            seen_activities = s.seen_activities.len(),
            alerts = s.alerts.len(),
            outbox = s.outbox.len(),
            dead_letters = s.dead_letters.len(),
            watermark = ?watermark.map(crate::calendar::date_of),
            held_by = ?self.watermark.held_by(),
            "resident state"
        );
        evicted
    }

    /// The closed months before `watermark` − `allowed_lateness` out of memory.
    fn evict_closed(&mut self, watermark: Micros, dirty: &Dirty) -> Evicted {
        let lateness = self.pipeline.source.allowed_lateness_micros();
        let closed_before = closed_before(watermark, lateness, &self.pipeline.metrics.calendar);
        let keep = self.pipeline.snapshot.resident_closed_months as usize;
        let started = std::time::Instant::now();
        let cal = &self.pipeline.metrics.calendar;
        let evicted = self.state.evict(closed_before, keep, dirty, cal);
        tracing::trace!(
            closed_before = %crate::calendar::date_of(closed_before),
            months = evicted.months,
            "closed grain months"
        );
        self.report.grain_months_evicted += evicted.months as u64;
        self.report.deals_evicted += evicted.deals as u64;
        if evicted.months > 0 || evicted.deals > 0 || evicted.sums > 0 {
            tracing::debug!(
                months = evicted.months,
                rep_days = evicted.rep_days,
                deals = evicted.deals,
                sums = evicted.sums,
                months_out = self.state.residency.months_out(),
                deals_out = self.state.residency.deals.len(),
                ms = started.elapsed().as_millis() as u64,
                "closed grain months and deals left memory"
            );
        }
        evicted
    }
}
