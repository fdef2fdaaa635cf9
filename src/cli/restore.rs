//! `virtfleet restore NAME`: bring a destroyed machine's disks back from
//! the trash; the next `apply` defines the machine on them again. Planned
//! as a one-machine plan ([`crate::plan::commands::restore_plan`]), shown
//! and run by the executor like `apply`.

use super::execute;
use super::{Context, EXIT_ERROR, EXIT_OK, now};
use crate::apply::{OnFailure, Outcome};
use crate::plan::Action;
use crate::plan::commands::{Basis, restore_plan};
use crate::ui::OK;
use std::time::Duration;

/// Bring a destroyed machine's disks back from the trash.
///
/// The machine must be in fleet.dhall (so virtfleet knows its host, and the
/// next apply does not trash the disks again). For each of its disks the most
/// recent trash entry is moved back into place; a disk that exists already is
/// never overwritten (nothing is restored then). The plan is shown first.
/// Then `virtfleet apply` defines and starts the machine on the restored disks.
///
/// Example:
///   virtfleet restore web && virtfleet apply
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The machine whose disks to restore.
    name: String,
}

/// Plans the restore, shows it and runs it; 0 when done, 1 when a step failed.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let (fleet, lock) = execute::load(ctx)?;
    let name = execute::machine_name(&args.name)?;
    let _run = execute::lock(ctx, &fleet)?;
    let now = now();
    let obs = execute::observe_machine_host(&fleet, &name, now);
    let basis = Basis {
        fleet: &fleet,
        lock: &lock,
        obs: &obs,
        now,
    };
    let plan = restore_plan(basis, &name)?;
    execute::show(&plan);
    // Nothing is lost by a restore (it never overwrites): no confirmation.
    let report = execute::execute(ctx, &plan, &fleet, &lock, Duration::ZERO, OnFailure::Stop);
    let failed = execute::print_failures(&report);
    // One host, so the report lists the plan's changes in plan order.
    for (c, (_, s)) in plan.changes.iter().zip(report.steps()) {
        if let (Action::RestoreDisk { entry, volume }, Outcome::Done) = (&c.action, &s.outcome) {
            anstream::println!("{OK}restored{OK:#} {volume} from trash/{entry}");
        }
    }
    if failed > 0 {
        return Ok(EXIT_ERROR);
    }
    println!("run `virtfleet apply` to define {name} on its restored disks");
    Ok(EXIT_OK)
}
