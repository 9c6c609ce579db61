//! The command line as a user meets it: help, validation errors, generate to files, read-only sql.

use std::process::{Command, Output};

use crate::harness::{bin, once, produce, run_in_process};

fn quotaflow(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn every_command_has_help() {
    for cmd in [
        "run",
        "generate",
        "sql",
        "snapshots",
        "alerts",
        "validate",
        "verify",
        "demo",
        "limit",
    ] {
        let o = quotaflow(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}: {}", text(&o));
        assert!(text(&o).contains("Usage: quotaflow"), "{cmd}");
    }
    assert!(text(&quotaflow(&["run", "--help"])).contains("QUOTAFLOW_BROKERS"));
}

#[test]
fn validate_accepts_the_default_and_names_file_key_and_problem() {
    let o = quotaflow(&["validate", "--pipeline", "pipelines/default.toml"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("attainment"), "{}", text(&o));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let default = std::fs::read_to_string("pipelines/default.toml")
        .unwrap()
        .replace(
            "../sql/",
            &format!("{}/sql/", std::env::current_dir().unwrap().display()),
        );
    std::fs::write(
        &bad,
        default.replace("timezone = \"UTC\"", "timezone = \"Mars/Olympus\""),
    )
    .unwrap();
    let o = quotaflow(&["validate", "--pipeline", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a bad config is a user error");
    let t = text(&o);
    assert!(
        t.contains("bad.toml") && t.contains("calendar.timezone") && t.contains("Mars/Olympus"),
        "{t}"
    );

    std::fs::write(
        &bad,
        default.replace("[snapshot]", "[snapshot]\nretain = 3"),
    )
    .unwrap();
    let t = text(&quotaflow(&[
        "validate",
        "--pipeline",
        bad.to_str().unwrap(),
    ]));
    assert!(
        t.contains("bad.toml") && t.contains("unknown field `retain`"),
        "{t}"
    );

    // A typo in a SQL file is caught by planning over empty state, naming table and file.
    let sql = dir.path().join("typo.sql");
    std::fs::write(&sql, "SELECT rep_id, no_such_column FROM activity_days").unwrap();
    std::fs::write(
        &bad,
        format!(
            "{default}\n[[tables]]\nname = \"typo\"\nsql = \"{}\"\n",
            sql.display()
        ),
    )
    .unwrap();
    let o = quotaflow(&["validate", "--pipeline", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "bad SQL is a user error");
    let t = text(&o);
    assert!(
        t.contains("table `typo`") && t.contains("typo.sql") && t.contains("no_such_column"),
        "{t}"
    );
}

#[test]
fn run_without_brokers_says_how_to_give_them() {
    let o = Command::new(bin())
        .args(["run", "--once", "--output", "memory://x"])
        .env_remove("QUOTAFLOW_BROKERS")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--brokers"), "{}", text(&o));
}

#[test]
fn generate_writes_one_jsonl_per_topic_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let args = |d: &str| {
        vec![
            "generate",
            "--reps",
            "6",
            "--days",
            "10",
            "--seed",
            "5",
            "--start",
            "2026-03-02",
            "--out-dir",
            d,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    for d in [&a, &b] {
        let args = args(d.to_str().unwrap());
        let o = quotaflow(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", text(&o));
    }
    let mut total = 0;
    for topic in [
        "spm.activities",
        "spm.deals",
        "spm.quotas",
        "spm.roster",
        "spm.surveys",
        "spm.fx_rates",
    ] {
        let fa = std::fs::read_to_string(a.join(format!("{topic}.jsonl"))).unwrap();
        assert_eq!(
            fa,
            std::fs::read_to_string(b.join(format!("{topic}.jsonl"))).unwrap(),
            "{topic}"
        );
        assert!(fa
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
        total += fa.lines().count();
    }
    let mut expected = 0;
    let spec = quotaflow::generate::GenSpec {
        reps: 6,
        days: 10,
        seed: 5,
        start: chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap(),
        silence: None,
    };
    quotaflow::generate::generate(&spec, |_| expected += 1);
    assert_eq!(total, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_reads_a_snapshot_and_refuses_writes() {
    let p = crate::common::pipeline();
    let c = crate::pipeline_mock::cluster(&p);
    let msgs = crate::pipeline_mock::messages(&p, 4);
    produce(&c.bootstrap_servers(), 10_000, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    run_in_process(&p, once(&c.bootstrap_servers(), out)).await;

    let o = quotaflow(&[
        "sql",
        "--output",
        out,
        "--format",
        "csv",
        "SELECT COUNT(*) AS n FROM attainment WHERE level = 'company'",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let n: usize = String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(n > 0);
    let o = quotaflow(&[
        "sql",
        "--output",
        out,
        "--format",
        "json",
        "SELECT snapshot_id, as_of_date IS NOT NULL AS dated FROM snapshots",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        r#"[{"snapshot_id":1,"dated":true}]"#
    );
    // Rows carry no snapshot-wide columns any more (contract version 2).
    let o = quotaflow(&[
        "sql",
        "--output",
        out,
        "SELECT snapshot_id FROM data_quality",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    // `quotaflow snapshots` lists the retained snapshots and what each committed.
    let o = quotaflow(&["snapshots", "--output", out, "--format", "csv"]);
    assert!(o.status.success(), "{}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout);
    let mut lines = listed.lines();
    assert_eq!(
        lines.next(),
        Some("snapshot_id,as_of,written_at,events,tables_committed,committed,lost_offsets")
    );
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[0], "1", "{listed}");
    assert!(
        first[5].split(' ').any(|t| t == "attainment") && first[5].ends_with("snapshots"),
        "{listed}"
    );
    assert_eq!(
        first[4],
        first[5].split(' ').count().to_string(),
        "{listed}"
    );
    for stmt in [
        "DROP TABLE attainment",
        "INSERT INTO rep_daily SELECT * FROM rep_daily",
        "COPY attainment TO '/tmp/x.csv'",
        "CREATE TABLE t AS SELECT 1",
    ] {
        let o = quotaflow(&["sql", "--output", out, stmt]);
        assert!(!o.status.success(), "{stmt} was accepted");
        assert!(text(&o).contains("read-only"), "{stmt}: {}", text(&o));
    }
    // `quotaflow alerts` lists what fires in the latest snapshot.
    let o = quotaflow(&["alerts", "--output", out, "--format", "csv"]);
    assert!(o.status.success(), "{}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout);
    assert!(
        listed.starts_with("severity,rule,key,value,message,fired_at,alert_id"),
        "{listed}"
    );
    assert!(
        listed.lines().count() > 1 && listed.contains("pacing_behind"),
        "{listed}"
    );
    let o = quotaflow(&["sql", "--output", out, "--snapshot", "99", "SELECT 1"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no such snapshot"), "{}", text(&o));
}

#[test]
fn an_output_in_the_version_1_layout_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("_latest"),
        r#"{"snapshot_id": 3, "manifest": "snapshots/00000000000000000003/_manifest.json"}"#,
    )
    .unwrap();
    for args in [
        vec!["sql", "--output", dir.path().to_str().unwrap(), "SELECT 1"],
        vec!["snapshots", "--output", dir.path().to_str().unwrap()],
    ] {
        let o = quotaflow(&args);
        assert!(!o.status.success(), "{args:?}");
        let t = text(&o);
        assert!(
            t.contains("_latest") && t.contains("version-1 layout"),
            "{t}"
        );
        assert!(t.contains("Upgrading an output"), "{t}");
    }
}

#[test]
fn a_state_in_an_older_format_is_refused_naming_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    std::fs::create_dir_all(dir.path().join("_checkpoints")).unwrap();
    std::fs::write(
        dir.path().join("_latest"),
        r#"{"snapshot_id": 7, "checkpoint": "_checkpoints/00000000000000000007.json"}"#,
    )
    .unwrap();
    // A checkpoint as the previous version wrote it: one whole `state.bin`, format 5.
    std::fs::write(
        dir.path().join("_checkpoints/00000000000000000007.json"),
        r#"{"snapshot_id": 7, "pipeline": "default", "contract_version": 2,
            "quotaflow_version": "0.1.0", "as_of": null, "written_at": "2026-12-01T00:00:00Z",
            "events": 0, "calendar": {"time_zone": "UTC", "fiscal_year_start_month": 1,
            "corporate_currency": "USD"}, "offsets": {}, "tables": {},
            "state": {"state": "_state/00000000000000000007/state.bin",
                      "alerts": "_state/00000000000000000007/alerts.bin", "format": 5}}"#,
    )
    .unwrap();
    let o = quotaflow(&["verify", "--output", out]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("00000000000000000007.json") && t.contains("state format 5 is not"),
        "{t}"
    );
    assert!(t.contains("replay the topics into a new output"), "{t}");
}

#[test]
fn demo_runs_the_pipeline_and_shows_the_alerts_of_its_silent_reps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = Command::new(bin())
        .args(["demo", "--dir", out.to_str().unwrap()])
        .env_remove("QUOTAFLOW_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(stdout.contains("Current quarter by team:"), "{stdout}");
    // The terminal is the summary's: its own progress lines, no log line (there was one per
    // fired alert, before the summary that lists them).
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.lines().all(|l| l.starts_with("demo: ")),
        "the demo logged: {stderr}"
    );
    // The rep_inactive section names exactly the two reps the demo silences.
    let section = stdout
        .split("rep_inactive (the demo silences")
        .nth(1)
        .and_then(|s| s.split("days):").nth(1))
        .and_then(|s| s.split("alert events delivered").next())
        .unwrap_or_else(|| panic!("no rep_inactive section: {stdout}"));
    let reps: Vec<&str> = section
        .split_whitespace()
        .filter(|w| w.starts_with("rep-"))
        .collect();
    assert_eq!(reps, ["rep-00003", "rep-00011"], "{section}");
    assert!(stdout.contains("(0 still pending)"), "{stdout}");
    // What it printed is in the snapshot it wrote.
    let o = quotaflow(&[
        "alerts",
        "--output",
        out.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let firing = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(firing.contains("rep_inactive,rep-00003"), "{firing}");
    assert!(firing.contains("rep_inactive,rep-00011"), "{firing}");
}

#[test]
fn once_without_a_reachable_broker_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let o = quotaflow(&[
        "run",
        "--once",
        "--brokers",
        "127.0.0.1:1",
        "--output",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "an unreachable broker is a runtime failure"
    );
    let t = text(&o);
    assert!(
        t.contains("cannot reach the Kafka brokers `127.0.0.1:1`"),
        "{t}"
    );
}

#[test]
fn verify_finds_the_demo_equal_to_the_recompute_and_exits_3_when_a_setting_changed_the_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let out = out.to_str().unwrap();
    let o = quotaflow(&["demo", "--dir", out]);
    assert!(o.status.success(), "{}", text(&o));
    let o = quotaflow(&["verify", "--output", out]);
    assert!(o.status.success(), "{}", text(&o));
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(report.contains(", 0 differing rows"), "{report}");
    assert!(report.contains("leaderboard"), "{report}");
    assert!(!report.contains("DIFFERS"), "{report}");

    // The same snapshot against a pipeline whose leaderboard counts calls double: only the
    // leaderboard differs, and the report lists its rows.
    let root = env!("CARGO_MANIFEST_DIR");
    let text_of = std::fs::read_to_string(format!("{root}/pipelines/default.toml")).unwrap();
    assert!(text_of.contains("[leaderboard]\ncalls = 1.0\n"));
    let changed = text_of
        .replace("\"../sql/", &format!("\"{root}/sql/"))
        .replace(
            "[leaderboard]\ncalls = 1.0\n",
            "[leaderboard]\ncalls = 2.0\n",
        );
    let pipeline = dir.path().join("changed.toml");
    std::fs::write(&pipeline, changed).unwrap();
    let o = quotaflow(&[
        "verify",
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--output",
        out,
        "--limit",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // The report is the command's result (stdout); the failed check is said on stderr.
    let all = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("differ from a full recompute"),
        "{}",
        text(&o)
    );
    let differs: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("DIFFERS"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(differs, ["leaderboard"], "{all}");
    assert!(all.contains("only published  ×1:"), "{all}");
    assert!(all.contains("only recomputed ×1:"), "{all}");
}

#[test]
fn demo_serve_ends_serving_its_output_and_says_where() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    /// Killed however the test ends.
    struct Serving(std::process::Child);
    impl Drop for Serving {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Serving(
        Command::new(bin())
            .args(["demo", "--serve", "--dir", out.to_str().unwrap()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut url = None;
    let mut psql = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(u) = line.trim().strip_prefix("dashboard ") {
            url = Some(u.trim().to_string());
        }
        if let Some(p) = line.trim().strip_prefix("psql ") {
            psql = Some(p.trim().to_string());
            break;
        }
    }
    let url = url.expect("the dashboard URL is printed");
    assert_eq!(url, "http://127.0.0.1:9465/");
    assert_eq!(
        psql.as_deref(),
        Some("psql \"host=127.0.0.1 port=5433 user=quotaflow dbname=quotaflow\"")
    );
    // It serves the demo's snapshot (polling only until the port listens).
    let body = crate::harness::eventually_blocking(
        "the demo's dashboard to answer",
        std::time::Duration::from_secs(30),
        || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", 9465)).ok()?;
            write!(s, "GET /api/snapshot HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
            let mut reply = String::new();
            s.read_to_string(&mut reply).ok()?;
            reply.contains("\"snapshot_id\":1").then_some(reply)
        },
    );
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
}
