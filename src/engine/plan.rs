//! What a snapshot evaluates: the table declarations and, from what changed since the last
//! cut, the plan of one snapshot.
//!
//! Every built-in table declares its partitioning in [`DECLARATIONS`]; what it reads comes
//! from its SQL (the names it uses, followed through the helper views to the state tables,
//! [`INPUTS`]). A snapshot then
//! - skips a published table none of whose inputs changed (it gets no commit),
//! - evaluates the same SQL files over the state restricted to the scope of the changed days
//!   (`state::changes::Scope`) and keeps, of a partitioned table, the partitions in scope:
//!   those are replaced, the others stay as the table's latest version has them,
//! - evaluates a whole (unpartitioned) table over unrestricted inputs.
//!
//! It evaluates everything in full (the batch path) when anything may have changed (a
//! restore after a crashed snapshot, a rep's first placement) or when the pipeline has a table or
//! helper view without a declaration, such as a custom SQL file. After a changed SQL file or
//! setting (a fingerprint), the tables it redefines and those whose inputs changed are
//! evaluated in full over the whole state, and the others not at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::config::Metrics;
use crate::state::changes::{Changes, Input, Scope};

/// How a declared table's rows are partitioned, and so which of them a scope recomputes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// By `period_start`: every period of any type starting that day.
    Periods,
    /// By the start of a fiscal quarter (a cohort).
    Quarters,
    /// By the start of a fiscal month.
    Months,
    /// By ISO week; a week reads the seven before it (`state::changes::TREND_WEEKS`) and the
    /// rep's first week, from the whole history (`rep_activity`, `rep_first_deal`).
    Weeks,
    /// One partition, computed from unrestricted inputs.
    Whole,
    /// A helper view, never published: computed over the scope when a table reads it.
    Helper,
}

/// A built-in table's declaration: its partition column and how its rows partition.
#[derive(Debug, Clone, Copy)]
pub struct Declaration {
    pub name: &'static str,
    pub partition_by: Option<&'static str>,
    pub partitioning: Partitioning,
}

const fn d(
    name: &'static str,
    partition_by: Option<&'static str>,
    partitioning: Partitioning,
) -> Declaration {
    Declaration {
        name,
        partition_by,
        partitioning,
    }
}

const P: Option<&str> = Some("period_start");

/// The declared tables: the built-in SQL files. A pipeline table uses its declaration only
/// when its SQL is the built-in file's text and its `partition_by` the declared one.
pub const DECLARATIONS: &[Declaration] = &[
    d("rep_hierarchy", None, Partitioning::Helper),
    d("rep_levels", None, Partitioning::Helper),
    d("reps", None, Partitioning::Helper),
    d("rep_periods", None, Partitioning::Helper),
    d("activity_parts", None, Partitioning::Helper),
    d("quota_parts", None, Partitioning::Helper),
    d("quota_totals", None, Partitioning::Helper),
    d("deals_by_period", None, Partitioning::Helper),
    d("rep_daily", Some("month_start"), Partitioning::Months),
    d("deals_current", Some("close_month"), Partitioning::Months),
    d("attainment", P, Partitioning::Periods),
    d("forecast", P, Partitioning::Periods),
    d("win_rates", P, Partitioning::Periods),
    d("activity_kpis", P, Partitioning::Periods),
    d("performance", P, Partitioning::Periods),
    d("leaderboard", P, Partitioning::Periods),
    d("commissions", P, Partitioning::Periods),
    d(
        "stage_conversion",
        Some("cohort_quarter"),
        Partitioning::Quarters,
    ),
    d("trends", Some("week_start"), Partitioning::Weeks),
    d("survey_responses", None, Partitioning::Whole),
    d("survey_nps", None, Partitioning::Whole),
    d("data_quality", None, Partitioning::Whole),
    d("dead_letters", None, Partitioning::Whole),
];

/// What each state table (and UDF) holds, by the inputs that change it.
pub const INPUTS: &[(&str, &[Input])] = &[
    ("activity_days", &[Input::Activities]),
    ("activity_periods", &[Input::Activities]),
    ("activity_weeks", &[Input::Activities]),
    ("rep_activity", &[Input::Activities]),
    ("deals", &[Input::Deals]),
    ("rep_first_deal", &[Input::Deals]),
    ("quotas", &[Input::Quotas]),
    ("roster", &[Input::Roster]),
    ("roster_ranges", &[Input::Roster]),
    ("fx_rates", &[Input::Fx]),
    ("to_corporate", &[Input::Fx]),
    ("unconverted", &[Input::Deals, Input::Quotas, Input::Fx]),
    ("surveys", &[Input::Surveys]),
    ("quality_counts", &[Input::Quality]),
    ("dead_letter_log", &[Input::DeadLetters]),
    ("clock", &[Input::Day]),
    // `as_of` and `snapshot_id` (of `clock`) change with every message read.
    ("as_of", &[Input::Quality]),
    ("snapshot_id", &[Input::Quality]),
    // Its rows span the days the state holds, but a period only joins where a table has
    // facts, and those are in the scope: the built-in files depend on its as_of columns.
    ("calendar", &[Input::Day]),
    ("weeks", &[Input::Day, Input::Activities, Input::Deals]),
    ("rep_ids", &[Input::Reps]),
];

/// The whole identifiers of a SQL text, lower-cased, `--` comments left out.
pub fn words(sql: &str) -> BTreeSet<String> {
    sql.lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The pipeline's statements analysed once: what each reads, which are declared.
#[derive(Debug, Clone)]
pub struct Analysis {
    /// Per statement (the SQL files in order), its declaration if it has one.
    pub declared: Vec<Option<Declaration>>,
    /// Per statement, the inputs it reads, through the statements before it.
    pub inputs: Vec<BTreeSet<Input>>,
    /// Per statement, the earlier statements it names.
    pub reads: Vec<BTreeSet<usize>>,
    /// Per alert rule, what it reads.
    pub rules: Vec<RuleReads>,
    /// The names each statement uses ([`words`]): the SQL files in order, then the rules.
    pub words: Vec<BTreeSet<String>>,
    /// Whether snapshots can be incremental; if not, why not.
    pub full_because: Option<String>,
}

impl Analysis {
    pub fn of(p: &Metrics) -> Analysis {
        let base: HashMap<&str, &[Input]> = INPUTS.iter().copied().collect();
        let scoped: BTreeSet<&str> = crate::state::tables::SCOPED.into_iter().collect();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut declared = Vec::new();
        let mut inputs: Vec<BTreeSet<Input>> = Vec::new();
        let mut reads = Vec::new();
        // Statements whose rows are partial under a scope (they read a scoped state table).
        let mut partial: Vec<bool> = Vec::new();
        let mut full_because = None;
        let words: Vec<BTreeSet<String>> = (p.tables.iter().map(|t| &t.sql))
            .chain(p.alerts.iter().map(|a| &a.sql))
            .map(|sql| words(sql))
            .collect();
        let trace = |used: &BTreeSet<String>,
                     by_name: &HashMap<String, usize>,
                     inputs: &[BTreeSet<Input>],
                     partial: &[bool]| {
            let mut ins = BTreeSet::new();
            let mut rd = BTreeSet::new();
            let mut part = false;
            for w in used {
                if let Some(i) = by_name.get(w) {
                    ins.extend(inputs[*i].iter().copied());
                    rd.insert(*i);
                    part |= partial[*i];
                } else if let Some(x) = base.get(w.as_str()) {
                    ins.extend(x.iter().copied());
                    part |= scoped.contains(w.as_str());
                }
            }
            (ins, rd, part)
        };
        for (i, t) in p.tables.iter().enumerate() {
            let decl = DECLARATIONS.iter().copied().find(|d| {
                d.name == t.name
                    && d.partition_by == t.partition_by.as_deref()
                    && crate::config::builtin::sql(&format!("{}.sql", d.name))
                        .is_ok_and(|text| text == t.sql)
                    && (d.partitioning == Partitioning::Helper) != t.publish
            });
            if decl.is_none() && full_because.is_none() {
                full_because = Some(format!(
                    "table `{}` ({}) has no declaration: it is not a built-in SQL file as shipped",
                    t.name, t.origin
                ));
            }
            let (ins, rd, part) = trace(&words[i], &by_name, &inputs, &partial);
            let whole = decl.is_some_and(|d| d.partitioning == Partitioning::Whole);
            if whole && part && full_because.is_none() {
                full_because = Some(format!(
                    "table `{}` is whole but reads a table a snapshot's scope restricts",
                    t.name
                ));
            }
            declared.push(decl);
            inputs.push(ins);
            reads.push(rd);
            partial.push(part);
            by_name.insert(t.name.to_ascii_lowercase(), i);
        }
        let mut rules = Vec::new();
        for (r, used) in p.alerts.iter().zip(&words[p.tables.len()..]) {
            let (ins, rd, _) = trace(used, &by_name, &inputs, &partial);
            // A rule sees each published table whole; a helper or state table it names must
            // not be one a scope restricts.
            let restricted = used.iter().find(|w| {
                scoped.contains(w.as_str())
                    || by_name
                        .get(*w)
                        .is_some_and(|i| partial[*i] && !p.tables[*i].publish)
            });
            if let (Some(w), None) = (restricted, &full_because) {
                full_because = Some(format!(
                    "alert rule `{}` reads `{w}`, which a snapshot's scope restricts",
                    r.name
                ));
            }
            let (tables, helpers) = rd.into_iter().partition(|i| p.tables[*i].publish);
            rules.push(RuleReads {
                inputs: ins,
                tables,
                helpers,
            });
        }
        Analysis {
            declared,
            inputs,
            reads,
            rules,
            words,
            full_because,
        }
    }

    /// Per statement, whether a snapshot computes it: every table it publishes to, the helper
    /// views of every rule it evaluates, and everything those read, down the statements.
    fn computed(&self, publish: &[Publish], evaluate: &[bool]) -> Vec<bool> {
        let mut compute: Vec<bool> = publish.iter().map(|p| *p != Publish::Unchanged).collect();
        for (rule, on) in self.rules.iter().zip(evaluate) {
            if *on {
                for h in &rule.helpers {
                    compute[*h] = true;
                }
            }
        }
        // A statement reads only statements before it: one pass from the last settles it.
        for i in (0..compute.len()).rev() {
            if compute[i] {
                for r in &self.reads[i] {
                    compute[*r] = true;
                }
            }
        }
        compute
    }
}

/// What one alert rule reads.
#[derive(Debug, Clone)]
pub struct RuleReads {
    /// The inputs it reads, through the statements it names.
    pub inputs: BTreeSet<Input>,
    /// The published tables it names: read whole, merged with their latest versions.
    pub tables: BTreeSet<usize>,
    /// The helper views it names: computed whenever the rule is evaluated.
    pub helpers: BTreeSet<usize>,
}

/// What one published table does in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publish {
    /// Computed in full: replaces every partition.
    Full,
    /// Computed over the scope: replaces these partitions (their values, as Delta writes
    /// them); the others stay.
    Partitions(BTreeSet<String>),
    /// Not computed: its inputs did not change.
    Unchanged,
}

/// The plan of one snapshot.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The state tables' restriction (`None`: unrestricted, the batch path).
    pub scope: Option<Scope>,
    /// Per statement, whether it is computed.
    pub compute: Vec<bool>,
    /// Per statement, what its publication does (helper views: `Unchanged`).
    pub publish: Vec<Publish>,
    /// Per alert rule, whether it is evaluated (not: its inputs did not change, and its
    /// alerts stay as they are).
    pub rules: Vec<bool>,
}

impl Plan {
    /// Everything computed over the whole state.
    pub fn full(a: &Analysis, p: &Metrics) -> Plan {
        Plan {
            scope: None,
            compute: vec![true; p.tables.len()],
            publish: p
                .tables
                .iter()
                .map(|t| {
                    if t.publish {
                        Publish::Full
                    } else {
                        Publish::Unchanged
                    }
                })
                .collect(),
            rules: vec![true; a.rules.len()],
        }
    }

    /// The plan for `changes`, with `bounds` the days the state holds.
    pub fn of(a: &Analysis, p: &Metrics, changes: &Changes, bounds: Option<(i32, i32)>) -> Plan {
        if changes.all || a.full_because.is_some() {
            return Plan::full(a, p);
        }
        if !changes.redefined.is_empty() {
            return Plan::redefined(a, p, changes);
        }
        let hi = bounds.map_or(0, |(_, hi)| hi);
        let scope = Scope::of(&changes.days, &p.calendar, hi)
            .activities(&changes.activity_days, &p.calendar, hi)
            .cohorts(&changes.created_days, &p.calendar);
        let activities_alone = BTreeSet::from([Input::Activities]);
        let values = |set: &BTreeSet<i32>| {
            set.iter()
                .map(|d| crate::calendar::date_of(*d).to_string())
                .collect()
        };
        let publish: Vec<Publish> = p
            .tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if !(t.publish && changes.touches(&a.inputs[i])) {
                    return Publish::Unchanged;
                }
                match a.declared[i].map(|d| d.partitioning) {
                    Some(Partitioning::Periods) => Publish::Partitions(values(&scope.periods)),
                    Some(Partitioning::Quarters) => Publish::Partitions(values(&scope.quarters)),
                    // A month where only other inputs changed holds the same rows of a
                    // table over the activities alone.
                    Some(Partitioning::Months) if a.inputs[i] == activities_alone => {
                        Publish::Partitions(values(&scope.activity_months))
                    }
                    Some(Partitioning::Months) => Publish::Partitions(values(&scope.months)),
                    Some(Partitioning::Weeks) => Publish::Partitions(values(&scope.weeks)),
                    _ => Publish::Full,
                }
            })
            .collect();
        let rules: Vec<bool> = a.rules.iter().map(|r| changes.touches(&r.inputs)).collect();
        let compute = a.computed(&publish, &rules);
        Plan {
            scope: Some(scope),
            compute,
            publish,
            rules,
        }
    }

    /// After a change of SQL or settings: the redefined tables and those whose inputs changed,
    /// each computed in full over the whole state; the others unchanged.
    fn redefined(a: &Analysis, p: &Metrics, changes: &Changes) -> Plan {
        let n = p.tables.len();
        let redefined: BTreeSet<usize> = (0..n)
            .filter(|i| p.tables[*i].publish && changes.redefined.contains(&p.tables[*i].name))
            .collect();
        let publish: Vec<Publish> = (0..n)
            .map(|i| {
                if p.tables[i].publish && (changes.touches(&a.inputs[i]) || redefined.contains(&i))
                {
                    Publish::Full
                } else {
                    Publish::Unchanged
                }
            })
            .collect();
        let rules: Vec<bool> = a
            .rules
            .iter()
            .zip(&p.alerts)
            .map(|(reads, r)| {
                changes.touches(&reads.inputs)
                    || !reads.tables.is_disjoint(&redefined)
                    || changes.redefined.contains(&rule_key(&r.name))
            })
            .collect();
        let compute = a.computed(&publish, &rules);
        Plan {
            scope: None,
            compute,
            publish,
            rules,
        }
    }

    /// The published tables an evaluated rule names that this plan does not compute whole,
    /// with the partitions it replaces: a rule reads them merged with the latest version.
    pub fn merges(&self, a: &Analysis) -> BTreeMap<usize, Publish> {
        let mut out = BTreeMap::new();
        for (rule, on) in a.rules.iter().zip(&self.rules) {
            if !on {
                continue;
            }
            for t in &rule.tables {
                if self.publish[*t] != Publish::Full {
                    out.insert(*t, self.publish[*t].clone());
                }
            }
        }
        out
    }
}

/// Per published table, a fingerprint of what decides its rows besides the state: its SQL and
/// that of every helper view it reads, its partition column, and the settings tables (stage
/// table, leaderboard weights, commission plan, ...) and UDF settings they name. A table
/// whose fingerprint differs from the checkpoint's is recomputed in full. Per alert rule
/// ([`rule_key`]), one of its SQL, severity and description.
pub fn fingerprints(p: &Metrics) -> BTreeMap<String, String> {
    let a = Analysis::of(p);
    let base: BTreeSet<&str> = INPUTS.iter().map(|(n, _)| *n).collect();
    let settings: Vec<(&str, String)> =
        crate::state::tables::build(&crate::state::State::default(), p, 0, None, &|_| true)
            .map(|t| {
                t.into_iter()
                    .filter(|(n, _)| !base.contains(n))
                    .map(|(n, b)| (n, format!("{b:?}")))
                    .collect()
            })
            .unwrap_or_default();
    let mut out = BTreeMap::new();
    for (i, t) in p.tables.iter().enumerate().filter(|(_, t)| t.publish) {
        let mut closure = BTreeSet::from([i]);
        let mut todo = vec![i];
        while let Some(j) = todo.pop() {
            for r in &a.reads[j] {
                if closure.insert(*r) {
                    todo.push(*r);
                }
            }
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(format!("{:?}", t.partition_by).as_bytes());
        let mut named = BTreeSet::new();
        for j in &closure {
            h.update(p.tables[*j].sql.as_bytes());
            named.extend(words(&p.tables[*j].sql));
        }
        for (n, text) in &settings {
            if named.contains(*n) {
                h.update(text.as_bytes());
            }
        }
        if named.contains("commission") {
            h.update(format!("{:?}", p.commissions).as_bytes());
        }
        out.insert(t.name.clone(), format!("{:032x}", h.digest128()));
    }
    for r in &p.alerts {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for part in [&r.sql, &r.severity, &r.description] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        out.insert(rule_key(&r.name), format!("{:032x}", h.digest128()));
    }
    out
}

/// An alert rule's key among the fingerprints: a rule whose SQL (parameters filled in),
/// severity or description changed, or a new rule, is evaluated at the next snapshot.
pub fn rule_key(name: &str) -> String {
    format!("rule:{name}")
}
