//! `--since`/`--until` values, one reading for every command that takes
//! them: a duration before now (`2h`), a date (`2024-02-01`, its start in
//! UTC), or an RFC 3339 time.

use std::time::{SystemTime, UNIX_EPOCH};

/// `value` of `flag` as nanoseconds since the epoch, relative to `now`.
pub(crate) fn parse(flag: &str, value: &str, now: SystemTime) -> anyhow::Result<i64> {
    let before_epoch = || anyhow::anyhow!("{flag} {value:?}: before the epoch");
    let at = if let Ok(ago) = humantime::parse_duration(value) {
        now.checked_sub(ago).ok_or_else(before_epoch)?
    } else if value.len() == 10 {
        humantime::parse_rfc3339(&format!("{value}T00:00:00Z"))
            .map_err(|e| anyhow::anyhow!("{flag} {value:?}: {e}"))?
    } else {
        humantime::parse_rfc3339_weak(value).map_err(|_| {
            anyhow::anyhow!("{flag} {value:?}: not an RFC 3339 time, a date or a duration ago")
        })?
    };
    let nanos = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| before_epoch())?
        .as_nanos();
    Ok(i64::try_from(nanos).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    #[test]
    fn times_dates_and_durations() {
        let now = UNIX_EPOCH + Duration::from_secs(1_706_745_600 + 3600);
        let at = |v| parse("--since", v, now);
        assert_eq!(at("2024-02-01").unwrap(), 1_706_745_600_000_000_000);
        assert_eq!(
            at("2024-02-01T00:00:01Z").unwrap(),
            1_706_745_601_000_000_000
        );
        assert_eq!(at("1h").unwrap(), 1_706_745_600_000_000_000);
        assert!(at("yesterday").is_err());
        assert!(
            at("100y")
                .unwrap_err()
                .to_string()
                .contains("before the epoch")
        );
    }
}
