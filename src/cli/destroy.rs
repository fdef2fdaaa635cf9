//! `virtfleet destroy NAME`: destroy one managed machine now (its disks go
//! to the trash). Meant for machines already removed from the fleet; one
//! still in the fleet needs --force (the next apply would recreate it).

use super::{Context, EXIT_ERROR, EXIT_OK, now};
use crate::apply::{OnFailure, Outcome, Settings};
use crate::plan::{Action, Change, Disruption, Inputs, Plan};
use crate::resources::observed::HostObservation;
use crate::ui::{ApplyProgress, ERROR, OK};
use anyhow::bail;
use std::collections::BTreeMap;
use std::time::Duration;

/// Destroy one managed machine now; its disks go to the trash (restorable).
///
/// Finds the domain on whichever host has it, stops it (ACPI, then power off
/// after --shutdown-timeout), undefines it and moves its disks to the trash,
/// where they stay for settings.trashRetentionDays (`virtfleet restore NAME`).
/// Refuses protected machines always, and machines still in fleet.dhall
/// unless --force (the next apply would create them again, empty).
///
/// Example:
///   virtfleet destroy old-web --auto-approve
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The machine to destroy.
    name: String,
    /// Destroy even though the machine is still in fleet.dhall.
    #[arg(long)]
    force: bool,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    auto_approve: bool,
    /// How long the guest may take to shut down by ACPI before it is powered off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let (fleet, lock) = super::load_fleet_and_lock(ctx)?;
    let name = crate::fleet::VmName::new(&args.name)
        .map_err(|e| anyhow::anyhow!("machine {:?}: {e}", args.name))?;
    if let Some(m) = fleet.machines.get(&name) {
        if m.protect {
            bail!(
                "machine {name} is protected in {}; refusing to destroy it",
                ctx.fleet.display()
            );
        }
        if !args.force {
            bail!(
                "machine {name} is still in {}; remove it there and run `virtfleet apply --allow-destroy`, or pass --force (the next apply would create it again, empty)",
                ctx.fleet.display()
            );
        }
    }
    let obs = crate::observe::observe(&fleet, now());
    let mut found = None;
    for (h, o) in &obs.hosts {
        if let HostObservation::Reachable(state) = o
            && let Some((_, d)) = state
                .managed(fleet.name.as_str())
                .find(|(n, _)| *n == name.as_str())
        {
            if d.config.owner.as_ref().is_some_and(|o| o.protect) {
                bail!(
                    "machine {name} on host {h} was protected when last applied; refusing to destroy it"
                );
            }
            let volumes: Vec<String> = state
                .disks
                .iter()
                .filter(|(_, od)| od.owner.machine == name.as_str())
                .map(|(v, _)| v.clone())
                .collect();
            found = Some((h.clone(), volumes));
        }
    }
    let unreachable: Vec<&String> = obs
        .hosts
        .iter()
        .filter(|(_, o)| matches!(o, HostObservation::Unreachable { .. }))
        .map(|(h, _)| h)
        .collect();
    let Some((host, volumes)) = found else {
        let extra = if unreachable.is_empty() {
            String::new()
        } else {
            format!(
                " (hosts not observed: {})",
                unreachable
                    .iter()
                    .map(|h| h.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        bail!(
            "no machine {name} of fleet {:?} was found on any host{extra}; nothing was changed",
            fleet.name.as_str()
        );
    };
    let change = Change {
        address: format!("{host}/{name}"),
        host: host.clone(),
        machine: Some(name.to_string()),
        action: Action::Destroy {
            volumes: volumes.clone(),
        },
        disruption: Disruption::Destructive,
        reason: "virtfleet destroy".into(),
        diff: None,
    };
    anstream::println!(
        "- {host}/{name}  destroy: stop, undefine, move {} disk(s) to the trash [destructive]",
        volumes.len()
    );
    super::confirm(
        &format!("Destroy {name}?"),
        args.auto_approve,
        "destroy",
        "--auto-approve",
    )?;
    let now = now();
    let plan = Plan {
        format_version: crate::plan::FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        inputs: Inputs {
            fleet: String::new(),
            lock: String::new(),
            hosts: BTreeMap::new(),
            observed_at: obs.taken_at,
            from_file: false,
            now,
        },
        changes: vec![change],
        pending: Vec::new(),
        refused: Vec::new(),
        unreachable: BTreeMap::new(),
        unmanaged: BTreeMap::new(),
    };
    let settings = Settings {
        now,
        shutdown_grace: args.shutdown_timeout,
        on_failure: OnFailure::Stop,
    };
    let progress = ApplyProgress::new();
    let report = crate::apply::apply(&plan, &fleet, &lock, &ctx.cache, settings, &progress);
    drop(progress);
    for (_, steps) in report {
        for (addr, _, o) in steps {
            if let Outcome::Failed(e) = o {
                anstream::eprintln!("{ERROR}failed{ERROR:#}: {addr}: {e}");
                return Ok(EXIT_ERROR);
            }
        }
    }
    anstream::println!(
        "{OK}destroyed{OK:#} {name}; its disks are in the trash: `virtfleet restore {name}` brings them back"
    );
    Ok(EXIT_OK)
}
