//! Micro-benchmarks of the hot stages: JSON → event decode, folding into state, and computing
//! every snapshot table. `cargo bench --bench pipeline`; figures go in the README.

use std::sync::Arc;

use chrono::NaiveDate;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use quotaflow::config::Pipeline;
use quotaflow::engine::Engine;
use quotaflow::generate::{generate, GenSpec, Generated};
use quotaflow::source::decode::{DecodeLimits, Decoder};
use quotaflow::state::State;

fn messages(reps: usize, days: u32) -> Vec<Generated> {
    let mut out = Vec::new();
    let spec = GenSpec {
        reps,
        days,
        seed: 1,
        start: NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default(),
        silence: None,
    };
    generate(&spec, |g| out.push(g));
    out
}

fn decoder() -> Decoder {
    Decoder::new(DecodeLimits {
        max_message_bytes: 1 << 20,
        max_clock_skew_micros: i64::MAX / 4,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn fold(p: &Pipeline, msgs: &[Generated]) -> State {
    let dec = decoder();
    let mut s = State::default();
    let horizon = p.dedup_horizon_micros();
    for m in msgs {
        if let Ok(e) = dec.decode(m.event_type, m.value.as_bytes(), 0) {
            s.fold(e, &p.calendar, horizon);
        }
    }
    s
}

fn decode_and_fold(c: &mut Criterion) {
    let p = Pipeline::builtin().unwrap_or_else(|e| panic!("{e}"));
    let msgs = messages(50, 30);
    let bytes: usize = msgs.iter().map(|m| m.value.len()).sum();
    let dec = decoder();
    let mut g = c.benchmark_group("source");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            msgs.iter()
                .filter(|m| dec.decode(m.event_type, m.value.as_bytes(), 0).is_ok())
                .count()
        })
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("decode_and_fold", |b| b.iter(|| fold(&p, &msgs).size()));
    g.finish();
}

/// A year of history for `reps` reps, built directly (no JSON): 8 reps a team, quarterly
/// quotas, activity counters on every weekday, 60 deals a rep with three versions each (half
/// won), a survey a month.
fn year_state(p: &Pipeline, reps: usize) -> State {
    use quotaflow::event::{Deal, Event, Quota, Rep, Stage, Survey};
    use rust_decimal::Decimal;
    let day0 =
        quotaflow::calendar::day_number(NaiveDate::from_ymd_opt(2025, 1, 1).unwrap_or_default());
    let micros = |day: i32| i64::from(day) * 86_400_000_000 + 36_000_000_000;
    let horizon = p.dedup_horizon_micros();
    let mut s = State::default();
    let fold = |s: &mut State, e: Event| {
        s.fold(e, &p.calendar, horizon);
    };
    for r in 0..reps {
        let rep_id = format!("rep-{r:05}");
        fold(
            &mut s,
            Event::Rep(Rep {
                rep_id: rep_id.clone(),
                version: 1,
                occurred_at: micros(day0),
                name: rep_id.clone(),
                team_id: format!("team-{}", r / 8),
                region: ["NA", "EMEA", "APAC", "LATAM"][r % 4].into(),
                manager_id: None,
                role: None,
                hired_on: None,
                active: true,
            }),
        );
        for q in 0..4 {
            let start = quotaflow::calendar::day_number(
                NaiveDate::from_ymd_opt(2025, 1 + 3 * q, 1).unwrap_or_default(),
            );
            let end = quotaflow::calendar::day_number(
                NaiveDate::from_ymd_opt(2025, 3 + 3 * q, if q == 0 || q == 3 { 31 } else { 30 })
                    .unwrap_or_default(),
            );
            fold(
                &mut s,
                Event::Quota(Quota {
                    rep_id: rep_id.clone(),
                    period_start: start,
                    period_end: end,
                    amount: Decimal::new(15_000_000, 2),
                    currency: "USD".into(),
                    version: 1,
                    occurred_at: micros(day0),
                }),
            );
        }
        for d in 0..365 {
            if (d + 3) % 7 >= 5 {
                continue; // 2025-01-01 is a Wednesday
            }
            let c = quotaflow::state::DailyCounts {
                calls: 10 + (r as i64 + d as i64) % 7,
                emails: 8,
                meetings: 2,
                webinars: 0,
                demos: 1,
                tasks: 2,
                activities: 23,
                call_seconds: 1800,
                connected_calls: 3,
                replied_emails: 1,
                meetings_held: 2,
                demos_held: 1,
            };
            s.daily.insert((rep_id.clone(), day0 + d), c);
        }
        for k in 0..60 {
            let created = day0 + k * 6;
            let stages = [
                Stage::Prospecting,
                Stage::Proposal,
                if k % 2 == 0 {
                    Stage::ClosedWon
                } else {
                    Stage::ClosedLost
                },
            ];
            for (v, stage) in stages.into_iter().enumerate() {
                fold(
                    &mut s,
                    Event::Deal(Deal {
                        deal_id: format!("{rep_id}-d{k}"),
                        version: v as i64 + 1,
                        occurred_at: micros(created + 5 * v as i32),
                        rep_id: rep_id.clone(),
                        account_id: None,
                        stage,
                        amount: Decimal::new(2_000_000 + k as i64 * 1000, 2),
                        currency: "USD".into(),
                        close_date: created + 10,
                        forecast_category: None,
                        probability: None,
                        created_at: micros(created),
                    }),
                );
            }
        }
        for m in 0..12 {
            fold(
                &mut s,
                Event::Survey(Survey {
                    response_id: format!("{rep_id}-s{m}"),
                    occurred_at: micros(day0 + m * 30),
                    rep_id: rep_id.clone(),
                    survey: format!("pulse-{m}"),
                    score: (r as i64 + m as i64) % 11,
                    comment: None,
                }),
            );
        }
    }
    s.as_of = Some(micros(day0 + 364));
    s
}

fn snapshot_tables(c: &mut Criterion) {
    // QUOTAFLOW_LOG=quotaflow=debug shows the time of every table.
    if let Ok(filter) = std::env::var("QUOTAFLOW_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
    let p = Arc::new(Pipeline::builtin().unwrap_or_else(|e| panic!("{e}")));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    for reps in [1_000usize, 10_000] {
        let state = year_state(&p, reps);
        let engine = Engine::new(Arc::clone(&p));
        g.bench_with_input(
            BenchmarkId::new("all_tables_one_year", format!("{reps}_reps")),
            &state,
            |b, s| {
                b.iter(|| {
                    rt.block_on(engine.compute(s, 1))
                        .map(|t| t.len())
                        .unwrap_or(0)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decode_and_fold, snapshot_tables);
criterion_main!(benches);
