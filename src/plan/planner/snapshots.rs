//! Scheduled snapshots: those due by the policy are taken, those it no
//! longer keeps are pruned (destructive). The policy itself is pure and
//! lives in [`crate::plan::snapshots`]; this module turns its decisions
//! into changes.

use super::{HostPlan, Phase};
use crate::fleet::{Machine, Snapshots, Storage};
use crate::plan::model::{Action, Disruption};
use crate::plan::snapshots::{INIT, decide};
use crate::resources::observed::HostState;
use std::collections::BTreeSet;

/// The snapshot policy of one of `m`'s disks (`root` or a data disk).
pub(crate) fn disk_policy(m: &Machine, disk: &str) -> Snapshots {
    m.data_disks
        .iter()
        .find(|d| d.name.as_str() == disk)
        .map(|d| d.snapshots)
        .unwrap_or(m.snapshots)
}

/// What is snapshotted together: its address, volumes, policy and the
/// snapshot names it has now.
struct Unit {
    address: String,
    volumes: Vec<String>,
    policy: Snapshots,
    existing: Vec<String>,
}

/// The snapshot units of `m`: one per disk on ZFS; one per machine (the
/// root disk's list, all disks together) on Dir hosts, where a running
/// guest's internal checkpoint always covers every disk.
fn units(
    storage: &Storage,
    state: &HostState,
    m: &Machine,
    addr: &str,
    created: &BTreeSet<String>,
) -> Vec<Unit> {
    let existing = |vol: &str, disk: &str| -> Vec<String> {
        match state.disks.get(vol) {
            Some(od) => od.snapshots.clone(),
            // Created by this plan, with its init snapshot right after.
            None if created.contains(vol) && disk_policy(m, disk).init => vec![INIT.to_owned()],
            None => Vec::new(),
        }
    };
    match storage {
        Storage::Zfs { .. } => m
            .disks()
            .iter()
            .map(|(disk, _)| {
                let vol = m.volume_name(disk);
                Unit {
                    address: format!("{addr}/{disk}"),
                    existing: existing(&vol, disk),
                    volumes: vec![vol],
                    policy: disk_policy(m, disk),
                }
            })
            .collect(),
        Storage::Dir { .. } => vec![Unit {
            address: addr.to_owned(),
            volumes: m.disks().iter().map(|(d, _)| m.volume_name(d)).collect(),
            policy: m.snapshots,
            existing: existing(&m.volume_name("root"), "root"),
        }],
    }
}

/// Plans the snapshots due and the prunes of `m`'s disks.
pub(super) fn plan(
    hp: &mut HostPlan<'_>,
    state: &HostState,
    m: &Machine,
    addr: &str,
    created: &BTreeSet<String>,
) {
    let n = Some(m.name.as_str());
    for unit in units(&hp.host.storage, state, m, addr, created) {
        let decision = decide(&unit.policy, &unit.existing, hp.opts.now);
        for name in decision.create {
            let address = format!("{}@{name}", unit.address);
            let action = Action::Snapshot {
                volumes: unit.volumes.clone(),
                name,
            };
            let reason = "scheduled snapshot due".into();
            hp.add(
                Phase::Snapshot,
                address,
                n,
                action,
                Disruption::None,
                reason,
            );
        }
        for name in decision.prune {
            let address = format!("{}@{name}", unit.address);
            let action = Action::PruneSnapshot {
                volumes: unit.volumes.clone(),
                name,
            };
            let reason = "no longer kept by the snapshot policy".into();
            hp.add(
                Phase::Snapshot,
                address,
                n,
                action,
                Disruption::Destructive,
                reason,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use std::collections::BTreeSet;

    /// Storage → the snapshot units of a machine with a data disk.
    #[test]
    fn units_are_per_disk_on_zfs_and_per_machine_on_dir() {
        let m = "name = \"a\", snapshots = V.Snapshots::{ daily = 2 }, \
                 dataDisks = [ V.Disk::{ name = \"data\", sizeGiB = 5 } ]";
        let table = [
            (
                "V.Storage.Dir { path = \"/srv/vf\" }",
                vec![("hv1/a", vec!["a-root", "a-data"])],
            ),
            (
                "V.Storage.Zfs { parent = \"tank/vf\" }",
                vec![
                    ("hv1/a/root", vec!["a-root"]),
                    ("hv1/a/data", vec!["a-data"]),
                ],
            ),
        ];
        for (storage, want) in table {
            let f = fleet_on(storage, &[m]);
            let state = converged(&f);
            let units = super::units(
                &host(&f).storage,
                &state,
                machine(&f, "a"),
                "hv1/a",
                &BTreeSet::new(),
            );
            let got: Vec<(&str, Vec<&str>)> = units
                .iter()
                .map(|u| {
                    (
                        u.address.as_str(),
                        u.volumes.iter().map(String::as_str).collect(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{storage}");
            // Due now: one daily snapshot per unit, named by today's stamp.
            let mut hp = host_plan(&f);
            super::plan(&mut hp, &state, machine(&f, "a"), "hv1/a", &BTreeSet::new());
            let (changes, _, _) = parts(hp);
            assert_eq!(changes.len(), want.len(), "{storage}: {changes:?}");
            assert!(
                changes
                    .iter()
                    .all(|(_, c)| c.address.contains("@vf-daily-"))
            );
        }
    }
}
