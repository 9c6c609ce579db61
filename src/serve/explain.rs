//! `/explain` on the HTTP port: a figure's explanation (`crate::explain`) as JSON
//! (`/api/explain`) and as a page (`/explain`, `assets/explain.html`, which fetches the JSON).
//! The dashboard links every figure to it.
//!
//! `GET /api/explain?table=attainment&level=rep&entity_id=rep-00042&period_type=quarter&period_start=2026-07-01&column=attainment[&history=1][&limit=20]`:
//! every parameter other than `table`, `column`, `limit` and `history` is a key of the row.
//! The served snapshot's state is restored on the first request and kept until a new snapshot
//! is served (one state in memory beside the served tables).

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Mutex;

use super::served::Served;
use crate::config::Pipeline;
use crate::error::Error;
use crate::explain::{explain_at, state_of, Request};
use crate::health::Reply;
use crate::snapshot::Location;
use crate::state::State;

/// The page, embedded in the binary.
const PAGE: &str = include_str!("../../assets/explain.html");

/// Answers `/explain` and `/api/explain`.
pub struct Explainer {
    location: Location,
    pipeline: Arc<Pipeline>,
    /// The state of the last snapshot explained.
    state: Mutex<Option<(u64, Arc<State>)>>,
}

fn json_reply(status: &'static str, body: String) -> Reply {
    (status, "application/json", body)
}

impl Explainer {
    pub fn new(location: Location, pipeline: Arc<Pipeline>) -> Explainer {
        Explainer {
            location,
            pipeline,
            state: Mutex::new(None),
        }
    }

    /// The answer to `GET path?query`, or `None` for a path of another route.
    pub async fn respond(&self, served: &Served, path: &str, query: &str) -> Option<Reply> {
        match path {
            "/explain" => Some(("200 OK", "text/html; charset=utf-8", PAGE.to_string())),
            "/api/explain" => Some(self.api(served, query).await),
            _ => None,
        }
    }

    async fn api(&self, served: &Served, query: &str) -> Reply {
        let mut req = Request {
            limit: 20,
            snapshot: Some(served.id),
            ..Request::default()
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "table" => req.table = v.into_owned(),
                "column" if !v.is_empty() => req.column = Some(v.into_owned()),
                "history" => req.history = v != "0" && v != "false",
                "limit" => match v.parse() {
                    Ok(n) => req.limit = n,
                    Err(_) => {
                        let error = format!("limit `{v}` is not a number");
                        return json_reply(
                            "400 Bad Request",
                            json!({ "error": error }).to_string(),
                        );
                    }
                },
                _ => req.keys.push((k.into_owned(), v.into_owned())),
            }
        }
        if served.id == 0 {
            let error = "no snapshot served yet";
            return json_reply(
                "503 Service Unavailable",
                json!({ "error": error }).to_string(),
            );
        }
        match self.explain(served.id, &req).await {
            Ok(e) => match serde_json::to_string(&e) {
                Ok(body) => json_reply("200 OK", body),
                Err(e) => json_reply(
                    "500 Internal Server Error",
                    json!({ "error": e.to_string() }).to_string(),
                ),
            },
            Err(e) => {
                let status = if e.exit_code() == crate::error::EXIT_USAGE {
                    "400 Bad Request"
                } else {
                    "500 Internal Server Error"
                };
                json_reply(status, json!({ "error": e.to_string() }).to_string())
            }
        }
    }

    async fn explain(&self, id: u64, req: &Request) -> Result<crate::explain::Explanation, Error> {
        let checkpoint = crate::query::checkpoint(&self.location, Some(id)).await?;
        let state = {
            let mut cached = self.state.lock().await;
            match cached.as_ref() {
                Some((at, s)) if *at == id => Arc::clone(s),
                _ => {
                    // Drop the old state before restoring the new one.
                    *cached = None;
                    let s = Arc::new(state_of(&self.location, &checkpoint).await?);
                    *cached = Some((id, Arc::clone(&s)));
                    s
                }
            }
        };
        explain_at(&self.location, &self.pipeline, &checkpoint, &state, req).await
    }
}
