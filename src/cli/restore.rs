//! `virtfleet restore NAME`: bring a destroyed machine's disks back from
//! the trash; the next `apply` defines the machine on them again.

use super::{Context, EXIT_OK, now};
use crate::host::backend;
use crate::host::transport_for;
use crate::observe::observe;
use crate::resources::observed::HostObservation;
use crate::ui::OK;
use anyhow::{Context as _, bail};
use std::collections::BTreeMap;

/// Bring a destroyed machine's disks back from the trash.
///
/// The machine must be in fleet.dhall (so virtfleet knows its host, and the
/// next apply does not trash the disks again). For each of its disks the most
/// recent trash entry is moved back into place; a disk that exists already is
/// never overwritten. Then `virtfleet apply` defines and starts the machine on
/// the restored disks.
///
/// Example:
///   virtfleet restore web && virtfleet apply
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The machine whose disks to restore.
    name: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let fleet = super::load_fleet(ctx)?;
    let name = crate::fleet::VmName::new(&args.name)
        .map_err(|e| anyhow::anyhow!("machine {:?}: {e}", args.name))?;
    let Some(m) = fleet.machines.get(&name) else {
        bail!(
            "machine {name} is not in {}: add it back first (the next apply would move restored disks to the trash again)",
            ctx.fleet.display()
        );
    };
    let host = &fleet.hosts[&m.host];
    let obs = observe(&fleet, now());
    let state = match obs.hosts.get(host.name.as_str()) {
        Some(HostObservation::Reachable(s)) => s,
        Some(HostObservation::Unreachable { error }) => {
            bail!("host {} not reachable: {error}", host.name)
        }
        None => bail!("host {} not observed", host.name),
    };
    // Newest trash entry per volume of this machine.
    let mut newest: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for (entry, t) in &state.trash {
        if t.owner.machine == name.as_str()
            && newest
                .get(t.volume.as_str())
                .is_none_or(|(_, at)| t.trashed_at > *at)
        {
            newest.insert(&t.volume, (entry, t.trashed_at));
        }
    }
    if newest.is_empty() {
        bail!(
            "no trash entries for machine {name} on host {} (expired, or never destroyed)",
            host.name
        );
    }
    let t = transport_for(host)?;
    let storage = backend(host, t.as_ref());
    for (vol, (entry, _)) in &newest {
        storage
            .restore(entry, vol)
            .with_context(|| format!("restoring {vol} from trash/{entry}"))?;
        anstream::println!("{OK}restored{OK:#} {vol} from trash/{entry}");
    }
    println!("run `virtfleet apply` to define {name} on its restored disks");
    Ok(EXIT_OK)
}
