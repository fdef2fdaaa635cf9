//! The SSH transport: runs argv on a remote host with the system `ssh`.
//!
//! The system client is used on purpose: it honours the user's
//! `~/.ssh/config`, agent and known_hosts exactly like libvirt's own
//! `qemu+ssh://` transport does. Host keys are checked (BatchMode: never a
//! prompt, an unknown key is an error). One master connection per host is
//! reused (ControlMaster), so an observation does not pay a handshake per
//! command. `ssh` joins its arguments into one string for the remote shell,
//! so every argv element is quoted here: no name can reach a shell unquoted.

use super::transport::{ExecError, ExecResult, Output, Transport};
use crate::progress::Progress;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where to reach a host: `[user@]host[:port]` plus optional key and known_hosts files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// `-i`: from the libvirt URI's `keyfile=` parameter.
    pub keyfile: Option<String>,
    /// `UserKnownHostsFile`: from the libvirt URI's `known_hosts=` parameter.
    pub known_hosts: Option<String>,
}

impl SshTarget {
    /// Parses `user@host:port` (as in the fleet's `sshTarget`).
    pub fn parse(s: &str) -> Result<SshTarget, String> {
        // The same rule `check` applies to the fleet's sshTarget: one rule.
        crate::fleet::endpoints::check_ssh_target(s)
            .map_err(|e| format!("{s:?} is not a valid SSH target (user@host[:port]): {e}"))?;
        let (user, rest) = match s.split_once('@') {
            Some((u, r)) => (Some(u.to_owned()), r),
            None => (None, s),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
                h,
                Some(
                    p.parse::<u16>()
                        .map_err(|_| format!("{s:?}: port {p:?} is not a number"))?,
                ),
            ),
            _ => (rest, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty()
            || host.starts_with('-')
            || s.chars().any(char::is_whitespace)
            || user
                .as_deref()
                .is_some_and(|u| u.is_empty() || u.starts_with('-'))
        {
            return Err(format!(
                "{s:?} is not a valid SSH target (user@host[:port])"
            ));
        }
        Ok(SshTarget {
            user,
            host: host.to_owned(),
            port,
            keyfile: None,
            known_hosts: None,
        })
    }

    /// The SSH target of a `qemu+ssh://` or `qemu+libssh://` URI, with its
    /// `keyfile` and `known_hosts` parameters; None for other URIs.
    pub fn from_uri(uri: &str) -> Option<SshTarget> {
        let (scheme, rest) = uri.split_once("://")?;
        if !matches!(
            scheme.split_once('+').map(|(_, t)| t),
            Some("ssh" | "libssh" | "libssh2")
        ) {
            return None;
        }
        let (authority, query) = match rest.split_once('/') {
            Some((a, path)) => (a, path.split_once('?').map(|(_, q)| q).unwrap_or("")),
            None => (rest, ""),
        };
        let mut t = SshTarget::parse(authority).ok()?;
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("keyfile", v)) => t.keyfile = Some(v.to_owned()),
                Some(("known_hosts", v)) => t.known_hosts = Some(v.to_owned()),
                _ => {}
            }
        }
        Some(t)
    }
}

/// `uri` with `keyfile=KEY` added, when it is a `qemu+ssh://`-like URI
/// that names no key of its own (a key in the URI wins: it was chosen for
/// that host); None when nothing changes. `key` must have passed
/// [`check_keyfile`], so it needs no URI escaping.
pub fn with_keyfile(uri: &str, key: &Path) -> Option<String> {
    let target = SshTarget::from_uri(uri)?;
    if target.keyfile.is_some() {
        return None;
    }
    let key = key.to_str()?;
    let sep = if uri.contains('?') { '&' } else { '?' };
    Some(format!("{uri}{sep}keyfile={key}"))
}

/// Why `key` cannot be used as an SSH key file: not readable, or a name
/// that would need escaping inside a libvirt URI.
pub fn check_keyfile(key: &Path) -> Result<(), String> {
    let text = key.to_str().ok_or("the path is not UTF-8")?;
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/._-+@:,~".contains(*c)))
    {
        return Err(format!(
            "{c:?} cannot be put in a libvirt URI; use a path of letters, digits and / . _ - + @ : , ~"
        ));
    }
    std::fs::File::open(key).map_err(|e| format!("cannot read it: {e}"))?;
    Ok(())
}

/// Quotes one argument for a POSIX shell: safe words stay as they are,
/// anything else is single-quoted with embedded quotes escaped.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The remote command line for `argv`: each element quoted, joined by spaces.
pub fn remote_command(argv: &[&str]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most this many commands of one transport run at once: they share one
/// master connection, and sshd refuses sessions beyond its `MaxSessions`
/// (10 by default) on a connection. A host's steps run in parallel.
const MAX_SESSIONS: usize = 8;

/// A counting semaphore over [`MAX_SESSIONS`].
#[derive(Default)]
struct Sessions {
    open: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

/// One session slot, given back when dropped.
struct Slot<'a>(&'a Sessions);

impl Sessions {
    fn take(&self) -> Slot<'_> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        while *open >= MAX_SESSIONS {
            open = self.freed.wait(open).unwrap_or_else(|e| e.into_inner());
        }
        *open += 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|e| e.into_inner());
        *open -= 1;
        self.0.freed.notify_one();
    }
}

/// A host reached over SSH.
pub struct Ssh {
    target: SshTarget,
    /// Where master connections live; `None` when no safe private
    /// directory could be had (then every command connects afresh).
    control_dir: Option<PathBuf>,
    sessions: Sessions,
}

/// `dir` as a private directory of user `uid`: made 0700 if missing, and
/// used only if it is a real directory (not a symlink) owned by `uid` that
/// nobody else can enter. Anyone can pre-create a name in a shared /tmp;
/// a socket there would let them ride on our SSH sessions.
pub fn private_dir(dir: &std::path::Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create it: {e}")),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot read it: {e}"))?;
    if !m.file_type().is_dir() {
        return Err("it is not a directory".into());
    }
    if m.uid() != uid {
        return Err(format!("it belongs to uid {}, not {uid}", m.uid()));
    }
    if m.mode() & 0o077 != 0 {
        return Err(format!(
            "its mode is {:o}; others may enter it",
            m.mode() & 0o777
        ));
    }
    Ok(())
}

impl Ssh {
    /// A transport to `target`; master connections live in a private
    /// per-user directory.
    pub fn new(target: SshTarget) -> Ssh {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        // The user id keeps users apart when the fallback is a shared /tmp.
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(0);
        let dir = base.join(format!("virtfleet-ssh-{uid}"));
        let control_dir = match private_dir(&dir, uid) {
            Ok(()) => Some(dir),
            Err(why) => {
                tracing::warn!(
                    dir = %dir.display(),
                    why,
                    "not sharing SSH connections: the control directory is not private"
                );
                None
            }
        };
        Ssh {
            target,
            control_dir,
            sessions: Sessions::default(),
        }
    }

    /// The ssh arguments up to and including `--`.
    pub fn ssh_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=15",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        match &self.control_dir {
            Some(dir) => a.extend([
                "-o".into(),
                "ControlMaster=auto".into(),
                "-o".into(),
                "ControlPersist=60".into(),
                "-o".into(),
                format!("ControlPath={}/%C", dir.display()),
            ]),
            None => a.extend(["-o".into(), "ControlMaster=no".into()]),
        }
        if let Some(k) = &self.target.keyfile {
            a.extend([
                "-i".into(),
                k.clone(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        if let Some(k) = &self.target.known_hosts {
            a.extend(["-o".into(), format!("UserKnownHostsFile={k}")]);
        }
        if let Some(p) = self.target.port {
            a.extend(["-p".into(), p.to_string()]);
        }
        if let Some(u) = &self.target.user {
            a.extend(["-l".into(), u.clone()]);
        }
        a.push(self.target.host.clone());
        a.push("--".into());
        a
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.ssh_args())
            .arg(remote_command(argv))
            .env("LC_ALL", "C");
        c
    }

    fn describe(&self) -> String {
        format!(
            "ssh {}{}",
            self.target
                .user
                .as_deref()
                .map(|u| format!("{u}@"))
                .unwrap_or_default(),
            self.target.host
        )
    }

    /// Streams `input` into `argv`'s stdin on the host; returns the bytes sent.
    fn run_with_input(
        &self,
        argv: &[&str],
        input: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<u64, ExecError> {
        let shown = format!("{}: {}", self.describe(), argv.join(" "));
        let _slot = self.sessions.take();
        let mut child = self
            .command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                argv: shown.clone(),
                source,
            })?;
        let stdin = child.stdin.take().expect("piped stdin");
        super::transport::feed(&shown, child, stdin, input, progress)
    }
}

impl Transport for Ssh {
    fn spawn_reader(&self, argv: &[&str]) -> Result<std::process::Child, ExecError> {
        tracing::debug!(host = %self.describe(), argv = %argv.join(" "), "stream from over ssh");
        self.command(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                argv: format!("{}: {}", self.describe(), argv.join(" ")),
                source,
            })
    }

    fn run_with_stdin(
        &self,
        argv: &[&str],
        input: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<u64, ExecError> {
        self.run_with_input(argv, input, progress)
    }

    fn run(&self, argv: &[&str]) -> Result<Output, ExecError> {
        tracing::debug!(host = %self.describe(), argv = %argv.join(" "), "run over ssh");
        let _slot = self.sessions.take();
        let out = self
            .command(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ExecError::Spawn {
                argv: format!("{}: {}", self.describe(), argv.join(" ")),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // 255 is ssh's own failure (connection, authentication, host key).
        if out.status.code() == Some(255) {
            return Err(ExecError::Failed {
                argv: format!("{}: {}", self.describe(), argv.join(" ")),
                status: "ssh could not run the command".into(),
                stderr: stderr.trim().to_owned(),
            });
        }
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
        })
    }

    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), ExecError> {
        // The path and size only: never the content.
        tracing::debug!(host = %self.describe(), path, bytes = bytes.len(), "write file over ssh");
        let tmp = format!("{path}.virtfleet-tmp");
        self.run_with_input(
            &[
                "sh",
                "-c",
                "umask 077 && cat > \"$1\" && chmod 0600 \"$1\" && mv -f \"$1\" \"$2\"",
                "sh",
                &tmp,
                path,
            ],
            &mut &bytes[..],
            &crate::progress::NoProgress,
        )
        .map(|_| ())
    }

    fn put_file(&self, local: &Path, remote: &str, progress: &dyn Progress) -> ExecResult<()> {
        let mut f = std::fs::File::open(local).map_err(|source| ExecError::Io {
            path: local.display().to_string(),
            source,
        })?;
        self.run_with_input(
            &["sh", "-c", "cat > \"$1\"", "sh", remote],
            &mut f,
            progress,
        )
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service's key reaches SSH hosts, never overriding a key chosen
    /// in the URI, and never local ones.
    #[test]
    fn ssh_key_is_added_only_to_ssh_uris_without_one() {
        let k = Path::new("/run/credentials/virtfleet.service/ssh-key");
        assert_eq!(
            with_keyfile("qemu+ssh://root@hv1/system", k).as_deref(),
            Some("qemu+ssh://root@hv1/system?keyfile=/run/credentials/virtfleet.service/ssh-key")
        );
        assert_eq!(
            with_keyfile("qemu+libssh://hv2/system?known_hosts=/k/kh", k).as_deref(),
            Some(
                "qemu+libssh://hv2/system?known_hosts=/k/kh&keyfile=/run/credentials/virtfleet.service/ssh-key"
            )
        );
        assert_eq!(with_keyfile("qemu+ssh://hv3/system?keyfile=/mine", k), None);
        assert_eq!(with_keyfile("qemu:///system", k), None);
    }

    #[test]
    fn ssh_key_path_that_needs_escaping_is_refused() {
        let e = check_keyfile(Path::new("/tmp/my key")).unwrap_err();
        assert!(e.contains("' '"), "{e}");
        let e = check_keyfile(Path::new("/nonexistent/vf-key")).unwrap_err();
        assert!(e.contains("cannot read it"), "{e}");
    }

    /// Parallel steps never open more sessions than sshd allows on the
    /// shared master connection.
    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let peak = std::sync::Mutex::new((0usize, 0usize));
        std::thread::scope(|s| {
            for _ in 0..3 * MAX_SESSIONS {
                s.spawn(|| {
                    let _slot = sessions.take();
                    {
                        let mut p = peak.lock().unwrap();
                        p.0 += 1;
                        p.1 = p.1.max(p.0);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    peak.lock().unwrap().0 -= 1;
                });
            }
        });
        let (now, max) = *peak.lock().unwrap();
        assert_eq!(now, 0);
        assert!(max <= MAX_SESSIONS && max > 1, "peak {max}");
    }

    #[test]
    fn a_control_directory_someone_else_can_enter_is_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let uid = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path().join("fresh");
        assert_eq!(private_dir(&fresh, uid), Ok(()));
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            private_dir(&open, uid)
                .unwrap_err()
                .contains("others may enter")
        );
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(
            private_dir(&link, uid)
                .unwrap_err()
                .contains("not a directory")
        );
        assert!(
            private_dir(&fresh, uid + 1)
                .unwrap_err()
                .contains("belongs to uid")
        );
    }

    #[test]
    fn quoting_keeps_every_argument_one_word() {
        assert_eq!(shell_quote("tank/vms"), "tank/vms");
        assert_eq!(shell_quote("volsize=20G"), "volsize=20G");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("x; rm -rf /"), "'x; rm -rf /'");
        assert_eq!(shell_quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("`id`\n"), "'`id`\n'");
        assert_eq!(
            remote_command(&["zfs", "list", "-o", "name,virtfleet:fleet", "a;b"]),
            "zfs list -o name,virtfleet:fleet 'a;b'"
        );
    }

    #[test]
    fn quoted_arguments_survive_a_real_shell_unchanged() {
        // What the remote shell does with the command line, done by a local sh.
        let nasty = [
            "plain",
            "a b",
            "x; touch /tmp/virtfleet-pwned",
            "$(id)",
            "`id`",
            "it's",
            "\"q\"",
            "back\\slash",
            "*",
            "-n",
            "new\nline",
            "",
        ];
        let line = format!("printf '%s\\0' {}", remote_command(&nasty));
        let out = Command::new("sh").arg("-c").arg(&line).output().unwrap();
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .filter(|_| true)
            .map(str::to_owned)
            .collect();
        assert_eq!(&got[..nasty.len()], nasty.map(str::to_owned));
        assert!(!Path::new("/tmp/virtfleet-pwned").exists());
    }

    #[test]
    fn targets_from_uris_and_settings() {
        let t = SshTarget::from_uri(
            "qemu+ssh://root@hv1.lan:2222/system?keyfile=/k/id&known_hosts=/k/kh&no_tty=1",
        )
        .unwrap();
        assert_eq!(
            (t.user.as_deref(), t.host.as_str(), t.port),
            (Some("root"), "hv1.lan", Some(2222))
        );
        assert_eq!(
            (t.keyfile.as_deref(), t.known_hosts.as_deref()),
            (Some("/k/id"), Some("/k/kh"))
        );
        assert_eq!(
            SshTarget::from_uri("qemu+libssh://hv2/system")
                .unwrap()
                .host,
            "hv2"
        );
        assert!(SshTarget::from_uri("qemu:///system").is_none());
        assert_eq!(
            SshTarget::parse("admin@10.0.0.5:22").unwrap().port,
            Some(22)
        );
        assert!(SshTarget::parse("-oProxyCommand=x").is_err());
        assert!(SshTarget::parse("a b").is_err());
    }
}
