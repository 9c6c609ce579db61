//! The one table catalog: every table quotaflow provides to a pipeline's SQL besides the
//! pipeline's own, with where it comes from and what it holds. It is the single list that
//! `config` refuses as pipeline table names, that `state::tables` and the alert tables are
//! checked against (tests), and that the SQL reference in `docs/sql.md` is generated from
//! (with the columns of the real Arrow schemas: `tests/catalog.rs`).

/// Where a provided table's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Folded from the events (`state::tables`).
    State,
    /// The pipeline file's settings, as rows (`state::tables`).
    Config,
    /// Written with the snapshot after the SQL and the rules ran (the alert state, the
    /// retained snapshots); not readable by SQL files.
    Written,
}

/// A table quotaflow provides.
#[derive(Debug, Clone, Copy)]
pub struct Provided {
    pub name: &'static str,
    pub origin: Origin,
    /// One line for the reference: what a row is.
    pub about: &'static str,
}

const fn t(name: &'static str, origin: Origin, about: &'static str) -> Provided {
    Provided {
        name,
        origin,
        about,
    }
}

/// Every provided table, in the order the reference lists them.
pub const PROVIDED: &[Provided] = &[
    t("activity_days", Origin::State, "activity counters of one rep on one day"),
    t("activity_periods", Origin::State, "the counters of `activity_days` summed per rep and fiscal period (kept up to date as activities arrive)"),
    t("activity_weeks", Origin::State, "the counters of `activity_days` summed per rep and ISO week (kept up to date the same way)"),
    t("deals", Origin::State, "the latest version of each deal, with when it entered its stage and its furthest funnel rank"),
    t("quotas", Origin::State, "the latest version per rep and period_start"),
    t("roster", Origin::State, "the latest version of each rep (its fields; for its team on a given day use `roster_ranges`)"),
    t("roster_ranges", Origin::State, "the effective-dated hierarchy: per rep in the roster, the days `valid_from`..`valid_to` (inclusive; the first range starts 0001-01-01, the last ends 9999-12-31) in which it sat in `team_id` and `region`"),
    t("fx_rates", Origin::State, "the latest version per currency and effective_date"),
    t("surveys", Origin::State, "one row per survey response"),
    t("quality_counts", Origin::State, "messages per topic and outcome or dead-letter reason"),
    t("dead_letter_log", Origin::State, "the latest dead letters, payloads cut to 4 KiB"),
    t("clock", Origin::State, "one row: the snapshot id and the event clock"),
    t("calendar", Origin::State, "every fiscal period the state touches, with elapsed and remaining days"),
    t("rep_first_deal", Origin::State, "the earliest deal version naming each rep"),
    t("rep_ids", Origin::State, "every rep any fact or entity of the state names"),
    t("rep_activity", Origin::State, "the first and last day of each rep's activities"),
    t("unconverted", Origin::State, "per event type (deal, quota), the latest deal versions and quota records `to_corporate` cannot convert"),
    t("weeks", Origin::State, "every ISO week from the first activity or deal event to as_of_date"),
    t("stages", Origin::Config, "the pipeline's stage table"),
    t("topics", Origin::Config, "the topic of each event type"),
    t("period_types", Origin::Config, "`month`, `quarter`, `year`"),
    t("leaderboard_weights", Origin::Config, "one row: the leaderboard's points per counted thing"),
    t("commission_plan", Origin::Config, "one row: the commission plan's name"),
    t("alerts", Origin::Written, "every alert lifecycle ever fired (one per alert_id), partitioned by resolved_month"),
    t("alert_deliveries", Origin::Written, "deliveries and failed attempts per target"),
    t("snapshots", Origin::Written, "one retained snapshot: its event clock, when it was written and the messages it includes"),
];

/// The provided table named `name`, if any: a pipeline table may not take such a name.
pub fn provided(name: &str) -> Option<&'static Provided> {
    PROVIDED.iter().find(|p| p.name == name)
}

/// The provided tables of one origin, in catalog order.
pub fn of(origin: Origin) -> impl Iterator<Item = &'static Provided> {
    PROVIDED.iter().filter(move |p| p.origin == origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, p) in PROVIDED.iter().enumerate() {
            assert!(
                PROVIDED[..i].iter().all(|o| o.name != p.name),
                "{} twice",
                p.name
            );
        }
        assert!(provided("activity_weeks").is_some());
        assert!(provided("attainment").is_none());
    }
}
