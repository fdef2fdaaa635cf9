//! Cloud-init seeds and networks on the real libvirtd (Dir storage), with
//! `virsh`, `mtools` (the kernel here cannot mount vfat) and the files on
//! disk as the independent witnesses. The guest is the tiny example image:
//! these tests check what virtfleet builds, stores and plans; the real
//! cloud-init guest logging in is `tests/cloud_guest.rs`.

mod common;

use common::lab::{Lab, SYSTEM, virsh, virsh_ok};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Must never appear in a plan, a log or a state file.
const MARKER: &str = "SECRET-TOKEN-7f3a91";

fn cloud_init(key: &str) -> String {
    format!(
        "cloudInit = Some V.CloudInit::{{ userData = Some \"#cloud-config\\nruncmd: [ [ echo, {MARKER} ] ]\\n\", sshAuthorizedKeys = [ \"{key}\" ], hostname = Some \"web-1\" }}"
    )
}

const KEY1: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyOneKeyOneKeyOneKeyOneKeyOneKeyOne0001 one@test";
const KEY2: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyTwoKeyTwoKeyTwoKeyTwoKeyTwoKeyTwo0002 two@test";

/// A file of the seed volume, read with mtools.
fn mtype(img: &Path, name: &str) -> String {
    let out = Command::new("mtype")
        .args(["-i"])
        .arg(img)
        .arg(format!("::{name}"))
        .output()
        .expect("mtype (apt install mtools)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Every file under `dir` that holds `needle`, except seed images (which
/// must hold the user-data: that is what they are for).
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return hits;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if p
            .file_name()
            .is_some_and(|n| n != "seed.img" && n != "fleet.dhall")
            && std::fs::read(&p)
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        {
            hits.push(p);
        }
    }
    hits
}

#[test]
fn seeds_are_built_stored_planned_replaced_trashed_and_restored() {
    let lab = Lab::new("t-seed");
    let web = lab.m("web");
    let scratch = lab.fleet().parent().unwrap().to_owned();
    lab.write(&[lab.machine("web", &cloud_init(KEY1))]);

    // The new machine's seed is a `+` step before the domain; no user-data
    // text in any rendering.
    let mut seen = String::new();
    for fmt in [
        &["plan"][..],
        &["plan", "--json"],
        &["plan", "--format", "markdown"],
    ] {
        let out = lab.vf(fmt);
        assert!(!out.all().contains(MARKER), "{fmt:?}: {}", out.all());
        seen.push_str(&out.stdout);
    }
    assert!(
        seen.contains(&format!("+ local/{web}/cidata")) && seen.contains("create cloud-init seed"),
        "{seen}"
    );
    let shown = lab
        .vf(&["plan", "--show-user-data", "--json"])
        .expect_code(0);
    assert!(
        shown.stdout.contains(MARKER),
        "--show-user-data shows it: {}",
        shown.stdout
    );

    let out = lab
        .vf_command(&["apply", "--auto-approve", "--shutdown-timeout", "1s"])
        .env("VIRTFLEET_LOG", "debug")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(MARKER), "apply log: {log}");

    // On the host: its own directory, owned, 0600, attached read-only, and
    // the hash in the domain's metadata is the file's.
    let dir = lab.root.join(format!("disks/{web}.cidata"));
    let img = dir.join("seed.img");
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let owner = std::fs::read_to_string(dir.join("owner.json")).unwrap();
    assert!(
        owner.contains("\"disk\":\"cidata\"") && owner.contains(&web),
        "{owner}"
    );
    let xml = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &web]);
    let sha1 = sha256(&img);
    assert!(xml.contains(&format!("seed=\"{sha1}\"")), "{xml}");
    let disk = xml
        .split("<disk ")
        .find(|d| d.contains("seed.img"))
        .expect("seed attached");
    assert!(
        disk.contains("<readonly/>") && disk.contains("bus='virtio'"),
        "{disk}"
    );
    assert!(xml.contains("org.qemu.guest_agent.0"), "{xml}");
    // What cloud-init reads: label CIDATA, meta-data and user-data.
    let label = Command::new("mlabel")
        .args(["-s", "-i"])
        .arg(&img)
        .arg("::")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&label.stdout).contains("CIDATA"));
    let meta = mtype(&img, "meta-data");
    assert!(
        meta.contains("local-hostname: \"web-1\"") && meta.contains(KEY1),
        "{meta}"
    );
    let id1 = meta.lines().next().unwrap().to_owned();
    assert!(mtype(&img, "user-data").contains(MARKER));
    // A running guest's checkpoint leaves the read-only seed out (it cannot
    // hold an internal snapshot, and never changes).
    let out = lab.vf(&["snapshot", &web, "--label", "seeded"]);
    assert_eq!(out.code, Some(0), "{}", out.all());
    // Converged: nothing left to do.
    let out = lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    assert!(out.stdout.contains("No changes"), "{}", out.all());

    // A changed key: the seed change is planned and explained (a new
    // instance-id, the restart that makes cloud-init read it), still
    // without the user-data text.
    lab.write(&[lab.machine("web", &cloud_init(KEY2))]);
    let out = lab.vf(&["plan"]).expect_code(0);
    assert!(!out.all().contains(MARKER), "{}", out.all());
    assert!(
        out.stdout.contains(&format!("~ local/{web}/cidata"))
            && out.stdout.contains("new instance-id")
            && out.stdout.contains("re-runs its per-instance modules")
            && out.stdout.contains("reinit")
            && out
                .stdout
                .contains("cloud-init seed; restart to take effect"),
        "{}",
        out.stdout
    );
    let json = lab.vf(&["plan", "--json"]).expect_code(0).stdout;
    assert!(
        json.contains("\"replaceSeed\"") && json.contains("userDataSha256"),
        "{json}"
    );
    // Applied with the restart that makes a running guest open the new seed.
    let out = lab
        .vf_command(&[
            "apply",
            "--auto-approve",
            "--shutdown-timeout",
            "1s",
            "--allow-restart",
        ])
        .env("VIRTFLEET_LOG", "debug")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(MARKER), "{log}");
    let sha2 = sha256(&img);
    assert_ne!(sha1, sha2);
    let meta2 = mtype(&img, "meta-data");
    assert!(meta2.contains(KEY2) && !meta2.contains(KEY1), "{meta2}");
    assert_ne!(
        meta2.lines().next().unwrap(),
        id1,
        "derived instance-id changes"
    );
    let xml = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &web]);
    assert!(xml.contains(&format!("seed=\"{sha2}\"")), "{xml}");
    // The old seed is in the trash, restorable.
    let trash = lab.entries("trash");
    assert!(
        trash
            .iter()
            .any(|e| e.starts_with(&format!("{web}.cidata@"))),
        "{trash:?}"
    );
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // Destroy: the seed goes to the trash with the disks; restore brings it back.
    lab.vf(&["destroy", &web, "--force", "--auto-approve"])
        .expect_code(0);
    assert!(!dir.exists());
    let out = lab.vf(&["restore", &web]).expect_code(0);
    assert!(
        out.stdout.contains(&format!("restored {web}.cidata")),
        "{}",
        out.all()
    );
    assert_eq!(sha256(&img), sha2, "the newest seed came back");
    lab.apply(&[]).expect_code(0);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // cloudInit removed: the seed is detached (restart) and trashed.
    lab.write(&[lab.machine("web", "")]);
    lab.apply(&["--allow-restart", "--allow-destroy"])
        .expect_code(0);
    assert!(!dir.exists());
    let xml = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &web]);
    assert!(!xml.contains("seed.img") && !xml.contains("seed="), "{xml}");
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);

    // No plan file, log or state file holds the user-data text.
    lab.write(&[lab.machine("web", &cloud_init(KEY1))]);
    let planfile = scratch.join("saved.plan");
    lab.vf(&["plan", "--out", planfile.to_str().unwrap()]);
    lab.vf(&[
        "observe",
        "--out",
        scratch.join("observed.json").to_str().unwrap(),
    ]);
    assert_eq!(files_containing(&scratch, MARKER), Vec::<PathBuf>::new());
    assert_eq!(files_containing(&lab.root, MARKER), Vec::<PathBuf>::new());
}

#[test]
fn a_missing_or_inactive_network_is_a_plan_error_naming_host_network_and_machine() {
    let lab = Lab::new("t-net");
    let off = format!("{}-off", lab.name);
    let _ = virsh(SYSTEM, &["net-destroy", &off]);
    let _ = virsh(SYSTEM, &["net-undefine", &off]);
    let xml = format!(
        "<network><name>{off}</name><bridge name='vfnet{}'/><ip address='10.213.7.1' netmask='255.255.255.0'/></network>",
        std::process::id() % 10000
    );
    let file = lab.fleet().with_file_name("net.xml");
    std::fs::write(&file, xml).unwrap();
    virsh_ok(SYSTEM, &["net-define", file.to_str().unwrap()]);

    for (net, expect) in [
        ("t-net-nope", "does not exist on host local"),
        (off.as_str(), "is not active"),
    ] {
        lab.write(&[lab.machine(
            "a",
            &format!("network = Some (V.Network.Libvirt \"{net}\")"),
        )]);
        let out = lab.vf(&["plan"]).expect_code(1);
        assert!(
            out.all().contains(&format!(
                "machine {}: libvirt network \"{net}\"",
                lab.m("a")
            )) && out.all().contains(expect),
            "{}",
            out.all()
        );
    }
    // The per-machine override is used, with the machine's deterministic MAC.
    lab.write(&[lab.machine("a", "network = Some V.Network.User")]);
    lab.apply(&[]).expect_code(0);
    let xml = virsh_ok(SYSTEM, &["dumpxml", "--inactive", &lab.m("a")]);
    assert!(xml.contains("<interface type='user'>"), "{xml}");
    let _ = virsh(SYSTEM, &["net-undefine", &off]);
}
