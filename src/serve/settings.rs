//! The statements a connection answers itself, before DataFusion sees them: the allow-list's
//! refusals, and `SET`/`RESET`/`SHOW` of the connection's own settings, kept in its pgwire
//! metadata (datafusion-postgres' stock `SET` hook writes some into the engine every
//! connection shares, so it is not used), `DISCARD`, `DEALLOCATE` and savepoints.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Ident, Set, Statement};
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire;
use datafusion_postgres::QueryHook;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::{ClientInfo, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::PgWireBackendMessage;

use super::allow::{refused, verdict, Verdict};

/// The hooks every snapshot's `DfSessionService` runs, in order: the allow-list and the
/// connection's settings first, then datafusion-postgres' cursors and transaction no-ops.
pub fn hooks() -> Vec<Arc<dyn QueryHook>> {
    vec![
        Arc::new(ReadOnly),
        Arc::new(CursorStatementHook),
        Arc::new(TransactionStatementHook),
    ]
}

/// The allow-list, `SET`/`RESET`/`SHOW` of the connection's settings, `DISCARD` and
/// `DEALLOCATE`.
#[derive(Debug)]
pub struct ReadOnly;

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        respond(statement, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let empty = |fields: Vec<Field>| {
            DFSchema::try_from(Schema::new(fields))
                .map(|schema| {
                    LogicalPlan::EmptyRelation(EmptyRelation {
                        produce_one_row: true,
                        schema: Arc::new(schema),
                    })
                })
                .map_err(|e| PgWireError::ApiError(Box::new(e)))
        };
        if let Statement::ShowVariable { variable } = statement {
            return Some(empty(vec![Field::new(
                show_name(variable),
                DataType::Utf8,
                false,
            )]));
        }
        match verdict(statement) {
            Verdict::Run => None,
            Verdict::Setting | Verdict::Acknowledge(_) => Some(empty(vec![])),
            Verdict::Refuse(m) => Some(Err(refused(m))),
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        respond(statement, client).await
    }
}

/// What [`ReadOnly`] answers, or `None` to let the statement run.
async fn respond(
    statement: &Statement,
    client: &mut dyn HookClient,
) -> Option<PgWireResult<Response>> {
    if let Statement::ShowVariable { variable } = statement {
        return Some(show(client, variable));
    }
    match verdict(statement) {
        Verdict::Run => None,
        Verdict::Refuse(m) => Some(Err(refused(m))),
        Verdict::Acknowledge(tag) => {
            if matches!(statement, Statement::Discard { .. }) {
                reset(client, None);
            }
            Some(Ok(Response::Execution(Tag::new(tag))))
        }
        Verdict::Setting => Some(set(client, statement).await),
    }
}

/// The settings a client may read with `SHOW` without having set them: PostgreSQL 16's
/// defaults, as this server behaves.
const DEFAULTS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("search_path", "\"$user\", public"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
    ("max_identifier_length", "63"),
    ("statement_timeout", "0"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("is_superuser", "off"),
];

/// Variables whose change PostgreSQL reports to the client (`ParameterStatus`).
const REPORTED: &[(&str, &str)] = &[
    ("application_name", "application_name"),
    ("client_encoding", "client_encoding"),
    ("datestyle", "DateStyle"),
    ("intervalstyle", "IntervalStyle"),
    ("timezone", "TimeZone"),
];

/// The lower-case name `SHOW` and `SET` use for `variable` (`TIME ZONE` is `timezone`,
/// `TRANSACTION ISOLATION LEVEL` is `transaction_isolation`).
fn show_name(variable: &[Ident]) -> String {
    let words: Vec<String> = variable
        .iter()
        .map(|v| v.value.to_ascii_lowercase())
        .collect();
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["time", "zone"] => "timezone".into(),
        ["transaction", "isolation", "level"] => "transaction_isolation".into(),
        _ => words.join("."),
    }
}

fn setting(client: &dyn HookClient, name: &str) -> Option<String> {
    client
        .metadata()
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .or_else(|| {
            DEFAULTS
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_string())
        })
}

fn show(client: &dyn HookClient, variable: &[Ident]) -> PgWireResult<Response> {
    let name = show_name(variable);
    let value = match name.as_str() {
        "all" => {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                "0A000".into(),
                "SHOW ALL is not supported: SHOW one setting".into(),
            ))))
        }
        "session_authorization" => setting(client, "user"),
        _ => setting(client, &name),
    }
    .ok_or_else(|| {
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "42704".into(),
            format!("unrecognized configuration parameter \"{name}\""),
        )))
    })?;
    let fields = Arc::new(vec![FieldInfo::new(
        name,
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )]);
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(Response::Query(QueryResponse::new(
        fields,
        Box::pin(futures::stream::once(async move { Ok(row) })),
    )))
}

/// Keeps a `SET` (or `RESET`) in the connection's metadata, and reports it like PostgreSQL.
async fn set(client: &mut dyn HookClient, statement: &Statement) -> PgWireResult<Response> {
    let assigned = match statement {
        Statement::Set(Set::SingleAssignment {
            variable, values, ..
        }) => Some((
            variable.to_string().to_ascii_lowercase(),
            values
                .iter()
                .map(|v| unquote(&v.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        )),
        Statement::Set(Set::SetTimeZone { value, .. }) => {
            Some(("timezone".into(), unquote(&value.to_string())))
        }
        Statement::Set(Set::SetNames { charset_name, .. }) => {
            Some(("client_encoding".into(), unquote(&charset_name.to_string())))
        }
        Statement::Reset(r) => {
            let name = r.to_string().to_ascii_lowercase();
            let name = name.trim_start_matches("reset").trim();
            reset(client, (name != "all").then_some(name));
            return Ok(Response::Execution(Tag::new("RESET")));
        }
        // SET TRANSACTION …, SET SESSION CHARACTERISTICS …: every transaction here is a
        // read-only snapshot already.
        _ => None,
    };
    if let Some((name, value)) = assigned {
        let value = if value.eq_ignore_ascii_case("default") {
            DEFAULTS
                .iter()
                .find(|(k, _)| *k == name)
                .map_or(String::new(), |(_, v)| (*v).to_string())
        } else {
            value
        };
        if name == "statement_timeout" {
            datafusion_postgres_timeout(client, &value);
        }
        client.metadata_mut().insert(name.clone(), value.clone());
        if let Some((_, reported)) = REPORTED.iter().find(|(k, _)| *k == name) {
            client
                .send_message(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                    (*reported).to_string(),
                    value,
                )))
                .await?;
        }
    }
    Ok(Response::Execution(Tag::new("SET")))
}

/// datafusion-postgres reads the statement timeout, in milliseconds, from this key.
fn datafusion_postgres_timeout(client: &mut dyn HookClient, value: &str) {
    let v = value.trim();
    let ms = if let Some(n) = v.strip_suffix("ms") {
        n.trim().parse::<u64>().ok()
    } else if let Some(n) = v.strip_suffix("min") {
        n.trim().parse::<u64>().ok().map(|m| m * 60_000)
    } else if let Some(n) = v.strip_suffix('s') {
        n.trim().parse::<u64>().ok().map(|s| s * 1000)
    } else {
        v.parse::<u64>().ok()
    };
    match ms {
        Some(ms) if ms > 0 => {
            client
                .metadata_mut()
                .insert("statement_timeout_ms".into(), ms.to_string());
        }
        _ => {
            client.metadata_mut().remove("statement_timeout_ms");
        }
    }
}

/// Forgets the connection's setting `name` (every one with `None`), keeping who it is.
fn reset(client: &mut dyn HookClient, name: Option<&str>) {
    let keep = ["user", "database"];
    client.metadata_mut().retain(|k, _| {
        keep.contains(&k.as_str()) || name.is_some_and(|n| !k.eq_ignore_ascii_case(n))
    });
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| v.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
        .unwrap_or(v)
        .to_string()
}
