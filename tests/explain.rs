//! `quotaflow explain`: on a generated stream with deal revisions (one arriving behind its
//! successors), a resent deal, weekly fx rates and resent activities, every covered table's
//! explanation reproduces the published figure exactly, and the test redoes the arithmetic
//! from the inputs the explanation lists. The history follows a figure over two snapshots.
//! (That the offsets it names hold the messages it quotes is `external::explain`, against
//! the real broker.)

use std::collections::BTreeMap;
use std::sync::Arc;

use quotaflow::config::Pipeline;
use quotaflow::explain::{explain, Explanation, Request};
use quotaflow::snapshot::Location;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::harness::{bin, once, produce, run_in_process};

/// The generated messages of `seed` (12 reps, 100 days: deals are won and lost, fx rates
/// change weekly, reps move team, activities are resent) and a bad one, with deal `moved`'s
/// version 2 sent after its later versions (superseded on arrival) and the last version of
/// deal `resent` sent twice.
pub fn revised_messages(
    p: &Pipeline,
    seed: u64,
) -> (Vec<(String, String, String)>, String, String) {
    let spec = quotaflow::generate::GenSpec {
        days: 100,
        ..crate::pipeline_mock::spec(seed)
    };
    let activities = &p.source.topics[&quotaflow::event::schema::EventType::Activity];
    let mut msgs = vec![(activities.clone(), "rep-00001".into(), "{not json".into())];
    quotaflow::generate::generate(&spec, |g| {
        msgs.push((p.source.topics[&g.event_type].clone(), g.key, g.value))
    });
    let deals = &p.source.topics[&quotaflow::event::schema::EventType::Deal];
    let versions = |msgs: &[(String, String, String)], id: &str| -> Vec<usize> {
        msgs.iter()
            .enumerate()
            .filter(|(_, (t, k, _))| t == deals && k == id)
            .map(|(i, _)| i)
            .collect()
    };
    let mut ids: Vec<String> = msgs
        .iter()
        .filter(|(t, _, _)| t == deals)
        .map(|(_, k, _)| k.clone())
        .collect();
    ids.sort();
    ids.dedup();
    let moved = ids
        .iter()
        .find(|id| versions(&msgs, id).len() >= 3)
        .expect("a deal with three versions")
        .clone();
    let v2 = msgs.remove(versions(&msgs, &moved)[1]);
    msgs.push(v2);
    let won = |v: &str| v.contains("\"closed_won\"");
    let resent = ids
        .iter()
        .find(|id| {
            **id != moved
                && msgs
                    .iter()
                    .any(|(t, k, v)| t == deals && k == *id && won(v))
        })
        .expect("a won deal")
        .clone();
    let last = *versions(&msgs, &resent).last().unwrap();
    let copy = msgs[last].clone();
    msgs.push(copy);
    (msgs, moved, resent)
}

/// A query over the latest snapshot (or `snapshot`) of `out`, as JSON rows of text (every
/// value cast to text by Arrow, so a DOUBLE keeps all its digits: JSON numbers would be
/// parsed back approximately).
pub async fn sql(out: &str, snapshot: Option<u64>, q: &str) -> Vec<Value> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let loc = Location::parse(out).unwrap();
    let c = quotaflow::query::checkpoint(&loc, snapshot).await.unwrap();
    let ctx = quotaflow::query::session(&loc, &c).await.unwrap();
    let b: Vec<_> = quotaflow::query::query(&ctx, q)
        .await
        .unwrap()
        .into_iter()
        .map(|b| {
            let fields: Vec<Field> = b
                .schema()
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), DataType::Utf8, true))
                .collect();
            let cols = b
                .columns()
                .iter()
                .map(|c| datafusion::arrow::compute::cast(c, &DataType::Utf8).unwrap())
                .collect();
            datafusion::arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
                .unwrap()
        })
        .collect();
    let text = quotaflow::query::render(&b, quotaflow::query::Format::Json).unwrap();
    serde_json::from_str(&text).unwrap_or_default()
}

fn req(table: &str, keys: &[(&str, String)], column: &str) -> Request {
    Request {
        table: table.into(),
        keys: keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        column: Some(column.into()),
        snapshot: None,
        limit: 1000,
        history: false,
    }
}

fn cents(s: &str) -> i128 {
    let mut d: Decimal = s.parse().unwrap();
    d.rescale(2);
    d.mantissa()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Every `step`-th row of `rows`, so each table is sampled across its levels and periods.
fn sample(rows: Vec<Value>, n: usize) -> Vec<Value> {
    let step = (rows.len() / n).max(1);
    rows.into_iter().step_by(step).collect()
}

/// The explanation, which must reproduce the published cell `published` (read by the test).
async fn explained(out: &str, p: &Arc<Pipeline>, r: Request, published: &Value) -> Explanation {
    let loc = Location::parse(out).unwrap();
    let e = explain(&loc, p, &r).await.unwrap();
    assert!(e.reproduced, "{r:?}:\n{}", quotaflow::explain::text(&e));
    let want = (!published.is_null()).then(|| text(published));
    let (got, shown) = (e.computed.clone(), e.published.clone());
    match (&want, &got) {
        (Some(w), Some(g)) if w.parse::<f64>().is_ok() && g.parse::<f64>().is_ok() => {
            assert_eq!(
                w.parse::<f64>().unwrap(),
                g.parse::<f64>().unwrap(),
                "{r:?}"
            )
        }
        _ => assert_eq!(want, got, "{r:?}"),
    }
    assert_eq!(got.is_some(), shown.is_some(), "{r:?}");
    e
}

/// The inputs' own arithmetic: money sums, counts and the commission tiers, redone here.
fn redo(e: &Explanation) {
    let all = e.inputs.len() == e.inputs_total;
    let deals: Vec<_> = e.inputs.iter().filter(|i| i.kind == "deal").collect();
    let computed = e.computed.as_deref();
    match e.column.as_str() {
        "closed_won" | "won_amount" | "commit" | "best_case" | "pipeline" | "commit_forecast"
        | "best_case_forecast" | "open_pipeline"
            if all =>
        {
            let sum: i128 = deals
                .iter()
                .filter_map(|i| i.adds.as_deref())
                .map(cents)
                .sum();
            assert_eq!(Some(sum), computed.map(cents), "{e:#?}");
        }
        "quota" if all => {
            let parts: Vec<Decimal> = e
                .inputs
                .iter()
                .filter(|i| i.kind == "quota")
                .filter_map(|i| i.adds.as_deref())
                .map(|s| s.parse().unwrap())
                .collect();
            let sum: Decimal = parts.iter().sum();
            let quota = (!parts.is_empty()).then(|| {
                sum.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven)
            });
            assert_eq!(
                quota.map(|q| cents(&q.to_string())),
                computed.map(cents),
                "{e:#?}"
            );
        }
        "won_count" | "lost_count" | "open_deals" if all => {
            assert_eq!(Some(deals.len().to_string()), e.computed, "{e:#?}");
        }
        "payout" => {
            let row: BTreeMap<_, _> = e.row.iter().cloned().collect();
            let (Some(Some(q)), Some(Some(w))) = (row.get("quota"), row.get("closed_won")) else {
                return;
            };
            let (q, w): (Decimal, Decimal) = (q.parse().unwrap(), w.parse().unwrap());
            // The default plan: 0 % to 50 %, 8 % to 100 %, 12 % to 125 %, 15 % above.
            let tiers = [(0, 0), (50, 8), (100, 12), (125, 15)];
            let mut pay = Decimal::ZERO;
            for (i, (from, rate)) in tiers.iter().enumerate() {
                let lo = q * Decimal::new(*from, 2);
                let hi = tiers
                    .get(i + 1)
                    .map_or(w, |(n, _)| w.min(q * Decimal::new(*n, 2)));
                if hi > lo {
                    pay += (hi - lo) * Decimal::new(*rate, 2);
                }
            }
            if !q.is_zero() {
                let pay = pay
                    .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven);
                assert_eq!(Some(cents(&pay.to_string())), computed.map(cents), "{e:#?}");
            }
        }
        "amount_corporate" if e.table == "deals_current" => {
            let fx = e.inputs.iter().find(|i| i.kind == "fx_rate");
            let latest = e
                .inputs
                .iter()
                .find(|i| i.fields.contains_key("amount"))
                .unwrap();
            let amount: Decimal = latest.fields["amount"].parse().unwrap();
            let rate: Decimal = fx.map_or(Decimal::ONE, |f| {
                f.fields["rate_to_corporate"].parse().unwrap()
            });
            let want = (amount * rate)
                .round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointNearestEven);
            assert_eq!(
                Some(cents(&want.to_string())),
                computed.map(cents),
                "{e:#?}"
            );
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_covered_table_reproduces_its_published_figures_from_the_inputs_it_lists() {
    let dir = tempfile::tempdir().unwrap();
    let p = crate::common::pipeline();
    let c = crate::pipeline_mock::cluster(&p);
    let (msgs, moved, resent) = revised_messages(&p, 7);
    produce(&c.bootstrap_servers(), 10_000, &msgs);
    let out = dir.path().join("out").display().to_string();
    run_in_process(&p, once(&c.bootstrap_servers(), &out)).await;
    let levels = "level, entity_id, period_type, CAST(period_start AS VARCHAR) AS period_start";
    let mut explained_n = 0;
    for (table, columns) in [
        (
            "attainment",
            &[
                "attainment",
                "quota",
                "closed_won",
                "gap_to_quota",
                "expected_to_date",
            ][..],
        ),
        (
            "forecast",
            &[
                "commit_forecast",
                "best_case_forecast",
                "weighted_forecast",
                "weighted_pipeline",
                "open_pipeline",
                "commit",
                "best_case",
                "pipeline",
                "quota",
                "closed_won",
            ][..],
        ),
        (
            "win_rates",
            &[
                "win_rate",
                "won_count",
                "lost_count",
                "open_deals",
                "won_amount",
                "avg_deal_size",
                "avg_cycle_days",
            ][..],
        ),
    ] {
        let rows = sql(&out, None, &format!("SELECT {levels}, * EXCLUDE (level, entity_id, period_type, period_start) FROM {table} ORDER BY level, entity_id, period_type, period_start")).await;
        assert!(rows.len() > 20, "{table}: {} rows", rows.len());
        for row in sample(rows, 40) {
            let keys: Vec<(&str, String)> = ["level", "entity_id", "period_type", "period_start"]
                .iter()
                .map(|k| (*k, text(&row[*k])))
                .collect();
            for column in columns {
                let e = explained(&out, &p, req(table, &keys, column), &row[*column]).await;
                redo(&e);
                explained_n += 1;
                // A team's, region's or company's money is the sum of its reps' contributions.
                if row["level"] != "rep" && *column == "closed_won" {
                    let sum: i128 = e
                        .contributions
                        .iter()
                        .filter_map(|c| c.value.as_deref())
                        .map(cents)
                        .sum();
                    assert_eq!(e.contributions.len(), e.contributions_total);
                    assert_eq!(Some(sum), e.computed.as_deref().map(cents), "{e:#?}");
                }
            }
        }
    }
    for row in sample(sql(&out, None, "SELECT rep_id, CAST(period_start AS VARCHAR) AS period_start, * EXCLUDE (rep_id, period_start) FROM commissions ORDER BY rep_id, period_start").await, 30) {
        let keys = [("rep_id", text(&row["rep_id"])), ("period_start", text(&row["period_start"]))];
        for column in ["payout", "quota", "closed_won", "attainment"] {
            redo(&explained(&out, &p, req("commissions", &keys, column), &row[column]).await);
            explained_n += 1;
        }
    }
    for row in sample(sql(&out, None, "SELECT period_type, CAST(period_start AS VARCHAR) AS period_start, rep_id, points, calls, emails, meetings_held, demos_held, webinars, tasks, won_deals, CAST(won_amount AS VARCHAR) AS won_amount FROM leaderboard ORDER BY 1, 2, 3").await, 30) {
        let keys = [
            ("period_type", text(&row["period_type"])),
            ("period_start", text(&row["period_start"])),
            ("rep_id", text(&row["rep_id"])),
        ];
        let e = explained(&out, &p, req("leaderboard", &keys, "points"), &row["points"]).await;
        // Won deals listed are the row's won deals.
        let won = e.inputs.iter().filter(|i| i.kind == "deal").count() as i64;
        assert_eq!(won.to_string(), text(&row["won_deals"]), "{e:#?}");
        explained_n += 1;
    }
    for row in sample(sql(&out, None, "SELECT rep_id, CAST(day AS VARCHAR) AS day, * EXCLUDE (rep_id, day) FROM rep_daily ORDER BY rep_id, day").await, 30) {
        let keys = [("rep_id", text(&row["rep_id"])), ("day", text(&row["day"]))];
        for column in ["activities", "calls", "call_seconds", "meetings_held"] {
            let e = explained(&out, &p, req("rep_daily", &keys, column), &row[column]).await;
            assert!(!e.inputs.is_empty() && e.inputs.iter().all(|i| i.last_offset >= i.offset));
            explained_n += 1;
        }
    }
    let deals = sql(&out, None, "SELECT deal_id, CAST(amount AS VARCHAR) AS amount, CAST(amount_corporate AS VARCHAR) AS amount_corporate, stage, version, CAST(close_date AS VARCHAR) AS close_date FROM deals_current ORDER BY deal_id").await;
    let mut checked = sample(deals.clone(), 30);
    checked.extend(
        deals
            .iter()
            .filter(|d| d["deal_id"] == moved.as_str() || d["deal_id"] == resent.as_str())
            .cloned(),
    );
    for row in &checked {
        let keys = [("deal_id", text(&row["deal_id"]))];
        for column in [
            "amount_corporate",
            "amount",
            "stage",
            "version",
            "close_date",
        ] {
            redo(&explained(&out, &p, req("deals_current", &keys, column), &row[column]).await);
            explained_n += 1;
        }
    }
    // Every message received about a deal, in order, with how it was taken.
    let arrivals = |id: &str| {
        let out = out.clone();
        let p = Arc::clone(&p);
        let id = id.to_string();
        async move {
            let r = req("deals_current", &[("deal_id", id)], "version");
            let e = explain(&Location::parse(&out).unwrap(), &p, &r)
                .await
                .unwrap();
            e.inputs
                .iter()
                .filter(|i| i.kind == "deal")
                .map(|i| {
                    (
                        i.version.unwrap(),
                        i.arrival.clone().unwrap(),
                        i.offset.unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let m = arrivals(&moved).await;
    assert_eq!(
        m.last().map(|a| (a.0, a.1.as_str())),
        Some((2, "superseded")),
        "{m:?}"
    );
    assert!(
        m.windows(2).all(|w| w[0].2 < w[1].2),
        "in the order read: {m:?}"
    );
    let r = arrivals(&resent).await;
    let latest = r.iter().map(|a| a.0).max().unwrap();
    assert_eq!(
        r.last().map(|a| (a.0, a.1.as_str())),
        Some((latest, "duplicate")),
        "{r:?}"
    );
    // The duplicate is behind the `duplicate` count of the deals topic.
    let dq = sql(&out, None, "SELECT topic, reason, count FROM data_quality").await;
    for row in &dq {
        let keys = [
            ("topic", text(&row["topic"])),
            ("reason", text(&row["reason"])),
        ];
        let e = explained(&out, &p, req("data_quality", &keys, "count"), &row["count"]).await;
        if row["topic"] == "spm.deals" && row["reason"] == "duplicate" {
            assert!(
                e.inputs
                    .iter()
                    .any(|i| i.key == resent && i.offset == Some(r.last().unwrap().2)),
                "{e:#?}"
            );
        }
        if row["reason"] == "invalid_json" || row["reason"] == "invalid_field" {
            assert!(!e.inputs.is_empty(), "the dead letters behind {row}");
        }
        explained_n += 1;
    }
    assert!(explained_n > 500, "{explained_n} figures explained");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_follows_a_figure_over_the_snapshots_with_the_inputs_that_arrived_between() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, out) = crate::serve::output_with_snapshot(dir.path()).await;
    let p = crate::common::pipeline();
    let loc = Location::parse(&out).unwrap();
    let first = loc.checkpoint(1).await.unwrap();
    crate::serve::next_snapshot(&cluster, &out).await;
    let second = loc.checkpoint(2).await.unwrap();
    // A rep-quarter whose closed_won moved between the snapshots.
    let q = "SELECT entity_id, CAST(period_start AS VARCHAR) AS ps, CAST(closed_won AS VARCHAR) AS cw \
             FROM attainment WHERE level = 'rep' AND period_type = 'quarter' ORDER BY entity_id, period_start";
    let (before, after) = (sql(&out, Some(1), q).await, sql(&out, Some(2), q).await);
    let moved = after
        .iter()
        .find(|a| !before.contains(a))
        .expect("a rep-quarter that changed");
    let keys = [
        ("level", "rep".to_string()),
        ("entity_id", text(&moved["entity_id"])),
        ("period_type", "quarter".to_string()),
        ("period_start", text(&moved["ps"])),
    ];
    let mut r = req("attainment", &keys, "closed_won");
    r.history = true;
    let e = explain(&loc, &p, &r).await.unwrap();
    assert!(e.reproduced);
    let h = e.history.clone().unwrap();
    assert_eq!(
        h.iter().map(|m| m.snapshot_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let was = before
        .iter()
        .find(|b| b["entity_id"] == moved["entity_id"] && b["ps"] == moved["ps"])
        .map(|b| text(&b["cw"]));
    assert_eq!(h[0].value, was, "{h:#?}");
    assert_eq!(h[1].value, Some(text(&moved["cw"])), "{h:#?}");
    // What arrived between them: read after snapshot 1's offsets, by snapshot 2's.
    assert!(h[1].arrived_total > 0, "{h:#?}");
    for i in &h[1].arrived {
        let at = |c: &quotaflow::snapshot::Checkpoint| {
            c.offsets[&i.topic]
                .get(&i.partition.unwrap())
                .copied()
                .unwrap_or(0)
        };
        let o = i.offset.unwrap();
        assert!(at(&first) <= o && o < at(&second), "{i:?}");
    }
    assert!(h[1].arrived.iter().any(|i| i.kind == "deal"), "{h:#?}");
    // The text form shows the same.
    let shown = quotaflow::explain::text(&e);
    assert!(shown.contains("history of closed_won"), "{shown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_command_prints_a_reproduced_explanation_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, out) = crate::serve::output_with_snapshot(dir.path()).await;
    let row = &sql(&out, None, "SELECT rep_id, CAST(period_start AS VARCHAR) AS ps FROM commissions WHERE payout > 0 ORDER BY payout DESC LIMIT 1").await;
    let (rep, ps) = match row.first() {
        Some(r) => (text(&r["rep_id"]), text(&r["ps"])),
        None => {
            let r = &sql(
                &out,
                None,
                "SELECT rep_id, CAST(period_start AS VARCHAR) AS ps FROM commissions LIMIT 1",
            )
            .await[0];
            (text(&r["rep_id"]), text(&r["ps"]))
        }
    };
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .arg("explain")
            .args(args)
            .args(["--output", &out])
            .output()
            .unwrap()
    };
    let o = run(&[
        "commissions",
        "--key",
        &format!("rep_id={rep}"),
        "--key",
        &format!("period_start={ps}"),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("payout = ") && stdout.contains("reproduced exactly"),
        "{stdout}"
    );
    assert!(stdout.contains("tier 4"), "{stdout}");
    let o = run(&[
        "commissions",
        "--key",
        &format!("rep_id={rep}"),
        "--key",
        &format!("period_start={ps}"),
        "--format",
        "json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reproduced"], true);
    assert_eq!(v["keys"]["rep_id"], rep.as_str());
    assert_eq!(v["row"]["payout"], v["computed"]);
    for (args, says) in [
        (vec!["nps"], "explain covers attainment"),
        (
            vec!["attainment", "--key", "level=rep"],
            "needs --key entity_id=VALUE",
        ),
        (
            vec!["deals_current", "--key", "deal=1"],
            "--key deal: not a key of deals_current",
        ),
        (
            vec!["deals_current", "--key", "deal_id=no-such-deal"],
            "no row of `deals_current`",
        ),
        (
            vec![
                "rep_daily",
                "--key",
                "rep_id=rep-00001",
                "--key",
                "day=March",
            ],
            "is not a date",
        ),
        (
            vec![
                "commissions",
                "--key",
                &format!("rep_id={rep}"),
                "--key",
                &format!("period_start={ps}"),
                "--column",
                "nope",
            ],
            "has no such column",
        ),
        (
            vec![
                "commissions",
                "--key",
                &format!("rep_id={rep}"),
                "--key",
                &format!("period_start={ps}"),
                "--column",
                "plan",
            ],
            "does not trace commissions.plan",
        ),
    ] {
        let o = run(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
