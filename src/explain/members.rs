//! Who a row of a level is made of: the reps of an entity and the days each belonged to it,
//! by the effective-dated hierarchy (METRICS.md "Hierarchy"), from the same validity ranges the
//! SQL joins on (`state::hierarchy::ranges`).

use std::collections::HashMap;

use crate::event::Day;
use crate::state::hierarchy::{ranges, Range, FIRST_DAY, LAST_DAY};
use crate::state::State;

/// The level of an `attainment`, `forecast` or `win_rates` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Rep,
    Team,
    Region,
    Company,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "rep" => Level::Rep,
            "team" => Level::Team,
            "region" => Level::Region,
            "company" => Level::Company,
            _ => return None,
        })
    }
}

/// An entity of a level: a rep, a team, a region or the company (`all`).
#[derive(Debug, Clone, Copy)]
pub struct Entity<'a> {
    pub level: Level,
    pub id: &'a str,
}

/// Every rep's validity ranges; a rep missing from the roster has one range, `unassigned`.
pub struct Hierarchy<'s> {
    ranges: HashMap<&'s str, Vec<Range<'s>>>,
}

const UNASSIGNED: Range<'static> = Range {
    valid_from: FIRST_DAY,
    valid_to: LAST_DAY,
    team_id: "unassigned",
    region: "unassigned",
};

impl<'s> Hierarchy<'s> {
    pub fn of(state: &'s State) -> Hierarchy<'s> {
        Hierarchy {
            ranges: state
                .roster
                .iter()
                .map(|(rep, v)| (rep.as_str(), ranges(&v.history)))
                .collect(),
        }
    }

    /// The ranges of `rep`.
    pub fn of_rep(&self, rep: &str) -> Vec<Range<'_>> {
        match self.ranges.get(rep) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => vec![UNASSIGNED],
        }
    }

    /// The ranges of days in which `rep` belonged to `e`, as `rep_levels` has them (one per
    /// hierarchy range for teams and regions; every day for the rep itself and the company).
    pub fn member_ranges(&self, e: Entity<'_>, rep: &str) -> Vec<(Day, Day)> {
        match e.level {
            Level::Rep if rep == e.id => vec![(FIRST_DAY, LAST_DAY)],
            Level::Rep => Vec::new(),
            Level::Company if e.id == "all" => vec![(FIRST_DAY, LAST_DAY)],
            Level::Company => Vec::new(),
            Level::Team | Level::Region => self
                .of_rep(rep)
                .into_iter()
                .filter(|r| {
                    let place = if e.level == Level::Team {
                        r.team_id
                    } else {
                        r.region
                    };
                    place == e.id
                })
                .map(|r| (r.valid_from, r.valid_to))
                .collect(),
        }
    }

    /// Whether `rep` belonged to `e` on `day`.
    pub fn holds(&self, e: Entity<'_>, rep: &str, day: Day) -> bool {
        self.member_ranges(e, rep)
            .iter()
            .any(|(a, b)| *a <= day && day <= *b)
    }
}
