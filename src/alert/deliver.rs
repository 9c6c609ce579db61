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
use crate::config::{AlertDelivery, AlertRule, Webhook};
use crate::kafka::{Cluster, KafkaIoError};

/// Entries a target's queue holds; what does not fit waits in the outbox and is handed over
/// again after the next snapshot (DESIGN.md: channels between stages are bounded).
pub const QUEUE_CAPACITY: usize = 10_000;

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

/// Alert deliveries acknowledged after a snapshot, by outbox id, with their counts: what a run
/// that stops records next to its last snapshot (`_state/<id>/alert_acks.json`), so the next start does
/// not send them again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAcks {
    pub acked: Vec<String>,
    pub counts: BTreeMap<String, DeliveryCount>,
}

impl DeliveryAcks {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<DeliveryAcks, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Adds what a later part of a run acknowledged.
    pub fn merge(&mut self, acked: Vec<String>, counts: BTreeMap<String, DeliveryCount>) {
        self.acked.extend(acked);
        for (target, c) in counts {
            let total = self.counts.entry(target).or_default();
            total.delivered += c.delivered;
            total.failed_attempts += c.failed_attempts;
        }
    }
}

/// The outbox entries for `events`, per the targets of each event's rule. The log target is
/// not in the outbox: `log` writes at once.
pub fn outgoing(rules: &[AlertRule], events: &[AlertEvent]) -> Vec<Outgoing> {
    let mut out = Vec::new();
    for e in events {
        let Some(rule) = rules.iter().find(|r| r.name == e.rule) else {
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
pub fn to_log(rules: &[AlertRule], events: &[AlertEvent]) {
    for e in events {
        let logged = rules
            .iter()
            .any(|r| r.name == e.rule && r.deliver.iter().any(|t| t == "log"));
        if !logged {
            continue;
        }
        let json = match serde_json::to_string(e) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(event_id = e.event_id, error = %err, "cannot encode an alert event for the log (this is a bug)");
                continue;
            }
        };
        match e.transition.as_str() {
            "fired" => tracing::warn!(alert = %json, "alert fired"),
            _ => tracing::info!(alert = %json, "alert resolved"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The event does not serialise: a bug. Never sent (an empty body would be a lie); counted
    /// as a failed attempt and retried, so it stays in the outbox.
    #[error("alert event {event_id} cannot be encoded as JSON (this is a bug): {source}")]
    Encode {
        event_id: String,
        source: serde_json::Error,
    },
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
        let body = serde_json::to_string(event).map_err(|source| SendError::Encode {
            event_id: event.event_id.clone(),
            source,
        })?;
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
    /// Ids of the outbox entries handed to a queue and not yet taken as acknowledged: these
    /// are not handed over again.
    handed: BTreeSet<String>,
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
    queues: BTreeMap<String, mpsc::Sender<Outgoing>>,
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
    pub async fn start(
        cluster: &Cluster,
        d: &AlertDelivery,
        rules: &[AlertRule],
    ) -> Result<Dispatcher, KafkaIoError> {
        let shared = Arc::new(Shared {
            progress: Mutex::new(Progress::default()),
            changed: Notify::new(),
        });
        let used: BTreeSet<&str> = rules
            .iter()
            .flat_map(|r| r.deliver.iter().map(String::as_str))
            .collect();
        let (mut queues, mut tasks) = (BTreeMap::new(), Vec::new());
        if used.contains("kafka") {
            let topic = d.kafka_topic.clone();
            if let Err(e) = cluster.ensure_topics(&[topic.as_str()], 1).await {
                tracing::warn!(topic, error = %e, "could not create the alert topic");
            }
            // One request in flight: events keep their order on the topic even when
            // librdkafka retries a request.
            let producer = cluster.producer(&[("max.in.flight", "1")])?;
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

    /// Hands the outbox entries not handed over yet to their target's queue; never waits. What
    /// does not fit in a full queue stays in the outbox, to be handed over at a later call (the
    /// run loop calls this with the whole outbox after every durable snapshot).
    pub fn submit(&self, outbox: &[Outgoing]) {
        let mut full: BTreeSet<&str> = BTreeSet::new();
        for o in outbox {
            let Some(q) = self.queues.get(&o.target) else {
                // A target the pipeline file no longer has: its entries wait in the outbox.
                tracing::warn!(
                    target = o.target,
                    event_id = o.event.event_id,
                    "alert event for a target this pipeline does not define; kept in the outbox"
                );
                continue;
            };
            let id = o.id();
            if full.contains(o.target.as_str()) || self.shared.with(|p| p.handed.contains(&id)) {
                continue;
            }
            // Counted as pending before it is queued: the delivery task may deliver it, and
            // count it off, before `try_send` returns.
            self.shared.with(|p| {
                p.pending += 1;
                p.handed.insert(id.clone());
            });
            let sent = q.try_send(o.clone());
            if sent.is_err() {
                self.shared.with(|p| {
                    p.pending -= 1;
                    p.handed.remove(&id);
                });
            }
            match sent {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Later entries of this target wait too: a queue delivers in order.
                    full.insert(o.target.as_str());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!(
                        target = o.target,
                        "alert delivery task stopped; entries kept in the outbox"
                    );
                    full.insert(o.target.as_str());
                }
            }
        }
        if !full.is_empty() {
            tracing::info!(targets = ?full, capacity = QUEUE_CAPACITY,
                "alert delivery queues full; the rest waits in the outbox");
        }
    }

    /// What was acknowledged, and the counts, since the last call.
    /// The caller removes the acknowledged entries from the outbox.
    pub fn take(&self) -> (Vec<String>, BTreeMap<String, DeliveryCount>) {
        self.shared.with(|p| {
            let acked = std::mem::take(&mut p.acked);
            for id in &acked {
                p.handed.remove(id);
            }
            (acked, std::mem::take(&mut p.counts))
        })
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
) -> (mpsc::Sender<Outgoing>, tokio::task::AbortHandle) {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(QUEUE_CAPACITY);
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
