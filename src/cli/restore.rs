//! `virtfleet restore NAME`: bring a destroyed machine's disks back from
//! the trash; the next `apply` defines the machine on them again. Planned
//! as a one-machine plan ([`crate::plan::commands::restore_plan`]), shown
//! and run by the executor like `apply`.

use super::execute;
use super::execute::{MachineRun, Scope};
use super::{Context, EXIT_ERROR, EXIT_OK};
use crate::apply::Outcome;
use crate::plan::Action;
use crate::plan::commands::restore_plan;
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
    let run = MachineRun::start(ctx, &args.name, Scope::MachineHost)?;
    let name = &run.name;
    let plan = restore_plan(run.basis(), name)?;
    execute::show(&plan);
    // Nothing is lost by a restore (it never overwrites): no confirmation.
    let report = run.execute(ctx, &plan, Duration::ZERO);
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
