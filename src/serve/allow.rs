//! The read-only allow-list of `quotaflow serve`: which statement kinds a client may send, and
//! the error every other kind gets. Pure: a parsed statement in, a verdict out.

use datafusion::sql::sqlparser::ast::{Query, Set, SetExpr, Statement};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError};

/// What the server does with a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A query (SELECT, WITH, VALUES, TABLE), EXPLAIN or DESCRIBE of one, a SHOW, a cursor
    /// over a query, or a transaction no-op: run as DataFusion and the stock hooks do.
    Run,
    /// A `SET` (or `RESET`) kept in the connection's own settings; never the shared engine's.
    Setting,
    /// `DISCARD`, `DEALLOCATE`, `SAVEPOINT`, `RELEASE`: acknowledged with this tag; the
    /// connection's settings are reset by `DISCARD ALL`.
    Acknowledge(&'static str),
    /// Refused with SQLSTATE 25006 (`read_only_sql_transaction`); the text names the kind.
    Refuse(String),
}

/// The statement kinds the allow-list lets through, as the refusal lists them.
pub const ALLOWED: &str = "SELECT, WITH, VALUES, TABLE, EXPLAIN, DESCRIBE, SHOW, SET and RESET \
     of session settings, BEGIN/COMMIT/ROLLBACK (no-ops), DECLARE/FETCH/CLOSE of a cursor over a \
     query, SAVEPOINT/RELEASE (no-ops), DISCARD, DEALLOCATE";

/// The verdict on one statement.
pub fn verdict(statement: &Statement) -> Verdict {
    match statement {
        Statement::Query(q) => query(q, statement),
        Statement::Explain {
            statement: inner, ..
        } => match verdict(inner) {
            Verdict::Run => Verdict::Run,
            _ => refuse(statement),
        },
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Verdict::Run,
        Statement::Declare { stmts } => {
            let over_queries = stmts.iter().all(|d| {
                d.for_query
                    .as_deref()
                    .is_none_or(|q| query(q, statement) == Verdict::Run)
            });
            if over_queries {
                Verdict::Run
            } else {
                refuse(statement)
            }
        }
        Statement::Set(set) => match set {
            // DataFusion's own options would change the engine every connection shares.
            Set::SingleAssignment { variable, .. }
                if variable
                    .to_string()
                    .to_ascii_lowercase()
                    .starts_with("datafusion.") =>
            {
                refuse_setting(&variable.to_string())
            }
            Set::SingleAssignment { .. }
            | Set::SetTimeZone { .. }
            | Set::SetNames { .. }
            | Set::SetNamesDefault { .. }
            | Set::SetTransaction { .. }
            | Set::SetSessionParam(_) => Verdict::Setting,
            _ => refuse(statement),
        },
        Statement::Reset(_) => Verdict::Setting,
        Statement::Discard { .. } => Verdict::Acknowledge("DISCARD ALL"),
        Statement::Deallocate { .. } => Verdict::Acknowledge("DEALLOCATE"),
        // Transactions are no-ops over a read-only snapshot, and so are their savepoints.
        Statement::Savepoint { .. } => Verdict::Acknowledge("SAVEPOINT"),
        Statement::ReleaseSavepoint { .. } => Verdict::Acknowledge("RELEASE"),
        _ => refuse(statement),
    }
}

/// A query is allowed when nothing in it writes: no `SELECT … INTO`, no data-modifying
/// statement in its body or its common table expressions.
fn query(q: &Query, statement: &Statement) -> Verdict {
    fn reads_only(q: &Query) -> bool {
        q.with
            .as_ref()
            .is_none_or(|w| w.cte_tables.iter().all(|c| reads_only(&c.query)))
            && body_reads_only(&q.body)
    }
    fn body_reads_only(b: &SetExpr) -> bool {
        match b {
            SetExpr::Select(s) => s.into.is_none(),
            SetExpr::Query(q) => reads_only(q),
            SetExpr::SetOperation { left, right, .. } => {
                body_reads_only(left) && body_reads_only(right)
            }
            SetExpr::Values(_) | SetExpr::Table(_) => true,
            _ => false,
        }
    }
    if reads_only(q) {
        Verdict::Run
    } else {
        refuse(statement)
    }
}

fn refuse(statement: &Statement) -> Verdict {
    Verdict::Refuse(format!(
        "quotaflow serve is read-only: {} statements are refused (allowed: {ALLOWED})",
        kind(statement)
    ))
}

fn refuse_setting(variable: &str) -> Verdict {
    Verdict::Refuse(format!(
        "quotaflow serve is read-only: SET {variable} would change the engine every connection \
         shares, and is refused (session settings such as application_name, DateStyle, \
         TimeZone, search_path, statement_timeout are accepted)"
    ))
}

/// The statement's kind as a user wrote it: its leading keywords (`INSERT`, `CREATE TABLE`,
/// `COPY`, `SELECT … INTO`).
fn kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().collect();
    let upper = |w: &str| w.to_ascii_uppercase();
    match words.as_slice() {
        [] => "empty".into(),
        [first, second, ..]
            if matches!(
                upper(first).as_str(),
                "CREATE" | "DROP" | "ALTER" | "EXPLAIN"
            ) =>
        {
            format!("{} {}", upper(first), upper(second))
        }
        [first, ..] if matches!(statement, Statement::Query(_)) => {
            format!("data-modifying {}", upper(first))
        }
        [first, ..] => upper(first),
    }
}

/// The error a refused statement gets: SQLSTATE 25006, `read_only_sql_transaction`.
pub fn refused(message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        "25006".to_string(),
        message,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    fn of(sql: &str) -> Verdict {
        let mut statements = PostgresCompatibilityParser::new()
            .parse(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        verdict(&statements.remove(0))
    }

    #[test]
    fn queries_and_session_statements_pass() {
        for sql in [
            "SELECT * FROM attainment",
            "WITH t AS (SELECT 1 AS x) SELECT x FROM t",
            "VALUES (1), (2)",
            "EXPLAIN SELECT 1",
            "EXPLAIN ANALYZE SELECT 1",
            "SHOW TIME ZONE",
            "SHOW server_version",
            "SHOW TABLES",
            "BEGIN",
            "START TRANSACTION READ ONLY",
            "COMMIT",
            "ROLLBACK",
            "DECLARE c CURSOR FOR SELECT 1",
            "FETCH 10 FROM c",
            "CLOSE c",
        ] {
            assert_eq!(of(sql), Verdict::Run, "{sql}");
        }
        for sql in [
            "SET application_name = 'metabase'",
            "SET extra_float_digits = 3",
            "SET TIME ZONE 'Europe/Berlin'",
            "SET search_path TO public",
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET NAMES 'UTF8'",
            "RESET ALL",
        ] {
            assert_eq!(of(sql), Verdict::Setting, "{sql}");
        }
        assert_eq!(of("DISCARD ALL"), Verdict::Acknowledge("DISCARD ALL"));
        assert_eq!(of("DEALLOCATE ALL"), Verdict::Acknowledge("DEALLOCATE"));
        assert_eq!(of("SAVEPOINT s"), Verdict::Acknowledge("SAVEPOINT"));
        assert_eq!(of("RELEASE SAVEPOINT s"), Verdict::Acknowledge("RELEASE"));
        assert_eq!(of("ROLLBACK TO SAVEPOINT s"), Verdict::Run);
    }

    #[test]
    fn writes_copy_ddl_and_engine_settings_are_refused_by_kind() {
        for (sql, kind) in [
            ("INSERT INTO attainment VALUES (1)", "INSERT"),
            ("UPDATE attainment SET quota = 0", "UPDATE"),
            ("DELETE FROM attainment", "DELETE"),
            ("CREATE TABLE t (x INT)", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("DROP TABLE attainment", "DROP TABLE"),
            ("ALTER TABLE attainment ADD COLUMN x INT", "ALTER TABLE"),
            ("TRUNCATE attainment", "TRUNCATE"),
            ("COPY attainment TO STDOUT", "COPY"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("COPY attainment FROM STDIN", "COPY"),
            ("SELECT 1 INTO t", "data-modifying SELECT"),
            (
                "WITH d AS (DELETE FROM attainment RETURNING *) SELECT * FROM d",
                "data-modifying WITH",
            ),
            (
                "EXPLAIN INSERT INTO attainment VALUES (1)",
                "EXPLAIN INSERT",
            ),
            ("GRANT SELECT ON attainment TO x", "GRANT"),
        ] {
            match of(sql) {
                Verdict::Refuse(m) => assert!(
                    m.contains(&format!(": {kind} statements are refused")),
                    "{sql}: {m}"
                ),
                v => panic!("{sql} got {v:?}"),
            }
        }
        match of("SET datafusion.execution.batch_size = 1") {
            Verdict::Refuse(m) => assert!(m.contains("datafusion.execution.batch_size"), "{m}"),
            v => panic!("got {v:?}"),
        }
    }
}
