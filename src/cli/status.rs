//! `virtfleet status`: per host, each machine's state, drift and address,
//! and the objects virtfleet does not own.

use super::{Context, EXIT_INCOMPLETE, EXIT_OK};
use crate::resources::observed::HostObservation;
use crate::resources::observed::PowerState;
use crate::ui::table;
use serde::Serialize;
use std::collections::BTreeMap;

/// Show each host's machines: state, drift from fleet.dhall, IP address.
///
/// Observes every host (read-only) and compares it with the fleet. SYNC is
/// `in sync`, or what `apply` would do. Unmanaged domains and files are listed
/// and never touched.
///
/// Examples:
///   virtfleet status
///   virtfleet status --json | jq '.hosts[].machines[] | select(.sync != "in sync")'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HostStatus {
    uri: String,
    reachable: bool,
    error: Option<String>,
    machines: Vec<MachineStatus>,
    unmanaged: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MachineStatus {
    name: String,
    state: String,
    sync: String,
    addresses: Vec<String>,
}

#[derive(Serialize)]
struct Status {
    fleet: String,
    hosts: BTreeMap<String, HostStatus>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let (fleet, lock) = super::load_fleet_and_lock(ctx)?;
    let obs = crate::observe::observe(&fleet, super::now());
    // Permissions only decide pending vs not; status lists both alike.
    let opts = crate::plan::Options {
        now: obs.taken_at,
        allow_destroy: true,
        allow_restart: true,
        source: crate::plan::Source::Live,
    };
    let plan = crate::plan::plan(&fleet, &lock, &obs, opts);
    let mut status = Status {
        fleet: fleet.name.to_string(),
        hosts: BTreeMap::new(),
    };
    for host in fleet.hosts.values() {
        let h = host.name.to_string();
        let mut hs = HostStatus {
            uri: host.uri.clone(),
            reachable: false,
            error: None,
            machines: Vec::new(),
            unmanaged: plan.unmanaged.get(&h).cloned().unwrap_or_default(),
        };
        match obs.hosts.get(&h) {
            Some(HostObservation::Reachable(state)) => {
                hs.reachable = true;
                let mut names: Vec<String> = fleet
                    .machines_on(&host.name)
                    .map(|m| m.name.to_string())
                    .collect();
                names.extend(state.managed(fleet.name.as_str()).map(|(n, _)| n.clone()));
                names.sort();
                names.dedup();
                for n in names {
                    let d = state.domains.get(&n);
                    let prefix = format!("{h}/{n}");
                    let mut sync: Vec<String> = plan
                        .changes
                        .iter()
                        .chain(plan.pending.iter().map(|p| &p.change))
                        .filter(|c| {
                            c.address == prefix || c.address.starts_with(&format!("{prefix}/"))
                        })
                        .map(|c| c.action.describe())
                        .collect();
                    sync.extend(
                        plan.refused
                            .iter()
                            .filter(|r| {
                                r.address == prefix || r.address.starts_with(&format!("{prefix}/"))
                            })
                            .map(|r| format!("refused: {}", r.message)),
                    );
                    let state_s = match d.map(|d| d.state) {
                        None => "absent",
                        Some(PowerState::Running) => "running",
                        Some(PowerState::Paused) => "paused",
                        Some(PowerState::Stopped) => "stopped",
                        Some(PowerState::Other) => "other",
                    };
                    hs.machines.push(MachineStatus {
                        name: n.clone(),
                        state: state_s.into(),
                        sync: if sync.is_empty() {
                            "in sync".into()
                        } else {
                            sync.join("; ")
                        },
                        addresses: d.map(|d| d.addresses.clone()).unwrap_or_default(),
                    });
                }
            }
            Some(HostObservation::Unreachable { error }) => hs.error = Some(error.clone()),
            None => hs.error = Some("not observed".into()),
        }
        status.hosts.insert(h, hs);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        for (h, hs) in &status.hosts {
            match &hs.error {
                Some(e) => println!("host {h} ({}): UNREACHABLE: {e}\n", hs.uri),
                None => {
                    println!("host {h} ({})", hs.uri);
                    let rows: Vec<Vec<String>> = hs
                        .machines
                        .iter()
                        .map(|m| {
                            vec![
                                m.name.clone(),
                                m.state.clone(),
                                if m.addresses.is_empty() {
                                    "-".into()
                                } else {
                                    m.addresses.join(",")
                                },
                                m.sync.clone(),
                            ]
                        })
                        .collect();
                    print!("{}", table(&["MACHINE", "STATE", "ADDRESS", "SYNC"], &rows));
                    if !hs.unmanaged.is_empty() {
                        println!("unmanaged (never touched): {}", hs.unmanaged.join(", "));
                    }
                    println!();
                }
            }
        }
    }
    Ok(if status.hosts.values().any(|h| !h.reachable) {
        EXIT_INCOMPLETE
    } else {
        EXIT_OK
    })
}
