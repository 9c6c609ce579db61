//! `quotaflow serve`: a PostgreSQL-wire endpoint over the tables of the snapshot `_latest`
//! names, for BI tools (Metabase, Superset, Grafana, Tableau, Power BI, Looker) and any
//! PostgreSQL client.
//!
//! - `served`: the snapshot answered from, and the follower that swaps in each new one;
//! - `session`: one connection (SCRAM, the allow-list, its own settings, its queries);
//! - `settings`: what a connection answers itself (refusals, SET/SHOW/RESET, DISCARD);
//! - `allow`: the read-only allow-list of statement kinds;
//! - `comments`: table and column comments from the output contract, in `pg_description`;
//! - `dashboard`: the page and JSON API on the HTTP port (Basic auth with the same user and
//!   password whenever either endpoint listens beyond loopback);
//! - `explain`: `/explain` and `/api/explain`, a figure's explanation (`crate::explain`) over
//!   the served snapshot's state, under the dashboard's access rules.
//!
//! Everything a flag or the pipeline file's `[serve]` sets is checked before the first socket
//! is bound: a password that is empty, no password on a non-loopback address, or TLS files
//! that cannot be loaded stop the server at start, naming the file or the flag.

pub mod allow;
mod comments;
mod dashboard;
mod explain;
mod served;
mod session;
mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datafusion_postgres::pgwire;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

pub use comments::contract as contract_comments;
use served::Served;
use session::{Access, Connection, Queries, Verifier};

use crate::error::{Error, UsageError};
use crate::snapshot::Location;

/// The environment variable holding the password (unless `--password-file` is given).
pub const PASSWORD_ENV: &str = "QUOTAFLOW_SERVE_PASSWORD";

/// What `quotaflow serve` was asked to do, from its flags over the pipeline file's `[serve]`.
#[derive(Debug, Clone)]
pub struct Options {
    pub output: String,
    pub pg: SocketAddr,
    pub http: Option<SocketAddr>,
    pub user: String,
    pub database: String,
    /// The password; `None` serves loopback only, without authentication.
    pub password: Option<String>,
    /// PEM certificate chain and private key.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub poll_interval: Duration,
    /// The pipeline the snapshots were computed with (for `/explain`).
    pub pipeline: Arc<crate::config::Pipeline>,
}

/// The password from `file` (its first line) or else from [`PASSWORD_ENV`] (`env`); an empty
/// one is refused, naming where it came from.
pub fn password(file: Option<&Path>, env: Option<String>) -> Result<Option<String>, Error> {
    let (password, from) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })?;
            let first = text.lines().next().unwrap_or("").to_string();
            (Some(first), path.display().to_string())
        }
        None => (env, PASSWORD_ENV.to_string()),
    };
    match password {
        Some(p) if p.is_empty() => Err(UsageError::Flag {
            flag: "password",
            message: format!("{from}: the password is empty; set a non-empty one"),
        }
        .into()),
        p => Ok(p),
    }
}

impl Options {
    /// Refuses what must not start: no password on anything but loopback.
    pub fn check(&self) -> Result<(), Error> {
        if let Some(http) = self
            .http
            .filter(|h| self.password.is_none() && !h.ip().is_loopback())
        {
            return Err(UsageError::Flag {
                flag: "--http",
                message: format!(
                    "{http}: the dashboard shows commissions; without a password it listens on \
                     loopback only; set {PASSWORD_ENV} or --password-file, or listen on 127.0.0.1"
                ),
            }
            .into());
        }
        if self.password.is_none() && !self.pg.ip().is_loopback() {
            return Err(UsageError::Flag {
                flag: "--pg",
                message: format!(
                    "{}: without a password the server listens on loopback only; set \
                     {PASSWORD_ENV} or --password-file, or listen on 127.0.0.1",
                    self.pg
                ),
            }
            .into());
        }
        Ok(())
    }
}

/// Loads the TLS certificate chain and key: any failure stops the start, naming the file.
fn tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, Error> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Io { path, source }
    };
    let bad = |path: &Path, what: &str| Error::Io {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string()),
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).map_err(io(cert))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .map_err(io(cert))?;
    if certs.is_empty() {
        return Err(bad(cert, "no PEM certificate in the file (serve.tls_cert)"));
    }
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).map_err(io(key))?,
    ))
    .map_err(io(key))?
    .ok_or_else(|| bad(key, "no PEM private key in the file (serve.tls_key)"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|e| {
            bad(
                key,
                &format!("the certificate and key do not make a TLS setup: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What the server counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    logins_refused: AtomicU64,
    queries: AtomicU64,
    query_errors: AtomicU64,
    snapshot_errors: AtomicU64,
}

impl Stats {
    fn query(&self, ok: bool) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.query_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn refused_login(&self) {
        self.logins_refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a connection open while it lives.
struct Open(Arc<Stats>);

impl Open {
    fn new(stats: &Arc<Stats>) -> Open {
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        stats.connections_total.fetch_add(1, Ordering::Relaxed);
        Open(Arc::clone(stats))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves until `shutdown` resolves. Checks the options and loads TLS and the first snapshot
/// before binding; prints one line on stderr once both endpoints listen.
pub async fn serve(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    opts.check()?;
    let location = Location::parse(&opts.output)?;
    let acceptor = match &opts.tls {
        Some((cert, key)) => Some(tls(cert, key)?),
        None => None,
    };
    let access = Arc::new(Access {
        user: opts.user.clone(),
        database: opts.database.clone(),
        verifier: opts.password.as_deref().map(Verifier::new),
    });
    let first = match location.latest().await? {
        Some(latest) => {
            let c = crate::query::checkpoint(&location, Some(latest.snapshot_id)).await?;
            Served::load(&location, &c, None, &opts.database).await?
        }
        None => {
            tracing::warn!(output = %location.url, "no snapshot yet: serving no tables until the pipeline writes one");
            Served::none(&opts.database).await?
        }
    };
    let (tx, rx) = watch::channel(Arc::new(first));
    let stats = Arc::new(Stats::default());

    let listener = TcpListener::bind(opts.pg)
        .await
        .map_err(|source| Error::Io {
            path: format!("--pg {}", opts.pg),
            source,
        })?;
    let pg = listener.local_addr().map_err(|source| Error::Io {
        path: format!("--pg {}", opts.pg),
        source,
    })?;
    // The dashboard asks for the same credentials as the PostgreSQL endpoint whenever either
    // listens beyond loopback.
    let beyond_loopback =
        !opts.pg.ip().is_loopback() || opts.http.is_some_and(|h| !h.ip().is_loopback());
    let guard = match (&opts.password, beyond_loopback) {
        (Some(p), true) => Some(Arc::new((opts.user.clone(), p.clone()))),
        _ => None,
    };
    let explainer = Arc::new(explain::Explainer::new(
        location.clone(),
        Arc::clone(&opts.pipeline),
    ));
    let http = match opts.http {
        Some(addr) => {
            let (rx, stats) = (rx.clone(), Arc::clone(&stats));
            let (bound, task) = crate::health::http(addr, move |req| {
                let served = Arc::clone(&rx.borrow());
                let (stats, guard) = (Arc::clone(&stats), guard.clone());
                let explainer = Arc::clone(&explainer);
                Box::pin(
                    async move { answer(req, served, &stats, guard.as_deref(), &explainer).await },
                ) as futures::future::BoxFuture<'static, crate::health::Reply>
            })
            .await
            .map_err(|source| Error::Io {
                path: format!("--http {addr}"),
                source,
            })?;
            Some((bound, task))
        }
        None => None,
    };
    let follower = {
        let stats = Arc::clone(&stats);
        tokio::spawn(served::follow(
            location,
            tx,
            opts.poll_interval,
            move || {
                stats.snapshot_errors.fetch_add(1, Ordering::Relaxed);
            },
        ))
    };
    eprintln!(
        "quotaflow serve: PostgreSQL on {pg} (user {}, database {}, {}, {}), HTTP on {}; snapshot {}",
        opts.user,
        opts.database,
        if access.verifier.is_some() { "SCRAM-SHA-256" } else { "no password" },
        if acceptor.is_some() { "TLS" } else { "no TLS" },
        http.as_ref().map_or("off".to_string(), |(a, _)| format!("{a} (dashboard http://{a}/)")),
        rx.borrow().id,
    );
    let queries = Arc::new(Queries::new(rx, Arc::clone(&stats)));
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let connection = Arc::new(Connection {
            queries: Arc::clone(&queries),
            access: Arc::clone(&access),
            stats: Arc::clone(&stats),
        });
        let acceptor = acceptor.clone();
        let open = Open::new(&stats);
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = pgwire::tokio::process_socket(socket, acceptor, connection).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    follower.abort();
    if let Some((_, task)) = http {
        task.abort();
    }
    Ok(())
}

/// Answers the HTTP port: `/healthz` and `/metrics` to anyone, the dashboard to whoever
/// `guard` lets in.
async fn answer(
    req: crate::health::Request,
    served: Arc<Served>,
    stats: &Stats,
    guard: Option<&(String, String)>,
    explainer: &explain::Explainer,
) -> crate::health::Reply {
    if matches!(req.path.as_str(), "/healthz" | "/metrics") {
        return respond(&served, stats, &req.path);
    }
    if let Some((user, password)) = guard {
        if !basic_auth_matches(req.authorization.as_deref(), user, password) {
            stats.refused_login();
            return (
                "401 Unauthorized",
                "text/plain",
                "log in with the user and password of quotaflow serve\n".into(),
            );
        }
    }
    if let Some(reply) = explainer.respond(&served, &req.path, &req.query).await {
        return reply;
    }
    match dashboard::respond(served, &req.path, &req.query).await {
        Some(reply) => reply,
        None => (
            "404 Not Found",
            "text/plain",
            "try /, /api/overview, /explain, /healthz or /metrics\n".into(),
        ),
    }
}

/// Whether an `Authorization: Basic …` header carries `user:password` (compared in constant
/// time).
fn basic_auth_matches(header: Option<&str>, user: &str, password: &str) -> bool {
    use base64::Engine as _;
    let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{user}:{password}");
    decoded.len() == expected.len()
        && decoded
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// `/healthz` and `/metrics` of the server.
fn respond(served: &Served, stats: &Stats, path: &str) -> crate::health::Reply {
    let age = served_age(served);
    match path {
        "/healthz" => {
            let healthy = served.id > 0;
            let body = serde_json::json!({
                "status": if healthy { "ok" } else { "no snapshot yet" },
                "snapshot_id": served.id,
                "snapshot_as_of": served.as_of,
                "snapshot_written_at": served.written_at,
                "snapshot_age_seconds": age,
                "tables": served.table_count(),
                "connections": stats.connections_open.load(Ordering::Relaxed),
            })
            .to_string();
            crate::health::health_reply(healthy, body)
        }
        "/metrics" => {
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let families: [(&str, &str, &str, String); 9] = [
                (
                    "quotaflow_serve_connections",
                    "gauge",
                    "Client connections open now.",
                    stats.connections_open.load(Ordering::Relaxed).to_string(),
                ),
                (
                    "quotaflow_serve_connections_total",
                    "counter",
                    "Client connections accepted.",
                    n(&stats.connections_total).to_string(),
                ),
                (
                    "quotaflow_serve_logins_refused_total",
                    "counter",
                    "Connections refused at login (wrong password, user or database).",
                    n(&stats.logins_refused).to_string(),
                ),
                (
                    "quotaflow_serve_queries_total",
                    "counter",
                    "Queries (simple) and executions (extended protocol) answered.",
                    n(&stats.queries).to_string(),
                ),
                (
                    "quotaflow_serve_query_errors_total",
                    "counter",
                    "Queries that failed or were refused.",
                    n(&stats.query_errors).to_string(),
                ),
                (
                    "quotaflow_serve_snapshot_id",
                    "gauge",
                    "The snapshot queries start on now (0: none yet).",
                    served.id.to_string(),
                ),
                (
                    "quotaflow_serve_snapshot_age_seconds",
                    "gauge",
                    "Seconds since the served snapshot was written.",
                    age.map_or("NaN".to_string(), |a| format!("{a:.3}")),
                ),
                (
                    "quotaflow_serve_snapshot_load_errors_total",
                    "counter",
                    "Newer snapshots that could not be loaded (tried again at the next poll).",
                    n(&stats.snapshot_errors).to_string(),
                ),
                (
                    "quotaflow_serve_tables",
                    "gauge",
                    "Tables of the served snapshot.",
                    served.table_count().to_string(),
                ),
            ];
            let mut out = String::new();
            for (name, kind, help, value) in families {
                out.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
                ));
            }
            ("200 OK", "text/plain; version=0.0.4", out)
        }
        _ => (
            "404 Not Found",
            "text/plain",
            "try /healthz or /metrics\n".into(),
        ),
    }
}

/// Seconds since the served snapshot was written, by the wall clock.
pub(crate) fn served_age(served: &Served) -> Option<f64> {
    let written = chrono::DateTime::parse_from_rfc3339(&served.written_at).ok()?;
    let age = chrono::Utc::now().signed_duration_since(written);
    Some(age.num_milliseconds() as f64 / 1000.0)
}
