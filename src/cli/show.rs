//! `virtfleet show`: the evaluated, validated fleet as tables or JSON.

use super::{Context, EXIT_OK, load_fleet};
use crate::fleet::{CpuMode, DomainType, Fleet, Network, Power, Storage};
use crate::ui::table;

/// Print the evaluated fleet: hosts and machines as tables, or --json.
///
/// Shows what virtfleet understood from fleet.dhall after evaluation and
/// validation, with every default filled in: useful to check what a Dhall
/// function generated. No host is contacted.
///
/// Examples:
///   virtfleet show
///   virtfleet show --json | jq '.machines | keys'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Print the fleet as JSON (stable camelCase field names, sorted keys).
    #[arg(long)]
    json: bool,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let fleet = load_fleet(ctx)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&fleet)?);
        return Ok(EXIT_OK);
    }
    println!(
        "fleet {}  (allowDestroy={}, allowRestart={}, trash kept {} days)\n",
        fleet.name,
        fleet.settings.allow_destroy,
        fleet.settings.allow_restart,
        fleet.settings.trash_retention_days
    );
    print!("{}", hosts_table(&fleet));
    println!();
    print!("{}", machines_table(&fleet));
    Ok(EXIT_OK)
}

/// One row per host: where it is, its storage, and how guests run there.
fn hosts_table(fleet: &Fleet) -> String {
    let hosts: Vec<Vec<String>> = fleet
        .hosts
        .values()
        .map(|h| {
            vec![
                h.name.to_string(),
                h.uri.clone(),
                match &h.storage {
                    Storage::Zfs { parent } => format!("zfs:{parent}"),
                    Storage::Dir { path } => format!("dir:{path}"),
                },
                match h.domain_type {
                    DomainType::Kvm => "kvm".into(),
                    DomainType::Qemu => "qemu".into(),
                },
                match &h.cpu_mode {
                    CpuMode::HostPassthrough => "host-passthrough".into(),
                    CpuMode::HostModel => "host-model".into(),
                    CpuMode::Model(m) => format!("model:{m}"),
                    CpuMode::Default => "default".into(),
                },
                match &h.network {
                    Network::Libvirt(n) => format!("network:{n}"),
                    Network::Bridge(b) => format!("bridge:{b}"),
                    Network::User => "user".into(),
                },
                h.capacity
                    .map(|c| format!("{} cpus, {} MiB", c.cpus, c.memory_mib))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "HOST", "URI", "STORAGE", "TYPE", "CPU", "NETWORK", "CAPACITY",
        ],
        &hosts,
    )
}

/// One row per machine, every default filled in.
fn machines_table(fleet: &Fleet) -> String {
    let machines: Vec<Vec<String>> = fleet
        .machines
        .values()
        .map(|m| {
            let s = &m.snapshots;
            vec![
                m.name.to_string(),
                // Unobserved, a machine the planner places is shown with the
                // hosts it may go to (`plan` and `status` say where it is).
                if m.placement.fixed {
                    m.host.to_string()
                } else {
                    let c: Vec<&str> = m.placement.candidates.iter().map(|h| h.as_str()).collect();
                    format!("{{{}}}", c.join("|"))
                },
                m.image.to_string(),
                m.cpus.to_string(),
                format!("{} MiB", m.memory_mib),
                format!("{} GiB", m.disk_gib),
                if m.data_disks.is_empty() {
                    "-".into()
                } else {
                    m.data_disks
                        .iter()
                        .map(|d| format!("{}:{}G", d.name, d.size_gib))
                        .collect::<Vec<_>>()
                        .join(",")
                },
                match m.power {
                    Power::Running => "running".into(),
                    Power::Stopped => "stopped".into(),
                },
                format!(
                    "{}h{}d{}w{}m{}",
                    s.hourly,
                    s.daily,
                    s.weekly,
                    s.monthly,
                    if s.init { "+init" } else { "" }
                ),
                if m.protect { "yes".into() } else { "-".into() },
            ]
        })
        .collect();
    table(
        &[
            "MACHINE",
            "HOST",
            "IMAGE",
            "CPUS",
            "MEMORY",
            "DISK",
            "DATA",
            "POWER",
            "SNAPSHOTS",
            "PROTECT",
        ],
        &machines,
    )
}
