//! Moves: a machine placed on this host while it lives on another (see
//! `plan::placement`), and copies a move left behind.
//!
//! A move is one machine's sequence on the destination host: `MoveIn`
//! (stop on the source, copy and verify every disk), then the usual
//! define, seed and start here, and last `FinishMove` (undefine on the
//! source, its disks to the source's trash). The steps of one machine run
//! in order and stop at the first failure, so the source keeps a complete
//! machine until the copy runs here. Class `restart`: the guest is stopped
//! and started, and nothing is lost (the old disks stay restorable in the
//! trash). Without permission the whole move waits, not just its first step.

use super::domain::{self, desired_domain_as};
use super::{HostPlan, Phase, is_up, power, seed};
use crate::fleet::{Fleet, Machine, Storage};
use crate::lock::ImageLock;
use crate::plan::model::{Action, BaseRef, Disruption};
use crate::resources::identity::Identity;
use crate::resources::observed::HostState;
use crate::text::{human_bytes, plural};

/// Plans machine `m` moving here from host `from` (observed as `src`).
pub(super) fn plan_move_in(
    fleet: &Fleet,
    lock: &ImageLock,
    state: &HostState,
    from: &str,
    src: &HostState,
    m: &Machine,
    hp: &mut HostPlan<'_>,
) {
    let Some(pin) = lock.images.get(&m.image) else {
        return;
    };
    let (h, n) = (hp.name(), m.name.as_str());
    let addr = format!("{h}/{n}");
    let Some(d) = src.domains.get(n) else {
        return;
    };
    let declared: Vec<String> = m.disks().iter().map(|(d, _)| m.volume_name(d)).collect();
    let missing: Vec<&str> = declared
        .iter()
        .filter(|v| !src.disks.contains_key(*v))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        hp.refuse(
            addr,
            format!(
                "machine {n} moves from {from} to {h}, but disk {} is not on {from} yet: apply the disk change on {from} first (keep its host there for one run), then move it",
                missing.join(", ")
            ),
        );
        return;
    }
    let bytes = declared.iter().map(|v| src.disks[v].size_bytes).sum();
    let zfs = |name: &str| {
        fleet
            .host_named(name)
            .is_some_and(|x| matches!(x.storage, Storage::Zfs { .. }))
    };
    let disks = format!(
        "{} ({}) with snapshots",
        plural(declared.len(), "disk"),
        human_bytes(bytes)
    );
    // Mirrors `apply::moving`: between ZFS hosts the bulk goes first;
    // between a Dir and a ZFS host each disk is converted.
    let copy = match (is_up(d), zfs(from), zfs(h)) {
        (true, true, true) => {
            format!("send {disks} while it runs, stop it there, send what it wrote since")
        }
        (up, src_zfs, dst_zfs) if src_zfs != dst_zfs => {
            let (a, b) = if src_zfs {
                ("zvols", "qcow2 files")
            } else {
                ("qcow2 files", "zvols")
            };
            let stop = if up { "stop it there, " } else { "" };
            format!("{stop}convert {disks} from {a} to {b}")
        }
        (true, ..) => format!("stop it there, copy {disks}"),
        (false, ..) => format!("copy {disks}"),
    };
    let reason = format!(
        "placed on {h}, now on {from}: {copy}, verify, define and start here, then its old disks go to {from}'s trash"
    );
    let action = Action::MoveIn {
        from: from.to_owned(),
        volumes: declared,
        base: Some(BaseRef {
            image: m.image.to_string(),
            sha256: pin.sha256.to_string(),
            format: pin.format,
        }),
        bytes,
    };
    if !hp.opts.allow_restart {
        // Only the first step is shown as waiting: the rest means nothing
        // without it (and must not run: a domain here without its disks).
        hp.add(
            Phase::Disk,
            addr,
            Some(n),
            action,
            Disruption::Restart,
            reason,
        );
        return;
    }
    hp.add(
        Phase::Disk,
        addr.clone(),
        Some(n),
        action,
        Disruption::Restart,
        reason,
    );
    // The identity (UUID, MAC) comes along: same DHCP lease, same machine.
    let keep = Identity::of(&d.config);
    let want = desired_domain_as(fleet, hp.host, m, pin.sha256.as_str(), keep.as_ref());
    domain::plan_new(m, &want, &addr, hp);
    seed::plan(state, m, &addr, hp);
    power::plan(m, None, &addr, hp);
    finish(from, src, m, &addr, hp, "the move's last step".into());
}

/// A copy of `m` left on host `from` by a move that stopped after the
/// machine was defined here: finish that move.
pub(super) fn plan_leftover(from: &str, src: &HostState, m: &Machine, hp: &mut HostPlan<'_>) {
    let (h, n) = (hp.name(), m.name.as_str());
    let addr = format!("{h}/{n}");
    if src.domains.get(n).is_some_and(is_up) {
        hp.refuse(
            addr,
            format!(
                "machine {n} is defined on {h} and also running on {from}: virtfleet does not know which copy is current; stop the one that is not (`virsh -c <uri> shutdown {n}`) and plan again"
            ),
        );
        return;
    }
    let why = format!("a move of {n} from {from} stopped before its last step");
    finish(from, src, m, &addr, hp, why);
}

fn finish(
    from: &str,
    src: &HostState,
    m: &Machine,
    addr: &str,
    hp: &mut HostPlan<'_>,
    why: String,
) {
    let n = m.name.as_str();
    let volumes = src.volumes_of(n);
    let reason = format!(
        "{why}: undefine on {from}, {} to {from}'s trash (restorable there)",
        plural(volumes.len(), "volume")
    );
    let action = Action::FinishMove {
        from: from.to_owned(),
        volumes,
    };
    hp.add(
        Phase::Destroy,
        addr.into(),
        Some(n),
        action,
        Disruption::Restart,
        reason,
    );
}
