//! Snapshot policy, as pure functions: which snapshots are due, which the
//! policy no longer keeps.
//!
//! Names carry everything: `vf-init` (taken right after a disk is
//! created), `vf-<period>-<YYYYMMDDTHHMMSSZ>` (scheduled), `vf-manual-...`
//! (taken by `virtfleet snapshot`, never pruned). Anything else is foreign
//! and never touched. Periods are UTC: hours, days, ISO weeks (Monday) and
//! calendar months. Thinning is deterministic: scheduled snapshots of one
//! period are grouped by the period they were taken in; the newest of each
//! group survives, and of those the newest `count` groups are kept.

use crate::fleet::Snapshots;

/// Name of the snapshot taken right after creation.
pub const INIT: &str = "vf-init";

/// A retention period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

/// Every period, in policy order.
pub const PERIODS: [Period; 4] = [
    Period::Hourly,
    Period::Daily,
    Period::Weekly,
    Period::Monthly,
];

impl Period {
    /// Lowercase name used in snapshot names.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
        }
    }

    /// How many of this period the policy keeps.
    pub fn count(self, p: &Snapshots) -> u64 {
        match self {
            Period::Hourly => p.hourly,
            Period::Daily => p.daily,
            Period::Weekly => p.weekly,
            Period::Monthly => p.monthly,
        }
    }

    /// Start (unix seconds, UTC) of the period that contains `t`.
    pub fn start(self, t: u64) -> u64 {
        let day = t / 86_400;
        match self {
            Period::Hourly => t - t % 3_600,
            Period::Daily => day * 86_400,
            // 1970-01-01 was a Thursday: days since the Monday before it.
            // The first days of 1970 belong to a week that began in 1969:
            // its start is clamped to the epoch rather than underflowing
            // (a hand-made `vf-weekly-19700101T000000Z` must not panic).
            Period::Weekly => day.saturating_sub((day + 3) % 7) * 86_400,
            Period::Monthly => {
                let (y, m, _) = civil(day as i64);
                days_from_civil(y, m, 1) as u64 * 86_400
            }
        }
    }
}

/// What a snapshot name says about its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `vf-init`: kept until the disk goes.
    Init,
    /// `vf-manual-...`: virtfleet's, taken on request, never pruned.
    Manual,
    /// `vf-<period>-<time>`: virtfleet's, pruned by the policy.
    Scheduled(Period, u64),
    /// Not virtfleet's: never pruned.
    Foreign,
}

/// Classifies a snapshot name.
pub fn classify(name: &str) -> Kind {
    if name == INIT {
        return Kind::Init;
    }
    if name.starts_with("vf-manual-") {
        return Kind::Manual;
    }
    let Some(rest) = name.strip_prefix("vf-") else {
        return Kind::Foreign;
    };
    for p in PERIODS {
        if let Some(ts) = rest
            .strip_prefix(p.as_str())
            .and_then(|r| r.strip_prefix('-'))
            .and_then(parse_stamp)
        {
            return Kind::Scheduled(p, ts);
        }
    }
    Kind::Foreign
}

/// `20261122T140000Z` for a unix time.
pub fn stamp(t: u64) -> String {
    let (y, m, d) = civil((t / 86_400) as i64);
    let s = t % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

fn parse_stamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(4..6)?,
        num(6..8)?,
        num(9..11)?,
        num(11..13)?,
        num(13..15)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let days = days_from_civil(y, mo as u32, d as u32);
    (days >= 0).then(|| days as u64 * 86_400 + (h * 3600 + mi * 60 + se) as u64)
}

/// Name of a scheduled snapshot of `period` taken at `t`.
pub fn scheduled_name(period: Period, t: u64) -> String {
    format!("vf-{}-{}", period.as_str(), stamp(t))
}

/// What the policy wants done to one disk's snapshots at `now`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Snapshots to take now, by name.
    pub create: Vec<String>,
    /// Existing snapshots the policy no longer keeps, oldest first.
    pub prune: Vec<String>,
}

/// Decides for a disk with snapshots `existing` under `policy` at `now`.
pub fn decide(policy: &Snapshots, existing: &[String], now: u64) -> Decision {
    let mut out = Decision::default();
    for p in PERIODS {
        let count = p.count(policy);
        // (taken at, name, exists already) of this period's snapshots.
        let mut snaps: Vec<(u64, String, bool)> = existing
            .iter()
            .filter_map(|n| match classify(n) {
                Kind::Scheduled(q, t) if q == p => Some((t, n.clone(), true)),
                _ => None,
            })
            .collect();
        let current = p.start(now);
        if count > 0
            && !snaps
                .iter()
                .any(|(t, _, _)| p.start(*t) == current && *t <= now)
        {
            let name = scheduled_name(p, now);
            out.create.push(name.clone());
            snaps.push((now, name, false));
        }
        // Newest first; ties broken by name so the order is total.
        snaps.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let mut buckets_kept = 0u64;
        let mut last_bucket = None;
        for (t, name, exists) in snaps {
            let bucket = p.start(t);
            let keep = if last_bucket == Some(bucket) {
                false // an older snapshot of a period already represented
            } else {
                last_bucket = Some(bucket);
                buckets_kept += 1;
                buckets_kept <= count
            };
            if !keep && exists {
                out.prune.push(name);
            }
        }
    }
    out.prune.sort_by_key(|n| match classify(n) {
        Kind::Scheduled(_, t) => (t, n.clone()),
        _ => (0, n.clone()),
    });
    out
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_snapshots_from_the_first_days_of_1970_do_not_panic() {
        for name in ["vf-weekly-19700101T000000Z", "vf-weekly-19700104T235959Z"] {
            let Kind::Scheduled(p, t) = classify(name) else {
                panic!("{name} is a scheduled snapshot");
            };
            assert_eq!(p.start(t), 0, "{name}");
            let policy = Snapshots {
                init: true,
                hourly: 0,
                daily: 0,
                weekly: 1,
                monthly: 0,
            };
            // The old one is pruned, a new one taken; nothing panics.
            let d = decide(&policy, &[name.to_owned()], 1_900_000_000);
            assert_eq!(d.prune, [name]);
            assert_eq!(d.create.len(), 1);
        }
    }

    /// 2026-11-22T14:30:00Z, a Sunday.
    const NOW: u64 = 1_795_357_800;

    fn policy(hourly: u64, daily: u64, weekly: u64, monthly: u64) -> Snapshots {
        Snapshots {
            init: true,
            hourly,
            daily,
            weekly,
            monthly,
        }
    }

    #[test]
    fn calendar_arithmetic() {
        assert_eq!(stamp(NOW), "20261122T143000Z");
        assert_eq!(parse_stamp("20261122T143000Z"), Some(NOW));
        assert_eq!(stamp(Period::Hourly.start(NOW)), "20261122T140000Z");
        assert_eq!(stamp(Period::Daily.start(NOW)), "20261122T000000Z");
        assert_eq!(
            stamp(Period::Weekly.start(NOW)),
            "20261116T000000Z",
            "the Monday before"
        );
        assert_eq!(stamp(Period::Monthly.start(NOW)), "20261101T000000Z");
        assert_eq!(
            stamp(Period::Monthly.start(parse_stamp("20240229T235959Z").unwrap())),
            "20240201T000000Z"
        );
        assert_eq!(
            stamp(Period::Weekly.start(parse_stamp("20261123T000000Z").unwrap())),
            "20261123T000000Z",
            "a Monday starts its own week"
        );
        for bad in [
            "20261322T143000Z",
            "2026112T143000Z",
            "20261122T146000Z",
            "x",
        ] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_say_who_owns_a_snapshot() {
        assert_eq!(classify("vf-init"), Kind::Init);
        assert_eq!(
            classify("vf-manual-before-upgrade-20261122T143000Z"),
            Kind::Manual
        );
        assert_eq!(
            classify("vf-daily-20261122T000000Z"),
            Kind::Scheduled(Period::Daily, NOW - 14 * 3600 - 1800)
        );
        for foreign in [
            "autosnap_2026-11-22_00:00:00_daily",
            "vf-daily-garbage",
            "before-upgrade",
            "vf-yearly-20261122T000000Z",
        ] {
            assert_eq!(classify(foreign), Kind::Foreign, "{foreign}");
        }
    }

    #[test]
    fn due_snapshots_per_period_boundary() {
        let p = policy(24, 7, 4, 3);
        // Nothing yet: one of every period, all named for `now`.
        assert_eq!(
            decide(&p, &[], NOW).create,
            [
                "vf-hourly-20261122T143000Z",
                "vf-daily-20261122T143000Z",
                "vf-weekly-20261122T143000Z",
                "vf-monthly-20261122T143000Z"
            ]
        );
        // Taken this hour/day/week/month already: nothing due.
        let existing: Vec<String> = [
            "vf-hourly-20261122T140500Z",
            "vf-daily-20261122T000000Z",
            "vf-weekly-20261116T010000Z",
            "vf-monthly-20261101T000000Z",
        ]
        .map(String::from)
        .into();
        assert_eq!(decide(&p, &existing, NOW), Decision::default());
        // One second into the next hour: only the hourly one is due.
        assert_eq!(
            decide(&p, &existing, Period::Hourly.start(NOW) + 3600).create,
            ["vf-hourly-20261122T150000Z"]
        );
        // Midnight of Monday: hourly, daily and weekly are due, monthly is not.
        let monday = parse_stamp("20261123T000000Z").unwrap();
        assert_eq!(
            decide(&p, &existing, monday).create,
            [
                "vf-hourly-20261123T000000Z",
                "vf-daily-20261123T000000Z",
                "vf-weekly-20261123T000000Z"
            ]
        );
        // December: the monthly one too.
        let december = parse_stamp("20261201T000000Z").unwrap();
        assert!(
            decide(&p, &existing, december)
                .create
                .contains(&"vf-monthly-20261201T000000Z".to_owned())
        );
    }

    #[test]
    fn thinning_keeps_the_newest_per_period_and_never_foreign_ones() {
        let p = policy(0, 3, 0, 0);
        let mut existing: Vec<String> = (10..=21)
            .map(|d| format!("vf-daily-202611{d:02}T000000Z"))
            .collect();
        existing.push("vf-daily-20261121T120000Z".into()); // a second one on the 21st
        existing.extend(
            [
                "vf-init",
                "vf-manual-keep-20261101T000000Z",
                "zfs-auto-snap_daily-2026-11-01",
                "vf-hourly-20261122T130000Z",
            ]
            .map(String::from),
        );
        let d = decide(&p, &existing, NOW);
        assert_eq!(d.create, ["vf-daily-20261122T143000Z"]);
        // Kept: today's new one, the 21st (newest of that day: 12:00) and the 20th.
        let mut expect: Vec<String> = (10..=19)
            .map(|d| format!("vf-daily-202611{d:02}T000000Z"))
            .collect();
        expect.push("vf-daily-20261121T000000Z".into());
        expect.sort();
        // Hourly count is 0: the policy no longer keeps hourly snapshots.
        expect.push("vf-hourly-20261122T130000Z".into());
        let mut got = d.prune.clone();
        got.sort();
        expect.sort();
        assert_eq!(got, expect);
        for never in [
            "vf-init",
            "vf-manual-keep-20261101T000000Z",
            "zfs-auto-snap_daily-2026-11-01",
        ] {
            assert!(!d.prune.contains(&never.to_owned()), "{never}");
        }
    }

    #[test]
    fn zero_counts_take_nothing() {
        assert_eq!(
            decide(&policy(0, 0, 0, 0), &["vf-init".into()], NOW),
            Decision::default()
        );
    }
}
