//! `virtfleet status`: per host, each machine's state, drift and address,
//! and the objects virtfleet does not own.

use super::{Context, EXIT_INCOMPLETE, EXIT_OK};
use crate::fleet::{Fleet, Host};
use crate::plan::Plan;
use crate::resources::observed::{HostObservation, HostState, Lease, Observation, PowerState};
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

/// One host in `status --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HostStatus {
    /// The host's libvirt URI.
    uri: String,
    /// It could be observed.
    reachable: bool,
    /// Why it could not be observed.
    error: Option<String>,
    /// This fleet's machines on the host (declared or found).
    machines: Vec<MachineStatus>,
    /// Objects that are not this fleet's (never touched).
    unmanaged: Vec<String>,
    /// The run changing the host right now, if any.
    lease: Option<Box<Lease>>,
}

/// One machine in `status --json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MachineStatus {
    name: String,
    /// `running`, `paused`, `stopped`, `other`, or `absent` (not defined).
    state: String,
    /// `in sync`, or what `apply` would do (`; `-separated).
    sync: String,
    /// IP addresses libvirt knows for the guest.
    addresses: Vec<String>,
}

/// The whole of `status --json`.
#[derive(Serialize)]
struct Status {
    fleet: String,
    /// The last run, when it was interrupted.
    #[serde(skip_serializing_if = "Option::is_none")]
    interrupted: Option<crate::state::Interrupted>,
    hosts: BTreeMap<String, HostStatus>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    let (fleet, lock) = super::load_fleet_and_lock(ctx)?;
    let obs = crate::observe::observe_to(&fleet, super::now(), crate::observe::Depth::Addresses);
    // Machines are listed where they are (or are placed), not where the
    // fleet's provisional host would be.
    let located = crate::plan::placement::locate(&fleet, &obs);
    // Permissions only decide pending vs not; status lists both alike.
    let opts = crate::plan::Options {
        now: obs.taken_at,
        allow_destroy: true,
        allow_restart: true,
        source: crate::plan::Source::Live,
        show_user_data: false,
    };
    let plan = crate::plan::plan(&fleet, &lock, &obs, opts);
    // Status is an observation: what it found is logged (compactly) in the
    // fleet's history, and an interrupted last run is named.
    let store = super::history::open_if(ctx, fleet.name.as_str(), true);
    super::history::record_findings(ctx, store.as_ref(), &plan);
    let interrupted = super::history::interrupted(store.as_ref());
    if let Some(i) = &interrupted {
        super::history::print_interrupted(i, "`virtfleet apply` finishes it");
    }
    let status = Status {
        fleet: fleet.name.to_string(),
        interrupted,
        hosts: fleet
            .hosts
            .values()
            .map(|host| {
                (
                    host.name.to_string(),
                    host_status(&located, host, &obs, &plan),
                )
            })
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_tables(&status);
    }
    Ok(if status.hosts.values().any(|h| !h.reachable) {
        EXIT_INCOMPLETE
    } else {
        EXIT_OK
    })
}

/// One host's status: its machines (declared here, or managed and found
/// here), or why it could not be observed.
fn host_status(fleet: &Fleet, host: &Host, obs: &Observation, plan: &Plan) -> HostStatus {
    let h = host.name.to_string();
    let mut hs = HostStatus {
        uri: host.uri.clone(),
        reachable: false,
        error: None,
        machines: Vec::new(),
        unmanaged: plan.unmanaged.get(&h).cloned().unwrap_or_default(),
        lease: None,
    };
    match obs.hosts.get(&h) {
        Some(HostObservation::Reachable(state)) => {
            hs.reachable = true;
            hs.lease.clone_from(&state.lease);
            let mut names: Vec<String> = fleet
                .machines_on(&host.name)
                .map(|m| m.name.to_string())
                .collect();
            names.extend(state.managed(fleet.name.as_str()).map(|(n, _)| n.clone()));
            names.sort();
            names.dedup();
            hs.machines = names
                .into_iter()
                .map(|n| machine_status(&h, n, state, plan))
                .collect();
        }
        Some(HostObservation::Unreachable { error }) => hs.error = Some(error.clone()),
        None => hs.error = Some("not observed".into()),
    }
    hs
}

/// A machine's power state and what the plan would do to it.
fn machine_status(h: &str, n: String, state: &HostState, plan: &Plan) -> MachineStatus {
    let d = state.domains.get(&n);
    let prefix = format!("{h}/{n}");
    let mine = |address: &str| address == prefix || address.starts_with(&format!("{prefix}/"));
    let mut sync: Vec<String> = plan
        .changes
        .iter()
        .chain(plan.pending.iter().map(|p| &p.change))
        .filter(|c| mine(&c.address))
        .map(|c| c.action.describe())
        .collect();
    sync.extend(
        plan.refused
            .iter()
            .filter(|r| mine(&r.address))
            .map(|r| format!("refused: {}", r.message)),
    );
    let state_s = match d.map(|d| d.state) {
        None => "absent",
        Some(PowerState::Running) => "running",
        Some(PowerState::Paused) => "paused",
        Some(PowerState::Stopped) => "stopped",
        Some(PowerState::Other) => "other",
    };
    MachineStatus {
        state: state_s.into(),
        sync: if sync.is_empty() {
            "in sync".into()
        } else {
            sync.join("; ")
        },
        addresses: d.map(|d| d.addresses.clone()).unwrap_or_default(),
        name: n,
    }
}

/// The human form: a table per host.
fn print_tables(status: &Status) {
    for (h, hs) in &status.hosts {
        if let Some(e) = &hs.error {
            println!("host {h} ({}): UNREACHABLE: {e}\n", hs.uri);
            continue;
        }
        println!("host {h} ({})", hs.uri);
        let rows: Vec<Vec<String>> = hs
            .machines
            .iter()
            .map(|m| {
                let addresses = if m.addresses.is_empty() {
                    "-".into()
                } else {
                    m.addresses.join(",")
                };
                vec![m.name.clone(), m.state.clone(), addresses, m.sync.clone()]
            })
            .collect();
        print!("{}", table(&["MACHINE", "STATE", "ADDRESS", "SYNC"], &rows));
        if !hs.unmanaged.is_empty() {
            println!("unmanaged (never touched): {}", hs.unmanaged.join(", "));
        }
        if let Some(l) = &hs.lease {
            println!(
                "leased by {} on {} pid {} (`{}`, fleet {:?}) since {}, until {}",
                l.user,
                l.controller,
                l.pid,
                l.command,
                l.fleet,
                crate::text::rfc3339(l.since),
                crate::text::rfc3339(l.expires)
            );
        }
        println!();
    }
}
