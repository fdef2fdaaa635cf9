//! `virtfleet snapshot | snapshots | rollback | reinit`: manual snapshots,
//! listing with owner and age, and going back in time.
//!
//! Scheduled snapshots and their pruning are planned by `plan`/`apply`;
//! these commands act at once on one machine, through one-machine plans
//! ([`crate::plan::commands`]) that are shown and run by the executor. A
//! rollback stops the guest gracefully (powering it off only with --force),
//! rolls every disk that has the snapshot back, and starts the guest again
//! if it was running.

use super::execute;
use super::execute::{MachineRun, Scope};
use super::{Context, EXIT_ERROR, EXIT_OK, now};
use crate::apply::{Outcome, Report};
use crate::fleet::{Fleet, Host, Machine, VmName};
use crate::host::backend;
use crate::host::storage::StorageBackend;
use crate::host::transport::Transport;
use crate::host::transport_for;
use crate::plan::commands::{DiskSnapshots, RollbackOptions, rollback_plan, snapshot_plan};
use crate::plan::snapshots::{INIT, Kind, classify};
use crate::plan::{Action, Plan};
use crate::resources::observed::{HostObservation, Observation};
use crate::ui::{OK, WARN, table};
use anyhow::{Context as _, anyhow};
use std::collections::BTreeMap;
use std::time::Duration;

/// Take a manual snapshot of a machine's disks (never pruned by the policy).
///
/// Named `vf-manual-<label>-<UTC time>`. On ZFS hosts every disk is
/// snapshotted; on Dir hosts a running guest gets one internal checkpoint
/// covering all its disks (memory included), a stopped one per-disk
/// internal qcow2 snapshots.
///
/// Example:
///   virtfleet snapshot web --label before-upgrade
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct SnapshotArgs {
    /// The machine.
    name: String,
    /// A word for the name, `[a-z0-9-]` (default `manual`).
    #[arg(long, default_value = "manual")]
    label: String,
}

/// List snapshots of one machine or of all, with owner and age.
///
/// OWNER is `init` (taken at creation, kept), `manual` (virtfleet snapshot,
/// kept), `hourly|daily|weekly|monthly` (the policy prunes these) or `foreign`
/// (not virtfleet's: never touched).
///
/// Example:
///   virtfleet snapshots web
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ListArgs {
    /// Only this machine.
    name: Option<String>,
}

/// Roll a machine's disks back to a snapshot.
///
/// Stops the guest gracefully (ACPI, up to --shutdown-timeout; powered off
/// only with --force), rolls back every disk that has the snapshot, and starts
/// the guest again if it was running. Everything written after the snapshot
/// is lost: shows the plan and asks for confirmation (or --yes). On ZFS a
/// rollback destroys the snapshots taken after the target; that needs
/// --destroy-newer. If it stops half-way, it names the disks rolled back.
///
/// Examples:
///   virtfleet rollback web --to vf-manual-before-upgrade-20261122T140000Z
///   virtfleet rollback web --to vf-init --yes --force
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct RollbackArgs {
    /// The machine.
    name: String,
    /// The snapshot to go back to (see `virtfleet snapshots NAME`).
    #[arg(long)]
    to: String,
    #[command(flatten)]
    opts: RollbackOpts,
}

/// Bring a machine back to how it was created (rollback to its init snapshot).
///
/// The emergency hammer: every disk goes back to the `vf-init` snapshot taken
/// right after creation, before the first boot. Same flags as rollback.
///
/// Example:
///   virtfleet reinit web --yes --force
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct ReinitArgs {
    /// The machine.
    name: String,
    #[command(flatten)]
    opts: RollbackOpts,
}

/// Options shared by rollback and reinit.
#[derive(Debug, clap::Args)]
pub struct RollbackOpts {
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Power the guest off if it does not shut down within the timeout.
    #[arg(long)]
    force: bool,
    /// Allow destroying snapshots taken after the target (ZFS).
    #[arg(long)]
    destroy_newer: bool,
    /// How long the guest may take to shut down by ACPI.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
}

/// A machine of the fleet with its host's connections.
struct Target<'f> {
    machine: &'f Machine,
    host: &'f Host,
    transport: Box<dyn Transport>,
}

impl<'f> Target<'f> {
    fn new(fleet: &'f Fleet, name: &str) -> anyhow::Result<Self> {
        let vm = VmName::new(name).map_err(|e| anyhow!("machine {name:?}: {e}"))?;
        let machine = fleet
            .machines
            .get(&vm)
            .ok_or_else(|| anyhow!("machine {name} is not in {}", fleet.source.display()))?;
        let host = &fleet.hosts[&machine.host];
        let transport = transport_for(host)?;
        Ok(Target {
            machine,
            host,
            transport,
        })
    }

    fn storage(&self) -> Box<dyn StorageBackend + '_> {
        backend(self.host, self.transport.as_ref())
    }

    /// (disk, volume, snapshots) of every disk of the machine that exists.
    fn disks(&self) -> anyhow::Result<Vec<(String, String, Vec<String>)>> {
        let storage = self.storage();
        let mut out = Vec::new();
        for (disk, _) in self.machine.disks() {
            let vol = self.machine.volume_name(&disk);
            match storage.snapshot_list(&vol) {
                Ok(list) => out.push((disk, vol, list)),
                Err(e) => return Err(anyhow!("machine {}: disk {disk}: {e}", self.machine.name)),
            }
        }
        Ok(out)
    }
}

/// Plans a manual snapshot, shows it and takes it; prints `snapshot NAME of MACHINE`.
pub fn snapshot(ctx: &Context, args: SnapshotArgs) -> anyhow::Result<u8> {
    crate::fleet::check_name(&args.label).map_err(|e| anyhow!("--label: {e}"))?;
    let run = MachineRun::start(ctx, &args.name, Scope::MachineHost)?;
    let name = &run.name;
    let plan = snapshot_plan(run.basis(), name, &args.label)?;
    execute::show(&plan);
    // A snapshot changes nothing the guest sees: no confirmation.
    let report = run.execute(ctx, &plan, Duration::ZERO);
    if execute::print_failures(&report) > 0 {
        return Ok(EXIT_ERROR);
    }
    for c in &plan.changes {
        if let Action::Snapshot { name: snap, .. } = &c.action {
            anstream::println!("{OK}snapshot{OK:#} {snap} of {name}");
        }
    }
    Ok(EXIT_OK)
}

/// Prints the snapshots table (read only: no plan, nothing changes).
pub fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<u8> {
    let mut fleet = super::load_fleet(ctx)?;
    let names: Vec<String> = match &args.name {
        Some(n) => vec![n.clone()],
        None => fleet.machines.keys().map(|k| k.to_string()).collect(),
    };
    let now = now();
    if fleet.machines.values().any(|m| !m.placement.fixed) {
        // Machines the planner places are listed where they are.
        let obs = crate::observe::observe(&fleet, now);
        fleet = crate::plan::placement::locate(&fleet, &obs);
    }
    let mut rows = Vec::new();
    for n in names {
        let t = Target::new(&fleet, &n)?;
        for (disk, _, snaps) in t.disks()? {
            for s in snaps {
                let (owner, age) = match classify(&s) {
                    Kind::Init => ("init".to_owned(), "-".to_owned()),
                    Kind::Manual => ("manual".to_owned(), manual_age(&s, now)),
                    Kind::Scheduled(p, at) => (p.as_str().to_owned(), crate::text::age(now, at)),
                    Kind::Foreign => ("foreign".to_owned(), "-".to_owned()),
                };
                rows.push(vec![n.clone(), disk.clone(), s, owner, age]);
            }
        }
    }
    print!(
        "{}",
        table(&["MACHINE", "DISK", "SNAPSHOT", "OWNER", "AGE"], &rows)
    );
    Ok(EXIT_OK)
}

fn manual_age(name: &str, now: u64) -> String {
    let stamp = name.rsplit('-').next().unwrap_or("");
    match classify(&format!("vf-daily-{stamp}")) {
        Kind::Scheduled(_, at) => crate::text::age(now, at),
        _ => "-".into(),
    }
}

/// `rollback NAME --to SNAP`.
pub fn rollback(ctx: &Context, args: RollbackArgs) -> anyhow::Result<u8> {
    go_back(ctx, &args.name, &args.to, &args.opts)
}

/// `reinit NAME`: rollback to the init snapshot.
pub fn reinit(ctx: &Context, args: ReinitArgs) -> anyhow::Result<u8> {
    go_back(ctx, &args.name, INIT, &args.opts)
}

/// Rollback and reinit: read the machine's snapshots, plan, show, confirm,
/// run, and say exactly which disks were rolled back if it stopped half-way.
fn go_back(ctx: &Context, name: &str, to: &str, opts: &RollbackOpts) -> anyhow::Result<u8> {
    let run = MachineRun::start(ctx, name, Scope::MachineHost)?;
    let snapshots = owned_snapshots(&run.fleet, &run.name, &run.obs, to)?;
    let options = RollbackOptions {
        force: opts.force,
        destroy_newer: opts.destroy_newer,
    };
    let plan = rollback_plan(run.basis(), &run.name, to, &snapshots, options)?;
    execute::show(&plan);
    let skipped: Vec<&str> = snapshots
        .iter()
        .filter(|(_, s)| !s.all.iter().any(|x| x == to))
        .map(|(v, _)| v.as_str())
        .collect();
    if !skipped.is_empty() {
        anstream::println!(
            "{WARN}note{WARN:#}: disks without {to} are left as they are: {}",
            skipped.join(", ")
        );
    }
    super::confirm(
        &format!("Roll back {name}?"),
        opts.yes,
        "roll back",
        "--yes",
    )?;
    let report = run.execute(ctx, &plan, opts.shutdown_timeout);
    if execute::print_failures(&report) > 0 {
        anstream::eprintln!("{}", rolled_back(&plan, &report));
        return Ok(EXIT_ERROR);
    }
    let restarted = plan.changes.iter().any(|c| c.action == Action::Start);
    anstream::println!(
        "{OK}rolled back{OK:#} {name} to {to}{}",
        if restarted { "; started again" } else { "" }
    );
    Ok(EXIT_OK)
}

/// Snapshots of the machine's owned disks (observation lists them only
/// for disks with a schedule). Foreign and missing disks are not read: the
/// plan refuses them.
fn owned_snapshots(
    fleet: &Fleet,
    vm: &VmName,
    obs: &Observation,
    to: &str,
) -> anyhow::Result<BTreeMap<String, DiskSnapshots>> {
    let mut out = BTreeMap::new();
    let Some(m) = fleet.machines.get(vm) else {
        return Ok(out);
    };
    let host = &fleet.hosts[&m.host];
    let Some(HostObservation::Reachable(state)) = obs.hosts.get(host.name.as_str()) else {
        return Ok(out);
    };
    let t = transport_for(host)?;
    let storage = backend(host, t.as_ref());
    for (disk, _) in m.disks() {
        let vol = m.volume_name(&disk);
        if state
            .disks
            .get(&vol)
            .is_some_and(|d| d.owner.machine == vm.as_str() && d.owner.disk == disk)
        {
            let all = storage
                .snapshot_list(&vol)
                .with_context(|| format!("machine {vm}: disk {disk}"))?;
            let newer = if all.iter().any(|s| s == to) {
                storage
                    .snapshots_after(&vol, to)
                    .with_context(|| format!("machine {vm}: disk {disk}"))?
            } else {
                Vec::new()
            };
            out.insert(vol, DiskSnapshots { all, newer });
        }
    }
    Ok(out)
}

/// After a failure: which disks were rolled back and which were not, and
/// whether the guest was left stopped.
fn rolled_back(plan: &Plan, report: &Report) -> String {
    let (mut done, mut not) = (Vec::new(), Vec::new());
    // One host, so the report lists the plan's changes in plan order.
    for (c, (_, s)) in plan.changes.iter().zip(report.steps()) {
        if let Action::RollbackDisk { volume, .. } = &c.action {
            if s.outcome == Outcome::Done {
                done.push(volume.as_str());
            } else {
                not.push(volume.as_str());
            }
        }
    }
    if done.is_empty() {
        return "Nothing was rolled back.".into();
    }
    let stopped = if plan.changes.iter().any(|c| c.action == Action::Start) {
        " The guest was not started again."
    } else {
        ""
    };
    format!(
        "Rolled back: {}; not rolled back: {}.{stopped} Every step is safe to repeat: run the command again once the cause is fixed.",
        done.join(", "),
        if not.is_empty() {
            "none".to_owned()
        } else {
            not.join(", ")
        }
    )
}
