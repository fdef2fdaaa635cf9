//! A lab on the real libvirtd for integration tests.
//!
//! Each test gets its own fleet (named after the test), its own storage
//! directory under /var/lib/virtfleet-tests, machine names prefixed with
//! the fleet name (domains share the daemon), the example image served by a
//! real HTTP server on 127.0.0.1, and the real `virtfleet` binary. Nothing
//! is faked: if libvirtd cannot be started the test fails loudly.

use super::{Behaviour, Outcome, TestServer, virtfleet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tempfile::TempDir;

/// The system libvirtd every lab uses.
pub const SYSTEM: &str = "qemu:///system";

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Starts the system libvirtd once per test binary (panics if it cannot).
pub fn ensure_libvirtd() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let out = Command::new(repo("scripts/libvirtd-start"))
            .output()
            .expect("run scripts/libvirtd-start");
        assert!(
            out.status.success(),
            "libvirtd could not be started: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The example image's bytes, built by scripts/example-image.
pub fn example_image() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(repo("scripts/example-image"))
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::read(dir.path().join("tiny.img")).unwrap()
    })
}

/// Runs virsh against `uri`; returns (success, stdout + stderr).
pub fn virsh(uri: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .arg("-c")
        .arg(uri)
        .args(args)
        .output()
        .expect("run virsh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// virsh that must succeed; returns stdout.
pub fn virsh_ok(uri: &str, args: &[&str]) -> String {
    let (ok, out) = virsh(uri, args);
    assert!(ok, "virsh {args:?} failed: {out}");
    out
}

/// Domains on `uri` whose name starts with `prefix`.
pub fn domains(uri: &str, prefix: &str) -> Vec<String> {
    let (_, out) = virsh(uri, &["list", "--all", "--name"]);
    let mut v: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// Removes every domain whose name starts with `prefix` on `uri`.
pub fn remove_domains(uri: &str, prefix: &str) {
    for d in domains(uri, prefix) {
        let _ = virsh(uri, &["destroy", &d]);
        // Snapshot metadata makes a plain undefine fail.
        let _ = virsh(uri, &["undefine", "--nvram", "--snapshots-metadata", &d]);
        let _ = virsh(uri, &["undefine", &d]);
    }
}

/// One test's fleet, storage and helpers.
pub struct Lab {
    /// Fleet name; also the prefix of every machine name.
    pub name: String,
    /// Storage root of the first host.
    pub root: PathBuf,
    /// Serves /tiny.img.
    pub server: TestServer,
    scratch: TempDir,
    uris: Vec<String>,
    /// Longest any one virtfleet command may take.
    pub timeout: std::time::Duration,
}

impl Lab {
    /// A fresh lab named `name` (short, `[a-z0-9-]`), on the system libvirtd.
    pub fn new(name: &str) -> Lab {
        ensure_libvirtd();
        let server = TestServer::with([("/tiny.img", Behaviour::Ok(example_image().to_vec()))]);
        let root = PathBuf::from("/var/lib/virtfleet-tests").join(name);
        std::fs::create_dir_all("/var/lib/virtfleet-tests").unwrap();
        let lab = Lab {
            name: name.into(),
            root,
            server,
            scratch: tempfile::tempdir().unwrap(),
            uris: vec![SYSTEM.into()],
            timeout: std::time::Duration::from_secs(240),
        };
        lab.clean();
        std::fs::create_dir_all(&lab.root).unwrap();
        // QEMU runs as libvirt-qemu and must traverse to the disks.
        std::process::Command::new("chmod")
            .args(["0755", "/var/lib/virtfleet-tests"])
            .status()
            .unwrap();
        std::fs::create_dir_all(lab.scratch.path().join("cache")).unwrap();
        lab
    }

    /// Also clean up domains of this lab on `uri` (a second host).
    pub fn add_uri(&mut self, uri: &str) {
        remove_domains(uri, &format!("{}-", self.name));
        self.uris.push(uri.into());
    }

    /// Back to nothing: this lab's domains and storage removed (the
    /// controller's cache and state directory are kept).
    pub fn reset(&self) {
        self.clean();
        std::fs::create_dir_all(&self.root).unwrap();
    }

    fn clean(&self) {
        for uri in &self.uris {
            remove_domains(uri, &format!("{}-", self.name));
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }

    /// Full machine name for the short `m`.
    pub fn m(&self, m: &str) -> String {
        format!("{}-{m}", self.name)
    }

    /// Path of the fleet file.
    pub fn fleet(&self) -> PathBuf {
        self.scratch.path().join("fleet.dhall")
    }

    /// Dhall for a Dir host named `name` on `uri` with storage `root`.
    pub fn host(&self, name: &str, uri: &str, root: &Path) -> String {
        format!(
            "V.Host::{{ name = \"{name}\", uri = \"{uri}\", storage = V.Storage.Dir {{ path = \"{}\" }}, domainType = V.DomainType.Qemu, cpuMode = V.CpuMode.Default, network = V.Network.User }}",
            root.display()
        )
    }

    /// Writes fleet.dhall with one host (the system libvirtd) and `machines`,
    /// a list of `V.Machine::{ ... }` Dhall texts; pins the image on first use.
    pub fn write(&self, machines: &[String]) {
        let host = self.host("local", SYSTEM, &self.root);
        self.write_hosts(&[host], machines, "");
    }

    /// Writes fleet.dhall with the given hosts, machines and extra settings.
    pub fn write_hosts(&self, hosts: &[String], machines: &[String], settings: &str) {
        let text = format!(
            "let V = {pkg}\nin V.Fleet::{{ name = \"{name}\", settings = V.Settings::{{ trashRetentionDays = 1 {settings} }}\n, hosts = [ {hosts} ]\n, images = [ V.Image::{{ name = \"tiny\", url = \"{url}\", format = V.ImageFormat.Raw }} ]\n, machines = [ {machines} ] : List V.Machine.Type\n}}\n",
            pkg = repo("dhall/package.dhall").display(),
            name = self.name,
            hosts = hosts.join("\n  , "),
            url = self.server.url("/tiny.img"),
            machines = machines.join("\n  , "),
        );
        std::fs::write(self.fleet(), text).unwrap();
        if !self.scratch.path().join("images.lock").exists() {
            self.vf(&["images", "lock"]).expect_code(0);
        }
    }

    /// `V.Machine::{ name = "<lab>-<m>", image = "tiny", memoryMiB = 128, diskGiB = 1, <extra> }`.
    /// `extra` fields override the defaults (memoryMiB = 128, diskGiB = 1).
    pub fn machine(&self, m: &str, extra: &str) -> String {
        let mut fields = vec![
            format!("name = \"{}\"", self.m(m)),
            "image = \"tiny\"".to_owned(),
        ];
        for (k, v) in [("memoryMiB", "128"), ("diskGiB", "1")] {
            if !extra.contains(k) {
                fields.push(format!("{k} = {v}"));
            }
        }
        if !extra.is_empty() {
            fields.push(extra.to_owned());
        }
        format!("V.Machine::{{ {} }}", fields.join(", "))
    }

    /// Runs virtfleet with this lab's fleet and cache.
    pub fn vf(&self, args: &[&str]) -> Outcome {
        let mut cmd = virtfleet(&self.fleet(), &self.scratch.path().join("cache"));
        cmd.args(args).timeout(self.timeout);
        let out = Outcome::of(&mut cmd);
        // assert_cmd kills a command at the timeout and reports no exit code.
        assert!(
            out.code.is_some(),
            "`virtfleet {}` was killed after {:?} (no exit code)\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            self.timeout,
            out.stdout,
            out.stderr
        );
        out
    }

    /// A command line for virtfleet (for tests that need the child process),
    /// with the same home (and so the same state directory) as [`Lab::vf`].
    pub fn vf_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("virtfleet"));
        let home = self.scratch.path().join("home");
        cmd.env("NO_COLOR", "1")
            .env("HOME", &home)
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env_remove("XDG_STATE_HOME")
            .env_remove("VIRTFLEET_STATE_DIR")
            .arg("--cache-dir")
            .arg(self.scratch.path().join("cache"))
            .arg("-f")
            .arg(self.fleet())
            .args(args);
        cmd
    }

    /// `apply --auto-approve` with a short shutdown grace (the example
    /// guest halts its CPU and never answers ACPI) plus `extra` flags.
    pub fn apply(&self, extra: &[&str]) -> Outcome {
        let mut args = vec!["apply", "--auto-approve", "--shutdown-timeout", "1s"];
        args.extend_from_slice(extra);
        self.vf(&args)
    }

    /// The image cache this lab's commands use.
    pub fn cache_dir(&self) -> PathBuf {
        self.scratch.path().join("cache")
    }

    /// Entries under the storage root's `sub` directory.
    pub fn entries(&self, sub: &str) -> Vec<String> {
        super::dir_names(&self.root.join(sub))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Through `qemu-io`, `write`s 4 KiB of `pattern` at 512 MiB of a qcow2
/// file, or `read`s and verifies them; true when it succeeded.
pub fn qemu_io(file: &Path, op: &str, pattern: u8) -> bool {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", &format!("{op} -P {pattern} 512M 4k")])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success() && !text.contains("failed")
}

/// The snapshot name in `virtfleet snapshot`'s result line, which follows
/// the command's plan: `snapshot NAME of MACHINE`.
pub fn taken_snapshot(out: &Outcome) -> String {
    out.stdout
        .lines()
        .find(|l| l.starts_with("snapshot "))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no snapshot line in {}", out.all()))
        .to_owned()
}

/// A second, independent libvirtd (tests/libvirtd-instance) under a
/// directory of its own: another host. Stopped (the daemon only) on drop.
pub struct Instance(String);

impl Instance {
    /// Starts it (or finds it running) under `dir`; returns it and its URI.
    pub fn start(dir: &str) -> (Instance, String) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvirtd-instance");
        let out = Command::new(&script).args(["start", dir]).output().unwrap();
        assert!(
            out.status.success(),
            "second libvirtd did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            Instance(dir.into()),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    }
    /// Stops the daemon; its guests keep running.
    pub fn stop(&self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/libvirtd-instance");
        assert!(
            Command::new(script)
                .args(["stop", &self.0])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
    }
}
