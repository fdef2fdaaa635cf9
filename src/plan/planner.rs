//! The pure planner: (fleet, lock, observation, options) → plan.
//!
//! No I/O, no clock, no environment: `now` and permissions come in as
//! [`Options`]. Iteration is over BTreeMaps and sorted vectors, so the same
//! inputs give the same plan byte for byte. Per host, changes are ordered
//! so that every step's prerequisites come first: base images, cleanup of
//! crashed creations, disks, domain definitions and updates, power, and
//! finally destroys and trash expiry.

use super::model::*;
use super::snapshots::{self, INIT};
use crate::fleet::{CpuMode, Fleet, Host, Machine, Power, Storage};
use crate::lock::ImageLock;
use crate::resources::domain::{DiskRef, DomainSpec, Nic, Owner, target_name};
use crate::resources::identity;
use crate::resources::layout;
use crate::resources::observed::{HostObservation, HostState, Observation};
use crate::resources::observed::{ObservedDomain, PowerState};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Bytes in a GiB.
pub const GIB: u64 = 1024 * 1024 * 1024;

/// Planner inputs that are not state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Unix seconds to plan for (trash expiry).
    pub now: u64,
    /// Destroys and purges may be applied.
    pub allow_destroy: bool,
    /// Restart-class changes may be applied.
    pub allow_restart: bool,
}

/// sha256 of the validated fleet (as JSON), for stale-plan detection.
pub fn fleet_digest(fleet: &Fleet) -> String {
    hex::encode(Sha256::digest(
        serde_json::to_vec(fleet).expect("fleet serialises"),
    ))
}

/// sha256 of the lockfile's canonical text.
pub fn lock_digest(lock: &ImageLock) -> String {
    hex::encode(Sha256::digest(lock.render().as_bytes()))
}

/// Digest of host `host`'s observation as far as a plan for `fleet` depends on it.
pub fn host_digest(fleet: &Fleet, host: &str, obs: &HostObservation) -> String {
    let names = fleet
        .machines
        .values()
        .filter(|m| m.host.as_str() == host)
        .map(|m| m.name.to_string())
        .collect();
    obs.digest(fleet.name.as_str(), &names)
}

/// Hash of everything that goes into a machine's domain and disks, stored
/// in the domain's metadata: a mismatch means the fleet changed, a match
/// with differing fields means someone changed the domain behind our back.
///
/// Only what goes into the definition counts: power, autostart and disk
/// sizes have their own actions and must not trigger a redefinition.
pub fn spec_hash(definition: &DomainSpec, image_sha: &str) -> String {
    let mut d = definition.clone();
    d.owner = None;
    let v = serde_json::json!({ "domain": d, "image": image_sha });
    hex::encode(&Sha256::digest(serde_json::to_vec(&v).expect("spec serialises"))[..8])
}

/// The domain virtfleet wants for `m` on `host`.
pub fn desired_domain(fleet: &Fleet, host: &Host, m: &Machine, image_sha: &str) -> DomainSpec {
    let (f, h, n) = (fleet.name.as_str(), host.name.as_str(), m.name.as_str());
    let format = match host.storage {
        Storage::Dir { .. } => "qcow2",
        Storage::Zfs { .. } => "raw",
    };
    let disks = m
        .disks()
        .iter()
        .enumerate()
        .map(|(i, (disk, _))| DiskRef {
            target: target_name(i),
            path: layout::disk_path(&host.storage, &m.volume_name(disk)),
            format: format.into(),
        })
        .collect();
    let mut spec = DomainSpec {
        name: n.into(),
        uuid: identity::uuid(f, h, n),
        domain_type: host.domain_type,
        cpu_mode: host.cpu_mode.clone(),
        vcpus: m.cpus,
        memory_mib: m.memory_mib,
        current_memory_mib: m.memory_mib,
        disks,
        nic: Some(Nic::for_network(&host.network, identity::mac(f, h, n))),
        owner: None,
    };
    let hash = spec_hash(&spec, image_sha);
    spec.owner = Some(Owner {
        fleet: f.into(),
        host: h.into(),
        machine: n.into(),
        spec_hash: hash,
        protect: m.protect,
    });
    spec
}

/// A unified diff of two domain specs, both rendered by the same code.
pub fn domain_diff(actual: &DomainSpec, desired: &DomainSpec) -> String {
    let (a, d) = (actual.to_xml(), desired.to_xml());
    similar::TextDiff::from_lines(&a, &d)
        .unified_diff()
        .context_radius(2)
        .header("actual", "desired")
        .to_string()
}

/// A change on `host` with no diff.
fn change(
    host: &str,
    address: String,
    machine: Option<&str>,
    action: Action,
    disruption: Disruption,
    reason: String,
) -> Change {
    Change {
        address,
        host: host.to_owned(),
        machine: machine.map(str::to_owned),
        action,
        disruption,
        reason,
        diff: None,
    }
}

struct HostPlan<'a> {
    host: &'a Host,
    opts: Options,
    changes: Vec<(u8, Change)>,
    pending: Vec<Pending>,
    refused: Vec<Refusal>,
}

// Phases: the order changes run in on one host.
const P_IMAGE: u8 = 0;
const P_CLEAN: u8 = 1;
const P_DISK: u8 = 2;
const P_DOMAIN: u8 = 3;
const P_POWER: u8 = 4;
const P_SNAPSHOT: u8 = 5;
const P_DESTROY: u8 = 6;
const P_PURGE: u8 = 7;

impl HostPlan<'_> {
    /// Adds `change` to run in `phase`, or to `pending` if its disruption
    /// is not permitted.
    fn push(&mut self, phase: u8, change: Change) {
        let disruption = change.disruption;
        let needs = match disruption {
            Disruption::Restart if !self.opts.allow_restart => {
                Some("--allow-restart (or settings.allowRestart)")
            }
            Disruption::Destructive if !self.opts.allow_destroy => {
                Some("--allow-destroy (or settings.allowDestroy)")
            }
            _ => None,
        };
        match needs {
            Some(n) => self.pending.push(Pending {
                change,
                needs: n.into(),
            }),
            None => self.changes.push((phase, change)),
        }
    }

    fn refuse(&mut self, address: String, message: String) {
        self.refused.push(Refusal { address, message });
    }

    /// A domain update of `address` is withheld (so its disks stay attached).
    fn update_pending(&self, address: &str) -> bool {
        self.pending.iter().any(|p| {
            p.change.address == address && matches!(p.change.action, Action::UpdateDomain { .. })
        })
    }
}

/// Computes the plan.
pub fn plan(
    fleet: &Fleet,
    lock: &ImageLock,
    obs: &Observation,
    opts: Options,
    from_file: bool,
) -> Plan {
    let mut plan = Plan {
        format_version: FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        inputs: Inputs {
            fleet: fleet_digest(fleet),
            lock: lock_digest(lock),
            hosts: obs
                .hosts
                .iter()
                .map(|(h, o)| (h.clone(), host_digest(fleet, h, o)))
                .collect(),
            observed_at: obs.taken_at,
            from_file,
            now: opts.now,
        },
        changes: Vec::new(),
        pending: Vec::new(),
        refused: Vec::new(),
        unreachable: BTreeMap::new(),
        unmanaged: BTreeMap::new(),
    };
    for host in fleet.hosts.values() {
        let name = host.name.to_string();
        let state = match obs.hosts.get(&name) {
            Some(HostObservation::Reachable(s)) => s,
            Some(HostObservation::Unreachable { error }) => {
                plan.unreachable.insert(name, error.clone());
                continue;
            }
            None => {
                plan.unreachable
                    .insert(name, "not in the observation".into());
                continue;
            }
        };
        let mut unmanaged: Vec<String> = state
            .unmanaged(fleet.name.as_str())
            .map(|d| format!("domain {d}"))
            .collect();
        let kind = match host.storage {
            Storage::Dir { .. } => "file",
            Storage::Zfs { .. } => "dataset",
        };
        unmanaged.extend(state.unmanaged_files.iter().map(|f| format!("{kind} {f}")));
        if !unmanaged.is_empty() {
            plan.unmanaged.insert(name.clone(), unmanaged);
        }
        let mut hp = HostPlan {
            host,
            opts,
            changes: Vec::new(),
            pending: Vec::new(),
            refused: Vec::new(),
        };
        plan_host(fleet, lock, state, &mut hp);
        // Stable sort: phase order, insertion (machine name) order within.
        hp.changes.sort_by_key(|(phase, _)| *phase);
        plan.changes.extend(hp.changes.into_iter().map(|(_, c)| c));
        plan.pending.extend(hp.pending);
        plan.refused.extend(hp.refused);
    }
    plan
}

fn plan_host(fleet: &Fleet, lock: &ImageLock, state: &HostState, hp: &mut HostPlan<'_>) {
    let host = hp.host;
    let h = host.name.as_str();
    let fleet_name = fleet.name.as_str();
    let desired: Vec<&Machine> = fleet.machines_on(&host.name).collect();
    let desired_names: BTreeSet<&str> = desired.iter().map(|m| m.name.as_str()).collect();

    // Base images, once per image used on this host.
    let mut images_done = BTreeSet::new();
    for m in &desired {
        let Some(pin) = lock.images.get(&m.image) else {
            hp.refuse(
                format!("{h}/{}", m.name),
                format!(
                    "image {:?} is not pinned in images.lock; run `virtfleet images lock`",
                    m.image.as_str()
                ),
            );
            continue;
        };
        let sha = pin.sha256.to_string();
        if !state.images.contains(&sha) && images_done.insert(sha) {
            hp.push(
                P_IMAGE,
                change(
                    h,
                    format!("{h}/images/{}", pin.sha256.short()),
                    None,
                    Action::EnsureImage {
                        image: m.image.to_string(),
                        sha256: pin.sha256.to_string(),
                        format: pin.format,
                        size: pin.size,
                    },
                    Disruption::None,
                    format!("base image {} is not on the host yet", m.image),
                ),
            );
        }
    }

    for path in &state.incomplete {
        hp.push(
            P_CLEAN,
            change(
                h,
                format!("{h}/{path}"),
                None,
                Action::RemoveIncomplete { path: path.clone() },
                Disruption::None,
                "left half-created by an interrupted apply".into(),
            ),
        );
    }

    for m in &desired {
        let Some(pin) = lock.images.get(&m.image) else {
            continue;
        };
        let n = m.name.as_str();
        let addr = format!("{h}/{n}");
        let want = desired_domain(fleet, host, m, pin.sha256.as_str());
        let observed = state.domains.get(n);
        if let Some(d) = observed
            && d.config
                .owner
                .as_ref()
                .is_none_or(|o| o.fleet != fleet_name)
        {
            hp.refuse(addr, format!("a domain named {n:?} already exists on host {h} and is not managed by fleet {fleet_name:?}; virtfleet will not touch it (rename the machine or remove that domain)"));
            continue;
        }
        let running =
            observed.is_some_and(|d| matches!(d.state, PowerState::Running | PowerState::Paused));

        // Disks.
        let mut disk_refused = false;
        let mut created: BTreeSet<String> = BTreeSet::new();
        for (i, (disk, size_gib)) in m.disks().iter().enumerate() {
            let vol = m.volume_name(disk);
            let daddr = format!("{addr}/{disk}");
            match state.disks.get(&vol) {
                Some(od) if od.owner.machine != n || od.owner.disk != *disk => {
                    hp.refuse(
                        daddr,
                        format!(
                            "volume {vol} belongs to machine {} disk {}",
                            od.owner.machine, od.owner.disk
                        ),
                    );
                    disk_refused = true;
                }
                Some(od) => {
                    let want_bytes = size_gib * GIB;
                    if od.size_bytes > want_bytes {
                        hp.refuse(daddr, format!("disk is {} GiB but the fleet asks {size_gib} GiB: disks only grow, a shrink would lose data (set the size back to at least {} GiB)", od.size_bytes.div_ceil(GIB), od.size_bytes.div_ceil(GIB)));
                        disk_refused = true;
                    } else if od.size_bytes < want_bytes {
                        hp.push(
                            P_DISK,
                            change(
                                h,
                                daddr,
                                Some(n),
                                Action::GrowDisk {
                                    volume: vol,
                                    target: target_name(i),
                                    from_bytes: od.size_bytes,
                                    to_gib: *size_gib,
                                    running,
                                },
                                if running {
                                    Disruption::Live
                                } else {
                                    Disruption::None
                                },
                                format!("grow {} → {size_gib} GiB", human_gib(od.size_bytes)),
                            ),
                        );
                    }
                }
                None => {
                    if state.domains.values().any(|d| {
                        d.config
                            .disks
                            .iter()
                            .any(|r| r.path == layout::disk_path(&host.storage, &vol))
                    }) && !state.disks.contains_key(&vol)
                        && unmanaged_volume(state, &vol)
                    {
                        hp.refuse(daddr, format!("disks/{vol} exists on host {h} and is not owned by fleet {fleet_name:?}"));
                        disk_refused = true;
                        continue;
                    }
                    if unmanaged_volume(state, &vol) {
                        hp.refuse(daddr, format!("disks/{vol} exists on host {h} and is not owned by fleet {fleet_name:?}; virtfleet will not touch it"));
                        disk_refused = true;
                        continue;
                    }
                    let base = (i == 0).then(|| BaseRef {
                        image: m.image.to_string(),
                        sha256: pin.sha256.to_string(),
                        format: pin.format,
                    });
                    let trashed = state.trash.values().any(|t| t.volume == vol);
                    let what = if i == 0 {
                        format!("overlay on {}", m.image)
                    } else {
                        "blank".into()
                    };
                    let mut reason = format!("new {size_gib} GiB disk ({what})");
                    if trashed {
                        reason.push_str(&format!("; a trashed copy exists: `virtfleet restore {n}` brings it back instead"));
                    }
                    hp.push(
                        P_DISK,
                        change(
                            h,
                            daddr,
                            Some(n),
                            Action::CreateDisk {
                                volume: vol.clone(),
                                disk: disk.clone(),
                                size_gib: *size_gib,
                                base,
                            },
                            Disruption::None,
                            reason,
                        ),
                    );
                    // Before the first boot: "fresh out of the box" for reinit.
                    if disk_policy(m, disk).init {
                        let action = Action::Snapshot {
                            volumes: vec![vol.clone()],
                            name: INIT.into(),
                        };
                        hp.push(
                            P_DISK,
                            change(
                                h,
                                format!("{addr}/{disk}@{INIT}"),
                                Some(n),
                                action,
                                Disruption::None,
                                "init snapshot of the new disk".into(),
                            ),
                        );
                    }
                    created.insert(vol);
                }
            }
        }
        if disk_refused {
            continue;
        }

        // Domain.
        match observed {
            None => {
                hp.push(
                    P_DOMAIN,
                    change(
                        h,
                        addr.clone(),
                        Some(n),
                        Action::DefineDomain { xml: want.to_xml() },
                        Disruption::None,
                        "new machine".into(),
                    ),
                );
                if m.autostart {
                    hp.push(
                        P_DOMAIN,
                        change(
                            h,
                            addr.clone(),
                            Some(n),
                            Action::SetAutostart { on: true },
                            Disruption::None,
                            "autostart with the host".into(),
                        ),
                    );
                }
                if m.power == Power::Running {
                    hp.push(
                        P_POWER,
                        change(
                            h,
                            addr.clone(),
                            Some(n),
                            Action::Start,
                            Disruption::None,
                            "power = Running".into(),
                        ),
                    );
                }
            }
            Some(d) => plan_update(hp, &addr, m, &want, d),
        }
        plan_snapshots(hp, state, m, &addr, &created);

        // Owned disks of this machine it no longer declares.
        let wanted_vols: BTreeSet<String> =
            m.disks().iter().map(|(d, _)| m.volume_name(d)).collect();
        for (vol, od) in &state.disks {
            if od.owner.machine == n && !wanted_vols.contains(vol) {
                let blocked = hp.update_pending(&addr);
                let change_addr = format!("{addr}/{}", od.owner.disk);
                if blocked {
                    let change = Change {
                        address: change_addr,
                        host: h.into(),
                        machine: Some(n.into()),
                        action: Action::TrashDisk {
                            volume: vol.clone(),
                        },
                        disruption: Disruption::Destructive,
                        reason: "disk removed from the fleet".into(),
                        diff: None,
                    };
                    hp.pending.push(Pending {
                        change,
                        needs: "the domain update above (it still uses this disk)".into(),
                    });
                } else {
                    hp.push(
                        P_DESTROY,
                        change(
                            h,
                            change_addr,
                            Some(n),
                            Action::TrashDisk {
                                volume: vol.clone(),
                            },
                            Disruption::Destructive,
                            "disk removed from the fleet (moved to the trash, restorable)".into(),
                        ),
                    );
                }
            }
        }
    }

    // Managed domains no longer in the fleet (for this host).
    for (n, d) in state.managed(fleet_name) {
        if desired_names.contains(n.as_str()) {
            continue;
        }
        let addr = format!("{h}/{n}");
        let protect = d.config.owner.as_ref().is_some_and(|o| o.protect);
        if protect {
            hp.refuse(addr, format!("machine {n} is protected (protect = True when last applied); it is kept. To remove it, set protect = False, apply, then remove it"));
            continue;
        }
        let volumes: Vec<String> = state
            .disks
            .iter()
            .filter(|(_, od)| od.owner.machine == *n)
            .map(|(v, _)| v.clone())
            .collect();
        let stopping = if matches!(d.state, PowerState::Running | PowerState::Paused) {
            "stop, "
        } else {
            ""
        };
        hp.push(
            P_DESTROY,
            change(
                h,
                addr,
                Some(n),
                Action::Destroy {
                    volumes: volumes.clone(),
                },
                Disruption::Destructive,
                format!(
                    "removed from the fleet: {stopping}undefine, move {} disk{} to the trash",
                    volumes.len(),
                    if volumes.len() == 1 { "" } else { "s" }
                ),
            ),
        );
    }
    // Owned disks whose machine has neither a domain nor a place in the fleet.
    for (vol, od) in &state.disks {
        let m = od.owner.machine.as_str();
        if !desired_names.contains(m) && !state.domains.contains_key(m) {
            hp.push(P_DESTROY, change(h, format!("{h}/{m}/{}", od.owner.disk), Some(m), Action::TrashDisk { volume: vol.clone() }, Disruption::Destructive, "orphan disk of a machine no longer in the fleet (moved to the trash, restorable)".into()));
        }
    }

    // Trash expiry.
    let keep = fleet.settings.trash_retention_days * 86_400;
    for (entry, t) in &state.trash {
        // saturating: a far-future stamp must never wrap into "expired".
        if t.trashed_at.saturating_add(keep) <= hp.opts.now {
            hp.push(
                P_PURGE,
                change(
                    h,
                    format!("{h}/trash/{entry}"),
                    Some(&t.owner.machine),
                    Action::PurgeTrash {
                        entry: entry.clone(),
                    },
                    Disruption::Destructive,
                    format!(
                        "trash retention of {} days expired",
                        fleet.settings.trash_retention_days
                    ),
                ),
            );
        }
    }
}

/// The snapshot policy of one of `m`'s disks (`root` or a data disk).
fn disk_policy(m: &Machine, disk: &str) -> crate::fleet::Snapshots {
    m.data_disks
        .iter()
        .find(|d| d.name.as_str() == disk)
        .map(|d| d.snapshots)
        .unwrap_or(m.snapshots)
}

/// Scheduled snapshots due and prunes for `m`'s disks: per disk on ZFS,
/// per machine (the root disk's list, all disks together) on Dir hosts,
/// where a running guest's internal checkpoint always covers every disk.
fn plan_snapshots(
    hp: &mut HostPlan<'_>,
    state: &HostState,
    m: &Machine,
    addr: &str,
    created: &BTreeSet<String>,
) {
    let h = hp.host.name.to_string();
    let n = m.name.as_str();
    let existing = |vol: &str, disk: &str| -> Vec<String> {
        match state.disks.get(vol) {
            Some(od) => od.snapshots.clone(),
            None if created.contains(vol) && disk_policy(m, disk).init => vec![INIT.to_owned()],
            None => Vec::new(),
        }
    };
    // (address, volumes, policy, existing snapshot names)
    let units: Vec<(String, Vec<String>, crate::fleet::Snapshots, Vec<String>)> =
        match hp.host.storage {
            crate::fleet::Storage::Zfs { .. } => m
                .disks()
                .iter()
                .map(|(disk, _)| {
                    let vol = m.volume_name(disk);
                    (
                        format!("{addr}/{disk}"),
                        vec![vol.clone()],
                        disk_policy(m, disk),
                        existing(&vol, disk),
                    )
                })
                .collect(),
            crate::fleet::Storage::Dir { .. } => {
                let vols = m.disks().iter().map(|(d, _)| m.volume_name(d)).collect();
                vec![(
                    addr.to_owned(),
                    vols,
                    m.snapshots,
                    existing(&m.volume_name("root"), "root"),
                )]
            }
        };
    for (uaddr, volumes, policy, names) in units {
        let decision = snapshots::decide(&policy, &names, hp.opts.now);
        for name in decision.create {
            let action = Action::Snapshot {
                volumes: volumes.clone(),
                name: name.clone(),
            };
            hp.push(
                P_SNAPSHOT,
                change(
                    &h,
                    format!("{uaddr}@{name}"),
                    Some(n),
                    action,
                    Disruption::None,
                    "scheduled snapshot due".into(),
                ),
            );
        }
        for name in decision.prune {
            let action = Action::PruneSnapshot {
                volumes: volumes.clone(),
                name: name.clone(),
            };
            hp.push(
                P_SNAPSHOT,
                change(
                    &h,
                    format!("{uaddr}@{name}"),
                    Some(n),
                    action,
                    Disruption::Destructive,
                    "no longer kept by the snapshot policy".into(),
                ),
            );
        }
    }
}

fn unmanaged_volume(state: &HostState, vol: &str) -> bool {
    state
        .unmanaged_files
        .iter()
        .any(|f| f == &format!("disks/{vol}"))
}

fn human_gib(bytes: u64) -> String {
    if bytes.is_multiple_of(GIB) {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{:.2} GiB", bytes as f64 / GIB as f64)
    }
}

/// Plans changes to an existing managed domain.
fn plan_update(
    hp: &mut HostPlan<'_>,
    addr: &str,
    m: &Machine,
    want: &DomainSpec,
    d: &ObservedDomain,
) {
    let n = m.name.as_str();
    let h = hp.host.name.to_string();
    let h = h.as_str();
    let mut have = d.config.clone();
    if want.cpu_mode == CpuMode::Default {
        // "Default" leaves the model to the hypervisor, and libvirt writes the
        // one it picked (e.g. qemu64) into the definition: any model matches.
        have.cpu_mode = CpuMode::Default;
    }
    let have = &have;
    let running = matches!(d.state, PowerState::Running | PowerState::Paused);
    let hash_same =
        have.owner.as_ref().map(|o| &o.spec_hash) == want.owner.as_ref().map(|o| &o.spec_hash);
    let mut what = Vec::new();
    let mut restart = false;
    let mut memory_live = None;
    if have.vcpus != want.vcpus {
        what.push(format!("vcpus {} → {}", have.vcpus, want.vcpus));
        restart |= running;
    }
    if have.memory_mib != want.memory_mib || have.current_memory_mib != want.current_memory_mib {
        what.push(format!(
            "memory {} → {} MiB",
            have.memory_mib, want.memory_mib
        ));
        if running {
            // The balloon can go down to any size, and up to the running
            // guest's maximum; beyond that the maximum itself must grow.
            if want.memory_mib <= have.memory_mib {
                memory_live = Some(want.memory_mib);
            } else {
                restart = true;
            }
        }
    }
    let mut rest = have.clone();
    rest.vcpus = want.vcpus;
    rest.memory_mib = want.memory_mib;
    rest.current_memory_mib = want.current_memory_mib;
    rest.owner.clone_from(&want.owner);
    if rest != *want {
        let mut fields = Vec::new();
        if have.disks != want.disks {
            fields.push("disks");
        }
        if have.nic != want.nic {
            fields.push("network");
        }
        if have.domain_type != want.domain_type {
            fields.push("domain type");
        }
        if have.cpu_mode != want.cpu_mode {
            fields.push("cpu mode");
        }
        if have.uuid != want.uuid {
            fields.push("uuid");
        }
        what.push(fields.join(", "));
        restart |= running;
    }
    let metadata_only = what.is_empty();
    if metadata_only && (!hash_same || have.owner != want.owner) {
        what.push("ownership metadata".into());
    }
    if m.power == Power::Stopped {
        // It is about to be stopped: the new definition applies at its next start.
        restart = false;
        memory_live = None;
    }
    if !what.is_empty() {
        let origin = if hash_same {
            "drift: changed outside virtfleet"
        } else {
            "fleet.dhall changed"
        };
        let disruption = if restart {
            Disruption::Restart
        } else if running && !metadata_only && memory_live.is_some() {
            Disruption::Live
        } else {
            Disruption::None
        };
        let how = if restart {
            "; restart to take effect"
        } else {
            ""
        };
        hp.push(
            P_DOMAIN,
            Change {
                diff: Some(domain_diff(have, want)),
                ..change(
                    h,
                    addr.into(),
                    Some(n),
                    Action::UpdateDomain {
                        xml: want.to_xml(),
                        memory_live_mib: memory_live,
                        restart,
                    },
                    disruption,
                    format!("{origin}: {}{how}", what.join("; ")),
                )
            },
        );
    }
    // The live balloon size is not compared: it is best effort (a guest
    // without a balloon driver never follows it), and planning it would
    // never converge for such guests. The persistent definition is managed.
    if d.autostart != m.autostart {
        hp.push(
            P_DOMAIN,
            change(
                h,
                addr.into(),
                Some(n),
                Action::SetAutostart { on: m.autostart },
                Disruption::None,
                format!("autostart {} → {}", d.autostart, m.autostart),
            ),
        );
    }
    match (m.power, running) {
        (Power::Running, false) => hp.push(
            P_POWER,
            change(
                h,
                addr.into(),
                Some(n),
                Action::Start,
                Disruption::None,
                "power = Running".into(),
            ),
        ),
        (Power::Stopped, true) => hp.push(
            P_POWER,
            change(
                h,
                addr.into(),
                Some(n),
                Action::Stop,
                Disruption::Restart,
                "power = Stopped".into(),
            ),
        ),
        _ => {}
    }
}
