//! Alerts: a generated scenario whose falling-behind reps are known in advance, and delivery
//! to a real HTTP server on a loopback port and to the alert topic of librdkafka's mock
//! cluster, across runs. (The same lifecycle against the real broker, with the pipeline as a
//! separate process, is in `external`.)

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use quotaflow::config::Pipeline;
use quotaflow::generate::{generate, GenSpec, Silence};
use quotaflow::snapshot::Location;

use crate::common::{
    decoder, fold_one, json_rows, read_topic, Engine, HookServer, State, FAR_FUTURE,
};
use crate::harness::{once, produce, run_in_process};

const START: (i32, u32, u32) = (2026, 3, 2);

fn start() -> NaiveDate {
    NaiveDate::from_ymd_opt(START.0, START.1, START.2).unwrap()
}

fn scenario(reps: usize, days: u32, silent: &[usize], from_day: i64) -> GenSpec {
    GenSpec {
        reps,
        days,
        seed: 9,
        start: start(),
        silence: Some(Silence {
            reps: silent.to_vec(),
            from: start() + Duration::days(from_day),
            until: NaiveDate::MAX,
        }),
    }
}

/// Keys the default rules breach for a generated stream, per rule.
async fn breaches(spec: &GenSpec, rule: &str) -> BTreeSet<String> {
    let p = crate::common::pipeline();
    let dec = decoder();
    let mut state = State::default();
    generate(spec, |g| {
        fold_one(
            &p,
            &mut state,
            dec.decode(g.event_type, g.value.as_bytes(), FAR_FUTURE)
                .unwrap(),
        )
    });
    let (_, found) = Engine::new(Arc::clone(&p.metrics))
        .compute_with_alerts(&state, 1)
        .await
        .unwrap();
    found
        .into_iter()
        .filter(|b| b.rule == rule)
        .map(|b| b.key)
        .collect()
}

#[tokio::test]
async fn reps_who_fall_silent_are_exactly_the_reps_inactive() {
    // 30 days from a Monday; reps 2, 13 and 21 log nothing from day 14 (a Monday) on. The
    // clock ends on day 29, 18 days after their last activity: past the rule's 5 days, while
    // every other rep logs calls on every weekday.
    let silent = scenario(24, 30, &[2, 13, 21], 14);
    assert_eq!(
        breaches(&silent, "rep_inactive").await,
        BTreeSet::from(["rep-00002".into(), "rep-00013".into(), "rep-00021".into()])
    );
    // Silent for 4 days only (days 26..29): not yet inactive by the rule.
    let recent = scenario(24, 30, &[2, 13, 21], 26);
    assert_eq!(breaches(&recent, "rep_inactive").await, BTreeSet::new());
}

/// The default pipeline with `rep_inactive` delivering to a webhook at `url` (and Kafka).
fn hooked_pipeline(url: &str, drain: &str) -> Arc<Pipeline> {
    crate::common::pipeline_with(|text| {
        text.replace("retry_initial = \"1s\"", "retry_initial = \"50ms\"")
            .replace("retry_max = \"5m\"", "retry_max = \"200ms\"")
            .replace(
                "drain_timeout = \"10s\"",
                &format!(
                    "drain_timeout = \"{drain}\"\n[[alert_delivery.webhooks]]\nname = \"managers\"\nurl = \"{url}\""
                ),
            )
            .replace(
                "params = { days = \"5\" }",
                "params = { days = \"5\" }\ndeliver = [\"log\", \"kafka\", \"managers\"]",
            )
    })
}

/// `target, delivered, failed_attempts, pending` rows of the latest snapshot.
async fn deliveries(output: &str) -> Vec<String> {
    let tables = crate::pipeline_mock::latest_tables(output).await;
    crate::common::canonical(&tables)["alert_deliveries"]
        .iter()
        .map(|row| {
            let v: serde_json::Value = serde_json::from_str(row).unwrap();
            format!(
                "{} {} {} {}",
                v["target"].as_str().unwrap(),
                v["delivered"],
                v["failed_attempts"],
                v["pending"]
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_is_down_never_blocks_and_gets_its_events_later_once() {
    let hook = HookServer::start(0);
    hook.set_failing(true);
    let p = hooked_pipeline(&hook.url, "1s");
    let c = crate::pipeline_mock::cluster(&p);
    let brokers = c.bootstrap_servers();
    let mut msgs = Vec::new();
    generate(&scenario(12, 24, &[5], 10), |g| {
        msgs.push((p.source.topics[&g.event_type].clone(), g.key, g.value))
    });
    produce(&brokers, 10_000, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();

    // Run 1: the webhook answers 500 throughout. The run still completes, after its drain
    // timeout, with the event left pending; it was retried meanwhile.
    let first = run_in_process(&p, once(&brokers, out)).await;
    assert_eq!(first.messages, msgs.len() as u64);
    assert_eq!(
        first.alerts_pending, 1,
        "the webhook's one event is pending"
    );
    assert!(
        hook.requests() >= 2,
        "retried: {} requests",
        hook.requests()
    );
    assert!(hook.accepted().is_empty());
    // The snapshot holds it in the outbox.
    let rows = deliveries(out).await;
    assert!(rows.contains(&"managers 0 0 1".to_string()), "{rows:?}");

    // Run 2, no new events: the webhook is back; the outbox goes out. The drain timeout is
    // longer now: a drain ends as soon as nothing is pending, and 1 s is too short a wait for
    // a delivery on a loaded machine.
    hook.set_failing(false);
    let p = hooked_pipeline(&hook.url, "30s");
    let second = run_in_process(&p, once(&brokers, out)).await;
    assert_eq!((second.messages, second.alerts_pending), (0, 0));
    let got = hook.accepted();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["rule"], "rep_inactive");
    assert_eq!(got[0]["key"], "rep-00005");
    assert_eq!(got[0]["transition"], "fired");
    crate::common::assert_alert_event_schema(&got[0]);

    // Run 3: a clean restart sends nothing again.
    let before = hook.requests();
    run_in_process(&p, once(&brokers, out)).await;
    assert_eq!(hook.requests(), before);
    assert_eq!(hook.accepted().len(), 1);

    // The alert topic holds each fired alert of the snapshot exactly once, keyed by alert_id.
    let topic = read_topic(&brokers, &p.alert_delivery.kafka_topic);
    let loc = Location::parse(out).unwrap();
    let m = loc
        .checkpoint(loc.latest().await.unwrap().unwrap().snapshot_id)
        .await
        .unwrap();
    let state = quotaflow::pipeline::read_state(&loc, &m).await.unwrap();
    let fired: BTreeSet<String> = state.alerts.iter().map(|a| a.alert_id.clone()).collect();
    let ids: Vec<String> = topic
        .iter()
        .map(|(_, v)| v["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "a duplicate on the topic"
    );
    assert_eq!(
        topic
            .iter()
            .map(|(k, _)| k.clone())
            .collect::<BTreeSet<_>>(),
        fired
    );
    for (_, v) in &topic {
        crate::common::assert_alert_event_schema(v);
    }
}

/// (alert_id, state, resolved_month) of every row of the `alerts` table of the latest snapshot.
async fn alert_rows(loc: &Location) -> Vec<(String, String, Option<String>)> {
    let (_, batches) = loc.read_delta("alerts", None).await.unwrap();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let mut rows: Vec<_> = json_rows(&batches)
        .iter()
        .map(|r| {
            let (id, state) = (text(&r["alert_id"]), text(&r["state"]));
            (id.unwrap(), state.unwrap(), text(&r["resolved_month"]))
        })
        .collect();
    rows.sort();
    rows
}

/// A resolved alert leaves the state once the event clock has left the month it resolved in,
/// and stays in the `alerts` table, in that month's partition, through the snapshots after
/// it: the table holds every lifecycle ever fired, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_alerts_leave_the_state_after_their_month_and_stay_in_the_table() {
    // Rep 5 logs nothing from 2026-03-12 to 2026-04-10: `rep_inactive` fires in March and
    // resolves in April. The stream goes on to mid-May, read in four runs (a snapshot each).
    let p = crate::common::pipeline();
    let c = crate::pipeline_mock::cluster(&p);
    let brokers = c.bootstrap_servers();
    let spec = GenSpec {
        silence: Some(Silence {
            reps: vec![5],
            from: start() + Duration::days(10),
            until: start() + Duration::days(40),
        }),
        ..scenario(12, 75, &[], 0)
    };
    let mut msgs = Vec::new();
    generate(&spec, |g| {
        let day = serde_json::from_str::<serde_json::Value>(&g.value).unwrap()["occurred_at"]
            .as_str()
            .map(|t| t[..10].to_string());
        msgs.push((
            day,
            (p.source.topics[&g.event_type].clone(), g.key, g.value),
        ))
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let loc = Location::parse(out).unwrap();
    let month_of = |t: i64| {
        let d = chrono::DateTime::from_timestamp_micros(t)
            .unwrap()
            .date_naive();
        d.format("%Y-%m-01").to_string()
    };
    let rep5 = ("rep_inactive".to_string(), "rep-00005".to_string());
    let mut sent = 0;
    for (run, until) in ["2026-03-25", "2026-04-20", "2026-05-10", "9999"]
        .iter()
        .enumerate()
    {
        let chunk: Vec<_> = msgs
            .iter()
            .skip(sent)
            .take_while(|(day, _)| day.as_deref().is_none_or(|d| d <= *until))
            .map(|(_, m)| m.clone())
            .collect();
        sent += chunk.len();
        produce(&brokers, 10_000, &chunk);
        run_in_process(&p, once(&brokers, out)).await;
        let m = loc
            .checkpoint(loc.latest().await.unwrap().unwrap().snapshot_id)
            .await
            .unwrap();
        let state = quotaflow::pipeline::read_state(&loc, &m).await.unwrap();
        let now = month_of(state.as_of.unwrap());
        // Only this month's resolved lifecycles are held.
        for a in state.alerts.resolved.values() {
            assert_eq!(month_of(a.resolved_at.unwrap()), now, "{a:?} held in {now}");
        }
        let rows = alert_rows(&loc).await;
        match run {
            0 => assert!(state.alerts.firing.contains_key(&rep5)),
            1 => {
                assert!(!state.alerts.firing.contains_key(&rep5));
                assert!(state
                    .alerts
                    .resolved
                    .values()
                    .any(|a| (&a.rule, &a.key) == (&rep5.0, &rep5.1)));
            }
            _ => {
                // Gone from the state, still in the table, in April's partition.
                assert!(!state.alerts.iter().any(|a| a.key == rep5.1 && !a.firing));
                let resolved: Vec<_> = rows
                    .iter()
                    .filter(|(id, _, _)| id.starts_with("rep_inactive/rep-00005/"))
                    .filter(|(_, s, _)| s == "resolved")
                    .collect();
                assert_eq!(resolved.len(), 1, "{rows:?}");
                assert_eq!(resolved[0].2.as_deref(), Some("2026-04-01"));
            }
        }
        // Every row's partition is the month it resolved in, NULL while firing; the
        // firing rows are the state's.
        let firing: BTreeSet<&str> = rows
            .iter()
            .filter(|(_, s, month)| s == "firing" && month.is_none())
            .map(|(id, _, _)| id.as_str())
            .collect();
        let held: BTreeSet<&str> = state
            .alerts
            .firing
            .values()
            .map(|a| a.alert_id.as_str())
            .collect();
        assert_eq!(firing, held);
        assert!(rows
            .iter()
            .all(|(_, s, month)| (s == "firing") == month.is_none()));
    }
    // The table holds every lifecycle that fired, once: the fired events on the alert topic.
    let fired: Vec<String> = read_topic(&brokers, &p.alert_delivery.kafka_topic)
        .into_iter()
        .filter(|(_, v)| v["transition"] == "fired")
        .map(|(k, _)| k)
        .collect();
    let rows = alert_rows(&loc).await;
    let ids: Vec<String> = rows.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "a lifecycle twice"
    );
    assert_eq!(
        ids.into_iter().collect::<BTreeSet<_>>(),
        fired.into_iter().collect::<BTreeSet<_>>()
    );
}

/// An alert event for the dispatcher tests, numbered `i`.
fn event(i: usize) -> quotaflow::alert::AlertEvent {
    quotaflow::alert::AlertEvent {
        event_id: format!("rule/key-{i}/1/fired"),
        alert_id: format!("rule/key-{i}/1"),
        transition: "fired".into(),
        pipeline: "default".into(),
        rule: "rep_inactive".into(),
        severity: "warning".into(),
        key: format!("key-{i}"),
        value: Some(1.0),
        message: "m".into(),
        fired_at: None,
        resolved_at: None,
        snapshot_id: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_queues_are_bounded_and_an_outbox_entry_is_handed_over_once() {
    use quotaflow::alert::deliver::{Dispatcher, Outgoing, QUEUE_CAPACITY};
    let hook = HookServer::start(0);
    hook.set_failing(true);
    let p = hooked_pipeline(&hook.url, "1s");
    let rules: Vec<_> = p
        .metrics
        .alerts
        .iter()
        .cloned()
        .map(|mut r| {
            r.deliver = vec!["managers".into()];
            r
        })
        .collect();
    // No rule delivers to Kafka, so no client of this address is made.
    let cluster = quotaflow::kafka::Cluster::new("127.0.0.1:1", &Default::default());
    let outbox = |n: usize| -> Vec<Outgoing> {
        (0..n)
            .map(|i| Outgoing {
                target: "managers".into(),
                event: event(i),
            })
            .collect()
    };

    // Handed over once: the run loop submits the whole outbox after every snapshot.
    let d = Dispatcher::start(&cluster, &p.alert_delivery, &rules)
        .await
        .unwrap();
    let small = outbox(20);
    for _ in 0..3 {
        d.submit(&small);
    }
    assert_eq!(d.pending(), 20);
    hook.set_failing(false);
    assert_eq!(d.drain(std::time::Duration::from_secs(30)).await, 0);
    let ids: BTreeSet<String> = hook
        .accepted()
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        (ids.len(), hook.accepted().len()),
        (20, 20),
        "each event once"
    );
    let (acked, counts) = d.take();
    assert_eq!(acked.len(), 20);
    assert_eq!(counts["managers"].delivered, 20);
    drop(d);

    // Bounded: with the webhook refusing, a queue takes QUEUE_CAPACITY entries (and the task
    // holds the one it retries); the rest waits in the outbox instead of in memory twice.
    hook.set_failing(true);
    let d = Dispatcher::start(&cluster, &p.alert_delivery, &rules)
        .await
        .unwrap();
    let big = outbox(QUEUE_CAPACITY + 50);
    d.submit(&big);
    d.submit(&big);
    let pending = d.pending();
    assert!(
        (QUEUE_CAPACITY..=QUEUE_CAPACITY + 2).contains(&pending),
        "{pending} handed over of {}",
        big.len()
    );
}
