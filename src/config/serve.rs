//! `[serve]` of the pipeline file: the defaults of `quotaflow serve`, and their checks.

use super::raw::RawServe;
use super::validate::{duration, http_bind, invalid, Checked};

/// `[serve]`: the defaults of `quotaflow serve` (its flags override them).
#[derive(Debug, Clone, PartialEq)]
pub struct Serve {
    /// The PostgreSQL-wire address.
    pub pg: std::net::SocketAddr,
    /// `/healthz` and `/metrics` of the server; `None` when "off".
    pub http: Option<std::net::SocketAddr>,
    pub user: String,
    pub database: String,
    /// A file holding the password (else `QUOTAFLOW_SERVE_PASSWORD`).
    pub password_file: Option<std::path::PathBuf>,
    /// PEM certificate chain and private key: TLS on, refused to start when unreadable.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// How often `_latest` is read for a newer snapshot.
    pub poll_interval: std::time::Duration,
}

/// `[serve]`: what `quotaflow serve` listens on and whom it lets in.
pub(super) fn validate(raw: &RawServe) -> Checked<Serve> {
    let pg = raw.pg.parse::<std::net::SocketAddr>().map_err(|_| {
        invalid(
            "serve.pg",
            format!("`{}` is not an address such as 127.0.0.1:5433", raw.pg),
        )
    })?;
    let http = http_bind("serve.http", &raw.http)?;
    for (key, name) in [("serve.user", &raw.user), ("serve.database", &raw.database)] {
        if name.is_empty() || name.len() > 63 || name.chars().any(char::is_control) {
            return Err(invalid(
                key,
                format!("`{name}` must be 1 to 63 printable characters"),
            ));
        }
    }
    let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
    let (tls_cert, tls_key) = (path(&raw.tls_cert), path(&raw.tls_key));
    if tls_cert.is_some() != tls_key.is_some() {
        let missing = if tls_cert.is_none() {
            "serve.tls_cert"
        } else {
            "serve.tls_key"
        };
        return Err(invalid(
            missing,
            "TLS needs both serve.tls_cert and serve.tls_key",
        ));
    }
    let poll_interval = duration("serve.poll_interval", &raw.poll_interval)?;
    if poll_interval.is_zero() {
        return Err(invalid("serve.poll_interval", "must be longer than 0"));
    }
    Ok(Serve {
        pg,
        http,
        user: raw.user.clone(),
        database: raw.database.clone(),
        password_file: path(&raw.password_file),
        tls_cert,
        tls_key,
        poll_interval,
    })
}
