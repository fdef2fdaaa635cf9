//! Observation: what is really on each host, gathered in parallel.
//!
//! One thread per host opens that host's libvirt connection and storage,
//! lists every domain and every file under the storage root, and records
//! which of them carry this fleet's ownership marker. The cost per host is
//! a fixed number of libvirt calls plus one definition read per domain that
//! may be this fleet's: other domains are known by name, UUID and state
//! only, however many there are (see [`Libvirt::domains_where`]); guest
//! addresses only when asked ([`Depth`]). A host that cannot be reached
//! becomes `Unreachable` with the reason; it never fails the run.
//! An [`Observation`] is plain data: it can be saved (`observe --out`) and
//! planned against later without contacting any host.

use crate::fleet::{Fleet, Host};
use crate::host::backend;
use crate::host::lease;
use crate::host::libvirt::Libvirt;
use crate::host::libvirt::LibvirtError;
use crate::host::storage::StorageError;
use crate::host::{HostError, transport_for};
use crate::resources::identity;
use crate::resources::observed::{
    FORMAT_VERSION, HostObservation, HostState, Observation, ObservedDomain,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// How much to ask each host beyond what planning needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// What the planner needs: no guest addresses. Planning never uses
    /// them, and asking costs three calls per running machine, one of
    /// them to the guest agent (logged as an error on the host by every
    /// guest without an agent).
    Plan,
    /// Also each running machine's addresses (`status`, `observe`).
    Addresses,
}

/// Observes every host of `fleet` in parallel for planning; `now` is the
/// unix time to stamp.
pub fn observe(fleet: &Fleet, now: u64) -> Observation {
    observe_to(fleet, now, Depth::Plan)
}

/// How long observation waits for a host by default (see [`set_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

static TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Sets, once per process (`--observe-timeout`), how long observation
/// waits for one host before calling it unreachable.
pub fn set_timeout(timeout: Duration) {
    let _ = TIMEOUT.set(timeout);
}

/// Observes every host of `fleet` in parallel, to `depth`.
///
/// A host that has not answered within the observation timeout is
/// `Unreachable`, and the others are planned without it: a libvirtd that
/// accepts connections but never answers (hung, or stopped with SIGSTOP)
/// would otherwise hold the whole run for ever, since libvirt's connect
/// has no timeout of its own (keepalive starts only once connected). The
/// thread still waiting is left behind; it only reads.
pub fn observe_to(fleet: &Fleet, now: u64, depth: Depth) -> Observation {
    let timeout = *TIMEOUT.get().unwrap_or(&DEFAULT_TIMEOUT);
    let (tx, rx) = mpsc::channel();
    let mut hosts: BTreeMap<String, HostObservation> = BTreeMap::new();
    // One copy shared by the host threads: a thread left waiting on a
    // silent host may outlive this call, so it cannot borrow `fleet`.
    let shared = std::sync::Arc::new(fleet.clone());
    for h in fleet.hosts.values() {
        let (fleet, host, tx) = (shared.clone(), h.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("observe {}", h.name))
            .spawn(move || {
                let obs = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    observe_host(&fleet, &host, depth)
                }))
                .unwrap_or_else(|_| HostObservation::Unreachable {
                    error: "observation crashed".into(),
                });
                let _ = tx.send((host.name.to_string(), obs));
            });
        if let Err(e) = spawned {
            hosts.insert(
                h.name.to_string(),
                HostObservation::Unreachable {
                    error: format!("cannot start its observation: {e}"),
                },
            );
        }
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    while hosts.len() < fleet.hosts.len() {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok((name, obs)) => {
                hosts.insert(name, obs);
            }
            Err(_) => break,
        }
    }
    for h in fleet.hosts.values() {
        hosts.entry(h.name.to_string()).or_insert_with(|| {
            tracing::warn!(host = %h.name, "no answer within the observation timeout");
            HostObservation::Unreachable {
                error: format!(
                    "no answer within {} (--observe-timeout): is libvirtd (or sshd) on the host hung?",
                    humantime::format_duration(timeout)
                ),
            }
        });
    }
    Observation {
        format_version: FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        taken_at: now,
        hosts,
    }
}

/// Observes one host, to `depth`.
pub fn observe_host(fleet: &Fleet, host: &Host, depth: Depth) -> HostObservation {
    let _span = tracing::info_span!("observe", host = %host.name).entered();
    // Every disk of the fleet's machines needs its snapshot list, even under
    // a policy that keeps nothing: snapshots taken under an earlier policy
    // must still be seen to be pruned (ZFS lists them all anyway).
    let with_snapshots: BTreeSet<String> = fleet
        .machines_maybe_on(&host.name)
        .flat_map(|m| {
            m.disks()
                .into_iter()
                .map(|(d, _)| m.volume_name(&d))
                .collect::<Vec<_>>()
        })
        .collect();
    // A domain may be this fleet's when it is named like one of its machines
    // on this host (it may also be a foreign one in the way), or when it
    // carries the UUID this fleet would give a machine of that name on one
    // of its hosts (a machine since removed from the fleet, or moved to
    // another host entry). Only those are read in full; ownership is then
    // decided by the `<vf:owner>` marker in the definition, as always.
    let names: BTreeSet<&str> = fleet
        .machines_maybe_on(&host.name)
        .map(|m| m.name.as_str())
        .collect();
    let interest = |name: &str, uuid: &str| {
        names.contains(name)
            || identity::uuid(fleet.name.as_str(), name) == uuid
            || fleet
                .hosts
                .values()
                .any(|h| identity::legacy_uuid(fleet.name.as_str(), h.name.as_str(), name) == uuid)
    };
    match try_observe(fleet.name.as_str(), host, &with_snapshots, &interest, depth) {
        Ok(state) => HostObservation::Reachable(state),
        Err(error) => {
            tracing::info!(error = %error, "host unreachable");
            HostObservation::Unreachable {
                error: error.to_string(),
            }
        }
    }
}

/// Why a host could not be observed. Saved observations keep only the
/// text: an unreachable host is data for the plan, not a failure.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// libvirt could not be reached or answered with an error.
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    /// The host's storage cannot be reached (no transport).
    #[error(transparent)]
    Host(#[from] HostError),
    /// Listing the storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

fn try_observe(
    fleet: &str,
    host: &Host,
    with_snapshots: &BTreeSet<String>,
    interest: &dyn Fn(&str, &str) -> bool,
    depth: Depth,
) -> Result<HostState, ObserveError> {
    let lv = Libvirt::open(&host.uri)?;
    let domains: BTreeMap<String, ObservedDomain> = lv
        .domains_where(interest, depth == Depth::Addresses)?
        .into_iter()
        .map(|d| (d.config.name.clone(), d))
        .collect();
    // Sizes of attached disks come from libvirt (no process per disk).
    let attached: BTreeMap<String, u64> = domains
        .values()
        .flat_map(|d| {
            d.config.disks.iter().map(move |r| {
                (
                    r.path.clone(),
                    d.disk_sizes.get(&r.target).copied().unwrap_or(0),
                )
            })
        })
        .collect();
    let t = transport_for(host)?;
    let mut state = backend(host, t.as_ref()).observe(fleet, &attached, with_snapshots)?;
    state.domains = domains;
    // Liveness is known only here, at the edge: the planner then plans the
    // release of a lease whose run died.
    if let Some(l) = state.lease.as_deref_mut() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        l.stale = lease::is_stale(l, now, &lease::controller_name());
    }
    state.networks = Some(lv.networks()?);
    Ok(state)
}
