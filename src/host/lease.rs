//! Taking, renewing and releasing a host's lease.
//!
//! The lease itself is created atomically by the storage backend (a `mkdir`
//! on Dir hosts, a `zfs create` on ZFS hosts). Here is the policy around it:
//! a lease held by another live run is respected; one that expired, whose
//! holder process is gone from this very controller, or that the user
//! breaks explicitly (`--break-lock`) is removed first.

use super::storage::{StorageBackend, StorageError};
use crate::resources::observed::Lease;

/// Why a host's lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another run holds it.
    #[error(
        "host {host} is being changed by another run: {} on {} pid {} (`{}`, fleet {:?}) since {}, lease until {}; nothing was changed there",
        lease.user, lease.controller, lease.pid, lease.command, lease.fleet,
        crate::text::rfc3339(lease.since), crate::text::rfc3339(lease.expires)
    )]
    Held { host: String, lease: Box<Lease> },
    /// Reading or writing the lease failed.
    #[error("host {host}: lease: {source}")]
    Storage {
        host: String,
        #[source]
        source: StorageError,
    },
}

impl LeaseError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LeaseError::Held { .. } => Some(
                "wait for that run to finish; if it died, its lease lapses at the time shown, or `virtfleet apply --break-lock` breaks it now",
            ),
            LeaseError::Storage { .. } => None,
        }
    }
}

/// This machine's hostname, as leases name their controller.
pub fn controller_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// True when `lease` may be broken without asking: it lapsed, or its holder
/// ran on this controller and that process is gone (killed, crashed).
pub fn is_stale(lease: &Lease, now: u64, controller: &str) -> bool {
    let dead_here = lease.controller == controller
        && lease.pid != 0
        && !std::path::Path::new(&format!("/proc/{}", lease.pid)).exists();
    lease.expires <= now || dead_here
}

/// Takes `want` on `host`'s storage. A stale lease (see [`is_stale`]), or
/// any lease when `break_lock`, is removed first.
pub fn acquire(
    storage: &dyn StorageBackend,
    host: &str,
    want: &Lease,
    now: u64,
    break_lock: bool,
) -> Result<(), LeaseError> {
    let err = |source| LeaseError::Storage {
        host: host.into(),
        source,
    };
    // Two rounds: a lease broken here may be re-taken by a third run in
    // between; then that run holds the host and this one is refused.
    for _ in 0..2 {
        match storage.create_lease(want) {
            Ok(()) => return Ok(()),
            Err(StorageError::Exists(_)) => {}
            Err(e) => return Err(err(e)),
        }
        let Some(current) = storage.read_lease().map_err(err)? else {
            continue; // released meanwhile
        };
        if current.id == want.id {
            return Ok(());
        }
        if !(break_lock || is_stale(&current, now, &want.controller)) {
            return Err(LeaseError::Held {
                host: host.into(),
                lease: Box::new(current),
            });
        }
        tracing::warn!(host, holder = %current.id, "breaking the host's lease");
        storage.remove_lease(&current.id).map_err(err)?;
    }
    match storage.read_lease().map_err(err)? {
        Some(lease) => Err(LeaseError::Held {
            host: host.into(),
            lease: Box::new(lease),
        }),
        None => Err(err(StorageError::Exists(format!("{host}: lease")))),
    }
}

/// Extends a held lease to `expires`, if it is still `lease.id`'s.
pub fn renew(storage: &dyn StorageBackend, host: &str, lease: &Lease) -> Result<(), LeaseError> {
    let err = |source| LeaseError::Storage {
        host: host.into(),
        source,
    };
    match storage.read_lease().map_err(err)? {
        Some(current) if current.id == lease.id => storage.write_lease(lease).map_err(err),
        // Broken by someone (--break-lock): stop changing this host.
        Some(current) => Err(LeaseError::Held {
            host: host.into(),
            lease: Box::new(current),
        }),
        None => storage.create_lease(lease).map_err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(controller: &str, pid: u32, expires: u64) -> Lease {
        Lease {
            id: "x".into(),
            fleet: "lab".into(),
            controller: controller.into(),
            pid,
            user: "root".into(),
            command: "virtfleet apply".into(),
            since: 0,
            expires,
            stale: false,
        }
    }

    #[test]
    fn stale_when_lapsed_or_its_process_is_gone_from_this_controller() {
        let me = std::process::id();
        // (controller, pid, expires, now) → stale
        let table = [
            ("here", me, 100, 50, false),
            ("here", me, 100, 100, true),
            // A pid that cannot exist: the holder died on this controller.
            ("here", u32::MAX - 1, 100, 50, true),
            // The same pid on another controller says nothing about it.
            ("there", u32::MAX - 1, 100, 50, false),
        ];
        for (controller, pid, expires, now, stale) in table {
            assert_eq!(
                is_stale(&lease(controller, pid, expires), now, "here"),
                stale,
                "{controller} {pid} {expires} {now}"
            );
        }
    }
}
