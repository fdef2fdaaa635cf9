//! One host's effects: its libvirt connection, its command transport and
//! its storage backend. The pure descriptions of what is defined there
//! (domain XML, identities, disk layout) are in [`crate::resources`].

pub mod convert;
pub mod dir;
pub mod lease;
pub mod libvirt;
pub mod qcow2;
pub mod seedstore;
pub mod ssh;
pub mod stats;
pub mod storage;
pub mod transport;
pub mod zfs;

use crate::fleet::{Host, Storage};
use dir::DirStorage;
use storage::StorageBackend;
use transport::{Local, Transport};
use zfs::ZfsStorage;

/// The storage backend for `host`, over `t`. It lives here, above the
/// backends and the trait they implement, so that the trait's module does
/// not depend on its implementations.
pub fn backend<'a>(host: &Host, t: &'a dyn Transport) -> Box<dyn StorageBackend + 'a> {
    match &host.storage {
        Storage::Dir { path } => Box::new(DirStorage::new(path, t)),
        Storage::Zfs { parent } => Box::new(ZfsStorage::new(parent, t)),
    }
}

/// The transport that reaches `host`'s storage: the fleet's `sshTarget`
/// when given, else SSH to the host of a `qemu+ssh://` URI, else this
/// machine for local libvirt URIs (`qemu:///system`, `qemu+unix:///...`).
pub fn transport_for(host: &Host) -> Result<Box<dyn Transport>, HostError> {
    if let Some(t) = &host.ssh_target {
        let mut target = ssh::SshTarget::parse(t).map_err(|message| HostError::SshTarget {
            host: host.name.to_string(),
            message,
        })?;
        // Key and known_hosts given in the URI apply to the override too.
        if let Some(from_uri) = ssh::SshTarget::from_uri(&host.uri) {
            target.keyfile = from_uri.keyfile;
            target.known_hosts = from_uri.known_hosts;
        }
        return Ok(Box::new(ssh::Ssh::new(target)));
    }
    if let Some(target) = ssh::SshTarget::from_uri(&host.uri) {
        return Ok(Box::new(ssh::Ssh::new(target)));
    }
    if is_local_uri(&host.uri) {
        return Ok(Box::new(Local));
    }
    Err(HostError::NoStorageTransport {
        host: host.name.to_string(),
        uri: host.uri.clone(),
    })
}

/// Why a host's storage cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The fleet's `sshTarget` for the host does not parse.
    #[error("host {host}: sshTarget {message}")]
    SshTarget { host: String, message: String },
    /// The URI is neither local nor SSH and no `sshTarget` says where the
    /// storage commands should run.
    #[error("host {host}: cannot reach the storage of {uri} (not local, not qemu+ssh)")]
    NoStorageTransport { host: String, uri: String },
}

impl HostError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            HostError::SshTarget { .. } => Some("write sshTarget as user@host or user@host:port"),
            HostError::NoStorageTransport { .. } => Some(
                "set the host's sshTarget (user@host[:port]) so virtfleet can run zfs/qemu-img there",
            ),
        }
    }
}

/// True for libvirt URIs without a remote hostname.
pub fn is_local_uri(uri: &str) -> bool {
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            let transport = scheme.split_once('+').map(|(_, t)| t);
            matches!(transport, None | Some("unix")) && rest.starts_with('/')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_uris() {
        for u in [
            "qemu:///system",
            "qemu:///session",
            "qemu+unix:///system?socket=/run/x",
            "test:///default",
        ] {
            assert!(super::is_local_uri(u), "{u}");
        }
        for u in [
            "qemu+ssh://root@hv1/system",
            "qemu://hv1/system",
            "qemu+tls://hv1/system",
        ] {
            assert!(!super::is_local_uri(u), "{u}");
        }
    }
}
