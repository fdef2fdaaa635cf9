//! Placement: which host each machine of the fleet is on, or goes to.
//!
//! Pure, like the rest of the planner: a function of the fleet and the
//! observation. Rules, in order:
//! - a machine whose host the fleet names (`host = Some ..`) goes there;
//! - a machine found on one of its candidate hosts **stays** there, even
//!   if a better place has appeared (stable placement);
//! - a machine found only on a host it may no longer use, or on another
//!   host than the one it names, **moves** (see `Action::MoveIn`);
//! - a machine not found anywhere while one of its candidate hosts cannot
//!   be observed **waits**: it may be on that host, and an unreachable host
//!   is never a reason to place a machine elsewhere;
//! - otherwise it is **placed**: among the reachable candidates with room
//!   (declared capacity: memory, vCPUs × `cpuOvercommit`; observed free
//!   storage), fewest machines of its `group` first (anti-affinity), then
//!   by the fleet's strategy (`Spread`: most free memory; `Pack`: least),
//!   then by host name. Machines are placed in name order, each seeing the
//!   ones before it, so the same inputs always give the same placement.
//!
//! A machine that fits nowhere is reported with what is short on each host.

use crate::fleet::{Fleet, HostName, Machine, Strategy, VmName};
use crate::resources::observed::{HostObservation, HostState, Observation};
use crate::text::human_bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes in a GiB.
const GIB: u64 = 1024 * 1024 * 1024;

/// Where one machine was put, and why (shown in the plan, carried in its JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The machine.
    pub machine: String,
    /// The host it goes to.
    pub host: String,
    /// The host it moves from, when it is on another one now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Why this host (`most free memory among 3 allowed`).
    pub reason: String,
}

/// What placement decided for the whole fleet.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The fleet with every placeable machine's `host` set to its place;
    /// machines that wait or fit nowhere are left out.
    pub fleet: Option<Fleet>,
    /// New placements and moves, by machine name.
    pub decisions: Vec<Decision>,
    /// Machines moving in, by name: the host they come from.
    pub moves: BTreeMap<String, String>,
    /// Machines placed on a host, with stale copies on other hosts (a move
    /// stopped after the copy): machine → those hosts.
    pub leftovers: BTreeMap<String, Vec<String>>,
    /// Machines not planned this time, with the reason (a note).
    pub waiting: Vec<(String, String)>,
    /// Machines that fit on no host, with what is short where (an error).
    pub unfit: Vec<(String, String)>,
}

/// What is used, and what is left, on one host while placing.
#[derive(Debug, Clone, Default)]
struct Room {
    memory_mib: u64,
    cpus: u64,
    /// Disk bytes of the machines placed here in this plan (not yet on disk).
    new_disk_bytes: u64,
    machines: usize,
    groups: BTreeMap<String, usize>,
}

impl Room {
    fn add(&mut self, m: &Machine, new: bool) {
        self.memory_mib += m.memory_mib;
        self.cpus += u64::from(m.cpus);
        self.machines += 1;
        if new {
            self.new_disk_bytes += disk_bytes(m);
        }
        if let Some(g) = &m.placement.group {
            *self.groups.entry(g.clone()).or_default() += 1;
        }
    }
}

fn disk_bytes(m: &Machine) -> u64 {
    m.disks().iter().map(|(_, gib)| gib * GIB).sum()
}

/// Hosts where machine `name` has a domain, and where it has disks only.
fn found(fleet: &Fleet, obs: &Observation, name: &str) -> (Vec<String>, Vec<String>) {
    let (mut domain, mut disks) = (Vec::new(), Vec::new());
    for (h, o) in &obs.hosts {
        let HostObservation::Reachable(s) = o else {
            continue;
        };
        if !fleet.hosts.keys().any(|k| k.as_str() == h) {
            continue;
        }
        let owned = s.domains.get(name).is_some_and(|d| {
            d.config
                .owner
                .as_ref()
                .is_some_and(|o| o.fleet == fleet.name.as_str())
        });
        if owned {
            domain.push(h.clone());
        } else if s.disks.values().any(|d| d.owner.machine == name) {
            disks.push(h.clone());
        }
    }
    (domain, disks)
}

fn reachable<'a>(obs: &'a Observation, h: &str) -> Option<&'a HostState> {
    match obs.hosts.get(h) {
        Some(HostObservation::Reachable(s)) => Some(s),
        _ => None,
    }
}

/// Places every machine of `fleet` (see the module doc).
pub fn place(fleet: &Fleet, obs: &Observation) -> Placement {
    let mut out = Placement::default();
    let mut rooms: BTreeMap<HostName, Room> = fleet
        .hosts
        .keys()
        .map(|h| (h.clone(), Room::default()))
        .collect();
    let mut placed = fleet.clone();
    // Pass 1: machines whose host is known (named, or where they are).
    let mut to_place: Vec<(&Machine, Option<String>)> = Vec::new();
    for m in fleet.machines.values() {
        let n = m.name.as_str();
        let (with_domain, with_disks) = found(fleet, obs, n);
        let is_candidate = |h: &String| m.placement.candidates.iter().any(|c| c.as_str() == h);
        let here = with_domain
            .iter()
            .find(|h| is_candidate(h))
            .or_else(|| {
                with_domain
                    .is_empty()
                    .then(|| with_disks.iter().find(|h| is_candidate(h)))
                    .flatten()
            })
            .cloned();
        // Where it runs now, if that is not a host it may stay on.
        let elsewhere = with_domain.iter().find(|h| !is_candidate(h)).cloned();
        match (&here, m.placement.fixed) {
            (Some(h), _) => {
                let host = HostName::new(h).expect("a fleet host's name");
                rooms.entry(host.clone()).or_default().add(m, false);
                set_host(&mut placed, &m.name, host);
                let stale: Vec<String> = with_domain
                    .iter()
                    .chain(&with_disks)
                    .filter(|x| *x != h)
                    .cloned()
                    .collect();
                if !stale.is_empty() {
                    out.leftovers.insert(n.to_owned(), stale);
                }
            }
            (None, true) => {
                let host = m.host.clone();
                let new = elsewhere.is_none();
                rooms.entry(host.clone()).or_default().add(m, new);
                if let Some(from) = elsewhere {
                    out.moves.insert(n.to_owned(), from.clone());
                    out.decisions.push(Decision {
                        machine: n.to_owned(),
                        host: host.to_string(),
                        from: Some(from),
                        reason: "the fleet names this host".into(),
                    });
                }
            }
            (None, false) => {
                let unreachable: Vec<&str> = m
                    .placement
                    .candidates
                    .iter()
                    .map(HostName::as_str)
                    .filter(|h| reachable(obs, h).is_none())
                    .collect();
                if elsewhere.is_none() && !unreachable.is_empty() {
                    out.waiting.push((
                        n.to_owned(),
                        format!(
                            "machine {n} is not placed: it is on none of the reachable hosts and may be on {} (unreachable); it is placed once every allowed host answers",
                            unreachable.join(", ")
                        ),
                    ));
                    placed.machines.remove(&m.name);
                    continue;
                }
                to_place.push((m, elsewhere));
            }
        }
    }
    // Pass 2: new machines and machines that must leave, in name order.
    for (m, from) in to_place {
        let n = m.name.as_str();
        // A move interrupted after its copy left the disks on a candidate:
        // finish it there.
        let (_, with_disks) = found(fleet, obs, n);
        let resumed = with_disks.iter().find(|h| {
            m.placement
                .candidates
                .iter()
                .any(|c| c.as_str() == h.as_str())
        });
        let choice = match resumed {
            Some(h) => Ok((
                HostName::new(h).expect("a fleet host's name"),
                "a move there was interrupted; it is finished".to_owned(),
            )),
            None => choose(fleet, obs, &rooms, m),
        };
        match choice {
            Ok((host, reason)) => {
                rooms.entry(host.clone()).or_default().add(m, true);
                if let Some(f) = &from {
                    out.moves.insert(n.to_owned(), f.clone());
                }
                out.decisions.push(Decision {
                    machine: n.to_owned(),
                    host: host.to_string(),
                    from,
                    reason,
                });
                set_host(&mut placed, &m.name, host);
            }
            Err(why) => {
                out.unfit.push((n.to_owned(), why));
                placed.machines.remove(&m.name);
            }
        }
    }
    out.fleet = Some(placed);
    out
}

/// `fleet` with every machine's `host` set to where placement puts it
/// (where it is, for a machine that exists); a machine placement cannot
/// decide keeps its provisional host. For commands that act on machines
/// where they are (`snapshot`, `ssh`, `status`...).
pub fn locate(fleet: &Fleet, obs: &Observation) -> Fleet {
    let p = place(fleet, obs);
    let mut out = fleet.clone();
    if let Some(placed) = &p.fleet {
        for (n, m) in &placed.machines {
            set_host(&mut out, n, m.host.clone());
        }
    }
    out
}

fn set_host(fleet: &mut Fleet, m: &VmName, host: HostName) {
    if let Some(x) = fleet.machines.get_mut(m) {
        x.host = host;
    }
}

/// The best host for `m` among its reachable candidates with room, and why;
/// or what is short on each candidate.
fn choose(
    fleet: &Fleet,
    obs: &Observation,
    rooms: &BTreeMap<HostName, Room>,
    m: &Machine,
) -> Result<(HostName, String), String> {
    let over = fleet.settings.cpu_overcommit.max(1);
    let n_allowed = m.placement.candidates.len();
    let mut fits: Vec<(usize, i128, usize, &HostName)> = Vec::new();
    let mut short: Vec<String> = Vec::new();
    for h in &m.placement.candidates {
        let Some(state) = reachable(obs, h.as_str()) else {
            short.push(format!("{h}: unreachable"));
            continue;
        };
        let room = rooms.get(h).cloned().unwrap_or_default();
        let host = &fleet.hosts[h];
        let mut lacks = Vec::new();
        let mut free_mem: Option<u64> = None;
        if let Some(cap) = &host.capacity {
            let free = cap.memory_mib.saturating_sub(room.memory_mib);
            free_mem = Some(free);
            if m.memory_mib > free {
                lacks.push(format!(
                    "memory: needs {} MiB, {free} MiB free of {}",
                    m.memory_mib, cap.memory_mib
                ));
            }
            let cpus = cap.cpus * over;
            let free_cpus = cpus.saturating_sub(room.cpus);
            if u64::from(m.cpus) > free_cpus {
                lacks.push(format!(
                    "vCPUs: needs {}, {free_cpus} free of {cpus} ({} CPUs × overcommit {over})",
                    m.cpus, cap.cpus
                ));
            }
        }
        if let Some(free) = state.storage_free_bytes {
            let left = free.saturating_sub(room.new_disk_bytes);
            let need = disk_bytes(m);
            if need > left {
                lacks.push(format!(
                    "storage: needs {}, {} free",
                    human_bytes(need),
                    human_bytes(left)
                ));
            }
        }
        if !lacks.is_empty() {
            short.push(format!("{h}: {}", lacks.join(", ")));
            continue;
        }
        let same_group = m
            .placement
            .group
            .as_ref()
            .and_then(|g| room.groups.get(g).copied())
            .unwrap_or(0);
        // Unlimited memory counts as more than any limit.
        let free = free_mem.map_or(i128::from(u64::MAX), i128::from);
        let metric = match fleet.settings.placement {
            Strategy::Spread => -free,
            Strategy::Pack => free,
        };
        let machines = match fleet.settings.placement {
            Strategy::Spread => room.machines,
            Strategy::Pack => usize::MAX - room.machines,
        };
        fits.push((same_group, metric, machines, h));
    }
    fits.sort();
    let Some(&(group_n, metric, machines, best)) = fits.first() else {
        return Err(format!(
            "machine {} fits on none of its {} allowed host{}: {}",
            m.name,
            n_allowed,
            if n_allowed == 1 { "" } else { "s" },
            short.join("; ")
        ));
    };
    let among = if n_allowed == 1 {
        "the only allowed host".to_owned()
    } else {
        format!("among {n_allowed} allowed")
    };
    let runner_up = fits.get(1);
    let reason = if fits.len() == 1 {
        if n_allowed == 1 {
            "the only allowed host".to_owned()
        } else {
            format!("the only one with room {among}")
        }
    } else if let (Some(g), Some(next)) = (&m.placement.group, runner_up)
        && next.0 > group_n
    {
        format!("fewest machines of group {g} ({group_n}) {among}")
    } else if runner_up.is_some_and(|r| r.1 != metric) {
        let free = if metric < 0 { -metric } else { metric };
        match fleet.settings.placement {
            Strategy::Spread => format!("most free memory ({free} MiB) {among}"),
            Strategy::Pack => format!("least free memory that fits ({free} MiB) {among}"),
        }
    } else if runner_up.is_some_and(|r| r.2 != machines) {
        let count = match fleet.settings.placement {
            Strategy::Spread => machines,
            Strategy::Pack => usize::MAX - machines,
        };
        match fleet.settings.placement {
            Strategy::Spread => format!("fewest machines ({count}) {among}"),
            Strategy::Pack => format!("most machines ({count}) {among}"),
        }
    } else {
        format!("first by name of the equal choices {among}")
    };
    let reason = if short.is_empty() {
        reason
    } else {
        format!("{reason}; {}", short.join("; "))
    };
    Ok((best.clone(), reason))
}
