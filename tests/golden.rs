//! Golden tests: a small hand-made event set whose expected rows were computed by hand from
//! METRICS.md (the arithmetic is in the comments).

use serde_json::Value;

use quotaflow::source::schema::EventType::*;

use crate::common::{compute, ev, fold_all, pipeline, rows};

fn events() -> Vec<quotaflow::event::Event> {
    let fx = |cur: &str, eff: &str, rate: &str| {
        ev(
            FxRate,
            &format!(
                r#"{{"currency":"{cur}","effective_date":"{eff}","rate_to_corporate":"{rate}","version":1,"occurred_at":"2026-01-01T00:00:00Z"}}"#
            ),
        )
    };
    let rep = |id: &str, v: i64, team: &str, region: &str| {
        ev(
            Rep,
            &format!(
                r#"{{"rep_id":"{id}","version":{v},"occurred_at":"2026-01-01T00:00:0{v}Z","name":"{id}","team_id":"{team}","region":"{region}","active":true}}"#
            ),
        )
    };
    let quota = |id: &str, amount: &str| {
        ev(
            Quota,
            &format!(
                r#"{{"rep_id":"{id}","period_start":"2026-01-01","period_end":"2026-03-31","amount":"{amount}","currency":"USD","version":1,"occurred_at":"2026-01-01T00:00:00Z"}}"#
            ),
        )
    };
    #[allow(clippy::too_many_arguments)]
    let deal = |id: &str,
                v: i64,
                rep: &str,
                stage: &str,
                amount: &str,
                cur: &str,
                close: &str,
                at: &str,
                created: &str| {
        ev(
            Deal,
            &format!(
                r#"{{"deal_id":"{id}","version":{v},"occurred_at":"{at}","rep_id":"{rep}","stage":"{stage}","amount":"{amount}","currency":"{cur}","close_date":"{close}","created_at":"{created}"}}"#
            ),
        )
    };
    let act = |id: &str, kind: &str, outcome: &str, at: &str, extra: &str| {
        ev(
            Activity,
            &format!(
                r#"{{"event_id":"{id}","occurred_at":"{at}","rep_id":"rep-a","activity_type":"{kind}","outcome":"{outcome}"{extra}}}"#
            ),
        )
    };
    let survey = |id: &str, rep: &str, score: i64| {
        ev(
            Survey,
            &format!(
                r#"{{"response_id":"{id}","occurred_at":"2026-03-15T10:00:00Z","rep_id":"{rep}","survey":"pulse-q1","score":{score}}}"#
            ),
        )
    };
    vec![
        fx("EUR", "2026-01-01", "1.10"),
        fx("EUR", "2026-02-15", "1.20"),
        rep("rep-a", 1, "t1", "NA"),
        rep("rep-a", 2, "t2", "EMEA"), // moved: all of rep-a's history goes to t2 / EMEA
        rep("rep-b", 1, "t1", "NA"),
        rep("rep-d", 1, "t3", "NA"),
        // rep-c is missing from the roster: team and region `unassigned`.
        quota("rep-a", "100000.00"),
        quota("rep-b", "0.00"),
        quota("rep-d", "10000.00"),
        // deal-1 arrives out of order: v3, v1, v2. EUR 10,000 closing 2026-02-20 at 1.20.
        deal(
            "deal-1",
            3,
            "rep-a",
            "closed_won",
            "10000.00",
            "EUR",
            "2026-02-20",
            "2026-02-20T10:00:00Z",
            "2026-01-05T10:00:00Z",
        ),
        deal(
            "deal-1",
            1,
            "rep-a",
            "prospecting",
            "10000.00",
            "EUR",
            "2026-03-15",
            "2026-01-05T10:00:00Z",
            "2026-01-05T10:00:00Z",
        ),
        deal(
            "deal-1",
            2,
            "rep-a",
            "negotiation",
            "10000.00",
            "EUR",
            "2026-03-15",
            "2026-02-01T10:00:00Z",
            "2026-01-05T10:00:00Z",
        ),
        // EUR 1,000 closing 2026-01-10, at 1.10.
        deal(
            "deal-3",
            1,
            "rep-a",
            "closed_won",
            "1000.00",
            "EUR",
            "2026-01-10",
            "2026-01-10T09:00:00Z",
            "2026-01-02T09:00:00Z",
        ),
        deal(
            "deal-2",
            1,
            "rep-c",
            "closed_won",
            "5000.00",
            "USD",
            "2026-03-10",
            "2026-03-10T12:00:00Z",
            "2026-02-01T12:00:00Z",
        ),
        deal(
            "deal-4",
            1,
            "rep-d",
            "closed_won",
            "12000.00",
            "USD",
            "2026-03-01",
            "2026-03-01T12:00:00Z",
            "2026-02-01T12:00:00Z",
        ),
        // deal-5 stays in proposal through three versions, arriving v3, v1, v2.
        deal(
            "deal-5",
            3,
            "rep-b",
            "proposal",
            "7000.00",
            "USD",
            "2026-04-30",
            "2026-03-20T00:00:00Z",
            "2026-02-15T00:00:00Z",
        ),
        deal(
            "deal-5",
            1,
            "rep-b",
            "proposal",
            "6000.00",
            "USD",
            "2026-04-30",
            "2026-03-01T00:00:00Z",
            "2026-02-15T00:00:00Z",
        ),
        deal(
            "deal-5",
            2,
            "rep-b",
            "proposal",
            "6500.00",
            "USD",
            "2026-04-30",
            "2026-03-10T00:00:00Z",
            "2026-02-15T00:00:00Z",
        ),
        // A lost deal of rep-a, created 2026-02-20, closed 2026-03-20.
        deal(
            "deal-7",
            1,
            "rep-a",
            "closed_lost",
            "2000.00",
            "EUR",
            "2026-03-20",
            "2026-03-20T10:00:00Z",
            "2026-02-20T10:00:00Z",
        ),
        // GBP has no rate: unconverted.
        deal(
            "deal-6",
            1,
            "rep-b",
            "qualification",
            "3000.00",
            "GBP",
            "2026-05-31",
            "2026-03-05T00:00:00Z",
            "2026-03-05T00:00:00Z",
        ),
        act(
            "act-1",
            "call",
            "connected",
            "2026-03-31T12:00:00Z",
            r#","duration_s":60,"deal_id":"deal-5""#,
        ),
        act(
            "act-1",
            "call",
            "connected",
            "2026-03-31T12:00:00Z",
            r#","duration_s":60,"deal_id":"deal-5""#,
        ),
        act("act-2", "email", "replied", "2026-03-31T08:00:00Z", ""),
        act("act-3", "demo", "held", "2026-03-30T09:00:00Z", ""),
        survey("s1", "rep-a", 10),
        survey("s2", "rep-a", 8),
        survey("s3", "rep-a", 3),
        survey("s4", "rep-b", 9),
        survey("s4", "rep-b", 0), // a repeated response_id is a duplicate
    ]
}

fn find<'a>(rows: &'a [Value], keys: &[(&str, &str)]) -> &'a Value {
    let hits: Vec<&Value> = rows
        .iter()
        .filter(|r| keys.iter().all(|(k, v)| r[*k].as_str() == Some(*v)))
        .collect();
    assert_eq!(hits.len(), 1, "rows matching {keys:?}: {hits:?}");
    hits[0]
}

/// A column as text (decimals, dates and timestamps), or "null".
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

#[tokio::test]
async fn attainment_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events())).await;
    let att = rows(&tables, "attainment");
    let q = |level: &str, id: &str| {
        find(
            &att,
            &[
                ("level", level),
                ("entity_id", id),
                ("period_type", "quarter"),
                ("period_start", "2026-01-01"),
            ],
        )
    };

    // rep-a: quota 100,000.00; won 12,000.00 (EUR 10,000 × 1.20) + 1,100.00 (EUR 1,000 × 1.10).
    let a = q("rep", "rep-a");
    assert_eq!(s(&a["quota"]), "100000.00");
    assert_eq!(s(&a["closed_won"]), "13100.00");
    assert_eq!(f(&a["attainment"]), Some(0.131));
    assert_eq!(s(&a["gap_to_quota"]), "86900.00");
    assert_eq!(
        s(&a["required_per_day"]),
        "null",
        "no days remain on the quarter"
    );
    assert_eq!(s(&a["attainment_band"]), "below_50");
    assert_eq!(a["elapsed_days"], 90);
    assert_eq!(a["is_current"], true);
    // The moved rep takes all of its figures to the new team and region.
    assert_eq!(s(&q("team", "t2")["closed_won"]), "13100.00");
    assert_eq!(s(&q("region", "EMEA")["quota"]), "100000.00");
    // Zero quota: a row, with attainment and band NULL.
    let b = q("rep", "rep-b");
    assert_eq!(s(&b["quota"]), "0.00");
    assert_eq!(s(&b["attainment"]), "null");
    assert_eq!(s(&b["attainment_band"]), "null");
    assert_eq!(s(&q("team", "t1")["quota"]), "0.00");
    // Missing from the roster: `unassigned`, quota NULL.
    let c = q("team", "unassigned");
    assert_eq!(s(&c["quota"]), "null");
    assert_eq!(s(&c["closed_won"]), "5000.00");
    assert_eq!(s(&c["gap_to_quota"]), "null");
    // Exactly 120 % is above_120.
    let d = q("rep", "rep-d");
    assert_eq!(f(&d["attainment"]), Some(1.2));
    assert_eq!(s(&d["attainment_band"]), "above_120");
    // NA = rep-b + rep-d: ratios recomputed from totals.
    assert_eq!(f(&q("region", "NA")["attainment"]), Some(1.2));
    let all = q("company", "all");
    assert_eq!(s(&all["quota"]), "110000.00");
    assert_eq!(s(&all["closed_won"]), "30100.00");

    // A quarterly quota prorated into months by days: 100,000 × 31/90 = 34,444.44; × 28/90 = 31,111.11.
    let m = |id: &str, start: &str| {
        find(
            &att,
            &[
                ("level", "rep"),
                ("entity_id", id),
                ("period_type", "month"),
                ("period_start", start),
            ],
        )
    };
    assert_eq!(s(&m("rep-a", "2026-01-01")["quota"]), "34444.44");
    assert_eq!(s(&m("rep-a", "2026-02-01")["quota"]), "31111.11");
    assert_eq!(
        s(&m("rep-a", "2026-02-01")["closed_won"]),
        "12000.00",
        "EUR converted at the rate in force on close_date"
    );
    assert_eq!(s(&m("rep-a", "2026-01-01")["closed_won"]), "1100.00");
    // The company's January quota is the rounded exact sum, 34,444.444… + 3,444.444… = 37,888.89,
    // not 34,444.44 + 3,444.44 = 37,888.88.
    let jan = find(
        &att,
        &[
            ("level", "company"),
            ("period_type", "month"),
            ("period_start", "2026-01-01"),
        ],
    );
    assert_eq!(s(&jan["quota"]), "37888.89");

    // The year so far: 90 of 365 days elapsed.
    let y = find(
        &att,
        &[
            ("level", "rep"),
            ("entity_id", "rep-a"),
            ("period_type", "year"),
        ],
    );
    assert_eq!(y["period_end"], "2026-12-31");
    assert_eq!(y["remaining_days"], 275);
    assert_eq!(s(&y["expected_to_date"]), "24657.53"); // 100,000 × 90 / 365
    assert_eq!(s(&y["run_rate_projection"]), "53127.78"); // 13,100 / 90 × 365
    assert_eq!(s(&y["required_per_day"]), "316.00"); // 86,900 / 275
    let pacing = f(&y["pacing"]).unwrap();
    assert!((pacing - 0.131 / (90.0 / 365.0)).abs() < 1e-12);
    // No period starts after as_of_date, and every row carries the snapshot columns.
    assert!(att
        .iter()
        .all(|r| s(&r["period_start"]).as_str() <= "2026-03-31"));
    assert!(att
        .iter()
        .all(|r| r["snapshot_id"] == 1 && s(&r["as_of"]).starts_with("2026-03-31T12:00:00")));
}

#[tokio::test]
async fn deals_current_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events())).await;
    let deals = rows(&tables, "deals_current");
    let d1 = find(&deals, &[("deal_id", "deal-1")]);
    assert_eq!(d1["version"], 3);
    assert_eq!(d1["stage"], "closed_won");
    assert_eq!(s(&d1["amount_corporate"]), "12000.00");
    assert_eq!(d1["is_won"], true);
    assert_eq!(d1["forecast_category"], "closed");
    assert!(s(&d1["stage_entered_at"]).starts_with("2026-02-20T10:00:00"));
    assert_eq!(d1["age_days"], 46); // 2026-02-20 − 2026-01-05
    let d5 = find(&deals, &[("deal_id", "deal-5")]);
    assert_eq!(s(&d5["amount"]), "7000.00");
    assert!(
        s(&d5["stage_entered_at"]).starts_with("2026-03-01T00:00:00"),
        "the run of proposal versions starts at v1"
    );
    assert_eq!(d5["days_in_stage"], 30);
    assert_eq!(d5["age_days"], 44); // 2026-03-31 − 2026-02-15
    assert_eq!(f(&d5["probability"]), Some(0.5));
    assert_eq!(d5["is_closed"], false);
    assert!(s(&d5["last_activity_at"]).starts_with("2026-03-31T12:00:00"));
    assert_eq!(
        s(&find(&deals, &[("deal_id", "deal-6")])["amount_corporate"]),
        "null"
    );
}

#[tokio::test]
async fn rep_daily_and_data_quality_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events())).await;
    let daily = rows(&tables, "rep_daily");
    assert_eq!(daily.len(), 2);
    let d = find(&daily, &[("rep_id", "rep-a"), ("day", "2026-03-31")]);
    assert_eq!(
        (
            d["calls"].clone(),
            d["emails"].clone(),
            d["activities"].clone()
        ),
        (1.into(), 1.into(), 2.into())
    );
    assert_eq!(
        (
            d["call_seconds"].clone(),
            d["connected_calls"].clone(),
            d["replied_emails"].clone()
        ),
        (60.into(), 1.into(), 1.into())
    );
    let d = find(&daily, &[("rep_id", "rep-a"), ("day", "2026-03-30")]);
    assert_eq!(
        (
            d["demos"].clone(),
            d["meetings_held"].clone(),
            d["meetings"].clone()
        ),
        (1.into(), 1.into(), 0.into())
    );

    let dq = rows(&tables, "data_quality");
    let count = |topic: &str, reason: &str| {
        find(&dq, &[("topic", topic), ("reason", reason)])["count"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(count("spm.activities", "ok"), 3);
    assert_eq!(count("spm.activities", "duplicate"), 1);
    assert_eq!(count("spm.deals", "ok"), 11);
    assert_eq!(count("spm.surveys", "ok"), 4);
    assert_eq!(count("spm.surveys", "duplicate"), 1);
    assert_eq!(count("spm.deals", "unconverted"), 1);
    assert_eq!(count("spm.quotas", "ok"), 3);
    assert_eq!(count("spm.roster", "ok"), 4);
    assert_eq!(count("spm.fx_rates", "ok"), 2);
    assert!(
        dq.iter().all(|r| r["count"].as_i64().unwrap() > 0),
        "rows with count 0 are not written"
    );
}

#[tokio::test]
async fn fiscal_year_and_time_zone_move_periods_and_days() {
    let p = crate::common::pipeline_with(|t| {
        t.replace("fiscal_year_start_month = 1", "fiscal_year_start_month = 2")
            .replace("timezone = \"UTC\"", "timezone = \"Asia/Tokyo\"")
    });
    let tables = compute(&p, &fold_all(&p, events())).await;
    let daily = rows(&tables, "rep_daily");
    // 2026-03-31T12:00Z is 21:00 in Tokyo, same day; 08:00Z is 17:00: both still 2026-03-31.
    assert!(daily.iter().any(|r| r["day"] == "2026-03-31"));
    let att = rows(&tables, "attainment");
    // With a February fiscal year, Q1 starts 2026-02-01 (Feb-Apr) and the year 2025-02-01.
    let q = find(
        &att,
        &[
            ("level", "rep"),
            ("entity_id", "rep-a"),
            ("period_type", "quarter"),
            ("period_start", "2026-02-01"),
        ],
    );
    // Quota overlap: Feb 1 – Mar 31 = 59 of 90 days → 65,555.555… → 65,555.56.
    assert_eq!(s(&q["quota"]), "65555.56");
    // Fiscal year 2025 (2025-02-01 .. 2026-01-31) holds January: 31/90 of the quota and deal-3.
    let fy25 = find(
        &att,
        &[
            ("level", "rep"),
            ("entity_id", "rep-a"),
            ("period_type", "year"),
            ("period_start", "2025-02-01"),
        ],
    );
    assert_eq!(s(&fy25["quota"]), "34444.44");
    assert_eq!(s(&fy25["closed_won"]), "1100.00");
    assert_eq!(fy25["is_current"], false);
    let fy26 = find(
        &att,
        &[
            ("level", "rep"),
            ("entity_id", "rep-a"),
            ("period_type", "year"),
            ("period_start", "2026-02-01"),
        ],
    );
    assert_eq!(s(&fy26["quota"]), "65555.56");
    assert_eq!(fy26["elapsed_days"], 59);
}

#[tokio::test]
async fn forecast_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events())).await;
    let fc = rows(&tables, "forecast");
    let row = |level: &str, id: &str, start: &str| {
        find(
            &fc,
            &[
                ("level", level),
                ("entity_id", id),
                ("period_type", "quarter"),
                ("period_start", start),
            ],
        )
    };
    // Q2 lies after as_of but deals close in it: deal-5 (proposal → best_case, 7,000 at 0.5) and
    // deal-6 (qualification → pipeline, GBP without a rate: left out of the sums).
    let q2 = row("company", "all", "2026-04-01");
    assert_eq!(s(&q2["closed_won"]), "0.00");
    assert_eq!(s(&q2["commit"]), "0.00");
    assert_eq!(s(&q2["best_case"]), "7000.00");
    assert_eq!(s(&q2["pipeline"]), "0.00");
    assert_eq!(s(&q2["best_case_forecast"]), "7000.00");
    assert_eq!(s(&q2["open_pipeline"]), "7000.00");
    assert_eq!(s(&q2["weighted_pipeline"]), "3500.00");
    assert_eq!(s(&q2["weighted_forecast"]), "3500.00");
    assert_eq!(s(&q2["quota"]), "null");
    assert_eq!(s(&q2["coverage"]), "null");
    // Q1: everything closed; coverage 0 over the 86,900 still to go.
    let a = row("rep", "rep-a", "2026-01-01");
    assert_eq!(s(&a["closed_won"]), "13100.00");
    assert_eq!(s(&a["commit_forecast"]), "13100.00");
    assert_eq!(f(&a["coverage"]), Some(0.0));
    assert_eq!(f(&a["commit_vs_quota"]), Some(0.131));
    assert_eq!(s(&a["run_rate_forecast"]), "13100.00");
    // rep-d is over quota: no remainder, coverage NULL.
    assert_eq!(s(&row("rep", "rep-d", "2026-01-01")["coverage"]), "null");
}

#[tokio::test]
async fn win_rates_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events())).await;
    let wr = rows(&tables, "win_rates");
    let q1 = |level: &str, id: &str| {
        find(
            &wr,
            &[
                ("level", level),
                ("entity_id", id),
                ("period_type", "quarter"),
                ("period_start", "2026-01-01"),
            ],
        )
    };
    // rep-a: won deal-1 (46 days) and deal-3 (8 days), lost deal-7; no open deals.
    let a = q1("rep", "rep-a");
    assert_eq!(
        (a["won_count"].as_i64(), a["lost_count"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(f(&a["win_rate"]), Some(2.0 / 3.0));
    assert_eq!(s(&a["won_amount"]), "13100.00");
    assert_eq!(s(&a["avg_deal_size"]), "6550.00");
    assert_eq!(f(&a["avg_cycle_days"]), Some(27.0));
    assert_eq!(a["open_deals"], 0);
    assert_eq!(s(&a["pipeline_velocity"]), "0.00");
    // Company: 4 won (30,100.00; cycles 46 + 8 + 37 + 28 = 119), 1 lost, 2 open (deal-5, deal-6):
    // 2 × 7,525.00 × 0.8 / 29.75 = 404.705… → 404.71.
    let c = q1("company", "all");
    assert_eq!(f(&c["win_rate"]), Some(0.8));
    assert_eq!(s(&c["avg_deal_size"]), "7525.00");
    assert_eq!(f(&c["avg_cycle_days"]), Some(29.75));
    assert_eq!(c["open_deals"], 2);
    assert_eq!(s(&c["pipeline_velocity"]), "404.71");
    // Only periods with a closed deal: rep-b closed nothing.
    assert!(wr.iter().all(|r| r["entity_id"] != "rep-b"));
}

#[tokio::test]
async fn activity_kpis_and_surveys_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events())).await;
    let kpi = rows(&tables, "activity_kpis");
    let march = find(
        &kpi,
        &[
            ("level", "rep"),
            ("entity_id", "rep-a"),
            ("period_type", "month"),
            ("period_start", "2026-03-01"),
        ],
    );
    assert_eq!(march["activities"], 3);
    assert_eq!(f(&march["connect_rate"]), Some(1.0));
    assert_eq!(f(&march["reply_rate"]), Some(1.0));
    assert_eq!(f(&march["activities_per_day"]), Some(3.0 / 31.0));
    assert_eq!(march["won_count"], 0);
    assert_eq!(s(&march["activities_per_win"]), "null");
    let q1 = find(
        &kpi,
        &[
            ("level", "team"),
            ("entity_id", "t2"),
            ("period_type", "quarter"),
            ("period_start", "2026-01-01"),
        ],
    );
    assert_eq!(q1["won_count"], 2);
    assert_eq!(f(&q1["activities_per_win"]), Some(1.5));
    assert_eq!(f(&q1["activities_per_day"]), Some(3.0 / 90.0));

    let resp = rows(&tables, "survey_responses");
    assert_eq!(resp.len(), 4);
    assert_eq!(find(&resp, &[("response_id", "s2")])["category"], "passive");
    assert_eq!(
        find(&resp, &[("response_id", "s4")])["score"],
        9,
        "the first arrival of s4 is kept"
    );
    let nps = rows(&tables, "survey_nps");
    let n = |level: &str, id: &str| {
        find(
            &nps,
            &[("survey", "pulse-q1"), ("level", level), ("entity_id", id)],
        )
    };
    // rep-a: 10, 8, 3 → one promoter, one passive, one detractor: NPS 0.
    assert_eq!(f(&n("rep", "rep-a")["nps"]), Some(0.0));
    assert_eq!(n("rep", "rep-a")["passives"], 1);
    assert_eq!(f(&n("team", "t1")["nps"]), Some(100.0));
    // Company: 4 responses, 2 promoters, 1 detractor → 25.
    assert_eq!(f(&n("company", "all")["nps"]), Some(25.0));
    assert_eq!(n("company", "all")["responses"], 4);
}

#[tokio::test]
async fn stage_conversion_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events())).await;
    let sc = rows(&tables, "stage_conversion");
    let row = |id: &str, stage: &str| {
        find(
            &sc,
            &[
                ("level", "rep"),
                ("entity_id", id),
                ("cohort_quarter", "2026-01-01"),
                ("stage", stage),
            ],
        )
    };
    // rep-a's Q1 cohort: deal-1 and deal-3 reached closed_won; deal-7 only ever had closed_lost.
    assert_eq!(
        (
            row("rep-a", "prospecting")["reached"].clone(),
            row("rep-a", "prospecting")["advanced"].clone()
        ),
        (2.into(), 2.into())
    );
    assert_eq!(f(&row("rep-a", "negotiation")["conversion"]), Some(1.0));
    // rep-b: deal-5 reached proposal, deal-6 qualification.
    assert_eq!(f(&row("rep-b", "qualification")["conversion"]), Some(0.5));
    assert_eq!(f(&row("rep-b", "proposal")["conversion"]), Some(0.0));
    assert_eq!(row("rep-b", "negotiation")["reached"], 0);
    assert_eq!(s(&row("rep-b", "negotiation")["conversion"]), "null");
    let per_entity = sc
        .iter()
        .filter(|r| r["level"] == "rep" && r["entity_id"] == "rep-a")
        .count();
    assert_eq!(per_entity, 4, "exactly four rows per entity and cohort");
}

/// A second scenario for rankings, commissions, the leaderboard and trends.
fn ranking_events() -> Vec<quotaflow::event::Event> {
    let rep = |id: &str, team: &str| {
        ev(
            Rep,
            &format!(
                r#"{{"rep_id":"{id}","version":1,"occurred_at":"2026-01-01T00:00:00Z","name":"{id}","team_id":"{team}","region":"NA","active":true}}"#
            ),
        )
    };
    let quota = |id: &str, amount: &str| {
        ev(
            Quota,
            &format!(
                r#"{{"rep_id":"{id}","period_start":"2026-01-01","period_end":"2026-03-31","amount":"{amount}","currency":"USD","version":1,"occurred_at":"2026-01-01T00:00:00Z"}}"#
            ),
        )
    };
    let won = |deal: &str, rep: &str, amount: &str, close: &str| {
        ev(
            Deal,
            &format!(
                r#"{{"deal_id":"{deal}","version":1,"occurred_at":"{close}T12:00:00Z","rep_id":"{rep}","stage":"closed_won","amount":"{amount}","currency":"USD","close_date":"{close}","created_at":"2026-02-01T00:00:00Z"}}"#
            ),
        )
    };
    let act = |id: &str, kind: &str, outcome: &str, at: &str| {
        ev(
            Activity,
            &format!(
                r#"{{"event_id":"{id}","occurred_at":"{at}","rep_id":"rep-y","activity_type":"{kind}","outcome":"{outcome}"}}"#
            ),
        )
    };
    vec![
        rep("rep-x", "A"),
        rep("rep-y", "A"),
        rep("rep-z", "B"),
        rep("rep-w", "B"),
        rep("rep-v", "B"),
        quota("rep-x", "250000.00"),
        quota("rep-y", "100000.00"),
        quota("rep-z", "100000.00"),
        quota("rep-w", "200000.00"),
        quota("rep-v", "0.00"),
        won("d-x", "rep-x", "325000.00", "2026-03-03"),
        won("d-y", "rep-y", "50000.00", "2026-03-05"),
        won("d-z", "rep-z", "50000.00", "2026-03-06"),
        won("d-w", "rep-w", "40000.00", "2026-03-04"),
        won("d-v", "rep-v", "1000.00", "2026-03-04"),
        // rep-y: 3 activities in the week of 2026-03-02, none the next week, 2 in the third.
        act("y1", "call", "connected", "2026-03-02T10:00:00Z"),
        act("y2", "call", "no_answer", "2026-03-03T10:00:00Z"),
        act("y3", "email", "sent", "2026-03-04T10:00:00Z"),
        act("y4", "demo", "held", "2026-03-17T10:00:00Z"),
        act("y5", "webinar", "held", "2026-03-18T10:00:00Z"),
    ]
}

#[tokio::test]
async fn performance_ties_and_commissions_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, ranking_events())).await;
    let perf = rows(&tables, "performance");
    let r = |id: &str| {
        find(
            &perf,
            &[
                ("period_type", "quarter"),
                ("period_start", "2026-01-01"),
                ("rep_id", id),
            ],
        )
    };
    // Attainment: x 1.3, y 0.5, z 0.5 (a tie), w 0.2; v has a zero quota and no row.
    let ranks: Vec<i64> = ["rep-x", "rep-y", "rep-z", "rep-w"]
        .iter()
        .map(|id| r(id)["company_rank"].as_i64().unwrap())
        .collect();
    assert_eq!(ranks, [1, 2, 2, 4]);
    assert_eq!(f(&r("rep-y")["percentile"]), Some(1.0 / 3.0));
    assert_eq!(f(&r("rep-w")["percentile"]), Some(0.0));
    assert_eq!(
        (
            r("rep-x")["performer_band"].clone(),
            r("rep-y")["performer_band"].clone(),
            r("rep-w")["performer_band"].clone()
        ),
        ("high".into(), "core".into(), "low".into())
    );
    let team_ranks: Vec<i64> = ["rep-x", "rep-y", "rep-z", "rep-w"]
        .iter()
        .map(|id| r(id)["team_rank"].as_i64().unwrap())
        .collect();
    assert_eq!(team_ranks, [1, 2, 1, 2]);
    // mean 0.625, population sd √0.166875.
    let z = f(&r("rep-x")["z_score"]).unwrap();
    assert!((z - 0.675 / 0.166875f64.sqrt()).abs() < 1e-12, "{z}");
    assert!(perf.iter().all(|row| row["rep_id"] != "rep-v"));

    let com = rows(&tables, "commissions");
    let c = |id: &str| find(&com, &[("rep_id", id), ("period_start", "2026-01-01")]);
    // The worked check of METRICS.md: 250,000 quota, 325,000 won (130 %) → 19,375.00.
    assert_eq!(s(&c("rep-x")["payout"]), "19375.00");
    assert_eq!(
        s(&c("rep-y")["payout"]),
        "0.00",
        "exactly 50 % pays nothing yet"
    );
    assert_eq!(s(&c("rep-v")["payout"]), "null", "zero quota");
    assert_eq!(s(&c("rep-v")["attainment"]), "null");
    assert_eq!(c("rep-x")["plan"], "default");
    assert_eq!(c("rep-x")["period_type"], "quarter");
}

#[tokio::test]
async fn leaderboard_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, ranking_events())).await;
    let lb = rows(&tables, "leaderboard");
    let r = |id: &str| {
        find(
            &lb,
            &[
                ("period_type", "quarter"),
                ("period_start", "2026-01-01"),
                ("rep_id", id),
            ],
        )
    };
    // rep-y: 2 calls (2) + 1 email (0.5) + a held demo (5 + 8) + a webinar (3) + a win (50)
    // + 50,000 won (50) = 118.5.
    assert_eq!(f(&r("rep-y")["points"]), Some(118.5));
    assert_eq!(f(&r("rep-x")["points"]), Some(375.0)); // 50 + 325
    assert_eq!(r("rep-x")["rank"], 1);
    assert_eq!(r("rep-y")["rank"], 2);
    assert_eq!(r("rep-z")["rank"], 3); // 100
    assert_eq!(r("rep-v")["rank"], 5); // 51 after w's 90

    // Other weights from the pipeline file change the points.
    let p2 = crate::common::pipeline_with(|t| t.replace("won_deals = 50.0", "won_deals = 0.0"));
    let tables = compute(&p2, &fold_all(&p2, ranking_events())).await;
    let lb = rows(&tables, "leaderboard");
    let y = find(&lb, &[("period_type", "quarter"), ("rep_id", "rep-y")]);
    assert_eq!(f(&y["points"]), Some(68.5));
}

#[tokio::test]
async fn trends_with_an_empty_week_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, ranking_events())).await;
    let tr = rows(&tables, "trends");
    let mut y: Vec<&Value> = tr.iter().filter(|r| r["rep_id"] == "rep-y").collect();
    y.sort_by_key(|r| s(&r["week_start"]));
    let weeks: Vec<String> = y.iter().map(|r| s(&r["week_start"])).collect();
    assert_eq!(
        weeks,
        ["2026-03-02", "2026-03-09", "2026-03-16"],
        "the empty week is a row"
    );
    let col = |c: &str| y.iter().map(|r| s(&r[c])).collect::<Vec<_>>();
    assert_eq!(col("activities"), ["3", "0", "2"]);
    assert_eq!(col("meetings_held"), ["0", "0", "1"]);
    assert_eq!(col("activities_wow"), ["null", "-1.0", "null"]);
    assert_eq!(col("activities_slope8"), ["null", "-3.0", "-0.5"]);
    assert_eq!(col("activity_trend"), ["flat", "down", "down"]);
    assert_eq!(col("won_amount"), ["50000.00", "0.00", "0.00"]);
    assert_eq!(col("won_amount_ma4"), ["50000.00", "25000.00", "16666.67"]);
    assert_eq!(col("won_amount_slope8"), ["null", "-50000.00", "-25000.00"]);
    let ma4: Vec<f64> = y.iter().map(|r| f(&r["activities_ma4"]).unwrap()).collect();
    assert_eq!(ma4, [3.0, 1.5, 5.0 / 3.0]);
    // rep-x's first event is its deal in the week of 2026-03-02: weeks from there, all zero activity.
    assert_eq!(tr.iter().filter(|r| r["rep_id"] == "rep-x").count(), 3);
}

#[tokio::test]
async fn a_custom_metric_is_a_sql_file_and_a_table_entry() {
    let p = crate::common::pipeline_with(|t| {
        format!("{}\n[[tables]]\nname = \"call_minutes_weekly\"\nsql = \"../sql/examples/call_minutes_weekly.sql\"\n", t)
    });
    let tables = compute(&p, &fold_all(&p, ranking_events())).await;
    let cm = rows(&tables, "call_minutes_weekly");
    let y = find(&cm, &[("rep_id", "rep-y"), ("week_start", "2026-03-02")]);
    assert_eq!(y["calls"], 2);
    assert_eq!(f(&y["connect_rate"]), Some(0.5));
    assert_eq!(y["snapshot_id"], 1);
}

#[tokio::test]
async fn shipped_alert_rules_by_hand() {
    let p = pipeline();
    let state = fold_all(&p, events());
    let (_, breaches) = quotaflow::engine::Engine::new(std::sync::Arc::clone(&p))
        .compute_with_alerts(&state, 1)
        .await
        .unwrap();
    let keys = |rule: &str| {
        let mut k: Vec<String> = breaches
            .iter()
            .filter(|b| b.rule == rule)
            .map(|b| b.key.clone())
            .collect();
        k.sort();
        k
    };
    // Q1 fully elapsed: rep-a paces at 0.131; rep-d at 1.2; rep-b's quota is 0 (pacing NULL).
    assert_eq!(keys("pacing_behind"), ["rep-a"]);
    // With 0 days left, team t2 (rep-a) commits 13 % of quota; t1's quota is 0, t3 is over.
    assert_eq!(keys("team_commit_short"), ["t2"]);
    // Only rep-a has activity (on as_of_date); rep-c is missing from the roster but still counts.
    assert_eq!(keys("rep_inactive"), ["rep-b", "rep-c", "rep-d"]);
    // deal-5 has been in proposal exactly 30 days but had an activity today; deal-6 only 26 days.
    assert_eq!(keys("stalled_deal"), Vec::<String>::new());
    // pulse-q1: t2's NPS is 0 (not below 0), t1's 100.
    assert_eq!(keys("detractor_spike"), Vec::<String>::new());
    let a = breaches.iter().find(|b| b.rule == "pacing_behind").unwrap();
    assert_eq!(a.severity, "warning");
    assert_eq!(a.value, Some(0.131));
    assert!(a.message.contains("0.13"), "{}", a.message);
}
