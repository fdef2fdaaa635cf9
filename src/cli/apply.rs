//! `virtfleet apply [PLANFILE]`: apply a fresh plan (after confirmation) or
//! exactly a saved one (refused if anything it was computed from changed),
//! then observe again and check that the fleet converged.

use super::execute;
use super::plan::{Format, PlanArgs, plan_loaded, render_plan};
use super::{Context, EXIT_ERROR, EXIT_INCOMPLETE, EXIT_OK, EXIT_PENDING, now};
use crate::apply::{OnFailure, Outcome, Report};
use crate::plan::{Disruption, Plan};
use crate::ui::{ERROR, OK, WARN};
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Apply the plan: create, update, grow, start/stop and destroy machines.
///
/// Without PLANFILE: observes the hosts, shows the plan, asks for confirmation
/// (type `yes`), applies it, then observes again and plans again: anything
/// left over is reported and the exit status is 1. With PLANFILE (from
/// `plan --out`): applies exactly that plan, and refuses it if the fleet, the
/// lock or any host changed since it was made, or if its changes are not
/// what virtfleet plans from them (an edited file); its destroys and restarts
/// need --allow-destroy / --allow-restart here too.
///
/// Restart-class changes (moving a machine to another host among them) need
/// --allow-restart and destroys --allow-destroy (or the fleet's settings);
/// without them they stay pending and the rest is applied. Destroyed disks,
/// and the old disks of a moved machine, go to the trash (`virtfleet restore NAME`).
/// Without a terminal, --auto-approve is required.
///
/// With --unattended (timers, scripts): never asks and never shows a
/// progress display; logs one line per step (logfmt, or JSON with
/// --json-logs), records changes withheld for lack of permission as
/// `pending` in the history, and writes --metrics-file if given. Restarts
/// and destroys still need --allow-restart / --allow-destroy or the
/// fleet's settings: a timer firing is never a permission.
///
/// Exit status: 0 converged, nothing pending; 1 error / not converged; 3 some
/// host unreachable (named after the apply); 4 everything allowed was
/// applied, but changes stay pending for lack of permission (so CI and
/// timers can tell that a restart or destroy is waiting for a person).
///
/// Examples:
///   virtfleet apply
///   virtfleet apply --unattended --metrics-file /var/lib/node-exporter/virtfleet.prom
///   virtfleet apply --auto-approve --allow-restart
///   virtfleet plan --out p.plan && virtfleet apply p.plan --auto-approve
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A plan saved by `virtfleet plan --out`.
    plan_file: Option<PathBuf>,
    #[command(flatten)]
    common: PlanArgs,
    /// Do not ask for confirmation (required without a terminal).
    #[arg(long)]
    auto_approve: bool,
    /// Run as a timer does: never ask, log one line per event, record pending changes, exit 0/4/3/1 for converged/pending/incomplete/error.
    #[arg(long, conflicts_with = "plan_file")]
    unattended: bool,
    /// With --unattended: write Prometheus metrics of the run to FILE (atomically, for node_exporter's textfile collector).
    #[arg(long, value_name = "FILE", requires = "unattended")]
    metrics_file: Option<PathBuf>,
    /// With --unattended: log JSON objects, one per line, instead of key=value lines.
    #[arg(long, requires = "unattended")]
    json_logs: bool,
    /// How long a guest may take to shut down by ACPI before it is powered off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// When a step fails on one host: let other hosts continue, or stop them.
    #[arg(long, value_enum, default_value = "continue")]
    on_failure: OnFailure,
}

/// Shows the plan, asks, applies it, checks convergence; returns the exit code.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    if let Some(path) = &args.common.observed {
        bail!(
            "{}: apply never acts on a saved observation (the hosts may have changed since); run `virtfleet apply` against the live hosts. Nothing was changed.",
            path.display()
        );
    }
    if args.unattended {
        return Ok(unattended(ctx, &args));
    }
    // The run lock is taken before anything is observed: two runs of one
    // fleet must never plan against the same state and both act on it.
    let (fleet, lock, plan, _run) = match &args.plan_file {
        None => {
            let (fleet, lock) = super::load_fleet_and_lock(ctx)?;
            let run = execute::lock(ctx, &fleet)?;
            let plan = plan_loaded(&fleet, &lock, &args.common)?;
            (fleet, lock, plan, run)
        }
        Some(path) => load_saved(ctx, path, &args.common)?,
    };
    execute::show(&plan);
    let store = super::history::open_if(ctx, &plan.fleet, false);
    if let Some(i) = super::history::interrupted(store.as_ref()) {
        super::history::print_interrupted(&i, super::plan::finishes(&plan));
    }
    if !plan.refused.is_empty() {
        anstream::eprintln!(
            "{ERROR}error{ERROR:#}: the plan has refusals (listed above); fix fleet.dhall first. Nothing was changed."
        );
        return Ok(EXIT_ERROR);
    }
    let incomplete = if plan.is_incomplete() {
        EXIT_INCOMPLETE
    } else if !plan.pending.is_empty() {
        EXIT_PENDING
    } else {
        EXIT_OK
    };
    if plan.changes.is_empty() {
        // Nothing left to do: an interrupted run is settled (its work was
        // done, or undone, by other means).
        if let Some(store) = &store {
            let _ = store.settle_interrupted(None);
        }
        return Ok(incomplete);
    }
    super::confirm(
        &format!("Apply these {} change(s)?", plan.changes.len()),
        args.auto_approve,
        "apply",
        "--auto-approve",
    )?;
    let granted = super::plan::options(&fleet, &args.common, plan.inputs.now);
    let report = execute::execute(
        ctx,
        &plan,
        &fleet,
        &lock,
        args.shutdown_timeout,
        args.on_failure,
        crate::apply::Permits {
            destroy: granted.allow_destroy,
            restart: granted.allow_restart,
        },
    );
    if !summarise(&report) {
        return Ok(EXIT_ERROR);
    }
    match converged(&fleet, &lock, &args.common, plan.inputs.now) {
        EXIT_OK | EXIT_PENDING if incomplete == EXIT_INCOMPLETE => Ok(EXIT_INCOMPLETE),
        code => Ok(code),
    }
}

/// `apply --unattended`: one pass over every host under the unattended
/// policy; the exit status says how it ended, and the metrics file (if
/// asked) says so too, even when the fleet did not load.
fn unattended(ctx: &Context, args: &Args) -> u8 {
    use super::unattended::{Pass, Policy, load, log_pass, reconcile};
    let log = super::logline::Log {
        json: args.json_logs,
    };
    let policy = Policy {
        allow_restart: args.common.allow_restart,
        allow_destroy: args.common.allow_destroy,
        shutdown_grace: args.shutdown_timeout,
    };
    let mut fleet_name = String::new();
    let mut eval = 0.0;
    let pass = match load(ctx) {
        Err(e) => Pass::failed_early(format!("{e:#}")),
        Ok(inputs) => {
            fleet_name = inputs.fleet.name.to_string();
            eval = inputs.eval.as_secs_f64();
            match execute::lock(ctx, &inputs.fleet) {
                Err(e) => Pass::failed_early(format!("{e:#}")),
                Ok(_run) => reconcile(
                    ctx,
                    &inputs.fleet,
                    &inputs.lock,
                    policy,
                    None,
                    &log,
                    None,
                    "apply",
                ),
            }
        }
    };
    log_pass(&log, "*", &pass);
    if let Some(path) = &args.metrics_file {
        let snapshot = super::metrics::Snapshot {
            fleet: fleet_name,
            passes: [("*".to_owned(), pass.clone())].into(),
            eval_seconds: eval,
            runs_total: None,
        };
        if let Err(e) = super::metrics::write_atomic(path, &super::metrics::render(&snapshot)) {
            log.line(
                "error",
                "metrics.write_failed",
                &[
                    ("path", path.display().to_string()),
                    ("error", e.to_string()),
                ],
            );
            return EXIT_ERROR;
        }
    }
    pass.verdict.exit_code()
}

/// Prints failures and one line per host; false when a step failed.
fn summarise(report: &Report) -> bool {
    let failed = execute::print_failures(report);
    for (host, steps) in &report.hosts {
        let done = steps.iter().filter(|s| s.outcome == Outcome::Done).count();
        let skipped: Vec<&str> = steps
            .iter()
            .filter(|s| s.outcome == Outcome::Skipped)
            .map(|s| s.address.as_str())
            .collect();
        println!(
            "host {host}: {done} of {} change(s) done{}",
            steps.len(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!("; not done: {}", skipped.join(", "))
            }
        );
    }
    if failed > 0 {
        anstream::eprintln!(
            "{ERROR}error{ERROR:#}: {failed} change(s) failed; re-run `virtfleet apply` after fixing the cause (every step is safe to repeat)"
        );
    }
    failed == 0
}

/// The convergence check: a fresh observation must plan nothing more. It
/// is planned for the applied plan's `now`: a period boundary passing
/// during the apply must not make a new snapshot look like a failure.
/// Returns the exit status: 0 converged, 1 not, 3 some host not observed,
/// 4 converged but with changes pending for lack of permission.
fn converged(
    fleet: &crate::fleet::Fleet,
    lock: &crate::lock::ImageLock,
    args: &PlanArgs,
    planned_for: u64,
) -> u8 {
    let obs = crate::observe::observe(fleet, now());
    let opts = super::plan::options(fleet, args, planned_for);
    let after = crate::plan::plan(fleet, lock, &obs, opts);
    if !after.changes.is_empty() || !after.refused.is_empty() {
        anstream::eprintln!("{ERROR}error{ERROR:#}: the fleet did not converge; still to do:");
        print!("{}", render_plan(&after, Format::Human));
        return EXIT_ERROR;
    }
    if !after.pending.is_empty() {
        anstream::println!(
            "{WARN}{} change(s) pending{WARN:#}: re-run with the permission they need (listed in the plan)",
            after.pending.len()
        );
    }
    if after.is_incomplete() {
        let hosts: Vec<&str> = after.unreachable.keys().map(String::as_str).collect();
        anstream::println!(
            "{WARN}converged on the hosts observed{WARN:#}; not observed, so not checked: {}",
            hosts.join(", ")
        );
        EXIT_INCOMPLETE
    } else if !after.pending.is_empty() {
        anstream::println!(
            "{WARN}applied what was allowed{WARN:#}: re-observed every host; the pending change(s) above still need their permission (exit status 4)"
        );
        EXIT_PENDING
    } else {
        anstream::println!("{OK}converged{OK:#}: re-observed every host; nothing left to do");
        EXIT_OK
    }
}

/// Reads a saved plan and checks that everything it was computed from is unchanged.
fn load_saved(
    ctx: &Context,
    path: &PathBuf,
    args: &PlanArgs,
) -> anyhow::Result<(
    crate::fleet::Fleet,
    crate::lock::ImageLock,
    Plan,
    crate::apply::runlock::FleetLock,
)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let plan: Plan = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a virtfleet plan", path.display()))?;
    if plan.format_version != crate::plan::FORMAT_VERSION {
        bail!(
            "{}: plan format {} is not supported (expected {})",
            path.display(),
            plan.format_version,
            crate::plan::FORMAT_VERSION
        );
    }
    if plan.inputs.from_file {
        bail!(
            "{}: this plan was made from a saved observation; plan against the live hosts to apply",
            path.display()
        );
    }
    let (fleet, lock) = super::load_fleet_and_lock(ctx)?;
    let run = execute::lock(ctx, &fleet)?;
    let stale = |what: String| {
        anyhow::anyhow!(
            "stale plan {}: {what} changed since it was made; run `virtfleet plan` again. Nothing was changed.",
            path.display()
        )
    };
    if crate::plan::planner::fleet_digest(&fleet) != plan.inputs.fleet {
        return Err(stale(ctx.fleet.display().to_string()));
    }
    if crate::plan::planner::lock_digest(&lock) != plan.inputs.lock {
        return Err(stale(ctx.lock.display().to_string()));
    }
    let obs = crate::observe::observe(&fleet, now());
    for (host, digest) in &plan.inputs.hosts {
        match obs.hosts.get(host) {
            Some(o) if crate::plan::planner::host_digest(&fleet, host, o) == *digest => {}
            _ => return Err(stale(format!("host {host}"))),
        }
    }
    check_contents(path, &plan, &fleet, &lock, &obs, args)?;
    Ok((fleet, lock, plan, run))
}

/// A saved plan is executed only if it is exactly what the planner makes
/// from the same inputs, and only with the permissions its changes need
/// given now: a hand-edited plan (an added destroy, a `trashDisk` of
/// something foreign, a pending change moved into the changes) is refused.
fn check_contents(
    path: &Path,
    plan: &Plan,
    fleet: &crate::fleet::Fleet,
    lock: &crate::lock::ImageLock,
    obs: &crate::resources::observed::Observation,
    args: &PlanArgs,
) -> anyhow::Result<()> {
    let granted = super::plan::options(fleet, args, plan.inputs.now);
    let needs = |d: Disruption| plan.changes.iter().any(|c| c.disruption == d);
    for (disruption, allowed, flag) in [
        (
            Disruption::Destructive,
            granted.allow_destroy,
            "--allow-destroy",
        ),
        (
            Disruption::Restart,
            granted.allow_restart,
            "--allow-restart",
        ),
    ] {
        if needs(disruption) && !allowed {
            bail!(
                "{}: the plan has {} changes; apply it with {flag} (or the fleet's setting). Nothing was changed.",
                path.display(),
                disruption.as_str()
            );
        }
    }
    // Re-planned with the permissions the saved changes use, the same
    // inputs must give the same changes.
    let opts = crate::plan::Options {
        now: plan.inputs.now,
        allow_destroy: needs(Disruption::Destructive),
        allow_restart: needs(Disruption::Restart),
        source: crate::plan::Source::Live,
        // A plan saved with user-data text shown re-plans with it shown.
        show_user_data: plan.changes.iter().any(|c| {
            matches!(
                &c.action,
                crate::plan::Action::CreateSeed {
                    user_data: Some(_),
                    ..
                } | crate::plan::Action::ReplaceSeed {
                    user_data: Some(_),
                    ..
                }
            )
        }),
    };
    let again = crate::plan::plan(fleet, lock, obs, opts);
    if again.changes != plan.changes || again.refused != plan.refused {
        bail!(
            "{}: its changes are not what virtfleet plans from the same inputs (was it edited?); run `virtfleet plan --out` again. Nothing was changed.",
            path.display()
        );
    }
    Ok(())
}
