//! Property tests of the two invariants:
//! - incremental = batch: random events, shuffled and cut into random micro-batches with a
//!   snapshot (state serialised and restored, tables computed) after each, end in the same
//!   tables as folding them all at once;
//! - restart = no restart: a serialise/restore between micro-batches is exactly what a
//!   restart from a snapshot does; random cuts restart and the others go on with the state
//!   in memory (its rollups kept up to date from what changed, as the pipeline does), so the
//!   same property covers both.

use bincode::Options;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use quotaflow::event::Event;

use crate::common::EventType::*;
use crate::common::{Rollups, State};

use crate::common::{canonical_tables, compute, ev, fold_one, pipeline};

const STAGES: &[&str] = &[
    "prospecting",
    "qualification",
    "proposal",
    "negotiation",
    "closed_won",
    "closed_lost",
];

/// Random events over 55 days. The content of an (entity, version) or a fact id is a function
/// of that key, so a repeat is a true duplicate and arrival order cannot change the result.
fn random_events(seed: u64, n: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    // 55 days: more than the 30-day dedup horizon, so shuffled arrival moves the event clock
    // far past a fact before its repeat arrives; less than two horizons, so pruning keeps ids.
    let day = |d: u64| {
        (chrono::NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()
            + chrono::Duration::days((d * 7 % 55) as i64))
        .to_string()
    };
    let at = |d: u64, s: u64| format!("{}T{:02}:{:02}:00Z", day(d), 8 + s % 10, s % 60);
    (0..n)
        .map(|_| {
            let k: u64 = rng.gen_range(0..40);
            // Entity keys and versions come from k; everything else from (key, version) only.
            let (d, dv) = (k % 5, 1 + (k / 5) % 4);
            let (r, rv) = (k % 3, 1 + (k / 3) % 4);
            match rng.gen_range(0..7) {
                0 | 1 => ev(Activity, &format!(
                    r#"{{"event_id":"a{k}","occurred_at":"{}","rep_id":"r{}","activity_type":"{}","outcome":"{}","duration_s":{},"deal_id":"d{}"}}"#,
                    at(k, k * 7), k % 3, ["call", "email", "meeting", "demo", "webinar", "task"][(k % 6) as usize],
                    ["connected", "replied", "held", "no_show"][(k % 4) as usize], k * 11, k % 5)),
                2 => ev(Deal, &format!(
                    r#"{{"deal_id":"d{d}","version":{dv},"occurred_at":"{}","rep_id":"r{}","stage":"{}","amount":"{}.{:02}","currency":"{}","close_date":"{}","created_at":"2026-03-01T08:00:00Z"}}"#,
                    at(dv * 3, d), d % 3, STAGES[((d * 5 + dv) % 6) as usize], 1000 + d * 37 + dv, (d * 13 + dv) % 100,
                    if d == 4 { "EUR" } else { "USD" }, day(d + dv + 10))),
                3 => ev(Quota, &format!(
                    r#"{{"rep_id":"r{r}","period_start":"2026-01-01","period_end":"2026-03-31","amount":"{}.00","currency":"USD","version":{rv},"occurred_at":"{}"}}"#,
                    50_000 + rv * 1000, at(rv, 1))),
                4 => ev(Rep, &format!(
                    r#"{{"rep_id":"r{r}","version":{rv},"occurred_at":"{}","name":"n","team_id":"t{}","region":"g{}","active":true}}"#,
                    at(rv, 2), (r + rv) % 2, rv % 2)),
                5 => ev(Survey, &format!(
                    r#"{{"response_id":"s{k}","occurred_at":"{}","rep_id":"r{}","survey":"pulse-{}","score":{}}}"#,
                    at(k, 4), k % 3, k % 2, k % 11)),
                _ => ev(FxRate, &format!(
                    r#"{{"currency":"EUR","effective_date":"{}","rate_to_corporate":"1.{}","version":1,"occurred_at":"{}"}}"#,
                    day(k % 3 * 5), 10 + k % 3 * 5, at(k % 3 * 5, 3))),
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn incremental_with_restarts_equals_batch(seed in any::<u64>(), n in 1usize..80, cuts in prop::collection::vec((0usize..80, any::<bool>()), 0..4), shuffle in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let p = pipeline();
        let events = random_events(seed, n);

        let mut batch = State::default();
        for e in events.clone() {
            fold_one(&p, &mut batch, e);
        }
        let want = canonical_tables(&rt.block_on(compute(&p, &batch)));

        let mut shuffled = events;
        shuffled.shuffle(&mut StdRng::seed_from_u64(shuffle));
        let mut cuts: Vec<(usize, bool)> = cuts.into_iter().map(|(c, r)| (c % (n + 1), r)).collect();
        cuts.push((n, false));
        cuts.sort_unstable();
        let codec = quotaflow::snapshot::state_codec();
        let mut state = State::default();
        let mut from = 0;
        for (cut, restart) in cuts {
            for e in &shuffled[from..cut] {
                fold_one(&p, &mut state, e.clone());
            }
            from = cut;
            // A snapshot as the pipeline cuts it: prune, roll up, compute, serialise; after a
            // restart the next batch starts from the restored copy.
            state.prune(p.dedup_horizon_micros());
            state.roll_up(&p.calendar);
            prop_assert!(state.rollups.is_current());
            rt.block_on(compute(&p, &state));
            if restart {
                state = codec.deserialize(&codec.serialize(&state).unwrap()).unwrap();
            }
        }
        state.roll_up(&p.calendar);
        prop_assert_eq!(&state.rollups, &Rollups::of(&state.daily, &p.calendar));
        let got = canonical_tables(&rt.block_on(compute(&p, &state)));
        prop_assert_eq!(got, want);
    }
}
