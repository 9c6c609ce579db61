//! Alerts over three runs of the binary on the real broker: a rule fires once, does not fire
//! again after a restart, and resolves once; a loopback webhook that fails three times takes
//! the fourth attempt, and a real consumer of the alert topic sees the same events.

use std::process::Command;

use super::{bin, brokers, pipeline_file, run_once, tag};
use crate::common::{assert_alert_event_schema, canonical, read_topic, Cluster, HookServer};
use crate::harness::{produce, PipelineFile};
use crate::pipeline_mock::latest_tables;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs services: run scripts/test"]
async fn an_alert_fires_once_survives_restarts_resolves_and_its_webhook_retries() {
    // Reps 2 and 7 fall silent on day 10 and are back on day 22. Three runs, each a separate
    // process over the next slice of days: they fire, stay firing, resolve.
    let hook = HookServer::start(3);
    let dir = tempfile::tempdir().unwrap();
    let url = hook.url.clone();
    let (file, p) = pipeline_file(dir.path(), &tag("alerts"), PipelineFile::default().edit(move |text| {
        let head = text.split("[[alerts]]").next().unwrap().to_string();
        head.replace("retry_initial = \"1s\"", "retry_initial = \"100ms\"")
            + &format!(
                "[[alert_delivery.webhooks]]\nname = \"managers\"\nurl = \"{url}\"\n\n\
                 [[alerts]]\nname = \"rep_inactive\"\nseverity = \"warning\"\n\
                 description = \"No activity in 5 days.\"\nsql = \"../sql/alerts/rep_inactive.sql\"\n\
                 params = {{ days = \"5\" }}\ndeliver = [\"log\", \"kafka\", \"managers\"]\n"
            )
    }));
    let brokers = brokers();
    let start = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    let spec = quotaflow::generate::GenSpec {
        reps: 10,
        days: 30,
        seed: 21,
        start,
        silence: Some(quotaflow::generate::Silence {
            reps: vec![2, 7],
            from: start + chrono::Duration::days(10),
            until: start + chrono::Duration::days(22),
        }),
    };
    let mut msgs = Vec::new();
    quotaflow::generate::generate(&spec, |g| {
        let day: String = serde_json::from_str::<serde_json::Value>(&g.value).unwrap()
            ["occurred_at"]
            .as_str()
            .unwrap()[..10]
            .to_string();
        msgs.push((day, p.source.topics[&g.event_type].clone(), g.key, g.value))
    });
    let topics: Vec<&str> = p.source.topics.values().map(String::as_str).collect();
    Cluster::new(&brokers, &p.source.kafka)
        .ensure_topics(&topics, 3)
        .await
        .unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let alerts_topic = &p.alert_delivery.kafka_topic;
    let slice = |from: i64, to: i64| {
        let (a, b) = (
            (start + chrono::Duration::days(from)).to_string(),
            (start + chrono::Duration::days(to)).to_string(),
        );
        msgs.iter()
            .filter(|(d, ..)| *d >= a && *d < b)
            .map(|(_, t, k, v)| (t.clone(), k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let keys = |events: &[serde_json::Value]| {
        events
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e["transition"].as_str().unwrap(),
                    e["key"].as_str().unwrap()
                )
            })
            .collect::<Vec<_>>()
    };

    // Days 0..18: last activity on day 9, clock on day 17 — both fire.
    produce(&brokers, 10_000, &slice(0, 18));
    run_once(&file, out);
    let got = hook.accepted();
    assert_eq!(keys(&got), ["fired rep-00002", "fired rep-00007"]);
    assert_eq!(
        hook.requests(),
        5,
        "3 failures, then the 4th attempt and the next event"
    );

    // Days 18..21: still silent, a new process: nothing fires again.
    produce(&brokers, 10_000, &slice(18, 21));
    run_once(&file, out);
    assert_eq!(hook.accepted().len(), 2, "{:?}", keys(&hook.accepted()));

    // Days 21..30: back from day 22: both resolve, once.
    produce(&brokers, 10_000, &slice(21, 30));
    run_once(&file, out);
    let got = hook.accepted();
    assert_eq!(
        keys(&got),
        [
            "fired rep-00002",
            "fired rep-00007",
            "resolved rep-00002",
            "resolved rep-00007"
        ]
    );
    assert_eq!(got[0]["alert_id"], got[2]["alert_id"]);
    assert_ne!(got[0]["event_id"], got[2]["event_id"]);
    for e in &got {
        assert_alert_event_schema(e);
    }

    // A real consumer of the alert topic sees the same four events, keyed by alert_id.
    let topic = read_topic(&brokers, alerts_topic);
    let on_topic: Vec<serde_json::Value> = topic.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(keys(&on_topic), keys(&got));
    for (k, v) in &topic {
        assert_eq!(k, v["alert_id"].as_str().unwrap());
    }
    // The snapshot's alert tables agree, and count the three failed attempts.
    let tables = canonical(&latest_tables(out).await);
    assert_eq!(tables["alerts"].len(), 2);
    assert!(tables["alerts"]
        .iter()
        .all(|r| r.contains("\"state\":\"resolved\"")));
    let q = Command::new(bin())
        .args(["alerts", "--output", out, "--format", "csv"])
        .output()
        .unwrap();
    assert!(q.status.success());
    assert!(
        !String::from_utf8_lossy(&q.stdout).contains("rep_inactive"),
        "nothing is firing"
    );
    let hook_row = tables["alert_deliveries"]
        .iter()
        .find(|r| r.contains("\"target\":\"managers\""))
        .unwrap();
    assert!(hook_row.contains("\"failed_attempts\":3"), "{hook_row}");
}
