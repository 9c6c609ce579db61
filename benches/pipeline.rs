//! Micro-benchmarks of the hot stages: JSON → event decode per event type, folding into
//! state, computing every snapshot table (1,000 and 10,000 reps, one quarter and two years of
//! history), and writing a snapshot's files. `cargo bench --bench pipeline [-- FILTER]`;
//! figures go in the README.

use std::sync::Arc;

use chrono::NaiveDate;
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

use quotaflow::config::DecodeLimits;
use quotaflow::config::Pipeline;
use quotaflow::engine::Engine;
use quotaflow::generate::{generate, GenSpec, Generated};
use quotaflow::ingest::{Ingest, Message};
use quotaflow::pipeline::StateWrite;
use quotaflow::snapshot::{AlertsImage, EncodedTable, StateImage};
use quotaflow::source::decode::Decoder;
use quotaflow::state::segments::Manifest;
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

/// The messages through the pipeline's ingest path (`quotaflow::ingest`), as the run loop
/// folds them: decode, dedup, versions, counters, offsets.
fn fold(p: &Pipeline, msgs: &[Generated]) -> State {
    let ingest = Ingest::new(&p.source, p.metrics.calendar).unwrap_or_else(|e| panic!("{e}"));
    let messages = msgs.iter().enumerate().map(|(i, m)| Message {
        topic: &p.source.topics[&m.event_type],
        partition: 0,
        offset: i as i64,
        payload: m.value.as_bytes(),
    });
    quotaflow::ingest::batch(&ingest, messages, i64::MAX / 4).0
}

fn decode_and_fold(c: &mut Criterion) {
    let p = Pipeline::builtin().unwrap_or_else(|e| panic!("{e}"));
    let msgs = messages(50, 30);
    let dec = decoder();
    let mut g = c.benchmark_group("source");
    g.measurement_time(std::time::Duration::from_secs(3));
    // Per event type, as events/s and as bytes/s.
    for t in quotaflow::event::schema::EventType::ALL {
        let of_type: Vec<&Generated> = msgs.iter().filter(|m| m.event_type == t).collect();
        let bytes: usize = of_type.iter().map(|m| m.value.len()).sum();
        let decode_all = || {
            of_type
                .iter()
                .filter(|m| dec.decode(m.event_type, m.value.as_bytes(), 0).is_ok())
                .count()
        };
        g.throughput(Throughput::Elements(of_type.len() as u64));
        g.bench_function(BenchmarkId::new("decode_events", t.name()), |b| {
            b.iter(decode_all)
        });
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(BenchmarkId::new("decode_bytes", t.name()), |b| {
            b.iter(decode_all)
        });
    }
    let bytes: usize = msgs.iter().map(|m| m.value.len()).sum();
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("decode_and_fold_events", |b| {
        b.iter(|| fold(&p, &msgs).size())
    });
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("decode_and_fold_bytes", |b| {
        b.iter(|| fold(&p, &msgs).size())
    });
    g.finish();
}

/// `days` of history from 2025-01-01 for `reps` reps, built directly (no JSON): 8 reps a
/// team, quarterly quotas, activity counters on every weekday, a deal every 6 days a rep with
/// three versions each (half won), a survey a month.
pub fn history_state(p: &Pipeline, reps: usize, days: i32) -> State {
    let mut s = State::default();
    history(p, reps, days, 0..days, Activities::Counters, &mut s);
    s.as_of = Some(at(HISTORY_START + days - 1));
    // As a running pipeline holds it: the rollups are up to date at every cut.
    s.roll_up_all(&p.metrics.calendar);
    s
}

/// The first day of `history`'s events (2025-01-01, a Wednesday).
const HISTORY_START: i32 = 20_089;

/// 10:00 UTC on `day`.
fn at(day: i32) -> i64 {
    i64::from(day) * 86_400_000_000 + 36_000_000_000
}

/// How `history` puts the activities into the state.
#[derive(Clone, Copy, PartialEq)]
enum Activities {
    /// A rep-day's counters added at once (`State::add_counts`): fast, no dedup ids.
    Counters,
    /// One event folded per activity, as a pipeline reads them: the dedup ids too.
    Events,
}

/// Folds into `s` the events of `history_state`'s history (of `days` days) that occur on the
/// days of `window` (offsets from its first day), rep after rep.
fn history(
    p: &Pipeline,
    reps: usize,
    days: i32,
    window: std::ops::Range<i32>,
    activities: Activities,
    s: &mut State,
) {
    use quotaflow::event::{Activity, ActivityType, Deal, Event, Quota, Rep, Stage, Survey};
    use rust_decimal::Decimal;
    let day0 = HISTORY_START;
    let horizon = p.source.dedup_horizon_micros();
    let fold = |s: &mut State, e: Event| {
        s.fold(e, Default::default(), &p.metrics.calendar, horizon);
    };
    for r in 0..reps {
        let rep_id = format!("rep-{r:05}");
        if window.contains(&0) {
            fold(
                s,
                Event::Rep(Rep {
                    rep_id: rep_id.clone(),
                    version: 1,
                    occurred_at: at(day0),
                    name: rep_id.clone(),
                    team_id: format!("team-{}", r / 8),
                    region: ["NA", "EMEA", "APAC", "LATAM"][r % 4].into(),
                    manager_id: None,
                    role: None,
                    hired_on: None,
                    effective_from: None,
                    active: true,
                }),
            );
            for q in 0..(days + 90) / 91 {
                let first = |q: i32| {
                    NaiveDate::from_ymd_opt(2025 + q / 4, 1 + 3 * (q % 4) as u32, 1)
                        .map(quotaflow::calendar::day_number)
                        .unwrap_or_default()
                };
                let (start, end) = (first(q), first(q + 1) - 1);
                fold(
                    s,
                    Event::Quota(Quota {
                        rep_id: rep_id.clone(),
                        period_start: start,
                        period_end: end,
                        amount: Decimal::new(15_000_000, 2),
                        currency: "USD".into(),
                        version: 1,
                        occurred_at: at(day0),
                    }),
                );
            }
        }
        for d in window.start.max(0)..window.end.min(days) {
            if (d + 3) % 7 >= 5 {
                continue; // 2025-01-01 is a Wednesday
            }
            let calls = 10 + (r as u32 + d as u32) % 7;
            if activities == Activities::Counters {
                let c = quotaflow::state::DailyCounts {
                    calls,
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
                s.add_counts(&rep_id, day0 + d, &c, &p.metrics.calendar);
                continue;
            }
            // The same counters as events (`activities` counts each of them).
            let kinds = std::iter::repeat_n((ActivityType::Call, "connected"), 3)
                .chain(std::iter::repeat_n(
                    (ActivityType::Call, "no_answer"),
                    calls as usize - 3,
                ))
                .chain(std::iter::once((ActivityType::Email, "replied")))
                .chain(std::iter::repeat_n((ActivityType::Email, "sent"), 7))
                .chain(std::iter::repeat_n((ActivityType::Meeting, "held"), 2))
                .chain(std::iter::once((ActivityType::Demo, "held")))
                .chain(std::iter::repeat_n((ActivityType::Task, "done"), 2));
            for (i, (activity_type, outcome)) in kinds.enumerate() {
                fold(
                    s,
                    Event::Activity(Activity {
                        event_id: format!("a-{r}-{d}-{i}"),
                        occurred_at: at(day0 + d) + i as i64 * 60_000_000,
                        rep_id: rep_id.clone(),
                        activity_type,
                        duration_s: (activity_type == ActivityType::Call).then_some(120),
                        outcome: Some(outcome.into()),
                        deal_id: None,
                        account_id: None,
                    }),
                );
            }
        }
        // A deal's versions occur on its creation day and 5 and 10 days later.
        let deals = (window.start - 10).max(0) / 6..(window.end.min(days) + 5) / 6;
        for k in deals.start..deals.end.min(days / 6) {
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
                // (the last window takes the versions after the history's last day)
                let day = k * 6 + 5 * v as i32;
                if day < window.start || (day >= window.end && window.end < days) {
                    continue;
                }
                fold(
                    s,
                    Event::Deal(Deal {
                        deal_id: format!("{rep_id}-d{k}").into(),
                        version: v as i64 + 1,
                        occurred_at: at(created + 5 * v as i32),
                        rep_id: rep_id.as_str().into(),
                        account_id: None,
                        stage,
                        amount: Decimal::new(2_000_000 + k as i64 * 1000, 2),
                        currency: "USD".into(),
                        close_date: created + 10,
                        forecast_category: None,
                        probability: None,
                        created_at: at(created),
                    }),
                );
            }
        }
        for m in (0..days / 30).filter(|m| window.contains(&(m * 30))) {
            fold(
                s,
                Event::Survey(Survey {
                    response_id: format!("{rep_id}-s{m}").into(),
                    occurred_at: at(day0 + m * 30),
                    rep_id: rep_id.clone().into(),
                    survey: format!("pulse-{m}").into(),
                    score: (r as i64 + m as i64) % 11,
                    comment: None,
                }),
            );
        }
    }
}

/// QUOTAFLOW_LOG=quotaflow=debug shows the time of every table.
fn log_from_env() {
    if let Ok(filter) = std::env::var("QUOTAFLOW_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init();
    }
}

fn snapshot_tables(c: &mut Criterion) {
    log_from_env();
    let p = Arc::new(Pipeline::builtin().unwrap_or_else(|e| panic!("{e}")));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mut g = c.benchmark_group("engine");
    g.sample_size(10);
    let only = std::env::var("QUOTAFLOW_BENCH_REPS").ok();
    for reps in [1_000usize, 10_000] {
        if only.as_ref().is_some_and(|o| o != &reps.to_string()) {
            continue;
        }
        for (history, days) in [("one_quarter", 91), ("two_years", 730)] {
            let state = history_state(&p, reps, days);
            let engine = Engine::new(Arc::clone(&p.metrics));
            g.bench_with_input(
                BenchmarkId::new(format!("all_tables_{history}"), format!("{reps}_reps")),
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
    }
    g.finish();
}

/// Writing one snapshot (the state files, a Delta commit per table, the checkpoint, `_latest`)
/// for a quarter of 1,000 reps, to memory and to local disk: the first snapshot of a new output
/// (every table created), and the next one when nothing changed (no table but `snapshots`
/// would commit; here none, as the benchmark leaves `snapshots` out).
fn snapshot_write(c: &mut Criterion) {
    let p = Arc::new(Pipeline::builtin().unwrap_or_else(|e| panic!("{e}")));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let mut state = history_state(&p, 1_000, 91);
    state.snapshot_id = 1;
    let tables = rt
        .block_on(Engine::new(Arc::clone(&p.metrics)).compute(&state, 1))
        .unwrap_or_else(|e| panic!("{e}"));
    let rows: usize = tables.iter().map(|t| t.num_rows()).sum();
    let dir = std::env::temp_dir().join(format!("quotaflow-bench-{}", std::process::id()));
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Elements(rows as u64));
    let scratch = quotaflow::snapshot::Location::parse(&format!(
        "memory://bench-state-{}",
        std::process::id()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let (image, alerts, ..) =
        state_snapshot(&rt, &scratch, &mut state, &Manifest::default(), 8, true);
    let encoded: Vec<EncodedTable> = tables
        .iter()
        .map(|t| {
            EncodedTable::encode(&layout(t), &t.schema, &t.batches)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    for (name, url) in [
        ("write_memory", "memory://bench".to_string()),
        ("write_local_disk", dir.display().to_string()),
    ] {
        let mut n = 0;
        g.bench_function(BenchmarkId::new(name, "1000_reps_one_quarter_first"), |b| {
            b.iter(|| {
                n += 1;
                let loc = quotaflow::snapshot::Location::parse(&format!("{url}/{n}"))
                    .unwrap_or_else(|e| panic!("{e}"));
                rt.block_on(loc.write_snapshot(&image, &alerts, &encoded, &meta(&p)))
                    .map(|(_, commits)| commits.len())
                    .unwrap_or(0)
            })
        });
        let loc = quotaflow::snapshot::Location::parse(&format!("{url}/unchanged"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut image = image.clone();
        rt.block_on(loc.write_snapshot(&image, &alerts, &encoded, &meta(&p)))
            .unwrap_or_else(|e| panic!("{e}"));
        g.bench_function(
            BenchmarkId::new(name, "1000_reps_one_quarter_unchanged"),
            |b| {
                b.iter(|| {
                    image.snapshot_id += 1;
                    rt.block_on(loc.write_snapshot(&image, &alerts, &encoded, &meta(&p)))
                        .map(|(_, commits)| commits.iter().filter(|(_, c)| c.committed).count())
                        .unwrap_or(0)
                })
            },
        );
    }
    g.finish();
    let _ = std::fs::remove_dir_all(dir);
}

/// A table's layout, as the pipeline file declares it.
fn layout(t: &quotaflow::engine::Table) -> quotaflow::snapshot::Layout {
    quotaflow::snapshot::Layout {
        name: t.name.clone(),
        partition_by: t.partition_by.clone(),
    }
}

/// What a snapshot write is given besides its tables, for the built-in pipeline.
fn meta(p: &Pipeline) -> quotaflow::snapshot::SnapshotMeta {
    quotaflow::snapshot::SnapshotMeta {
        pipeline: p.name.clone(),
        calendar: quotaflow::snapshot::CalendarRef {
            time_zone: p.metrics.calendar.timezone.name().to_string(),
            fiscal_year_start_month: p.metrics.calendar.fiscal_year_start_month,
            corporate_currency: p.metrics.corporate_currency.clone(),
        },
        events: 0,
        written_at: chrono::Utc::now(),
        log: quotaflow::snapshot::LogSettings {
            checkpoint_interval: p.snapshot.log_checkpoint_interval,
        },
        fingerprints: Default::default(),
        lost_offsets: Default::default(),
    }
}

/// A snapshot's state as the pipeline writes it: the cut's segment of what changed since
/// `previous` (everything with `all`), then (in the background task) the segment, any
/// compaction and the manifest's image. Returns the images, the new manifest, what was
/// written, and the seconds of the cut's part and of the write.
fn state_snapshot(
    rt: &tokio::runtime::Runtime,
    loc: &quotaflow::snapshot::Location,
    state: &mut State,
    previous: &Manifest,
    compact_after: usize,
    all: bool,
) -> (StateImage, AlertsImage, Manifest, StateWrite, (f64, f64)) {
    let t0 = std::time::Instant::now();
    let dirty = state.take_dirty();
    let cut =
        quotaflow::pipeline::cut_segment(state, &dirty, all).unwrap_or_else(|e| panic!("{e}"));
    let cut_s = t0.elapsed().as_secs_f64();
    let t1 = std::time::Instant::now();
    let (manifest, w) = rt
        .block_on(quotaflow::pipeline::write_state(
            loc,
            previous,
            state.head(),
            &cut,
            compact_after,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let image = quotaflow::pipeline::state_image(&manifest).unwrap_or_else(|e| panic!("{e}"));
    let alerts = AlertsImage(
        state
            .encode_alerts()
            .unwrap_or_else(|e| panic!("{e}"))
            .into(),
    );
    (
        image,
        alerts,
        manifest,
        w,
        (cut_s, t1.elapsed().as_secs_f64()),
    )
}

criterion_group!(benches, decode_and_fold, snapshot_tables, snapshot_write);

/// Peak memory of one snapshot as the pipeline takes it (state cut, SQL, Parquet, state file),
/// for `QUOTAFLOW_BENCH_MEMORY=<reps>x<days>` (e.g. `10000x730`), in a process of its own so
/// that no other benchmark's allocations count: `cargo bench --bench pipeline` with the
/// variable set runs this instead of the criterion benchmarks.
fn memory(spec: &str) {
    let parsed = spec
        .split_once('/')
        .map_or((spec, None), |(h, s)| (h, Some(s)));
    let (reps, days, step) = parsed
        .0
        .split_once('x')
        .and_then(|(r, d)| {
            let step = match parsed.1 {
                Some(s) => Some(s.parse::<i32>().ok().filter(|s| *s > 0)?),
                None => None,
            };
            Some((r.parse::<usize>().ok()?, d.parse::<i32>().ok()?, step))
        })
        .unwrap_or_else(|| {
            panic!("QUOTAFLOW_BENCH_MEMORY={spec}: expected <reps>x<days> or <reps>x<days>/<step days>")
        });
    let p = Arc::new(Pipeline::builtin().unwrap_or_else(|e| panic!("{e}")));
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("quotaflow-bench-mem-{}", std::process::id()));
    let loc = quotaflow::snapshot::Location::parse(&dir.display().to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(step) = step {
        replay(&rt, &p, &loc, reps, days, step);
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    let mut state = history_state(&p, reps, days);
    state.snapshot_id = 1;
    let state_peak = peak_rss_mib();
    let started = std::time::Instant::now();
    let (manifest, rows, steps) = first_snapshot(&rt, &p, &loc, &mut state);
    let took = started.elapsed();
    println!(
        "memory {reps} reps x {days} days: state {} rep-days, {} deals; peak RSS after building the state {state_peak} MiB, after one snapshot ({rows} rows, {:.2} s: {steps}) {} MiB",
        state.daily.len(),
        state.deals.len(),
        took.as_secs_f64(),
        peak_rss_mib()
    );
    // Next snapshots, evaluated incrementally as the pipeline does: after five more calls
    // of one rep on the last day, after a day of new events, and after one late revision of
    // a deal that closed in an old quarter (a restatement).
    let cal = p.metrics.calendar;
    let horizon = p.source.dedup_horizon_micros();
    let last = state.as_of.map_or(0, |t| cal.day_of(t));
    let call = |i: usize, rep: usize, day: i32| {
        quotaflow::event::Event::Activity(quotaflow::event::Activity {
            event_id: format!("bench-{day}-{rep}-{i}"),
            occurred_at: i64::from(day) * 86_400_000_000 + 50_000_000_000,
            rep_id: format!("rep-{rep:05}"),
            activity_type: quotaflow::event::ActivityType::Call,
            duration_s: Some(60),
            outcome: Some("connected".into()),
            deal_id: None,
            account_id: None,
        })
    };
    // The deal that closed earliest, in the first quarter of the history (chosen before the
    // closed deals leave memory), for the restatement below.
    let old = state
        .deals
        .values()
        .min_by_key(|d| (d.latest.close_date, d.latest.deal_id.clone()))
        .map(|d| d.latest.clone());
    // Closed months out of memory, as the pipeline lets them go once durable (the default
    // allowed lateness of 120 days, one closed month kept).
    let t0 = std::time::Instant::now();
    let (rss_before, held) = (rss_mib(), state.daily.len());
    let e = evict(&p, &mut state);
    println!(
        "closed months out of memory: {} months, {} of {held} rep-days, {} deals, {:.2} s; RSS {rss_before} -> {} MiB",
        e.months,
        e.rep_days,
        e.deals,
        t0.elapsed().as_secs_f64(),
        rss_mib()
    );
    for i in 0..5 {
        state.fold(call(i, 0, last), Default::default(), &cal, horizon);
    }
    let mut manifest = manifest;
    next_snapshot(
        &rt,
        &p,
        &loc,
        &mut state,
        &mut manifest,
        2,
        "5 more calls on the last day",
    );
    for rep in 0..reps {
        for i in 0..20 {
            state.fold(call(i, rep, last + 1), Default::default(), &cal, horizon);
        }
    }
    next_snapshot(
        &rt,
        &p,
        &loc,
        &mut state,
        &mut manifest,
        3,
        "a new day: 20 calls of every rep",
    );
    if let Some(mut d) = old {
        d.version += 1;
        d.amount += rust_decimal::Decimal::new(10_000, 2);
        state.fold(
            quotaflow::event::Event::Deal(d),
            Default::default(),
            &cal,
            horizon,
        );
    }
    next_snapshot(
        &rt,
        &p,
        &loc,
        &mut state,
        &mut manifest,
        4,
        "a restatement: one late deal revision into a closed quarter",
    );
    // What compaction costs: every part with more than one segment merged into a base (as
    // snapshot 5: snapshot 4's segment stays what its checkpoint names).
    state.snapshot_id = 5;
    let (.., w, (_, write_s)) = state_snapshot(&rt, &loc, &mut state, &manifest, 1, false);
    println!(
        "compaction of every part with more than one segment: {} parts, {:.2} MB of base, {write_s:.2} s (reading the segments included)",
        w.parts_compacted,
        w.base_bytes as f64 / 1e6
    );
    // A restore of the last snapshot: its manifest, then every segment it names.
    let c = rt
        .block_on(loc.checkpoint(4))
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = std::time::Instant::now();
    let restored = rt
        .block_on(quotaflow::pipeline::read_state(&loc, &c))
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "restore of snapshot 4: {:.2} s, {} segment files, {} rep-days, {} deals; peak RSS {} MiB",
        t0.elapsed().as_secs_f64(),
        c.state.segments.len(),
        restored.daily.len(),
        restored.deals.len(),
        peak_rss_mib()
    );
    // Every month back in memory: the state as if none had left.
    let (out, deals_out) = (state.residency.months_out(), state.residency.deals.len());
    rt.block_on(quotaflow::pipeline::bring_back(
        &loc, &manifest, &mut state, None, true,
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.residency.months_out(), 0, "{out} months were out");
    assert_eq!(state.residency.deals.len(), 0, "{deals_out} deals were out");
    assert_eq!(restored.daily, state.daily, "the restore holds the state");
    let differing: Vec<_> = restored
        .deals
        .keys()
        .chain(state.deals.keys())
        .filter(|k| restored.deals.get(*k) != state.deals.get(*k))
        .collect();
    if let Some(k) = differing.first() {
        panic!(
            "the restore holds the deals: {} differ; {k}: restored {:?}, in memory {:?}",
            differing.len(),
            restored.deals.get(*k),
            state.deals.get(*k)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The first snapshot of `state` into `loc`, as the pipeline takes it (the rollups summed and
/// the changes taken, every table evaluated over the whole state, the state written whole).
/// Returns its manifest, the rows it wrote and its steps, timed.
fn first_snapshot(
    rt: &tokio::runtime::Runtime,
    p: &Arc<Pipeline>,
    loc: &quotaflow::snapshot::Location,
    state: &mut State,
) -> (Manifest, u64, String) {
    state.roll_up(&p.metrics.calendar);
    let _ = state.take_changes(&p.metrics.calendar);
    // The state's part first (the runtime runs its writes): its cut on the reading thread,
    // then its write in the background task.
    let compact_after = p.snapshot.compact_after as usize;
    let (image, alerts, manifest, w, (cut_s, write_s)) =
        state_snapshot(rt, loc, state, &Manifest::default(), compact_after, true);
    let (rows, steps) = rt.block_on(async {
        // The steps of the pipeline's cut and of its background snapshot task, timed.
        let mut lap = std::time::Instant::now();
        let mut steps = vec![format!(
            "state segment {cut_s:.2} s to encode, {write_s:.2} s to write, {:.1} MB",
            w.delta_bytes as f64 / 1e6
        )];
        let mut step = |name: &str| {
            steps.push(format!("{name} {:.2} s", lap.elapsed().as_secs_f64()));
            lap = std::time::Instant::now();
        };
        let engine = Engine::new(Arc::clone(&p.metrics));
        let prepared = engine
            .prepare(state, state.snapshot_id, engine.full_plan())
            .unwrap_or_else(|e| panic!("{e}"));
        step("state tables");
        let mut tables = Vec::new();
        let mut encoding = std::time::Duration::ZERO;
        let rules = prepared
            .run(|t| {
                let t0 = std::time::Instant::now();
                tables.push(
                    EncodedTable::encode(&layout(&t), &t.schema, &t.batches)
                        .unwrap_or_else(|e| panic!("{e}")),
                );
                encoding += t0.elapsed();
                Ok::<_, quotaflow::engine::EngineError>(())
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        rules.evaluate().await.unwrap_or_else(|e| panic!("{e}"));
        step("SQL and Parquet");
        let (_, commits) = loc
            .write_snapshot(&image, &alerts, &tables, &meta(p))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        step("Delta commits");
        let bytes: u64 = commits.iter().map(|(_, c)| c.bytes_written).sum();
        let files: u64 = commits.iter().map(|(_, c)| c.files_added).sum();
        steps.push(format!(
            "of which Parquet {:.2} s; {files} files, {:.1} MB written",
            encoding.as_secs_f64(),
            bytes as f64 / 1e6
        ));
        (tables.iter().map(|t| t.rows).sum::<u64>(), steps.join(", "))
    });
    (manifest, rows, steps)
}

/// Peak memory of a pipeline over the whole history (`QUOTAFLOW_BENCH_MEMORY=<reps>x<days>/<step>`):
/// the history's events folded `step` days at a time, as a replay reads them, each step
/// followed by the snapshot a trigger cuts (the first in full, the next ones incremental,
/// with what they need read back) and the closed months and deals leaving memory after it.
/// The activities are added as a rep-day's counters, as in the one-snapshot measurement,
/// or, with `QUOTAFLOW_BENCH_ACTIVITIES=events`, folded one event each, so that the dedup ids
/// are held as the pipeline holds them. Prints each step's resident state and RSS, then the
/// peak.
fn replay(
    rt: &tokio::runtime::Runtime,
    p: &Arc<Pipeline>,
    loc: &quotaflow::snapshot::Location,
    reps: usize,
    days: i32,
    step: i32,
) {
    let horizon = p.source.dedup_horizon_micros();
    let activities = match std::env::var("QUOTAFLOW_BENCH_ACTIVITIES").as_deref() {
        Ok("events") => Activities::Events,
        Ok("counters") | Err(_) => Activities::Counters,
        Ok(other) => panic!("QUOTAFLOW_BENCH_ACTIVITIES={other}: expected events or counters"),
    };
    let mut state = State::default();
    let mut manifest = Manifest::default();
    let started = std::time::Instant::now();
    let mut peak = reset_peak();
    for (i, first) in (0..days).step_by(step as usize).enumerate() {
        let window = first..(first + step).min(days);
        let t0 = std::time::Instant::now();
        // (the peak until here is the last cut's, printed with it)
        heap_phase();
        history(p, reps, days, window.clone(), activities, &mut state);
        // (counters leave the event clock to the caller)
        state.as_of = state.as_of.max(Some(at(HISTORY_START + window.end - 1)));
        let folded = t0.elapsed();
        state.prune(horizon);
        // (each step's peak holds its fold)
        let step_peak = if i == 0 {
            state.snapshot_id = 1;
            manifest = first_snapshot(rt, p, loc, &mut state).0;
            evict(p, &mut state);
            reset_peak()
        } else {
            let id = state.snapshot_id + 1;
            let what = format!("days {}..{}", window.start, window.end);
            next_snapshot(rt, p, loc, &mut state, &mut manifest, id, &what)
        };
        peak = peak.max(step_peak);
        println!(
            "step {} (days {}..{}, folded in {:.2} s, {:.2} s in all): {} rep-days, {} deals, {} dedup ids, {} months out, {} deals out; RSS {} MiB, peak {step_peak} MiB",
            i + 1,
            window.start,
            window.end,
            folded.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            state.daily.len(),
            state.deals.len(),
            state.seen_activities.len(),
            state.residency.months_out(),
            state.residency.deals.len(),
            rss_mib(),
        );
    }
    println!(
        "replay of {reps} reps x {days} days, a snapshot every {step} days: {:.1} s; peak RSS {peak} MiB",
        started.elapsed().as_secs_f64(),
    );
    // What each part of the resident state holds: RSS freed by dropping it (and trimming).
    let mut parts = Vec::new();
    let mut drop_part = |name: &str, part: &mut dyn FnMut(&mut State)| {
        quotaflow::memory::trim();
        let before = rss_mib();
        part(&mut state);
        quotaflow::memory::trim();
        parts.push(format!("{name} {} MiB", before.saturating_sub(rss_mib())));
    };
    // (a page is freed once all it holds is: parts allocated side by side, as the deals and
    // survey responses of a rep, free theirs only when the last of them goes)
    drop_part("dedup ids", &mut |s| s.seen_activities = Default::default());
    drop_part("survey responses", &mut |s| s.surveys = Default::default());
    drop_part("rep-days", &mut |s| s.daily = Default::default());
    drop_part("period and week sums", &mut |s| {
        s.rollups = Default::default()
    });
    drop_part("out-of-memory index", &mut |s| {
        s.residency = Default::default()
    });
    drop_part("deals", &mut |s| {
        s.deals = Default::default();
        s.deal_last_activity = Default::default();
    });
    drop_part("the rest", &mut |s| *s = State::default());
    println!(
        "resident state at the end, by part (RSS freed by dropping it): {}; RSS left {} MiB",
        parts.join(", "),
        rss_mib()
    );
}

/// One snapshot of `state` as the pipeline takes it after what was folded since the last:
/// plan, state tables over the scope, SQL, the alert rules over the merged tables, Parquet,
/// commits; then the closed months and deals out of memory. Prints its steps and what it
/// wrote; returns its peak RSS (the peak is started again after it: `reset_peak`).
fn next_snapshot(
    rt: &tokio::runtime::Runtime,
    p: &Arc<Pipeline>,
    loc: &quotaflow::snapshot::Location,
    state: &mut State,
    manifest: &mut Manifest,
    id: u64,
    what: &str,
) -> u64 {
    use quotaflow::engine::plan::Publish;
    let started = std::time::Instant::now();
    let mut heap = vec![("the step's events generated and folded", heap_phase())];
    state.roll_up(&p.metrics.calendar);
    let rolled = started.elapsed();
    state.snapshot_id = id;
    let changes = state.take_changes(&p.metrics.calendar);
    let engine = Engine::new(Arc::clone(&p.metrics));
    let plan = engine.plan(state, &changes);
    let (scope, read) = (plan.scope.as_ref(), engine.reads_grain(&plan));
    let back = rt
        .block_on(quotaflow::pipeline::bring_back(
            loc, manifest, state, scope, read,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
    let planned = started.elapsed();
    heap.push(("roll-up, plan, read back", heap_phase()));
    let months = plan.scope.as_ref().map_or(0, |s| s.months.len());
    let computed = plan.compute.iter().filter(|c| **c).count();
    let prepared = engine
        .prepare(state, id, plan)
        .unwrap_or_else(|e| panic!("{e}"));
    let cut = started.elapsed();
    heap.push(("state tables", heap_phase()));
    let (image, alerts, next, w, (segment_s, state_write_s)) = state_snapshot(
        rt,
        loc,
        state,
        manifest,
        p.snapshot.compact_after as usize,
        false,
    );
    *manifest = next;
    heap.push(("state segment and write", heap_phase()));
    let (commits, sql, writing) = rt.block_on(async {
        let t0 = std::time::Instant::now();
        let mut tables = Vec::new();
        let mut by_table = Vec::new();
        let mut rules = prepared
            .run(|t| {
                // (the peak since the last table was encoded: this one's SQL)
                let computing = heap_phase();
                let now = quotaflow::memory::heap().map_or(0, |h| h.allocated) >> 20;
                let name = t.name.clone();
                let l = layout(&t);
                tables.push(
                    match t.publish {
                        Publish::Full => EncodedTable::encode(&l, &t.schema, &t.batches),
                        Publish::Partitions(only) => {
                            EncodedTable::encode_only(&l, &t.schema, &t.batches, Some(only))
                        }
                        Publish::Unchanged => Ok(EncodedTable::unchanged(&l)),
                    }
                    .unwrap_or_else(|e| panic!("{e}")),
                );
                by_table.push(format!("{name} {computing} (then {now}), {}", heap_phase()));
                Ok::<_, quotaflow::engine::EngineError>(())
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let computed = t0.elapsed();
        heap.push(("SQL and Parquet", heap_phase()));
        println!(
            "  live heap's peak by table computed, MiB: the SQL (then), its encoding: {}",
            by_table.join(", ")
        );
        for i in 0..rules.merges().len() {
            let m = &rules.merges()[i];
            let except = match &m.publish {
                Publish::Partitions(p) => Some(p.clone()),
                _ => None,
            };
            let previous = loc
                .scan_delta(&m.table, None, except.as_ref())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            rules
                .provide(i, Arc::new(previous))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let merged = t0.elapsed();
        rules.evaluate().await.unwrap_or_else(|e| panic!("{e}"));
        let sql = (computed, merged - computed, t0.elapsed() - merged);
        heap.push(("merges and rules", heap_phase()));
        let written = std::time::Instant::now();
        let (_, commits) = loc
            .write_snapshot(&image, &alerts, &tables, &meta(p))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (commits, sql, written.elapsed())
    });
    heap.push(("commits", heap_phase()));
    let peak = reset_peak();
    let evicted = evict(p, state);
    let evict_peak = reset_peak();
    let evict_heap = heap_phase();
    let committed: Vec<&str> = commits
        .iter()
        .filter(|(_, c)| c.committed)
        .map(|(n, _)| n.as_str())
        .collect();
    println!(
        "next snapshot ({what}): {} grain months and {} deals read back, {} months out after; {:.2} s (cut {:.2} s: roll-up {:.2}, changes, plan and months read back {:.2}, state tables {:.2}, state segment {:.2}; state written {:.2} s ({} bytes of segment, {} parts compacted, {} bytes of base), SQL and Parquet {:.2} s, merges read {:.2} s, rules {:.2} s, commits {:.2} s); {computed} statements computed, {months} months in scope; {} of {} tables committed ({}), {} files, {:.2} MB written, {} files replaced",
        back.0,
        back.1,
        state.residency.months_out(),
        started.elapsed().as_secs_f64(),
        cut.as_secs_f64(),
        rolled.as_secs_f64(),
        (planned - rolled).as_secs_f64(),
        (cut - planned).as_secs_f64(),
        segment_s,
        state_write_s,
        w.delta_bytes,
        w.parts_compacted,
        w.base_bytes,
        sql.0.as_secs_f64(),
        sql.1.as_secs_f64(),
        sql.2.as_secs_f64(),
        writing.as_secs_f64(),
        committed.len(),
        commits.len(),
        committed.join(" "),
        commits.iter().map(|(_, c)| c.files_added).sum::<u64>(),
        commits.iter().map(|(_, c)| c.bytes_written).sum::<u64>() as f64 / 1e6,
        commits.iter().map(|(_, c)| c.files_removed).sum::<u64>(),
    );
    println!("  peak RSS {peak} MiB through the write");
    let heap: Vec<String> = heap.iter().map(|(n, m)| format!("{n} {m}")).collect();
    println!("  live heap's peak by phase, MiB: {}", heap.join(", "));
    if evicted.months > 0 || evicted.deals > 0 {
        println!(
            "  then {} months, {} rep-days, {} deals out of memory, peak RSS {evict_peak} MiB, live heap {evict_heap} MiB",
            evicted.months, evicted.rep_days, evicted.deals
        );
    }
    peak.max(evict_peak)
}

/// Lets the closed months of the grain go, as the pipeline does once its state is durable
/// (the watermark at the event clock), and trims the allocator as it does after a snapshot.
fn evict(p: &Pipeline, state: &mut State) -> quotaflow::state::residency::Evicted {
    let watermark = state.as_of.unwrap_or(0);
    let lateness = p.source.allowed_lateness_micros();
    let closed_before =
        quotaflow::state::residency::closed_before(watermark, lateness, &p.metrics.calendar);
    let keep = p.snapshot.resident_closed_months as usize;
    let evicted = state.evict(
        closed_before,
        keep,
        &Default::default(),
        &p.metrics.calendar,
    );
    // And the freed pages back to the system, as after every snapshot.
    quotaflow::memory::trim();
    evicted
}

/// The highest live heap (jemalloc's `stats.allocated`) a sampler thread saw since the last
/// `heap_phase`, in bytes; the sampler reads it every two milliseconds.
static HEAP_PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Starts the sampler behind [`heap_phase`] (once).
fn sample_heap() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        std::thread::spawn(|| loop {
            if let Some(h) = quotaflow::memory::heap() {
                HEAP_PEAK.fetch_max(h.allocated, std::sync::atomic::Ordering::Relaxed);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        });
    });
}

/// The live heap's peak since the last call, in MiB, and starts the next phase's from the
/// live heap now.
fn heap_phase() -> u64 {
    sample_heap();
    let now = quotaflow::memory::heap().map_or(0, |h| h.allocated);
    let peak = HEAP_PEAK.swap(now, std::sync::atomic::Ordering::Relaxed);
    peak.max(now) >> 20
}

/// The process's resident set now (VmRSS), in MiB.
fn rss_mib() -> u64 {
    status_mib("VmRSS:")
}

/// The process's peak resident set (VmHWM), in MiB: since the start, or since the last
/// `reset_peak`.
fn peak_rss_mib() -> u64 {
    status_mib("VmHWM:")
}

/// Starts the peak resident set again from the current one (Linux's `clear_refs`), so that
/// the peak of one step can be told from the others'. Returns the peak until now.
fn reset_peak() -> u64 {
    let peak = peak_rss_mib();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    peak
}

fn status_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn main() {
    if let Ok(spec) = std::env::var("QUOTAFLOW_BENCH_MEMORY") {
        log_from_env();
        memory(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
