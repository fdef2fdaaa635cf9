//! `virtfleet snapshot | snapshots | rollback | reinit`: manual snapshots,
//! listing with owner and age, and going back in time.
//!
//! Scheduled snapshots and their pruning are planned by `plan`/`apply`;
//! these commands act at once on one machine. A rollback stops the guest
//! gracefully (powering it off only with --force), rolls every disk that
//! has the snapshot back, and starts the guest again if it was running.

use super::{Context, EXIT_OK, now};
use crate::fleet::{Fleet, Host, Machine, VmName};
use crate::host::backend;
use crate::host::libvirt::Libvirt;
use crate::host::storage::StorageBackend;
use crate::host::transport::Transport;
use crate::host::transport_for;
use crate::plan::snapshots::{INIT, Kind, classify, stamp};
use crate::ui::{OK, WARN, table};
use anyhow::{Context as _, anyhow, bail};
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
/// is lost: asks for confirmation (or --yes). On ZFS a rollback destroys the
/// snapshots taken after the target; that needs --destroy-newer.
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

pub fn snapshot(ctx: &Context, args: SnapshotArgs) -> anyhow::Result<u8> {
    crate::fleet::check_name(&args.label).map_err(|e| anyhow!("--label: {e}"))?;
    let fleet = super::load_fleet(ctx)?;
    let t = Target::new(&fleet, &args.name)?;
    let name = format!("vf-manual-{}-{}", args.label, stamp(now()));
    let lv = Libvirt::open(&t.host.uri)?;
    let storage = t.storage();
    let m = t.machine.name.as_str();
    if storage.snapshots_via_domain() && lv.exists(m) {
        lv.snapshot(m, &name)?;
    } else {
        for (disk, _) in t.machine.disks() {
            storage
                .snapshot(&t.machine.volume_name(&disk), &name)
                .with_context(|| format!("disk {disk}"))?;
        }
    }
    anstream::println!("{OK}snapshot{OK:#} {name} of {m}");
    Ok(EXIT_OK)
}

pub fn list(ctx: &Context, args: ListArgs) -> anyhow::Result<u8> {
    let fleet = super::load_fleet(ctx)?;
    let names: Vec<String> = match &args.name {
        Some(n) => vec![n.clone()],
        None => fleet.machines.keys().map(|k| k.to_string()).collect(),
    };
    let now = now();
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

pub fn rollback(ctx: &Context, args: RollbackArgs) -> anyhow::Result<u8> {
    go_back(ctx, &args.name, &args.to, &args.opts)
}

pub fn reinit(ctx: &Context, args: ReinitArgs) -> anyhow::Result<u8> {
    go_back(ctx, &args.name, INIT, &args.opts)
}

fn go_back(ctx: &Context, name: &str, to: &str, opts: &RollbackOpts) -> anyhow::Result<u8> {
    let fleet = super::load_fleet(ctx)?;
    let t = Target::new(&fleet, name)?;
    let disks = t.disks()?;
    let having: Vec<&(String, String, Vec<String>)> = disks
        .iter()
        .filter(|(_, _, s)| s.iter().any(|x| x == to))
        .collect();
    if having.is_empty() {
        let known: Vec<&String> = disks.iter().flat_map(|(_, _, s)| s).collect();
        bail!(
            "machine {name} has no snapshot {to:?} (it has: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    let storage = t.storage();
    let mut newer = Vec::new();
    for (disk, vol, _) in &having {
        for s in storage.snapshots_after(vol, to)? {
            newer.push(format!("{disk}@{s}"));
        }
    }
    if !newer.is_empty() && !opts.destroy_newer {
        bail!(
            "rolling {name} back to {to} would destroy newer snapshots: {}; pass --destroy-newer to allow it. Nothing was changed.",
            newer.join(", ")
        );
    }
    let skipped: Vec<&str> = disks
        .iter()
        .filter(|(_, _, s)| !s.iter().any(|x| x == to))
        .map(|(d, _, _)| d.as_str())
        .collect();
    println!(
        "rollback {name} to {to}: disks {}; everything written since is lost{}",
        having
            .iter()
            .map(|(d, _, _)| d.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if newer.is_empty() {
            String::new()
        } else {
            format!("; destroys {}", newer.join(", "))
        }
    );
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
    let lv = Libvirt::open(&t.host.uri)?;
    let m = t.machine.name.as_str();
    let was_running = lv.is_running(m)?;
    if was_running && !lv.shutdown_wait(m, opts.shutdown_timeout)? {
        if !opts.force {
            bail!(
                "{m} did not shut down within {}; pass --force to power it off. Nothing was rolled back.",
                humantime::format_duration(opts.shutdown_timeout)
            );
        }
        lv.stop(m, Duration::ZERO)?;
    }
    for (disk, vol, _) in &having {
        storage
            .rollback(vol, to)
            .with_context(|| format!("disk {disk}"))?;
    }
    if was_running {
        lv.start(m)?;
    }
    anstream::println!(
        "{OK}rolled back{OK:#} {m} to {to}{}",
        if was_running { "; started again" } else { "" }
    );
    Ok(EXIT_OK)
}
