//! Why a step failed, typed where the failure is made, each with the host,
//! machine, image or path it concerns and, for known failures, a hint.

use crate::host::HostError;
use crate::host::lease::LeaseError;
use crate::host::libvirt::LibvirtError;
use crate::host::storage::StorageError;
use crate::host::transport::ExecError;
use crate::lock::fetch::FetchError;
use std::path::PathBuf;
use std::time::Duration;

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A libvirt call failed (the error names the URI and the domain).
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    /// A storage operation failed (the error names the path or command).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A command on the host failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// The host's lease is held by another run (or could not be handled).
    /// Boxed: the lease it names is large, and steps return this type.
    #[error(transparent)]
    Lease(Box<LeaseError>),
    /// The plan names a host the fleet no longer has.
    #[error("host {host} is not in the fleet any more")]
    HostNotInFleet {
        /// The host.
        host: String,
    },
    /// The host's storage cannot be reached.
    #[error(transparent)]
    NoTransport(#[from] HostError),
    /// A machine action without a machine: a hand-edited or corrupt plan.
    #[error("{address}: change has no machine")]
    NoMachine {
        /// The change's address.
        address: String,
    },
    /// The machine's cloud-init seed is not the one the plan was made for.
    #[error(
        "machine {machine}: its cloud-init seed is {actual} in fleet.dhall now, not the planned {planned}; nothing was written (plan again)"
    )]
    SeedChanged {
        /// The machine.
        machine: String,
        /// sha256 the plan wants.
        planned: String,
        /// sha256 the fleet gives now (`none` without cloudInit).
        actual: String,
    },
    /// The image the plan wants is not pinned (so) any more.
    #[error("image {image} with sha256 {sha256} is not in images.lock any more")]
    ImageNotPinned {
        /// The image.
        image: String,
        /// The digest the plan wants.
        sha256: String,
    },
    /// The controller's cached copy could not be read to verify it.
    #[error("{}: cannot verify the cached image: {source}", path.display())]
    CacheRead {
        /// The cached file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Downloading the image into the controller's cache failed.
    #[error("image {image}: {source}")]
    Download {
        /// The image.
        image: String,
        /// Why (names the URL).
        #[source]
        source: FetchError,
    },
    /// A snapshot of a running guest that only exists in its disk files.
    #[error(
        "snapshot {snapshot} of running {machine} is not known to libvirt; stop the guest to prune it"
    )]
    SnapshotNotInLibvirt {
        /// The machine.
        machine: String,
        /// The snapshot.
        snapshot: String,
    },
    /// The guest ignored the ACPI shutdown and powering off was not allowed.
    #[error(
        "{machine} did not shut down within {}; pass --force to power it off",
        humantime::format_duration(*waited)
    )]
    ShutdownTimeout {
        /// The machine.
        machine: String,
        /// How long it was given.
        waited: Duration,
    },
    /// The object a step would move or delete is not this fleet's (any
    /// more): checked on the host right before the change, whatever the
    /// plan says.
    #[error("{what} is not owned by fleet {fleet:?} ({owner}); nothing was changed")]
    NotOwned {
        /// The object (path or domain).
        what: String,
        /// This fleet.
        fleet: String,
        /// Who owns it, as far as the host tells.
        owner: String,
    },
    /// A destructive or restarting change without the permission it needs
    /// (a hand-edited plan, or a caller that did not ask).
    #[error("{address}: {what} is {class} and was not permitted; nothing was changed")]
    NotPermitted {
        /// The change's address.
        address: String,
        /// What it does.
        what: String,
        /// Its disruption class.
        class: String,
    },
    /// A move cannot be done between these hosts (yet).
    #[error("machine {machine}: cannot move {why}; nothing was changed")]
    MoveUnsupported {
        /// The machine.
        machine: String,
        /// Why.
        why: String,
    },
    /// A move failed before the machine was taken in here.
    #[error(
        "machine {machine}: the move from {from} failed, the machine is still on {from}, {state}: {source}"
    )]
    MoveFailed {
        /// The machine.
        machine: String,
        /// The host it stays on.
        from: String,
        /// Running again, or stopped.
        state: &'static str,
        /// What failed.
        #[source]
        source: Box<StepError>,
    },
    /// A disk was to be rolled back while its guest runs.
    #[error("{machine} is running; {volume} is only rolled back while no guest uses it")]
    GuestRunning {
        /// The machine.
        machine: String,
        /// The volume.
        volume: String,
    },
}

impl From<LeaseError> for StepError {
    fn from(e: LeaseError) -> Self {
        StepError::Lease(Box::new(e))
    }
}

impl StepError {
    /// What the user can do about it, for failures with a known remedy.
    pub fn hint(&self) -> Option<String> {
        match self {
            StepError::HostNotInFleet { .. } | StepError::ImageNotPinned { .. } => {
                Some("the fleet or the lock changed since the plan was made: run `virtfleet plan` again".into())
            }
            StepError::NoTransport(e) => e.hint().map(str::to_owned),
            StepError::Lease(e) => e.hint().map(str::to_owned),
            StepError::Storage(e) => e.hint().map(str::to_owned),
            StepError::Exec(e) => e.hint().map(str::to_owned),
            StepError::Download {
                source: FetchError::Connect { .. },
                ..
            } => Some(
                "is the server up and reachable from this machine? The lockfile and cache were left as they were".into(),
            ),
            StepError::Libvirt(e) => e.hint().map(str::to_owned),
            StepError::ShutdownTimeout { .. } => Some(
                "the guest may not listen to ACPI; --force powers it off (like pulling the plug) after the timeout".into(),
            ),
            StepError::NotOwned { .. } => Some(
                "virtfleet never changes what it does not own; plan again to see the host as it is now".into(),
            ),
            StepError::NotPermitted { .. } => Some(
                "pass --allow-destroy or --allow-restart as the plan says, or plan again".into(),
            ),
            StepError::SnapshotNotInLibvirt { .. } => {
                Some("stop the guest, then apply again".into())
            }
            _ => None,
        }
    }
}
