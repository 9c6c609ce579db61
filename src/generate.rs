//! Deterministic synthetic data for every topic: a sales organisation with regions, teams and
//! reps of varying skill, quarterly quotas in local currencies, weekly fx rates, deals that move
//! through the funnel with revisions and end won or lost, activities that rise with skill and
//! lead to wins, monthly pulse surveys, a few team transfers recorded days after they took
//! effect (one of them corrected), and a trickle of resent (duplicate) activities.
//!
//! A scenario can silence some reps for a while (`Silence`): they log nothing and their deals
//! stand still, which is how a test or the demo makes known reps fall behind.
//!
//! The same `GenSpec` always yields the same messages in the same order, so a
//! generated stream can be replayed and its metrics compared.

use chrono::{Datelike, Duration, NaiveDate, NaiveTime, Weekday};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::event::schema::EventType;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenSpec {
    pub reps: usize,
    pub days: u32,
    pub seed: u64,
    pub start: NaiveDate,
    pub silence: Option<Silence>,
}

/// Reps (by number: 3 is `rep-00003`) who log no activity, open no deal and move no deal on
/// the days `from..until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    pub reps: Vec<usize>,
    pub from: NaiveDate,
    pub until: NaiveDate,
}

impl Silence {
    fn covers(&self, rep: usize, day: NaiveDate) -> bool {
        (self.from..self.until).contains(&day) && self.reps.contains(&rep)
    }
}

/// One generated Kafka message.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub event_type: EventType,
    /// The contract's suggested key (rep_id, deal_id or currency).
    pub key: String,
    pub value: String,
}

const REGIONS: &[(&str, &str)] = &[
    ("NA", "USD"),
    ("EMEA", "EUR"),
    ("UKI", "GBP"),
    ("APAC", "JPY"),
    ("LATAM", "USD"),
];
const TEAM_SIZE: usize = 8;
/// How many days after a transfer took effect the roster records it.
const TRANSFER_RECORDED_AFTER: i64 = 3;
const STAGES: &[&str] = &["prospecting", "qualification", "proposal", "negotiation"];

struct RepInfo {
    id: String,
    team: String,
    region: &'static str,
    currency: &'static str,
    skill: f64,
}

struct OpenDeal {
    id: String,
    rep: usize,
    version: i64,
    stage: usize,
    amount_usd: f64,
    created_at: String,
    close: NaiveDate,
    next_change: NaiveDate,
}

fn instant(day: NaiveDate, secs: u32) -> String {
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs.min(86_399), 0).unwrap_or_default();
    format!("{}T{}Z", day, t.format("%H:%M:%S"))
}

fn money(usd: f64, rate_usd_per_unit: f64, currency: &str) -> String {
    let local = usd / rate_usd_per_unit;
    if currency == "JPY" {
        format!("{:.0}.00", local.round())
    } else {
        format!("{:.2}", (local * 100.0).round() / 100.0)
    }
}

/// Calls `emit` for every message, day by day in event-time order.
pub fn generate(spec: &GenSpec, mut emit: impl FnMut(Generated)) {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let end = spec.start + Duration::days(i64::from(spec.days));
    let reps: Vec<RepInfo> = (0..spec.reps)
        .map(|i| {
            let team_no = i / TEAM_SIZE;
            let (region, currency) = REGIONS[team_no % REGIONS.len()];
            RepInfo {
                id: format!("rep-{i:05}"),
                team: format!("team-{}-{:03}", region.to_lowercase(), team_no),
                region,
                currency,
                skill: rng.gen_range(0.5..1.5),
            }
        })
        .collect();
    let mut rates: Vec<(&str, f64)> = vec![("EUR", 1.08), ("GBP", 1.27), ("JPY", 0.0067)];
    let rate_of = |rates: &[(&str, f64)], c: &str| {
        rates.iter().find(|(k, _)| *k == c).map_or(1.0, |(_, r)| *r)
    };
    let mut out: Vec<(String, Generated)> = Vec::new();
    let push = |out: &mut Vec<(String, Generated)>,
                at: String,
                t: EventType,
                key: &str,
                v: serde_json::Value| {
        out.push((
            at,
            Generated {
                event_type: t,
                key: key.to_string(),
                value: v.to_string(),
            },
        ));
    };

    // Day 0: fx in force from the first quarter's start (quotas convert on period_start), the
    // roster, and every quarter's quota.
    let first_quarter =
        NaiveDate::from_ymd_opt(spec.start.year(), (spec.start.month0() / 3) * 3 + 1, 1)
            .unwrap_or(spec.start);
    for (c, r) in &rates {
        push(
            &mut out,
            instant(spec.start, 1),
            EventType::FxRate,
            c,
            json!({
            "currency": c, "effective_date": first_quarter.to_string(), "rate_to_corporate": format!("{r:.6}"),
            "version": 1, "occurred_at": instant(spec.start, 1)}),
        );
    }
    for r in &reps {
        push(
            &mut out,
            instant(spec.start, 2),
            EventType::Rep,
            &r.id,
            json!({
            "rep_id": r.id, "version": 1, "occurred_at": instant(spec.start, 2), "name": format!("Rep {}", &r.id[4..]),
            "team_id": r.team, "region": r.region, "manager_id": format!("mgr-{}", r.team), "role": "AE",
            "hired_on": (spec.start - Duration::days(400)).to_string(), "active": true}),
        );
        let mut q = first_quarter;
        while q < end {
            let q_end =
                q.checked_add_months(chrono::Months::new(3)).unwrap_or(q) - Duration::days(1);
            let usd = rng.gen_range(120.0..240.0_f64).round() * 1000.0;
            push(
                &mut out,
                instant(spec.start, 3),
                EventType::Quota,
                &r.id,
                json!({
                "rep_id": r.id, "period_start": q.to_string(), "period_end": q_end.to_string(),
                "amount": money(usd, rate_of(&rates, r.currency), r.currency), "currency": r.currency,
                "version": 1, "occurred_at": instant(spec.start, 3)}),
            );
            q = q_end + Duration::days(1);
        }
    }

    let mut deals: Vec<OpenDeal> = Vec::new();
    let (mut n_act, mut n_deal, mut n_resp) = (0u64, 0u64, 0u64);
    let mut last_activity: Option<serde_json::Value> = None;
    // A few reps move team once, half-way through, and the move is recorded late: it took
    // effect TRANSFER_RECORDED_AFTER days earlier (back-dated `effective_from`). Every second
    // mover's move is then corrected the next day (same effective_from, a higher version,
    // another team). (day recorded, version, how many reps further on the new team's rep is)
    let half_way = spec.start + Duration::days(i64::from(spec.days / 2));
    let took_effect = half_way - Duration::days(TRANSFER_RECORDED_AFTER);
    let transfers = [
        (half_way, 2, TEAM_SIZE),
        (half_way + Duration::days(1), 3, 2 * TEAM_SIZE),
    ];
    let mut day = spec.start;
    while day < end {
        let weekday = !matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
        // Weekly fx rates, effective on Mondays.
        if day.weekday() == Weekday::Mon {
            for (c, r) in rates.iter_mut() {
                *r *= rng.gen_range(0.99..1.01);
                push(
                    &mut out,
                    instant(day, 60),
                    EventType::FxRate,
                    c,
                    json!({
                    "currency": c, "effective_date": day.to_string(), "rate_to_corporate": format!("{r:.6}"),
                    "version": 1, "occurred_at": instant(day, 60)}),
                );
            }
        }
        for (ri, rep) in reps.iter().enumerate() {
            let moved = ri % 17 == 5;
            for (on, version, step) in transfers {
                if day != on || !moved || (version == 3 && ri % 34 != 5) {
                    continue;
                }
                let to = &reps[(ri + step) % reps.len()];
                push(
                    &mut out,
                    instant(day, 120),
                    EventType::Rep,
                    &rep.id,
                    json!({
                    "rep_id": rep.id, "version": version, "occurred_at": instant(day, 120), "name": format!("Rep {}", &rep.id[4..]),
                    "team_id": to.team, "region": to.region, "manager_id": format!("mgr-{}", to.team), "role": "AE",
                    "active": true, "effective_from": took_effect.to_string()}),
                );
            }
            let silent = spec.silence.as_ref().is_some_and(|s| s.covers(ri, day));
            if !weekday || silent {
                continue;
            }
            let open: Vec<String> = deals
                .iter()
                .filter(|d| d.rep == ri)
                .map(|d| d.id.clone())
                .collect();
            let mut activity = |kind: &str,
                                rng: &mut StdRng,
                                out: &mut Vec<(String, Generated)>| {
                n_act += 1;
                let at = instant(day, rng.gen_range(8 * 3600..18 * 3600));
                let (outcome, duration) = match kind {
                    "call" => (
                        if rng.gen_bool((0.25 * rep.skill).min(0.9)) {
                            "connected"
                        } else if rng.gen_bool(0.5) {
                            "voicemail"
                        } else {
                            "no_answer"
                        },
                        Some(rng.gen_range(20..900)),
                    ),
                    "email" => (
                        if rng.gen_bool((0.1 * rep.skill).min(0.9)) {
                            "replied"
                        } else {
                            "sent"
                        },
                        None,
                    ),
                    "task" => ("", None),
                    _ => (
                        if rng.gen_bool((0.8 * rep.skill).min(0.97)) {
                            "held"
                        } else {
                            "no_show"
                        },
                        Some(rng.gen_range(900..3600)),
                    ),
                };
                let mut v = json!({"event_id": format!("act-{}-{n_act}", spec.seed), "occurred_at": at, "rep_id": rep.id, "activity_type": kind});
                if !outcome.is_empty() {
                    v["outcome"] = json!(outcome);
                }
                if let Some(d) = duration {
                    v["duration_s"] = json!(d);
                }
                if !open.is_empty() && kind != "email" && rng.gen_bool(0.4) {
                    v["deal_id"] = json!(open[rng.gen_range(0..open.len())]);
                }
                push(out, at, EventType::Activity, &rep.id, v.clone());
                v
            };
            let counts = [
                ("call", (6.0 * rep.skill) as u32 + rng.gen_range(0..6)),
                ("email", (4.0 * rep.skill) as u32 + rng.gen_range(0..4)),
                ("meeting", rng.gen_range(0..3)),
                ("demo", u32::from(rng.gen_bool((0.3 * rep.skill).min(0.9)))),
                ("webinar", u32::from(rng.gen_bool(0.05))),
                ("task", rng.gen_range(0..3)),
            ];
            for (kind, n) in counts {
                for _ in 0..n {
                    let v = activity(kind, &mut rng, &mut out);
                    if rng.gen_bool(0.002) {
                        last_activity = Some(v);
                    }
                }
            }
            // A resent activity: same event_id, a duplicate by the contract.
            if let Some(v) = last_activity.take() {
                let at = v["occurred_at"].as_str().unwrap_or_default().to_string();
                push(&mut out, at, EventType::Activity, &rep.id, v);
            }
            // New deals.
            if rng.gen_bool(0.22) {
                n_deal += 1;
                let created_at = instant(day, rng.gen_range(9 * 3600..17 * 3600));
                let d = OpenDeal {
                    id: format!("deal-{}-{n_deal:07}", spec.seed),
                    rep: ri,
                    version: 1,
                    stage: 0,
                    amount_usd: (rng.gen_range(5.0..60.0_f64) * 1000.0).round(),
                    created_at: created_at.clone(),
                    close: day + Duration::days(rng.gen_range(30..90)),
                    next_change: day + Duration::days(rng.gen_range(3..12)),
                };
                push(
                    &mut out,
                    created_at.clone(),
                    EventType::Deal,
                    &d.id,
                    deal_json(&d, STAGES[0], rep, &rates, &created_at),
                );
                deals.push(d);
            }
            // Monthly pulse survey.
            if day.day() <= 7 && day.weekday() == Weekday::Wed && rng.gen_bool(0.8) {
                n_resp += 1;
                let score = ((rep.skill * 6.0) + rng.gen_range(-2.0..3.5_f64))
                    .round()
                    .clamp(0.0, 10.0) as i64;
                let at = instant(day, 15 * 3600);
                push(
                    &mut out,
                    at.clone(),
                    EventType::Survey,
                    &rep.id,
                    json!({
                    "response_id": format!("resp-{}-{n_resp}", spec.seed), "occurred_at": at, "rep_id": rep.id,
                    "survey": format!("pulse-{}", day.format("%Y-%m")), "score": score}),
                );
            }
        }
        // Deals move on.
        let mut still_open = Vec::with_capacity(deals.len());
        for mut d in deals.drain(..) {
            let silent = spec.silence.as_ref().is_some_and(|s| s.covers(d.rep, day));
            if d.next_change > day || silent {
                still_open.push(d);
                continue;
            }
            let rep = &reps[d.rep];
            let at = instant(day, rng.gen_range(9 * 3600..18 * 3600));
            d.version += 1;
            if rng.gen_bool(0.15) {
                d.amount_usd = (d.amount_usd * rng.gen_range(0.8..1.2) / 100.0).round() * 100.0;
            }
            let advance = rng.gen_bool((0.55 * rep.skill).min(0.95));
            let (stage, open) = if advance && d.stage + 1 < STAGES.len() {
                d.stage += 1;
                d.next_change = day + Duration::days(rng.gen_range(3..15));
                (STAGES[d.stage], true)
            } else if advance || rng.gen_bool(0.35) {
                d.close = day;
                (if advance { "closed_won" } else { "closed_lost" }, false)
            } else {
                // Stalls a while: same stage, a revision (close date pushed out).
                d.close = d.close.max(day) + Duration::days(rng.gen_range(5..20));
                d.next_change = day + Duration::days(rng.gen_range(5..20));
                (STAGES[d.stage], true)
            };
            push(
                &mut out,
                at.clone(),
                EventType::Deal,
                &d.id,
                deal_json(&d, stage, rep, &rates, &at),
            );
            if open {
                still_open.push(d);
            }
        }
        deals = still_open;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, g) in out.drain(..) {
            emit(g);
        }
        day += Duration::days(1);
    }
}

fn deal_json(
    d: &OpenDeal,
    stage: &str,
    rep: &RepInfo,
    rates: &[(&str, f64)],
    at: &str,
) -> serde_json::Value {
    let rate = rates
        .iter()
        .find(|(k, _)| *k == rep.currency)
        .map_or(1.0, |(_, r)| *r);
    json!({
        "deal_id": d.id, "version": d.version, "occurred_at": at, "rep_id": rep.id,
        "account_id": format!("acct-{}", &d.id[d.id.len() - 4..]), "stage": stage,
        "amount": money(d.amount_usd, rate, rep.currency), "currency": rep.currency,
        "close_date": d.close.to_string(), "created_at": d.created_at,
    })
}

/// Writes the generated messages of `spec` as one `<topic>.jsonl` per topic of `pipeline`
/// under `dir` (`quotaflow generate --out-dir`).
pub fn write_jsonl(
    spec: &GenSpec,
    pipeline: &crate::config::Pipeline,
    dir: &std::path::Path,
) -> Result<String, crate::error::Error> {
    use std::io::Write;
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| crate::error::Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut files = std::collections::BTreeMap::new();
    for (t, topic) in &pipeline.source.topics {
        let path = dir.join(format!("{topic}.jsonl"));
        let f = std::fs::File::create(&path).map_err(io(&path))?;
        files.insert(*t, (path, std::io::BufWriter::new(f)));
    }
    let mut n = 0u64;
    let mut failure = None;
    generate(spec, |g| {
        if failure.is_some() {
            return;
        }
        if let Some((path, w)) = files.get_mut(&g.event_type) {
            if let Err(e) = writeln!(w, "{}", g.value) {
                failure = Some(io(path)(e));
            }
            n += 1;
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    for (path, mut w) in files.into_values() {
        w.flush().map_err(io(&path))?;
    }
    Ok(format!(
        "wrote {n} messages to {} (one <topic>.jsonl per topic; start {})",
        dir.display(),
        spec.start
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20 days from 2026-03-20, seed 7.
    fn spec(reps: usize) -> GenSpec {
        GenSpec {
            reps,
            days: 20,
            seed: 7,
            start: NaiveDate::from_ymd_opt(2026, 3, 20).unwrap(),
            silence: None,
        }
    }

    #[test]
    fn same_seed_same_stream_and_every_message_is_valid() {
        let spec = spec(10);
        let mut a = Vec::new();
        generate(&spec, |g| a.push(g));
        let mut b = Vec::new();
        generate(&spec, |g| b.push(g));
        assert_eq!(a, b);
        let dec = crate::source::decode::Decoder::new(crate::config::DecodeLimits {
            max_message_bytes: 1 << 20,
            max_clock_skew_micros: i64::MAX / 2,
        })
        .unwrap();
        for g in &a {
            dec.decode(g.event_type, g.value.as_bytes(), 0)
                .unwrap_or_else(|e| panic!("{e:?}: {}", g.value));
        }
        for t in EventType::ALL {
            assert!(a.iter().any(|g| g.event_type == t), "no {t:?} generated");
        }
    }

    #[test]
    fn transfers_are_back_dated_and_one_is_corrected() {
        let spec = spec(30);
        let mut moves = Vec::new();
        generate(&spec, |g| {
            let v: serde_json::Value = serde_json::from_str(&g.value).unwrap();
            if g.event_type == EventType::Rep && v["rep_id"] == "rep-00005" && v["version"] != 1 {
                moves.push(v);
            }
        });
        // rep 5 moves on day 10 (recorded then, in force from day 7) and is corrected on day 11.
        assert_eq!(moves.len(), 2, "{moves:?}");
        for m in &moves {
            assert_eq!(m["effective_from"], "2026-03-27");
            assert!(m["occurred_at"].as_str().unwrap() > "2026-03-30");
        }
        assert_eq!(
            (moves[0]["version"].as_i64(), moves[1]["version"].as_i64()),
            (Some(2), Some(3))
        );
        assert_eq!(moves[0]["team_id"], "team-emea-001");
        assert_eq!(moves[1]["team_id"], "team-uki-002");
    }
}
