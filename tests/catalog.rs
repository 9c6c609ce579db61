//! The one table catalog (`quotaflow::catalog`) against the code that builds the tables, and
//! the SQL reference in `docs/sql.md` generated from it: the section between the markers must
//! be exactly what `reference()` renders (`QUOTAFLOW_BLESS=1` rewrites it).

use datafusion::arrow::datatypes::{DataType, Schema};

use quotaflow::catalog::{self, Origin, PROVIDED};
use quotaflow::config::Pipeline;
use quotaflow::state::{tables, State};

const BEGIN: &str =
    "<!-- catalog: generated from src/catalog.rs by tests/catalog.rs; do not edit -->";
const END: &str = "<!-- catalog: end -->";

/// Every provided table with its schema, as the code builds it over an empty state.
fn schemas() -> Vec<(&'static str, Schema)> {
    let p = Pipeline::builtin().unwrap();
    let state = State::default();
    let mut out: Vec<(&'static str, Schema)> =
        tables::build(&state, &p.metrics, 0, None, &|_| true)
            .unwrap()
            .into_iter()
            .map(|(name, b)| (name, b.schema().as_ref().clone()))
            .collect();
    out.push((
        "unconverted",
        quotaflow::engine::udf::unconverted(&state, &Default::default())
            .unwrap()
            .schema()
            .as_ref()
            .clone(),
    ));
    out.push((
        "alerts",
        tables::alerts(&state.alerts, |_| 0)
            .unwrap()
            .schema()
            .as_ref()
            .clone(),
    ));
    out.push((
        "alert_deliveries",
        tables::alert_deliveries(&state)
            .unwrap()
            .schema()
            .as_ref()
            .clone(),
    ));
    out.push((
        "snapshots",
        quotaflow::snapshot::retention::table(&[], &p.metrics.calendar)
            .unwrap()
            .schema()
            .as_ref()
            .clone(),
    ));
    out
}

#[test]
fn the_catalog_lists_exactly_the_tables_the_code_builds() {
    let built: Vec<&str> = schemas().iter().map(|(n, _)| *n).collect();
    let mut listed: Vec<&str> = PROVIDED.iter().map(|p| p.name).collect();
    let mut sorted = built.clone();
    sorted.sort_unstable();
    listed.sort_unstable();
    assert_eq!(
        sorted, listed,
        "src/catalog.rs and the table builders disagree"
    );
    // The state and config tables are what the SQL reads; the alert tables come after it.
    let state_built = &built[..built.len() - 3];
    for p in catalog::of(Origin::Written) {
        assert!(
            !state_built.contains(&p.name),
            "{} is built for the SQL",
            p.name
        );
    }
}

fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::UInt32 => "INT UNSIGNED".into(),
        DataType::UInt64 => "BIGINT UNSIGNED".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP (UTC)".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        other => format!("{other}"),
    }
}

/// The reference section of docs/sql.md.
fn reference() -> String {
    let schemas = schemas();
    let mut out = String::new();
    for (origin, heading) in [
        (Origin::State, "Folded from the events"),
        (Origin::Config, "From the pipeline file"),
        (
            Origin::Written,
            "Written with the snapshot, after the SQL and the rules ran (not readable by SQL files)",
        ),
    ] {
        out.push_str(&format!(
            "\n{heading}:\n\n| table | columns | a row is |\n|---|---|---|\n"
        ));
        for p in catalog::of(origin) {
            let (_, schema) = schemas.iter().find(|(n, _)| *n == p.name).unwrap();
            let cols: Vec<String> = schema
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), sql_type(f.data_type())))
                .collect();
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                p.name,
                cols.join(", "),
                p.about
            ));
        }
    }
    out
}

#[test]
fn docs_sql_md_holds_the_reference_generated_from_the_catalog() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/sql.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let (Some(b), Some(e)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/sql.md has no `{BEGIN}` … `{END}` section");
    };
    let current = &doc[b + BEGIN.len()..e];
    let want = format!("\n{}\n", reference().trim());
    if current != want {
        if std::env::var_os("QUOTAFLOW_BLESS").is_some() {
            let fixed = format!("{}{BEGIN}{want}{}", &doc[..b], &doc[e..]);
            std::fs::write(&path, fixed).unwrap();
        } else {
            panic!(
                "docs/sql.md's table reference is not what src/catalog.rs and the table builders \
                 give; run `QUOTAFLOW_BLESS=1 cargo nextest run --release catalog` and commit it. Want:\n{want}"
            );
        }
    }
}
