//! Deterministic identity: a machine's UUID and MAC derive from
//! (fleet, machine), so a rebuilt machine keeps its identity and its DHCP
//! lease, a machine moved to another host keeps both, and two fleets never
//! collide.
//!
//! Before machines could move, the host's name went into the hash too
//! ([`legacy_uuid`]). A domain defined then keeps the identity it has: the
//! planner carries an observed domain's UUID and MAC over ([`Identity::of`])
//! instead of deriving new ones, so upgrading never redefines a domain,
//! and a move takes the identity along whichever way it was made.

use super::domain::{DomainSpec, Nic};
use sha2::{Digest, Sha256};

fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in std::iter::once("virtfleet").chain(parts.iter().copied()) {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().into()
}

fn uuid_of(mut b: [u8; 32]) -> String {
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(&b[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// RFC 9562 version 8 (custom) UUID from the hash of (fleet, machine).
pub fn uuid(fleet: &str, machine: &str) -> String {
    uuid_of(digest(&["uuid", fleet, machine]))
}

/// The UUID releases before placement gave a machine on `host`: observation
/// still recognises domains defined then.
pub fn legacy_uuid(fleet: &str, host: &str, machine: &str) -> String {
    uuid_of(digest(&["uuid", fleet, host, machine]))
}

/// A locally administered MAC in QEMU's 52:54:00 range.
pub fn mac(fleet: &str, machine: &str) -> String {
    let b = digest(&["mac", fleet, machine]);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// A machine's UUID and MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The domain's UUID.
    pub uuid: String,
    /// Its NIC's MAC.
    pub mac: String,
}

impl Identity {
    /// The identity a new machine gets.
    pub fn derive(fleet: &str, machine: &str) -> Identity {
        Identity {
            uuid: uuid(fleet, machine),
            mac: mac(fleet, machine),
        }
    }

    /// The identity an existing definition has (None without a NIC: the
    /// UUID alone is not worth keeping apart from its MAC).
    pub fn of(spec: &DomainSpec) -> Option<Identity> {
        let mac = match spec.nic.as_ref()? {
            Nic::Network { mac, .. } | Nic::Bridge { mac, .. } | Nic::User { mac } => mac,
        };
        Some(Identity {
            uuid: spec.uuid.clone(),
            mac: mac.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_distinct_and_well_formed() {
        let a = uuid("f", "web");
        assert_eq!(a, uuid("f", "web"));
        assert_ne!(a, uuid("f", "db"));
        assert_ne!(a, uuid("g", "web"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8");
        let m = mac("f", "web");
        assert!(m.starts_with("52:54:00:") && m.len() == 17);
        assert_ne!(m, mac("f", "db"));
    }

    #[test]
    fn the_host_is_not_part_of_a_new_identity_but_was_of_the_old_one() {
        assert_ne!(legacy_uuid("f", "h1", "web"), legacy_uuid("f", "h2", "web"));
        assert_ne!(legacy_uuid("f", "h1", "web"), uuid("f", "web"));
    }
}
