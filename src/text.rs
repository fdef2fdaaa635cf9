//! Leaf helpers for text that people read: styles, byte sizes, plurals and
//! ages.
//!
//! Everything here is pure and depends on nothing else in the crate, so the
//! plan model, its renderers and the terminal UI can all use it without
//! depending on each other.

use anstyle::{AnsiColor, Style};

/// Style for error headings.
pub const ERROR: Style = AnsiColor::Red.on_default().bold();
/// Style for hints.
pub const HINT: Style = AnsiColor::Cyan.on_default();
/// Style for success lines.
pub const OK: Style = AnsiColor::Green.on_default();
/// Style for warnings.
pub const WARN: Style = AnsiColor::Yellow.on_default();

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `1 disk`, `2 disks`.
pub fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How long ago `then` was at `now` (unix seconds), coarsely: `12 s`,
/// `5 min`, `3 h`, `2 d`. A `then` after `now` counts as no time at all.
pub fn age(now: u64, then: u64) -> String {
    let secs = now.saturating_sub(then);
    match secs {
        0..60 => format!("{secs} s"),
        60..3_600 => format!("{} min", secs / 60),
        3_600..86_400 => format!("{} h", secs / 3_600),
        _ => format!("{} d", secs / 86_400),
    }
}

/// Unix seconds as RFC 3339, e.g. `2023-11-14T22:13:20Z`.
///
/// Total: a time past the year 9999 (which RFC 3339 cannot write, and
/// which only a damaged record holds) is shown as its number of seconds
/// instead of panicking.
pub fn rfc3339(secs: u64) -> String {
    use std::time::{Duration, UNIX_EPOCH};
    const YEAR_10000: u64 = 253_402_300_800;
    if secs >= YEAR_10000 {
        return format!("{secs} s after 1970");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_plurals() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(plural(1, "disk"), "1 disk");
        assert_eq!(plural(0, "disk"), "0 disks");
    }

    #[test]
    fn any_time_can_be_written() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), format!("{} s after 1970", u64::MAX));
    }

    #[test]
    fn ages() {
        assert_eq!(age(100, 88), "12 s");
        assert_eq!(age(400, 100), "5 min");
        assert_eq!(age(3 * 3_600 + 59, 0), "3 h");
        assert_eq!(age(2 * 86_400 + 5, 0), "2 d");
        assert_eq!(age(0, 10), "0 s");
    }
}
