//! Where a host is and where its disks live: libvirt URIs, SSH targets,
//! ZFS dataset names and storage directories.
//!
//! These strings reach libvirt, `ssh` argv and storage commands, so they are
//! parsed here by hand into their parts and every part is checked against a
//! small allowed alphabet: a value either has the shape virtfleet knows how
//! to use or it is refused at `check`, with what is wrong in words. Nothing
//! here does I/O. Each check returns the reason as a sentence fragment that
//! the caller prefixes with the host and the field.

/// The libvirt URI forms virtfleet can drive, for messages.
pub const SUPPORTED_URIS: &str = "qemu:///system or qemu:///session (this machine), \
qemu+unix:///system?socket=PATH, qemu+ssh://[user@]host[:port]/system (also qemu+libssh:// \
and qemu+libssh2://), and qemu+tls:// or qemu+tcp:// when sshTarget is set";

/// How virtfleet reaches a host whose URI passed [`check_uri`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// libvirt and the storage are on this machine.
    Local,
    /// libvirt over SSH; storage commands go over the same SSH target.
    Ssh,
    /// libvirt over TLS or TCP; storage commands need `sshTarget`.
    Network,
}

/// Query parameters libvirt documents for the transports above. `command`
/// and `netcat` are left out on purpose: they name programs to run remotely.
const QUERY_KEYS: &[&str] = &[
    "socket",
    "keyfile",
    "known_hosts",
    "known_hosts_verify",
    "no_verify",
    "no_tty",
    "sshauth",
    "mode",
    "pkipath",
    "proxy",
];

/// Checks a libvirt URI; returns how the host is reached.
pub fn check_uri(uri: &str) -> Result<Reach, String> {
    if let Some(bad) = uri.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "contains {bad:?}; a libvirt URI has no spaces or control characters"
        ));
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err("is not a URI (expected driver[+transport]://[user@]host[:port]/path)".into());
    };
    let (driver, transport) = match scheme.split_once('+') {
        Some((d, t)) => (d, Some(t)),
        None => (scheme, None),
    };
    if driver != "qemu" {
        return Err(format!(
            "uses the {driver:?} driver; virtfleet drives QEMU hosts only"
        ));
    }
    let (authority, path_query) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => return Err("has no path (e.g. /system)".into()),
    };
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_query, None),
    };
    let reach = match (transport, authority.is_empty()) {
        (None | Some("unix"), true) => Reach::Local,
        (Some("unix"), false) => {
            return Err("names a host, but qemu+unix:// is local (use qemu+ssh://)".into());
        }
        (Some("ssh" | "libssh" | "libssh2"), true) => {
            return Err("has no host after :// (e.g. qemu+ssh://root@hv1/system)".into());
        }
        (Some("ssh" | "libssh" | "libssh2"), false) => Reach::Ssh,
        (None | Some("tls" | "tcp"), false) => Reach::Network,
        (Some("tls" | "tcp"), true) => return Err("has no host after ://".into()),
        (Some(t), _) => return Err(format!("uses the {t:?} transport")),
    };
    if !authority.is_empty() {
        check_authority(authority)?;
    }
    if path != "/system" && path != "/session" {
        return Err(format!(
            "has the path {}; QEMU URIs end in /system or /session",
            crate::diag::clip(path)
        ));
    }
    if let Some(q) = query {
        check_query(q)?;
    }
    Ok(reach)
}

/// `[user@]host[:port]`, as in a URI authority or an `sshTarget`.
pub fn check_authority(s: &str) -> Result<(), String> {
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, s),
    };
    if let Some(u) = user {
        check_user(u)?;
    }
    let (host, port) = split_port(rest)?;
    check_host(host)?;
    if let Some(p) = port {
        check_port(p)?;
    }
    Ok(())
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
fn split_port(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = s.strip_prefix('[') {
        let Some((addr, after)) = inner.split_once(']') else {
            return Err(format!("has an unclosed '[' in {}", crate::diag::clip(s)));
        };
        return match after {
            "" => Ok((addr, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((addr, Some(p))),
                None => Err(format!(
                    "has {} after the IPv6 address",
                    crate::diag::clip(after)
                )),
            },
        };
    }
    Ok(match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    })
}

fn check_user(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && !u.starts_with('-')
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "has the user name {}; use letters, digits, '.', '_' and '-'",
            crate::diag::clip(u)
        ))
    }
}

fn check_host(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("has no host name".into());
    }
    if h.contains(':') {
        // Only an IPv6 literal (brackets already removed) has colons.
        return match h.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!(
                "has the host {} (not an IPv6 address)",
                crate::diag::clip(h)
            )),
        };
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if h.len() <= 253 && h.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "has the host {}; a host is a DNS name (letters, digits, '-', '.'), an IPv4 address or [IPv6]",
            crate::diag::clip(h)
        ))
    }
}

fn check_port(p: &str) -> Result<(), String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => Ok(()),
        _ => Err(format!(
            "has the port {} (a port is a number 1..65535)",
            crate::diag::clip(p)
        )),
    }
}

fn check_query(q: &str) -> Result<(), String> {
    for kv in q.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if !QUERY_KEYS.contains(&k) {
            return Err(format!(
                "has the parameter {}; virtfleet accepts {}",
                crate::diag::clip(k),
                QUERY_KEYS.join(", ")
            ));
        }
        // Values are paths or words; nothing a shell or ssh would interpret.
        if let Some(bad) = v
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "/._-~:,%+@".contains(*c)))
        {
            return Err(format!("has {bad:?} in the value of {k}"));
        }
    }
    Ok(())
}

/// Checks an `sshTarget`: `[user@]host[:port]`.
pub fn check_ssh_target(t: &str) -> Result<(), String> {
    if let Some(bad) = t.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("contains {bad:?}"));
    }
    check_authority(t)
}

/// Longest ZFS parent accepted, in bytes: ZFS names are at most 255 bytes,
/// and the parent must leave room for `/<machine>-<disk>@<snapshot>`.
pub const MAX_DATASET_PARENT: usize = 100;

/// Checks a ZFS dataset name by ZFS's own rules (zfsconcepts(7)): the pool
/// starts with a letter and is not a reserved word; each component is
/// non-empty, not `.` or `..`, and uses only letters, digits, `_ - : .`
/// (ZFS also allows spaces; virtfleet does not, so names stay shell-safe).
pub fn check_dataset(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') {
        return Err("must be a dataset path like tank/vms (no leading or trailing '/')".into());
    }
    if p.len() > MAX_DATASET_PARENT {
        return Err(format!(
            "is {} bytes long; at most {MAX_DATASET_PARENT} leave room for volume and snapshot names within ZFS's 255",
            p.len()
        ));
    }
    for comp in p.split('/') {
        if comp.is_empty() {
            return Err("has an empty component ('//')".into());
        }
        if comp == "." || comp == ".." {
            return Err(format!(
                "has a {comp:?} component; ZFS names have no relative parts"
            ));
        }
        if let Some(bad) = comp
            .chars()
            .find(|ch| !(ch.is_ascii_alphanumeric() || "-_.:".contains(*ch)))
        {
            return Err(format!(
                "has {bad:?} in {}; ZFS components use letters, digits, '-', '_', '.', ':'",
                crate::diag::clip(comp)
            ));
        }
    }
    let pool = p.split('/').next().unwrap_or_default();
    if !pool.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!(
            "has the pool name {pool:?}; a pool name starts with a letter"
        ));
    }
    let reserved_prefixes = ["mirror", "raidz", "draid", "spare"];
    if pool == "log"
        || reserved_prefixes.iter().any(|r| pool.starts_with(r))
        || (pool.len() > 1
            && pool.starts_with('c')
            && pool[1..2].chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("has the pool name {pool:?}, which ZFS reserves"));
    }
    Ok(())
}

/// Directories that belong to the system or are shared by many programs:
/// virtfleet's tree (its files, manifest and trash) must not be one of them.
const SHARED_DIRS: &[&str] = &[
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
    "/var/cache",
    "/var/lib",
    "/var/lib/libvirt",
    "/var/lib/libvirt/images",
    "/var/lib/libvirt/qemu",
    "/var/log",
    "/var/run",
    "/var/tmp",
    "/nix",
    "/nix/store",
];

/// Trees the system manages or the kernel provides: nothing of virtfleet's
/// belongs anywhere under them.
const SYSTEM_TREES: &[&str] = &[
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/nix/store",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/usr",
    "/var/run",
];

/// Checks a `Dir` storage path: absolute, normalised, printable, and a
/// directory of its own (not `/`, not a system or shared directory).
pub fn check_dir_path(path: &str) -> Result<(), String> {
    if let Some(bad) = path.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {bad:?}"));
    }
    if !path.starts_with('/') {
        return Err("must be an absolute path (start with '/')".into());
    }
    if (path.len() > 1 && path.ends_with('/')) || path.contains("//") {
        return Err("must be written without empty components ('//' or a trailing '/')".into());
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err("must not contain '.' or '..' components".into());
    }
    if SHARED_DIRS.contains(&path) {
        return Err(
            "is a system or shared directory; give virtfleet a directory of its own, e.g. /var/lib/virtfleet"
                .into(),
        );
    }
    if let Some(tree) = SYSTEM_TREES
        .iter()
        .find(|t| path.starts_with(&format!("{t}/")))
    {
        return Err(format!(
            "is inside {tree}, which the system manages; use e.g. /var/lib/virtfleet"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_by_transport() {
        for (uri, reach) in [
            ("qemu:///system", Reach::Local),
            ("qemu:///session", Reach::Local),
            (
                "qemu+unix:///system?socket=/run/x/libvirt-sock",
                Reach::Local,
            ),
            ("qemu+ssh://root@hv1/system", Reach::Ssh),
            (
                "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/k/id_ed25519",
                Reach::Ssh,
            ),
            ("qemu+libssh2://admin@[fe80::1]:22/system", Reach::Ssh),
            (
                "qemu+ssh://hv1.lan/system?known_hosts=/etc/k&no_verify=1",
                Reach::Ssh,
            ),
            ("qemu+tls://hv1.example.org/system", Reach::Network),
            ("qemu://hv1/system", Reach::Network),
        ] {
            assert_eq!(check_uri(uri), Ok(reach), "{uri}");
        }
    }

    #[test]
    fn refuses_malformed_and_unsupported_uris() {
        for (uri, why) in [
            ("qemu+ssh://root@:22x/system", "no host name"),
            ("qemu+ssh://root@hv1:22x/system", "port"),
            ("qemu+ssh://root@hv1:0/system", "port"),
            ("qemu+ssh://root@hv 1/system", "' '"),
            ("qemu+ssh://root@hv1;reboot/system", "host"),
            ("qemu+ssh://ro$(x)ot@hv1/system", "user name"),
            ("qemu+ssh://root@hv1/system?command=rm", "parameter"),
            ("qemu+ssh://root@hv1/system?keyfile=/k;rm", "';'"),
            ("gopher://hv1/system", "driver"),
            ("xen:///system", "driver"),
            ("qemu+ext:///system", "transport"),
            ("qemu+unix://hv1/system", "local"),
            ("qemu+ssh:///system", "no host"),
            ("qemu:///", "path"),
            ("qemu", "not a URI"),
            ("qemu:///system\n", "'\\n'"),
            ("qemu+ssh://[fe80::1/system", "unclosed"),
        ] {
            let e = check_uri(uri).expect_err(uri);
            assert!(e.contains(why), "{uri}: {e}");
        }
    }

    #[test]
    fn ssh_targets() {
        for ok in ["hv1", "root@hv1", "admin@10.0.0.5:22", "u@[::1]:2222"] {
            assert_eq!(check_ssh_target(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "root@hv1;reboot",
            "root@hv1:ssh",
            "-oProxyCommand=x",
            "@hv1",
            "a b",
            "h:99999",
        ] {
            assert!(check_ssh_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn datasets_by_zfs_rules() {
        for ok in ["tank", "tank/vms", "rpool/data/virt-fleet_1:a.b"] {
            assert_eq!(check_dataset(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("tank/../vms", "\"..\""),
            ("tank/./vms", "\".\""),
            ("tank//vms", "empty"),
            ("/tank", "leading"),
            ("tank/v ms", "' '"),
            ("tank/vms@snap", "'@'"),
            ("1tank/vms", "starts with a letter"),
            ("mirror/vms", "reserves"),
            ("c0d0/vms", "reserves"),
        ] {
            let e = check_dataset(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(check_dataset(&format!("tank/{}", "a".repeat(100))).is_err());
    }

    #[test]
    fn dir_paths_of_their_own() {
        for ok in [
            "/var/lib/virtfleet",
            "/srv/vf",
            "/tmp/x/vf",
            "/home/me/vms",
            "/var/lib/libvirt/images/vf",
        ] {
            assert_eq!(check_dir_path(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("/", "system or shared"),
            ("/var/lib", "system or shared"),
            ("/etc/vf", "inside /etc"),
            ("/proc/1", "inside /proc"),
            ("srv/vf", "absolute"),
            ("/srv/../etc", "'..'"),
            ("/srv/vf\n", "control character '\\n'"),
            ("/srv//vf", "empty components"),
        ] {
            let e = check_dir_path(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
