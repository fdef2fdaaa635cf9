//! Plan renderings: for a terminal ([`human()`]), for a pull-request comment
//! ([`markdown()`]), and for machines ([`json()`]).
//!
//! Every renderer is a pure function from a [`Plan`] to a `String`; the
//! caller decides where it goes. What the renderers share lives here: how
//! changes are classified and counted ([`counts`]), the symbol and
//! one-line description of a change, and how ages are spelled (`text::age`), so
//! the three renderings never disagree about a plan.

mod human;
mod json;
mod markdown;

pub use human::human;
pub use json::json;
pub use markdown::markdown;

use super::model::{Action, Change, Disruption, Plan};

use crate::text::{age, rfc3339};

/// What a change does to the fleet, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Brings something new about (image, disk, domain, autostart, start).
    Add,
    /// Alters something that exists (update, grow, stop, crash cleanup).
    Change,
    /// Removes something (destroy, trash, purge).
    Destroy,
}

/// Classifies an action; the one place that decides what counts as what.
pub fn kind(action: &Action) -> Kind {
    match action {
        Action::EnsureImage { .. }
        | Action::CreateDisk { .. }
        | Action::CreateSeed { .. }
        | Action::DefineDomain { .. }
        | Action::Start
        | Action::SetAutostart { .. }
        | Action::Snapshot { .. }
        | Action::RestoreDisk { .. } => Kind::Add,
        // Cleaning up an interrupted creation alters what is there; it loses
        // nothing (the directory never became a disk), so it is no destroy.
        Action::UpdateDomain { .. }
        | Action::ReplaceSeed { .. }
        | Action::GrowDisk { .. }
        | Action::Stop
        | Action::ProtectDisk { .. }
        | Action::ReleaseLease { .. }
        | Action::RemoveIncomplete { .. }
        | Action::MoveIn { .. }
        | Action::FinishMove { .. } => Kind::Change,
        // A rollback keeps the disk and loses what was written since: it is
        // marked destructive by its disruption, and counted as a change.
        Action::Shutdown { .. } | Action::RollbackDisk { .. } => Kind::Change,
        Action::Destroy { .. }
        | Action::TrashDisk { .. }
        | Action::PurgeTrash { .. }
        | Action::PruneSnapshot { .. } => Kind::Destroy,
    }
}

/// Changes whose diff is shown: domain updates (the XML), replaced seeds
/// (their facts: hashes and counts, never user-data text unless asked for)
/// and new seeds whose user-data was asked for.
pub fn shows_diff(action: &Action) -> bool {
    matches!(
        action,
        Action::UpdateDomain { .. }
            | Action::ReplaceSeed { .. }
            | Action::CreateSeed {
                user_data: Some(_),
                ..
            }
    )
}

/// The one-character mark of a change: `+` add, `~` change in place,
/// `±` needs a restart, `-` destroy.
pub fn symbol(change: &Change) -> char {
    if change.disruption == Disruption::Restart {
        return '±';
    }
    match kind(&change.action) {
        Kind::Add => '+',
        Kind::Change => '~',
        Kind::Destroy => '-',
    }
}

/// Tallies of a plan (or of one host's share of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Changes of [`Kind::Add`].
    pub add: usize,
    /// Changes of [`Kind::Change`].
    pub change: usize,
    /// Changes of [`Kind::Destroy`].
    pub destroy: usize,
    /// Changes withheld for lack of permission.
    pub pending: usize,
    /// Changes refused.
    pub refused: usize,
    /// Hosts not observed.
    pub unreachable: usize,
}

impl Counts {
    /// Counts `changes` by [`kind`]; the other tallies stay zero.
    fn tally<'a>(changes: impl IntoIterator<Item = &'a Change>) -> Counts {
        let mut c = Counts::default();
        for change in changes {
            match kind(&change.action) {
                Kind::Add => c.add += 1,
                Kind::Change => c.change += 1,
                Kind::Destroy => c.destroy += 1,
            }
        }
        c
    }

    /// Changes to apply (pending and refused not included).
    pub fn changes(&self) -> usize {
        self.add + self.change + self.destroy
    }

    /// `A to add, C to change, D to destroy`, then the non-zero others:
    /// `, P pending, R refused; H host(s) not observed`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} to add, {} to change, {} to destroy",
            self.add, self.change, self.destroy
        );
        if self.pending > 0 {
            s.push_str(&format!(", {} pending", self.pending));
        }
        if self.refused > 0 {
            s.push_str(&format!(", {} refused", self.refused));
        }
        if self.unreachable > 0 {
            s.push_str(&format!("; {} host(s) not observed", self.unreachable));
        }
        s
    }
}

/// Counts the whole plan; every rendering's totals come from here.
pub fn counts(plan: &Plan) -> Counts {
    Counts {
        pending: plan.pending.len(),
        refused: plan.refused.len(),
        unreachable: plan.unreachable.len(),
        ..Counts::tally(&plan.changes)
    }
}

/// Counts one host's share of the plan (refusals by their address prefix).
pub fn host_counts(plan: &Plan, host: &str) -> Counts {
    Counts {
        pending: plan
            .pending
            .iter()
            .filter(|p| p.change.host == host)
            .count(),
        refused: plan
            .refused
            .iter()
            .filter(|r| address_host(&r.address) == host)
            .count(),
        unreachable: usize::from(plan.unreachable.contains_key(host)),
        ..Counts::tally(plan.changes.iter().filter(|c| c.host == host))
    }
}

/// Every host the plan mentions, sorted: from changes, pending changes,
/// refusals, unreachable hosts and unmanaged objects.
pub fn hosts(plan: &Plan) -> Vec<&str> {
    let mut hosts: Vec<&str> = plan
        .changes
        .iter()
        .map(|c| c.host.as_str())
        .chain(plan.pending.iter().map(|p| p.change.host.as_str()))
        // A machine that fits on no host is refused under its own name.
        .chain(
            plan.refused
                .iter()
                .map(|r| address_host(&r.address))
                .filter(|h| {
                    plan.inputs.hosts.contains_key(*h) || plan.unreachable.contains_key(*h)
                }),
        )
        .chain(plan.unreachable.keys().map(String::as_str))
        .chain(plan.unmanaged.keys().map(String::as_str))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts
}

/// The host part of an address (`host/machine/disk` → `host`).
fn address_host(address: &str) -> &str {
    address.split_once('/').map_or(address, |(h, _)| h)
}

/// `observation from a file, taken <RFC 3339> (<age> ago)` when the plan was
/// computed from a saved observation; `None` for a live one.
fn observation_note(plan: &Plan, now: u64) -> Option<String> {
    let then = plan.inputs.observed_at;
    plan.inputs.from_file.then(|| {
        let when = if then > now {
            format!("{} in the future; check the clocks", age(then, now))
        } else {
            format!("{} ago", age(now, then))
        };
        format!("observation from a file, taken {} ({when})", rfc3339(then))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::ImageFormat;
    use crate::plan::model::{BaseRef, FORMAT_VERSION, Inputs, Pending, Refusal};
    use std::collections::BTreeMap;

    /// 2023-11-14T22:13:20Z.
    const NOW: u64 = 1_700_000_000;

    const DIFF: &str = "\
--- actual
+++ desired
@@ -3,5 +3,5 @@
   <uuid>6f1c2a4e-0000-4000-8000-000000000001</uuid>
   <vcpu>2</vcpu>
-  <memory unit='MiB'>4096</memory>
-  <currentMemory unit='MiB'>4096</currentMemory>
+  <memory unit='MiB'>2048</memory>
+  <currentMemory unit='MiB'>2048</currentMemory>
   <os>
";

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn change(address: &str, action: Action, disruption: Disruption, reason: &str) -> Change {
        let mut parts = address.split('/');
        let host = parts.next().unwrap_or_default().to_owned();
        let machine = parts
            .next()
            .filter(|m| *m != "images" && *m != "trash")
            .map(str::to_owned);
        Change {
            address: address.into(),
            host,
            machine,
            action,
            disruption,
            reason: reason.into(),
            diff: None,
        }
    }

    fn empty_plan() -> Plan {
        Plan {
            format_version: FORMAT_VERSION,
            fleet: "lab".into(),
            inputs: Inputs {
                fleet: "f".repeat(64),
                lock: "1".repeat(64),
                hosts: BTreeMap::from([("alpha".into(), "a".repeat(64))]),
                observed_at: NOW - 3,
                from_file: false,
                now: NOW,
            },
            changes: Vec::new(),
            pending: Vec::new(),
            refused: Vec::new(),
            unreachable: BTreeMap::new(),
            unmanaged: BTreeMap::new(),
            notes: Vec::new(),
            placements: Vec::new(),
        }
    }

    // One literal plan with every kind of change, pending change, refusal and
    // note: long because it is data, kept whole so the snapshots read as one.
    fn rich_plan() -> Plan {
        let base = BaseRef {
            image: "debian-12".into(),
            sha256: SHA.into(),
            format: ImageFormat::Qcow2,
        };
        let mut update = change(
            "alpha/db",
            Action::UpdateDomain {
                xml: "<domain type='kvm'>…</domain>".into(),
                memory_live_mib: Some(2048),
                restart: false,
            },
            Disruption::Live,
            "fleet.dhall changed: memory 4096 → 2048 MiB",
        );
        update.diff = Some(DIFF.into());
        let changes = vec![
            change(
                "alpha/images/0123456789ab",
                Action::EnsureImage {
                    image: "debian-12".into(),
                    sha256: SHA.into(),
                    format: ImageFormat::Qcow2,
                    size: 1 << 20,
                },
                Disruption::None,
                "base image debian-12 is not on the host yet",
            ),
            change(
                "alpha/web/root",
                Action::CreateDisk {
                    volume: "web-root".into(),
                    disk: "root".into(),
                    size_gib: 10,
                    base: Some(base),
                },
                Disruption::None,
                "new 10 GiB disk (overlay on debian-12)",
            ),
            change(
                "alpha/web/data",
                Action::CreateDisk {
                    volume: "web-data".into(),
                    disk: "data".into(),
                    size_gib: 5,
                    base: None,
                },
                Disruption::None,
                "new 5 GiB disk (blank)",
            ),
            change(
                "alpha/db/root",
                Action::GrowDisk {
                    volume: "db-root".into(),
                    target: "vda".into(),
                    from_bytes: 10 << 30,
                    to_gib: 20,
                    running: true,
                },
                Disruption::Live,
                "grow 10 GiB → 20 GiB",
            ),
            change(
                "alpha/web",
                Action::DefineDomain {
                    xml: "<domain type='kvm'>…</domain>".into(),
                },
                Disruption::None,
                "new machine",
            ),
            change(
                "alpha/web",
                Action::SetAutostart { on: true },
                Disruption::None,
                "autostart with the host",
            ),
            update,
            change(
                "alpha/web",
                Action::Start,
                Disruption::None,
                "power = Running",
            ),
            change(
                "beta/old",
                Action::Destroy {
                    volumes: vec!["old-root".into(), "old-data".into()],
                },
                Disruption::Destructive,
                "removed from the fleet: stop, undefine, move 2 disks to the trash",
            ),
            change(
                "beta/trash/old-root.1699000000",
                Action::PurgeTrash {
                    entry: "old-root.1699000000".into(),
                },
                Disruption::Destructive,
                "trash retention of 7 days expired",
            ),
        ];
        let pending = vec![Pending {
            change: change(
                "beta/batch",
                Action::Stop,
                Disruption::Restart,
                "power = Stopped",
            ),
            needs: "--allow-restart (or settings.allowRestart)".into(),
        }];
        let refused = vec![Refusal { address: "beta/cache/data".into(), message: "disk is 30 GiB but the fleet asks 20 GiB: disks only grow, a shrink would lose data (set the size back to at least 30 GiB)".into() }];
        let mut plan = empty_plan();
        plan.inputs.hosts = BTreeMap::from([
            ("alpha".into(), "a".repeat(64)),
            ("beta".into(), "b".repeat(64)),
        ]);
        plan.inputs.observed_at = NOW - 7200;
        plan.inputs.from_file = true;
        plan.changes = changes;
        plan.pending = pending;
        plan.refused = refused;
        plan.unreachable = BTreeMap::from([(
            "gamma".into(),
            "cannot connect to qemu+ssh://gamma/system: Connection refused".into(),
        )]);
        plan.unmanaged = BTreeMap::from([(
            "alpha".into(),
            vec!["domain legacy-vm".into(), "file disks/scratch.qcow2".into()],
        )]);
        plan
    }

    #[test]
    fn human_plain() {
        insta::assert_snapshot!(human(&rich_plan(), NOW, false));
    }

    #[test]
    fn human_color() {
        insta::assert_snapshot!(human(&rich_plan(), NOW, true));
    }

    #[test]
    fn human_empty() {
        insta::assert_snapshot!(human(&empty_plan(), NOW, false));
    }

    #[test]
    fn markdown_rich() {
        insta::assert_snapshot!(markdown(&rich_plan(), NOW));
    }

    #[test]
    fn markdown_empty() {
        insta::assert_snapshot!(markdown(&empty_plan(), NOW));
    }

    #[test]
    fn json_rich() {
        insta::assert_snapshot!(json(&rich_plan()));
    }

    #[test]
    fn json_empty() {
        insta::assert_snapshot!(json(&empty_plan()));
    }

    #[test]
    fn json_round_trips() {
        for plan in [rich_plan(), empty_plan()] {
            let back: Plan = serde_json::from_str(&json(&plan)).expect("plan JSON parses");
            assert_eq!(back, plan);
        }
    }

    #[test]
    fn plain_has_no_escapes_and_colour_has() {
        assert!(!human(&rich_plan(), NOW, false).contains('\x1b'));
        assert!(!human(&empty_plan(), NOW, false).contains('\x1b'));
        assert!(human(&rich_plan(), NOW, true).contains('\x1b'));
    }

    #[test]
    fn age_is_shown_whenever_the_observation_is_from_a_file() {
        let plan = rich_plan();
        assert!(human(&plan, NOW, false).contains("(2 h ago)"));
        assert!(markdown(&plan, NOW).contains("(2 h ago)"));
        let mut empty = empty_plan();
        empty.inputs.from_file = true;
        empty.inputs.observed_at = NOW - 90;
        assert!(human(&empty, NOW, false).contains("(1 min ago)"));
        assert!(markdown(&empty, NOW).contains("(1 min ago)"));
    }

    #[test]
    fn counts_classify_every_change() {
        let plan = rich_plan();
        let c = counts(&plan);
        assert_eq!(
            c,
            Counts {
                add: 6,
                change: 2,
                destroy: 2,
                pending: 1,
                refused: 1,
                unreachable: 1
            }
        );
        assert_eq!(
            host_counts(&plan, "beta"),
            Counts {
                add: 0,
                change: 0,
                destroy: 2,
                pending: 1,
                refused: 1,
                unreachable: 0
            }
        );
        assert_eq!(hosts(&plan), ["alpha", "beta", "gamma"]);
    }
}
