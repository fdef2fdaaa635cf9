//! The leases one run holds, shared by its threads.
//!
//! A run takes each host's lease once, however many of its threads need
//! the host: the host's own thread for its steps, and the move steps of
//! other hosts' threads that reach it as their source. The first to need
//! a host takes the lease on the host; the last to be done with it
//! releases it. So a move never waits for its own run's lease (no two
//! threads of one run can deadlock over leases), and a host's thread
//! finishing early never leaves a move running there unleased.

use super::{LEASE_TTL, Settings, unix_now};
use crate::fleet::Fleet;
use crate::host::lease::{self, LeaseError};
use crate::host::storage::StorageBackend;
use crate::resources::observed::Lease;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The leases of one run, by host, with how many users each has.
#[derive(Default)]
pub struct Leases {
    held: Mutex<BTreeMap<String, (Lease, usize)>>,
}

impl Leases {
    /// The run's lease on `host`, taken on its storage if this run does
    /// not hold it yet. Pair every success with [`Self::release`].
    pub fn take(
        &self,
        fleet: &Fleet,
        settings: Settings,
        host: &str,
        storage: &dyn StorageBackend,
    ) -> Result<Lease, LeaseError> {
        // Held while taking: two threads never race for the same host.
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((l, users)) = held.get_mut(host) {
            *users += 1;
            return Ok(l.clone());
        }
        let want = lease_for(fleet, settings, host);
        lease::acquire(storage, host, &want, unix_now(), settings.break_lock)?;
        held.insert(host.to_owned(), (want.clone(), 1));
        Ok(want)
    }

    /// One user of `host`'s lease is done; the last one removes it.
    pub fn release(&self, host: &str, storage: &dyn StorageBackend) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some((l, users)) = held.get_mut(host) else {
            return;
        };
        *users -= 1;
        if *users > 0 {
            return;
        }
        // Released even after a failure: what is left is planned again by
        // the next run, which needs the host.
        if let Err(e) = storage.remove_lease(&l.id) {
            tracing::warn!(host, error = %e, "could not release the host's lease");
        }
        held.remove(host);
    }
}

/// The lease a run of this process takes on host `name`.
fn lease_for(fleet: &Fleet, settings: Settings, name: &str) -> Lease {
    let me = super::runlock::Holder::me(settings.now);
    let controller = lease::controller_name();
    let now = unix_now();
    Lease {
        id: format!("{controller}-{}-{now}-{name}", me.pid),
        fleet: fleet.name.to_string(),
        controller,
        pid: me.pid,
        user: me.user,
        command: me.command,
        since: now,
        expires: now + LEASE_TTL,
        stale: false,
    }
}
