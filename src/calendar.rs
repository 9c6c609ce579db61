//! The fiscal calendar and the pipeline's time zone: which day an instant falls on, and which
//! fiscal month, quarter and year a day belongs to. Pure functions; SQL reaches them as UDFs.

use chrono::{Datelike, Months, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::event::{Day, Micros};

/// Period types of the metric tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeriodType {
    Month,
    Quarter,
    Year,
}

impl PeriodType {
    pub const ALL: [PeriodType; 3] = [PeriodType::Month, PeriodType::Quarter, PeriodType::Year];

    pub fn parse(s: &str) -> Option<PeriodType> {
        PeriodType::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PeriodType::Month => "month",
            PeriodType::Quarter => "quarter",
            PeriodType::Year => "year",
        }
    }

    fn months(self) -> u32 {
        match self {
            PeriodType::Month => 1,
            PeriodType::Quarter => 3,
            PeriodType::Year => 12,
        }
    }
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 exists"),
};

/// Days since 1970-01-01 of a calendar date.
pub fn day_number(d: NaiveDate) -> Day {
    (d - EPOCH).num_days() as Day
}

/// The calendar date of a day number.
pub fn date_of(day: Day) -> NaiveDate {
    EPOCH + chrono::Duration::days(i64::from(day))
}

/// The Monday of the ISO week containing `day`.
pub fn week_start(day: Day) -> Day {
    day - date_of(day).weekday().num_days_from_monday() as Day
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Fiscal calendar plus time zone, from the pipeline file.
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    /// First month of the fiscal year, 1..=12.
    pub fiscal_year_start_month: u32,
    pub timezone: Tz,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            fiscal_year_start_month: 1,
            timezone: Tz::UTC,
        }
    }
}

impl Calendar {
    /// The date of an instant in the pipeline's time zone.
    pub fn day_of(&self, t: Micros) -> Day {
        let Some(utc) = chrono::DateTime::from_timestamp_micros(t) else {
            return 0;
        };
        if self.timezone == Tz::UTC {
            // No offset to look up (about 5 % of the reading thread's time went there): whole
            // days since the epoch.
            return t.div_euclid(MICROS_PER_DAY) as Day;
        }
        day_number(
            self.timezone
                .from_utc_datetime(&utc.naive_utc())
                .date_naive(),
        )
    }

    /// First day of the fiscal period of type `p` that contains `day`.
    pub fn period_start(&self, p: PeriodType, day: Day) -> Day {
        let d = date_of(day);
        // Months since the start of the fiscal year that contains d.
        let into_year = (d.month() + 12 - self.fiscal_year_start_month) % 12;
        let back = into_year % p.months(); // months back to the start of the period
        let first_of_month = d.with_day(1).unwrap_or(d);
        let start = first_of_month
            .checked_sub_months(Months::new(back))
            .unwrap_or(first_of_month);
        day_number(start)
    }

    /// Last day (inclusive) of the period of type `p` starting on `start`.
    pub fn period_end(&self, p: PeriodType, start: Day) -> Day {
        let s = date_of(start);
        let next = s.checked_add_months(Months::new(p.months())).unwrap_or(s);
        day_number(next) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Day {
        day_number(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap())
    }

    #[test]
    fn fiscal_periods_follow_the_start_month() {
        let jan = Calendar::default();
        assert_eq!(
            jan.period_start(PeriodType::Quarter, d("2026-05-17")),
            d("2026-04-01")
        );
        assert_eq!(
            jan.period_start(PeriodType::Year, d("2026-05-17")),
            d("2026-01-01")
        );
        assert_eq!(
            jan.period_end(PeriodType::Quarter, d("2026-04-01")),
            d("2026-06-30")
        );
        let feb = Calendar {
            fiscal_year_start_month: 2,
            ..Calendar::default()
        };
        assert_eq!(
            feb.period_start(PeriodType::Quarter, d("2026-01-31")),
            d("2025-11-01")
        );
        assert_eq!(
            feb.period_start(PeriodType::Year, d("2026-01-31")),
            d("2025-02-01")
        );
        assert_eq!(
            feb.period_start(PeriodType::Year, d("2026-02-01")),
            d("2026-02-01")
        );
        assert_eq!(
            feb.period_start(PeriodType::Month, d("2026-02-28")),
            d("2026-02-01")
        );
        assert_eq!(
            feb.period_end(PeriodType::Year, d("2026-02-01")),
            d("2027-01-31")
        );
    }

    #[test]
    fn day_of_uses_the_time_zone() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-10-05T23:30:00Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(Calendar::default().day_of(t), d("2026-10-05"));
        let berlin = Calendar {
            timezone: chrono_tz::Europe::Berlin,
            ..Calendar::default()
        };
        assert_eq!(berlin.day_of(t), d("2026-10-06"));
    }

    /// UTC's shortcut gives the day chrono's time-zone conversion gives, before the epoch too.
    #[test]
    fn utc_days_match_the_time_zone_path() {
        let utc = Calendar::default();
        let via_tz = |t: i64| {
            let dt = chrono::DateTime::from_timestamp_micros(t).unwrap();
            day_number(Tz::UTC.from_utc_datetime(&dt.naive_utc()).date_naive())
        };
        for t in [
            0,
            -1,
            1,
            MICROS_PER_DAY - 1,
            MICROS_PER_DAY,
            -MICROS_PER_DAY,
            -MICROS_PER_DAY - 1,
            1_790_000_000_123_456,
            -2_208_988_800_000_001,
            253_402_300_799_999_999,
        ] {
            assert_eq!(utc.day_of(t), via_tz(t), "t = {t}");
        }
    }
}
