//! Validated identifiers.
//!
//! Every name that reaches a host (domain names, zvol and file names, ZFS
//! properties) passes through one of these newtypes, so nothing downstream
//! can be handed a name with a slash, a space or a shell metacharacter.
//! The rule is deliberately strict: `[a-z0-9][a-z0-9-]{0,62}`, which is a
//! valid DNS label, libvirt domain name, ZFS dataset component and file name.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The empty string.
    #[error("name is empty")]
    Empty,
    /// Longer than 63 bytes. Names are ASCII when valid, but a too-long
    /// name may not be, so the unit is bytes (what the limit counts) and
    /// the name itself is cut: a megabyte name must not flood the terminal.
    #[error("{} is {} bytes long; the limit is 63 bytes", crate::diag::clip(.0), .1)]
    TooLong(String, usize),
    /// Starts with a hyphen.
    #[error("{} must start with a lowercase letter or digit", crate::diag::clip(.0))]
    BadStart(String),
    /// Contains a character outside `[a-z0-9-]`.
    #[error("{} contains {:?}; names may only use a-z, 0-9 and '-'", crate::diag::clip(.0), .1)]
    BadChar(String, char),
}

/// Checks `s` against `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_name(s: &str) -> Result<(), NameError> {
    let first = s.chars().next().ok_or(NameError::Empty)?;
    if s.len() > 63 {
        return Err(NameError::TooLong(s.to_owned(), s.len()));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadStart(s.to_owned()));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        Some(c) => Err(NameError::BadChar(s.to_owned(), c)),
        None => Ok(()),
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $t:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $t(String);

        impl $t {
            /// Validates and wraps `s`.
            pub fn new(s: &str) -> Result<Self, NameError> {
                check_name(s).map(|()| Self(s.to_owned()))
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                check_name(&s).map(|()| Self(s))
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// The fleet's name: part of ownership markers and deterministic IDs.
    FleetName
);
name_type!(
    /// A hypervisor host's name.
    HostName
);
name_type!(
    /// A virtual machine's name (also its libvirt domain name).
    VmName
);
name_type!(
    /// A base image's name.
    ImageName
);
name_type!(
    /// A disk's name within its machine (`root` is the root disk).
    DiskName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web-1", "0", "a".repeat(63).as_str(), "db-eu-2"] {
            assert!(VmName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_a_shell_or_path_could_misread() {
        for bad in [
            "", "-a", "Web", "a b", "a/b", "a;rm", "a$b", "a.b", "a_b", "é", "a\n",
        ] {
            assert!(VmName::new(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            VmName::new(&"a".repeat(64)).unwrap_err(),
            NameError::TooLong("a".repeat(64), 64)
        );
        // 40 characters, 80 bytes: the limit counts bytes, and so does the message.
        let wide = "é".repeat(40);
        assert_eq!(
            VmName::new(&wide).unwrap_err().to_string(),
            format!("{wide:?} is 80 bytes long; the limit is 63 bytes")
        );
    }
}
