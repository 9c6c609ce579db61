//! Delivery of alert transitions to the targets each rule names: the log, a Kafka topic and
//! webhooks (HTTP POST of the event as JSON).
//!
//! Kafka and webhook deliveries go through an outbox kept in the state: a snapshot records
//! the transitions it produced together with one `Outgoing` per target, and only once that
//! snapshot is durable are they handed to the `Dispatcher`. The dispatcher runs one task per
//! target, in the background, so the pipeline never waits on a receiver. A task delivers its
//! queue in order (a `resolved` never overtakes its `fired`; the Kafka task sends what is
//! queued in one go, a webhook task one event at a time), retrying a failed delivery with
//! exponential backoff for as long as it takes: failures are counted, nothing is dropped.
//! Each snapshot removes what was acknowledged since the last one from the outbox; a restart
//! hands whatever is still in it to the dispatcher again. Delivery is therefore
//! at-least-once, and every event carries an `event_id` for the receiver to de-duplicate.
//! A run that stops waits up to `drain_timeout` for the queues and records what was
//! acknowledged after its last snapshot next to it, so a clean restart sends nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use crate::alert::AlertEvent;
use crate::config::{AlertDelivery, Pipeline, Webhook};
use crate::source::kafka::{ensure_topics, producer, KafkaIoError};

/// One event on its way to one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub target: String,
    pub event: AlertEvent,
}

impl Outgoing {
    /// Unique per (target, event).
    pub fn id(&self) -> String {
        format!("{}:{}", self.target, self.event.event_id)
    }
}

/// Deliveries per target, kept in the state across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryCount {
    pub delivered: u64,
    /// Attempts that failed (each retried later).
    pub failed_attempts: u64,
}

/// The outbox entries for `events`, per the targets of each event's rule. The log target is
/// not in the outbox: `log` writes at once.
pub fn outgoing(pipeline: &Pipeline, events: &[AlertEvent]) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for e in events {
        let Some(rule) = pipeline.alerts.iter().find(|r| r.name == e.rule) else {
            continue;
        };
        for target in rule.deliver.iter().filter(|t| *t != "log") {
            out.push(Outgoing {
                target: target.clone(),
                event: e.clone(),
            });
        }
    }
    out
}

/// Writes the transitions of rules that deliver to `log` (one line each, JSON in `alert`).
pub fn to_log(pipeline: &Pipeline, events: &[AlertEvent]) {
    for e in events {
        let logged = pipeline
            .alerts
            .iter()
            .any(|r| r.name == e.rule && r.deliver.iter().any(|t| t == "log"));
        if !logged {
            continue;
        }
        let json = serde_json::to_string(e).unwrap_or_default();
        match e.transition.as_str() {
            "fired" => tracing::warn!(alert = %json, "alert fired"),
            _ => tracing::info!(alert = %json, "alert resolved"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("Kafka topic {topic}: {source}")]
    Kafka {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("webhook {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("webhook {url}: HTTP status {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
}

enum Target {
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
    Webhook {
        client: reqwest::Client,
        hook: Webhook,
    },
}

impl Target {
    async fn send(&self, event: &AlertEvent) -> Result<(), SendError> {
        let body = serde_json::to_string(event).unwrap_or_default();
        match self {
            Target::Kafka { producer, topic } => {
                // Keyed by alert_id: an alert's events share a partition, so they stay in order.
                let rec = FutureRecord::to(topic).key(&event.alert_id).payload(&body);
                producer
                    .send(rec, Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(source, _)| SendError::Kafka {
                        topic: topic.clone(),
                        source,
                    })
            }
            Target::Webhook { client, hook } => {
                let url = hook.url.to_string();
                let response = client
                    .post(hook.url.clone())
                    .timeout(hook.timeout)
                    .header("content-type", "application/json")
                    .header("x-quotaflow-event-id", &event.event_id)
                    .body(body)
                    .send()
                    .await
                    .map_err(|source| SendError::Http {
                        url: url.clone(),
                        source,
                    })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(SendError::Status { url, status })
                }
            }
        }
    }
}

#[derive(Default)]
struct Progress {
    /// Ids of outbox entries acknowledged since they were last taken.
    acked: Vec<String>,
    /// Counts since they were last taken.
    counts: BTreeMap<String, DeliveryCount>,
    /// Entries handed over and not acknowledged yet.
    pending: usize,
}

struct Shared {
    progress: Mutex<Progress>,
    changed: Notify,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Progress) -> T) -> T {
        let mut p = match self.progress.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut p)
    }
}

/// The background delivery of outbox entries: one task and queue per target.
pub struct Dispatcher {
    queues: BTreeMap<String, mpsc::UnboundedSender<Outgoing>>,
    tasks: Vec<tokio::task::AbortHandle>,
    shared: Arc<Shared>,
}

impl Drop for Dispatcher {
    /// Stops the delivery tasks with the run that owns them (what they still hold is in the
    /// outbox of the last snapshot, and goes out at the next start).
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Dispatcher {
    /// Starts a task for every Kafka or webhook target some rule delivers to. The alert topic
    /// is created if missing (best effort: a failed delivery is retried either way).
    pub async fn start(brokers: &str, pipeline: &Pipeline) -> Result<Dispatcher, KafkaIoError> {
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            changed: Notify::new(),
        });
        let used: BTreeSet<&str> = pipeline
            .alerts
            .iter()
            .flat_map(|r| r.deliver.iter().map(String::as_str))
            .collect();
        let d = &pipeline.alert_delivery;
        let (mut queues, mut tasks) = (BTreeMap::new(), Vec::new());
        if used.contains("kafka") {
            let topic = d.kafka_topic.clone();
            if let Err(e) = ensure_topics(brokers, pipeline, &[topic.as_str()], 1).await {
                tracing::warn!(topic, error = %e, "could not create the alert topic");
            }
            // One request in flight: events keep their order on the topic even when
            // librdkafka retries a request.
            let producer = producer(brokers, pipeline, &[("max.in.flight", "1")])?;
            let target = Target::Kafka { producer, topic };
            let (tx, task) = spawn("kafka", target, d, &shared);
            queues.insert("kafka".to_string(), tx);
            tasks.push(task);
        }
        let client = reqwest::Client::new();
        for hook in d.webhooks.iter().filter(|w| used.contains(w.name.as_str())) {
            let target = Target::Webhook {
                client: client.clone(),
                hook: hook.clone(),
            };
            let (tx, task) = spawn(&hook.name, target, d, &shared);
            queues.insert(hook.name.clone(), tx);
            tasks.push(task);
        }
        Ok(Dispatcher {
            queues,
            tasks,
            shared,
        })
    }

    /// Hands entries over for delivery; never waits.
    pub fn submit(&self, entries: impl IntoIterator<Item = Outgoing>) {
        for o in entries {
            match self.queues.get(&o.target) {
                Some(q) => {
                    self.shared.with(|p| p.pending += 1);
                    if q.send(o).is_err() {
                        self.shared.with(|p| p.pending -= 1);
                    }
                }
                // A target the pipeline file no longer has: its entries wait in the outbox.
                None => {
                    tracing::warn!(target = o.target, event_id = o.event.event_id,
                    "alert event for a target this pipeline does not define; kept in the outbox")
                }
            }
        }
    }

    /// What was acknowledged, and the counts, since the last call.
    pub fn take(&self) -> (Vec<String>, BTreeMap<String, DeliveryCount>) {
        self.shared
            .with(|p| (std::mem::take(&mut p.acked), std::mem::take(&mut p.counts)))
    }

    /// Entries handed over and not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.shared.with(|p| p.pending)
    }

    /// Waits until every queue is empty or `timeout` has passed; returns what is still pending.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            let pending = self.pending();
            if pending == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.pending();
            }
        }
    }
}

fn spawn(
    name: &str,
    target: Target,
    d: &AlertDelivery,
    shared: &Arc<Shared>,
) -> (mpsc::UnboundedSender<Outgoing>, tokio::task::AbortHandle) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let (name, shared) = (name.to_string(), Arc::clone(shared));
    let (initial, max) = (d.retry_initial, d.retry_max);
    let batch_size = match target {
        Target::Kafka { .. } => 10_000,
        Target::Webhook { .. } => 1,
    };
    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // What is queued goes out together (all in flight at once for Kafka; one by one,
            // in order, for a webhook); what fails is retried, in order, before anything newer.
            let mut batch = vec![first];
            while batch.len() < batch_size {
                match rx.try_recv() {
                    Ok(o) => batch.push(o),
                    Err(_) => break,
                }
            }
            let mut delay = initial;
            let mut attempt = 1u32;
            while !batch.is_empty() {
                let results =
                    futures::future::join_all(batch.iter().map(|o| target.send(&o.event))).await;
                let mut failed = Vec::new();
                let mut last_error = None;
                for (o, r) in batch.into_iter().zip(results) {
                    match r {
                        Ok(()) => shared.with(|p| {
                            p.acked.push(o.id());
                            p.counts.entry(name.clone()).or_default().delivered += 1;
                            p.pending = p.pending.saturating_sub(1);
                        }),
                        Err(e) => {
                            shared.with(|p| {
                                p.counts.entry(name.clone()).or_default().failed_attempts += 1
                            });
                            last_error = Some(e);
                            failed.push(o);
                        }
                    }
                }
                shared.changed.notify_one();
                batch = failed;
                if let Some(e) = last_error {
                    tracing::warn!(target = name, failed = batch.len(), attempt, error = %e,
                        retry_in_ms = delay.as_millis() as u64, "alert delivery failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max);
                    attempt += 1;
                }
            }
        }
    });
    (tx, task.abort_handle())
}

/// Takes acknowledged entries out of the state's outbox and adds the counts.
pub fn settle(
    state: &mut crate::state::State,
    acked: &[String],
    counts: BTreeMap<String, DeliveryCount>,
) {
    if !acked.is_empty() {
        let acked: BTreeSet<&str> = acked.iter().map(String::as_str).collect();
        state.outbox.retain(|o| !acked.contains(o.id().as_str()));
    }
    for (target, c) in counts {
        let total = state.deliveries.entry(target).or_default();
        total.delivered += c.delivered;
        total.failed_attempts += c.failed_attempts;
    }
}
