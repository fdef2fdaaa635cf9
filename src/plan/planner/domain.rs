//! The domain definition: what virtfleet wants libvirt to hold for each
//! machine, and how an observed definition differs from it.

use super::{HostPlan, Phase, is_up};
use crate::fleet::{CpuMode, Fleet, Host, Machine, Power};
use crate::plan::model::{Action, Change, Disruption};
use crate::resources::domain::{DiskRef, DomainSpec, Nic, Owner, target_name};
use crate::resources::identity::Identity;
use crate::resources::observed::ObservedDomain;
use crate::resources::{layout, seed};
use sha2::{Digest, Sha256};

/// Hash of everything that goes into a machine's domain and disks, stored
/// in the domain's metadata: a mismatch means the fleet changed, a match
/// with differing fields means someone changed the domain behind our back.
///
/// Only what goes into the definition counts: power, autostart and disk
/// sizes have their own actions and must not trigger a redefinition.
pub fn spec_hash(definition: &DomainSpec, image_sha: &str, seed_sha: Option<&str>) -> String {
    let mut d = definition.clone();
    d.owner = None;
    // Without a seed the hash is what it was before seeds existed, so
    // domains defined then are not redefined for nothing.
    let v = match seed_sha {
        None => serde_json::json!({ "domain": d, "image": image_sha }),
        Some(s) => serde_json::json!({ "domain": d, "image": image_sha, "seed": s }),
    };
    hex::encode(&Sha256::digest(serde_json::to_vec(&v).expect("spec serialises"))[..8])
}

/// The domain virtfleet wants for a new machine `m` on `host`.
pub fn desired_domain(fleet: &Fleet, host: &Host, m: &Machine, image_sha: &str) -> DomainSpec {
    desired_domain_as(fleet, host, m, image_sha, None)
}

/// The domain virtfleet wants for `m` on `host`, with the identity of an
/// existing definition when there is one (`keep`: the observed domain on
/// this host, or on the host a move comes from).
pub fn desired_domain_as(
    fleet: &Fleet,
    host: &Host,
    m: &Machine,
    image_sha: &str,
    keep: Option<&Identity>,
) -> DomainSpec {
    let (f, h, n) = (fleet.name.as_str(), host.name.as_str(), m.name.as_str());
    let id = keep.cloned().unwrap_or_else(|| Identity::derive(f, n));
    let mut disks: Vec<DiskRef> = m
        .disks()
        .iter()
        .enumerate()
        .map(|(i, (disk, _))| DiskRef {
            target: target_name(i),
            path: layout::disk_path(&host.storage, &m.volume_name(disk)),
            format: layout::disk_format(&host.storage).into(),
            readonly: false,
        })
        .collect();
    // The cloud-init seed comes last, read-only: adding or removing data
    // disks never renames it, and the guest cannot write to it.
    let seed_sha = seed::seed(m).map(|s| s.summary.sha256);
    if seed_sha.is_some() {
        disks.push(DiskRef {
            target: target_name(disks.len()),
            path: layout::seed_path(&host.storage, &seed::seed_volume(n)),
            format: "raw".into(),
            readonly: true,
        });
    }
    let mut spec = DomainSpec {
        name: n.into(),
        uuid: id.uuid,
        domain_type: host.domain_type,
        cpu_mode: host.cpu_mode.clone(),
        vcpus: m.cpus,
        memory_mib: m.memory_mib,
        current_memory_mib: m.memory_mib,
        disks,
        nic: Some(Nic::for_network(&m.network, id.mac)),
        owner: None,
    };
    let hash = spec_hash(&spec, image_sha, seed_sha.as_deref());
    spec.owner = Some(Owner {
        fleet: f.into(),
        host: h.into(),
        machine: n.into(),
        spec_hash: hash,
        protect: m.protect,
        seed: seed_sha,
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

/// A machine without a domain: define it, and set autostart if wanted.
pub(super) fn plan_new(m: &Machine, want: &DomainSpec, addr: &str, hp: &mut HostPlan<'_>) {
    let n = Some(m.name.as_str());
    let define = Action::DefineDomain { xml: want.to_xml() };
    hp.add(
        Phase::Domain,
        addr.into(),
        n,
        define,
        Disruption::None,
        "new machine".into(),
    );
    if m.autostart {
        let action = Action::SetAutostart { on: true };
        let reason = "autostart with the host".into();
        hp.add(
            Phase::Domain,
            addr.into(),
            n,
            action,
            Disruption::None,
            reason,
        );
    }
}

/// How an observed definition differs from the wanted one.
#[derive(Debug, Default)]
struct Difference {
    /// What differs, for people (`vcpus 1 → 2`, `disks, network`).
    what: Vec<String>,
    /// The running guest must restart for the change to take effect.
    restart: bool,
    /// Memory the running guest can be given live (balloon), in MiB.
    memory_live: Option<u64>,
    /// Only virtfleet's ownership metadata differs.
    metadata_only: bool,
}

/// Compares `have` (as observed; `running` guest or not) with `want`.
fn compare(have: &DomainSpec, want: &DomainSpec, running: bool) -> Difference {
    let mut diff = Difference::default();
    if have.vcpus != want.vcpus {
        diff.what
            .push(format!("vcpus {} → {}", have.vcpus, want.vcpus));
        diff.restart |= running;
    }
    if have.memory_mib != want.memory_mib || have.current_memory_mib != want.current_memory_mib {
        diff.what.push(format!(
            "memory {} → {} MiB",
            have.memory_mib, want.memory_mib
        ));
        if running {
            // The balloon can go down to any size, and up to the running
            // guest's maximum; beyond that the maximum itself must grow.
            if want.memory_mib <= have.memory_mib {
                diff.memory_live = Some(want.memory_mib);
            } else {
                diff.restart = true;
            }
        }
    }
    let seed_of = |d: &DomainSpec| d.owner.as_ref().and_then(|o| o.seed.clone());
    if seed_of(have) != seed_of(want) && have.disks == want.disks {
        // Same disks, another seed behind the same path: only a restart
        // makes QEMU open (and cloud-init read) the new one.
        diff.what.push("cloud-init seed".into());
        diff.restart |= running;
    }
    let fields = other_fields(have, want);
    if !fields.is_empty() {
        diff.what.push(fields.join(", "));
        diff.restart |= running;
    }
    diff.metadata_only = diff.what.is_empty();
    let hash_same = same_hash(have, want);
    if diff.metadata_only && (!hash_same || have.owner != want.owner) {
        diff.what.push("ownership metadata".into());
    }
    diff
}

/// Names of the fields other than vCPUs, memory and ownership that differ.
fn other_fields(have: &DomainSpec, want: &DomainSpec) -> Vec<&'static str> {
    let mut rest = have.clone();
    rest.vcpus = want.vcpus;
    rest.memory_mib = want.memory_mib;
    rest.current_memory_mib = want.current_memory_mib;
    rest.owner.clone_from(&want.owner);
    if rest == *want {
        return Vec::new();
    }
    [
        (have.disks != want.disks, "disks"),
        (have.nic != want.nic, "network"),
        (have.domain_type != want.domain_type, "domain type"),
        (have.cpu_mode != want.cpu_mode, "cpu mode"),
        (have.uuid != want.uuid, "uuid"),
    ]
    .into_iter()
    .filter_map(|(differs, name)| differs.then_some(name))
    .collect()
}

/// The stored spec hash matches: the fleet did not change this machine.
fn same_hash(have: &DomainSpec, want: &DomainSpec) -> bool {
    have.owner.as_ref().map(|o| &o.spec_hash) == want.owner.as_ref().map(|o| &o.spec_hash)
}

/// Plans changes to an existing managed domain: its definition and autostart.
pub(super) fn plan_update(
    hp: &mut HostPlan<'_>,
    addr: &str,
    m: &Machine,
    want: &DomainSpec,
    d: &ObservedDomain,
) {
    let n = m.name.as_str();
    let mut have = d.config.clone();
    if want.cpu_mode == CpuMode::Default {
        // "Default" leaves the model to the hypervisor, and libvirt writes the
        // one it picked (e.g. qemu64) into the definition: any model matches.
        have.cpu_mode = CpuMode::Default;
    }
    let running = is_up(d);
    let mut diff = compare(&have, want, running);
    if m.power == Power::Stopped {
        // It is about to be stopped: the new definition applies at its next start.
        diff.restart = false;
        diff.memory_live = None;
    }
    if !diff.what.is_empty() {
        let change = update_change(hp.name(), addr, n, &have, want, running, &diff);
        hp.push(Phase::Domain, change);
    }
    // The live balloon size is not compared: it is best effort (a guest
    // without a balloon driver never follows it), and planning it would
    // never converge for such guests. The persistent definition is managed.
    if d.autostart != m.autostart {
        hp.add(
            Phase::Domain,
            addr.into(),
            Some(n),
            Action::SetAutostart { on: m.autostart },
            Disruption::None,
            format!("autostart {} → {}", d.autostart, m.autostart),
        );
    }
}

/// The `UpdateDomain` change for `diff`, with the XML diff attached.
fn update_change(
    host: &str,
    addr: &str,
    machine: &str,
    have: &DomainSpec,
    want: &DomainSpec,
    running: bool,
    diff: &Difference,
) -> Change {
    let origin = if same_hash(have, want) {
        "drift: changed outside virtfleet"
    } else {
        "fleet.dhall changed"
    };
    let disruption = if diff.restart {
        Disruption::Restart
    } else if running && !diff.metadata_only && diff.memory_live.is_some() {
        Disruption::Live
    } else {
        Disruption::None
    };
    let how = if diff.restart {
        "; restart to take effect"
    } else {
        ""
    };
    Change {
        address: addr.into(),
        host: host.into(),
        machine: Some(machine.into()),
        action: Action::UpdateDomain {
            xml: want.to_xml(),
            memory_live_mib: diff.memory_live,
            restart: diff.restart,
        },
        disruption,
        reason: format!("{origin}: {}{how}", diff.what.join("; ")),
        diff: Some(domain_diff(have, want)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::compare;
    use crate::resources::domain::DomainSpec;

    /// Each edit of the observed definition, with the guest running or not
    /// → (what differs, restart needed, live memory).
    #[test]
    fn differences_are_classified() {
        let f = fleet(&["name = \"a\", cpus = 2, memoryMiB = 1024"]);
        let want = converged(&f).domains.remove("a").unwrap().config;
        type Edit = fn(&mut DomainSpec);
        /// (name, edit, running, what differs, restart, live memory)
        type Row = (&'static str, Edit, bool, &'static str, bool, Option<u64>);
        let table: [Row; 8] = [
            ("same", |_| {}, true, "", false, None),
            ("cpus", |d| d.vcpus = 1, true, "vcpus 1 → 2", true, None),
            (
                "cpus off",
                |d| d.vcpus = 1,
                false,
                "vcpus 1 → 2",
                false,
                None,
            ),
            // Shrinking the guest's memory works through the balloon.
            (
                "mem down",
                |d| d.memory_mib = 2048,
                true,
                "memory 2048 → 1024 MiB",
                false,
                Some(1024),
            ),
            // Growing beyond the running maximum needs a restart.
            (
                "mem up",
                |d| d.memory_mib = 512,
                true,
                "memory 512 → 1024 MiB",
                true,
                None,
            ),
            ("uuid", |d| d.uuid = "x".into(), true, "uuid", true, None),
            ("disks", |d| d.disks.clear(), false, "disks", false, None),
            (
                "hash",
                |d| d.owner.as_mut().unwrap().spec_hash = "old".into(),
                true,
                "ownership metadata",
                false,
                None,
            ),
        ];
        for (name, edit, running, what, restart, live) in table {
            let mut have = want.clone();
            edit(&mut have);
            let d = compare(&have, &want, running);
            assert_eq!(
                (d.what.join("; ").as_str(), d.restart, d.memory_live),
                (what, restart, live),
                "{name}"
            );
        }
    }
}
