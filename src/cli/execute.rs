//! Showing and running a plan: what `apply` and every command that changes
//! a host (`destroy`, `restore`, `snapshot`, `rollback`, `reinit`) share.
//!
//! A plan is shown in the same rendering as `virtfleet plan`, confirmed
//! where the command asks, run by the executor with progress on stderr,
//! and its failures printed with their hints.

use super::Context;
use super::plan::{Format, render_plan};
use crate::apply::runlock::{FleetLock, Holder, lock_fleet};
use crate::apply::{OnFailure, Outcome, Permits, Report, Settings};
use crate::fleet::Fleet;
use crate::lock::ImageLock;
use crate::plan::Plan;
use crate::resources::observed::{FORMAT_VERSION, Observation};
use crate::ui::{ApplyProgress, ERROR, print_hint};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a command that changes one machine works from: the fleet and the
/// lock, the fleet's run lock (held until this is dropped), and a fresh
/// observation taken after the lock.
pub struct MachineRun {
    /// The validated fleet.
    pub fleet: Fleet,
    /// The lockfile.
    pub lock: ImageLock,
    /// The machine.
    pub name: crate::fleet::VmName,
    /// Unix seconds the plan is made for.
    pub now: u64,
    /// The observation (the machine's host, or every host).
    pub obs: Observation,
    _run: FleetLock,
}

/// Which hosts a [`MachineRun`] observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The machine's host in the fleet.
    MachineHost,
    /// Every host (a machine removed from the fleet has no host in it).
    AllHosts,
}

impl MachineRun {
    /// Loads, locks and observes for a command on machine `name`.
    pub fn start(ctx: &Context, name: &str, scope: Scope) -> anyhow::Result<MachineRun> {
        let (mut fleet, lock) = load(ctx)?;
        let name = machine_name(name)?;
        let run = self::lock(ctx, &fleet)?;
        let now = super::now();
        locate_machine(&mut fleet, &name, now);
        let obs = match scope {
            Scope::MachineHost => observe_machine_host(&fleet, &name, now),
            Scope::AllHosts => crate::observe::observe(&fleet, now),
        };
        Ok(MachineRun {
            fleet,
            lock,
            name,
            now,
            obs,
            _run: run,
        })
    }

    /// What the command's plan is computed from.
    pub fn basis(&self) -> crate::plan::commands::Basis<'_> {
        crate::plan::commands::Basis {
            fleet: &self.fleet,
            lock: &self.lock,
            obs: &self.obs,
            now: self.now,
        }
    }

    /// Runs `plan`; other hosts stop at the first failure.
    pub fn execute(&self, ctx: &Context, plan: &Plan, shutdown_grace: Duration) -> Report {
        let on_failure = OnFailure::Stop;
        // The command names its change and was confirmed: that is its
        // permission.
        execute(
            ctx,
            plan,
            &self.fleet,
            &self.lock,
            shutdown_grace,
            on_failure,
            Permits::ALL,
        )
    }
}

/// Takes this fleet's run lock for the rest of the command, or refuses at
/// once naming the run that holds it.
/// The fleet's state file is checked here too, so a run that could not
/// be recorded (a foreign or corrupt file at its path) is refused before
/// anything is observed or changed.
pub fn lock(ctx: &Context, fleet: &Fleet) -> anyhow::Result<FleetLock> {
    let holder = Holder::me(super::now());
    let run = lock_fleet(&ctx.state_dir, fleet.name.as_str(), &holder)?;
    if !ctx.no_history {
        crate::state::Store::open(&ctx.state_dir, fleet.name.as_str())?;
    }
    Ok(run)
}

/// Prints `plan` for a person, as `virtfleet plan` does.
pub fn show(plan: &Plan) {
    print!("{}", render_plan(plan, Format::Human));
}

/// Runs `plan` through the executor, showing progress on stderr.
pub fn execute(
    ctx: &Context,
    plan: &Plan,
    fleet: &Fleet,
    lock: &ImageLock,
    shutdown_grace: Duration,
    on_failure: OnFailure,
    permits: Permits,
) -> Report {
    let settings = Settings {
        now: plan.inputs.now,
        shutdown_grace,
        on_failure,
        break_lock: ctx.break_lock,
        permits,
        concurrency: ctx.concurrency,
        stop: None,
    };
    let progress = ApplyProgress::new();
    let report = run_recorded(ctx, plan, fleet, lock, settings, &command_name(), &progress);
    // Dropping the display clears its bars before anything else is printed.
    drop(progress);
    report
}

/// Runs `plan` through the executor with `settings`, recording it as
/// `command` in the state file and passing every event on to `events`.
pub fn run_recorded(
    ctx: &Context,
    plan: &Plan,
    fleet: &Fleet,
    lock: &ImageLock,
    settings: Settings,
    command: &str,
    events: &dyn crate::apply::Events,
) -> Report {
    // Each step is recorded in the state file as it starts and ends; a
    // file that cannot be written only costs the history (a warning).
    let store = (!ctx.no_history)
        .then(|| {
            crate::state::Store::open(&ctx.state_dir, fleet.name.as_str())
                .map_err(|e| {
                    anstream::eprintln!("{}warning{:#}: {e}", crate::ui::WARN, crate::ui::WARN)
                })
                .ok()
        })
        .flatten();
    let recorder = crate::state::Recorder::start(store, plan, command, ctx.retention, events);
    let report = crate::apply::apply(plan, fleet, lock, &ctx.cache, settings, &recorder);
    recorder.finish(&report);
    report
}

/// The subcommand this process runs, for the run's record.
fn command_name() -> String {
    const CHANGING: &[&str] = &[
        "apply", "destroy", "restore", "snapshot", "rollback", "reinit",
    ];
    std::env::args()
        .skip(1)
        .find(|a| CHANGING.contains(&a.as_str()))
        .unwrap_or_else(|| "apply".into())
}

/// Prints every failed step with its hint; returns how many failed.
pub fn print_failures(report: &Report) -> usize {
    let mut n = 0;
    for (_, s) in report.failures() {
        if let Outcome::Failed { message, hint } = &s.outcome {
            n += 1;
            anstream::eprintln!(
                "{ERROR}failed{ERROR:#}: {}: {}: {message}",
                s.address,
                s.what
            );
            if let Some(h) = hint {
                print_hint(h);
            }
        }
    }
    n
}

/// Sets the `host` of machine `name` to where it is (or would be placed)
/// when the fleet does not name it: the hosts are observed for
/// that (all of the fleet's: it may be on one it may no longer use).
/// A machine with a fixed host, or not in the fleet, is left alone.
pub fn locate_machine(fleet: &mut Fleet, name: &crate::fleet::VmName, now: u64) {
    if fleet.machines.get(name).is_none_or(|m| m.placement.fixed) {
        return;
    }
    // Every host: the machine may be on one it may no longer use.
    let obs = crate::observe::observe(fleet, now);
    let located = crate::plan::placement::locate(fleet, &obs);
    *fleet = located;
}

/// An observation of only the host of `machine` (nothing when the fleet
/// does not declare it: the command's plan then refuses by itself).
pub fn observe_machine_host(
    fleet: &Fleet,
    machine: &crate::fleet::VmName,
    now: u64,
) -> Observation {
    let hosts = match fleet.machines.get(machine) {
        Some(m) => {
            let host = &fleet.hosts[&m.host];
            BTreeMap::from([(
                host.name.to_string(),
                crate::observe::observe_host(fleet, host, crate::observe::Depth::Plan),
            )])
        }
        None => BTreeMap::new(),
    };
    Observation {
        format_version: FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        taken_at: now,
        hosts,
    }
}

/// The fleet and the lock for a one-machine command. Such plans touch no
/// base image, so the lock is read (its digest goes into the plan) but
/// not checked against the fleet.
pub fn load(ctx: &Context) -> anyhow::Result<(Fleet, ImageLock)> {
    let fleet = super::load_fleet(ctx)?;
    let lock = ImageLock::read(&ctx.lock)?;
    Ok((fleet, lock))
}

/// Parses a machine name given on the command line.
pub fn machine_name(name: &str) -> anyhow::Result<crate::fleet::VmName> {
    crate::fleet::VmName::new(name).map_err(|e| anyhow::anyhow!("machine {name:?}: {e}"))
}
