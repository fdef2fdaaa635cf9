//! Observation: what is really on each host, gathered in parallel.
//!
//! One thread per host opens that host's libvirt connection and storage,
//! lists every domain and every file under the storage root, and records
//! which of them carry this fleet's ownership marker. The cost per host is
//! a fixed number of libvirt calls plus one definition read per domain that
//! may be this fleet's: other domains are known by name, UUID and state
//! only, however many there are (see [`Libvirt::domains_where`]). A host that cannot be
//! reached becomes `Unreachable` with the reason; it never fails the run.
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

/// Observes every host of `fleet` in parallel; `now` is the unix time to stamp.
pub fn observe(fleet: &Fleet, now: u64) -> Observation {
    let hosts = std::thread::scope(|s| {
        let handles: Vec<_> = fleet
            .hosts
            .values()
            .map(|h| (h.name.to_string(), s.spawn(move || observe_host(fleet, h))))
            .collect();
        handles
            .into_iter()
            .map(|(name, handle)| {
                let obs = handle
                    .join()
                    .unwrap_or_else(|_| HostObservation::Unreachable {
                        error: "observation crashed".into(),
                    });
                (name, obs)
            })
            .collect()
    });
    Observation {
        format_version: FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        taken_at: now,
        hosts,
    }
}

/// Observes one host.
pub fn observe_host(fleet: &Fleet, host: &Host) -> HostObservation {
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
    match try_observe(fleet.name.as_str(), host, &with_snapshots, &interest) {
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
) -> Result<HostState, ObserveError> {
    let lv = Libvirt::open(&host.uri)?;
    let domains: BTreeMap<String, ObservedDomain> = lv
        .domains_where(interest)?
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
