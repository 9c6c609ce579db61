//! A figure across the retained snapshots (time travel): its published value at each, and the
//! messages about its inputs that arrived between one and the next — read off the offsets
//! each checkpoint records and the offsets the state keeps for every message received about
//! an entity, so "why did my attainment drop since yesterday" names the Kafka messages.

use std::collections::BTreeMap;

use super::{day_text, published_row, Ctx, Explanation, Input, Moment};
use crate::error::Error;
use crate::event::schema::EventType;
use crate::snapshot::{Checkpoint, Location};
use crate::state::Received;

type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Whether the message at (`topic`, `partition`, `offset`) was read after `before` and by
/// `now` (the next offsets two checkpoints record).
fn between(before: &Offsets, now: &Offsets, topic: &str, partition: i32, offset: i64) -> bool {
    let next = |o: &Offsets| {
        o.get(topic)
            .and_then(|p| p.get(&partition))
            .copied()
            .unwrap_or(0)
    };
    next(before) <= offset && offset < next(now)
}

/// The entities an explanation's row is about: the inputs it names, and every deal and quota
/// record of the rep it is about (a deal that left the row still explains why it changed).
fn candidates(ctx: &Ctx<'_>, e: &Explanation) -> Vec<Input> {
    let named = |kind: &str| -> Vec<&str> {
        e.inputs
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.key.as_str())
            .collect()
    };
    let key = |k: &str| e.keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let rep = match key("level") {
        Some("rep") => key("entity_id"),
        Some(_) => None,
        None => key("rep_id"),
    };
    let s = ctx.state;
    let mut out = Vec::new();
    let mut push = |kind: &'static str, topic: &str, key: String, rs: &[Received]| {
        out.extend(
            rs.iter()
                .map(|r| Input::received(kind, topic, key.clone(), r)),
        );
    };
    let deals = named("deal");
    for (id, v) in &s.deals {
        if deals.contains(&id.as_str()) || rep == Some(v.latest.rep_id.as_str()) {
            push(
                "deal",
                ctx.topic(EventType::Deal),
                id.to_string(),
                &v.received,
            );
        }
    }
    let quotas = named("quota");
    for ((r, d), v) in &s.quotas {
        let k = format!("{r} {}", day_text(*d));
        if quotas.contains(&k.as_str()) || rep == Some(r.as_str()) {
            push("quota", ctx.topic(EventType::Quota), k, &v.received);
        }
    }
    let fx = named("fx_rate");
    for ((c, d), v) in &s.fx {
        let k = format!("{c} {}", day_text(*d));
        if fx.contains(&k.as_str()) {
            push("fx_rate", ctx.topic(EventType::FxRate), k, &v.received);
        }
    }
    // Rep-days: their ranges, by the last offset read into them.
    out.extend(
        e.inputs
            .iter()
            .filter(|i| i.kind == "activities" || i.kind == "dead_letter")
            .cloned()
            .map(|mut i| {
                if let Some(last) = i.last_offset {
                    i.offset = Some(last);
                }
                i
            }),
    );
    out
}

/// The explanation's figure at every retained snapshot up to its own, oldest first.
pub(super) async fn moments(
    location: &Location,
    ctx: &Ctx<'_>,
    at: &Checkpoint,
    e: &Explanation,
    limit: usize,
) -> Result<Vec<Moment>, Error> {
    let candidates = candidates(ctx, e);
    let mut out = Vec::new();
    let mut before: Option<Offsets> = None;
    for id in location.checkpoint_ids().await? {
        if id > at.snapshot_id {
            break;
        }
        // None: forgotten by retention while listing.
        let Some(c) = location.find_checkpoint(id).await? else {
            continue;
        };
        let row = published_row(location, &c, &e.table, &e.keys).await?;
        let value = row
            .as_ref()
            .and_then(|r| r.iter().find(|(n, _)| *n == e.column))
            .and_then(|(_, v)| v.clone());
        let mut arrived: Vec<Input> = match &before {
            Some(b) => candidates
                .iter()
                .filter(|i| match (i.partition, i.offset) {
                    (Some(p), Some(o)) => between(b, &c.offsets, &i.topic, p, o),
                    _ => false,
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        arrived.sort_by(|a, b| {
            (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset))
        });
        let arrived_total = arrived.len();
        arrived.truncate(limit);
        out.push(Moment {
            snapshot_id: c.snapshot_id,
            as_of: c.as_of.clone(),
            value,
            row_exists: row.is_some(),
            arrived,
            arrived_total,
        });
        before = Some(c.offsets);
    }
    Ok(out)
}
