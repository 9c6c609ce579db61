//! Helpers shared by the test modules.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use quotaflow::config::Pipeline;
use quotaflow::engine::{Engine, Table};
use quotaflow::event::Event;
use quotaflow::source::decode::{BadInput, DecodeLimits, Decoder};
use quotaflow::source::schema::EventType;
use quotaflow::state::State;

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
pub fn pipeline_with(edit: impl Fn(String) -> String) -> Arc<Pipeline> {
    let text = edit(std::fs::read_to_string("pipelines/default.toml").unwrap());
    Arc::new(
        Pipeline::parse(&text, "edited.toml", &|rel| {
            std::fs::read_to_string(format!("pipelines/{rel}")).map_err(|e| e.to_string())
        })
        .unwrap(),
    )
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
    let topic = p.topics[&event_type(&e)].clone();
    let f = s.fold(e, &p.calendar, p.dedup_horizon_micros());
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
    Engine::new(Arc::clone(p)).compute(s, 1).await.unwrap()
}

/// Every table as sorted JSON lines, without `snapshot_id` (which differs between runs that
/// took different numbers of snapshots).
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
    let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    for b in &t.batches {
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
