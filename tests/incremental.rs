//! Incremental evaluation (`quotaflow::engine::plan`) against the batch path, in process:
//! random streams (late and back-dated events, deal revisions that move close dates into
//! closed periods, fx revisions, duplicates, now and then a roster move) are folded in random
//! chunks; after every snapshot — planned from what changed, evaluated over its scope, its
//! partitions committed to Delta tables — every published table's latest version equals a
//! full recompute of the same state, and so do the alert rules' breaches. Random cuts restart
//! from the serialised state. Beside it: what a snapshot after a few activities recomputes,
//! and `quotaflow verify` on a real run's output.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use quotaflow::alert::{apply, apply_evaluated, AlertBook};
use quotaflow::config::Pipeline;
use quotaflow::engine::plan::{Plan, Publish};
use quotaflow::engine::{Engine, EngineError, Table};
use quotaflow::event::Day;
use quotaflow::pipeline::{bring_back, cut_segment, write_state};
use quotaflow::snapshot::{EncodedTable, Layout, Location, LogSettings};
use quotaflow::state::segments::{Dirty, Manifest};
use quotaflow::state::State;

use crate::common::{canonical, ev, fold_one, pipeline, EventType};

/// The state's segments on the output, and the grain's months to take out of memory after
/// each snapshot (`quotaflow::state::residency`).
struct Grain {
    manifest: Manifest,
    /// Months ending before this day leave memory once the snapshot's state is written.
    evict_before: Option<Day>,
}

/// One snapshot as the pipeline takes it: plan, scoped evaluation, the rules over the tables
/// merged with their latest versions, then the commits. The plan, and per table whether it
/// committed. With `grain`, as the pipeline also does: the grain's months the snapshot needs
/// read back from the segments first, the state's segment written after, closed months out.
#[allow(clippy::too_many_arguments)] // the steps of one snapshot, each its own input
async fn snapshot(
    p: &Arc<Pipeline>,
    engine: &Engine,
    loc: &Location,
    state: &mut State,
    id: u64,
    book: &mut AlertBook,
    first: bool,
    mut grain: Option<&mut Grain>,
) -> (Plan, Vec<(String, bool)>) {
    state.roll_up(&p.metrics.calendar);
    let mut changes = state.take_changes(&p.metrics.calendar);
    changes.all |= first;
    let plan = engine.plan(state, &changes);
    let mut segment = None;
    if let Some(g) = grain.as_deref_mut() {
        let (scope, read) = (plan.scope.as_ref(), engine.reads_grain(&plan));
        bring_back(loc, &g.manifest, state, scope, read)
            .await
            .unwrap();
        state.snapshot_id = id;
        let dirty = state.take_dirty();
        segment = Some(cut_segment(state, &dirty, first).unwrap());
    }
    let mut tables: Vec<Table> = Vec::new();
    let mut rules = engine
        .prepare(state, id, plan.clone())
        .unwrap()
        .run(|t| {
            tables.push(t);
            Ok::<_, EngineError>(())
        })
        .await
        .unwrap();
    for i in 0..rules.merges().len() {
        let m = &rules.merges()[i];
        let except = match &m.publish {
            Publish::Partitions(p) => Some(p.clone()),
            _ => None,
        };
        let previous = loc
            .scan_delta(&m.table, None, except.as_ref())
            .await
            .unwrap();
        rules.provide(i, std::sync::Arc::new(previous)).unwrap();
    }
    let (breaches, evaluated) = rules.evaluate().await.unwrap();
    apply_evaluated(book, breaches, Some(&evaluated), "p", id, state.as_of);
    let mut committed = Vec::new();
    for t in tables {
        let layout = Layout {
            name: t.name.clone(),
            partition_by: t.partition_by.clone(),
        };
        let encoded = match t.publish {
            Publish::Full => EncodedTable::encode(&layout, &t.schema, &t.batches).unwrap(),
            Publish::Partitions(only) => {
                EncodedTable::encode_only(&layout, &t.schema, &t.batches, Some(only)).unwrap()
            }
            Publish::Unchanged => EncodedTable::unchanged(&layout),
        };
        let c = loc
            .commit_table(
                &encoded,
                "p",
                id,
                LogSettings {
                    checkpoint_interval: 10,
                },
            )
            .await
            .unwrap();
        committed.push((t.name, c.committed));
    }
    if let (Some(g), Some(segment)) = (grain, segment) {
        let (manifest, _) = write_state(loc, &g.manifest, state.head(), &segment, 3)
            .await
            .unwrap();
        g.manifest = manifest;
        if let Some(day) = g.evict_before {
            // Everything is durable now: no cut is in flight.
            state.evict(day, 0, &Dirty::default(), &p.metrics.calendar);
        }
    }
    (plan, committed)
}

/// Every published table's latest version against a full recompute of `state`; the alert
/// book against the book of full evaluations. The differences, as text.
async fn differences(
    p: &Arc<Pipeline>,
    loc: &Location,
    state: &State,
    id: u64,
    book: &AlertBook,
    full_book: &mut AlertBook,
) -> Vec<String> {
    let (full, breaches) = Engine::new(Arc::clone(&p.metrics))
        .compute_with_alerts(state, id)
        .await
        .unwrap();
    apply(full_book, breaches, "p", id, state.as_of);
    let mut out = Vec::new();
    for t in full {
        let (schema, published) = loc.read_delta(&t.name, None).await.unwrap();
        let check = quotaflow::verify::compare(&t.name, &schema, &published, &t.batches).unwrap();
        if check.differs() {
            out.push(format!(
                "{}: only published {:?}; only recomputed {:?}",
                t.name,
                &check.only_published[..check.only_published.len().min(3)],
                &check.only_recomputed[..check.only_recomputed.len().min(3)]
            ));
        }
    }
    let firing = |b: &AlertBook| -> Vec<String> {
        b.firing
            .values()
            .map(|a| format!("{} {} {:?} {}", a.rule, a.key, a.value, a.message))
            .collect()
    };
    if firing(book) != firing(full_book) {
        out.push(format!(
            "alerts: incremental {:?} full {:?}",
            firing(book),
            firing(full_book)
        ));
    }
    out
}

/// Asserts that snapshot `id`'s published tables and firing alerts (`book`) equal the full
/// recompute of `state` (the deterministic tests' check; `differences` says what differs).
fn assert_equals_full(
    rt: &tokio::runtime::Runtime,
    p: &Arc<Pipeline>,
    loc: &Location,
    state: &State,
    id: u64,
    book: &AlertBook,
) {
    let diff = rt.block_on(differences(
        p,
        loc,
        state,
        id,
        book,
        &mut AlertBook::default(),
    ));
    assert!(diff.is_empty(), "{diff:#?}");
}

const STAGES: &[&str] = &[
    "prospecting",
    "qualification",
    "proposal",
    "negotiation",
    "closed_won",
    "closed_lost",
];

/// Random events over two years (2025-01 .. 2026-12), mostly in time order with late ones
/// mixed in. The content of an (entity, version) or fact id is a function of that key, so a
/// repeat is a true duplicate.
/// `state` as a restart has it: written whole as one segment and a manifest (through their
/// bytes), then restored from them, its alert part included.
fn restarted(state: &State) -> State {
    use quotaflow::state::segments::{Merge, Segment, SegmentRef};
    let at = SegmentRef {
        snapshot_id: state.snapshot_id,
        base: false,
    };
    let segment = state.encode_segment(&Dirty::default(), true, at).unwrap();
    let manifest = Manifest::default().next(state.head(), at, &segment.parts);
    let manifest = Manifest::decode(&manifest.encode().unwrap()).unwrap();
    let mut merge = Merge::new(&manifest, None);
    merge.add(Segment::decode(&segment.bytes).unwrap());
    let mut restored = merge.state();
    restored
        .decode_alerts(&state.encode_alerts().unwrap())
        .unwrap();
    restored
}

fn random_events(seed: u64, n: usize, moves: bool) -> Vec<(EventType, String)> {
    use EventType::*;
    let mut rng = StdRng::seed_from_u64(seed);
    let base = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let day = |d: u64| (base + chrono::Duration::days((d % 730) as i64)).to_string();
    let at = |d: u64, s: u64| format!("{}T{:02}:{:02}:00Z", day(d), 8 + s % 10, s % 60);
    let mut out = Vec::new();
    for i in 0..n as u64 {
        // the stream's clock moves on; one event in four is late, by up to 200 days
        let now = i * 730 / n as u64;
        let d = if rng.gen_range(0..4) == 0 {
            now.saturating_sub(rng.gen_range(0..200))
        } else {
            now
        };
        let k: u64 = rng.gen_range(0..60);
        let (deal, dv) = (k % 8, 1 + (k / 8) % 5);
        let r = k % 4;
        let e = match rng.gen_range(0..10) {
            0..=3 => (
                Activity,
                format!(
                    r#"{{"event_id":"a{i}-{k}","occurred_at":"{}","rep_id":"r{}","activity_type":"{}","outcome":"{}","duration_s":{}}}"#,
                    at(d, k),
                    k % 4,
                    ["call", "email", "meeting", "demo", "webinar", "task"][(k % 6) as usize],
                    ["connected", "replied", "held", "no_show"][(k % 4) as usize],
                    k * 11
                ),
            ),
            4 => (
                Activity,
                format!(
                    // a repeat of an earlier activity
                    r#"{{"event_id":"a{}-{k}","occurred_at":"{}","rep_id":"r{}","activity_type":"call","outcome":"connected","duration_s":5,"deal_id":"d{}"}}"#,
                    i / 2,
                    at(d, k),
                    k % 4,
                    deal
                ),
            ),
            5 | 6 => (
                Deal,
                format!(
                    // a revision may move the close date far back, into a closed period
                    r#"{{"deal_id":"d{deal}","version":{dv},"occurred_at":"{}","rep_id":"r{}","stage":"{}","amount":"{}.{:02}","currency":"{}","close_date":"{}","created_at":"{}T08:00:00Z"}}"#,
                    at(d, deal),
                    deal % 4,
                    STAGES[((deal * 5 + dv) % 6) as usize],
                    1000 + deal * 37 + dv,
                    (deal * 13 + dv) % 100,
                    if deal % 3 == 0 { "EUR" } else { "USD" },
                    day(deal * 90 + dv * 45),
                    day(deal * 90)
                ),
            ),
            7 => (
                Quota,
                format!(
                    r#"{{"rep_id":"r{r}","period_start":"{}","period_end":"{}","amount":"{}.00","currency":"{}","version":{},"occurred_at":"{}"}}"#,
                    ["2025-01-01", "2025-04-01", "2026-01-01", "2026-07-01"][(k % 4) as usize],
                    ["2025-03-31", "2025-06-30", "2026-03-31", "2026-09-30"][(k % 4) as usize],
                    50_000 + (k / 4) * 1000,
                    if r == 3 { "EUR" } else { "USD" },
                    1 + k / 4,
                    at(d, 1)
                ),
            ),
            8 => (
                Survey,
                format!(
                    r#"{{"response_id":"s{i}","occurred_at":"{}","rep_id":"r{}","survey":"pulse-{}","score":{}}}"#,
                    at(d, 4),
                    k % 4,
                    k % 2,
                    k % 11
                ),
            ),
            _ => (
                FxRate,
                format!(
                    // revisions of a few rates, some back-dated
                    r#"{{"currency":"EUR","effective_date":"{}","rate_to_corporate":"1.{}","version":{},"occurred_at":"{}"}}"#,
                    day((k % 5) * 150),
                    10 + k % 7,
                    1 + k / 5,
                    at(d, 3)
                ),
            ),
        };
        out.push(e);
        if moves && rng.gen_range(0..40) == 0 {
            out.push((Rep, format!(
                r#"{{"rep_id":"r{r}","version":{},"occurred_at":"{}","name":"n","team_id":"t{}","region":"g{}","active":true}}"#,
                i + 2, at(d, 2), (r + i) % 3, i % 2)));
        }
    }
    out
}

fn initial_roster() -> Vec<(EventType, String)> {
    (0..4)
        .map(|r| {
            (
                EventType::Rep,
                format!(
                    r#"{{"rep_id":"r{r}","version":1,"occurred_at":"2025-01-01T00:00:00Z","name":"n","team_id":"t{}","region":"g0","active":true,"effective_from":"2024-12-01"}}"#,
                    r % 2
                ),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn every_incremental_snapshot_equals_the_full_recompute(
        seed in any::<u64>(),
        n in 20usize..300,
        cuts in prop::collection::vec(1usize..60, 1..12),
        restarts in prop::collection::vec(any::<bool>(), 12),
        moves in any::<bool>(),
        evictions in prop::collection::vec(prop::option::of(0i32..800), 12),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let p = pipeline();
        let engine = Engine::new(Arc::clone(&p.metrics));
        prop_assert!(engine.full_because().is_none(), "{:?}", engine.full_because());
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let mut events = initial_roster();
        // A snapshot that folds a roster version is full by design: those of the initial
        // roster do not count for the share of scoped snapshots below.
        let roster_events = events.len();
        // An activity in the first month, so that a cut evicting after January has a month to
        // take out of memory.
        events.push((EventType::Activity, r#"{"event_id":"first","occurred_at":"2025-01-02T09:00:00Z","rep_id":"r0","activity_type":"call","outcome":"connected","duration_s":30}"#.into()));
        events.extend(random_events(seed, n, moves));
        let mut state = State::default();
        // `state` lets months of the grain go (at random cuts, any months before a random
        // day); `whole` folds the same events and never does: the full recompute reads it.
        let mut whole = State::default();
        let mut grain = Grain { manifest: Manifest::default(), evict_before: None };
        let first_day = quotaflow::calendar::day_number(chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap());
        let (mut evicted, mut asked) = (0, false);
        let (mut sums_out, mut asked_sums) = (0, false);
        let (mut book, mut full_book) = (AlertBook::default(), AlertBook::default());
        let mut at = 0;
        let mut id = 0;
        let mut scoped = 0;
        let mut eligible = 0;
        let steps = cuts.iter().cycle().zip(restarts.iter().cycle()).zip(evictions.iter().cycle());
        for ((c, restart), evict) in steps.take(40) {
            let upto = (at + c).min(events.len());
            let after_roster = at >= roster_events;
            for (t, json) in &events[at..upto] {
                fold_one(&p, &mut state, ev(*t, json));
                fold_one(&p, &mut whole, ev(*t, json));
            }
            at = upto;
            id += 1;
            grain.evict_before = evict.map(|d| first_day + d);
            asked |= at > roster_events && evict.is_some_and(|d| d >= 31);
            // Past March 2026: a fiscal year (whichever month it starts in) is over.
            asked_sums |= at > roster_events && evict.is_some_and(|d| d >= 425);
            let first = id == 1;
            let (plan, _) = rt.block_on(snapshot(&p, &engine, &loc, &mut state, id, &mut book, first, Some(&mut grain)));
            evicted += state.residency.months_out();
            sums_out += state.residency.sums.len();
            if after_roster {
                eligible += 1;
                scoped += usize::from(plan.scope.is_some());
            }
            let diff = rt.block_on(differences(&p, &loc, &whole, id, &book, &mut full_book));
            prop_assert!(diff.is_empty(), "snapshot {id} after {at} events: {diff:#?}");
            if *restart {
                // What a restore reads: every month, from the segments the last snapshot named.
                whole = restarted(&whole);
                state = whole.clone();
            }
            if at == events.len() {
                break;
            }
        }
        // The property is about incremental snapshots: most of those after the initial
        // roster were.
        prop_assert!(
            moves || scoped * 2 >= eligible,
            "{scoped} of {eligible} snapshots after the initial roster scoped"
        );
        // And months were out of memory at some cuts, unless no cut asked for it.
        prop_assert!(evicted > 0 || !asked, "no month left memory");
        // And so were the period and week sums of a past fiscal year.
        prop_assert!(sums_out > 0 || !asked_sums, "no period or week sum left memory");
    }
}

/// What the deterministic tests start from: the fixed parts of their snapshots (`Rig`), and
/// the state of the initial roster and `n` random events (`seed`) after its first, full
/// snapshot.
struct Setup {
    rig: Rig,
    state: State,
    book: AlertBook,
}

/// A runtime, the default pipeline and its engine, and an output in a directory of its own:
/// what every snapshot of a deterministic test is taken with.
struct Rig {
    rt: tokio::runtime::Runtime,
    p: Arc<Pipeline>,
    engine: Engine,
    _dir: tempfile::TempDir,
    loc: Location,
}

impl Rig {
    /// `p` with its engine, on a runtime of its own, writing to a fresh directory.
    fn new(p: Arc<Pipeline>) -> Rig {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let engine = Engine::new(Arc::clone(&p.metrics));
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
        Rig {
            rt,
            p,
            engine,
            _dir: dir,
            loc,
        }
    }

    /// Snapshot `id` of `state`, not its first, as [`snapshot`] takes it (with `grain`, its
    /// segments written and its closed months out of memory).
    fn snapshot(
        &self,
        state: &mut State,
        book: &mut AlertBook,
        id: u64,
        grain: Option<&mut Grain>,
    ) -> (Plan, Vec<(String, bool)>) {
        let Rig {
            rt, p, engine, loc, ..
        } = self;
        rt.block_on(snapshot(p, engine, loc, state, id, book, false, grain))
    }

    /// [`assert_equals_full`] on this rig's output.
    fn assert_equals_full(&self, state: &State, id: u64, book: &AlertBook) {
        assert_equals_full(&self.rt, &self.p, &self.loc, state, id, book);
    }
}

fn after_first_snapshot(seed: u64, n: usize) -> Setup {
    let rig = Rig::new(pipeline());
    let mut state = State::default();
    let mut events = initial_roster();
    events.extend(random_events(seed, n, false));
    for (t, json) in &events {
        fold_one(&rig.p, &mut state, ev(*t, json));
    }
    let mut book = AlertBook::default();
    let Rig {
        rt, p, engine, loc, ..
    } = &rig;
    rt.block_on(snapshot(
        p, engine, loc, &mut state, 1, &mut book, true, None,
    ));
    Setup { rig, state, book }
}

#[test]
fn after_a_few_activities_on_the_current_day_only_the_activity_tables_recompute_current_periods() {
    let Setup {
        rig,
        mut state,
        mut book,
    } = after_first_snapshot(7, 400);
    let Rig { p, engine, .. } = &rig;
    // Three activities on the day of the event clock (2026-12-30), no deal named.
    let today = quotaflow::calendar::date_of(
        p.metrics
            .calendar
            .day_of(state.as_of.expect("an event clock")),
    );
    for i in 0..3 {
        let json = format!(
            r#"{{"event_id":"new-{i}","occurred_at":"{today}T07:00:00Z","rep_id":"r{i}","activity_type":"call","outcome":"connected","duration_s":60}}"#
        );
        fold_one(p, &mut state, ev(EventType::Activity, &json));
    }
    let (plan, committed) = rig.snapshot(&mut state, &mut book, 2, None);
    let committed: BTreeSet<&str> = committed
        .iter()
        .filter(|(_, c)| *c)
        .map(|(n, _)| n.as_str())
        .collect();
    for t in [
        "deals_current",
        "attainment",
        "forecast",
        "win_rates",
        "performance",
        "commissions",
        "stage_conversion",
        "survey_responses",
        "survey_nps",
        "dead_letters",
    ] {
        assert!(!committed.contains(t), "{t} committed: {committed:?}");
    }
    for t in [
        "rep_daily",
        "activity_kpis",
        "leaderboard",
        "trends",
        "data_quality",
    ] {
        assert!(committed.contains(t), "{t} not committed: {committed:?}");
    }
    // Only the state tables a computed statement or an evaluated rule names are built: no
    // survey response, quota record or dead letter for a snapshot of three activities.
    let prepared = engine.prepare(&state, 3, plan.clone()).unwrap();
    let built: BTreeSet<&str> = prepared.state_tables().iter().map(String::as_str).collect();
    for t in ["surveys", "quotas", "dead_letter_log"] {
        assert!(!built.contains(t), "{t} built: {built:?}");
    }
    for t in [
        "activity_days",
        "activity_weeks",
        "deals",
        "clock",
        "unconverted",
    ] {
        assert!(built.contains(t), "{t} not built: {built:?}");
    }
    let scope = plan.scope.expect("a scoped snapshot");
    let months: Vec<String> = scope
        .months
        .iter()
        .map(|d| quotaflow::calendar::date_of(*d).to_string())
        .collect();
    // the current month only
    assert_eq!(
        months,
        [today.to_string()[..8].to_string() + "01"],
        "{months:?}"
    );
    assert_eq!(scope.weeks.len(), 8);
    rig.assert_equals_full(&state, 2, &book);
}

#[test]
fn a_move_recomputes_from_its_effective_day_on_and_a_first_placement_everything() {
    let Setup {
        rig,
        mut state,
        mut book,
    } = after_first_snapshot(11, 600);
    let Rig { p, .. } = &rig;
    let rep = |rep: &str, version: i64, from: &str| {
        format!(
            r#"{{"rep_id":"{rep}","version":{version},"occurred_at":"2026-12-30T08:00:00Z","name":"n","team_id":"t9","region":"g1","active":true,"effective_from":"{from}"}}"#
        )
    };
    // r1 moves to t9 from 2025-12-10, back-dated: a year ago, after its first placement.
    fold_one(
        p,
        &mut state,
        ev(EventType::Rep, &rep("r1", 10, "2025-12-10")),
    );
    let (plan, _) = rig.snapshot(&mut state, &mut book, 2, None);
    let scope = plan
        .scope
        .expect("a move after the first placement is scoped");
    let months: Vec<String> = scope
        .months
        .iter()
        .map(|d| quotaflow::calendar::date_of(*d).to_string())
        .collect();
    // The effective day's month is recomputed; the months of the year before it are not.
    assert!(months.iter().any(|m| m == "2025-12-01"), "{months:?}");
    assert!(
        months.iter().all(|m| m.as_str() >= "2025-11-01"),
        "{months:?}"
    );
    rig.assert_equals_full(&state, 2, &book);
    // A rep's first placement reaches back to the first day: evaluated in full.
    fold_one(
        p,
        &mut state,
        ev(EventType::Rep, &rep("r7", 1, "2026-06-01")),
    );
    let (plan, _) = rig.snapshot(&mut state, &mut book, 3, None);
    assert!(
        plan.scope.is_none(),
        "a first placement is evaluated in full"
    );
    rig.assert_equals_full(&state, 3, &book);
}

/// Closed deals of the years before the closed months leave memory with them; a new version,
/// a repeat of it and an activity naming such a deal are folded without it, and the next cut
/// brings it back with them applied: the tables equal the full recompute of a state that
/// never let anything go, and so does the deal.
#[test]
fn a_closed_deal_of_a_past_year_leaves_memory_and_comes_back_with_what_was_read_about_it() {
    let Setup {
        rig,
        mut state,
        mut book,
    } = after_first_snapshot(13, 600);
    let Rig { p, .. } = &rig;
    let mut whole = state.clone();
    let cal = &p.metrics.calendar;
    let day = |d: &str| quotaflow::calendar::day_number(d.parse().unwrap());
    // Segments for the state, then everything closed before December 2026 may leave: the
    // deals closed, and created, before 2026.
    let mut grain = Grain {
        manifest: Manifest::default(),
        evict_before: Some(day("2026-12-01")),
    };
    rig.snapshot(&mut state, &mut book, 2, Some(&mut grain));
    let out: Vec<smol_str::SmolStr> = whole
        .deals
        .keys()
        .filter(|id| !state.deals.contains_key(*id))
        .cloned()
        .collect();
    assert_eq!(state.residency.deals.len(), out.len());
    assert!(!out.is_empty(), "no deal left memory");
    for id in &out {
        let d = &whole.deals[id.as_str()].latest;
        assert!(
            matches!(d.stage.as_str(), "closed_won" | "closed_lost"),
            "{id}: {d:?}"
        );
        assert!(d.close_date < day("2026-01-01"), "{id}: {d:?}");
        assert!(cal.day_of(d.created_at) < day("2026-01-01"), "{id}: {d:?}");
    }
    // A new version of one (reopened, closing in 2026), the same version again, an
    // activity naming it; and a repeat of a version it had before it left.
    let id = &out[0];
    let old = whole.deals[id.as_str()].history[0].0;
    let (_, repeat) = random_events(13, 600, false)
        .into_iter()
        .find(|(t, json)| {
            *t == EventType::Deal
                && json.starts_with(&format!(r#"{{"deal_id":"{id}","version":{old},"#))
        })
        .expect("the version it had");
    let version = |v: i64| {
        format!(
            r#"{{"deal_id":"{id}","version":{v},"occurred_at":"2026-12-30T10:00:00Z","rep_id":"r1","stage":"negotiation","amount":"1234.50","currency":"USD","close_date":"2026-03-31","created_at":"2025-02-01T08:00:00Z"}}"#
        )
    };
    let activity = format!(
        r#"{{"event_id":"about-{id}","occurred_at":"2026-12-30T11:00:00Z","rep_id":"r1","activity_type":"call","outcome":"connected","duration_s":60,"deal_id":"{id}"}}"#
    );
    let events = [
        (EventType::Deal, version(90)),
        (EventType::Deal, version(90)),
        (EventType::Activity, activity),
        (EventType::Deal, repeat),
    ];
    for (t, json) in &events {
        fold_one(p, &mut state, ev(*t, json));
        fold_one(p, &mut whole, ev(*t, json));
    }
    assert!(
        !state.deals.contains_key(id.as_str()),
        "folded without coming back"
    );
    assert_eq!(
        state.quality, whole.quality,
        "new and duplicate versions told apart"
    );
    grain.evict_before = None;
    let (plan, _) = rig.snapshot(&mut state, &mut book, 3, Some(&mut grain));
    assert!(plan.scope.is_some(), "a scoped snapshot");
    assert_eq!(
        state.deals.get(id.as_str()),
        whole.deals.get(id.as_str()),
        "the deal came back whole"
    );
    assert_eq!(
        state.deal_last_activity.get(id.as_str()),
        whole.deal_last_activity.get(id.as_str())
    );
    rig.assert_equals_full(&whole, 3, &book);
}

/// A revision of an open deal created in a past fiscal year changes its cohort (the quarter
/// it was created in) and its close periods, not the year it was created in: the cut brings
/// back the deals out of memory created in that quarter, and none of the year's sums or
/// months, and its tables still equal the full recompute.
#[test]
fn a_revision_of_an_old_open_deal_brings_back_its_cohort_quarter_not_its_year() {
    let Setup {
        rig,
        mut state,
        mut book,
    } = after_first_snapshot(13, 600);
    let Rig { p, engine, .. } = &rig;
    let cal = &p.metrics.calendar;
    let day = |d: &str| quotaflow::calendar::day_number(d.parse().unwrap());
    // On the stream's last day (the clock stays on it): created in February 2025, closing in
    // December 2026, so it stays in memory when 2025 leaves.
    let version = |v: i64, stage: &str| {
        let json = format!(
            r#"{{"deal_id":"cohort-1","version":{v},"occurred_at":"2026-12-30T09:00:00Z","rep_id":"r1","stage":"{stage}","amount":"900.00","currency":"USD","close_date":"2026-12-15","created_at":"2025-02-01T08:00:00Z"}}"#
        );
        ev(EventType::Deal, &json)
    };
    fold_one(p, &mut state, version(1, "qualification"));
    let mut whole = state.clone();
    let mut grain = Grain {
        manifest: Manifest::default(),
        evict_before: Some(day("2026-12-01")),
    };
    rig.snapshot(&mut state, &mut book, 2, Some(&mut grain));
    assert!(state.deals.contains_key("cohort-1"), "an open deal stays");
    assert!(!state.residency.sums.is_empty(), "2025's sums left memory");
    let out_before = state.residency.deals.len();
    assert!(out_before > 0, "2025's closed deals left memory");
    fold_one(p, &mut state, version(2, "proposal"));
    fold_one(p, &mut whole, version(2, "proposal"));
    // What the cut will need, planned on a copy (the snapshot takes the changes itself).
    let mut probe = state.clone();
    let changes = probe.take_changes(cal);
    let plan = engine.plan(&probe, &changes);
    let scope = plan.scope.as_ref().expect("a scoped snapshot");
    assert!(scope.quarters.contains(&day("2025-01-01")), "the cohort");
    assert!(
        scope.periods.iter().all(|p| *p >= day("2026-01-01")),
        "no period of 2025: {:?}",
        scope.periods
    );
    let needed = probe.needed(Some(scope), engine.reads_grain(&plan));
    assert!(needed.sums.is_empty(), "{:?}", needed.sums);
    assert!(needed.months.is_empty(), "{:?}", needed.months);
    let resident: BTreeSet<smol_str::SmolStr> = state.deals.keys().cloned().collect();
    grain.evict_before = None;
    rig.snapshot(&mut state, &mut book, 3, Some(&mut grain));
    // The deals that came back are the cohort's: created in the first quarter of 2025.
    let back: Vec<_> = state
        .deals
        .iter()
        .filter(|(id, _)| !resident.contains(*id))
        .map(|(_, d)| &d.latest)
        .collect();
    assert!(!back.is_empty(), "the cohort's deals came back");
    assert_eq!(state.residency.deals.len(), out_before - back.len());
    assert!(
        !state.residency.deals.is_empty(),
        "deals of other quarters stayed out"
    );
    for d in &back {
        let created = cal.day_of(d.created_at);
        assert!(
            (day("2025-01-01")..day("2025-04-01")).contains(&created),
            "{d:?}"
        );
    }
    rig.assert_equals_full(&whole, 3, &book);
}

#[test]
fn a_custom_sql_file_makes_every_snapshot_full_and_says_why() {
    let p = crate::common::pipeline_with(|t| {
        t.replace(
            "[[tables]]\nname = \"attainment\"",
            "[[tables]]\nname = \"mine\"\nsql = \"../sql/rep_daily.sql\"\npublish = false\n\n[[tables]]\nname = \"attainment\"",
        )
    });
    let engine = Engine::new(Arc::clone(&p.metrics));
    let why = engine.full_because().expect("not incremental");
    assert!(why.contains("`mine`"), "{why}");
    let plan = engine.plan(&State::default(), &Default::default());
    assert!(plan.scope.is_none() && plan.compute.iter().all(|c| *c));
}

/// A changed setting recomputes in full, at the next snapshot, the tables that read it (their
/// fingerprints are in the checkpoint), and a changed alert rule is evaluated again: here the
/// one new message is a duplicate, which changes no input of either. A changed calendar is
/// refused, saying how to rebuild, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_setting_recomputes_its_tables_in_full_and_a_changed_calendar_is_refused() {
    use crate::harness::{once, produce, run_in_process, PipelineFile};
    use crate::pipeline_mock::{batch_state, cluster, firing_alerts, latest_tables, without};
    use quotaflow::engine::fingerprints;

    let p = crate::common::pipeline();
    let c = cluster(&p);
    let brokers = c.bootstrap_servers();
    // Three fiscal months of history.
    let spec = quotaflow::generate::GenSpec {
        days: 70,
        start: chrono::NaiveDate::from_ymd_opt(2026, 1, 5).unwrap(),
        ..crate::pipeline_mock::spec(4)
    };
    let mut msgs = Vec::new();
    quotaflow::generate::generate(&spec, |g| {
        msgs.push((p.source.topics[&g.event_type].clone(), g.key, g.value))
    });
    produce(&brokers, 10_000, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    run_in_process(&p, once(&brokers, out)).await;
    let fired_before = firing_alerts(&latest_tables(out).await);

    // Calls count double and a rep's pacing must reach 2.0: only the leaderboard's and that
    // rule's fingerprints move.
    let changed = PipelineFile::default()
        .set("leaderboard", "calls", "2.0")
        .edit(|t| t.replace("min_pacing = \"0.8\"", "min_pacing = \"2.0\""))
        .load();
    let (before, after) = (fingerprints(&p.metrics), fingerprints(&changed.metrics));
    let moved: Vec<&String> = after
        .keys()
        .filter(|t| before.get(*t) != after.get(*t))
        .collect();
    assert_eq!(moved, ["leaderboard", "rule:pacing_behind"]);
    msgs.push(msgs[0].clone());
    produce(&brokers, 10_000, &msgs[msgs.len() - 1..]);
    let r = run_in_process(&changed, once(&brokers, out)).await;
    assert_eq!((r.messages, r.snapshots), (1, 1));
    let tables = latest_tables(out).await;
    let (state, _) = batch_state(&changed, &msgs);
    let engine = quotaflow::engine::Engine::new(std::sync::Arc::clone(&changed.metrics));
    let (full, breaches) = engine.compute_with_alerts(&state, 1).await.unwrap();
    let full: Vec<_> = full.into_iter().map(|t| (t.name, t.batches)).collect();
    let (streamed, batch) = (canonical(&tables), canonical(&full));
    let old = canonical(&crate::pipeline_mock::batch_tables(&p, &msgs).await);
    assert_ne!(
        streamed["leaderboard"], old["leaderboard"],
        "the weights change the leaderboard"
    );
    let (streamed, batch) = (
        without(streamed, "dead_letters"),
        without(batch, "dead_letters"),
    );
    let differ: Vec<&String> = batch
        .keys()
        .filter(|t| streamed.get(*t) != batch.get(*t))
        .collect();
    assert!(differ.is_empty(), "differ from the batch path: {differ:?}");
    assert_eq!(streamed.len(), batch.len());
    // The rule's new threshold fired what a full evaluation fires.
    let mut book = AlertBook::default();
    apply(&mut book, breaches, "p", 1, state.as_of);
    let mut expected: Vec<(String, String, String)> = book
        .firing
        .values()
        .map(|a| (a.rule.clone(), a.key.clone(), "firing".to_string()))
        .collect();
    expected.sort();
    let firing = firing_alerts(&tables);
    let pacing =
        |v: &[(String, String, String)]| v.iter().filter(|(r, _, _)| r == "pacing_behind").count();
    assert!(
        pacing(&firing) > pacing(&fired_before),
        "the higher threshold fires more"
    );
    assert_eq!(firing, expected);

    // Another time zone: refused before anything is read or written.
    let loc = Location::parse(out).unwrap();
    let latest = loc.latest().await.unwrap();
    let berlin = PipelineFile::default()
        .set("calendar", "timezone", "\"Europe/Berlin\"")
        .load();
    let e = quotaflow::pipeline::run(berlin, once(&brokers, out), std::future::pending())
        .await
        .expect_err("a changed calendar is refused");
    let text = e.to_string();
    assert!(
        text.contains(out)
            && text.contains("UTC")
            && text.contains("Europe/Berlin")
            && text.contains("new --output"),
        "{text}"
    );
    assert_eq!(loc.latest().await.unwrap(), latest);
}

/// A rule evaluated because a table it reads changed gets the helper views it names computed,
/// even when no table of the snapshot needs them (here `reps`, when only a dead letter came).
#[test]
fn a_rule_gets_the_helper_views_it_reads_when_only_its_table_changed() {
    let rig = Rig::new(crate::common::pipeline_with(|t| {
        t + r#"
[[alerts]]
name = "dead_letters_by_rep"
severity = "info"
description = "test rule"
sql = "../tests/data/alerts/dead_letters_by_rep.sql"
params = { at_least = "0" }
"#
    }));
    let Rig {
        rt, p, engine, loc, ..
    } = &rig;
    assert!(
        engine.full_because().is_none(),
        "{:?}",
        engine.full_because()
    );
    let mut state = State::default();
    for (t, json) in initial_roster() {
        fold_one(p, &mut state, ev(t, &json));
    }
    let mut book = AlertBook::default();
    rt.block_on(snapshot(
        p, engine, loc, &mut state, 1, &mut book, true, None,
    ));
    assert!(
        !book
            .firing
            .values()
            .any(|a| a.rule == "dead_letters_by_rep"),
        "no dead letter yet"
    );
    let ingest = quotaflow::ingest::Ingest::new(&p.source, p.metrics.calendar).unwrap();
    let watermark = quotaflow::watermark::Watermark::new(std::time::Duration::ZERO, 0, true);
    let bad = quotaflow::ingest::Message {
        topic: "spm.activities",
        partition: 0,
        offset: 0,
        payload: b"{not json",
    };
    assert!(ingest
        .message(&mut state, &watermark, bad, crate::common::FAR_FUTURE)
        .is_some());
    let (plan, _) = rig.snapshot(&mut state, &mut book, 2, None);
    let reps = p
        .metrics
        .tables
        .iter()
        .position(|t| t.name == "reps")
        .unwrap();
    let rule = p.metrics.alerts.len() - 1;
    assert!(plan.rules[rule] && plan.compute[reps], "{plan:?}");
    let firing: Vec<&str> = book
        .firing
        .values()
        .filter(|a| a.rule == "dead_letters_by_rep")
        .map(|a| a.key.as_str())
        .collect();
    assert_eq!(firing, ["r0", "r1", "r2", "r3"]);
}

#[test]
fn a_table_the_rules_read_merged_is_not_held_for_them_whole() {
    let Setup {
        rig,
        mut state,
        mut book,
    } = after_first_snapshot(11, 400);
    let Rig { rt, p, engine, .. } = &rig;
    // A new version of an open deal: `deals_current` recomputes its close month, and
    // `stalled_deal` reads the table merged with its latest version.
    let today = p
        .metrics
        .calendar
        .day_of(state.as_of.expect("an event clock"));
    let (at, close) = (
        quotaflow::calendar::date_of(today),
        quotaflow::calendar::date_of(today + 20),
    );
    let json = format!(
        r#"{{"deal_id":"d1","version":100,"occurred_at":"{at}T07:00:00Z","rep_id":"r1","stage":"proposal","amount":"5000.00","currency":"USD","close_date":"{close}","created_at":"{at}T06:00:00Z"}}"#
    );
    fold_one(p, &mut state, ev(EventType::Deal, &json));
    let mut probe = state.clone();
    probe.roll_up(&p.metrics.calendar);
    let changes = probe.take_changes(&p.metrics.calendar);
    let plan = engine.plan(&probe, &changes);
    let rules = rt
        .block_on(
            engine
                .prepare(&probe, 2, plan)
                .unwrap()
                .run(|_| Ok::<_, EngineError>(())),
        )
        .unwrap();
    let deals = rules.merges().iter().find(|m| m.table == "deals_current");
    assert!(
        deals.is_some_and(|m| matches!(m.publish, Publish::Partitions(_))),
        "{:?}",
        rules.merges().iter().map(|m| &m.table).collect::<Vec<_>>()
    );
    // Its rows of every month computed are gone; `clock`, a state table `stalled_deal`
    // names, stays until the rules run.
    assert!(!rules.holds("deals_current"));
    assert!(rules.holds("clock"));
    // The same snapshot, provided and evaluated, equals the full recompute (the rules'
    // breaches included).
    rig.snapshot(&mut state, &mut book, 2, None);
    rig.assert_equals_full(&state, 2, &book);
}
