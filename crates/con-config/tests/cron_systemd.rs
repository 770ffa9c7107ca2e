//! cron → OnCalendar translations, checked against systemd itself.
//!
//! For each expression: our output is the expected string, `systemd-analyze calendar`
//! accepts it silently and prints it back unchanged as its normalized form, and the
//! next firing times systemd computes equal those of an independent brute-force
//! reading of the cron expression (Vixie cron semantics), so the translation is
//! checked for meaning, not just syntax.
//!
//! Needs /usr/bin/systemd-analyze (Debian package `systemd`); it works without
//! systemd running as PID 1.

use std::process::Command;

use con_config::cron_to_on_calendar;

const TABLE: &[(&str, &str)] = &[
    ("0 8 * * *", "*-*-* 08:00:00 UTC"),
    ("*/15 * * * 1-5", "Mon..Fri *-*-* *:00/15:00 UTC"),
    ("30 2 1 * *", "*-*-01 02:30:00 UTC"),
    ("* * * * *", "*-*-* *:*:00 UTC"),
    ("0 * * * *", "*-*-* *:00:00 UTC"),
    ("0 0 * * 0", "Sun *-*-* 00:00:00 UTC"),
    ("0 0 * * 7", "Sun *-*-* 00:00:00 UTC"),
    ("0 0 * * SAT,sun", "Sat,Sun *-*-* 00:00:00 UTC"),
    ("0 0 * * 5-7", "Fri..Sun *-*-* 00:00:00 UTC"),
    ("0 0 * * 0,1,2", "Mon,Tue,Sun *-*-* 00:00:00 UTC"),
    ("0 0 * * mon-wed,fri", "Mon..Wed,Fri *-*-* 00:00:00 UTC"),
    ("0 6 * * */2", "Tue,Thu,Sat,Sun *-*-* 06:00:00 UTC"),
    (
        "15,45 9-17 * * mon-fri",
        "Mon..Fri *-*-* 09..17:15,45:00 UTC",
    ),
    ("0 */2 * * *", "*-*-* 00/2:00:00 UTC"),
    ("0 9-17/2 * * *", "*-*-* 09..17/2:00:00 UTC"),
    ("5-59/10 * * * *", "*-*-* *:05/10:00 UTC"),
    ("*/20 * * * *", "*-*-* *:00/20:00 UTC"),
    ("0,1,2,30 * * * *", "*-*-* *:00..02,30:00 UTC"),
    ("0 0,12 * * *", "*-*-* 00,12:00:00 UTC"),
    ("0 0 1 */3 *", "*-01/3-01 00:00:00 UTC"),
    ("0 12 * Jan,jul *", "*-01,07-* 12:00:00 UTC"),
    ("0 0 1-7 * *", "*-*-01..07 00:00:00 UTC"),
    ("0 0 */2 * *", "*-*-01/2 00:00:00 UTC"),
    ("0 0 1,15 * *", "*-*-01,15 00:00:00 UTC"),
    ("0 0 29 2 *", "*-02-29 00:00:00 UTC"),
    ("1 2 3 4 *", "*-04-03 02:01:00 UTC"),
    // Day-of-month written with '*' keeps cron's AND rule, which systemd shares.
    ("0 0 */2 * 1", "Mon *-*-01/2 00:00:00 UTC"),
    ("0 22 * * 1-5", "Mon..Fri *-*-* 22:00:00 UTC"),
    ("@hourly", "*-*-* *:00:00 UTC"),
    ("@daily", "*-*-* 00:00:00 UTC"),
    ("@midnight", "*-*-* 00:00:00 UTC"),
    ("@weekly", "Sun *-*-* 00:00:00 UTC"),
    ("@monthly", "*-*-01 00:00:00 UTC"),
    ("@yearly", "*-01-01 00:00:00 UTC"),
    ("@annually", "*-01-01 00:00:00 UTC"),
];

const ITERATIONS: usize = 8;
const BASE_TIME: &str = "2025-01-01 00:00:00 UTC";

#[test]
fn translations_match_systemd() {
    assert!(TABLE.len() >= 15);
    for &(cron, expected) in TABLE {
        let ours = cron_to_on_calendar(cron).unwrap_or_else(|e| panic!("{cron:?}: {e}"));
        assert_eq!(ours, expected, "translation of {cron:?}");

        let out = Command::new("systemd-analyze")
            .env("TZ", "UTC")
            .arg("calendar")
            .arg(format!("--iterations={ITERATIONS}"))
            .arg(format!("--base-time={BASE_TIME}"))
            .arg(&ours)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run systemd-analyze (install the systemd package): {e}")
            });
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{ours:?}: {stderr}");
        assert_eq!(stderr, "", "{ours:?}");

        let normalized = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Normalized form: "))
            .unwrap_or_else(|| panic!("no normalized form for {ours:?}:\n{stdout}"));
        assert_eq!(normalized, ours, "systemd normalizes {ours:?} differently");

        let systemd_times: Vec<&str> = stdout
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.strip_prefix("Next elapse: ").or_else(|| {
                    l.strip_prefix("Iter. #")
                        .and_then(|rest| rest.split_once(": "))
                        .map(|(_, t)| t)
                })
            })
            .collect();
        let cron_times = reference::next_times(cron, ITERATIONS);
        assert_eq!(systemd_times, cron_times, "{cron:?} vs {ours:?}");
    }
}

/// A deliberately naive cron evaluator, independent of the crate's parser.
// A test oracle: a malformed table entry should simply panic.
#[allow(clippy::unwrap_used)]
mod reference {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];

    fn value(s: &str, names: &[&str], first: u32) -> u32 {
        let l = s.to_ascii_lowercase();
        match names.iter().position(|n| n.to_ascii_lowercase() == l) {
            Some(i) => first + i as u32,
            None => s.parse().unwrap(),
        }
    }

    /// Whether `v` is matched by the cron field `field`.
    fn matches(field: &str, v: u32, lo: u32, hi: u32, names: &[&str], first: u32) -> bool {
        field.split(',').any(|item| {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => (r, s.parse::<u32>().unwrap()),
                None => (item, 1),
            };
            let (a, b) = if range == "*" {
                (lo, hi)
            } else if let Some((a, b)) = range.split_once('-') {
                (value(a, names, first), value(b, names, first))
            } else {
                let x = value(range, names, first);
                (x, x)
            };
            v >= a && v <= b && (v - a).is_multiple_of(step)
        })
    }

    fn expand_alias(cron: &str) -> &str {
        match cron {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        }
    }

    /// (year, month, day) of a day number counted from 1970-01-01 (H. Hinnant's algorithm).
    fn civil(days: i64) -> (i64, u32, u32) {
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let y = yoe + era * 400 + i64::from(m <= 2);
        (y, m, d)
    }

    /// The first `n` times strictly after 2025-01-01 00:00 UTC that `cron` fires, in
    /// systemd-analyze's format.
    pub fn next_times(cron: &str, n: usize) -> Vec<String> {
        let f: Vec<&str> = expand_alias(cron).split_whitespace().collect();
        let (min, hour, dom, mon, dow) = (f[0], f[1], f[2], f[3], f[4]);
        let start_day: i64 = 20_089; // 2025-01-01
        let mut out = Vec::new();
        for day in start_day..start_day + 366 * 40 {
            let (y, m, d) = civil(day);
            let wd = (day + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            let dom_ok = matches(dom, d, 1, 31, &[], 1);
            let dow_ok =
                matches(dow, wd, 0, 7, &DAYS, 0) || (wd == 0 && matches(dow, 7, 0, 7, &DAYS, 0));
            // Vixie cron: if either day field starts with '*' both must match, else either.
            let day_ok = if dom.starts_with('*') || dow.starts_with('*') {
                dom_ok && dow_ok
            } else {
                dom_ok || dow_ok
            };
            if !day_ok || !matches(mon, m, 1, 12, &MONTHS, 1) {
                continue;
            }
            for h in 0..24 {
                for mi in 0..60 {
                    if day == start_day && h == 0 && mi == 0 {
                        continue;
                    }
                    if matches(hour, h, 0, 23, &[], 0) && matches(min, mi, 0, 59, &[], 0) {
                        out.push(format!(
                            "{} {y:04}-{m:02}-{d:02} {h:02}:{mi:02}:00 UTC",
                            DAYS[wd as usize]
                        ));
                        if out.len() == n {
                            return out;
                        }
                    }
                }
            }
        }
        out
    }
}
