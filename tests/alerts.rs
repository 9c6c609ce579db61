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

use crate::common::{decoder, fold_one, read_topic, Engine, HookServer, State, FAR_FUTURE};
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
    let fired: BTreeSet<String> = state.alerts.values().map(|a| a.alert_id.clone()).collect();
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
