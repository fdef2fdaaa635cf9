//! What the state file and the evaluation cache cost and save, each figure
//! a ratio to a baseline measured in the same run.
//!
//! 1. `virtfleet check` (the whole release process) of the 100- and
//!    1000-machine literal fleets of `benches/load.rs`, warm (the
//!    evaluation cache answers) against cold (the cache file removed before
//!    each run, so Dhall evaluates). Needs neither root nor libvirtd.
//! 2. Recording: `apply` creating 10 machines with the state file against
//!    the same apply with `--no-history`, alternating, best of each. Root
//!    and qemu:///system (started with `scripts/libvirtd-start`).
//! 3. The state file's size after 10 000 recorded steps (runs of a
//!    10-machine plan written through the real [`Recorder`]), against the
//!    bytes of the values recorded. In process, no libvirtd.
//!
//! The no-op `plan` of 50 managed domains against the raw floor, with the
//! warm cache and a cold one, is section 1 of `benches/plan.rs`.
//!
//! Run with `cargo build --release && cargo bench --bench state` (as root
//! for section 2). `VIRTFLEET_BENCH_ONLY=1|2|3` runs one section. Section 2
//! creates only domains named `vfbst-*` and files under
//! /var/lib/virtfleet-bench-state/, removed before and after it (also after
//! a failure: a guard's Drop).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "report.rs"]
mod report;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use common::{Behaviour, TestServer};
use report::{Table, best_of, mkdir, ms, ratio, run_ok, write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;
use virtfleet::apply::{Event, Events, Report};
use virtfleet::state::{Recorder, Retention, Store};

const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const URI: &str = "qemu:///system";
/// Section 2's domains all start with this.
const PREFIX: &str = "vfbst-";
/// Section 2's files all live under this.
const ROOT: &str = "/var/lib/virtfleet-bench-state";
/// Section 2: machines created by one apply.
const APPLY_MACHINES: usize = 10;
/// Section 2: measured applies of each kind (alternating).
const APPLY_RUNS: usize = 5;
/// Section 3: steps recorded.
const STEPS: usize = 10_000;

fn main() {
    let only = match std::env::var("VIRTFLEET_BENCH_ONLY") {
        Err(_) => None,
        Ok(v) => match v.trim().parse::<u8>() {
            Ok(n @ 1..=3) => Some(n),
            _ => {
                eprintln!("VIRTFLEET_BENCH_ONLY must be 1, 2 or 3, got {v:?}");
                std::process::exit(2);
            }
        },
    };
    let wants = |n: u8| only.is_none_or(|o| o == n);
    let mut table = Table::default();
    let mut result = Ok(());
    for (n, section) in [
        (1, section_check as fn(&mut Table) -> Result<()>),
        (2, section_record),
        (3, section_size),
    ] {
        if wants(n) && result.is_ok() {
            result = section(&mut table);
        }
    }
    table.print(
        "ratio = value / baseline value, measured in this run. Times: best of N whole processes (release build).",
    );
    if let Err(e) = result {
        eprintln!("\nbench state FAILED: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Section 1

fn section_check(table: &mut Table) -> Result<()> {
    let bin = virtfleet_bin()?;
    let dir = tempfile::tempdir().context("create temp dir")?;
    write(&dir.path().join("images.lock"), LOCK)?;
    for (n, cold_runs) in [(100, 5), (1000, 2)] {
        eprintln!("\n== 1. check, {n} literal machines: warm vs cold evaluation cache ==");
        let fleet = dir.path().join(format!("literal-{n}.dhall"));
        write(&fleet, &literal_fleet(n))?;
        let state = dir.path().join(format!("state-{n}"));
        let check = || -> Result<()> {
            let mut cmd = Command::new(&bin);
            cmd.env_remove("VIRTFLEET_LOG")
                .arg("--state-dir")
                .arg(&state)
                .arg("-f")
                .arg(&fleet)
                .arg("check");
            run_ok(&mut cmd, "virtfleet check")?;
            Ok(())
        };
        let cache = virtfleet::state::cache::path_in(&state);
        let cold = best_of(cold_runs, || {
            for suffix in ["", "-wal", "-shm"] {
                let mut p = cache.clone().into_os_string();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            check()
        })?;
        eprintln!("  cold: best {}", ms(cold));
        ensure!(
            cache.is_file(),
            "check left no cache at {}",
            cache.display()
        );
        let warm = best_of(10, check)?;
        eprintln!("  warm: best {}", ms(warm));
        let start = best_of(10, || {
            run_ok(Command::new(&bin).arg("--version"), "virtfleet --version")?;
            Ok(())
        })?;
        // Most of a process start is the dynamic loader mapping libvirt's
        // libraries: virsh pays the same.
        let virsh = best_of(10, || {
            run_ok(Command::new("virsh").arg("--version"), "virsh --version")?;
            Ok(())
        })?;
        let s = "1 check";
        let cold_name = format!("cold check, {n}");
        table.row(
            s,
            format!("warm check, {n} literal machines"),
            ms(warm),
            &cold_name,
            ms(cold),
            Some(ratio(warm, cold)),
        );
        table.row(
            s,
            "  virtfleet --version (process start)",
            ms(start),
            &cold_name,
            ms(cold),
            Some(ratio(start, cold)),
        );
        table.row(
            s,
            "  virsh --version (libvirt's loading)",
            ms(virsh),
            &cold_name,
            ms(cold),
            Some(ratio(virsh, cold)),
        );
    }
    Ok(())
}

/// The lockfile of [`literal_fleet`] (a made-up digest: nothing is
/// downloaded).
const LOCK: &str = "format 1\n\nimage debian-12\n  url     https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2\n  sha256  1111111111111111111111111111111111111111111111111111111111111111\n  size    4096\n  format  qcow2\n  locked  2026-01-01T00:00:00Z\n";

/// `benches/load.rs`'s literal fleet: one file, `n` literal
/// `V.Machine::{ ... }` records of five fields, over two hosts.
fn literal_fleet(n: usize) -> String {
    let machines: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "V.Machine::{{\n        , name = \"vm-{}\"\n        , host = Some \"{}\"\n        , image = \"debian-12\"\n        , cpus = 2\n        , memoryMiB = 2048\n        }}",
                i + 1,
                if i % 2 == 0 { "hv1" } else { "hv2" }
            )
        })
        .collect();
    format!(
        r#"let V = {PACKAGE}

let host =
      \(name : Text) ->
        V.Host::{{
        , name
        , uri = "qemu+ssh://root@${{name}}/system"
        , storage = V.Storage.Dir {{ path = "/var/lib/virtfleet" }}
        }}

in  V.Fleet::{{
    , name = "bench"
    , hosts = [ host "hv1", host "hv2" ]
    , images =
      [ V.Image::{{
        , name = "debian-12"
        , url = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
        }}
      ]
    , machines =
      [ {}
      ]
    }}
"#,
        machines.join("\n      , ")
    )
}

// ---------------------------------------------------------------------------
// Section 2

fn section_record(table: &mut Table) -> Result<()> {
    eprintln!("\n== 2. apply {APPLY_MACHINES} machines: recorded vs --no-history ==");
    let bin = virtfleet_bin()?;
    run_ok(
        &mut Command::new(repo("scripts/libvirtd-start")),
        "start libvirtd",
    )?;
    let guard = Guard::new()?;
    let dir = Path::new(ROOT);
    let serve = dir.join("serve");
    mkdir(&serve)?;
    run_ok(
        Command::new(repo("scripts/example-image")).arg(&serve),
        "build the example image",
    )?;
    let server = TestServer::with([("/tiny.img", Behaviour::File(serve.join("tiny.img")))]);
    let storage = dir.join("storage");
    let fleet = dir.join("fleet.dhall");
    write(
        &fleet,
        &format!(
            r#"let V = {PACKAGE}
let mk = \(i : Natural) -> V.Machine::{{ name = "{PREFIX}${{Natural/show (i + 1)}}", image = "tiny", memoryMiB = 64, diskGiB = 1, power = V.Power.Stopped, autostart = False, snapshots = V.Snapshots::{{ init = False }} }}
let machines = Natural/fold {APPLY_MACHINES} (List V.Machine.Type) (\(acc : List V.Machine.Type) -> acc # [ mk (List/length V.Machine.Type acc) ]) ([] : List V.Machine.Type)
in  V.Fleet::{{
    , name = "vfbst"
    , hosts = [ V.Host::{{ name = "local", uri = "{URI}", storage = V.Storage.Dir {{ path = "{}" }}, domainType = V.DomainType.Qemu, cpuMode = V.CpuMode.Default, network = V.Network.User }} ]
    , images = [ V.Image::{{ name = "tiny", url = "{}", format = V.ImageFormat.Raw }} ]
    , machines
    }}
"#,
            storage.display(),
            server.url("tiny.img")
        ),
    )?;
    let state = dir.join("state");
    let vf = |args: &[&str]| -> Result<Output> {
        let mut cmd = Command::new(&bin);
        for var in ["VIRTFLEET_FLEET", "VIRTFLEET_LOCK", "VIRTFLEET_LOG"] {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1")
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--state-dir")
            .arg(&state)
            .arg("-f")
            .arg(&fleet)
            .args(args);
        run_ok(&mut cmd, &format!("virtfleet {}", args.join(" ")))
    };
    vf(&["images", "lock"])?;
    // The first apply copies the base image to the host and warms the
    // evaluation cache; neither is what is measured.
    vf(&["apply", "--auto-approve"])?;
    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..APPLY_RUNS * 2 {
        guard.remove_machines(&storage)?;
        let recorded = i % 2 == 0;
        let mut args = vec!["apply", "--auto-approve"];
        if !recorded {
            args.push("--no-history");
        }
        let t = Instant::now();
        vf(&args)?;
        let took = t.elapsed();
        ensure!(
            domains()?.len() == APPLY_MACHINES,
            "apply did not define {APPLY_MACHINES} machines"
        );
        eprintln!(
            "  apply{}: {}",
            if recorded { "" } else { " --no-history" },
            ms(took)
        );
        if recorded { &mut with } else { &mut without }.push(took);
    }
    let store = Store::open(&state, "vfbst").map_err(|e| anyhow!("{e}"))?;
    let steps = store.step_count().map_err(|e| anyhow!("{e}"))?;
    drop(server);
    drop(guard);
    // A shared machine's noise is larger than what is measured: the best
    // and the median of each side are both shown.
    with.sort();
    without.sort();
    for (what, w, wo) in [
        ("best", with[0], without[0]),
        ("median", with[with.len() / 2], without[without.len() / 2]),
    ] {
        table.row(
            "2 record",
            format!("apply {APPLY_MACHINES} machines, recorded ({what})"),
            ms(w),
            format!("the same, --no-history ({what})"),
            ms(wo),
            Some(ratio(w, wo)),
        );
    }
    eprintln!("  ({steps} steps recorded over {} applies)", APPLY_RUNS + 1);
    Ok(())
}

/// Removes every `vfbst-*` domain and everything under [`ROOT`] when made
/// and when dropped (also while unwinding from a panic).
struct Guard;

impl Guard {
    fn new() -> Result<Guard> {
        let g = Guard;
        g.clean()?;
        report::make_disk_root(Path::new(ROOT))?;
        Ok(g)
    }

    /// The machines go (domains and every storage entry but the base
    /// images), so the next apply creates them again from the same base.
    fn remove_machines(&self, storage: &Path) -> Result<()> {
        undefine_all()?;
        for e in
            std::fs::read_dir(storage).with_context(|| format!("list {}", storage.display()))?
        {
            let p = e?.path();
            if p.file_name().is_some_and(|n| n == "images") {
                continue;
            }
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("remove {}", p.display()))?;
        }
        Ok(())
    }

    fn clean(&self) -> Result<()> {
        undefine_all()?;
        report::remove_tree(Path::new(ROOT))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.clean() {
            eprintln!(
                "WARNING: cleanup failed, remove {PREFIX}* domains and {ROOT} by hand: {e:#}"
            );
        }
    }
}

fn undefine_all() -> Result<()> {
    report::remove_domains(URI, PREFIX)
}

/// The `vfbst-*` domains, through virsh (an independent witness).
fn domains() -> Result<Vec<String>> {
    report::domains_named(URI, PREFIX)
}

// ---------------------------------------------------------------------------
// Section 3

/// Passes nothing on: the display is not part of what is measured.
struct Quiet;

impl Events for Quiet {
    fn event(&self, _: Event) {}
}

fn section_size(table: &mut Table) -> Result<()> {
    eprintln!("\n== 3. state file size after {STEPS} recorded steps ==");
    let dir = tempfile::tempdir().context("create temp dir")?;
    // A real plan: 10 machines on two hosts, nothing there yet.
    let fleet_path = dir.path().join("fleet.dhall");
    write(&fleet_path, &literal_fleet(APPLY_MACHINES))?;
    let fleet = virtfleet::fleet::load(&fleet_path).map_err(|e| anyhow!("{e}"))?;
    let lock = virtfleet::lock::ImageLock::parse(LOCK, Path::new("images.lock"))
        .map_err(|d| anyhow!("{d:?}"))?;
    let now = 1_900_000_000;
    let obs = virtfleet::resources::observed::Observation {
        format_version: virtfleet::resources::observed::FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        taken_at: now,
        hosts: fleet
            .hosts
            .keys()
            .map(|h| {
                (
                    h.to_string(),
                    virtfleet::resources::observed::HostObservation::Reachable(Default::default()),
                )
            })
            .collect(),
    };
    let plan = virtfleet::plan::plan(
        &fleet,
        &lock,
        &obs,
        virtfleet::plan::Options {
            now,
            ..Default::default()
        },
    );
    ensure!(!plan.changes.is_empty(), "the plan has no changes");
    let state = dir.path().join("state");
    let empty = {
        Store::open(&state, "size").map_err(|e| anyhow!("{e}"))?;
        file_bytes(&state)?
    };
    // The bytes of the values a step's row holds, as the floor any
    // encoding pays: host, address, action, a state word, two timestamps.
    let mut payload = 0u64;
    let mut recorded = 0;
    let t = Instant::now();
    while recorded < STEPS {
        let store = Store::open(&state, "size").map_err(|e| anyhow!("{e}"))?;
        let rec = Recorder::start(Some(store), &plan, "apply", Retention::default(), &Quiet);
        for c in plan.changes.iter().take(STEPS - recorded) {
            let what = c.action.describe();
            payload += (c.host.len() + c.address.len() + what.len() + "done".len() + 16) as u64;
            rec.event(Event::StepStarted {
                host: c.host.clone(),
                address: c.address.clone(),
                what: what.clone(),
            });
            rec.event(Event::StepFinished {
                host: c.host.clone(),
                address: c.address.clone(),
                what,
                error: None,
                seconds: 0.1,
            });
            recorded += 1;
        }
        rec.finish(&Report::default());
    }
    let took = t.elapsed();
    let store = Store::open(&state, "size").map_err(|e| anyhow!("{e}"))?;
    let count = store.step_count().map_err(|e| anyhow!("{e}"))?;
    ensure!(
        count as usize == STEPS,
        "the file holds {count} steps, not {STEPS} (pruned?)"
    );
    drop(store);
    let bytes = file_bytes(&state)?;
    let runs = STEPS.div_ceil(plan.changes.len());
    eprintln!(
        "  {STEPS} steps in {runs} runs of {} recorded in {} ({} per step); file {} (empty: {})",
        plan.changes.len(),
        ms(took),
        ms(took / STEPS as u32),
        kib(bytes),
        kib(empty)
    );
    table.row(
        "3 size",
        format!("state file, {STEPS} steps ({runs} runs)"),
        kib(bytes),
        "bytes of the values recorded",
        kib(payload),
        Some(bytes as f64 / payload as f64),
    );
    table.row(
        "3 size",
        "  per step",
        format!("{:.0} B", bytes as f64 / STEPS as f64),
        "",
        String::new(),
        None,
    );
    table.row(
        "3 size",
        "  time to record a step (open, prune, runs)",
        ms(took / STEPS as u32),
        "",
        String::new(),
        None,
    );
    Ok(())
}

/// The state file and its WAL, as they are on disk.
fn file_bytes(state: &Path) -> Result<u64> {
    let mut total = 0;
    for suffix in ["", "-wal"] {
        let p = state.join(format!("size.sqlite{suffix}"));
        match std::fs::metadata(&p) {
            Ok(m) => total += m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("stat {}", p.display())),
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------
// Helpers

/// The release binary next to this bench (target/release/virtfleet).
fn virtfleet_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the bench binary")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("virtfleet"))
        .context("the bench binary has no grandparent directory")?;
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        );
    }
    Ok(bin)
}

fn repo(p: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(p)
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}
