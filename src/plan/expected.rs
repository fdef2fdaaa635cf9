//! The observation a host gives once a fleet is applied to it: what the
//! planner must find nothing to do about.
//!
//! Built from the planner's own [`desired_domain`] and the fleet's volume
//! names, so it is exactly what observation reports after a successful
//! apply. The planner's tests and the planner benchmark plan against it;
//! one definition keeps them from drifting apart.

use super::planner::{GIB, desired_domain};
use crate::fleet::{Fleet, Host, Machine, Power};
use crate::lock::ImageLock;
use crate::resources::observed::{
    DiskOwner, HostState, Live, ObservedDomain, OwnedDisk, OwnedSeed, PowerState,
};
use crate::resources::{layout, seed};
use std::collections::BTreeMap;

/// What observation reports for `host` right after `fleet` was applied
/// with `lock`: every pinned image present, every machine defined with its
/// disks at their declared sizes, running or stopped as declared. Machines
/// whose image is not pinned are absent (nothing could be made for them).
pub fn converged_state(fleet: &Fleet, lock: &ImageLock, host: &Host) -> HostState {
    let mut s = HostState::default();
    s.images
        .extend(lock.images.values().map(|e| e.sha256.to_string()));
    for m in fleet.machines_on(&host.name) {
        let Some(pin) = lock.images.get(&m.image) else {
            continue;
        };
        let config = desired_domain(fleet, host, m, pin.sha256.as_str());
        let mut disk_sizes = BTreeMap::new();
        for ((disk, gib), r) in m.disks().into_iter().zip(&config.disks) {
            disk_sizes.insert(r.target.clone(), gib * GIB);
            let owner = DiskOwner {
                fleet: fleet.name.to_string(),
                machine: m.name.to_string(),
                disk: disk.clone(),
                protect: m.protect,
            };
            // Converged: each disk has the vf-init its policy asks for.
            let init = super::planner::disk_policy(m, &disk).init;
            let disk = OwnedDisk {
                grow_untold: false,
                owner,
                path: r.path.clone(),
                size_bytes: gib * GIB,
                snapshots: if init {
                    vec![crate::plan::snapshots::INIT.to_owned()]
                } else {
                    Vec::new()
                },
            };
            s.disks.insert(m.volume_name(&disk.owner.disk), disk);
        }
        if let Some(seed) = seed::seed(m) {
            let volume = seed::seed_volume(m.name.as_str());
            let owned = OwnedSeed {
                owner: DiskOwner {
                    fleet: fleet.name.to_string(),
                    machine: m.name.to_string(),
                    disk: seed::SEED_DISK.into(),
                    protect: false,
                },
                path: layout::seed_path(&host.storage, &volume),
                summary: seed.summary,
            };
            s.seeds.insert(volume, owned);
        }
        s.domains
            .insert(m.name.to_string(), domain(m, config, disk_sizes));
    }
    s
}

/// The observed form of `m`'s freshly applied domain.
fn domain(
    m: &Machine,
    config: crate::resources::domain::DomainSpec,
    disk_sizes: BTreeMap<String, u64>,
) -> ObservedDomain {
    let running = m.power == Power::Running;
    ObservedDomain {
        config,
        state: if running {
            PowerState::Running
        } else {
            PowerState::Stopped
        },
        autostart: m.autostart,
        live: running.then_some(Live {
            vcpus: m.cpus,
            memory_mib: m.memory_mib,
        }),
        disk_sizes,
        addresses: Vec::new(),
    }
}
