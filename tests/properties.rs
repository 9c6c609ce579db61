//! Property tests of the two invariants, on the real pipeline (`quotaflow::pipeline::run` on
//! librdkafka's in-process mock cluster) against the library's batch path
//! (`quotaflow::ingest::batch`, then the same SQL):
//! - incremental = batch: random events, spread over partitions by key (so they arrive in
//!   another order than the batch reads them) and read by runs that snapshot every few events,
//!   end in the same tables as the batch;
//! - restart = no restart: the same runs stop after a random number of messages each and the
//!   next one restores the last snapshot, so random cuts restart and the others go on with the
//!   state in memory; the property covers both.

use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use quotaflow::config::Pipeline;
use quotaflow::pipeline::RunOptions;

use crate::common::EventType::{self, *};
use crate::common::{canonical, canonical_tables, compute};
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
                4 => (Rep, format!("r{r}"), format!(
                    r#"{{"rep_id":"r{r}","version":{rv},"occurred_at":"{}","name":"n","team_id":"t{}","region":"g{}","active":true}}"#,
                    at(rv, 2), (r + rv) % 2, rv % 2)),
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

/// The batch path over `msgs`, as canonical tables.
async fn batch(
    p: &Arc<Pipeline>,
    msgs: &[(String, String, String)],
) -> std::collections::BTreeMap<String, Vec<String>> {
    let (state, refused) = batch_state(p, msgs);
    assert!(
        refused.is_empty(),
        "the random events are all valid: {refused:?}"
    );
    canonical_tables(&compute(p, &state).await)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn the_pipeline_with_cuts_and_restarts_equals_the_batch_path(
        seed in any::<u64>(),
        n in 1usize..120,
        every in 1u64..40,
        stops in prop::collection::vec(1u64..60, 0..4),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let p = PipelineFile::default()
            .snapshot("trigger_events", &every.to_string())
            .snapshot("trigger_interval", "\"1h\"")
            .load();
        let msgs: Vec<(String, String, String)> = random_events(seed, n)
            .into_iter()
            .map(|(t, key, json)| (p.source.topics[&t].clone(), key, json))
            .collect();
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
        let want = without(rt.block_on(batch(&p, &msgs)), "dead_letters");
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
