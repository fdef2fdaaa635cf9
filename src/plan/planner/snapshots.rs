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
pub(super) fn disk_policy(m: &Machine, disk: &str) -> Snapshots {
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
