//! The effective-dated hierarchy: which team and region a rep belonged to on each day, from
//! every roster version received (METRICS.md "Hierarchy").
//!
//! A version's `effective_from` is the first day its team and region apply. On day d the
//! version in force is the one with the latest `effective_from` ≤ d (ties: the highest
//! version, so a new version with the same `effective_from` corrects the old one); days
//! before a rep's earliest `effective_from` take that earliest version. The state keeps one
//! [`Placement`] per version received (bounded by reps × moves); [`ranges`] turns them into
//! validity ranges that cover every day, which the SQL joins facts on by day (the provided
//! table `roster_ranges`, then `sql/rep_hierarchy.sql` and `sql/rep_levels.sql`).

use serde::{Deserialize, Serialize};

use crate::event::Day;

/// Where one roster version puts a rep, from its first day on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The version's `effective_from`, or the day of its `occurred_at` when it had none.
    pub effective_from: Day,
    pub team_id: String,
    pub region: String,
}

/// The first day of a rep's first range: 0001-01-01, so that every fact, however early, falls
/// in a range.
pub const FIRST_DAY: Day = -719_162;
/// The last day of a rep's last range: 9999-12-31.
pub const LAST_DAY: Day = 2_932_896;

/// The days `valid_from..=valid_to` in which a rep sat in `team_id` and `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range<'a> {
    pub valid_from: Day,
    pub valid_to: Day,
    pub team_id: &'a str,
    pub region: &'a str,
}

/// The validity ranges of one rep from its versions (`(version, placement)`, any order):
/// consecutive, from [`FIRST_DAY`] to [`LAST_DAY`], adjacent ranges with the same team and
/// region merged into one. Empty only when `versions` is.
pub fn ranges(versions: &[(i64, Placement)]) -> Vec<Range<'_>> {
    let mut by_day: Vec<&(i64, Placement)> = versions.iter().collect();
    by_day.sort_by_key(|(version, p)| (p.effective_from, *version));
    // The version in force from each distinct effective_from: the highest one of that day.
    let mut in_force: Vec<&Placement> = Vec::with_capacity(by_day.len());
    for (_, p) in by_day {
        match in_force.last_mut() {
            Some(last) if last.effective_from == p.effective_from => *last = p,
            _ => in_force.push(p),
        }
    }
    let mut out: Vec<Range<'_>> = Vec::with_capacity(in_force.len());
    for (i, p) in in_force.iter().enumerate() {
        let valid_to = in_force
            .get(i + 1)
            .map_or(LAST_DAY, |next| next.effective_from - 1);
        match out.last_mut() {
            Some(last) if last.team_id == p.team_id && last.region == p.region => {
                last.valid_to = valid_to;
            }
            _ => out.push(Range {
                valid_from: if i == 0 { FIRST_DAY } else { p.effective_from },
                valid_to,
                team_id: &p.team_id,
                region: &p.region,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::day_number;
    use chrono::NaiveDate;

    fn day(s: &str) -> Day {
        day_number(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())
    }

    fn v(version: i64, from: &str, team: &str, region: &str) -> (i64, Placement) {
        (
            version,
            Placement {
                effective_from: day(from),
                team_id: team.into(),
                region: region.into(),
            },
        )
    }

    fn shown(versions: &[(i64, Placement)]) -> Vec<(Day, Day, String)> {
        ranges(versions)
            .into_iter()
            .map(|r| {
                (
                    r.valid_from,
                    r.valid_to,
                    format!("{}/{}", r.team_id, r.region),
                )
            })
            .collect()
    }

    #[test]
    fn the_open_ends_are_the_first_and_last_dates() {
        assert_eq!(FIRST_DAY, day("0001-01-01"));
        assert_eq!(LAST_DAY, day("9999-12-31"));
    }

    #[test]
    fn a_move_splits_the_days_and_the_earliest_version_covers_the_past() {
        let got = shown(&[
            v(2, "2026-02-15", "na", "NA"),
            v(1, "2026-01-10", "emea", "EMEA"),
        ]);
        assert_eq!(
            got,
            [
                (FIRST_DAY, day("2026-02-14"), "emea/EMEA".to_string()),
                (day("2026-02-15"), LAST_DAY, "na/NA".to_string()),
            ]
        );
    }

    #[test]
    fn the_same_effective_from_and_a_higher_version_corrects() {
        let got = shown(&[
            v(1, "2026-01-01", "emea", "EMEA"),
            v(3, "2026-02-15", "apac", "APAC"),
            v(2, "2026-02-15", "na", "NA"),
        ]);
        assert_eq!(got[1], (day("2026-02-15"), LAST_DAY, "apac/APAC".into()));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_later_effective_from_wins_over_a_higher_version() {
        // Version 3 back-dates a stay in emea to January; version 2's move on 03-01 stands.
        let got = shown(&[
            v(1, "2026-02-01", "emea", "EMEA"),
            v(2, "2026-03-01", "na", "NA"),
            v(3, "2026-01-15", "apac", "APAC"),
        ]);
        assert_eq!(
            got,
            [
                (FIRST_DAY, day("2026-01-31"), "apac/APAC".to_string()),
                (
                    day("2026-02-01"),
                    day("2026-02-28"),
                    "emea/EMEA".to_string()
                ),
                (day("2026-03-01"), LAST_DAY, "na/NA".to_string()),
            ]
        );
    }

    #[test]
    fn versions_that_change_neither_team_nor_region_merge() {
        let got = shown(&[
            v(1, "2026-01-01", "emea", "EMEA"),
            v(2, "2026-02-01", "emea", "EMEA"),
            v(3, "2026-03-01", "emea", "UK"),
        ]);
        assert_eq!(
            got,
            [
                (FIRST_DAY, day("2026-02-28"), "emea/EMEA".to_string()),
                (day("2026-03-01"), LAST_DAY, "emea/UK".to_string()),
            ]
        );
        assert!(ranges(&[]).is_empty());
    }
}
