//! One client connection of `quotaflow serve`: authentication (SCRAM-SHA-256, the user and
//! database names), the allow-list (`allow`), the connection's own settings, and the queries,
//! each on the snapshot current when it starts (`served`).
//!
//! Queries are answered by datafusion-postgres' `DfSessionService` of the current snapshot,
//! with the hooks of `settings` (the allow-list and the connection's settings first).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::logical_expr::LogicalPlan;
use datafusion_postgres::pgwire;
use futures::Sink;
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, SCRAM_ITERATIONS};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::watch;

use super::served::Served;
use super::Stats;

/// A statement as datafusion-postgres plans it: the SQL and, unless empty, its plan.
type DfStatement = (
    String,
    Option<(datafusion::sql::sqlparser::ast::Statement, LogicalPlan)>,
);

/// Who may connect: the user and database names, and the password's SCRAM verifier (`None`:
/// no password, loopback only, checked at start).
#[derive(Debug)]
pub struct Access {
    pub user: String,
    pub database: String,
    pub verifier: Option<Verifier>,
}

/// A password as SCRAM keeps it: salted and hashed once, at start.
#[derive(Debug)]
pub struct Verifier {
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl Verifier {
    pub fn new(password: &str) -> Verifier {
        let salt = rand::random::<[u8; 16]>().to_vec();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Verifier { salt, salted }
    }
}

#[async_trait]
impl AuthSource for Access {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let verifier = self
            .verifier
            .as_ref()
            .ok_or_else(|| fatal("28000", "this server has no password configured".into()))?;
        // An unknown user gets the same answer as a wrong password.
        if login.user() != Some(self.user.as_str()) {
            return Ok(Password::new(
                Some(verifier.salt.clone()),
                rand::random::<[u8; 32]>().to_vec(),
            ));
        }
        Ok(Password::new(
            Some(verifier.salt.clone()),
            verifier.salted.clone(),
        ))
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

/// The handlers of one connection (pgwire asks for them once per connection).
pub struct Connection {
    pub queries: Arc<Queries>,
    pub access: Arc<Access>,
    pub stats: Arc<Stats>,
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.queries)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let sasl = self.access.verifier.as_ref().map(|_| {
            let mut scram = ScramAuth::new(Arc::clone(&self.access) as Arc<dyn AuthSource>);
            scram.set_iterations(SCRAM_ITERATIONS);
            SASLAuthStartupHandler::new(Arc::new(parameters())).with_scram(scram)
        });
        Arc::new(Startup {
            sasl,
            access: Arc::clone(&self.access),
            stats: Arc::clone(&self.stats),
        })
    }
}

/// The server parameters sent at startup: PostgreSQL 16's shape, so drivers parse them.
fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "16.6".into();
    p
}

/// Checks the user and database names, then authenticates with SCRAM (or, with no password
/// configured, lets the loopback client in).
pub struct Startup {
    sasl: Option<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
    access: Arc<Access>,
    stats: Arc<Stats>,
}

struct Trust;

impl NoopStartupHandler for Trust {}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            let user = startup.parameters.get("user").map_or("", String::as_str);
            // libpq's default database is the user's name.
            let database = startup
                .parameters
                .get("database")
                .map_or(user, String::as_str);
            if database != self.access.database {
                self.stats.refused_login();
                return Err(fatal(
                    "3D000",
                    format!(
                        "database \"{database}\" does not exist (this server has one: \"{}\")",
                        self.access.database
                    ),
                ));
            }
            if self.sasl.is_none() && user != self.access.user {
                self.stats.refused_login();
                return Err(fatal(
                    "28000",
                    format!(
                        "role \"{user}\" does not exist (connect as \"{}\")",
                        self.access.user
                    ),
                ));
            }
        }
        let result = match &self.sasl {
            Some(sasl) => sasl.on_startup(client, message).await,
            None => Trust.on_startup(client, message).await,
        };
        if result.is_err() {
            self.stats.refused_login();
        }
        result
    }
}

/// The query handlers of a connection: every query on the snapshot current when it starts.
pub struct Queries {
    pub current: watch::Receiver<Arc<Served>>,
    pub stats: Arc<Stats>,
    parser: Arc<Planner>,
}

impl Queries {
    pub fn new(current: watch::Receiver<Arc<Served>>, stats: Arc<Stats>) -> Queries {
        Queries {
            parser: Arc::new(Planner {
                current: current.clone(),
            }),
            current,
            stats,
        }
    }

    fn served(&self) -> Arc<Served> {
        Arc::clone(&self.current.borrow())
    }

    fn count<T>(&self, result: PgWireResult<T>) -> PgWireResult<T> {
        self.stats.query(result.is_ok());
        result
    }
}

#[async_trait]
impl SimpleQueryHandler for Queries {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let served = self.served();
        let result = SimpleQueryHandler::do_query(&*served.service, client, query).await;
        self.count(result)
    }
}

/// Plans extended-protocol statements on the snapshot current at `Parse`.
pub struct Planner {
    current: watch::Receiver<Arc<Served>>,
}

#[async_trait]
impl QueryParser for Planner {
    type Statement = DfStatement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<DfStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let served = Arc::clone(&self.current.borrow());
        let parser = ExtendedQueryHandler::query_parser(&*served.service);
        parser.parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, stmt: &DfStatement) -> PgWireResult<Vec<Type>> {
        let served = Arc::clone(&self.current.borrow());
        ExtendedQueryHandler::query_parser(&*served.service).get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &DfStatement,
        column_format: Option<&pgwire::api::portal::Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let served = Arc::clone(&self.current.borrow());
        ExtendedQueryHandler::query_parser(&*served.service).get_result_schema(stmt, column_format)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = DfStatement;
    type QueryParser = Planner;

    fn query_parser(&self) -> Arc<Planner> {
        Arc::clone(&self.parser)
    }

    /// Runs a bound statement on the snapshot current now: a plan made on an earlier
    /// snapshot that reads a table which changed since is planned again first.
    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<DfStatement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = DfStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let served = self.served();
        let stale = portal
            .statement
            .statement
            .1
            .as_ref()
            .is_some_and(|(_, plan)| !served.holds_plan(plan));
        let result = if stale {
            let stored = &portal.statement;
            let parser = ExtendedQueryHandler::query_parser(&*served.service);
            match parser
                .parse_sql(&*client, &stored.statement.0, &stored.parameter_types)
                .await
            {
                Ok(Some(statement)) => {
                    let mut replanned = Portal::default();
                    replanned.name.clone_from(&portal.name);
                    replanned.statement = Arc::new(StoredStatement::new(
                        stored.id.clone(),
                        statement,
                        stored.parameter_types.clone(),
                    ));
                    replanned.parameter_format = portal.parameter_format.clone();
                    replanned.parameters.clone_from(&portal.parameters);
                    replanned.result_column_format = portal.result_column_format.clone();
                    replanned.state = Arc::clone(&portal.state);
                    ExtendedQueryHandler::do_query(&*served.service, client, &replanned, max_rows)
                        .await
                }
                Ok(None) => Ok(Response::EmptyQuery),
                Err(e) => Err(e),
            }
        } else {
            ExtendedQueryHandler::do_query(&*served.service, client, portal, max_rows).await
        };
        self.count(result)
    }
}
