//! Disks: each disk a machine declares exists, is owned by it, and is at
//! least as large as declared. Disks only grow; a new disk gets its
//! `vf-init` snapshot before the guest ever boots.

use super::{GIB, HostPlan, Phase};
use crate::fleet::Machine;
use crate::lock::LockEntry;
use crate::plan::model::{Action, BaseRef, Disruption};
use crate::plan::snapshots::INIT;
use crate::resources::domain::target_name;
use crate::resources::layout;
use crate::resources::observed::{HostState, OwnedDisk};
use std::collections::BTreeSet;

/// Plans `m`'s disks. Returns the volumes created by this plan, or `None`
/// when a disk was refused (then nothing else of `m` may be planned: a
/// domain must never be defined on a disk virtfleet does not own).
pub(super) fn plan(
    fleet: &str,
    state: &HostState,
    m: &Machine,
    pin: &LockEntry,
    running: bool,
    addr: &str,
    hp: &mut HostPlan<'_>,
) -> Option<BTreeSet<String>> {
    let mut refused = false;
    let mut created = BTreeSet::new();
    for (i, (disk, size_gib)) in m.disks().iter().enumerate() {
        let vol = m.volume_name(disk);
        let daddr = format!("{addr}/{disk}");
        let ok = match state.disks.get(&vol) {
            Some(od) => {
                let ok = plan_existing(m, od, i, disk, *size_gib, running, daddr, hp);
                if ok {
                    plan_missing_init(state, m, od, disk, addr, hp);
                }
                ok
            }
            None => match foreign(fleet, state, hp, &vol) {
                Some(why) => {
                    hp.refuse(daddr, why);
                    false
                }
                None => {
                    plan_new(m, pin, i, disk, *size_gib, state, addr, hp);
                    created.insert(vol);
                    true
                }
            },
        };
        refused |= !ok;
    }
    (!refused).then_some(created)
}

/// Why volume `vol`, not in this fleet's disks, must not be created: the
/// path is taken by something this fleet does not own.
fn foreign(fleet: &str, state: &HostState, hp: &HostPlan<'_>, vol: &str) -> Option<String> {
    let h = hp.name();
    let rel = layout::disk_rel(vol);
    if !state.unmanaged_files.contains(&rel) {
        return None;
    }
    let path = layout::disk_path(&hp.host.storage, vol);
    let attached = state
        .domains
        .values()
        .any(|d| d.config.disks.iter().any(|r| r.path == path));
    Some(if attached {
        format!("{rel} exists on host {h} and is not owned by fleet {fleet:?}")
    } else {
        format!(
            "{rel} exists on host {h} and is not owned by fleet {fleet:?}; virtfleet will not touch it"
        )
    })
}

/// An existing owned disk: it must be this machine's, and it may only grow.
/// Returns false when refused.
#[allow(clippy::too_many_arguments)] // the disk's coordinates, each used once
fn plan_existing(
    m: &Machine,
    od: &OwnedDisk,
    index: usize,
    disk: &str,
    size_gib: u64,
    running: bool,
    daddr: String,
    hp: &mut HostPlan<'_>,
) -> bool {
    let n = m.name.as_str();
    if od.owner.machine != n || od.owner.disk != disk {
        let why = format!(
            "volume {} belongs to machine {} disk {}",
            m.volume_name(disk),
            od.owner.machine,
            od.owner.disk
        );
        hp.refuse(daddr, why);
        return false;
    }
    if od.owner.protect != m.protect {
        // On the disk too: a protected machine's disks must survive even
        // when its domain (which carries the flag) is gone.
        let what = if m.protect {
            "protect = True: recorded on the disk too, so it is kept even if the domain vanishes"
        } else {
            "protect = False: lifted from the disk"
        };
        hp.add(
            Phase::Disk,
            daddr.clone(),
            Some(n),
            Action::ProtectDisk {
                volume: m.volume_name(disk),
                protect: m.protect,
            },
            Disruption::None,
            what.into(),
        );
    }
    let want_bytes = size_gib * GIB;
    if od.grow_untold && od.size_bytes >= want_bytes {
        // A run stopped between growing the disk and telling the guest:
        // the same grow again is idempotent and finishes it.
        hp.add(
            Phase::Disk,
            daddr,
            Some(n),
            Action::GrowDisk {
                volume: m.volume_name(disk),
                target: target_name(index),
                from_bytes: od.size_bytes,
                to_gib: od.size_bytes.div_ceil(GIB),
                running,
            },
            if running {
                Disruption::Live
            } else {
                Disruption::None
            },
            format!(
                "finish an interrupted grow: the disk is {} but the guest was not told yet",
                human_gib(od.size_bytes)
            ),
        );
        return true;
    }
    if od.size_bytes > want_bytes {
        let have = od.size_bytes.div_ceil(GIB);
        hp.refuse(daddr, format!("disk is {have} GiB but the fleet asks {size_gib} GiB: disks only grow, a shrink would lose data (set the size back to at least {have} GiB)"));
        return false;
    }
    if od.size_bytes < want_bytes {
        hp.add(
            Phase::Disk,
            daddr,
            Some(n),
            Action::GrowDisk {
                volume: m.volume_name(disk),
                target: target_name(index),
                from_bytes: od.size_bytes,
                to_gib: size_gib,
                running,
            },
            // A running guest sees the new size at once (block_resize).
            if running {
                Disruption::Live
            } else {
                Disruption::None
            },
            format!("grow {} → {size_gib} GiB", human_gib(od.size_bytes)),
        );
    }
    true
}

/// An owned disk without the `vf-init` its policy wants: a run stopped
/// between creating the disk and snapshotting it. Before any domain exists
/// the disk was never used, so the snapshot is still "fresh out of the
/// box" and is taken now. Once a guest may have written to it, a snapshot
/// now would be a lie: the plan says so instead, and how to get one.
fn plan_missing_init(
    state: &HostState,
    m: &Machine,
    od: &OwnedDisk,
    disk: &str,
    addr: &str,
    hp: &mut HostPlan<'_>,
) {
    let n = m.name.as_str();
    if !super::snapshots::disk_policy(m, disk).init || od.snapshots.iter().any(|s| s == INIT) {
        return;
    }
    // Used by a guest only if a domain has it attached: a disk added to an
    // existing machine is not attached before its vf-init is taken.
    let used = state
        .domains
        .get(n)
        .is_some_and(|d| d.config.disks.iter().any(|r| r.path == od.path));
    if used {
        hp.note(format!("{addr}/{disk}"), format!(
            "has no {INIT} snapshot and its guest may have written to it, so none is taken now; `virtfleet reinit {n}` cannot restore it (`virtfleet snapshot {n}` keeps today's state)"
        ));
        return;
    }
    let why = "init snapshot missing (an earlier run stopped before taking it); no guest has used the disk yet";
    add_init(hp, m, disk, addr, why);
}

/// The `vf-init` snapshot of `m`'s disk `disk`, taken before any guest
/// writes to it.
fn add_init(hp: &mut HostPlan<'_>, m: &Machine, disk: &str, addr: &str, why: &str) {
    hp.add(
        Phase::Disk,
        format!("{addr}/{disk}@{INIT}"),
        Some(m.name.as_str()),
        Action::Snapshot {
            volumes: vec![m.volume_name(disk)],
            name: INIT.into(),
        },
        Disruption::None,
        why.into(),
    );
}

/// A disk to create: the root disk as an overlay/clone of the machine's
/// image, data disks blank; then its init snapshot if the policy wants one.
#[allow(clippy::too_many_arguments)] // the disk's coordinates, each used once
fn plan_new(
    m: &Machine,
    pin: &LockEntry,
    index: usize,
    disk: &str,
    size_gib: u64,
    state: &HostState,
    addr: &str,
    hp: &mut HostPlan<'_>,
) {
    let (n, vol) = (m.name.as_str(), m.volume_name(disk));
    let base = (index == 0).then(|| BaseRef {
        image: m.image.to_string(),
        sha256: pin.sha256.to_string(),
        format: pin.format,
    });
    let what = if index == 0 {
        format!("overlay on {}", m.image)
    } else {
        "blank".into()
    };
    let mut reason = format!("new {size_gib} GiB disk ({what})");
    if state.trash.values().any(|t| t.volume == vol) {
        reason.push_str(&format!(
            "; a trashed copy exists: `virtfleet restore {n}` brings it back instead"
        ));
    }
    hp.add(
        Phase::Disk,
        format!("{addr}/{disk}"),
        Some(n),
        Action::CreateDisk {
            volume: vol.clone(),
            disk: disk.to_owned(),
            size_gib,
            base,
        },
        Disruption::None,
        reason,
    );
    // Before the first boot: "fresh out of the box" for reinit.
    if super::snapshots::disk_policy(m, disk).init {
        add_init(hp, m, disk, addr, "init snapshot of the new disk");
    }
}

/// `21474836480` → `20 GiB`; `1.50 GiB` when not whole.
fn human_gib(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::GIB;
    use crate::plan::model::{Action, Disruption};

    /// (observed GiB, declared GiB, guest running) → (action kind, disruption) or refusal.
    #[test]
    fn disks_grow_live_or_offline_and_never_shrink() {
        let table = [
            (10, 10, false, None),
            (10, 20, false, Some(Ok(Disruption::None))),
            (10, 20, true, Some(Ok(Disruption::Live))),
            (20, 10, false, Some(Err("disks only grow"))),
            (20, 10, true, Some(Err("disks only grow"))),
        ];
        for (have, want, running, expect) in table {
            let f = fleet(&[&format!("name = \"a\", diskGiB = {want}")]);
            let mut state = converged(&f);
            state.disks.get_mut("a-root").unwrap().size_bytes = have * GIB;
            let mut hp = host_plan(&f);
            let pin = lock().images.values().next().unwrap().clone();
            let created = super::plan(
                "t",
                &state,
                machine(&f, "a"),
                &pin,
                running,
                "hv1/a",
                &mut hp,
            );
            let (changes, _, refused) = parts(hp);
            let got = match (changes.first(), refused.first()) {
                (_, Some(r)) => Some(Err(if r.contains("disks only grow") {
                    "disks only grow"
                } else {
                    "other"
                })),
                (Some((_, c)), None) => {
                    assert!(matches!(c.action, Action::GrowDisk { .. }), "{c:?}");
                    Some(Ok(c.disruption))
                }
                (None, None) => None,
            };
            assert_eq!(got, expect, "{have} → {want} running={running}");
            assert_eq!(created.is_none(), refused.len() == 1);
        }
    }

    #[test]
    fn new_disks_are_created_with_init_snapshots_and_foreign_ones_refused() {
        let f = fleet(&["name = \"a\", dataDisks = [ V.Disk::{ name = \"data\", sizeGiB = 5 } ]"]);
        let pin = lock().images.values().next().unwrap().clone();
        // Nothing there: both disks created, each followed by its vf-init.
        let mut hp = host_plan(&f);
        let state = crate::resources::observed::HostState::default();
        let created = super::plan("t", &state, machine(&f, "a"), &pin, false, "hv1/a", &mut hp);
        let (changes, _, _) = parts(hp);
        let addrs: Vec<&str> = changes.iter().map(|(_, c)| c.address.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "hv1/a/root",
                "hv1/a/root@vf-init",
                "hv1/a/data",
                "hv1/a/data@vf-init"
            ]
        );
        assert_eq!(created.unwrap().len(), 2);
        // A directory of that name not owned by this fleet: refused, not created.
        let mut state = crate::resources::observed::HostState::default();
        state.unmanaged_files.push("disks/a-data".into());
        let mut hp = host_plan(&f);
        let created = super::plan("t", &state, machine(&f, "a"), &pin, false, "hv1/a", &mut hp);
        let (changes, _, refused) = parts(hp);
        assert!(created.is_none());
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].contains("not owned by fleet \"t\""),
            "{refused:?}"
        );
        assert!(changes.iter().all(|(_, c)| !c.address.contains("/data")));
    }

    /// A disk found without its vf-init: taken now when no guest ever had
    /// the disk (no domain, or one without it attached), only noted once
    /// one may have written to it.
    #[test]
    fn a_missing_init_snapshot_is_taken_only_before_any_guest_used_the_disk() {
        let f = fleet(&["name = \"a\""]);
        let pin = lock().images.values().next().unwrap().clone();
        for (domain, attached) in [(false, false), (true, false), (true, true)] {
            let domain_exists = domain && attached;
            let mut state = converged(&f);
            state.disks.get_mut("a-root").unwrap().snapshots.clear();
            if !domain {
                state.domains.clear();
            } else if !attached {
                state.domains.get_mut("a").unwrap().config.disks.clear();
            }
            let mut hp = host_plan(&f);
            super::plan("t", &state, machine(&f, "a"), &pin, false, "hv1/a", &mut hp);
            let notes: Vec<String> = hp.notes.iter().map(|n| n.message.clone()).collect();
            let (changes, _, refused) = parts(hp);
            assert!(refused.is_empty());
            let snap: Vec<&str> = changes
                .iter()
                .filter(|(_, c)| matches!(c.action, Action::Snapshot { .. }))
                .map(|(_, c)| c.address.as_str())
                .collect();
            if domain_exists {
                assert!(snap.is_empty(), "{snap:?}");
                assert!(
                    notes[0].contains("reinit a` cannot restore it"),
                    "{notes:?}"
                );
            } else {
                assert_eq!(snap, ["hv1/a/root@vf-init"]);
                assert!(notes.is_empty());
            }
        }
    }

    /// A disk grown under a running guest that was not told: the grow is
    /// planned again (live) even though the size already matches.
    #[test]
    fn an_untold_grow_is_finished() {
        let f = fleet(&["name = \"a\", diskGiB = 10"]);
        let pin = lock().images.values().next().unwrap().clone();
        for (untold, running, expect) in [
            (false, true, None),
            (true, true, Some(Disruption::Live)),
            (true, false, Some(Disruption::None)),
        ] {
            let mut state = converged(&f);
            state.disks.get_mut("a-root").unwrap().grow_untold = untold;
            let mut hp = host_plan(&f);
            super::plan(
                "t",
                &state,
                machine(&f, "a"),
                &pin,
                running,
                "hv1/a",
                &mut hp,
            );
            let (changes, _, _) = parts(hp);
            let got = changes.iter().find_map(|(_, c)| match c.action {
                Action::GrowDisk { to_gib, .. } => {
                    assert_eq!(to_gib, 10);
                    Some(c.disruption)
                }
                _ => None,
            });
            assert_eq!(got, expect, "untold={untold} running={running}");
        }
    }

    /// A machine's protection is recorded on its disks, and lifted with it.
    #[test]
    fn protection_is_recorded_on_the_disks() {
        for (declared, on_disk, expect) in [
            (true, false, Some(true)),
            (false, true, Some(false)),
            (true, true, None),
            (false, false, None),
        ] {
            let f = fleet(&[&format!(
                "name = \"a\", protect = {}",
                if declared { "True" } else { "False" }
            )]);
            let pin = lock().images.values().next().unwrap().clone();
            let mut state = converged(&f);
            state.disks.get_mut("a-root").unwrap().owner.protect = on_disk;
            let mut hp = host_plan(&f);
            super::plan("t", &state, machine(&f, "a"), &pin, false, "hv1/a", &mut hp);
            let (changes, _, _) = parts(hp);
            let got = changes.iter().find_map(|(_, c)| match c.action {
                Action::ProtectDisk { protect, .. } => Some(protect),
                _ => None,
            });
            assert_eq!(got, expect, "declared={declared} on disk={on_disk}");
        }
    }
}
