//! Hostile input to every topic, end to end on librdkafka's mock cluster: each bad message
//! goes to the dead letters with its precise reason and is counted, and the good events around
//! it give exactly the tables they give alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::common::{canonical, EventType};
use crate::harness::{once, produce_payloads, run_in_process};
use crate::pipeline_mock::{batch_tables, cluster, latest_tables};

/// (topic, payload bytes, the reason expected, or None for a message that is not a dead letter).
type Case = (String, Vec<u8>, Option<&'static str>);

fn with(base: &Value, field: &str, v: Value) -> Vec<u8> {
    let mut m = base.clone();
    m[field] = v;
    m.to_string().into_bytes()
}

fn hostile(p: &quotaflow::config::Pipeline, first: &BTreeMap<EventType, Value>) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let far_future = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    for (t, base) in first {
        let topic = p.source.topics[t].clone();
        let valid = base.to_string();
        let mut add = |payload: Vec<u8>, reason: Option<&'static str>| {
            cases.push((topic.clone(), payload, reason))
        };
        add(b"{not json".to_vec(), Some("invalid_json"));
        add(
            valid.as_bytes()[..valid.len() / 2].to_vec(),
            Some("invalid_json"),
        );
        add(Vec::new(), Some("invalid_json"));
        add(vec![0xff, 0xfe, b'{', 0x80], Some("invalid_json"));
        add(
            format!("{{\"x\": {}}}", "9".repeat(20_000)).into_bytes(),
            Some("too_large"),
        );
        add(
            format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
            Some("wrong_type"),
        );
        add(b"[1, 2]".to_vec(), Some("wrong_type"));
        add(
            valid
                .replacen("\"occurred_at\"", "\"ignored\": NaN, \"occurred_at\"", 1)
                .into_bytes(),
            Some("invalid_json"),
        );
        add(
            valid
                .replacen(
                    "\"occurred_at\"",
                    "\"ignored\": Infinity, \"occurred_at\"",
                    1,
                )
                .into_bytes(),
            Some("invalid_json"),
        );
        add(
            with(base, "occurred_at", json!("9999-12-31T00:00:00Z")),
            Some("out_of_range"),
        );
        add(
            with(base, "occurred_at", json!(far_future)),
            Some("out_of_range"),
        );
        add(
            with(base, "occurred_at", json!(1_767_225_600)),
            Some("wrong_type"),
        );
    }
    let deal = &first[&EventType::Deal];
    let deals = p.source.topics[&EventType::Deal].clone();
    for (payload, reason) in [
        (with(deal, "amount", json!(48000.5)), "wrong_type"),
        (
            with(deal, "amount", json!(format!("{}.00", "1".repeat(40)))),
            "out_of_range",
        ),
        (with(deal, "amount", json!("-5.00")), "negative_amount"),
        (with(deal, "close_date", json!("2026-02-30")), "wrong_type"),
        (with(deal, "stage", json!("won")), "unknown_enum"),
        (with(deal, "currency", json!("usd")), "bad_currency"),
        (with(deal, "deal_id", json!("")), "empty_id"),
        (with(deal, "version", json!(0)), "out_of_range"),
        (with(deal, "rep_id", Value::Null), "missing_field"),
    ] {
        cases.push((deals.clone(), payload, Some(reason)));
    }
    // Not dead letters: a repeated (entity, version) is a duplicate; an old version arriving
    // after a newer one is folded in as history.
    cases.push((deals.clone(), deal.to_string().into_bytes(), None));
    cases
}

/// The pipeline edit these tests run with: messages above 16 KiB are too large.
pub fn small_messages(t: String) -> String {
    t.replace("max_message_bytes = 1048576", "max_message_bytes = 16384")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_dead_letters_with_their_reason_and_change_nothing_else() {
    let p = crate::common::pipeline_with(small_messages);
    let c = cluster(&p);
    hostile_run(&c.bootstrap_servers(), &p).await;
}

/// Produces the hostile cases spread through a generated stream to `brokers`, runs `--once`
/// in process, and checks reasons, counts and the tables of the good events.
pub async fn hostile_run(brokers: &str, p: &Arc<quotaflow::config::Pipeline>) {
    let brokers = brokers.to_string();
    let mut good = Vec::new();
    quotaflow::generate::generate(&crate::pipeline_mock::spec(5), |g| {
        good.push((p.source.topics[&g.event_type].clone(), g.key, g.value))
    });
    let mut first: BTreeMap<EventType, Value> = BTreeMap::new();
    for (topic, _, v) in &good {
        let t = p.source.event_type_of(topic).unwrap();
        first
            .entry(t)
            .or_insert_with(|| serde_json::from_str(v).unwrap());
    }
    let cases = hostile(p, &first);
    // Bad messages spread through the good ones.
    let mut stream: Vec<(String, Vec<u8>)> = Vec::new();
    let every = good.len() / (cases.len() + 1);
    let mut bad = cases.iter();
    for (i, (topic, _, v)) in good.iter().enumerate() {
        stream.push((topic.clone(), v.clone().into_bytes()));
        if i % every == every - 1 {
            if let Some((t, payload, _)) = bad.next() {
                stream.push((t.clone(), payload.clone()));
            }
        }
    }
    for (t, payload, _) in bad {
        stream.push((t.clone(), payload.clone()));
    }
    produce_payloads(
        &brokers,
        stream
            .iter()
            .map(|(t, payload)| (t.as_str(), None, payload.as_slice())),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let report = run_in_process(p, once(&brokers, out)).await;
    assert_eq!(report.messages, stream.len() as u64, "every message read");

    let tables = canonical(&latest_tables(out).await);
    let rows = |name: &str| -> Vec<Value> {
        tables[name]
            .iter()
            .map(|r| serde_json::from_str(r).unwrap())
            .collect()
    };
    // Each dead letter with the reason expected for it, and nothing else.
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (topic, _, reason) in &cases {
        if let Some(r) = reason {
            *expected.entry((topic.clone(), r.to_string())).or_default() += 1;
        }
    }
    let mut got: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in rows("dead_letters") {
        *got.entry((
            r["topic"].as_str().unwrap().to_string(),
            r["reason"].as_str().unwrap().to_string(),
        ))
        .or_default() += 1;
        assert!(!r["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(got, expected);
    // And counted.
    for r in rows("data_quality") {
        let key = (
            r["topic"].as_str().unwrap().to_string(),
            r["reason"].as_str().unwrap().to_string(),
        );
        if let Some(n) = expected.get(&key) {
            assert_eq!(r["count"].as_u64().unwrap(), *n, "{key:?}");
        }
    }
    let duplicates = rows("data_quality")
        .into_iter()
        .find(|r| {
            r["topic"] == p.source.topics[&EventType::Deal].as_str() && r["reason"] == "duplicate"
        })
        .map_or(0, |r| r["count"].as_u64().unwrap());
    assert!(duplicates >= 1, "the repeated deal version is a duplicate");

    // The good events give the same tables as they do alone.
    let alone = canonical(&batch_tables(p, &good).await);
    let strip = |mut t: BTreeMap<String, Vec<String>>| {
        for name in [
            "dead_letters",
            "data_quality",
            "alerts",
            "alert_deliveries",
            "snapshots",
        ] {
            t.remove(name);
        }
        t
    };
    assert_eq!(strip(tables.clone()), strip(alone));
}
