//! The dashboard of `quotaflow serve` in a real browser (Debian's headless Chromium driven by
//! playwright-core): its numbers equal the tables, a team drills down to its reps and a rep to
//! their deals and trend, and a new snapshot shows without a reload. Its JSON API and its
//! Basic authentication are checked over plain HTTP.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::serve::{next_snapshot, output_with_snapshot, sql, Server, PASSWORD};

/// `(key → closed_won, quota)` of rows a query returns with columns `k`, `cw`, `q`.
fn by_key(rows: &[Value]) -> BTreeMap<String, (Value, Value)> {
    rows.iter()
        .map(|r| {
            (
                r["k"].as_str().unwrap().to_string(),
                (r["cw"].clone(), r["q"].clone()),
            )
        })
        .collect()
}

/// The same from the page: (key → first two money cells).
fn shown(rows: &Value) -> BTreeMap<String, (Value, Value)> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let v = &r["values"];
            let cell = |i: usize| match v[i].as_str() {
                Some("") | None => Value::Null,
                Some(s) => Value::String(s.to_string()),
            };
            (r["key"].as_str().unwrap().to_string(), (cell(0), cell(1)))
        })
        .collect()
}

/// What the page should show for the current quarter of the snapshot at `out`.
fn expected(out: &str) -> (String, Vec<Value>, Vec<Value>, Vec<Value>) {
    let company = sql(
        out,
        "SELECT CAST(period_start AS VARCHAR) AS ps, CAST(closed_won AS VARCHAR) AS cw, \
         CAST(quota AS VARCHAR) AS q FROM attainment \
         WHERE level = 'company' AND period_type = 'quarter' AND is_current",
    );
    let start = company[0]["ps"].as_str().unwrap().to_string();
    let teams = sql(
        out,
        &format!(
            "SELECT entity_id AS k, CAST(closed_won AS VARCHAR) AS cw, CAST(quota AS VARCHAR) AS q \
             FROM attainment WHERE level = 'team' AND period_type = 'quarter' AND period_start = DATE '{start}'"
        ),
    );
    let quality = sql(
        out,
        "SELECT topic, reason, CAST(count AS VARCHAR) AS n FROM data_quality ORDER BY topic, reason",
    );
    (start, company, teams, quality)
}

fn check_overview(page: &Value, out: &str, snapshot: &str) {
    let (start, company, teams, quality) = expected(out);
    assert_eq!(page["snapshot"], snapshot, "{page}");
    assert_eq!(page["shown_snapshot"], snapshot);
    assert_eq!(page["period_start"], start.as_str());
    assert_eq!(page["company"]["closed_won"], company[0]["cw"]);
    assert_eq!(page["company"]["quota"], company[0]["q"]);
    // Shown exactly, only grouped by thousands.
    assert_eq!(
        page["company"]["text"].as_str().unwrap().replace(',', ""),
        company[0]["cw"].as_str().unwrap()
    );
    assert_eq!(shown(&page["teams"]), by_key(&teams));
    let quality: Vec<Vec<String>> = quality
        .iter()
        .map(|r| {
            ["topic", "reason", "n"]
                .map(|c| r[c].as_str().unwrap().to_string())
                .to_vec()
        })
        .collect();
    let page_quality: Vec<Vec<String>> = serde_json::from_value(page["quality"].clone()).unwrap();
    assert_eq!(page_quality, quality);
    assert_eq!(
        page["errors"],
        serde_json::json!([]),
        "script errors on the page"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs services: Chromium and playwright-core (scripts/test installs them)"]
async fn the_dashboard_in_a_browser_equals_the_tables_drills_down_and_follows_new_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, out) = output_with_snapshot(dir.path()).await;
    let server = Server::start(&out, &[]);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut probe = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/dashboard_probe.js"))
        .arg(format!("http://127.0.0.1:{}/", server.http))
        .arg(shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node on PATH, NODE_PATH with playwright-core (scripts/services env)");
    let mut lines = BufReader::new(probe.stdout.take().unwrap()).lines();
    let mut next = |stage: &str| -> Value {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the browser probe ended before `{stage}`"))
            .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["stage"], stage, "{v}");
        v
    };

    let page = next("overview");
    check_overview(&page, &out, "1");
    let start = page["period_start"].as_str().unwrap().to_string();
    let leaders = sql(
        &out,
        &format!("SELECT rep_id FROM leaderboard WHERE period_type = 'quarter' AND period_start = DATE '{start}' ORDER BY rank, rep_id LIMIT 10"),
    );
    let leaders: Vec<&Value> = leaders.iter().map(|r| &r["rep_id"]).collect();
    let shown_leaders: Vec<&Value> = page["leaderboard"].as_array().unwrap().iter().collect();
    assert_eq!(shown_leaders, leaders);

    // Drill-down: the first team to its reps, the first rep to their deals and trend.
    let team = next("team");
    let first_team = page["teams"][0]["key"].as_str().unwrap();
    assert_eq!(team["team"], first_team);
    let reps = sql(
        &out,
        &format!(
            "SELECT a.entity_id AS k, CAST(a.closed_won AS VARCHAR) AS cw, CAST(a.quota AS VARCHAR) AS q \
             FROM attainment a JOIN performance p ON p.rep_id = a.entity_id AND p.period_type = a.period_type \
             AND p.period_start = a.period_start WHERE a.level = 'rep' AND a.period_type = 'quarter' \
             AND a.period_start = DATE '{start}' AND p.team_id = '{first_team}'"
        ),
    );
    assert!(!reps.is_empty());
    let shown_reps: BTreeMap<String, (Value, Value)> = team["reps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let cell = |i: usize| match r["values"][i].as_str() {
                Some("") | None => Value::Null,
                Some(s) => Value::String(s.to_string()),
            };
            (r["rep"].as_str().unwrap().to_string(), (cell(0), cell(1)))
        })
        .collect();
    assert_eq!(shown_reps, by_key(&reps));
    let rep = next("rep");
    let first_rep = team["reps"][0]["rep"].as_str().unwrap();
    assert_eq!(rep["rep"], first_rep);
    let deals = sql(
        &out,
        &format!("SELECT COUNT(*) AS n FROM deals_current WHERE rep_id = '{first_rep}' AND close_date >= DATE '{start}'"),
    );
    assert_eq!(
        rep["deals"].as_array().unwrap().len() as i64,
        deals[0]["n"].as_i64().unwrap().min(100)
    );
    assert!(rep["trend_points"].as_u64().unwrap() > 0, "{rep}");
    assert!(shots.join("dashboard.png").metadata().unwrap().len() > 10_000);

    // Every figure links to its explanation, which reproduces the figure shown.
    let why = next("explain");
    assert_eq!(why["explained"]["verdict"], "reproduced", "{why}");
    assert!(why["explained"]["inputs"].as_u64().unwrap() > 0, "{why}");
    assert!(
        why["explained"]["contributions"].as_u64().unwrap() > 0,
        "{why}"
    );
    assert_eq!(why["errors"], serde_json::json!([]), "script errors");
    let links = why["links"].as_array().unwrap();
    let mut tables = std::collections::BTreeSet::new();
    for l in links {
        let href = l["href"].as_str().unwrap();
        let query = href.strip_prefix("/explain?").unwrap();
        let table = query
            .split('&')
            .next()
            .unwrap()
            .trim_start_matches("table=");
        // One link of each table and column is enough (the rest differ by row only).
        let column = query.rsplit("column=").next().unwrap();
        if !tables.insert((table.to_string(), column.to_string())) {
            continue;
        }
        let reply = server.get(&format!("/api/explain?{query}"));
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        let e: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{href}: {reply}"));
        assert_eq!(e["reproduced"], true, "{href}: {e:#}");
        if let Some(v) = l["value"].as_str().filter(|v| !v.is_empty()) {
            assert_eq!(e["computed"].as_str(), Some(v), "{href}");
        }
    }
    let covered: std::collections::BTreeSet<&str> =
        tables.iter().map(|(t, _)| t.as_str()).collect();
    for t in [
        "attainment",
        "forecast",
        "leaderboard",
        "deals_current",
        "data_quality",
    ] {
        assert!(
            covered.contains(t),
            "no link to a {t} explanation: {covered:?}"
        );
    }

    // A new snapshot: more events, the pipeline resumes; the open page follows without a reload.
    next_snapshot(&cluster, &out).await;
    writeln!(probe.stdin.as_mut().unwrap()).unwrap();
    let after = next("after");
    check_overview(&after, &out, "2");
    assert_ne!(
        after["quality"], page["quality"],
        "the new events show in the data quality"
    );
    assert!(probe.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_loopback_the_dashboard_asks_for_the_servers_credentials() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, out) = output_with_snapshot(dir.path()).await;
    // The PostgreSQL endpoint listens on every interface: the dashboard is guarded too.
    let server = Server::start_on(&out, "0.0.0.0:0", &[]);
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let refused = server.get("/api/overview");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert!(
        refused.to_lowercase().contains("www-authenticate: basic"),
        "{refused}"
    );
    let wrong = server.get_as("/", Some(&basic("quotaflow", "wrong")));
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    let page = server.get_as("/", Some(&basic("quotaflow", PASSWORD)));
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("<title>quotaflow"),
        "{}",
        &page[..200.min(page.len())]
    );
    // The API answers what the tables hold, money as exact text.
    let api = server.get_as(
        "/api/overview?period_type=quarter",
        Some(&basic("quotaflow", PASSWORD)),
    );
    let body: Value = serde_json::from_str(api.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let (start, company, _, _) = expected(&out);
    assert_eq!(body["period"]["start"], start.as_str());
    assert_eq!(body["company"][0]["closed_won"], company[0]["cw"]);
    assert_eq!(body["snapshot"]["snapshot_id"], 1);
    let bad = server.get_as(
        "/api/overview?period_type=week",
        Some(&basic("quotaflow", PASSWORD)),
    );
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains("month, quarter or year"),
        "{bad}"
    );
    // Health and metrics stay open to probes and scrapers.
    assert!(server.get("/healthz").starts_with("HTTP/1.1 200"));
}
