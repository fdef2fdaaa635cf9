//! What goes away: half-made objects of an interrupted apply, disks a
//! machine no longer declares, machines no longer in the fleet, orphan
//! disks, and trash whose retention expired. Everything here except crash
//! cleanup is destructive and needs permission; disks go to the trash
//! (restorable), never straight to deletion.

use super::{HostPlan, Phase, is_up};
use crate::fleet::{Fleet, Machine};
use crate::plan::model::{Action, Change, Disruption};
use crate::resources::observed::HostState;
use crate::text::plural;
use std::collections::BTreeSet;

/// A lease left on the host by a run that died (or lapsed): the next apply
/// releases it. It holds the host for nobody, so this is no destroy.
pub(super) fn plan_stale_lease(state: &HostState, hp: &mut HostPlan<'_>) {
    let Some(l) = state.lease.as_deref().filter(|l| l.stale) else {
        return;
    };
    let h = hp.name();
    hp.add(
        Phase::Clean,
        format!("{h}/lease"),
        None,
        Action::ReleaseLease {
            holder: l.id.clone(),
        },
        Disruption::None,
        format!(
            "left by `{}` (pid {} on {}), which is gone or lapsed",
            l.command, l.pid, l.controller
        ),
    );
}

/// Owned half-created objects left by a crash: removed before anything is
/// created again under the same name.
pub(super) fn plan_incomplete(state: &HostState, hp: &mut HostPlan<'_>) {
    let h = hp.name();
    for path in &state.incomplete {
        hp.add(
            Phase::Clean,
            format!("{h}/{path}"),
            None,
            Action::RemoveIncomplete { path: path.clone() },
            Disruption::None,
            "left half-created by an interrupted apply".into(),
        );
    }
}

/// Owned disks of `m` that it no longer declares. While the domain update
/// that detaches them is withheld, trashing them is withheld too: the
/// guest still uses them.
pub(super) fn plan_removed_disks(
    state: &HostState,
    m: &Machine,
    addr: &str,
    hp: &mut HostPlan<'_>,
) {
    let n = m.name.as_str();
    let wanted: BTreeSet<String> = m.disks().iter().map(|(d, _)| m.volume_name(d)).collect();
    for (vol, od) in &state.disks {
        if od.owner.machine != n || wanted.contains(vol) {
            continue;
        }
        let address = format!("{addr}/{}", od.owner.disk);
        let action = Action::TrashDisk {
            volume: vol.clone(),
        };
        if hp.update_pending(addr) {
            let change = Change {
                address,
                host: hp.name().into(),
                machine: Some(n.into()),
                action,
                disruption: Disruption::Destructive,
                reason: "disk removed from the fleet".into(),
                diff: None,
            };
            hp.hold(
                change,
                "the domain update above (it still uses this disk)".into(),
            );
        } else {
            let reason = "disk removed from the fleet (moved to the trash, restorable)".into();
            hp.add(
                Phase::Destroy,
                address,
                Some(n),
                action,
                Disruption::Destructive,
                reason,
            );
        }
    }
}

/// Managed domains of this fleet no longer declared on this host:
/// destroyed (stopped, undefined, disks to the trash) unless protected.
pub(super) fn plan_removed_machines(
    fleet: &Fleet,
    state: &HostState,
    desired: &BTreeSet<&str>,
    hp: &mut HostPlan<'_>,
) {
    let h = hp.name();
    for (n, d) in state.managed(fleet.name.as_str()) {
        if desired.contains(n.as_str()) {
            continue;
        }
        let addr = format!("{h}/{n}");
        if d.config.owner.as_ref().is_some_and(|o| o.protect) {
            hp.refuse(addr, format!("machine {n} is protected (protect = True when last applied); it is kept. To remove it, set protect = False, apply, then remove it"));
            continue;
        }
        let volumes = state.volumes_of(n);
        let stopping = if is_up(d) { "stop, " } else { "" };
        let reason = format!(
            "removed from the fleet: {stopping}undefine, move {} to the trash",
            plural(volumes.len(), "disk")
        );
        let action = Action::Destroy { volumes };
        hp.add(
            Phase::Destroy,
            addr,
            Some(n),
            action,
            Disruption::Destructive,
            reason,
        );
    }
}

/// Owned disks whose machine has neither a domain nor a place in the fleet.
pub(super) fn plan_orphan_disks(
    state: &HostState,
    desired: &BTreeSet<&str>,
    hp: &mut HostPlan<'_>,
) {
    let h = hp.name();
    let owners = state
        .disks
        .iter()
        .map(|(v, d)| (v, &d.owner))
        .chain(state.seeds.iter().map(|(v, s)| (v, &s.owner)));
    for (vol, owner) in owners {
        let m = owner.machine.as_str();
        if desired.contains(m) || state.domains.contains_key(m) {
            continue;
        }
        // (A seed carries no protection: it is rebuilt from the fleet.)
        if owner.protect {
            hp.refuse(
                format!("{h}/{m}/{}", owner.disk),
                format!("disk {vol} belongs to protected machine {m}, whose domain is gone; it is kept. Put {m} back in fleet.dhall to use it again, or move the disk away yourself"),
            );
            continue;
        }
        hp.add(
            Phase::Destroy,
            format!("{h}/{m}/{}", owner.disk),
            Some(m),
            Action::TrashDisk {
                volume: vol.clone(),
            },
            Disruption::Destructive,
            "orphan disk of a machine no longer in the fleet (moved to the trash, restorable)"
                .into(),
        );
    }
}

/// Trash entries older than the fleet's retention: deleted for good.
pub(super) fn plan_trash_expiry(fleet: &Fleet, state: &HostState, hp: &mut HostPlan<'_>) {
    let h = hp.name();
    let days = fleet.settings.trash_retention_days;
    let keep = days * 86_400;
    for (entry, t) in &state.trash {
        // saturating: a far-future stamp must never wrap into "expired".
        if t.trashed_at.saturating_add(keep) > hp.opts.now {
            continue;
        }
        hp.add(
            Phase::Purge,
            format!("{h}/trash/{entry}"),
            Some(&t.owner.machine),
            Action::PurgeTrash {
                entry: entry.clone(),
            },
            Disruption::Destructive,
            format!("trash retention of {days} days expired"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use crate::plan::model::Action;
    use crate::resources::observed::{DiskOwner, TrashEntry};

    /// Trashed this many seconds before the retention ends (negative:
    /// after) → purged.
    #[test]
    fn trash_expires_exactly_at_the_retention_boundary() {
        let f = fleet(&[]);
        let keep = f.settings.trash_retention_days * 86_400;
        let table = [
            (1_i64, false),
            (0, true),
            (-1, true),
            (-(NOW as i64), false),
        ];
        for (before_end, purged) in table {
            let mut state = converged(&f);
            // A far-future stamp (the last row) must neither wrap nor purge.
            let at = if before_end == -(NOW as i64) {
                u64::MAX - 5
            } else {
                (NOW as i64 - keep as i64 + before_end) as u64
            };
            state.trash.insert(
                format!("a-root@{at}"),
                TrashEntry {
                    owner: DiskOwner {
                        fleet: "t".into(),
                        machine: "a".into(),
                        disk: "root".into(),
                        protect: false,
                    },
                    volume: "a-root".into(),
                    trashed_at: at,
                },
            );
            let mut hp = host_plan(&f);
            super::plan_trash_expiry(&f, &state, &mut hp);
            let (changes, _, _) = parts(hp);
            assert_eq!(!changes.is_empty(), purged, "{before_end}");
        }
    }

    /// Machines removed from the fleet: destroyed, unless protected.
    #[test]
    fn removed_machines_are_destroyed_unless_protected() {
        for (protect, destroyed, refused) in [(false, 1, 0), (true, 0, 1)] {
            let before = fleet(&[&format!(
                "name = \"a\", protect = {}",
                if protect { "True" } else { "False" }
            )]);
            let state = converged(&before);
            let after = fleet(&[]);
            let mut hp = host_plan(&after);
            super::plan_removed_machines(&after, &state, &Default::default(), &mut hp);
            let (changes, _, refusals) = parts(hp);
            let destroys = changes
                .iter()
                .filter(|(_, c)| matches!(&c.action, Action::Destroy { volumes } if volumes == &["a-root"]))
                .count();
            assert_eq!(
                (destroys, refusals.len()),
                (destroyed, refused),
                "protect={protect}"
            );
        }
    }

    /// Disks whose domain and fleet entry are gone go to the trash, unless
    /// their machine was protected: then they are kept and the plan says so.
    #[test]
    fn orphan_disks_are_trashed_unless_protected() {
        let f = fleet(&[]);
        for protect in [false, true] {
            let mut state = converged(&f);
            state.disks.insert(
                "gone-root".into(),
                crate::resources::observed::OwnedDisk {
                    owner: DiskOwner {
                        fleet: "t".into(),
                        machine: "gone".into(),
                        disk: "root".into(),
                        protect,
                    },
                    path: "/srv/vf/disks/gone-root/disk.qcow2".into(),
                    size_bytes: 1 << 30,
                    snapshots: vec![],
                    grow_untold: false,
                },
            );
            let mut hp = host_plan(&f);
            super::plan_orphan_disks(&state, &std::collections::BTreeSet::new(), &mut hp);
            let (changes, _, refused) = parts(hp);
            if protect {
                assert!(changes.is_empty(), "{changes:?}");
                assert!(refused[0].contains("protected machine gone"), "{refused:?}");
            } else {
                assert!(refused.is_empty());
                assert!(matches!(changes[0].1.action, Action::TrashDisk { .. }));
            }
        }
    }
}
