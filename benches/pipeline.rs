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
    let horizon = p.dedup_horizon.as_micros() as i64;
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

fn snapshot_tables(c: &mut Criterion) {
    let p = Arc::new(Pipeline::builtin().unwrap_or_else(|e| panic!("{e}")));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    for (reps, days) in [(100usize, 91u32), (1000, 91)] {
        let state = fold(&p, &messages(reps, days));
        let engine = Engine::new(Arc::clone(&p));
        g.bench_with_input(
            BenchmarkId::new("all_tables", format!("{reps}reps_{days}days")),
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
