//! Helpers shared by the test modules: decoding, folding and computing in process, tables as
//! JSON, the webhook receiver. (Running the pipeline and waiting for it: `crate::harness`.)

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use quotaflow::config::Pipeline;
use quotaflow::event::Event;

// Library paths the tests use that are moving: every test module imports them from here, so a
// path change is a fix in this one file.
pub use quotaflow::config::DecodeLimits;
pub use quotaflow::engine::{Engine, Table};
pub use quotaflow::event::schema::{EventType, Schema};
pub use quotaflow::kafka::{produce_all, Cluster};
pub use quotaflow::source::decode::{BadInput, Decoder, Reason};
pub use quotaflow::state::State;

/// A wall clock far in the future, so no test instant is rejected for clock skew.
pub const FAR_FUTURE: i64 = 4_000_000_000_000_000;

pub fn decoder() -> Decoder {
    Decoder::new(DecodeLimits {
        max_message_bytes: 1 << 20,
        max_clock_skew_micros: 86_400_000_000,
    })
    .unwrap()
}

pub fn decode(t: EventType, json: &str) -> Result<Event, BadInput> {
    decoder().decode(t, json.as_bytes(), FAR_FUTURE)
}

pub fn ev(t: EventType, json: &str) -> Event {
    decode(t, json).unwrap_or_else(|e| panic!("{e:?}: {json}"))
}

pub fn pipeline() -> Arc<Pipeline> {
    Arc::new(Pipeline::builtin().unwrap())
}

/// The default pipeline with `edit` applied to its text (SQL paths resolved as from pipelines/).
pub fn pipeline_with(edit: impl FnOnce(String) -> String) -> Arc<Pipeline> {
    crate::harness::PipelineFile::default().edit(edit).load()
}

/// The event type a file or a pipeline's `[source.topics]` calls `name` ("deal", "fx_rate").
pub fn event_type_named(name: &str) -> EventType {
    EventType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("no event type {name:?}"))
}

/// The events of a JSON-lines file (tests/data/README.md): one `{"type": ..., "value": {...}}`
/// a line, `#` lines and blank lines skipped; (type, the value as JSON text), in file order.
pub fn events_file(path: &str) -> Vec<(EventType, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1));
            let t = v["type"]
                .as_str()
                .unwrap_or_else(|| panic!("{path}:{}: no \"type\"", i + 1));
            assert!(
                v["value"].is_object(),
                "{path}:{}: no \"value\" object",
                i + 1
            );
            (event_type_named(t), v["value"].to_string())
        })
        .collect()
}

/// Folds events into a fresh state the way the pipeline does (counting outcomes per topic).
pub fn fold_all(p: &Pipeline, events: impl IntoIterator<Item = Event>) -> State {
    let mut s = State::default();
    for e in events {
        fold_one(p, &mut s, e);
    }
    s
}

pub fn fold_one(p: &Pipeline, s: &mut State, e: Event) {
    let topic = p.source.topics[&event_type(&e)].clone();
    let f = s.fold(
        e,
        Default::default(),
        &p.metrics.calendar,
        p.source.dedup_horizon_micros(),
    );
    s.count(&topic, f.as_str());
}

pub fn event_type(e: &Event) -> EventType {
    match e {
        Event::Activity(_) => EventType::Activity,
        Event::Deal(_) => EventType::Deal,
        Event::Quota(_) => EventType::Quota,
        Event::Rep(_) => EventType::Rep,
        Event::Survey(_) => EventType::Survey,
        Event::FxRate(_) => EventType::FxRate,
    }
}

pub async fn compute(p: &Arc<Pipeline>, s: &State) -> Vec<Table> {
    Engine::new(Arc::clone(&p.metrics))
        .compute(s, 1)
        .await
        .unwrap()
}

/// Every table as sorted JSON lines, without `snapshot_id` (the `snapshots` table's and the
/// alert tables' differ between runs that took different numbers of snapshots).
pub fn canonical(tables: &[(String, Vec<RecordBatch>)]) -> BTreeMap<String, Vec<String>> {
    tables
        .iter()
        .map(|(name, batches)| {
            let mut rows = Vec::new();
            for b in batches {
                let keep: Vec<usize> = (0..b.num_columns())
                    .filter(|i| b.schema().field(*i).name() != "snapshot_id")
                    .collect();
                let b = b.project(&keep).unwrap();
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(Vec::new());
                w.write(&b).unwrap();
                w.finish().unwrap();
                rows.extend(
                    String::from_utf8(w.into_inner())
                        .unwrap()
                        .lines()
                        .map(str::to_string),
                );
            }
            rows.sort();
            (name.clone(), rows)
        })
        .collect()
}

pub fn canonical_tables(tables: &[Table]) -> BTreeMap<String, Vec<String>> {
    canonical(
        &tables
            .iter()
            .map(|t| (t.name.clone(), t.batches.clone()))
            .collect::<Vec<_>>(),
    )
}

/// Rows of `table` as JSON objects.
pub fn rows(tables: &[Table], table: &str) -> Vec<serde_json::Value> {
    let t = tables
        .iter()
        .find(|t| t.name == table)
        .unwrap_or_else(|| panic!("no table {table}"));
    json_rows(&t.batches)
}

/// Rows of `batches` as JSON objects (a NULL column is absent from its row's object).
pub fn json_rows(batches: &[RecordBatch]) -> Vec<serde_json::Value> {
    let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in batches {
        w.write(&decimals_as_text(b)).unwrap();
    }
    w.finish().unwrap();
    let bytes = w.into_inner();
    if bytes.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice(&bytes).unwrap()
}

/// Decimal columns cast to text ("100000.00"), so JSON keeps their scale.
fn decimals_as_text(b: &RecordBatch) -> RecordBatch {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::new();
    let mut cols = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if matches!(f.data_type(), DataType::Decimal128(..)) {
            cols.push(datafusion::arrow::compute::cast(c, &DataType::Utf8).unwrap());
            fields.push(Field::new(f.name(), DataType::Utf8, true));
        } else {
            cols.push(c.clone());
            fields.push(f.as_ref().clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

/// A real HTTP/1.1 server on a loopback port that receives webhooks: it answers 500 to the
/// first `fail_first` requests and while `failing` is set, 400 to anything but a JSON POST to
/// its path, 200 otherwise, and keeps the JSON bodies of the requests it accepted.
pub struct HookServer {
    pub url: String,
    state: Arc<std::sync::Mutex<HookState>>,
}

#[derive(Default)]
struct HookState {
    fail_first: usize,
    failing: bool,
    requests: usize,
    accepted: Vec<serde_json::Value>,
}

impl HookServer {
    pub fn start(fail_first: usize) -> HookServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/quotaflow", listener.local_addr().unwrap());
        let state = Arc::new(std::sync::Mutex::new(HookState {
            fail_first,
            ..HookState::default()
        }));
        let shared = Arc::clone(&state);
        // A thread per connection, and a connection that breaks off (a client stopped
        // mid-request) ends only that thread: one stuck or broken connection must not keep
        // the server from answering the next client.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = HookServer::answer(conn, &shared);
                });
            }
        });
        HookServer { url, state }
    }

    /// Reads one request from `conn` and answers it (`connection: close`).
    fn answer(
        mut conn: std::net::TcpStream,
        shared: &std::sync::Mutex<HookState>,
    ) -> std::io::Result<()> {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        let mut json = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            json |= h == "content-type: application/json";
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let status = {
            let mut s = shared.lock().unwrap();
            s.requests += 1;
            let parsed = serde_json::from_slice::<serde_json::Value>(&body);
            if !line.starts_with("POST /hooks/quotaflow ") || !json || parsed.is_err() {
                // Counted, never accepted: a test that expects deliveries then fails.
                "400 Bad Request"
            } else if s.requests <= s.fail_first || s.failing {
                "500 Internal Server Error"
            } else {
                s.accepted.push(parsed.unwrap_or_default());
                "200 OK"
            }
        };
        write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
    }

    /// Bodies of the requests answered 200, in arrival order.
    pub fn accepted(&self) -> Vec<serde_json::Value> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Every request received, failed ones included.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }
}

/// Checks an alert event against `schemas/alert_event.json`: required keys, no others, each
/// value of the declared type(s) and within its enum.
pub fn assert_alert_event_schema(event: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("schemas/alert_event.json").unwrap())
            .unwrap();
    let obj = event.as_object().unwrap();
    let props = schema["properties"].as_object().unwrap();
    for k in schema["required"].as_array().unwrap() {
        assert!(
            obj.contains_key(k.as_str().unwrap()),
            "{k} missing in {event}"
        );
    }
    for (k, v) in obj {
        let p = props
            .get(k)
            .unwrap_or_else(|| panic!("{k} is not in the schema: {event}"));
        let types: Vec<&str> = match &p["type"] {
            serde_json::Value::String(t) => vec![t.as_str()],
            ts => ts
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect(),
        };
        let is = |t: &str| match t {
            "string" => v.is_string(),
            "number" => v.is_number(),
            "integer" => v.is_u64() || v.is_i64(),
            "null" => v.is_null(),
            _ => false,
        };
        assert!(types.iter().any(|t| is(t)), "{k} = {v} is not {types:?}");
        if let Some(allowed) = p["enum"].as_array() {
            assert!(allowed.contains(v), "{k} = {v} is not one of {allowed:?}");
        }
    }
}

/// Every message of partition 0 of `topic`, from the start to its end, as JSON values.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<(String, serde_json::Value)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{topic}"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no end of {topic} within 60 s"
        );
        match consumer.poll(std::time::Duration::from_millis(500)) {
            Some(Ok(m)) => out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                serde_json::from_slice(m.payload().unwrap_or_default()).unwrap(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
}
