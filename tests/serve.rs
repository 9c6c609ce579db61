//! `quotaflow serve` as BI tools meet it: the binary serving a snapshot written by a real
//! pipeline run, queried by clients none of which is ours — psql, psycopg 3, SQLAlchemy's
//! inspector, the PostgreSQL JDBC driver — each result checked against `quotaflow sql`.
//! The start-up refusals (no password off loopback, an empty password, TLS that cannot load)
//! need no client.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{bin, eventually_blocking, once, produce, run_in_process};

pub const PASSWORD: &str = "s3cret-for-tests";
/// How long the server may take to load a snapshot and listen.
const START_WITHIN: Duration = Duration::from_secs(60);

/// A `quotaflow serve` process, killed when dropped.
pub struct Server {
    child: Child,
    pub pg: u16,
    pub http: u16,
}

impl Server {
    /// Starts the server on free loopback ports (it binds port 0 and says which it got).
    pub fn start(output: &str, args: &[&str]) -> Server {
        Server::start_on(output, "127.0.0.1:0", args)
    }

    /// Starts the server with its PostgreSQL endpoint on `pg`.
    pub fn start_on(output: &str, pg: &str, args: &[&str]) -> Server {
        let child = Command::new(bin())
            .args([
                "serve",
                "--output",
                output,
                "--pg",
                pg,
                "--http",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("QUOTAFLOW_SERVE_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Owned by `server` from here: a failed start still kills the process.
        let mut server = Server {
            child,
            pg: 0,
            http: 0,
        };
        let (tx, rx) = mpsc::channel();
        let stderr = server.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let port_after = |line: &str, marker: &str| -> u16 {
            let rest = &line[line.find(marker).unwrap() + marker.len()..];
            let addr: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != ';')
                .collect();
            addr.rsplit(':').next().unwrap().parse().unwrap()
        };
        loop {
            let line = rx
                .recv_timeout(START_WITHIN)
                .unwrap_or_else(|e| panic!("quotaflow serve did not say it listens: {e}"));
            if line.contains("quotaflow serve: PostgreSQL on") {
                server.pg = port_after(&line, "PostgreSQL on ");
                server.http = port_after(&line, "HTTP on ");
                // Keep draining stderr so the server never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return server;
            }
        }
    }

    pub fn get(&self, path: &str) -> String {
        self.get_as(path, None)
    }

    /// GET `path` on the HTTP port, with `Authorization: <authorization>` if given.
    pub fn get_as(&self, path: &str, authorization: Option<&str>) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        let auth = authorization.map_or(String::new(), |a| format!("authorization: {a}\r\n"));
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n{auth}\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn psql(&self, sslmode: &str, command: &str) -> Output {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user=quotaflow dbname=quotaflow sslmode={sslmode}",
                self.pg
            ))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-c", command])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("psql on PATH (scripts/services installs postgresql-client)")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `quotaflow sql --format json`.
pub fn sql(output: &str, query: &str) -> Vec<Value> {
    let o = Command::new(bin())
        .args(["sql", "--output", output, "--format", "json", query])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A self-signed certificate and its key, made by openssl.
fn certificate(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    (cert.display().to_string(), key.display().to_string())
}

/// The output of a pipeline run over the generated events of `seed`, on the mock cluster.
pub async fn output_with_snapshot(
    dir: &Path,
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
) {
    let p = crate::common::pipeline();
    let c = crate::pipeline_mock::cluster(&p);
    produce(
        &c.bootstrap_servers(),
        10_000,
        &crate::pipeline_mock::messages(&p, 4),
    );
    let out = dir.join("out").display().to_string();
    run_in_process(&p, once(&c.bootstrap_servers(), &out)).await;
    (c, out)
}

/// Snapshot 2 of [`output_with_snapshot`]'s output: more events, the pipeline resumes from
/// snapshot 1.
pub async fn next_snapshot(
    cluster: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    out: &str,
) {
    let p = crate::common::pipeline();
    produce(
        &cluster.bootstrap_servers(),
        10_000,
        &crate::pipeline_mock::messages(&p, 5),
    );
    run_in_process(&p, once(&cluster.bootstrap_servers(), out)).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs services: psql, psycopg, SQLAlchemy and the JDBC driver (scripts/test installs them)"]
async fn bi_clients_read_the_snapshot_like_quotaflow_sql_does() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, out) = output_with_snapshot(dir.path()).await;
    let (cert, key) = certificate(dir.path());
    let server = Server::start(&out, &["--tls-cert", &cert, "--tls-key", &key]);

    // psql: \dt, \d, a query, a refusal.
    let o = server.psql("require", "\\dt");
    assert!(o.status.success(), "{}", text(&o));
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    for t in [
        "attainment",
        "deals_current",
        "rep_daily",
        "snapshots",
        "data_quality",
    ] {
        assert!(
            listed.lines().any(|l| l.split('|').nth(1) == Some(t)),
            "\\dt lacks {t}:\n{listed}"
        );
    }
    let o = server.psql("require", "\\d attainment");
    assert!(o.status.success(), "{}", text(&o));
    let described = String::from_utf8_lossy(&o.stdout).to_string();
    let type_of = |column: &str| {
        described
            .lines()
            .find(|l| l.split('|').next() == Some(column))
            .and_then(|l| l.split('|').nth(1))
            .unwrap_or_else(|| panic!("\\d attainment lacks {column}:\n{described}"))
            .to_string()
    };
    assert!(type_of("quota").starts_with("numeric"), "{described}");
    assert_eq!(type_of("period_start"), "date");
    let count = |rows: Vec<Value>| rows[0]["n"].as_i64().unwrap();
    let expected = count(sql(
        &out,
        "SELECT COUNT(*) AS n FROM attainment WHERE level = 'team'",
    ));
    let o = server.psql(
        "require",
        "SELECT COUNT(*) FROM attainment WHERE level = 'team'",
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        expected.to_string()
    );
    let o = server.psql("require", "DELETE FROM attainment");
    assert!(!o.status.success());
    assert!(
        text(&o).contains("read-only: DELETE statements are refused"),
        "{}",
        text(&o)
    );
    let o = server.psql("disable", "SELECT 1");
    assert!(o.status.success(), "plaintext on loopback: {}", text(&o));

    // psycopg 3 and SQLAlchemy, over TLS.
    let dsn = format!(
        "host=127.0.0.1 port={} user=quotaflow dbname=quotaflow sslmode=require",
        server.pg
    );
    let o = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/psycopg_probe.py"))
        .arg(&dsn)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["ssl"], true);
    assert!(
        got["version"]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL 16"),
        "{got}"
    );
    assert_eq!(got["current_schema"], "public");
    assert_eq!(got["current_database"], "quotaflow");
    // Values and their types equal `quotaflow sql`'s: numeric → Decimal, date → date.
    let want = sql(
        &out,
        "SELECT entity_id, CAST(period_start AS VARCHAR) AS period_start, CAST(quota AS VARCHAR) AS quota, \
         CAST(closed_won AS VARCHAR) AS closed_won FROM attainment \
         WHERE level = 'region' AND period_type = 'quarter' ORDER BY entity_id, period_start",
    );
    let rows = got["attainment_region_quarter"].as_array().unwrap();
    assert!(!rows.is_empty());
    assert_eq!(rows.len(), want.len());
    for (row, w) in rows.iter().zip(&want) {
        assert_eq!(row[0], serde_json::json!(["str", w["entity_id"]]));
        assert_eq!(row[1], serde_json::json!(["date", w["period_start"]]));
        for (i, c) in [(2, "quota"), (3, "closed_won")] {
            match w[c].as_str() {
                Some(v) => assert_eq!(row[i], serde_json::json!(["Decimal", v]), "{c}"),
                None => assert_eq!(row[i], serde_json::json!(["NoneType", null]), "{c}"),
            }
        }
    }
    // TIMESTAMP WITH TIME ZONE arrives as an aware datetime.
    assert_eq!(got["snapshot_times"][1][0], "datetime");
    assert_eq!(got["snapshot_times"][1][2], true, "{got}");
    assert_eq!(got["own_setting"], "probe-one");
    assert_eq!(
        got["other_setting"], "",
        "one connection's SET leaked into another's"
    );
    for kind in ["insert", "copy", "drop", "engine_set"] {
        assert_eq!(
            got["refused"][kind][0], "25006",
            "{kind}: {}",
            got["refused"][kind]
        );
    }
    assert!(
        got["wrong_password"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("password authentication failed")),
        "a wrong password was let in: {}",
        got["wrong_password"]
    );
    let tables = sql(&out, "SELECT 1 AS x");
    assert_eq!(tables.len(), 1);
    let sa_tables: Vec<&str> = got["sa_tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in ["attainment", "commissions", "snapshots"] {
        assert!(sa_tables.contains(&t), "{sa_tables:?}");
    }
    let sa_columns = got["sa_columns"].as_array().unwrap();
    let column = |name: &str| {
        sa_columns
            .iter()
            .find(|c| c[0] == name)
            .unwrap_or_else(|| panic!("SQLAlchemy lists no {name}: {sa_columns:?}"))
    };
    assert!(
        column("quota")[1].as_str().unwrap().starts_with("NUMERIC"),
        "{:?}",
        column("quota")
    );
    assert_eq!(column("period_start")[1], "DATE");
    assert!(column("pacing")[2]
        .as_str()
        .unwrap()
        .contains("attainment / time_elapsed"));
    assert!(got["sa_table_comment"]
        .as_str()
        .unwrap()
        .starts_with("attainment — grain"));
    assert_eq!(
        got["sa_count"].as_i64().unwrap(),
        count(sql(
            &out,
            "SELECT COUNT(*) AS n FROM attainment WHERE level = 'company'"
        ))
    );

    // The PostgreSQL JDBC driver, over TLS.
    let o = Command::new("java")
        .args(["-cp", "/usr/share/java/postgresql.jar"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/JdbcProbe.java"))
        .arg(format!(
            "jdbc:postgresql://127.0.0.1:{}/quotaflow?sslmode=require",
            server.pg
        ))
        .args(["quotaflow", PASSWORD])
        .output()
        .expect("java on PATH (scripts/services installs default-jdk-headless)");
    assert!(o.status.success(), "{}", text(&o));
    let facts = String::from_utf8_lossy(&o.stdout).to_string();
    let lines: Vec<Vec<&str>> = facts.lines().map(|l| l.split('\t').collect()).collect();
    let of = |key: &'static str| lines.iter().filter(move |l| l[0] == key);
    assert!(of("table").any(|l| l[1] == "attainment"), "{facts}");
    assert!(
        of("column")
            .any(|l| l[1] == "quota" && l[2] == "numeric" && l[3].starts_with("`quota` = Σ")),
        "{facts}"
    );
    assert!(
        of("column").any(|l| l[1] == "period_start" && l[2] == "date"),
        "{facts}"
    );
    let want = sql(
        &out,
        "SELECT COUNT(*) AS n, CAST(SUM(closed_won) AS VARCHAR) AS s FROM attainment \
         WHERE level = 'company' AND period_type = 'quarter'",
    );
    let executions: Vec<_> = of("execution").collect();
    assert_eq!(executions.len(), 7, "{facts}");
    for e in &executions {
        assert_eq!(e[3], want[0]["n"].to_string());
        assert_eq!(
            e[4].parse::<f64>().unwrap(),
            want[0]["s"].as_str().unwrap().parse::<f64>().unwrap()
        );
    }
    assert_eq!(
        executions[6][2], "true",
        "the driver never switched to a server-side prepare: {facts}"
    );
    assert!(
        of("types").any(|l| l[1] == "date" && l[2] == "java.sql.Date"),
        "{facts}"
    );

    // /metrics counted them; /healthz names the snapshot served.
    let metrics = server.get("/metrics");
    let queries: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quotaflow_serve_queries_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(queries > 10, "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l == "quotaflow_serve_snapshot_id 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("quotaflow_serve_logins_refused_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    let health = server.get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"snapshot_id\":1"), "{health}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs services: psycopg (scripts/test installs it)"]
async fn a_new_snapshot_is_served_without_a_restart_and_prepared_statements_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, out) = output_with_snapshot(dir.path()).await;
    let server = Server::start(&out, &[]);
    // A client prepares a statement on snapshot 1 and executes it until it sees snapshot 2.
    let script = r#"
import sys, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    q = "SELECT MAX(snapshot_id) FROM snapshots WHERE events >= %s"
    first = c.execute(q, (0,), prepare=True).fetchone()[0]
    print("first", first, flush=True)
    sys.stdin.readline()  # the test wrote snapshot 2
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        n = c.execute(q, (0,), prepare=True).fetchone()[0]
        if n != first:
            print("then", n, flush=True)
            break
        time.sleep(0.1)
"#;
    let mut client = Command::new("python3")
        .args(["-c", script])
        .arg(format!(
            "host=127.0.0.1 port={} user=quotaflow dbname=quotaflow",
            server.pg
        ))
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first 1");
    next_snapshot(&cluster, &out).await;
    assert_eq!(
        sql(&out, "SELECT MAX(snapshot_id) AS n FROM snapshots")[0]["n"],
        2
    );
    {
        use std::io::Write;
        writeln!(client.stdin.as_mut().unwrap()).unwrap();
    }
    assert_eq!(lines.next().map(Result::unwrap).as_deref(), Some("then 2"));
    assert!(client.wait().unwrap().success());
    eventually_blocking("/healthz to name snapshot 2", START_WITHIN, || {
        server.get("/healthz").contains("\"snapshot_id\":2")
    });
}

fn refused_start(args: &[&str], password: Option<&str>) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--output", "/nonexistent-output"])
        .args(args);
    if !args.contains(&"--http") {
        cmd.args(["--http", "off"]);
    }
    match password {
        Some(p) => cmd.env("QUOTAFLOW_SERVE_PASSWORD", p),
        None => cmd.env_remove("QUOTAFLOW_SERVE_PASSWORD"),
    };
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    text(&o)
}

#[test]
fn serve_refuses_to_start_unsafely_and_says_why() {
    let e = refused_start(&["--pg", "0.0.0.0:0"], None);
    assert!(
        e.contains("loopback only") && e.contains("QUOTAFLOW_SERVE_PASSWORD"),
        "{e}"
    );
    let e = refused_start(&["--pg", "127.0.0.1:0", "--http", "0.0.0.0:0"], None);
    assert!(
        e.contains("the dashboard shows commissions") && e.contains("loopback only"),
        "{e}"
    );
    let e = refused_start(&["--pg", "127.0.0.1:0", "--http", "0.0.0.0:0"], None);
    assert!(
        e.contains("the dashboard shows commissions") && e.contains("loopback only"),
        "{e}"
    );
    let e = refused_start(&["--pg", "127.0.0.1:0"], Some(""));
    assert!(
        e.contains("QUOTAFLOW_SERVE_PASSWORD: the password is empty"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("password");
    std::fs::write(&empty, "\n").unwrap();
    let e = refused_start(
        &["--password-file", empty.to_str().unwrap()],
        Some("ignored"),
    );
    assert!(
        e.contains(&format!("{}: the password is empty", empty.display())),
        "{e}"
    );
}

#[test]
fn a_tls_setting_that_cannot_load_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    std::fs::write(&cert, "not a certificate\n").unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let mut cmd = Command::new(bin());
    let o = cmd
        .args([
            "serve",
            "--output",
            dir.path().to_str().unwrap(),
            "--http",
            "off",
            "--pg",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .env("QUOTAFLOW_SERVE_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    let e = text(&o);
    assert!(
        e.contains(&cert.display().to_string()) && e.contains("no PEM certificate"),
        "{e}"
    );
    assert!(!e.contains("PostgreSQL on"), "it listened anyway: {e}");
}
