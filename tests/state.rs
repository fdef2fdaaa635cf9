//! The state file and the evaluation cache, on real components: real
//! SQLite files in the state directory, the real virtfleet binary, and
//! (for runs) the real libvirtd through a [`Lab`].
//!
//! What a user relies on: a crash mid-apply is recorded honestly and named
//! by the next plan, which finishes it; the history shows both runs;
//! concurrent commands never see "database is locked"; a corrupt or
//! foreign file at the state path is refused by name and left alone; an
//! older schema migrates forward with its rows; deleting the state file
//! loses history, never convergence; and a cached evaluation never
//! outlives a change to any file it read.

mod common;

use common::lab::{Lab, SYSTEM, domains};
use common::{Outcome, virtfleet};
use std::path::{Path, PathBuf};

fn json(out: &Outcome) -> serde_json::Value {
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", out.stdout, out.stderr))
}

/// The lab's state directory (its HOME's default).
fn state_dir(lab: &Lab) -> PathBuf {
    lab.fleet()
        .parent()
        .unwrap()
        .join("home/.local/state/virtfleet")
}

#[test]
fn a_crash_mid_apply_is_recorded_named_by_the_next_plan_and_finished() {
    let lab = Lab::new("vfst-crash");
    let ms: Vec<String> = ["a", "b", "c"].iter().map(|m| lab.machine(m, "")).collect();
    lab.write(&ms);

    // Killed inside the second disk creation: after that step is recorded
    // as started, before it is recorded as finished.
    let mut crashing = lab.vf_command(&["apply", "--auto-approve", "--shutdown-timeout", "1s"]);
    crashing.env("VIRTFLEET_FAULT", "disk-file-made#2");
    let mut crashing = assert_cmd::Command::from_std(crashing);
    let out = Outcome::of(crashing.timeout(lab.timeout));
    assert_eq!(out.code, None, "the fault must kill apply: {}", out.all());

    let hist = json(&lab.vf(&["history", "--json"]).expect_code(0));
    let runs = hist["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{hist:#}");
    assert_eq!(runs[0]["outcome"], "interrupted");
    assert_eq!(runs[0]["command"], "apply");
    // Steps of several machines run at once: at least the killed one is open.
    assert!(
        runs[0]["steps"]["interrupted"].as_u64().unwrap_or(0) >= 1,
        "{hist:#}"
    );

    // The next plan names it, in one line and in its JSON.
    let plan = lab.vf(&["plan"]);
    assert!(
        plan.stderr.lines().any(|l| l.contains("apply #1 by ")
            && l.contains("stopped at '")
            && l.contains("this plan finishes it")),
        "{}",
        plan.all()
    );
    let pj = json(&lab.vf(&["plan", "--json"]));
    assert_eq!(pj["interrupted"]["run"], 1, "{pj:#}");
    assert_eq!(pj["interrupted"]["command"], "apply");
    assert!(
        pj["interrupted"]["stoppedAt"]["action"].is_string(),
        "{pj:#}"
    );

    // Concurrent commands writing the same state file (status logs what it
    // observed) never surface a locked database.
    let children: Vec<_> = (0..4)
        .map(|_| {
            lab.vf_command(&["status", "--json"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("locked"), "{err}");
        assert!(!err.contains("warning"), "{err}");
    }

    lab.apply(&[]).expect_code(0);
    let hist = json(&lab.vf(&["history", "--json"]).expect_code(0));
    let runs = hist["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{hist:#}");
    assert_eq!(runs[0]["run"], 2);
    assert_eq!(runs[0]["outcome"], "ok");
    assert_eq!(runs[0]["resumes"], 1);
    assert_eq!(runs[1]["outcome"], "interrupted");
    // Nothing is interrupted any more.
    let plan = lab.vf(&["plan"]).expect_code(0);
    assert!(!plan.stderr.contains("interrupted"), "{}", plan.all());
    // One run's steps, by machine.
    let one = json(&lab.vf(&["history", &lab.m("c"), "--json"]).expect_code(0));
    assert!(!one["runs"].as_array().unwrap().is_empty());
    let shown = json(&lab.vf(&["history", "show", "2", "--json"]).expect_code(0));
    assert!(
        shown["stepList"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "done"),
        "{shown:#}"
    );
    let text = lab.vf(&["history"]).expect_code(0);
    assert!(text.stdout.contains("finishes #1"), "{}", text.stdout);

    // A corrupt state file: refused by path, left untouched, nothing done.
    let file = state_dir(&lab).join("vfst-crash.sqlite");
    std::fs::write(&file, b"this is not a database, it is a note\n".repeat(200)).unwrap();
    let before = std::fs::read(&file).unwrap();
    let ms4: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|m| lab.machine(m, ""))
        .collect();
    lab.write(&ms4);
    let out = lab.apply(&[]).expect_code(1);
    assert!(
        out.stderr.contains(file.to_str().unwrap()) && out.stderr.contains("move it aside"),
        "{}",
        out.all()
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
    assert_eq!(domains(SYSTEM, "vfst-crash-").len(), 3);

    // Deleting it loses history, not convergence.
    for s in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", file.display()));
    }
    // `--no-history` writes nothing, not even a new empty file.
    lab.vf(&["--no-history", "status"]).expect_code(0);
    assert!(!file.exists(), "--no-history created {}", file.display());
    lab.apply(&[]).expect_code(0);
    assert_eq!(domains(SYSTEM, "vfst-crash-").len(), 4);
    lab.vf(&["plan", "--detailed-exitcode"]).expect_code(0);
    let hist = json(&lab.vf(&["history", "--json"]).expect_code(0));
    assert_eq!(hist["runs"].as_array().unwrap().len(), 1, "{hist:#}");
    let mode = std::fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    lab.reset();
}

/// A fleet dir with a copy of the package and a nested import, for the
/// cache tests (no host is contacted: `show` only evaluates).
fn cached_fleet(dir: &Path) {
    let pkg = dir.join("dhall");
    std::fs::create_dir_all(&pkg).unwrap();
    for e in std::fs::read_dir(common::package_path().parent().unwrap()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, pkg.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.join("size.dhall"), "256\n").unwrap();
    std::fs::write(
        dir.join("machines.dhall"),
        "let V = ./dhall/package.dhall\nin [ V.Machine::{ name = \"web\", image = \"tiny\", memoryMiB = ./size.dhall } ]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("fleet.dhall"),
        "let V = ./dhall/package.dhall\nin V.Fleet::{ name = \"cachetest\", hosts = [ V.Host::{ name = \"h\", uri = \"qemu:///system\", storage = V.Storage.Dir { path = \"/srv/vm\" } } ], images = [ V.Image::{ name = \"tiny\", url = \"http://127.0.0.1:1/t.img\" } ], machines = ./machines.dhall }\n",
    )
    .unwrap();
}

fn show(dir: &Path) -> (bool, String) {
    let out = Outcome::of(
        virtfleet(&dir.join("fleet.dhall"), &dir.join("cache"))
            .env("VIRTFLEET_LOG", "virtfleet=debug")
            .args(["show", "--json"]),
    )
    .expect_code(0);
    (out.stderr.contains("cache hit"), out.stdout)
}

#[test]
fn a_changed_nested_import_or_package_misses_the_evaluation_cache() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    cached_fleet(dir);
    let (hit, cold) = show(dir);
    assert!(!hit, "the first load evaluates");
    let (hit, warm) = show(dir);
    assert!(hit, "the second load is a hit");
    assert_eq!(cold, warm, "a hit gives the same fleet");
    assert!(warm.contains("256"));

    std::fs::write(dir.join("size.dhall"), "384\n").unwrap();
    let (hit, changed) = show(dir);
    assert!(!hit, "a nested import changed");
    assert!(
        changed.contains("384") && !changed.contains("256"),
        "{changed}"
    );
    assert!(show(dir).0);

    // A package change that means nothing still misses: the key is bytes.
    let pkg = dir.join("dhall/package.dhall");
    let mut text = std::fs::read_to_string(&pkg).unwrap();
    text.push_str("\n-- edited\n");
    std::fs::write(&pkg, text).unwrap();
    assert!(!show(dir).0, "the package changed");
    assert!(show(dir).0);

    // A corrupt cache file is rebuilt, never an error.
    let cache = dir.join("home/.local/state/virtfleet/eval-cache.sqlite");
    assert!(cache.exists());
    std::fs::write(&cache, b"garbage".repeat(1000)).unwrap();
    for s in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{s}", cache.display()));
    }
    let (hit, again) = show(dir);
    assert!(!hit);
    assert_eq!(again, changed);
    assert!(show(dir).0);
}

#[test]
fn a_foreign_database_is_refused_and_an_older_schema_migrates_forward() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    cached_fleet(dir);
    let state = dir.join("home/.local/state/virtfleet");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let file = state.join("cachetest.sqlite");
    let history = || {
        Outcome::of(
            virtfleet(&dir.join("fleet.dhall"), &dir.join("cache")).args(["history", "--json"]),
        )
    };

    // Another program's database.
    {
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
    }
    let before = std::fs::read(&file).unwrap();
    let out = history().expect_code(1);
    assert!(
        out.stderr.contains(file.to_str().unwrap()) && out.stderr.contains("another program"),
        "{}",
        out.all()
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
    std::fs::remove_file(&file).unwrap();

    // A state file of schema 1 with a run in it.
    {
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch(virtfleet::state::MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "application_id", virtfleet::state::APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO runs (command, argv, user, machine, pid, started_ms, finished_ms,
             fleet_digest, lock_digest, plan_digest, outcome)
             VALUES ('apply', 'virtfleet apply', 'old', 'ctl', 1, 1700000000000, 1700000001000,
             'f', 'l', 'p', 'ok')",
            [],
        )
        .unwrap();
    }
    let out = history().expect_code(0);
    let v = json(&out);
    assert_eq!(v["runs"][0]["user"], "old", "{v:#}");
    assert_eq!(v["runs"][0]["outcome"], "ok");
    let c = rusqlite::Connection::open(&file).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version as usize, virtfleet::state::MIGRATIONS.len());
}

/// `show --json` of the fleet in `dir` with `VFST_MEM` set to `mem` (or
/// unset): whether the evaluation cache answered, and the output.
fn show_env(dir: &Path, mem: Option<&str>) -> (bool, String) {
    let mut cmd = virtfleet(&dir.join("fleet.dhall"), &dir.join("cache"));
    cmd.env("VIRTFLEET_LOG", "virtfleet=debug");
    match mem {
        Some(v) => cmd.env("VFST_MEM", v),
        None => cmd.env_remove("VFST_MEM"),
    };
    let out = Outcome::of(cmd.args(["show", "--json"])).expect_code(0);
    (out.stderr.contains("cache hit"), out.stdout)
}

#[test]
fn a_changed_text_import_or_env_variable_misses_the_evaluation_cache() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    cached_fleet(dir);
    // The machine's image URL ends with a file read `as Text`, and its
    // memory comes from an environment variable (with a fallback).
    std::fs::write(dir.join("disk.txt"), "first.img").unwrap();
    std::fs::write(
        dir.join("fleet.dhall"),
        "let V = ./dhall/package.dhall\nin V.Fleet::{ name = \"cachetest\", hosts = [ V.Host::{ name = \"h\", uri = \"qemu:///system\", storage = V.Storage.Dir { path = \"/srv/vm\" } } ], images = [ V.Image::{ name = \"tiny\", url = \"http://127.0.0.1:1/\" ++ ./disk.txt as Text } ], machines = [ V.Machine::{ name = \"web\", image = \"tiny\", memoryMiB = env:VFST_MEM ? 256 } ] }\n",
    )
    .unwrap();

    let (hit, out) = show_env(dir, Some("512"));
    assert!(!hit, "the first load evaluates");
    assert!(out.contains("first.img") && out.contains("512"), "{out}");
    assert!(show_env(dir, Some("512")).0, "same inputs: a hit");

    // The `as Text` file changes: same length, other bytes.
    std::fs::write(dir.join("disk.txt"), "other.img").unwrap();
    let (hit, out) = show_env(dir, Some("512"));
    assert!(!hit, "an `as Text` import changed");
    assert!(
        out.contains("other.img") && !out.contains("first.img"),
        "{out}"
    );
    assert!(show_env(dir, Some("512")).0);

    // The environment variable changes, then goes away (the fallback).
    let (hit, out) = show_env(dir, Some("640"));
    assert!(!hit, "an env: variable changed");
    assert!(out.contains("640") && !out.contains("512"), "{out}");
    assert!(show_env(dir, Some("640")).0);
    let (hit, out) = show_env(dir, None);
    assert!(!hit, "an env: variable was unset");
    assert!(out.contains("256") && !out.contains("640"), "{out}");
    assert!(show_env(dir, None).0);
}

#[test]
fn history_shows_damaged_rows_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    cached_fleet(dir);
    let state = dir.join("home/.local/state/virtfleet");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // A current-schema file whose times were damaged (hand edits, a clock
    // gone wild): before 1970, past the year 9999.
    {
        let c = rusqlite::Connection::open(state.join("cachetest.sqlite")).unwrap();
        for m in virtfleet::state::MIGRATIONS {
            c.execute_batch(m).unwrap();
        }
        c.pragma_update(None, "application_id", virtfleet::state::APPLICATION_ID)
            .unwrap();
        c.pragma_update(
            None,
            "user_version",
            virtfleet::state::MIGRATIONS.len() as i64,
        )
        .unwrap();
        c.execute_batch(&format!(
            "INSERT INTO runs (command, argv, user, machine, pid, started_ms, finished_ms,
             fleet_digest, lock_digest, plan_digest, outcome)
             VALUES ('apply', 'virtfleet apply', 'u', 'ctl', 1, -5000, {max}, 'f', 'l', 'p', 'ok');
             INSERT INTO steps (run, host, address, action, class, state, started_ms, finished_ms)
             VALUES (1, 'h', 'h/web', 'define', 'none', 'done', -1, {max});
             INSERT INTO findings (host, kind, subject, detail, first_seen, last_seen, cleared)
             VALUES ('h', 'drift', 'h/web', 'x', -3, {max}, {max});",
            max = i64::MAX
        ))
        .unwrap();
    }
    let vf = |args: &[&str]| {
        Outcome::of(virtfleet(&dir.join("fleet.dhall"), &dir.join("cache")).args(args))
    };
    let out = vf(&["history"]).expect_code(0);
    assert!(out.stdout.contains("#1"), "{}", out.all());
    assert!(out.stdout.contains("before 1970"), "{}", out.all());
    let out = vf(&["history", "show", "1"]).expect_code(0);
    assert!(out.stdout.contains("s after 1970"), "{}", out.all());
    vf(&["history", "--json"]).expect_code(0);
    // Findings of a machine are matched by whole name, not by prefix.
    let findings = |who: &str| {
        let v = json(&vf(&["history", who, "--json"]).expect_code(0));
        v["findings"].as_array().unwrap().len()
    };
    assert_eq!(findings("web"), 1);
    assert_eq!(findings("we"), 0);
    assert_eq!(findings("w_b"), 0);
}
