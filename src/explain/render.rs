//! An explanation as text for a terminal (`--format table`); `--format json` is its serde form.

use std::fmt::Write;

use super::{Explanation, Input};

fn input_line(i: &Input) -> String {
    let place = match (i.partition, i.offset, i.last_offset) {
        (Some(p), Some(o), Some(l)) => format!("{}[{p}] {o}..={l}", i.topic),
        (Some(p), Some(o), None) => format!("{}[{p}] @{o}", i.topic),
        _ => format!("{} (offset not kept)", i.topic),
    };
    let version = i.version.map_or(String::new(), |v| format!(" v{v}"));
    let arrival = i
        .arrival
        .as_deref()
        .map_or(String::new(), |a| format!(" ({a})"));
    let adds = i
        .adds
        .as_deref()
        .map_or(String::new(), |a| format!("  adds {a}"));
    let fields = i
        .fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "  {:<11} {:<24}{version}{arrival}  {place}{adds}\n      {fields}\n",
        i.kind, i.key
    )
}

/// The explanation for a terminal.
pub fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let keys = e
        .keys
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(
        out,
        "{} {keys}  (snapshot {}, as of {})",
        e.table,
        e.snapshot_id,
        e.as_of.as_deref().unwrap_or("-")
    );
    let row = e
        .row
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("NULL")))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(out, "row: {row}\n");
    let verdict = if e.reproduced {
        "reproduced exactly"
    } else {
        "DOES NOT REPRODUCE the published value"
    };
    let _ = writeln!(
        out,
        "{} = {} (published {}): {verdict}\n",
        e.column,
        e.computed.as_deref().unwrap_or("NULL"),
        e.published.as_deref().unwrap_or("NULL")
    );
    let _ = writeln!(out, "arithmetic");
    for l in &e.arithmetic {
        let _ = writeln!(out, "  {l}");
    }
    let _ = writeln!(out, "\ninputs ({} of {})", e.inputs.len(), e.inputs_total);
    for i in &e.inputs {
        out.push_str(&input_line(i));
    }
    if e.contributions_total > 0 {
        let _ = writeln!(
            out,
            "\ncontributions, largest first ({} of {} reps)",
            e.contributions.len(),
            e.contributions_total
        );
        for c in &e.contributions {
            let _ = writeln!(
                out,
                "  {:<14} {} {:>14}   {}",
                c.rep_id,
                c.column,
                c.value.as_deref().unwrap_or("NULL"),
                c.detail
            );
        }
    }
    if let Some(h) = &e.history {
        let _ = writeln!(
            out,
            "\nhistory of {} across the retained snapshots",
            e.column
        );
        for m in h {
            let value = match (&m.value, m.row_exists) {
                (Some(v), _) => v.clone(),
                (None, true) => "NULL".into(),
                (None, false) => "(no row)".into(),
            };
            let _ = writeln!(
                out,
                "  snapshot {:>5}  as of {:<27} {value:>16}   {} inputs arrived since the snapshot before",
                m.snapshot_id,
                m.as_of.as_deref().unwrap_or("-"),
                m.arrived_total
            );
            for i in &m.arrived {
                out.push_str(&input_line(i).replace("\n  ", "\n      "));
            }
        }
    }
    out
}
