//! One host: its libvirt connection, its command transport, its storage
//! backend, and the domain XML virtfleet defines there.

pub mod dir;
pub mod domain;
pub mod identity;
pub mod libvirt;
pub mod transport;

use crate::spec::Host;
use transport::{Local, Transport};

/// The transport that reaches `host`'s storage: this machine for local
/// libvirt URIs (`qemu:///system`, `qemu+unix:///...`, `test:///...`).
pub fn transport_for(host: &Host) -> Result<Box<dyn Transport>, String> {
    if host.ssh_target.is_none() && is_local_uri(&host.uri) {
        return Ok(Box::new(Local));
    }
    Err(format!(
        "host {}: storage on a remote host ({}) needs the SSH transport, which this version does not have yet",
        host.name, host.uri
    ))
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
