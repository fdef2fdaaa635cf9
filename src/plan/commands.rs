//! One-machine plans for the commands that act at once: `destroy`,
//! `restore`, `snapshot`, `rollback` and `reinit`.
//!
//! They are pure functions of the fleet, the lock and a fresh observation,
//! like [`crate::plan::plan`], and return an ordinary [`Plan`] (with real
//! digests) that the CLI shows and the executor runs, so these commands are
//! planned, shown, checked for ownership and reported like `apply`. A
//! command that cannot be planned is a typed [`CommandRefusal`] naming the
//! host, machine or volume at fault; nothing has been done at that point.
//! The ownership rules are the planner's: a domain or disk without this
//! fleet's marker is never touched, a protected machine is never destroyed.

use super::model::{Action, Change, Disruption, FORMAT_VERSION, Inputs, Plan};
use super::planner::{fleet_digest, host_digest, lock_digest};
use super::snapshots::stamp;
use crate::fleet::{Fleet, Host, Machine, VmName};
use crate::lock::ImageLock;
use crate::resources::observed::{HostObservation, HostState, Observation, PowerState};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What every one-machine plan is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Basis<'a> {
    /// The validated fleet.
    pub fleet: &'a Fleet,
    /// The lock (only its digest goes into the plan).
    pub lock: &'a ImageLock,
    /// A fresh observation of the hosts concerned.
    pub obs: &'a Observation,
    /// Unix seconds the plan is made for (trash stamps, snapshot names).
    pub now: u64,
}

/// The snapshots of one disk, as `rollback` needs them. Observation lists
/// snapshots only for disks with a schedule, so the CLI reads these for the
/// machine's owned disks before planning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSnapshots {
    /// Every snapshot name of the disk.
    pub all: Vec<String>,
    /// Those a rollback to the target would destroy (ZFS: taken after it).
    pub newer: Vec<String>,
}

/// Options of `rollback` and `reinit` that shape the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollbackOptions {
    /// Power the guest off when it does not shut down in time.
    pub force: bool,
    /// Allow destroying snapshots newer than the target (ZFS).
    pub destroy_newer: bool,
}

/// Why a command was not planned. Nothing was changed in any case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefusal {
    /// The machine is not declared in the fleet file.
    #[error("machine {machine} is not in {}; nothing was changed", file.display())]
    NotInFleet {
        /// The machine.
        machine: String,
        /// The fleet file.
        file: PathBuf,
        /// What to do about it, for this command.
        hint: &'static str,
    },
    /// `destroy` of a machine still declared, without `--force`.
    #[error(
        "machine {machine} is still in {}; remove it there and run `virtfleet apply --allow-destroy`, or pass --force (the next apply would create it again, empty). Nothing was changed",
        file.display()
    )]
    StillInFleet {
        /// The machine.
        machine: String,
        /// The fleet file.
        file: PathBuf,
    },
    /// The fleet declares the machine `protect = True`.
    #[error("machine {machine} is protected in {}; refusing to destroy it", file.display())]
    Protected {
        /// The machine.
        machine: String,
        /// The fleet file.
        file: PathBuf,
    },
    /// The domain's marker says protected (as last applied).
    #[error(
        "machine {machine} on host {host} was protected when last applied; refusing to destroy it"
    )]
    ProtectedOnHost {
        /// The host.
        host: String,
        /// The machine.
        machine: String,
    },
    /// No host has a domain of this fleet by that name.
    #[error(
        "no machine {machine} of fleet {fleet:?} was found on any host{}; nothing was changed",
        if unreachable.is_empty() { String::new() } else { format!(" (hosts not observed: {})", unreachable.join(", ")) }
    )]
    NotFound {
        /// The machine.
        machine: String,
        /// The fleet's name.
        fleet: String,
        /// Hosts that could not be observed (it may be there).
        unreachable: Vec<String>,
    },
    /// The machine's host could not be observed.
    #[error("host {host} not reachable: {error}; nothing was changed")]
    HostUnreachable {
        /// The host.
        host: String,
        /// Why.
        error: String,
    },
    /// A domain of that name exists but is not this fleet's.
    #[error(
        "a domain named {machine:?} exists on host {host} and is not managed by fleet {fleet:?}; virtfleet will not touch it. Nothing was changed"
    )]
    ForeignDomain {
        /// The host.
        host: String,
        /// The domain's name.
        machine: String,
        /// This fleet's name.
        fleet: String,
    },
    /// A volume the machine should own is not this fleet's (or another machine's).
    #[error(
        "disk {volume} on host {host} is not owned by machine {machine} of fleet {fleet:?}; virtfleet will not touch it. Nothing was changed"
    )]
    ForeignDisk {
        /// The host.
        host: String,
        /// The machine.
        machine: String,
        /// The volume.
        volume: String,
        /// This fleet's name.
        fleet: String,
    },
    /// A disk the fleet declares does not exist yet.
    #[error("machine {machine}: disk {volume} does not exist on host {host}; nothing was changed")]
    MissingDisk {
        /// The host.
        host: String,
        /// The machine.
        machine: String,
        /// The volume.
        volume: String,
    },
    /// `restore` found nothing to bring back.
    #[error(
        "no trash entries for machine {machine} on host {host} (expired, or never destroyed); nothing was changed"
    )]
    NoTrash {
        /// The host.
        host: String,
        /// The machine.
        machine: String,
    },
    /// `restore` would overwrite a disk that exists.
    #[error(
        "disk {volume} exists on host {host}; a restore never overwrites a disk. Nothing was changed"
    )]
    DiskExists {
        /// The host.
        host: String,
        /// The volume.
        volume: String,
    },
    /// No disk of the machine has the snapshot.
    #[error(
        "machine {machine} has no snapshot {snapshot:?} (it has: {}); nothing was changed",
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    )]
    NoSnapshot {
        /// The machine.
        machine: String,
        /// The snapshot asked for.
        snapshot: String,
        /// The snapshots it has.
        known: Vec<String>,
    },
    /// A rollback would destroy newer snapshots and that was not allowed.
    #[error(
        "rolling {machine} back to {snapshot} would destroy newer snapshots: {}; pass --destroy-newer to allow it. Nothing was changed.",
        newer.join(", ")
    )]
    WouldDestroyNewer {
        /// The machine.
        machine: String,
        /// The target snapshot.
        snapshot: String,
        /// `disk@snapshot` of each snapshot that would go.
        newer: Vec<String>,
    },
}

impl CommandRefusal {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            CommandRefusal::NotInFleet { hint, .. } => Some(hint),
            CommandRefusal::Protected { .. } | CommandRefusal::ProtectedOnHost { .. } => Some(
                "set protect = False in fleet.dhall and apply first, if the machine really should go",
            ),
            CommandRefusal::NotFound { .. } => {
                Some("`virtfleet status` lists the machines on every host")
            }
            CommandRefusal::HostUnreachable { .. } => {
                Some("is the host up, and its libvirt URI and SSH access right?")
            }
            CommandRefusal::ForeignDomain { .. } | CommandRefusal::ForeignDisk { .. } => {
                Some("rename the machine in fleet.dhall, or remove the foreign object yourself")
            }
            CommandRefusal::MissingDisk { .. } => {
                Some("run `virtfleet apply` to create the machine's disks first")
            }
            CommandRefusal::NoSnapshot { .. } => {
                Some("`virtfleet snapshots NAME` lists the snapshots of a machine")
            }
            CommandRefusal::StillInFleet { .. }
            | CommandRefusal::NoTrash { .. }
            | CommandRefusal::DiskExists { .. }
            | CommandRefusal::WouldDestroyNewer { .. } => None,
        }
    }
}

/// A plan for `basis` holding `changes`, with the digests of the fleet, the
/// lock and every observed host, like a plan from [`crate::plan::plan`].
fn plan_of(basis: Basis<'_>, changes: Vec<Change>) -> Plan {
    Plan {
        format_version: FORMAT_VERSION,
        fleet: basis.fleet.name.to_string(),
        inputs: Inputs {
            fleet: fleet_digest(basis.fleet),
            lock: lock_digest(basis.lock),
            hosts: basis
                .obs
                .hosts
                .iter()
                .map(|(h, o)| (h.clone(), host_digest(basis.fleet, h, o)))
                .collect(),
            observed_at: basis.obs.taken_at,
            from_file: false,
            now: basis.now,
        },
        changes,
        pending: Vec::new(),
        refused: Vec::new(),
        unreachable: BTreeMap::new(),
        unmanaged: BTreeMap::new(),
        notes: Vec::new(),
        placements: Vec::new(),
    }
}

fn change(
    host: &str,
    address: String,
    machine: &str,
    action: Action,
    disruption: Disruption,
    reason: String,
) -> Change {
    Change {
        address,
        host: host.to_owned(),
        machine: Some(machine.to_owned()),
        action,
        disruption,
        reason,
        diff: None,
    }
}

/// The machine `name` of the fleet, with its host; `hint` says what to do
/// when it is not declared.
fn declared<'f>(
    fleet: &'f Fleet,
    name: &VmName,
    hint: &'static str,
) -> Result<(&'f Machine, &'f Host), CommandRefusal> {
    let m = fleet
        .machines
        .get(name)
        .ok_or_else(|| CommandRefusal::NotInFleet {
            machine: name.to_string(),
            file: fleet.source.clone(),
            hint,
        })?;
    Ok((m, &fleet.hosts[&m.host]))
}

/// The observed state of `host`.
fn reachable<'o>(obs: &'o Observation, host: &Host) -> Result<&'o HostState, CommandRefusal> {
    match obs.hosts.get(host.name.as_str()) {
        Some(HostObservation::Reachable(s)) => Ok(s),
        Some(HostObservation::Unreachable { error }) => Err(CommandRefusal::HostUnreachable {
            host: host.name.to_string(),
            error: error.clone(),
        }),
        None => Err(CommandRefusal::HostUnreachable {
            host: host.name.to_string(),
            error: "not observed".into(),
        }),
    }
}

/// Refuses a domain named like `m` that does not carry this fleet's marker.
fn no_foreign_domain(
    fleet: &Fleet,
    h: &str,
    state: &HostState,
    m: &str,
) -> Result<(), CommandRefusal> {
    match state.domains.get(m) {
        Some(d)
            if d.config
                .owner
                .as_ref()
                .is_none_or(|o| o.fleet != fleet.name.as_str()) =>
        {
            Err(CommandRefusal::ForeignDomain {
                host: h.into(),
                machine: m.into(),
                fleet: fleet.name.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// `(disk, volume)` of every disk of `m`, each checked to exist and to be
/// owned by this fleet's `m` (the same test as the planner's).
fn owned_disks(
    fleet: &Fleet,
    h: &str,
    state: &HostState,
    m: &Machine,
) -> Result<Vec<(String, String)>, CommandRefusal> {
    let n = m.name.as_str();
    let mut out = Vec::new();
    for (disk, _) in m.disks() {
        let vol = m.volume_name(&disk);
        let foreign = || CommandRefusal::ForeignDisk {
            host: h.into(),
            machine: n.into(),
            volume: vol.clone(),
            fleet: fleet.name.to_string(),
        };
        match state.disks.get(&vol) {
            Some(od) if od.owner.machine == n && od.owner.disk == disk => {}
            Some(_) => return Err(foreign()),
            None if state.unmanaged_files.contains(&format!("disks/{vol}")) => {
                return Err(foreign());
            }
            None => {
                return Err(CommandRefusal::MissingDisk {
                    host: h.into(),
                    machine: n.into(),
                    volume: vol,
                });
            }
        }
        out.push((disk, vol));
    }
    Ok(out)
}

fn running(state: &HostState, m: &str) -> bool {
    state
        .domains
        .get(m)
        .is_some_and(|d| matches!(d.state, PowerState::Running | PowerState::Paused))
}

/// The host holding this fleet's (unprotected) domain `name`, searched on
/// every observed host: a machine removed from the fleet has no host in it.
fn find_managed<'o>(
    basis: Basis<'o>,
    name: &VmName,
) -> Result<(&'o str, &'o HostState), CommandRefusal> {
    let fleet = basis.fleet;
    let (mut found, mut foreign) = (None, None);
    let mut unreachable = Vec::new();
    for (h, o) in &basis.obs.hosts {
        let state = match o {
            HostObservation::Reachable(s) => s,
            HostObservation::Unreachable { .. } => {
                unreachable.push(h.clone());
                continue;
            }
        };
        let managed = state
            .managed(fleet.name.as_str())
            .find(|(n, _)| *n == name.as_str());
        match managed {
            Some((_, d)) if d.config.owner.as_ref().is_some_and(|o| o.protect) => {
                return Err(CommandRefusal::ProtectedOnHost {
                    host: h.clone(),
                    machine: name.to_string(),
                });
            }
            // Keep looking: a protected copy on another host still refuses.
            Some(_) => found = Some((h.as_str(), state)),
            None if state.domains.contains_key(name.as_str()) => foreign = Some(h),
            None => {}
        }
    }
    if let Some(f) = found {
        return Ok(f);
    }
    Err(match foreign {
        Some(h) => CommandRefusal::ForeignDomain {
            host: h.clone(),
            machine: name.to_string(),
            fleet: fleet.name.to_string(),
        },
        None => CommandRefusal::NotFound {
            machine: name.to_string(),
            fleet: fleet.name.to_string(),
            unreachable,
        },
    })
}

/// `virtfleet destroy NAME`: stop, undefine and trash the machine wherever
/// a managed domain of that name is found. A machine still in the fleet
/// needs `force`; a protected one (in the fleet or in its marker) never goes.
pub fn destroy_plan(basis: Basis<'_>, name: &VmName, force: bool) -> Result<Plan, CommandRefusal> {
    let fleet = basis.fleet;
    if let Some(m) = fleet.machines.get(name) {
        if m.protect {
            return Err(CommandRefusal::Protected {
                machine: name.to_string(),
                file: fleet.source.clone(),
            });
        }
        if !force {
            return Err(CommandRefusal::StillInFleet {
                machine: name.to_string(),
                file: fleet.source.clone(),
            });
        }
    }
    let (host, state) = find_managed(basis, name)?;
    let volumes = state.volumes_of(name.as_str());
    let running = running(state, name.as_str());
    let reason = format!(
        "virtfleet destroy: {}undefine, move {} to the trash (restorable)",
        if running { "stop, " } else { "" },
        crate::text::plural(volumes.len(), "disk")
    );
    let c = change(
        host,
        format!("{host}/{name}"),
        name.as_str(),
        Action::Destroy { volumes },
        Disruption::Destructive,
        reason,
    );
    Ok(plan_of(basis, vec![c]))
}

/// `virtfleet restore NAME`: the newest trash entry of each of the
/// machine's volumes back into place. The machine must be in the fleet (the
/// next apply would trash the disks again otherwise), and no volume may
/// exist already: a restore never overwrites.
pub fn restore_plan(basis: Basis<'_>, name: &VmName) -> Result<Plan, CommandRefusal> {
    let (_, host) = declared(
        basis.fleet,
        name,
        "add it back first (the next apply would move restored disks to the trash again)",
    )?;
    let state = reachable(basis.obs, host)?;
    let h = host.name.as_str();
    // Newest trash entry per volume of this machine.
    let mut newest: BTreeMap<&str, (&str, u64, &str)> = BTreeMap::new();
    for (entry, t) in &state.trash {
        if t.owner.machine == name.as_str()
            && newest
                .get(t.volume.as_str())
                .is_none_or(|(_, at, _)| t.trashed_at > *at)
        {
            newest.insert(&t.volume, (entry, t.trashed_at, &t.owner.disk));
        }
    }
    if newest.is_empty() {
        return Err(CommandRefusal::NoTrash {
            host: h.into(),
            machine: name.to_string(),
        });
    }
    let mut changes = Vec::new();
    for (vol, (entry, at, disk)) in newest {
        if state.disks.contains_key(vol)
            || state.seeds.contains_key(vol)
            || state.unmanaged_files.contains(&format!("disks/{vol}"))
        {
            return Err(CommandRefusal::DiskExists {
                host: h.into(),
                volume: vol.into(),
            });
        }
        changes.push(change(
            h,
            format!("{h}/{name}/{disk}"),
            name.as_str(),
            Action::RestoreDisk {
                entry: entry.into(),
                volume: vol.into(),
            },
            Disruption::None,
            format!(
                "destroyed {} ago; back from the trash",
                crate::text::age(basis.now, at)
            ),
        ));
    }
    Ok(plan_of(basis, changes))
}

/// `virtfleet snapshot NAME --label L`: snapshot `vf-manual-<label>-<now>`
/// of every disk of the machine (never pruned by the policy).
pub fn snapshot_plan(basis: Basis<'_>, name: &VmName, label: &str) -> Result<Plan, CommandRefusal> {
    let (m, host) = declared(basis.fleet, name, "add it to fleet.dhall and apply first")?;
    let state = reachable(basis.obs, host)?;
    let h = host.name.as_str();
    no_foreign_domain(basis.fleet, h, state, name.as_str())?;
    let volumes = owned_disks(basis.fleet, h, state, m)?
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let snap = format!("vf-manual-{label}-{}", stamp(basis.now));
    let c = change(
        h,
        format!("{h}/{name}@{snap}"),
        name.as_str(),
        Action::Snapshot {
            volumes,
            name: snap,
        },
        Disruption::None,
        "manual snapshot (never pruned)".into(),
    );
    Ok(plan_of(basis, vec![c]))
}

/// `virtfleet rollback NAME --to SNAP` (and `reinit`): shut a running guest
/// down, roll every disk that has `to` back, and start it again. Disks
/// without `to` are left alone. `snapshots` holds each owned volume's
/// snapshots (see [`DiskSnapshots`]).
///
/// The order matters: the guest is stopped before any disk changes (QEMU
/// must not have a disk open that is rolled back under it), and started
/// only after every disk is back, so a failure half-way leaves it stopped.
pub fn rollback_plan(
    basis: Basis<'_>,
    name: &VmName,
    to: &str,
    snapshots: &BTreeMap<String, DiskSnapshots>,
    opts: RollbackOptions,
) -> Result<Plan, CommandRefusal> {
    let (m, host) = declared(basis.fleet, name, "add it to fleet.dhall and apply first")?;
    let state = reachable(basis.obs, host)?;
    let h = host.name.as_str();
    let n = name.as_str();
    no_foreign_domain(basis.fleet, h, state, n)?;
    let disks = owned_disks(basis.fleet, h, state, m)?;
    let empty = DiskSnapshots::default();
    let of = |vol: &str| snapshots.get(vol).unwrap_or(&empty);
    let having: Vec<&(String, String)> = disks
        .iter()
        .filter(|(_, v)| of(v).all.iter().any(|s| s == to))
        .collect();
    if having.is_empty() {
        return Err(CommandRefusal::NoSnapshot {
            machine: n.into(),
            snapshot: to.into(),
            known: disks.iter().flat_map(|(_, v)| of(v).all.clone()).collect(),
        });
    }
    let newer: Vec<String> = having
        .iter()
        .flat_map(|(d, v)| of(v).newer.iter().map(move |s| format!("{d}@{s}")))
        .collect();
    if !newer.is_empty() && !opts.destroy_newer {
        return Err(CommandRefusal::WouldDestroyNewer {
            machine: n.into(),
            snapshot: to.into(),
            newer,
        });
    }
    let disks: Vec<(&str, &str, &[String])> = having
        .iter()
        .map(|(d, v)| (d.as_str(), v.as_str(), of(v).newer.as_slice()))
        .collect();
    let force = running(state, n).then_some(opts.force);
    let changes = rollback_changes(h, n, to, &disks, force);
    Ok(plan_of(basis, changes))
}

/// Shutdown (when the guest runs: `force` is then Some), one rollback per
/// `(disk, volume, newer snapshots it destroys)`, start again.
fn rollback_changes(
    h: &str,
    n: &str,
    to: &str,
    disks: &[(&str, &str, &[String])],
    force: Option<bool>,
) -> Vec<Change> {
    let addr = format!("{h}/{n}");
    let mut changes = Vec::new();
    if let Some(force) = force {
        changes.push(change(
            h,
            addr.clone(),
            n,
            Action::Shutdown { force },
            Disruption::Restart,
            "a disk is only rolled back while no guest uses it".into(),
        ));
    }
    for (disk, vol, newer) in disks {
        let lost: String = newer
            .iter()
            .map(|s| format!("; destroys {disk}@{s}"))
            .collect();
        changes.push(change(
            h,
            format!("{addr}/{disk}@{to}"),
            n,
            Action::RollbackDisk {
                volume: (*vol).into(),
                name: to.into(),
            },
            Disruption::Destructive,
            format!("everything written to {disk} since {to} is lost{lost}"),
        ));
    }
    if force.is_some() {
        changes.push(change(
            h,
            addr,
            n,
            Action::Start,
            Disruption::None,
            "it was running before the rollback".into(),
        ));
    }
    changes
}
