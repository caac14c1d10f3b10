//! How the program writes counts and durations for people: `1 relay`, `2 relays`; `250ms`,
//! `30s`, `30.8s`, `15m`, `90d`. One place, so that every message reads the same way.

use std::time::Duration;

/// `1 relay`, `2 relays`: `n` and the word that fits it.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}

/// A duration the way settings are written: `250ms`, `30s`, `15m`, `2h`; one that is not
/// whole seconds, above a second, to a tenth of a second (`30.8s`).
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms.is_multiple_of(86_400_000) && ms > 0 => format!("{}d", ms / 86_400_000),
        _ if ms.is_multiple_of(3_600_000) && ms > 0 => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) && ms > 0 => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ if ms > 1000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_the_word_that_fits() {
        assert_eq!(plural(0, "relay", "relays"), "0 relays");
        assert_eq!(plural(1, "relay", "relays"), "1 relay");
        assert_eq!(plural(2, "relay", "relays"), "2 relays");
    }

    #[test]
    fn durations_read_as_settings_are_written() {
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::from_secs(30)), "30s");
        assert_eq!(show_duration(Duration::from_secs(900)), "15m");
        assert_eq!(show_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(show_duration(Duration::from_secs(2 * 86_400)), "2d");
        assert_eq!(show_duration(Duration::ZERO), "0s");
        assert_eq!(show_duration(Duration::from_millis(30_803)), "30.8s");
        assert_eq!(show_duration(Duration::from_millis(1000)), "1s");
        assert_eq!(show_duration(Duration::from_millis(999)), "999ms");
    }
}
