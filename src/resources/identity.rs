//! Deterministic identity: a machine's UUID and MAC derive from
//! (fleet, host, machine), so a rebuilt machine keeps its identity and its
//! DHCP lease, and two fleets never collide.

use sha2::{Digest, Sha256};

fn digest(kind: &str, fleet: &str, host: &str, machine: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in ["virtfleet", kind, fleet, host, machine] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().into()
}

/// RFC 9562 version 8 (custom) UUID from the hash of (fleet, host, machine).
pub fn uuid(fleet: &str, host: &str, machine: &str) -> String {
    let mut b = digest("uuid", fleet, host, machine);
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

/// A locally administered MAC in QEMU's 52:54:00 range.
pub fn mac(fleet: &str, host: &str, machine: &str) -> String {
    let b = digest("mac", fleet, host, machine);
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_distinct_and_well_formed() {
        let a = uuid("f", "h", "web");
        assert_eq!(a, uuid("f", "h", "web"));
        assert_ne!(a, uuid("f", "h", "db"));
        assert_ne!(a, uuid("g", "h", "web"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8", "version 8");
        let m = mac("f", "h", "web");
        assert!(m.starts_with("52:54:00:") && m.len() == 17);
        assert_ne!(m, mac("f", "h", "db"));
    }
}
