//! 5-field cron → systemd `OnCalendar=` translation.
//!
//! No crate does this translation, and getting it subtly wrong means an agent runs at
//! the wrong time, so the approach is deliberately simple: expand every cron field
//! to the exact set of values it matches, then print that set in the form systemd
//! itself prints when it normalizes a calendar expression. What cannot be expressed
//! faithfully (cron's OR between day-of-month and day-of-week, dates that never
//! occur) is rejected rather than approximated.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Why a cron expression was rejected. `Display` is one line, without the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five whitespace-separated fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week) or an @alias, found {0}"
    )]
    FieldCount(usize),
    /// An `@name` that is not one of the supported aliases.
    #[error(
        "unknown alias {0:?} (expected @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually)"
    )]
    UnknownAlias(String),
    /// A value outside its field's range.
    #[error("{field} {value} out of range {min}-{max}")]
    OutOfRange {
        /// The field (`minute`, `hour`, `day-of-month`, `month`, `day-of-week`).
        field: &'static str,
        /// The offending value.
        value: u32,
        /// Lowest allowed value.
        min: u32,
        /// Highest allowed value.
        max: u32,
    },
    /// A token that is not a number, name, `*`, range, list or step.
    #[error("{field}: {token:?} is not a valid value")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The offending token.
        token: String,
    },
    /// A range whose end is before its start (cron ranges do not wrap).
    #[error("{field}: range {token:?} goes backwards")]
    Backwards {
        /// The field.
        field: &'static str,
        /// The offending range.
        token: String,
    },
    /// A step of zero.
    #[error("{field}: step in {token:?} must be at least 1")]
    ZeroStep {
        /// The field.
        field: &'static str,
        /// The offending token.
        token: String,
    },
    /// Both day fields restricted: cron ORs them, systemd ANDs them.
    #[error(
        "day-of-month and day-of-week are both restricted; cron runs when either matches but systemd only when both do, so set one of them to *"
    )]
    DomAndDow,
    /// The selected days of month exist in none of the selected months.
    #[error("day-of-month {dom} never occurs in the selected months, so the schedule never fires")]
    NeverFires {
        /// The smallest selected day of month.
        dom: u32,
    },
}

/// A cron field: its name in errors, its range and (for month/dow) its names.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DOM: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
// 7 is accepted as a second Sunday, as in every common cron.
const DOW: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// Translates a 5-field cron expression (or an `@alias`) into a systemd `OnCalendar=`
/// expression, already in the form `systemd-analyze calendar` prints as "Normalized form".
///
/// ```
/// use con_config::cron_to_on_calendar;
/// assert_eq!(cron_to_on_calendar("0 8 * * *").unwrap(), "*-*-* 08:00:00 UTC");
/// assert_eq!(cron_to_on_calendar("*/15 * * * 1-5").unwrap(), "Mon..Fri *-*-* *:00/15:00 UTC");
/// ```
pub fn cron_to_on_calendar(expr: &str) -> Result<String, CronError> {
    CronSchedule::parse(expr).map(|s| s.on_calendar())
}

/// A parsed 5-field cron schedule: the exact set of values each field matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: BTreeSet<u32>,
    hours: BTreeSet<u32>,
    doms: BTreeSet<u32>,
    months: BTreeSet<u32>,
    /// 0 = Sunday … 6 = Saturday.
    dows: BTreeSet<u32>,
}

impl CronSchedule {
    /// Parses a 5-field expression or an `@alias`, rejecting what systemd
    /// cannot express the same way (see [`cron_to_on_calendar`]).
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let expr = expr.trim();
        let text = match expr.strip_prefix('@') {
            Some(alias) => match alias.to_ascii_lowercase().as_str() {
                "hourly" => "0 * * * *",
                "daily" | "midnight" => "0 0 * * *",
                "weekly" => "0 0 * * 0",
                "monthly" => "0 0 1 * *",
                "yearly" | "annually" => "0 0 1 1 *",
                _ => return Err(CronError::UnknownAlias(expr.to_owned())),
            },
            None => expr,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(CronError::FieldCount(fields.len()));
        };

        let minutes = parse_field(minute, &MINUTE)?;
        let hours = parse_field(hour, &HOUR)?;
        let doms = parse_field(dom, &DOM)?;
        let months = parse_field(month, &MONTH)?;
        // Sunday is both 0 and 7 in cron; fold onto 0.
        let dows: BTreeSet<u32> = parse_field(dow, &DOW)?.into_iter().map(|d| d % 7).collect();

        // Vixie cron (and cronie) decide OR-vs-AND by whether the field text starts with
        // '*', not by what it matches: "1-31" is "restricted" and ORs with the weekday.
        // Rejecting whenever neither starts with '*' keeps us exactly on the AND side.
        if !dom.starts_with('*') && !dow.starts_with('*') {
            return Err(CronError::DomAndDow);
        }

        if let Some(&first_dom) = doms.first() {
            let longest = months.iter().map(|&m| days_in_month(m)).max().unwrap_or(31);
            if first_dom > longest {
                return Err(CronError::NeverFires { dom: first_dom });
            }
        }
        Ok(Self {
            minutes,
            hours,
            doms,
            months,
            dows,
        })
    }

    /// The equivalent systemd `OnCalendar=` expression, in systemd's normalized
    /// form. Schedules are in UTC in both supervision modes (systemd timers
    /// and the daemon's own supervisor), so an agent fires at the same instant
    /// whichever runs it, whatever the host's time zone.
    pub fn on_calendar(&self) -> String {
        let mut out = String::new();
        if self.dows.len() < 7 {
            out.push_str(&format_weekdays(&self.dows));
            out.push(' ');
        }
        let _ = write!(
            out,
            "*-{}-{} {}:{}:00",
            format_set(&self.months, &MONTH),
            format_set(&self.doms, &DOM),
            format_set(&self.hours, &HOUR),
            format_set(&self.minutes, &MINUTE),
        );
        out.push_str(" UTC");
        out
    }

    /// Whether the schedule fires in this minute (`weekday`: 0 = Sunday).
    /// Day-of-month and day-of-week are ANDed, as in systemd; `parse` rejects
    /// the expressions where cron would OR them.
    pub fn matches(&self, minute: u32, hour: u32, day: u32, month: u32, weekday: u32) -> bool {
        self.minutes.contains(&minute)
            && self.hours.contains(&hour)
            && self.doms.contains(&day)
            && self.months.contains(&month)
            && self.dows.contains(&(weekday % 7))
    }
}

/// Longest length of a month in any year (February counts leap years).
fn days_in_month(month: u32) -> u32 {
    match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Expands one cron field into the sorted set of values it matches.
fn parse_field(text: &str, spec: &FieldSpec) -> Result<BTreeSet<u32>, CronError> {
    let mut values = BTreeSet::new();
    for item in text.split(',') {
        let invalid = || CronError::Invalid {
            field: spec.name,
            token: item.to_owned(),
        };
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| invalid())?;
                if step == 0 {
                    return Err(CronError::ZeroStep {
                        field: spec.name,
                        token: item.to_owned(),
                    });
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (start, end) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(a, spec, item)?, parse_value(b, spec, item)?);
            if b < a {
                return Err(CronError::Backwards {
                    field: spec.name,
                    token: item.to_owned(),
                });
            }
            (a, b)
        } else {
            // "5/10" means different things in different crons (vixie rejects it),
            // so only ranges and '*' may carry a step.
            if step.is_some() {
                return Err(invalid());
            }
            let v = parse_value(range, spec, item)?;
            (v, v)
        };
        let step = step.unwrap_or(1) as usize;
        values.extend((start..=end).step_by(step));
    }
    Ok(values)
}

/// Parses a number or (for month/dow) a three-letter name, checking the field's range.
fn parse_value(token: &str, spec: &FieldSpec, item: &str) -> Result<u32, CronError> {
    let lower = token.to_ascii_lowercase();
    if let Some(i) = spec.names.iter().position(|n| *n == lower) {
        // Month names start at 1, weekday names at 0 (= spec.min in both cases).
        return Ok(spec.min + i as u32);
    }
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CronError::Invalid {
            field: spec.name,
            token: item.to_owned(),
        });
    }
    // All digits, so the only parse failure is overflow: out of range by definition.
    let value = token.parse::<u32>().unwrap_or(u32::MAX);
    if value < spec.min || value > spec.max {
        return Err(CronError::OutOfRange {
            field: spec.name,
            value,
            min: spec.min,
            max: spec.max,
        });
    }
    Ok(value)
}

/// Prints a value set of a time/date component the way systemd normalizes it.
///
/// A full set is `*`; an arithmetic progression of three or more values is
/// `start/step` when it runs to the end of the range (systemd repeats to the end) or
/// `start..last/step` otherwise; anything else is a list of runs, where runs of three
/// or more become `a..b`. systemd keeps such lists as given, sorted, with two digits.
fn format_set(values: &BTreeSet<u32>, spec: &FieldSpec) -> String {
    let v: Vec<u32> = values.iter().copied().collect();
    if v.len() as u32 == spec.max - spec.min + 1 {
        return "*".to_owned();
    }
    if v.len() >= 3 {
        let step = v[1] - v[0];
        if step > 1 && v.windows(2).all(|w| w[1] - w[0] == step) {
            let (first, last) = (v[0], v[v.len() - 1]);
            return if last + step > spec.max {
                format!("{first:02}/{step}")
            } else {
                format!("{first:02}..{last:02}/{step}")
            };
        }
    }
    runs(&v)
        .iter()
        .map(|&(a, b)| match b - a {
            0 => format!("{a:02}"),
            1 => format!("{a:02},{b:02}"),
            _ => format!("{a:02}..{b:02}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Splits sorted values into maximal runs of consecutive numbers, as (first, last).
fn runs(values: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &v in values {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == v => *last = v,
            _ => out.push((v, v)),
        }
    }
    out
}

/// Prints cron weekdays (0 = Sunday) as systemd does: Monday first, runs of three or
/// more as `Mon..Wed`, shorter runs as lists (systemd prints `Sat,Sun`, not `Sat..Sun`).
fn format_weekdays(dows: &BTreeSet<u32>) -> String {
    const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    // Cron 0 = Sunday, systemd's order puts Sunday last.
    let idx: Vec<u32> = {
        let mut i: Vec<u32> = dows.iter().map(|d| (d + 6) % 7).collect();
        i.sort_unstable();
        i
    };
    runs(&idx)
        .iter()
        .map(|&(a, b)| {
            let (first, last) = (NAMES[a as usize], NAMES[b as usize]);
            match b - a {
                0 => first.to_owned(),
                1 => format!("{first},{last}"),
                _ => format!("{first}..{last}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(expr: &str) -> String {
        cron_to_on_calendar(expr).unwrap_err().to_string()
    }

    #[test]
    fn rejects_what_systemd_cannot_mean() {
        // cron ORs the day fields when neither starts with '*', even for "1-31".
        assert_eq!(err("0 0 1-31 * 1"), CronError::DomAndDow.to_string());
        assert_eq!(err("0 0 15 * fri"), CronError::DomAndDow.to_string());
        assert_eq!(
            err("0 0 30 2 *"),
            "day-of-month 30 never occurs in the selected months, so the schedule never fires"
        );
        assert_eq!(
            err("0 0 31 4,6 *"),
            CronError::NeverFires { dom: 31 }.to_string()
        );
        assert!(cron_to_on_calendar("0 0 31 4,7 *").is_ok());
    }

    #[test]
    fn rejects_malformed_fields() {
        assert_eq!(
            err("0 0 * * sat-sun"),
            r#"day-of-week: range "sat-sun" goes backwards"#
        );
        assert_eq!(
            err("5/10 * * * *"),
            r#"minute: "5/10" is not a valid value"#
        );
        assert_eq!(err("a * * * *"), r#"minute: "a" is not a valid value"#);
        assert_eq!(err("0 0 * foo *"), r#"month: "foo" is not a valid value"#);
        assert_eq!(
            err("0 0 * * mon-"),
            r#"day-of-week: "mon-" is not a valid value"#
        );
        assert_eq!(err("1,,2 * * * *"), r#"minute: "" is not a valid value"#);
        assert_eq!(
            err("0 0 * * * *"),
            "expected 5 fields (minute hour day-of-month month day-of-week) or an @alias, found 6"
        );
        assert_eq!(
            err(""),
            "expected 5 fields (minute hour day-of-month month day-of-week) or an @alias, found 0"
        );
        assert_eq!(
            err("99999999999 * * * *"),
            "minute 4294967295 out of range 0-59"
        );
        assert_eq!(err("*/x * * * *"), r#"minute: "*/x" is not a valid value"#);
        // Month names are not weekday names and vice versa.
        assert_eq!(err("0 0 * mon *"), r#"month: "mon" is not a valid value"#);
    }

    #[test]
    fn value_sets_print_compactly() {
        let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(format_set(&set(&[0, 15, 30, 45]), &MINUTE), "00/15");
        assert_eq!(format_set(&set(&[5, 20, 35]), &MINUTE), "05..35/15");
        assert_eq!(format_set(&set(&[0, 30]), &MINUTE), "00,30");
        assert_eq!(format_set(&set(&[1, 2, 3, 7]), &HOUR), "01..03,07");
        assert_eq!(format_set(&(1..=31).collect(), &DOM), "*");
        assert_eq!(format_weekdays(&set(&[0, 6])), "Sat,Sun");
        assert_eq!(format_weekdays(&set(&[1, 2, 3, 4, 5])), "Mon..Fri");
    }
}
