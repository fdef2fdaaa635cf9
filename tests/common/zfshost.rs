//! A real ZFS host for tests: the Debian guest with ZFS, libvirt and sshd
//! built by tests/zfs-host/build, booted under TCG by tests/zfs-host/boot.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A booted ZFS host guest (tests/zfs-host/boot), stopped on drop.
pub struct ZfsHost {
    /// Its run directory (key, known_hosts, port, overlays).
    pub run: PathBuf,
    /// The libvirt URI of the host (`qemu+ssh://`).
    pub uri: String,
    /// The same host through libvirt's libssh transport (`qemu+libssh://`,
    /// which reads keyfile= and known_hosts= itself).
    pub libssh_uri: String,
    /// The forwarded SSH port on 127.0.0.1.
    pub port: String,
}

impl ZfsHost {
    /// Boots one under /var/lib/virtfleet-tests/`dir`, or under
    /// `$VIRTFLEET_TEST_ZFS_RUN` when set (so two test runs, each with its own
    /// guest, never share one).
    pub fn boot(dir: &str) -> ZfsHost {
        ZfsHost::boot_at(Self::run_dir(dir))
    }

    /// The run directory [`ZfsHost::boot`] uses for `dir`.
    pub fn run_dir(dir: &str) -> PathBuf {
        std::env::var_os("VIRTFLEET_TEST_ZFS_RUN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/virtfleet-tests").join(dir))
    }

    /// Boots one under `run`.
    pub fn boot_at(run: PathBuf) -> ZfsHost {
        let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zfs-host/boot"))
            .arg("start")
            .arg(&run)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the ZFS host did not boot:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uri = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let port = std::fs::read_to_string(run.join("port"))
            .unwrap()
            .trim()
            .to_owned();
        let libssh_uri = format!(
            "qemu+libssh://root@127.0.0.1:{port}/system?keyfile={key}&known_hosts={kh}&known_hosts_verify=normal&sshauth=privkey",
            key = run.join("id_ed25519").display(),
            kh = run.join("known_hosts").display(),
        );
        ZfsHost {
            run,
            uri,
            libssh_uri,
            port,
        }
    }

    /// Runs a shell command inside the guest; returns (success, stdout+stderr).
    pub fn sh(&self, cmd: &str) -> (bool, String) {
        let out = Command::new("ssh")
            .args([
                "-i",
                self.run.join("id_ed25519").to_str().unwrap(),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
            ])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.run.join("known_hosts").display()
            ))
            .args(["-p", &self.port, "root@127.0.0.1", cmd])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn sh_ok(&self, cmd: &str) -> String {
        let (ok, out) = self.sh(cmd);
        assert!(ok, "in the ZFS host, `{cmd}` failed: {out}");
        out
    }

    /// `zfs get -Hp -o value PROP DS`.
    pub fn prop(&self, ds: &str, prop: &str) -> String {
        self.sh_ok(&format!("zfs get -Hp -o value {prop} {ds}"))
            .trim()
            .to_owned()
    }
}

impl Drop for ZfsHost {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zfs-host/boot"))
            .arg("stop")
            .arg(&self.run)
            .status();
    }
}
