//! `virtfleet destroy NAME`: destroy one managed machine now (its disks go
//! to the trash). Meant for machines already removed from the fleet; one
//! still in the fleet needs --force (the next apply would recreate it).
//! Planned as a one-machine plan ([`crate::plan::commands::destroy_plan`]),
//! shown, confirmed and run by the executor like `apply`.

use super::execute;
use super::execute::{MachineRun, Scope};
use super::{Context, EXIT_ERROR, EXIT_OK};
use crate::plan::commands::destroy_plan;
use crate::ui::OK;
use std::time::Duration;

/// Destroy one managed machine now; its disks go to the trash (restorable).
///
/// Finds the domain on whichever host has it, stops it (ACPI, then power off
/// after --shutdown-timeout), undefines it and moves its disks to the trash,
/// where they stay for settings.trashRetentionDays (`virtfleet restore NAME`).
/// Refuses protected machines always, and machines still in fleet.dhall
/// unless --force (the next apply would create them again, empty), and a
/// domain of that name that is not this fleet's. The plan is shown first,
/// as `virtfleet plan` shows plans.
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

/// Plans the destroy, shows it, asks, runs it; 0 when done, 1 when a step failed.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    // Every host: a machine removed from the fleet has no host in it.
    let run = MachineRun::start(ctx, &args.name, Scope::AllHosts)?;
    let name = &run.name;
    let plan = destroy_plan(run.basis(), name, args.force)?;
    execute::show(&plan);
    super::confirm(
        &format!("Destroy {name}?"),
        args.auto_approve,
        "destroy",
        "--auto-approve",
    )?;
    let report = run.execute(ctx, &plan, args.shutdown_timeout);
    if execute::print_failures(&report) > 0 {
        return Ok(EXIT_ERROR);
    }
    anstream::println!(
        "{OK}destroyed{OK:#} {name}; its disks are in the trash: `virtfleet restore {name}` brings them back"
    );
    Ok(EXIT_OK)
}
