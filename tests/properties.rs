//! Property tests of the two invariants, on the real pipeline (`quotaflow::pipeline::run` on
//! librdkafka's in-process mock cluster) against the library's batch path
//! (`quotaflow::ingest::batch`, then the same SQL):
//! - incremental = batch: random events (roster moves, back-dated and corrected, among them),
//!   spread over partitions by key (so they arrive in another order than the batch reads them)
//!   and read by runs that snapshot every few events, end in the same tables as the batch;
//! - restart = no restart: the same runs stop after a random number of messages each and the
//!   next one restores the last snapshot, so random cuts restart and the others go on with the
//!   state in memory; the property covers both (with random compaction limits, so restores
//!   read bases and deltas);
//! - a state written as segments restores whole: random events, cuts and compaction limits,
//!   and after every cut the state its manifest names equals the one in memory.
//!
//! Beside them, on the batch path: moves change only team and region figures, and those add up.

use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use quotaflow::config::Pipeline;
use quotaflow::pipeline::RunOptions;
use quotaflow::snapshot::{AlertsImage, Location};
use quotaflow::state::segments::Manifest;
use quotaflow::state::State;

use crate::common::EventType::{self, *};
use crate::common::{canonical, canonical_tables, compute, ev, fold_one, Table};
use crate::harness::{once, produce, run_in_process, PipelineFile};
use crate::pipeline_mock::{batch_state, cluster, latest_tables, without};

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
fn random_events(seed: u64, n: usize) -> Vec<(EventType, String, String)> {
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
                0 | 1 => (Activity, format!("a{k}"), format!(
                    r#"{{"event_id":"a{k}","occurred_at":"{}","rep_id":"r{}","activity_type":"{}","outcome":"{}","duration_s":{},"deal_id":"d{}"}}"#,
                    at(k, k * 7), k % 3, ["call", "email", "meeting", "demo", "webinar", "task"][(k % 6) as usize],
                    ["connected", "replied", "held", "no_show"][(k % 4) as usize], k * 11, k % 5)),
                2 => (Deal, format!("d{d}"), format!(
                    r#"{{"deal_id":"d{d}","version":{dv},"occurred_at":"{}","rep_id":"r{}","stage":"{}","amount":"{}.{:02}","currency":"{}","close_date":"{}","created_at":"2026-03-01T08:00:00Z"}}"#,
                    at(dv * 3, d), d % 3, STAGES[((d * 5 + dv) % 6) as usize], 1000 + d * 37 + dv, (d * 13 + dv) % 100,
                    if d == 4 { "EUR" } else { "USD" }, day(d + dv + 10))),
                3 => (Quota, format!("r{r}"), format!(
                    r#"{{"rep_id":"r{r}","period_start":"2026-01-01","period_end":"2026-03-31","amount":"{}.00","currency":"USD","version":{rv},"occurred_at":"{}"}}"#,
                    50_000 + rv * 1000, at(rv, 1))),
                // Version 1 takes effect on the day it occurred; 2 and 4 move the rep on other
                // days (back- or forward-dated), 3 corrects 2 (same effective_from).
                4 => (Rep, format!("r{r}"), format!(
                    r#"{{"rep_id":"r{r}","version":{rv},"occurred_at":"{}","name":"n","team_id":"t{}","region":"g{}","active":true{}}}"#,
                    at(rv, 2), (r + rv) % 3, rv % 2,
                    match rv { 1 => String::new(), 4 => format!(r#","effective_from":"{}""#, day(r + 9)),
                               _ => format!(r#","effective_from":"{}""#, day(r + 4)) })),
                5 => (Survey, format!("s{k}"), format!(
                    r#"{{"response_id":"s{k}","occurred_at":"{}","rep_id":"r{}","survey":"pulse-{}","score":{}}}"#,
                    at(k, 4), k % 3, k % 2, k % 11)),
                _ => (FxRate, "EUR".to_string(), format!(
                    r#"{{"currency":"EUR","effective_date":"{}","rate_to_corporate":"1.{}","version":1,"occurred_at":"{}"}}"#,
                    day(k % 3 * 5), 10 + k % 3 * 5, at(k % 3 * 5, 3))),
            }
        })
        .collect()
}

/// `events` as (topic, key, value) messages of the pipeline's topics.
fn on_topics(
    p: &Pipeline,
    events: &[(EventType, String, String)],
) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|(t, key, json)| (p.source.topics[t].clone(), key.clone(), json.clone()))
        .collect()
}

/// The tables of the batch path over `msgs`, which are all valid.
async fn batch(p: &Arc<Pipeline>, msgs: &[(String, String, String)]) -> Vec<Table> {
    let (state, refused) = batch_state(p, msgs);
    assert!(
        refused.is_empty(),
        "the random events are all valid: {refused:?}"
    );
    compute(p, &state).await
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_pipeline_with_cuts_and_restarts_equals_the_batch_path(
        seed in any::<u64>(),
        n in 1usize..120,
        every in 1u64..40,
        stops in prop::collection::vec(1u64..60, 0..4),
        compact_after in 1u32..4,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let p = PipelineFile::default()
            .snapshot("trigger_events", &every.to_string())
            .snapshot("trigger_interval", "\"1h\"")
            .snapshot("compact_after", &compact_after.to_string())
            .load();
        let msgs = on_topics(&p, &random_events(seed, n));
        let c = cluster(&p);
        let brokers = c.bootstrap_servers();
        produce(&brokers, 1 + n / 3, &msgs);
        let out = tempfile::tempdir().unwrap();
        let out = out.path().to_str().unwrap();
        let mut read = 0;
        for max in stops {
            let r = rt.block_on(run_in_process(&p, RunOptions { max_events: Some(max), ..once(&brokers, out) }));
            read += r.messages;
        }
        let last = rt.block_on(run_in_process(&p, once(&brokers, out)));
        prop_assert_eq!(read + last.messages, n as u64, "every message read exactly once");
        let streamed = without(canonical(&rt.block_on(latest_tables(out))), "dead_letters");
        let want = without(canonical_tables(&rt.block_on(batch(&p, &msgs))), "dead_letters");
        prop_assert_eq!(streamed, want);
    }
}

#[test]
fn random_events_are_reproducible_and_spread_over_every_type() {
    let a = random_events(7, 200);
    assert_eq!(a, random_events(7, 200));
    for t in EventType::ALL {
        assert!(a.iter().any(|(e, _, _)| *e == t), "{t:?}");
    }
}

/// `events` with every roster version in team `t0`, region `g0` and no effective_from: the
/// same facts under a hierarchy without moves.
fn without_moves(events: &[(EventType, String, String)]) -> Vec<(EventType, String, String)> {
    events
        .iter()
        .map(|(t, key, json)| {
            if *t != Rep {
                return (*t, key.clone(), json.clone());
            }
            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
            let o = v.as_object_mut().unwrap();
            o.insert("team_id".into(), "t0".into());
            o.insert("region".into(), "g0".into());
            o.remove("effective_from");
            (*t, key.clone(), v.to_string())
        })
        .collect()
}

/// Rolled-up tables: (name, the columns besides level and entity_id that make a row's key,
/// the columns that are sums of their reps' records on every row that can hold them).
const ROLLED_UP: &[(&str, &[&str], &[&str])] = &[
    (
        "attainment",
        &["period_type", "period_start"],
        &["closed_won"],
    ),
    (
        "forecast",
        &["period_type", "period_start"],
        &["closed_won", "commit", "best_case", "pipeline"],
    ),
    // (Not open_deals: a row exists only where the entity closed a deal in the period.)
    (
        "win_rates",
        &["period_type", "period_start"],
        &["won_count", "lost_count", "won_amount"],
    ),
    // (Not won_count: a row exists only where the entity had activities, so a team's wins
    // without an activity of its own in the period are on no row of it.)
    (
        "activity_kpis",
        &["period_type", "period_start"],
        &["activities", "calls", "call_seconds"],
    ),
    (
        "stage_conversion",
        &["cohort_quarter", "stage"],
        &["reached", "advanced"],
    ),
    (
        "survey_nps",
        &["survey"],
        &["responses", "promoters", "detractors"],
    ),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// METRICS.md "Hierarchy": moves change only team and region figures (rep and company
    /// figures are those of the same facts without moves), and every period's team and region
    /// figures add up to the company's.
    #[test]
    fn moves_change_only_team_and_region_figures_and_those_add_up(
        seed in any::<u64>(),
        n in 1usize..150,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let p = crate::common::pipeline();
        let events = random_events(seed, n);
        let moved = rt.block_on(batch(&p, &on_topics(&p, &events)));
        let flat = rt.block_on(batch(&p, &on_topics(&p, &without_moves(&events))));
        let lines = |tables: &[Table], name: &str, levels: &[&str]| {
            let mut v: Vec<String> = crate::common::rows(tables, name)
                .into_iter()
                .filter(|r| levels.contains(&r["level"].as_str().unwrap_or("")))
                .map(|r| r.to_string())
                .collect();
            v.sort();
            v
        };
        for (name, keys, sums) in ROLLED_UP {
            prop_assert_eq!(
                lines(&moved, name, &["rep", "company"]),
                lines(&flat, name, &["rep", "company"]),
                "{}: rep and company rows", name
            );
            let rows = crate::common::rows(&moved, name);
            let total = |level: &str| {
                let mut by_key: std::collections::BTreeMap<String, Vec<rust_decimal::Decimal>> =
                    Default::default();
                for r in rows.iter().filter(|r| r["level"] == level) {
                    let key: Vec<String> = keys.iter().map(|k| r[*k].to_string()).collect();
                    let cells = by_key
                        .entry(key.join("|"))
                        .or_insert_with(|| vec![rust_decimal::Decimal::ZERO; sums.len()]);
                    for (cell, col) in cells.iter_mut().zip(sums.iter()) {
                        let text = match &r[*col] {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        *cell += text.parse::<rust_decimal::Decimal>().unwrap();
                    }
                }
                by_key
            };
            prop_assert_eq!(total("team"), total("company"), "{}: teams add up", name);
            prop_assert_eq!(total("region"), total("company"), "{}: regions add up", name);
        }
        // Rep-grain tables do not see the hierarchy at all.
        let (moved, flat) = (
            canonical_tables(&moved),
            canonical_tables(&flat),
        );
        for name in ["rep_daily", "deals_current", "leaderboard", "trends", "commissions"] {
            prop_assert_eq!(moved.get(name), flat.get(name), "{}", name);
        }
    }
}

/// The fields of a state a restore must bring back (the rest is derived or bookkeeping).
fn assert_same_state(restored: &State, live: &State, at: &str) {
    assert_eq!(restored.head(), live.head(), "{at}: head");
    assert_eq!(restored.daily, live.daily, "{at}: daily");
    assert_eq!(restored.rep_ids, live.rep_ids, "{at}: rep ids");
    assert_eq!(restored.deals, live.deals, "{at}: deals");
    assert_eq!(restored.deal_last_activity, live.deal_last_activity, "{at}");
    assert_eq!(restored.rep_first_deal, live.rep_first_deal, "{at}");
    assert_eq!(restored.quotas, live.quotas, "{at}: quotas");
    assert_eq!(restored.roster, live.roster, "{at}: roster");
    assert_eq!(restored.fx, live.fx, "{at}: fx");
    assert_eq!(restored.surveys, live.surveys, "{at}: surveys");
    assert_eq!(
        restored.seen_activities, live.seen_activities,
        "{at}: dedup ids"
    );
    assert_eq!(
        restored.dead_letters, live.dead_letters,
        "{at}: dead letters"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random events (a 7-day dedup horizon, so pruning forgets ids and whole weeks), cut at
    /// random points through the pipeline's own state writer into an object store; after
    /// every cut the state read back from its checkpoint equals the one in memory, and no
    /// part's chain is longer than the compaction limit.
    #[test]
    fn a_state_written_as_segments_restores_whole_at_every_cut(
        seed in any::<u64>(),
        n in 1usize..200,
        cuts in prop::collection::vec(1usize..40, 1..10),
        compact_after in 1usize..4,
    ) {
        use quotaflow::pipeline::{cut_segment, state_image, write_state};
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let p = PipelineFile::default().set("source", "dedup_horizon", "\"7d\"").load();
        let events = random_events(seed, n);
        let loc = Location::parse(&format!("memory://segments-{seed}-{n}-{compact_after}")).unwrap();
        let mut state = State::default();
        let mut manifest = Manifest::default();
        let (mut at, mut id) = (0, 0);
        for (i, step) in cuts.iter().cycle().enumerate() {
            let upto = (at + step).min(events.len());
            for (t, _, json) in &events[at..upto] {
                fold_one(&p, &mut state, ev(*t, json));
                if i % 3 == 0 {
                    state.log_dead_letter(dead_letter(at), 3);
                }
            }
            at = upto;
            id += 1;
            state.snapshot_id = id;
            state.prune(p.source.dedup_horizon_micros());
            let dirty = state.take_dirty();
            let cut = cut_segment(&state, &dirty, false).unwrap();
            let (next, _) = rt.block_on(write_state(&loc, &manifest, state.head(), &cut, compact_after)).unwrap();
            prop_assert!(next.chains.values().all(|c| c.len() <= compact_after), "snapshot {id}");
            let image = state_image(&next).unwrap();
            let alerts = AlertsImage(state.encode_alerts().unwrap().into());
            let (c, _) = rt.block_on(loc.write_snapshot(&image, &alerts, &[], &crate::delta::meta(10))).unwrap();
            let restored = rt.block_on(quotaflow::pipeline::read_state(&loc, &c)).unwrap();
            assert_same_state(&restored, &state, &format!("snapshot {id} after {at} events"));
            manifest = next;
            if at == events.len() {
                break;
            }
        }
    }
}

fn dead_letter(offset: usize) -> quotaflow::source::DeadLetter {
    quotaflow::source::DeadLetter {
        topic: "t".into(),
        partition: 0,
        offset: offset as i64,
        reason: "r".into(),
        detail: "d".into(),
        payload: b"p".to_vec(),
    }
}
