//! Time as zooid-sync keeps and shows it: Unix seconds in the database, and their text for
//! people (`status`, errors) and for logs, formatted by jiff in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`; a time beyond what a calendar can show (a
/// corrupted row) is shown as the nearest one it can.
pub(crate) fn format_unix(secs: i64) -> String {
    let at = jiff::Timestamp::from_second(secs).unwrap_or(match secs < 0 {
        true => jiff::Timestamp::MIN,
        false => jiff::Timestamp::MAX,
    });
    at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `time` as RFC 3339 in UTC with milliseconds (`2026-12-02T18:30:00.123Z`), for logs.
#[cfg(feature = "cli")]
pub(crate) fn format_rfc3339_millis(time: SystemTime) -> String {
    let at = jiff::Timestamp::try_from(time).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!("{at:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_read_as_utc() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(1_764_700_200), "2025-12-02 18:30:00 UTC");
        assert_eq!(
            format_unix(951_782_400),
            "2000-02-29 00:00:00 UTC",
            "a leap day"
        );
        assert_eq!(format_unix(-1), "1969-12-31 23:59:59 UTC");
        assert!(format_unix(i64::MAX).starts_with("9999-12-3"), "clamped");
        assert!(format_unix(i64::MIN).starts_with("-9999-01-0"), "clamped");
        let later = now_unix();
        assert!(later > 1_764_700_200, "the clock is read");
    }

    #[cfg(feature = "cli")]
    #[test]
    fn log_times_are_rfc3339_with_milliseconds() {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_764_700_200_123);
        assert_eq!(format_rfc3339_millis(at), "2025-12-02T18:30:00.123Z");
        assert_eq!(
            format_rfc3339_millis(UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
