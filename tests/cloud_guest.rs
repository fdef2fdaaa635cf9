//! A real cloud-init guest made by virtfleet, logged into over SSH.
//!
//! The guest image (Debian bookworm with cloud-init, built offline by
//! tests/cloud-guest/build and cached) is served on loopback HTTP, pinned
//! with `images lock` and applied under TCG to a libvirtd running in its own
//! network namespace (tests/libvirtd-instance with VIRTFLEET_NETNS=1), whose
//! NAT `default` network gives the guest its DHCP lease without touching
//! this machine's network. Witnesses are independent of virtfleet: `ssh`
//! run inside that namespace, and libvirt's own lease table.

mod common;

use common::Behaviour;
use common::lab::{Lab, virsh, virsh_ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A libvirtd in its own mount and network namespace, with its `default`
/// NAT network started; stopped on drop.
struct NetnsLibvirtd {
    dir: PathBuf,
    uri: String,
    pid: String,
}

impl NetnsLibvirtd {
    fn start(dir: &Path) -> NetnsLibvirtd {
        // A fresh daemon: a lease left by an earlier run (the MAC is
        // deterministic) must not pass for this guest's.
        let _ = Command::new(repo("tests/libvirtd-instance"))
            .arg("teardown")
            .arg(dir)
            .output();
        let _ = std::fs::remove_dir_all(dir);
        let out = Command::new(repo("tests/libvirtd-instance"))
            .args(["start"])
            .arg(dir)
            .env("VIRTFLEET_NETNS", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let uri = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let pid = std::fs::read_to_string(dir.join("runroot/libvirtd.pid"))
            .unwrap()
            .trim()
            .to_owned();
        // `virsh console` locks its pty under /run/lock, private here.
        let _ = std::fs::create_dir_all(dir.join("runroot/lock"));
        // Already active (a reused daemon) is fine.
        let _ = virsh(&uri, &["net-start", "default"]);
        NetnsLibvirtd {
            dir: dir.to_owned(),
            uri,
            pid,
        }
    }

    /// Runs `argv` inside the daemon's network namespace.
    fn run(&self, argv: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid, "-n", "--"])
            .args(argv)
            .output()
            .unwrap()
    }
}

impl Drop for NetnsLibvirtd {
    fn drop(&mut self) {
        let _ = Command::new(repo("tests/libvirtd-instance"))
            .arg("teardown")
            .arg(&self.dir)
            .output();
    }
}

/// ssh as `user@ip` with `key` inside the namespace; (exit code, stdout+stderr).
fn ssh(ns: &NetnsLibvirtd, key: &Path, user: &str, ip: &str, cmd: &str) -> (i32, String) {
    let target = format!("{user}@{ip}");
    let out = ns.run(&[
        "ssh",
        "-i",
        key.to_str().unwrap(),
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        &target,
        cmd,
    ]);
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The guest's address in libvirt's own lease table of `default`.
fn leased_ip(ns: &NetnsLibvirtd, mac: &str) -> Option<String> {
    let out = virsh_ok(&ns.uri, &["net-dhcp-leases", "default"]);
    out.lines()
        .find(|l| l.contains(mac))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.contains('/') && w.contains('.'))
        })
        .map(|a| a.split('/').next().unwrap().to_owned())
}

fn keygen(path: &Path) -> String {
    let _ = std::fs::remove_file(path);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vf-test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::read_to_string(path.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_cloud_init_guest_is_logged_into_and_its_key_replaced() {
    let built = Command::new(repo("tests/cloud-guest/build"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let image_dir = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    let mut lab = Lab::new("t-cg");
    lab.timeout = Duration::from_secs(600);
    let ns = NetnsLibvirtd::start(&lab.root.with_file_name("t-cg-libvirtd"));
    lab.add_uri(&ns.uri);
    lab.server.set(
        "/guest.qcow2",
        Behaviour::Ok(std::fs::read(image_dir.join("guest.qcow2")).unwrap()),
    );
    let keys = lab.fleet().with_file_name("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1, k2) = (keys.join("one"), keys.join("two"));
    let (pub1, pub2) = (keygen(&k1), keygen(&k2));
    let vm = lab.m("vm");
    let write = |key: &str| {
        let text = format!(
            "let V = {pkg}\nin V.Fleet::{{ name = \"{name}\"\n, hosts = [ V.Host::{{ name = \"ns\", uri = \"{uri}\", storage = V.Storage.Dir {{ path = \"{root}\" }}, domainType = V.DomainType.Qemu, cpuMode = V.CpuMode.Default }} ]\n, images = [ V.Image::{{ name = \"guest\", url = \"{url}\" }} ]\n, machines = [ V.Machine::{{ name = \"{vm}\", image = \"guest\", memoryMiB = 512, diskGiB = 4, cloudInit = Some V.CloudInit::{{ hostname = Some \"cg-host\", sshAuthorizedKeys = [ \"{key}\" ], userData = Some \"#cloud-config\\nwrite_files:\\n  - path: /etc/vf-proof\\n    content: made by virtfleet\\n\" }} }} ]\n}}\n",
            pkg = repo("dhall/package.dhall").display(),
            name = lab.name,
            uri = ns.uri,
            root = lab.root.display(),
            url = lab.server.url("/guest.qcow2"),
        );
        std::fs::write(lab.fleet(), text).unwrap();
    };
    write(&pub1);
    lab.vf(&["images", "lock"]).expect_code(0);
    let applied = Instant::now();
    lab.apply(&[]).expect_code(0);
    let xml = virsh_ok(&ns.uri, &["dumpxml", &vm]);
    let mac = xml
        .split("<mac address='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_owned();

    // Boot to SSH under TCG: 97-300 s here depending on load (more while
    // other builds share the machine).
    let deadline = applied + Duration::from_secs(600);
    let ip = loop {
        if let Some(ip) = leased_ip(&ns, &mac)
            && ssh(&ns, &k1, "debian", &ip, "true").0 == 0
        {
            break ip;
        }
        assert!(
            Instant::now() < deadline,
            "no SSH within 600 s (lease: {:?})",
            leased_ip(&ns, &mac)
        );
        std::thread::sleep(Duration::from_secs(5));
    };
    eprintln!("boot to SSH: {} s", applied.elapsed().as_secs());

    let (code, out) = ssh(&ns, &k1, "debian", &ip, "cloud-init status --wait");
    assert!(code == 0 && out.contains("done"), "{code} {out}");
    assert_eq!(ssh(&ns, &k1, "debian", &ip, "hostname").1.trim(), "cg-host");
    assert_eq!(
        ssh(&ns, &k1, "debian", &ip, "cat /etc/vf-proof").1.trim(),
        "made by virtfleet"
    );
    let (code, out) = ssh(&ns, &k1, "root", &ip, "true");
    assert_ne!(code, 0, "root must be refused: {out}");

    // status --json shows the leased address; `virtfleet ssh` uses it.
    let status = lab.vf(&["status", "--json"]).expect_code(0).stdout;
    assert!(status.contains(&format!("\"{ip}\"")), "{status}");
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &ns.pid, "-n", "--"])
        .arg(assert_cmd::cargo::cargo_bin("virtfleet"))
        .arg("-f")
        .arg(lab.fleet())
        .args(["ssh", &vm, "-i", k1.to_str().unwrap()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["--", "hostname"]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cg-host");
    // The remote command's exit status is virtfleet's.
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &ns.pid, "-n", "--"])
        .arg(assert_cmd::cargo::cargo_bin("virtfleet"))
        .arg("-f")
        .arg(lab.fleet())
        .args(["ssh", &vm, "-i", k1.to_str().unwrap()])
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["--", "exit", "7"]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(7));

    // Change the key: the plan shows the seed change (no user-data text),
    // apply restarts the guest, the new key works and the old one does not.
    write(&pub2);
    let plan = lab.vf(&["plan"]).expect_code(0);
    assert!(
        plan.stdout.contains(&format!("~ ns/{vm}/cidata"))
            && plan.stdout.contains("new instance-id"),
        "{}",
        plan.stdout
    );
    assert!(!plan.all().contains("made by virtfleet"), "{}", plan.all());
    let restarted = Instant::now();
    lab.vf(&[
        "apply",
        "--auto-approve",
        "--allow-restart",
        "--shutdown-timeout",
        "120s",
    ])
    .expect_code(0);
    let deadline = restarted + Duration::from_secs(600);
    loop {
        if let Some(ip) = leased_ip(&ns, &mac)
            && ssh(&ns, &k2, "debian", &ip, "cloud-init status --wait").0 == 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "new key refused for 600 s");
        std::thread::sleep(Duration::from_secs(5));
    }
    eprintln!(
        "restart to SSH with the new key: {} s",
        restarted.elapsed().as_secs()
    );
    let ip = leased_ip(&ns, &mac).unwrap();
    let (code, out) = ssh(&ns, &k1, "debian", &ip, "true");
    assert_ne!(code, 0, "the removed key must not log in: {out}");
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
}
