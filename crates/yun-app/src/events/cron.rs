//! SCF's timer schedules: seven fields, `second minute hour day month weekday year`,
//! with `,` `-` `*` `/` only, month and weekday names (`JAN`, `MON`), weekday 0 =
//! Sunday, and the day and weekday fields OR-ed when both are restricted. Written here
//! rather than taken from a cron crate: none has SCF's year field together with its OR
//! rule (croner, the usual choice, has no year).

use time::{Date, Month, PrimitiveDateTime, Time};

const FIRST_YEAR: i32 = 1970;
const LAST_YEAR: i32 = 2099;

/// The allowed values of a field, one bit each from the field's minimum (years span 130).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bits([u64; 3]);

impl Bits {
    fn set(&mut self, offset: u32) {
        self.0[offset as usize / 64] |= 1 << (offset % 64);
    }

    fn has(self, offset: u32) -> bool {
        self.0[offset as usize / 64] >> (offset % 64) & 1 == 1
    }
}

/// A parsed schedule: the allowed values of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    seconds: Bits,
    minutes: Bits,
    hours: Bits,
    days: Bits,
    months: Bits,
    weekdays: Bits,
    years: Bits,
    /// Whether the day field, the weekday field is other than `*` (both: OR-ed).
    days_restricted: bool,
    weekdays_restricted: bool,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [Field; 7] = [
    Field {
        name: "second",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    Field {
        name: "day",
        min: 1,
        max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    },
    Field {
        name: "weekday",
        min: 0,
        max: 6,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    },
    Field {
        name: "year",
        min: FIRST_YEAR as u32,
        max: LAST_YEAR as u32,
        names: &[],
    },
];

impl Field {
    fn value(&self, text: &str) -> Result<u32, String> {
        let upper = text.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            return Ok(self.min + i as u32);
        }
        let n: u32 = text
            .parse()
            .map_err(|_| format!("{} field: {text:?} is not a number", self.name))?;
        if !(self.min..=self.max).contains(&n) {
            return Err(format!(
                "{} field: {n} is out of range ({}–{})",
                self.name, self.min, self.max
            ));
        }
        Ok(n)
    }

    fn parse(&self, text: &str) -> Result<Bits, String> {
        let mut bits = Bits::default();
        for part in text.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("{} field: step {s:?} must be a positive number", self.name)
                    })?;
                    (r, step)
                }
                None => (part, 1),
            };
            let (low, high) = match range {
                "*" => (self.min, self.max),
                r => match r.split_once('-') {
                    Some((a, b)) => (self.value(a)?, self.value(b)?),
                    // `a/step` runs from a to the end, as in SCF's `1/10` example.
                    None if part.contains('/') => (self.value(r)?, self.max),
                    None => {
                        let v = self.value(r)?;
                        (v, v)
                    }
                },
            };
            if low > high {
                return Err(format!(
                    "{} field: range {range:?} runs backwards",
                    self.name
                ));
            }
            for v in (low..=high).step_by(step as usize) {
                bits.set(v - self.min);
            }
        }
        Ok(bits)
    }
}

/// Parses an SCF cron expression (exactly seven fields).
pub fn parse(expr: &str) -> Result<Schedule, String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 7 {
        return Err(format!(
            "a timer takes 7 fields (second minute hour day month weekday year), {expr:?} has {}",
            fields.len()
        ));
    }
    let mut bits = [Bits::default(); 7];
    for (i, (field, text)) in FIELDS.iter().zip(&fields).enumerate() {
        bits[i] = field.parse(text)?;
    }
    let [seconds, minutes, hours, days, months, weekdays, years] = bits;
    Ok(Schedule {
        seconds,
        minutes,
        hours,
        days,
        months,
        weekdays,
        years,
        days_restricted: fields[3] != "*",
        weekdays_restricted: fields[5] != "*",
    })
}

impl Schedule {
    fn day_matches(&self, date: Date) -> bool {
        let day = self.days.has(u32::from(date.day()) - 1);
        let weekday = self
            .weekdays
            .has(u32::from(date.weekday().number_days_from_sunday()));
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        }
    }

    /// The first firing strictly after `after` (wall-clock time in the schedule's zone),
    /// or `None` past the last allowed year.
    pub fn next_after(&self, after: PrimitiveDateTime) -> Option<PrimitiveDateTime> {
        let start = after.replace_nanosecond(0).ok()? + time::Duration::SECOND;
        for year in start.year().max(FIRST_YEAR)..=LAST_YEAR {
            if !self.years.has((year - FIRST_YEAR) as u32) {
                continue;
            }
            let first_month = if year == start.year() {
                u8::from(start.month())
            } else {
                1
            };
            for month in first_month..=12 {
                if !self.months.has(u32::from(month) - 1) {
                    continue;
                }
                let month = Month::try_from(month).ok()?;
                let this_month = (year, month) == (start.year(), start.month());
                let first_day = if this_month { start.day() } else { 1 };
                for day in first_day..=month.length(year) {
                    let date = Date::from_calendar_date(year, month, day).ok()?;
                    if !self.day_matches(date) {
                        continue;
                    }
                    let from = if date == start.date() {
                        start.time()
                    } else {
                        Time::MIDNIGHT
                    };
                    if let Some(time) = self.first_time_from(from) {
                        return Some(PrimitiveDateTime::new(date, time));
                    }
                }
            }
        }
        None
    }

    /// The first allowed time of day at or after `from`.
    fn first_time_from(&self, from: Time) -> Option<Time> {
        for hour in from.hour()..24 {
            if !self.hours.has(u32::from(hour)) {
                continue;
            }
            let first_minute = if hour == from.hour() {
                from.minute()
            } else {
                0
            };
            for minute in first_minute..60 {
                if !self.minutes.has(u32::from(minute)) {
                    continue;
                }
                let same = hour == from.hour() && minute == from.minute();
                let first_second = if same { from.second() } else { 0 };
                if let Some(second) = (first_second..60).find(|s| self.seconds.has(u32::from(*s))) {
                    return Time::from_hms(hour, minute, second).ok();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn next(expr: &str, after: PrimitiveDateTime) -> PrimitiveDateTime {
        parse(expr).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn schedules_fire_where_scf_documents() {
        let t = datetime!(2026-12-02 11:49:59.5);
        assert_eq!(next("*/5 * * * * * *", t), datetime!(2026-12-02 11:50:00));
        assert_eq!(
            next("*/5 * * * * * *", datetime!(2026-12-02 11:50:00)),
            datetime!(2026-12-02 11:50:05)
        );
        // 2026-12-02 is a Wednesday: the next weekday 10:15 is Thursday.
        assert_eq!(
            next("0 15 10 * * MON-FRI *", t),
            datetime!(2026-12-03 10:15:00)
        );
        assert_eq!(
            next("0 15 10 * * 1-5 *", datetime!(2026-12-04 11:00)),
            datetime!(2026-12-07 10:15:00)
        );
        assert_eq!(
            next("0 */30 9-17 * * * *", t),
            datetime!(2026-12-02 12:00:00)
        );
        assert_eq!(
            next("0 */30 9-17 * * * *", datetime!(2026-12-02 17:30)),
            datetime!(2026-12-03 09:00:00)
        );
        // `a/step` starts at a: 1, 11, 21, …
        assert_eq!(
            next("0 1/10 * * * * *", datetime!(2026-12-02 11:12)),
            datetime!(2026-12-02 11:21:00)
        );
        assert_eq!(next("0 0 2 1 * * *", t), datetime!(2027-01-01 02:00:00));
        // Day 31 skips the months without one; February 29 waits for a leap year.
        assert_eq!(
            next("0 0 0 31 * * *", datetime!(2027-01-31 01:00)),
            datetime!(2027-03-31 00:00:00)
        );
        assert_eq!(next("0 0 0 29 FEB * *", t), datetime!(2028-02-29 00:00:00));
        // Day and weekday restricted together are OR-ed: the 15th, or any Sunday.
        assert_eq!(
            next("0 0 0 15 * SUN *", datetime!(2026-12-02 00:00)),
            datetime!(2026-12-06 00:00:00)
        );
        assert_eq!(
            next("0 0 0 15 * SUN *", datetime!(2026-12-13 00:00)),
            datetime!(2026-12-15 00:00:00)
        );
        // The year field.
        assert_eq!(next("0 0 0 1 1 * 2030", t), datetime!(2030-01-01 00:00:00));
        assert_eq!(parse("0 0 0 1 1 * 2020").unwrap().next_after(t), None);
        assert_eq!(
            next("0,30 * * * * * *", datetime!(2026-12-31 23:59:45)),
            datetime!(2027-01-01 00:00:00)
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for (expr, says) in [
            ("* * * * * *", "7 fields"),
            ("0 0 2 1 * * * *", "7 fields"),
            ("60 * * * * * *", "second field: 60 is out of range (0–59)"),
            ("0 0 24 * * * *", "hour field: 24 is out of range"),
            ("0 0 0 0 * * *", "day field: 0 is out of range (1–31)"),
            ("0 0 0 * 13 * *", "month field: 13"),
            ("0 0 0 * * 7 *", "weekday field: 7"),
            ("0 0 0 * * * 2100", "year field: 2100"),
            ("*/0 * * * * * *", "step \"0\""),
            ("0 0 0 ? * * *", "\"?\" is not a number"),
            ("0 0 0 L * * *", "\"L\" is not a number"),
            ("5-1 * * * * * *", "runs backwards"),
            ("0 0 0 * FOO * *", "\"FOO\" is not a number"),
        ] {
            let err = parse(expr).unwrap_err();
            assert!(err.contains(says), "{expr}: {err}");
        }
    }
}
