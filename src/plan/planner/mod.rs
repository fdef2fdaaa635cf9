//! The pure planner: (fleet, lock, observation, options) → plan.
//!
//! No I/O, no clock, no environment: `now` and permissions come in as
//! [`Options`]. Iteration is over BTreeMaps and sorted vectors, so the same
//! inputs give the same plan byte for byte.
//!
//! The planner is split by resource, one module each, so a new resource
//! (cloud-init seed, network, placement) slots in beside the others:
//! [`images`] (base images), [`disks`], [`seed`] (cloud-init), [`domain`] (definition and its
//! updates), [`power`], [`snapshots`] and [`removals`] (crash leftovers,
//! destroys, trash expiry). Each pushes changes tagged with a [`Phase`];
//! per host, changes run in phase order, so every step's prerequisites come
//! first.

mod disks;
mod domain;
mod images;
mod moves;
mod power;
mod removals;
mod seed;
mod snapshots;
#[cfg(test)]
mod testkit;

pub use domain::{desired_domain, desired_domain_as, domain_diff, spec_hash};
pub(crate) use snapshots::disk_policy;

use super::model::*;
use crate::fleet::{Fleet, Host, Machine, Storage};
use crate::lock::ImageLock;
use crate::resources::identity::Identity;
use crate::resources::observed::{
    HostObservation, HostState, Observation, ObservedDomain, PowerState,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Bytes in a GiB.
pub const GIB: u64 = 1024 * 1024 * 1024;

/// Where the observation came from; shown in every rendering of the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// Observed from the hosts just now.
    #[default]
    Live,
    /// Read from a saved observation file (`plan --observed`).
    File,
}

/// Planner inputs that are not state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Unix seconds to plan for (trash expiry, snapshot schedules).
    pub now: u64,
    /// Destroys and purges may be applied.
    pub allow_destroy: bool,
    /// Restart-class changes may be applied.
    pub allow_restart: bool,
    /// Where the observation came from.
    pub source: Source,
    /// Show cloud-init user-data text in seed changes (it may hold secrets).
    pub show_user_data: bool,
}

/// The order changes run in on one host: each phase's changes need only
/// what earlier phases made (a disk needs its base image, a domain its
/// disks, a start its domain); destroys come last so a failed creation
/// never leaves a host with less than it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Base images copied to the host.
    Image,
    /// Half-made objects of an interrupted apply removed.
    Clean,
    /// Disks created, grown, and their init snapshots taken.
    Disk,
    /// Domains defined or redefined, autostart set.
    Domain,
    /// Guests started or stopped.
    Power,
    /// Scheduled snapshots taken and pruned.
    Snapshot,
    /// Machines destroyed and disks moved to the trash.
    Destroy,
    /// Expired trash deleted.
    Purge,
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
    // Every machine that may be on the host (independent of placement, so
    // apply computes the same digest from the same fleet).
    let names = fleet
        .machines
        .values()
        .filter(|m| {
            m.host.as_str() == host || m.placement.candidates.iter().any(|c| c.as_str() == host)
        })
        .map(|m| m.name.to_string())
        .collect();
    obs.digest(fleet.name.as_str(), &names)
}

/// A guest that holds its disks and memory: running, or paused.
pub(crate) fn is_up(d: &ObservedDomain) -> bool {
    matches!(d.state, PowerState::Running | PowerState::Paused)
}

/// The plan of one host while it is being built.
pub(crate) struct HostPlan<'a> {
    pub host: &'a Host,
    pub opts: Options,
    changes: Vec<(Phase, Change)>,
    pending: Vec<Pending>,
    refused: Vec<Refusal>,
    notes: Vec<Refusal>,
}

impl<'a> HostPlan<'a> {
    fn new(host: &'a Host, opts: Options) -> Self {
        HostPlan {
            host,
            opts,
            changes: Vec::new(),
            pending: Vec::new(),
            refused: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// The host's name, for addresses.
    pub fn name(&self) -> &'a str {
        self.host.name.as_str()
    }

    /// Adds a change on this host without a diff.
    pub fn add(
        &mut self,
        phase: Phase,
        address: String,
        machine: Option<&str>,
        action: Action,
        disruption: Disruption,
        reason: String,
    ) {
        let change = Change {
            address,
            host: self.name().to_owned(),
            machine: machine.map(str::to_owned),
            action,
            disruption,
            reason,
            diff: None,
        };
        self.push(phase, change);
    }

    /// Adds `change` to run in `phase`, or to `pending` if its disruption
    /// is not permitted.
    pub fn push(&mut self, phase: Phase, change: Change) {
        let needs = match change.disruption {
            Disruption::Restart if !self.opts.allow_restart => {
                Some("--allow-restart (or settings.allowRestart)")
            }
            Disruption::Destructive if !self.opts.allow_destroy => {
                Some("--allow-destroy (or settings.allowDestroy)")
            }
            _ => None,
        };
        match needs {
            Some(n) => self.hold(change, n.into()),
            None => self.changes.push((phase, change)),
        }
    }

    /// Withholds `change` until `needs` is met.
    pub fn hold(&mut self, change: Change, needs: String) {
        self.pending.push(Pending { change, needs });
    }

    /// Tells the user something about this host that changes nothing.
    pub fn note(&mut self, address: String, message: String) {
        self.notes.push(Refusal { address, message });
    }

    /// Refuses to do something at `address`; a plan with refusals cannot be applied.
    pub fn refuse(&mut self, address: String, message: String) {
        self.refused.push(Refusal { address, message });
    }

    /// A domain update of `address` is withheld (so its disks stay attached).
    pub fn update_pending(&self, address: &str) -> bool {
        self.pending.iter().any(|p| {
            p.change.address == address && matches!(p.change.action, Action::UpdateDomain { .. })
        })
    }

    /// Moves this host's share into `plan`, changes in phase order. The
    /// sort is stable: within a phase, insertion (machine name) order.
    fn finish_into(mut self, plan: &mut Plan) {
        self.changes.sort_by_key(|(phase, _)| *phase);
        plan.changes
            .extend(self.changes.into_iter().map(|(_, c)| c));
        plan.pending.extend(self.pending);
        plan.refused.extend(self.refused);
        plan.notes.extend(self.notes);
    }
}

/// Computes the plan.
pub fn plan(fleet: &Fleet, lock: &ImageLock, obs: &Observation, opts: Options) -> Plan {
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
            from_file: opts.source == Source::File,
            now: opts.now,
        },
        changes: Vec::new(),
        pending: Vec::new(),
        refused: Vec::new(),
        unreachable: BTreeMap::new(),
        unmanaged: BTreeMap::new(),
        notes: Vec::new(),
        placements: Vec::new(),
    };
    let placement = crate::plan::placement::place(fleet, obs);
    for (m, why) in &placement.unfit {
        plan.refused.push(Refusal {
            address: m.clone(),
            message: why.clone(),
        });
    }
    for (m, why) in &placement.waiting {
        plan.notes.push(Refusal {
            address: m.clone(),
            message: why.clone(),
        });
    }
    plan.placements.clone_from(&placement.decisions);
    let placed = placement.fleet.as_ref().expect("placement makes a fleet");
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
        let unmanaged = unmanaged(placed, host, state);
        if !unmanaged.is_empty() {
            plan.unmanaged.insert(name, unmanaged);
        }
        let mut hp = HostPlan::new(host, opts);
        plan_host(placed, lock, state, obs, &placement, &mut hp);
        hp.finish_into(&mut plan);
    }
    plan
}

/// Objects on a host that are not this fleet's: listed, never touched.
fn unmanaged(fleet: &Fleet, host: &Host, state: &HostState) -> Vec<String> {
    let kind = match host.storage {
        Storage::Dir { .. } => "file",
        Storage::Zfs { .. } => "dataset",
    };
    state
        .unmanaged(fleet.name.as_str())
        .map(|d| format!("domain {d}"))
        .chain(state.unmanaged_files.iter().map(|f| format!("{kind} {f}")))
        .collect()
}

/// One host: every resource in turn.
fn plan_host(
    fleet: &Fleet,
    lock: &ImageLock,
    state: &HostState,
    obs: &Observation,
    placement: &crate::plan::placement::Placement,
    hp: &mut HostPlan<'_>,
) {
    let h = hp.name();
    let desired: Vec<&Machine> = fleet.machines_on(&hp.host.name).collect();
    images::plan(lock, state, &desired, hp);
    removals::plan_stale_lease(state, hp);
    removals::plan_incomplete(state, hp);
    let source = |from: &str| match obs.hosts.get(from) {
        Some(HostObservation::Reachable(s)) => Some(s),
        _ => None,
    };
    for m in &desired {
        let n = m.name.as_str();
        match placement.moves.get(n).and_then(|f| Some((f, source(f)?))) {
            Some((from, src)) => moves::plan_move_in(fleet, lock, state, from, src, m, hp),
            None => plan_machine(fleet, lock, state, m, hp),
        }
        for l in placement.leftovers.get(n).into_iter().flatten() {
            if let Some(src) = source(l) {
                moves::plan_leftover(l, src, m, hp);
            }
        }
    }
    // Machines moving away from here, or with a copy left here by a move,
    // are the move's business, never removals.
    let passing = fleet.machines.values().filter(|m| {
        let n = m.name.as_str();
        placement.moves.get(n).is_some_and(|f| f == h)
            || placement
                .leftovers
                .get(n)
                .is_some_and(|l| l.iter().any(|x| x == h))
    });
    let desired_names: BTreeSet<&str> = desired
        .iter()
        .copied()
        .chain(passing)
        .map(|m| m.name.as_str())
        .collect();
    removals::plan_removed_machines(fleet, state, &desired_names, hp);
    removals::plan_orphan_disks(state, &desired_names, hp);
    removals::plan_trash_expiry(fleet, state, hp);
}

/// Why `m`'s libvirt network cannot be used on its host (it does not
/// exist, or is not active), so the plan fails now rather than the define
/// at apply time.
fn network_problem(state: &HostState, m: &Machine) -> Option<String> {
    let (crate::fleet::Network::Libvirt(net), Some(nets)) = (&m.network, &state.networks) else {
        return None;
    };
    let (h, n) = (m.host.as_str(), m.name.as_str());
    match nets.get(net) {
        Some(true) => None,
        Some(false) => Some(format!(
            "machine {n}: libvirt network {net:?} on host {h} is not active (start it with `virsh net-start {net}` and `virsh net-autostart {net}` there, or give the machine another network)"
        )),
        None => {
            let known: Vec<&str> = nets.keys().map(String::as_str).collect();
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            Some(format!(
                "machine {n}: libvirt network {net:?} does not exist on host {h} (its networks: {known})"
            ))
        }
    }
}

/// One machine of the fleet on this host: its disks, its domain, its
/// power, its snapshots, and the disks it no longer declares.
fn plan_machine(
    fleet: &Fleet,
    lock: &ImageLock,
    state: &HostState,
    m: &Machine,
    hp: &mut HostPlan<'_>,
) {
    // A machine whose image is not pinned was refused by `images::plan`.
    let Some(pin) = lock.images.get(&m.image) else {
        return;
    };
    let fleet_name = fleet.name.as_str();
    let (h, n) = (hp.name(), m.name.as_str());
    let addr = format!("{h}/{n}");
    let observed = state.domains.get(n);
    if let Some(d) = observed
        && d.config
            .owner
            .as_ref()
            .is_none_or(|o| o.fleet != fleet_name)
    {
        hp.refuse(addr, format!("a domain named {n:?} already exists on host {h} and is not managed by fleet {fleet_name:?}; virtfleet will not touch it (rename the machine or remove that domain)"));
        return;
    }
    if let Some(why) = network_problem(state, m) {
        hp.refuse(addr, why);
        return;
    }
    let running = observed.is_some_and(is_up);
    let Some(created) = disks::plan(fleet_name, state, m, pin, running, &addr, hp) else {
        // A refused disk: the domain must not be (re)defined on it.
        return;
    };
    // An existing definition keeps its UUID and MAC (see `identity`).
    let keep = observed.and_then(|d| Identity::of(&d.config));
    let want = desired_domain_as(fleet, hp.host, m, pin.sha256.as_str(), keep.as_ref());
    match observed {
        None => domain::plan_new(m, &want, &addr, hp),
        Some(d) => domain::plan_update(hp, &addr, m, &want, d),
    }
    seed::plan(state, m, &addr, hp);
    power::plan(m, observed, &addr, hp);
    snapshots::plan(hp, state, m, &addr, &created);
    removals::plan_removed_disks(state, m, &addr, hp);
}
