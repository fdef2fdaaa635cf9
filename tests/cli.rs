//! `virtfleet init`, `check`, `show` and the help texts, run as a user would.

mod common;

use common::{Behaviour, FleetDir, Outcome, TestServer, payload, snapshot, virtfleet};
use std::path::{Path, PathBuf};

/// A scratch directory with `mylab/` (not created) and a private cache.
struct Scratch {
    root: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            root: tempfile::tempdir().unwrap(),
        }
    }
    fn lab(&self) -> PathBuf {
        self.root.path().join("mylab")
    }
    /// The binary pointed at `mylab/fleet.dhall`, then `args`.
    fn cmd(&self, args: &[&str]) -> assert_cmd::Command {
        let mut cmd = virtfleet(
            &self.lab().join("fleet.dhall"),
            &self.root.path().join("cache"),
        );
        cmd.args(args);
        cmd
    }
    fn init(&self) -> Outcome {
        let lab = self.lab();
        Outcome::of(self.cmd(&["init"]).arg(&lab))
    }
}

fn repo_dhall_files() -> Vec<String> {
    common::dir_names(&Path::new(env!("CARGO_MANIFEST_DIR")).join("dhall"))
        .into_iter()
        .filter(|n| n.ends_with(".dhall"))
        .collect()
}

#[test]
fn init_scaffolds_fleet_lock_and_package() {
    let s = Scratch::new();
    let out = s.init().expect_code(0);
    assert!(
        out.stdout.contains("created fleet \"mylab\""),
        "{}",
        out.stdout
    );
    let lab = s.lab();
    let fleet = std::fs::read_to_string(lab.join("fleet.dhall")).unwrap();
    assert!(
        fleet.contains("./dhall/package.dhall") && fleet.contains("name = \"mylab\""),
        "{fleet}"
    );
    let lock = std::fs::read_to_string(lab.join("images.lock")).unwrap();
    assert!(lock.lines().any(|l| l == "format 1"), "{lock}");
    assert!(
        common::parse_lock(&lock).is_empty(),
        "an empty lock: {lock}"
    );

    // The package is a faithful copy of the repo's dhall/ directory.
    let files = repo_dhall_files();
    assert!(
        files.contains(&"package.dhall".to_owned()) && files.len() > 1,
        "{files:?}"
    );
    assert_eq!(
        common::dir_names(&lab.join("dhall")),
        files,
        "init copies every Dhall file of the package"
    );
    for f in &files {
        let repo =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("dhall").join(f)).unwrap();
        assert_eq!(
            std::fs::read(lab.join("dhall").join(f)).unwrap(),
            repo,
            "dhall/{f}"
        );
    }
    assert_eq!(
        common::dir_names(&lab),
        ["dhall", "fleet.dhall", "images.lock"],
        "no temporary files left"
    );
}

#[test]
fn init_refuses_to_overwrite() {
    let s = Scratch::new();
    s.init().expect_code(0);
    let lab = s.lab();
    std::fs::write(lab.join("fleet.dhall"), "-- my own work\n").unwrap();
    let before = snapshot(&lab);

    let out = s.init().expect_code(1);
    assert!(
        out.stderr.contains("refusing to overwrite"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("fleet.dhall") && out.stderr.contains("images.lock"),
        "names the files: {}",
        out.stderr
    );
    assert_eq!(
        snapshot(&lab),
        before,
        "every file byte-identical, nothing added"
    );
}

#[test]
fn init_writes_nothing_when_only_the_lock_exists() {
    let s = Scratch::new();
    let lab = s.lab();
    std::fs::create_dir(&lab).unwrap();
    std::fs::write(lab.join("images.lock"), "format 1\n").unwrap();

    let out = s.init().expect_code(1);
    assert!(
        out.stderr.contains("refusing to overwrite") && out.stderr.contains("images.lock"),
        "{}",
        out.stderr
    );
    assert_eq!(
        common::dir_names(&lab),
        ["images.lock"],
        "no fleet.dhall, no dhall/"
    );
    assert_eq!(
        std::fs::read(lab.join("images.lock")).unwrap(),
        b"format 1\n"
    );
}

#[test]
fn init_rejects_invalid_name() {
    let s = Scratch::new();
    let lab = s.lab();
    let out = Outcome::of(s.cmd(&["init", "--name", "Bad_Name"]).arg(&lab)).expect_code(1);
    assert!(out.stderr.contains("--name \"Bad_Name\""), "{}", out.stderr);
    assert!(!lab.exists());
}

#[test]
fn check_after_init_says_image_is_not_pinned() {
    let s = Scratch::new();
    s.init().expect_code(0);
    let out = Outcome::of(&mut s.cmd(&["check"])).expect_code(1);
    assert!(out.stderr.contains("image \"debian-12\""), "{}", out.stderr);
    assert!(out.stderr.contains("not pinned"), "{}", out.stderr);
    assert!(
        out.stderr.contains("virtfleet images lock"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn show_after_init_prints_tables() {
    let s = Scratch::new();
    s.init().expect_code(0);
    let out = Outcome::of(&mut s.cmd(&["show"])).expect_code(0);
    assert!(out.stdout.starts_with("fleet mylab"), "{}", out.stdout);
    let machine_header = out
        .stdout
        .lines()
        .position(|l| l.starts_with("MACHINE"))
        .expect("a machine table");
    let row = out
        .stdout
        .lines()
        .nth(machine_header + 1)
        .expect("a machine row");
    assert!(row.starts_with("web "), "{row}");
    for cell in ["local", "debian-12", "2048 MiB", "20 GiB"] {
        assert!(row.contains(cell), "{cell:?} in {row:?}");
    }
}

#[test]
fn show_json_after_init() {
    let s = Scratch::new();
    s.init().expect_code(0);
    let out = Outcome::of(&mut s.cmd(&["show", "--json"])).expect_code(0);
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(v["name"], "mylab");
    assert_eq!(v["machines"]["web"]["memoryMiB"], 2048);
    assert_eq!(v["machines"]["web"]["cpus"], 2);
    assert_eq!(v["machines"]["web"]["diskGiB"], 20);
    assert!(v["hosts"]["local"].is_object(), "{v}");
}

#[test]
fn check_ok_with_a_locked_fleet() {
    let server = TestServer::with([("/img0.qcow2", Behaviour::Ok(payload(4096, 1)))]);
    let fleet = FleetDir::new(&[("img0", &server.url("/img0.qcow2"))]);
    Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(0);

    let out = Outcome::of(&mut fleet.cmd(&["check"])).expect_code(0);
    assert!(out.stdout.starts_with("ok"), "{}", out.stdout);
    assert!(
        out.stdout.contains("1 host, 1 image, 1 machine"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.is_empty(), "no warnings: {}", out.stderr);

    // The URL changes in the fleet: the pin no longer matches.
    fleet.set_images(&[("img0", &server.url("/other.qcow2"))]);
    let out = Outcome::of(&mut fleet.cmd(&["check"])).expect_code(1);
    assert!(
        out.stderr.contains("image \"img0\"") && out.stderr.contains("virtfleet images lock"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_warns_about_unused_pins() {
    let server = TestServer::with([
        ("/a.qcow2", Behaviour::Ok(payload(100, 1))),
        ("/b.qcow2", Behaviour::Ok(payload(200, 2))),
    ]);
    let (a, b) = (server.url("/a.qcow2"), server.url("/b.qcow2"));
    let fleet = FleetDir::new(&[("alpha", &a), ("beta", &b)]);
    Outcome::of(&mut fleet.cmd(&["images", "lock"])).expect_code(0);
    fleet.set_images(&[("alpha", &a)]);
    let out = Outcome::of(&mut fleet.cmd(&["check"])).expect_code(0);
    assert!(
        out.stderr.contains("warning") && out.stderr.contains("\"beta\""),
        "{}",
        out.stderr
    );
}

#[test]
fn help_texts_have_examples() {
    let s = Scratch::new();
    for args in [
        &["images", "lock", "--help"][..],
        &["check", "--help"],
        &["init", "--help"],
        &["show", "--help"],
    ] {
        let out = Outcome::of(&mut s.cmd(args)).expect_code(0);
        assert!(out.stdout.contains("Example"), "{args:?}:\n{}", out.stdout);
    }
}

#[test]
fn check_reports_an_unreadable_lock_together_with_the_fleets_problems() {
    let fleet = FleetDir::new(&[("img0", "http://127.0.0.1:1/img0.qcow2")]);
    let text = std::fs::read_to_string(fleet.fleet())
        .unwrap()
        .replace("qemu:///system", "qemu+ssh://root@hv1;id/system");
    std::fs::write(fleet.fleet(), text).unwrap();
    // A directory where the lock should be: it cannot be read.
    std::fs::create_dir(fleet.lock()).unwrap();

    let out = Outcome::of(&mut fleet.cmd(&["check"])).expect_code(1);
    assert!(out.stderr.contains("2 problems found"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("host \"local\": uri \"qemu+ssh://root@hv1;id/system\""),
        "the fleet's problem: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("images.lock: cannot read"),
        "the lock's problem: {}",
        out.stderr
    );

    // Every other command stops too, naming both.
    let out = Outcome::of(&mut fleet.cmd(&["plan"])).expect_code(1);
    assert!(
        out.stderr.contains("uri") && out.stderr.contains("images.lock: cannot read"),
        "{}",
        out.stderr
    );

    // A device as the lock is refused, not read until memory runs out.
    let out = Outcome::of(&mut fleet.cmd(&["--lock", "/dev/zero", "check"])).expect_code(1);
    assert!(
        out.stderr
            .contains("/dev/zero: cannot read: not a regular file or pipe"),
        "{}",
        out.stderr
    );
}

#[test]
fn check_reads_a_fleet_from_a_pipe() {
    let fleet = FleetDir::new(&[]);
    let text = std::fs::read(fleet.fleet()).unwrap();
    let pipe = fleet.dir.path().join("piped.dhall");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap()
            .success()
    );
    let writer = {
        let pipe = pipe.clone();
        std::thread::spawn(move || std::fs::write(pipe, text))
    };
    let mut cmd = virtfleet(&pipe, &fleet.cache());
    // The default lock sits beside the fleet file, which a pipe does not have.
    cmd.arg("--lock").arg(fleet.lock()).arg("check");
    let out = Outcome::of(&mut cmd).expect_code(0);
    writer.join().unwrap().unwrap();
    assert!(out.stdout.contains("(fleet \"test\")"), "{}", out.stdout);
}

#[test]
fn evaluation_budget_comes_from_the_environment() {
    let fleet = FleetDir::new(&[]);
    let mut cmd = fleet.cmd(&["check"]);
    cmd.env("VIRTFLEET_EVAL_TIMEOUT", "1ns");
    let out = Outcome::of(&mut cmd).expect_code(1);
    assert!(
        out.stderr
            .contains("fleet.dhall: evaluation did not finish within 1ns"),
        "{}",
        out.stderr
    );

    let mut cmd = fleet.cmd(&["check"]);
    cmd.env("VIRTFLEET_EVAL_TIMEOUT", "soon");
    let out = Outcome::of(&mut cmd).expect_code(0);
    assert!(
        out.stderr
            .contains("VIRTFLEET_EVAL_TIMEOUT=\"soon\" is not a duration"),
        "{}",
        out.stderr
    );
    let help = Outcome::of(&mut fleet.cmd(&["check", "--help"])).expect_code(0);
    assert!(
        help.stdout.contains("VIRTFLEET_EVAL_TIMEOUT"),
        "{}",
        help.stdout
    );
}
