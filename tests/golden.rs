//! Golden tests: two small hand-made event sets whose expected rows were computed by hand from
//! METRICS.md. The events and the expected rows are data, under tests/data/golden/ (the
//! arithmetic is in the comments of the files; tests/data/README.md has the formats); what
//! does not fit a row (a tolerance, a property of every row) stays here.

use serde_json::Value;

use crate::common::{compute, ev, events_file, fold_all, pipeline, pipeline_with, rows, Table};

const DATA: &str = "tests/data/golden";

/// The events of a scenario (`q1`, `ranking`), decoded.
fn events(scenario: &str) -> Vec<quotaflow::event::Event> {
    events_file(&format!("{DATA}/{scenario}/events.jsonl"))
        .into_iter()
        .map(|(t, json)| ev(t, &json))
        .collect()
}

/// The expected rows of one file: `#! key:` columns find the row, the others are compared.
struct Expected {
    path: String,
    key: Vec<usize>,
    rows_exactly: Option<usize>,
    header: Vec<String>,
    /// (line number, cells)
    rows: Vec<(usize, Vec<String>)>,
}

/// Reads the simple CSV of tests/data/README.md: `# ` comments, `#! key: a,b` and
/// `#! rows: N` directives, a header, rows of comma-separated cells (no quoting).
fn expected(rel: &str) -> Expected {
    let path = format!("{DATA}/{rel}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut key, mut rows_exactly, mut header, mut rows) = (None, None, None, Vec::new());
    for (i, line) in text.lines().enumerate() {
        let at = format!("{path}:{}", i + 1);
        if let Some(d) = line.strip_prefix("#!") {
            let (name, value) = d.split_once(':').unwrap_or_else(|| panic!("{at}: {line}"));
            match name.trim() {
                "key" => {
                    key = Some(
                        value
                            .split(',')
                            .map(|c| c.trim().to_string())
                            .collect::<Vec<_>>(),
                    )
                }
                "rows" => {
                    rows_exactly =
                        Some(value.trim().parse().unwrap_or_else(|e| panic!("{at}: {e}")))
                }
                other => panic!("{at}: unknown directive {other}"),
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        assert!(!line.contains('"'), "{at}: no quoting in these files");
        let cells: Vec<String> = line.split(',').map(str::to_string).collect();
        match &header {
            None => header = Some(cells),
            Some(h) => {
                assert_eq!(
                    cells.len(),
                    h.len(),
                    "{at}: {} cells, the header has {}",
                    cells.len(),
                    h.len()
                );
                rows.push((i + 1, cells));
            }
        }
    }
    let header: Vec<String> = header.unwrap_or_else(|| panic!("{path}: no header"));
    let key = key
        .unwrap_or_else(|| panic!("{path}: no `#! key:` line"))
        .iter()
        .map(|k| {
            header
                .iter()
                .position(|h| h == k)
                .unwrap_or_else(|| panic!("{path}: key {k} is not a column"))
        })
        .collect();
    Expected {
        path,
        key,
        rows_exactly,
        header,
        rows,
    }
}

/// Whether a value equals a cell: `null`, `true`/`false`, a number (an integer cell only
/// equals an integer, a cell with a `.` or an exponent only a float, exactly), text; a cell
/// ending in `*` is a prefix of a text value.
fn cell_matches(actual: &Value, cell: &str) -> bool {
    match actual {
        Value::Null => cell == "null",
        Value::Bool(b) => cell == if *b { "true" } else { "false" },
        Value::String(s) => match cell.strip_suffix('*') {
            Some(prefix) => s.starts_with(prefix),
            None => s == cell,
        },
        Value::Number(n) => {
            if cell.contains(['.', 'e', 'E']) {
                n.is_f64() && cell.parse::<f64>().ok() == n.as_f64()
            } else {
                (n.is_i64() || n.is_u64()) && cell.parse::<i64>().ok() == n.as_i64()
            }
        }
        _ => false,
    }
}

/// Every expected row of `rel` is exactly one row of `actual` (by its key cells; an empty key
/// cell matches anything) with the values of its non-empty cells; with `#! rows: N`, `actual`
/// has N rows.
fn check(actual: &[Value], rel: &str) {
    let e = expected(rel);
    if let Some(n) = e.rows_exactly {
        assert_eq!(actual.len(), n, "{}: rows: {actual:#?}", e.path);
    }
    for (line, cells) in &e.rows {
        let at = format!("{}:{line}", e.path);
        let keys: Vec<(usize, &str)> = e
            .key
            .iter()
            .filter(|i| !cells[**i].is_empty())
            .map(|i| (*i, cells[*i].as_str()))
            .collect();
        let hits: Vec<&Value> = actual
            .iter()
            .filter(|r| keys.iter().all(|(i, c)| cell_matches(&r[&e.header[*i]], c)))
            .collect();
        let named: Vec<String> = keys
            .iter()
            .map(|(i, c)| format!("{}={c}", e.header[*i]))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{at}: rows with {}: {hits:#?}",
            named.join(", ")
        );
        for (i, c) in cells.iter().enumerate() {
            if c.is_empty() || e.key.contains(&i) {
                continue;
            }
            let col = &e.header[i];
            assert!(
                cell_matches(&hits[0][col], c),
                "{at}: {col} of the row with {}: expected {c}, got {}\nrow: {}",
                named.join(", "),
                hits[0][col],
                hits[0]
            );
        }
    }
}

/// Checks table `table` against `{dir}/{table}.csv`.
fn check_table(tables: &[Table], dir: &str, table: &str) {
    check(&rows(tables, table), &format!("{dir}/{table}.csv"));
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

#[test]
fn the_checker_compares_as_documented() {
    let n = |s: &str| -> Value { serde_json::from_str(s).unwrap() };
    assert!(cell_matches(&n("90"), "90") && !cell_matches(&n("90.0"), "90"));
    assert!(cell_matches(&n("0.131"), "0.131") && !cell_matches(&n("0"), "0.0"));
    assert!(
        cell_matches(&n("\"13100.00\""), "13100.00")
            && !cell_matches(&n("\"13100.0\""), "13100.00")
    );
    assert!(cell_matches(&n("null"), "null") && !cell_matches(&n("\"x\""), "null"));
    assert!(cell_matches(&n("true"), "true") && !cell_matches(&n("false"), "true"));
    assert!(cell_matches(
        &n("\"2026-02-20T10:00:00Z\""),
        "2026-02-20T10:00:00*"
    ));
    assert!(!cell_matches(
        &n("\"2026-02-20T10:00:01Z\""),
        "2026-02-20T10:00:00*"
    ));
}

#[tokio::test]
async fn attainment_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1", "attainment");
    let att = rows(&tables, "attainment");
    // The year so far: pacing = attainment / (90 / 365), to 1e-12.
    let y = find(
        &att,
        &[
            ("level", "rep"),
            ("entity_id", "rep-a"),
            ("period_type", "year"),
        ],
    );
    let pacing = f(&y["pacing"]).unwrap();
    assert!((pacing - 0.131 / (90.0 / 365.0)).abs() < 1e-12);
    // No period starts after as_of_date, and rows carry no snapshot-wide columns (contract
    // version 2: a row is the same bytes until its inputs change).
    assert!(att
        .iter()
        .all(|r| s(&r["period_start"]).as_str() <= "2026-03-31"));
    assert!(att
        .iter()
        .all(|r| r.get("snapshot_id").is_none() && r.get("as_of").is_none()));
}

#[tokio::test]
async fn deals_current_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1", "deals_current");
}

#[tokio::test]
async fn rep_daily_and_data_quality_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1", "rep_daily");
    check_table(&tables, "q1", "data_quality");
    assert!(
        rows(&tables, "data_quality")
            .iter()
            .all(|r| r["count"].as_i64().unwrap() > 0),
        "rows with count 0 are not written"
    );
}

#[tokio::test]
async fn fiscal_year_and_time_zone_move_periods_and_days() {
    let p = pipeline_with(|t| {
        t.replace("fiscal_year_start_month = 1", "fiscal_year_start_month = 2")
            .replace("timezone = \"UTC\"", "timezone = \"Asia/Tokyo\"")
    });
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1/fiscal_feb_tokyo", "rep_daily");
    check_table(&tables, "q1/fiscal_feb_tokyo", "attainment");
}

#[tokio::test]
async fn forecast_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1", "forecast");
}

#[tokio::test]
async fn win_rates_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1", "win_rates");
    // Only periods with a closed deal: rep-b closed nothing.
    assert!(rows(&tables, "win_rates")
        .iter()
        .all(|r| r["entity_id"] != "rep-b"));
}

#[tokio::test]
async fn activity_kpis_and_surveys_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1", "activity_kpis");
    check_table(&tables, "q1", "survey_responses");
    check_table(&tables, "q1", "survey_nps");
}

#[tokio::test]
async fn stage_conversion_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("q1"))).await;
    check_table(&tables, "q1", "stage_conversion");
    let per_entity = rows(&tables, "stage_conversion")
        .iter()
        .filter(|r| r["level"] == "rep" && r["entity_id"] == "rep-a")
        .count();
    assert_eq!(per_entity, 4, "exactly four rows per entity and cohort");
}

#[tokio::test]
async fn performance_ties_and_commissions_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("ranking"))).await;
    check_table(&tables, "ranking", "performance");
    let perf = rows(&tables, "performance");
    // Attainment x 1.3, y 0.5, z 0.5, w 0.2: mean 0.625, population sd √0.166875.
    let x = find(
        &perf,
        &[
            ("period_type", "quarter"),
            ("period_start", "2026-01-01"),
            ("rep_id", "rep-x"),
        ],
    );
    let z = f(&x["z_score"]).unwrap();
    assert!((z - 0.675 / 0.166875f64.sqrt()).abs() < 1e-12, "{z}");
    // rep-v has a zero quota and no row.
    assert!(perf.iter().all(|row| row["rep_id"] != "rep-v"));
    check_table(&tables, "ranking", "commissions");
}

#[tokio::test]
async fn leaderboard_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("ranking"))).await;
    check_table(&tables, "ranking", "leaderboard");

    // Other weights from the pipeline file change the points.
    let p2 = pipeline_with(|t| t.replace("won_deals = 50.0", "won_deals = 0.0"));
    let tables = compute(&p2, &fold_all(&p2, events("ranking"))).await;
    check_table(&tables, "ranking/won_deals_0", "leaderboard");
}

#[tokio::test]
async fn trends_with_an_empty_week_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("ranking"))).await;
    check_table(&tables, "ranking", "trends");
    let tr = rows(&tables, "trends");
    let weeks = |rep: &str| tr.iter().filter(|r| r["rep_id"] == rep).count();
    // rep-y: the three weeks of the file and no other ("the empty week is a row").
    assert_eq!(weeks("rep-y"), 3);
    // rep-x's first event is its deal in the week of 2026-03-02: weeks from there, all zero activity.
    assert_eq!(weeks("rep-x"), 3);
}

/// The default pipeline plus the shipped example metric `sql/examples/<name>.sql`.
fn with_example(name: &str) -> std::sync::Arc<quotaflow::config::Pipeline> {
    pipeline_with(|t| {
        format!("{t}\n[[tables]]\nname = \"{name}\"\nsql = \"../sql/examples/{name}.sql\"\n")
    })
}

#[tokio::test]
async fn a_custom_metric_is_a_sql_file_and_a_table_entry() {
    let p = with_example("call_minutes_weekly");
    let tables = compute(&p, &fold_all(&p, events("ranking"))).await;
    check_table(&tables, "ranking/custom_metric", "call_minutes_weekly");
}

#[tokio::test]
async fn shipped_alert_rules_by_hand() {
    let p = pipeline();
    let state = fold_all(&p, events("q1"));
    let (_, breaches) = crate::common::Engine::new(std::sync::Arc::clone(&p.metrics))
        .compute_with_alerts(&state, 1)
        .await
        .unwrap();
    let as_rows: Vec<Value> = breaches
        .iter()
        .map(|b| {
            serde_json::json!({
                "rule": b.rule,
                "key": b.key,
                "severity": b.severity,
                "value": b.value,
                "message": b.message,
            })
        })
        .collect();
    check(&as_rows, "q1/breaches.csv");
    let a = breaches.iter().find(|b| b.rule == "pacing_behind").unwrap();
    assert!(a.message.contains("0.13"), "{}", a.message);
}

#[tokio::test]
async fn effective_dated_hierarchy_by_hand() {
    let p = pipeline();
    let tables = compute(&p, &fold_all(&p, events("moves"))).await;
    for table in [
        "attainment",
        "activity_kpis",
        "survey_nps",
        "stage_conversion",
        "win_rates",
        "forecast",
        "performance",
    ] {
        check_table(&tables, "moves", table);
    }
    // rep-c's first record of its move (t-apac / APAC) was corrected: it is in no row at all.
    for t in &tables {
        for r in rows(&tables, &t.name) {
            let text = r.to_string();
            assert!(
                !text.contains("apac") && !text.contains("APAC"),
                "{}: {text}",
                t.name
            );
        }
    }
    // Nobody was in t-emea in March: no quota, no row.
    let att = rows(&tables, "attainment");
    assert!(!att.iter().any(|r| r["entity_id"] == "t-emea"
        && r["period_type"] == "month"
        && r["period_start"] == "2026-03-01"));
    // Every period's team quotas and wins add up to the company's.
    for (period_type, period_start) in [
        ("quarter", "2026-01-01"),
        ("month", "2026-01-01"),
        ("month", "2026-02-01"),
        ("month", "2026-03-01"),
    ] {
        let of = |level: &str, col: &str| -> f64 {
            att.iter()
                .filter(|r| {
                    r["level"] == level
                        && r["period_type"] == period_type
                        && r["period_start"] == period_start
                })
                .map(|r| s(&r[col]).parse::<f64>().unwrap())
                .sum()
        };
        for col in ["quota", "closed_won"] {
            assert_eq!(
                of("team", col),
                of("company", col),
                "{period_type} {period_start} {col}"
            );
            assert_eq!(
                of("region", col),
                of("company", col),
                "{period_type} {period_start} {col}"
            );
        }
    }
}

#[tokio::test]
async fn a_custom_metric_can_roll_up_by_the_hierarchy() {
    let p = with_example("team_calls_weekly");
    let tables = compute(&p, &fold_all(&p, events("moves"))).await;
    check_table(&tables, "moves/custom_metric", "team_calls_weekly");
}
