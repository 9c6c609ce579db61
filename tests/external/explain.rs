//! `quotaflow explain` against the real broker: the topic, partition and offset it names for
//! every input hold the message it quotes (read back from the broker), and a rep-day's offset
//! range holds exactly the activities it counts.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;
use rust_decimal::Decimal;
use serde_json::Value;

use super::{bin, brokers, pipeline_file, run_once, tag};
use crate::common::Cluster;
use crate::harness::{produce, renamed, PipelineFile};

/// The messages of `topic`/`partition` at offsets `from..=to`, as (offset, JSON).
fn read(topic: &str, partition: i32, from: i64, to: i64) -> Vec<(i64, Value)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("explain-{topic}"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    // From the start: a fetch at an offset inside a record batch is not answered by every
    // broker.
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while out.last().is_none_or(|(o, _)| *o < to) {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic}[{partition}] {from}..={to}"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) if m.offset() < from => {}
            Some(Ok(m)) => out.push((
                m.offset(),
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or(Value::Null),
            )),
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

fn explain(out: &str, file: &std::path::Path, args: &[&str]) -> Value {
    let o = std::process::Command::new(bin())
        .arg("explain")
        .args(args)
        .args(["--output", out, "--pipeline"])
        .arg(file)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reproduced"], true, "{v:#}");
    v
}

fn dec(v: &Value) -> Decimal {
    v.as_str().unwrap().parse().unwrap()
}

/// Every input of `e` with an offset, checked against the message the broker holds there.
fn check_inputs(e: &Value) -> usize {
    let mut checked = 0;
    for i in e["inputs"].as_array().unwrap() {
        let (topic, f) = (i["topic"].as_str().unwrap(), &i["fields"]);
        let (Some(p), Some(o)) = (i["partition"].as_i64(), i["offset"].as_i64()) else {
            continue;
        };
        let last = i["last_offset"].as_i64().unwrap_or(o);
        let msgs = read(topic, p as i32, o, last);
        let at = |off: i64| &msgs.iter().find(|(x, _)| *x == off).unwrap().1;
        let m = at(o);
        match i["kind"].as_str().unwrap() {
            "deal" => {
                assert_eq!(m["deal_id"], i["key"], "{i:#}\n{m:#}");
                assert_eq!(m["version"], i["version"], "{i:#}\n{m:#}");
                if let Some(a) = f.get("amount") {
                    assert_eq!(dec(&m["amount"]), dec(a), "{i:#}\n{m:#}");
                    assert_eq!(m["currency"], f["currency"]);
                    assert_eq!(m["close_date"], f["close_date"]);
                }
            }
            "quota" => {
                assert_eq!(m["rep_id"], f["rep_id"], "{i:#}\n{m:#}");
                assert_eq!(m["period_start"], f["period_start"]);
                assert_eq!(dec(&m["amount"]), dec(&f["amount"]));
                assert_eq!(m["version"], i["version"]);
            }
            "fx_rate" => {
                assert_eq!(m["effective_date"], f["effective_date"], "{i:#}\n{m:#}");
                assert_eq!(dec(&m["rate_to_corporate"]), dec(&f["rate_to_corporate"]));
                assert_eq!(m["version"], i["version"]);
            }
            "activities" => {
                // First and last offsets are the rep-day's own activities; the range holds
                // every one it counts (each event_id once).
                let rep = f["rep_id"].as_str().unwrap();
                let day = f["day"].as_str().unwrap();
                let ours = |v: &Value| {
                    v["rep_id"] == rep && v["occurred_at"].as_str().unwrap().starts_with(day)
                };
                assert!(ours(m) && ours(at(last)), "{i:#}\n{m:#}");
                let mut ids: Vec<&str> = msgs
                    .iter()
                    .filter(|(_, v)| ours(v))
                    .map(|(_, v)| v["event_id"].as_str().unwrap())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                checked += ids.len();
            }
            k => panic!("unexpected input kind {k}"),
        }
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn the_offsets_explain_names_hold_the_messages_it_quotes_on_the_real_broker() {
    let dir = tempfile::tempdir().unwrap();
    let (file, p) = pipeline_file(dir.path(), &tag("explain"), PipelineFile::default());
    let default = quotaflow::config::Pipeline::builtin().unwrap();
    let (msgs, moved, resent) = crate::explain::revised_messages(&default, 13);
    let msgs = renamed(&p, msgs);
    let topics: Vec<&str> = p.source.topics.values().map(String::as_str).collect();
    Cluster::new(&brokers(), &p.source.kafka)
        .ensure_topics(&topics, 3)
        .await
        .unwrap();
    produce(&brokers(), 10_000, &msgs);
    let out = dir.path().join("out").display().to_string();
    run_once(&file, &out);

    // A rep-quarter with won deals in a currency other than the corporate one.
    let rows = crate::explain::sql(
        &out,
        None,
        "SELECT a.entity_id AS rep, CAST(a.period_start AS VARCHAR) AS ps FROM attainment a \
         JOIN deals_current d ON d.rep_id = a.entity_id AND d.is_won AND d.currency <> 'USD' \
         AND d.close_date BETWEEN a.period_start AND a.period_end \
         WHERE a.level = 'rep' AND a.period_type = 'quarter' AND a.quota IS NOT NULL \
         ORDER BY 1, 2 LIMIT 1",
    )
    .await;
    let (rep, ps) = (
        rows[0]["rep"].as_str().unwrap(),
        rows[0]["ps"].as_str().unwrap(),
    );
    let keys = [
        "--key".to_string(),
        "level=rep".into(),
        "--key".into(),
        format!("entity_id={rep}"),
        "--key".into(),
        "period_type=quarter".into(),
        "--key".into(),
        format!("period_start={ps}"),
    ];
    let mut args: Vec<&str> = vec!["attainment"];
    args.extend(keys.iter().map(String::as_str));
    let e = explain(&out, &file, &args);
    let kinds: Vec<&str> = e["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"deal") && kinds.contains(&"quota") && kinds.contains(&"fx_rate"),
        "{e:#}"
    );
    assert!(check_inputs(&e) >= 3);

    for id in [&moved, &resent] {
        let e = explain(
            &out,
            &file,
            &["deals_current", "--key", &format!("deal_id={id}")],
        );
        let arrivals: Vec<&str> = e["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["arrival"].as_str())
            .collect();
        assert!(
            arrivals.contains(&"superseded") || arrivals.contains(&"duplicate"),
            "{e:#}"
        );
        check_inputs(&e);
    }

    let day = crate::explain::sql(&out, None, &format!("SELECT CAST(day AS VARCHAR) AS d, activities FROM rep_daily WHERE rep_id = '{rep}' ORDER BY activities DESC, day LIMIT 1")).await;
    let e = explain(
        &out,
        &file,
        &[
            "rep_daily",
            "--key",
            &format!("rep_id={rep}"),
            "--key",
            &format!("day={}", day[0]["d"].as_str().unwrap()),
        ],
    );
    // The distinct activities read back from the ranges are the count published.
    let counted = check_inputs(&e) - e["inputs"].as_array().unwrap().len();
    assert_eq!(
        counted as i64,
        day[0]["activities"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        "{e:#}"
    );

    explain(
        &out,
        &file,
        &[
            "leaderboard",
            "--key",
            "period_type=quarter",
            "--key",
            &format!("period_start={ps}"),
            "--key",
            &format!("rep_id={rep}"),
        ],
    );
}
