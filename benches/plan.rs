//! Plan/apply benchmark against the real libvirtd, with every figure shown
//! as a ratio to a baseline measured in the same run.
//!
//! 1. `virtfleet plan` (no-op) on a host with 20 and with 100 stopped
//!    domains, half of them this fleet's and half foreign (defined outside
//!    virtfleet, each with a qcow2 disk), against a floor process that only
//!    connects to libvirt, lists every domain and reads each inactive XML
//!    (this same binary, re-run with `--floor`, so both sides pay for
//!    process start). virtfleet's in-process split (load, lock, observe,
//!    plan) is shown too, at 100 domains.
//! 2. `apply` creating 10 machines from a 1 GiB raw base image (qcow2
//!    overlays), against 10 full `qemu-img convert` copies, as the ancestor
//!    tool made them; with the disk space each uses.
//! 3. The pure planner on 1000 machines over 2 hosts: a converged (no-op)
//!    observation and an empty one (everything to create), against cloning
//!    or serialising the same data.
//! 4. Work in parallel on one host: create 10 running machines, then delete
//!    them (`--shutdown-timeout 0s`), with `--concurrency 1` against the
//!    default; then 10 guests that ignore ACPI (the example image has no
//!    OS) deleted with a 5 s shutdown timeout, against that timeout.
//!
//! `VIRTFLEET_BENCH_BIN=PATH` measures another virtfleet binary (an older
//! build, for before/after figures); one without `--concurrency` runs
//! sequentially, so both columns of section 4 are its only mode.
//!
//! Run with `cargo build --release && cargo bench --bench plan` as root, on
//! a machine with libvirt and QEMU (`scripts/setup`); sections 1 and 2 use
//! qemu:///system (started with `scripts/libvirtd-start` when needed).
//! `VIRTFLEET_BENCH_ONLY=1|2|3|4` runs one section; section 3 needs neither
//! root nor libvirtd.
//!
//! Everything created lives in domains named `vfbench-*` and under
//! /var/lib/virtfleet-bench/; both are removed before the run, after each
//! section and at the end, also after a failure or a panic (a guard's Drop).
//! Section 2 needs about 14 GiB free there for a moment.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "report.rs"]
mod report;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use common::{Behaviour, TestServer};
use report::{Table, best_of, mkdir, ms, ratio, run_expect, run_ok, write};
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use virtfleet::host::libvirt::Libvirt;
use virtfleet::lock::ImageLock;
use virtfleet::plan::expected::converged_state;
use virtfleet::plan::planner::GIB;
use virtfleet::plan::{Options, Plan};
use virtfleet::resources::observed::{HostObservation, HostState, Observation};

const URI: &str = "qemu:///system";
/// Every domain this benchmark defines starts with this.
const PREFIX: &str = "vfbench-";
/// Every file this benchmark writes lives under this.
const ROOT: &str = "/var/lib/virtfleet-bench";
const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
/// Repetitions of each timed measurement; the best is reported.
const RUNS: usize = 5;
/// Repetitions of section 1's process timings: the libvirtd may be shared
/// (tests, other users), and a call that waits behind another client's
/// work costs seconds; the best of more runs sees through that.
const PLAN_RUNS: usize = 9;
/// Repetitions of the microsecond-scale in-process baselines.
const BASELINE_RUNS: usize = 20;
const MIB: u64 = 1024 * 1024;

/// Section 1: domains on the host, half managed and half foreign.
const PLAN_TOTALS: [usize; 2] = [20, 100];
/// Section 4: machines created and deleted.
const PARALLEL_MACHINES: usize = 10;
/// Section 2: machines created by one apply, and full copies made.
const APPLY_MACHINES: usize = 10;
/// Section 2: size of the base image.
const BASE_BYTES: u64 = GIB;
/// Section 3: machines given to the pure planner.
const PLANNER_MACHINES: usize = 1000;

fn main() {
    // `--floor`: the process-level baseline of section 1, run as a child.
    if std::env::args().any(|a| a == "--floor") {
        match floor() {
            Ok(n) => println!("{n}"),
            Err(e) => {
                eprintln!("floor: {e:#}");
                std::process::exit(1);
            }
        }
        return;
    }
    let only = match std::env::var("VIRTFLEET_BENCH_ONLY") {
        Err(_) => None,
        Ok(v) => match v.trim() {
            "1" => Some(1),
            "2" => Some(2),
            "3" => Some(3),
            "4" => Some(4),
            _ => {
                eprintln!("VIRTFLEET_BENCH_ONLY must be 1, 2, 3 or 4, got {v:?}");
                std::process::exit(2);
            }
        },
    };
    let mut table = Table::default();
    let result = run(only, &mut table);
    // The guard inside `run` has cleaned up by now.
    table.print(&format!(
        "ratio = value / baseline value (below 1: cheaper than the baseline). Times: best of {RUNS} \
         (processes of section 1: best of {PLAN_RUNS}; in-process baselines of section 3: best of \
         {BASELINE_RUNS}), except sections 2 and 4 (one run each, sync included in 2). Sections 1, 2 \
         and 4 run against {URI}; disk space in MiB of 2^20 bytes."
    ));
    if let Err(e) = result {
        eprintln!("\nbench plan FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn run(only: Option<u8>, table: &mut Table) -> Result<()> {
    let wants = |n: u8| only.is_none_or(|o| o == n);
    if wants(1) || wants(2) || wants(4) {
        let bin = virtfleet_bin()?;
        eprintln!("virtfleet binary: {}", bin.display());
        ensure_libvirtd()?;
        let guard = Guard::new()?;
        if wants(1) {
            for total in PLAN_TOTALS {
                eprintln!(
                    "\n== 1. no-op plan, {total} domains ({} managed, {} foreign), vs floor ==",
                    total / 2,
                    total / 2
                );
                section_plan(&bin, table, total)?;
                guard.clean()?;
            }
        }
        if wants(2) {
            eprintln!("\n== 2. apply {APPLY_MACHINES} machines (overlays) vs full copies ==");
            section_apply(&bin, table)?;
            guard.clean()?;
        }
        if wants(4) {
            eprintln!("\n== 4. create/delete {PARALLEL_MACHINES} running machines, in parallel ==");
            section_parallel(&bin, table)?;
            guard.clean()?;
        }
    }
    if wants(3) {
        eprintln!("\n== 3. pure planner, {PLANNER_MACHINES} machines over 2 hosts ==");
        section_planner(table)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Section 1

fn section_plan(bin: &Path, table: &mut Table, total: usize) -> Result<()> {
    let plan_machines = total / 2;
    let dir = Path::new(ROOT).join("s1");
    let serve = dir.join("serve");
    mkdir(&serve)?;
    run_ok(
        Command::new(repo("scripts/example-image")).arg(&serve),
        "build the example image",
    )?;
    let server = TestServer::with([("/tiny.img", Behaviour::File(serve.join("tiny.img")))]);
    let storage = Path::new(ROOT).join("plan");
    let fleet_path = dir.join("fleet.dhall");
    let text = fleet_dhall(
        "vfbench-plan",
        &[local_host(&storage)],
        &image("tiny", &server.url("tiny.img")),
        plan_machines,
        r#"V.Machine::{ name = "vfbench-p-${Natural/show (i + 1)}", image = "tiny", memoryMiB = 64, diskGiB = 1, power = V.Power.Stopped, autostart = False }"#,
    );
    write(&fleet_path, &text)?;
    let vf = Vf::new(bin, &fleet_path, &dir.join("cache"))?;
    vf.run(&["images", "lock"], &[0])?;
    let t = Instant::now();
    vf.run(&["apply", "--auto-approve"], &[0])?;
    eprintln!(
        "  setup: apply created {plan_machines} machines in {}",
        ms(t.elapsed())
    );
    define_foreign(&dir.join("foreign"), plan_machines)?;
    let defined = bench_domains("vfbench-p-")?;
    ensure!(
        defined.len() == plan_machines,
        "expected {plan_machines} domains vfbench-p-* after apply, libvirt has {}: {defined:?}",
        defined.len()
    );

    // Warm both paths once (page cache, libvirtd's caches), then measure.
    vf.run(&["plan", "--detailed-exitcode"], &[0])?;
    let exe = std::env::current_exe().context("locate the bench binary")?;
    let floor_out = run_ok(Command::new(&exe).arg("--floor"), "floor process")?;
    let listed: usize = String::from_utf8_lossy(&floor_out.stdout)
        .trim()
        .parse()
        .context("floor process printed no domain count")?;
    ensure!(
        listed >= plan_machines,
        "the floor process listed {listed} domains, fewer than the {plan_machines} managed ones"
    );

    let plan = best_of(PLAN_RUNS, || {
        let out = vf.run(&["plan", "--detailed-exitcode"], &[0])?;
        black_box(out);
        Ok(())
    })?;
    eprintln!("  virtfleet plan --detailed-exitcode: best {}", ms(plan));
    let floor_proc = best_of(PLAN_RUNS, || {
        run_ok(Command::new(&exe).arg("--floor"), "floor process")?;
        Ok(())
    })?;
    eprintln!(
        "  floor process ({listed} domains: open, list, inactive XML): best {}",
        ms(floor_proc)
    );
    let start = best_of(RUNS, || {
        run_ok(Command::new(bin).arg("--version"), "virtfleet --version")?;
        Ok(())
    })?;
    // What a plan pays before it contacts any host: evaluating the fleet.
    let check = best_of(PLAN_RUNS, || {
        vf.run(&["check"], &[0])?;
        Ok(())
    })?;

    // virtfleet's cost split, in process.
    let floor_in = best_of(RUNS, || {
        black_box(floor()?);
        Ok(())
    })?;
    let mut fleet = None;
    let load = best_of(RUNS, || {
        fleet = Some(virtfleet::fleet::load(&fleet_path).map_err(|e| anyhow!("{e}"))?);
        Ok(())
    })?;
    let fleet = fleet.expect("loaded at least once");
    let lock_path = dir.join("images.lock");
    let mut lock = None;
    let lock_t = best_of(RUNS, || {
        lock = Some(ImageLock::read(&lock_path).map_err(|e| anyhow!("{e}"))?);
        Ok(())
    })?;
    let lock = lock.expect("read at least once");
    let mut obs = None;
    let observe = best_of(RUNS, || {
        obs = Some(virtfleet::observe::observe(&fleet, unix_now()));
        Ok(())
    })?;
    let obs = obs.expect("observed at least once");
    let libvirt = best_of(RUNS, || {
        let lv = Libvirt::open(URI).map_err(|e| anyhow!("{e}"))?;
        black_box(lv.domains().map_err(|e| anyhow!("{e}"))?);
        Ok(())
    })?;
    match obs.hosts.get("local") {
        Some(HostObservation::Reachable(s)) => {
            let managed = s.managed("vfbench-plan").count();
            ensure!(
                managed == plan_machines,
                "in-process observation found {managed} managed domains, not {plan_machines}"
            );
        }
        other => bail!("in-process observation of host local: {other:?}"),
    }
    let opts = Options {
        now: unix_now(),
        ..Options::default()
    };
    let mut planned = None;
    let pure = best_of(RUNS, || {
        planned = Some(virtfleet::plan::plan(&fleet, &lock, &obs, opts));
        Ok(())
    })?;
    let planned = planned.expect("planned at least once");
    ensure!(
        planned.is_empty(),
        "in-process plan is not empty: {} changes, {} pending, {} refused",
        planned.changes.len(),
        planned.pending.len(),
        planned.refused.len()
    );
    drop(server);

    let s = format!("1 plan {total}");
    let floor_name = format!("floor process ({listed} dom.)");
    table.row(
        &s,
        format!("virtfleet plan, {plan_machines} managed + {plan_machines} foreign"),
        ms(plan),
        &floor_name,
        ms(floor_proc),
        Some(ratio(plan, floor_proc)),
    );
    table.row(
        &s,
        "virtfleet check (load the fleet, no host)",
        ms(check),
        &floor_name,
        ms(floor_proc),
        Some(ratio(check, floor_proc)),
    );
    table.row(
        &s,
        "virtfleet --version (process start)",
        ms(start),
        &floor_name,
        ms(floor_proc),
        Some(ratio(start, floor_proc)),
    );
    let in_floor = "floor, in process";
    if total < 100 {
        return Ok(());
    }
    for (what, d) in [
        ("in process: fleet::load", load),
        ("in process: ImageLock::read", lock_t),
        ("in process: observe::observe", observe),
        ("  of which Libvirt::open + domains", libvirt),
        ("in process: plan::plan", pure),
    ] {
        table.row(
            &s,
            what,
            ms(d),
            in_floor,
            ms(floor_in),
            Some(ratio(d, floor_in)),
        );
    }
    Ok(())
}

/// The floor of section 1: open the connection, list every domain, read
/// each one's inactive XML. Returns how many domains there were.
fn floor() -> Result<usize> {
    virt::error::clear_error_callback();
    let conn =
        virt::connect::Connect::open(Some(URI)).map_err(|e| anyhow!("{URI}: connect: {e}"))?;
    let domains = conn
        .list_all_domains(0)
        .map_err(|e| anyhow!("{URI}: list domains: {e}"))?;
    let mut bytes = 0;
    for d in &domains {
        match d.xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE) {
            Ok(xml) => bytes += xml.len(),
            // Undefined meanwhile (other users of the shared libvirtd).
            Err(e)
                if matches!(
                    e.code(),
                    virt::enumutil::Enum::Known(virt::error::ErrorNumber::NoDomain)
                ) => {}
            Err(e) => bail!("{URI}: read XML: {e}"),
        }
    }
    black_box(bytes);
    Ok(domains.len())
}

/// `count` domains virtfleet does not own (`vfbench-f-*`), stopped, each
/// with its own 1 GiB qcow2 disk under `dir`: what a shared host holds.
fn define_foreign(dir: &Path, count: usize) -> Result<()> {
    mkdir(dir)?;
    virt::error::clear_error_callback();
    let conn =
        virt::connect::Connect::open(Some(URI)).map_err(|e| anyhow!("{URI}: connect: {e}"))?;
    for i in 1..=count {
        let disk = dir.join(format!("f-{i}.qcow2"));
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg("1G"),
            "qemu-img create (foreign disk)",
        )?;
        let xml = format!(
            "<domain type='qemu'><name>vfbench-f-{i}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>\
             <driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/>\
             </disk></devices></domain>",
            disk.display()
        );
        conn.define_domain_xml(&xml)
            .map_err(|e| anyhow!("{URI}: define vfbench-f-{i}: {e}"))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Section 4

/// The virtfleet arguments that select `n` steps in flight per host, or
/// none when the binary has no such setting (it runs one step at a time).
fn concurrency_args(vf: &Vf, n: Option<usize>) -> Result<Vec<String>> {
    let help = vf.run(&["apply", "--help"], &[0])?;
    let supported = String::from_utf8_lossy(&help.stdout).contains("--concurrency");
    Ok(match (supported, n) {
        (true, Some(n)) => vec!["--concurrency".into(), n.to_string()],
        _ => Vec::new(),
    })
}

fn section_parallel(bin: &Path, table: &mut Table) -> Result<()> {
    let dir = Path::new(ROOT).join("s4");
    let serve = dir.join("serve");
    mkdir(&serve)?;
    run_ok(
        Command::new(repo("scripts/example-image")).arg(&serve),
        "build the example image",
    )?;
    let server = TestServer::with([("/tiny.img", Behaviour::File(serve.join("tiny.img")))]);
    let storage = Path::new(ROOT).join("parallel");
    let fleet_path = dir.join("fleet.dhall");
    let fleet_with = |count: usize| {
        fleet_dhall(
            "vfbench-par",
            &[local_host(&storage)],
            &image("tiny", &server.url("tiny.img")),
            count,
            r#"V.Machine::{ name = "vfbench-r-${Natural/show (i + 1)}", image = "tiny", memoryMiB = 64, diskGiB = 1, power = V.Power.Running, autostart = False, snapshots = V.Snapshots::{ init = False } }"#,
        )
    };
    write(&fleet_path, &fleet_with(PARALLEL_MACHINES))?;
    let vf = Vf::new(bin, &fleet_path, &dir.join("cache"))?;
    vf.run(&["images", "lock"], &[0])?;
    // The base image is put on the host once, outside the measurement.
    write(&fleet_path, &fleet_with(0))?;
    let sequential = concurrency_args(&vf, Some(1))?;
    let default: Vec<String> = Vec::new();
    let n = PARALLEL_MACHINES;
    let mut rows = Vec::new();
    for (label, extra) in [("--concurrency 1", &sequential), ("default", &default)] {
        let args = |base: &[&str]| -> Vec<String> {
            base.iter()
                .map(|s| (*s).to_owned())
                .chain(extra.iter().cloned())
                .collect()
        };
        write(&fleet_path, &fleet_with(n))?;
        let a = args(&["apply", "--auto-approve"]);
        let t = Instant::now();
        vf.run(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[0])?;
        let create = t.elapsed();
        let running = bench_running("vfbench-r-")?;
        ensure!(
            running == n,
            "{running} of {n} machines running after apply"
        );
        write(&fleet_path, &fleet_with(0))?;
        let d = args(&[
            "apply",
            "--auto-approve",
            "--allow-destroy",
            "--shutdown-timeout",
            "0s",
        ]);
        let t = Instant::now();
        vf.run(&d.iter().map(String::as_str).collect::<Vec<_>>(), &[0])?;
        let delete = t.elapsed();
        ensure!(
            bench_domains("vfbench-r-")?.is_empty(),
            "domains left after delete"
        );
        eprintln!(
            "  {label}: create {n} {} , delete {n} {}",
            ms(create),
            ms(delete)
        );
        rows.push((label, create, delete));
    }
    let (_, c1, d1) = rows[0];
    for (label, c, d) in &rows {
        table.row(
            "4 parallel",
            format!("create {n} running, {label}"),
            ms(*c),
            "create, --concurrency 1",
            ms(c1),
            Some(ratio(*c, c1)),
        );
        table.row(
            "4 parallel",
            format!("delete {n} (timeout 0s), {label}"),
            ms(*d),
            "delete, --concurrency 1",
            ms(d1),
            Some(ratio(*d, d1)),
        );
    }
    // Ten guests that ignore ACPI, a 5 s timeout: one timeout, not ten.
    write(&fleet_path, &fleet_with(n))?;
    vf.run(&["apply", "--auto-approve"], &[0])?;
    write(&fleet_path, &fleet_with(0))?;
    let timeout = Duration::from_secs(5);
    let t = Instant::now();
    vf.run(
        &[
            "apply",
            "--auto-approve",
            "--allow-destroy",
            "--shutdown-timeout",
            "5s",
        ],
        &[0],
    )?;
    let acpi = t.elapsed();
    ensure!(
        bench_domains("vfbench-r-")?.is_empty(),
        "domains left after delete"
    );
    eprintln!(
        "  delete {n} ACPI-ignoring guests, 5 s timeout: {}",
        ms(acpi)
    );
    table.row(
        "4 parallel",
        format!("delete {n} ignoring ACPI, timeout 5s"),
        ms(acpi),
        "one timeout",
        ms(timeout),
        Some(ratio(acpi, timeout)),
    );
    // What the timeout itself costs: the same delete with a 0 s timeout
    // (measured above, default concurrency) plus one timeout. About 1
    // means the ten timeouts ran side by side; ten in turn would be ~5.
    let (_, _, d_default) = rows[rows.len() - 1];
    let one_timeout = d_default + timeout;
    table.row(
        "4 parallel",
        format!("delete {n} ignoring ACPI, timeout 5s"),
        ms(acpi),
        "delete with timeout 0s + one timeout",
        ms(one_timeout),
        Some(ratio(acpi, one_timeout)),
    );
    drop(server);
    Ok(())
}

/// How many running domains start with `prefix`, through virsh.
fn bench_running(prefix: &str) -> Result<usize> {
    let out = run_ok(
        Command::new("virsh").args(["-c", URI, "list", "--name", "--state-running"]),
        "virsh list",
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|n| n.trim().starts_with(prefix))
        .count())
}

// ---------------------------------------------------------------------------
// Section 2

fn section_apply(bin: &Path, table: &mut Table) -> Result<()> {
    let dir = Path::new(ROOT).join("s2");
    let serve = dir.join("serve");
    mkdir(&serve)?;
    let tiny_dir = dir.join("tiny");
    run_ok(
        Command::new(repo("scripts/example-image")).arg(&tiny_dir),
        "build the example image",
    )?;
    let tiny = std::fs::read(tiny_dir.join("tiny.img")).context("read tiny.img")?;
    let t = Instant::now();
    write_base_image(&serve.join("base.img"), &tiny)?;
    eprintln!(
        "  setup: wrote the {} MiB base image in {}",
        BASE_BYTES / MIB,
        ms(t.elapsed())
    );
    // Streamed from disk: the 1 GiB base image is never held in memory.
    let server = TestServer::with([("/base.img", Behaviour::File(serve.join("base.img")))]);
    let storage = Path::new(ROOT).join("apply");
    let fleet_path = dir.join("fleet.dhall");
    let text = fleet_dhall(
        "vfbench-apply",
        &[local_host(&storage)],
        &image("base", &server.url("base.img")),
        APPLY_MACHINES,
        // No init snapshot: the full copies it is compared with take none.
        r#"V.Machine::{ name = "vfbench-a-${Natural/show (i + 1)}", image = "base", memoryMiB = 64, diskGiB = 2, power = V.Power.Stopped, autostart = False, snapshots = V.Snapshots::{ init = False } }"#,
    );
    write(&fleet_path, &text)?;
    let cache = dir.join("cache");
    let vf = Vf::new(bin, &fleet_path, &cache)?;
    let t = Instant::now();
    vf.run(&["images", "lock"], &[0])?;
    let lock_t = t.elapsed();
    eprintln!(
        "  setup: images lock (download + hash {} MiB) in {}",
        BASE_BYTES / MIB,
        ms(lock_t)
    );
    drop(server);
    // Do not charge the measurements for earlier writes still in flight.
    sync()?;

    let t = Instant::now();
    vf.run(&["apply", "--auto-approve"], &[0])?;
    sync()?;
    let apply = t.elapsed();
    eprintln!(
        "  virtfleet apply --auto-approve ({APPLY_MACHINES} machines) + sync: {}",
        ms(apply)
    );
    let defined = bench_domains("vfbench-a-")?;
    ensure!(
        defined.len() == APPLY_MACHINES,
        "expected {APPLY_MACHINES} domains vfbench-a-* after apply, libvirt has {}: {defined:?}",
        defined.len()
    );
    vf.run(&["plan", "--detailed-exitcode"], &[0])?;

    let images = storage.join("images");
    let bases: Vec<PathBuf> = std::fs::read_dir(&images)
        .with_context(|| format!("list {}", images.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "raw"))
        .collect();
    let [base] = bases.as_slice() else {
        bail!(
            "expected one base image in {}, found {bases:?}",
            images.display()
        );
    };
    let base_len = std::fs::metadata(base)
        .with_context(|| format!("stat {}", base.display()))?
        .len();
    ensure!(
        base_len == BASE_BYTES,
        "{} is {base_len} bytes, not {BASE_BYTES}",
        base.display()
    );

    // What apply pays once per host and image: copy from the cache, fsync, re-hash.
    let cached = cache.join(
        base.file_stem()
            .and_then(|s| s.to_str())
            .context("base image name")?,
    );
    let scratch = dir.join("base-copy.raw");
    sync()?;
    let t = Instant::now();
    run_ok(Command::new("cp").arg(&cached).arg(&scratch), "cp base")?;
    sync()?;
    run_ok(Command::new("sha256sum").arg(&scratch), "sha256sum base")?;
    let copy_hash = t.elapsed();
    std::fs::remove_file(&scratch).with_context(|| format!("remove {}", scratch.display()))?;
    eprintln!(
        "  cp + sync + sha256sum of the base once: {}",
        ms(copy_hash)
    );

    let overlays = Path::new(ROOT).join("overlays");
    mkdir(&overlays)?;
    let size = "2G";
    sync()?;
    let t = Instant::now();
    for i in 1..=APPLY_MACHINES {
        let out = overlays.join(format!("vm-{i}.qcow2"));
        run_ok(
            Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(base)
                .arg(&out)
                .arg(size),
            "qemu-img create overlay",
        )?;
    }
    sync()?;
    let overlay_t = t.elapsed();
    eprintln!(
        "  {APPLY_MACHINES} x qemu-img create (overlay) + sync: {}",
        ms(overlay_t)
    );

    let copies = Path::new(ROOT).join("copies");
    mkdir(&copies)?;
    sync()?;
    let t = Instant::now();
    for i in 1..=APPLY_MACHINES {
        let out = copies.join(format!("vm-{i}.qcow2"));
        run_ok(
            Command::new("qemu-img")
                .args(["convert", "-O", "qcow2"])
                .arg(base)
                .arg(&out),
            "qemu-img convert",
        )?;
    }
    sync()?;
    let copies_t = t.elapsed();
    eprintln!(
        "  {APPLY_MACHINES} x qemu-img convert (full copy) + sync: {}",
        ms(copies_t)
    );

    let disks = storage.join("disks");
    let vf_disks = du(&disks)?;
    let vf_base = du(&images)?;
    let overlay_du = du(&overlays)?;
    let copies_du = du(&copies)?;

    // The host is this machine: the base on the host should be the cache's
    // own file (hard link) or share its blocks (reflink), not a second copy.
    let same_inode = {
        use std::os::unix::fs::MetadataExt as _;
        let a = std::fs::metadata(base).context("stat base")?;
        let b = std::fs::metadata(&cached).context("stat cached image")?;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    };
    let extra_base = if same_inode { 0 } else { vf_base.allocated };
    let s = "2 apply";
    table.row(
        s,
        format!("host base: extra space beyond the cache (same inode: {same_inode})"),
        mib(extra_base),
        "the base image",
        mib(BASE_BYTES),
        Some(extra_base as f64 / BASE_BYTES as f64),
    );
    let base_name = format!("{APPLY_MACHINES} full copies");
    table.row(
        s,
        format!("virtfleet apply, {APPLY_MACHINES} machines"),
        ms(apply),
        &base_name,
        ms(copies_t),
        Some(ratio(apply, copies_t)),
    );
    table.row(
        s,
        "  of which base copy+hash (cp, sha256sum)",
        ms(copy_hash),
        &base_name,
        ms(copies_t),
        Some(ratio(copy_hash, copies_t)),
    );
    table.row(
        s,
        format!("{APPLY_MACHINES} overlay creations (qemu-img)"),
        ms(overlay_t),
        &base_name,
        ms(copies_t),
        Some(ratio(overlay_t, copies_t)),
    );
    table.row(
        s,
        "images lock (download+hash, once)",
        ms(lock_t),
        "",
        String::new(),
        None,
    );
    let space_base = format!("{APPLY_MACHINES} full copies (du -sb)");
    table.row(
        s,
        "disk space: virtfleet disks/ (du -sb)",
        mib(vf_disks.apparent),
        &space_base,
        mib(copies_du.apparent),
        Some(vf_disks.apparent as f64 / copies_du.apparent as f64),
    );
    table.row(
        s,
        "  + shared base in images/ (du -sb)",
        mib(vf_disks.apparent + vf_base.apparent),
        &space_base,
        mib(copies_du.apparent),
        Some((vf_disks.apparent + vf_base.apparent) as f64 / copies_du.apparent as f64),
    );
    table.row(
        s,
        "disk space: virtfleet disks/ (allocated)",
        mib(vf_disks.allocated),
        format!("{APPLY_MACHINES} full copies (allocated)"),
        mib(copies_du.allocated),
        Some(vf_disks.allocated as f64 / copies_du.allocated as f64),
    );
    table.row(
        s,
        "disk space: overlays (du -sb)",
        mib(overlay_du.apparent),
        &space_base,
        mib(copies_du.apparent),
        Some(overlay_du.apparent as f64 / copies_du.apparent as f64),
    );
    Ok(())
}

/// A raw image of exactly [`BASE_BYTES`]: the example image (1 MiB, so it
/// still boots), then xorshift noise so that copies cannot skip holes.
fn write_base_image(path: &Path, head: &[u8]) -> Result<()> {
    ensure!(head.len() as u64 == MIB, "the example image is not 1 MiB");
    let mut f =
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    f.write_all(head)
        .with_context(|| format!("write {}", path.display()))?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; MIB as usize];
    for _ in 1..BASE_BYTES / MIB {
        for word in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&chunk)
            .with_context(|| format!("write {}", path.display()))?;
    }
    f.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    /// `du -sb`: apparent size.
    apparent: u64,
    /// `du -s -B1`: blocks allocated.
    allocated: u64,
}

fn du(path: &Path) -> Result<Usage> {
    let bytes = |args: &[&str]| -> Result<u64> {
        let out = run_ok(Command::new("du").args(args).arg(path), "du")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("du {args:?} {}: unexpected output {text:?}", path.display()))
    };
    Ok(Usage {
        apparent: bytes(&["-sb"])?,
        allocated: bytes(&["-s", "-B1"])?,
    })
}

// ---------------------------------------------------------------------------
// Section 3

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn section_planner(table: &mut Table) -> Result<()> {
    let dir = tempfile::tempdir().context("create temp dir")?;
    let path = dir.path().join("fleet.dhall");
    let host = |n: &str| {
        format!(
            "V.Host::{{ name = \"{n}\", uri = \"qemu+ssh://root@{n}/system\", storage = V.Storage.Dir {{ path = \"/var/lib/virtfleet\" }} }}"
        )
    };
    let text = fleet_dhall(
        "bench",
        &[host("hv1"), host("hv2")],
        &image("debian-12", "https://example.org/debian-12.qcow2"),
        PLANNER_MACHINES,
        // No snapshot policy: `converged` builds disks without snapshots.
        r#"V.Machine::{ name = "vm-${Natural/show (i + 1)}", image = "debian-12", cpus = 2, memoryMiB = 2048, diskGiB = 20, host = Some (if Natural/even i then "hv1" else "hv2"), snapshots = V.Snapshots::{ init = False } }"#,
    );
    write(&path, &text)?;
    let t = Instant::now();
    let fleet = virtfleet::fleet::load(&path).map_err(|e| anyhow!("{e}\n--- fleet ---\n{text}"))?;
    eprintln!(
        "  setup: loaded {} machines in {} (not measured)",
        fleet.machines.len(),
        ms(t.elapsed())
    );
    ensure!(
        fleet.machines.len() == PLANNER_MACHINES,
        "wrong machine count"
    );
    let lock_text = format!(
        "format 1\n\nimage debian-12\n  url     https://example.org/debian-12.qcow2\n  sha256  {SHA}\n  \
         size    4096\n  format  qcow2\n  locked  2026-01-01T00:00:00Z\n"
    );
    let lock = ImageLock::parse(&lock_text, Path::new("images.lock")).map_err(|d| {
        anyhow!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let now = 1_900_000_000;
    let opts = Options {
        now,
        ..Options::default()
    };
    let observation = |states: Vec<(String, HostState)>| Observation {
        format_version: virtfleet::resources::observed::FORMAT_VERSION,
        fleet: fleet.name.to_string(),
        taken_at: now - 60,
        hosts: states
            .into_iter()
            .map(|(h, s)| (h, HostObservation::Reachable(s)))
            .collect(),
    };
    let converged_obs = observation(
        fleet
            .hosts
            .values()
            .map(|h| (h.name.to_string(), converged_state(&fleet, &lock, h)))
            .collect(),
    );
    let empty_obs = observation(
        fleet
            .hosts
            .values()
            .map(|h| (h.name.to_string(), HostState::default()))
            .collect(),
    );

    let plan_of = |obs: &Observation| -> (Duration, Plan) {
        let mut last = None;
        let best = best_of(RUNS, || {
            last = Some(virtfleet::plan::plan(&fleet, &lock, obs, opts));
            Ok(())
        })
        .expect("the planner cannot fail");
        (best, last.expect("planned at least once"))
    };
    let (noop, noop_plan) = plan_of(&converged_obs);
    ensure!(
        noop_plan.is_empty() && noop_plan.unreachable.is_empty(),
        "the converged observation does not plan to nothing: changes {:?}, {} pending, refused {:?}",
        noop_plan
            .changes
            .iter()
            .map(|c| format!("{} {:?}: {}", c.address, c.action, c.reason))
            .collect::<Vec<_>>(),
        noop_plan.pending.len(),
        noop_plan.refused
    );
    eprintln!("  plan, converged (no-op): best {}", ms(noop));
    let (create, create_plan) = plan_of(&empty_obs);
    ensure!(
        create_plan.refused.is_empty() && create_plan.pending.is_empty(),
        "the create-everything plan has refusals or pending changes: {:?}",
        create_plan.refused
    );
    let creates = create_plan
        .changes
        .iter()
        .filter(|c| matches!(c.action, virtfleet::plan::Action::DefineDomain { .. }))
        .count();
    ensure!(
        creates == PLANNER_MACHINES,
        "the create-everything plan defines {creates} domains, not {PLANNER_MACHINES}"
    );
    eprintln!(
        "  plan, empty observation ({} changes): best {}",
        create_plan.changes.len(),
        ms(create)
    );

    let clone_obs = best_of(BASELINE_RUNS, || {
        black_box(black_box(&converged_obs).clone());
        Ok(())
    })?;
    let json_obs = best_of(BASELINE_RUNS, || {
        black_box(serde_json::to_vec(black_box(&converged_obs))?);
        Ok(())
    })?;
    let json_plan = best_of(BASELINE_RUNS, || {
        black_box(serde_json::to_vec(black_box(&create_plan))?);
        Ok(())
    })?;

    let s = "3 planner";
    let n = PLANNER_MACHINES as f64;
    let per = |d: Duration| format!("{} ({:.4} ms/m)", ms(d), d.as_secs_f64() * 1e3 / n);
    table.row(
        s,
        format!("plan no-op, {PLANNER_MACHINES} machines"),
        per(noop),
        "clone the observation",
        ms(clone_obs),
        Some(ratio(noop, clone_obs)),
    );
    table.row(
        s,
        format!("plan no-op, {PLANNER_MACHINES} machines"),
        per(noop),
        "observation to JSON",
        ms(json_obs),
        Some(ratio(noop, json_obs)),
    );
    table.row(
        s,
        format!("plan create-all, {PLANNER_MACHINES} machines"),
        per(create),
        format!("its plan to JSON ({} changes)", create_plan.changes.len()),
        ms(json_plan),
        Some(ratio(create, json_plan)),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Fleets

/// A fleet file: `machines` is `count` machines made by `machine`, a Dhall
/// expression in the Natural `i` (0-based), through `Natural/fold`.
fn fleet_dhall(name: &str, hosts: &[String], image: &str, count: usize, machine: &str) -> String {
    let mut s = String::new();
    write!(
        s,
        r#"let V = {PACKAGE}

let mk = \(i : Natural) -> {machine}

let machines =
      Natural/fold
        {count}
        (List V.Machine.Type)
        ( \(acc : List V.Machine.Type) ->
            acc # [ mk (List/length V.Machine.Type acc) ]
        )
        ([] : List V.Machine.Type)

in  V.Fleet::{{
    , name = "{name}"
    , hosts = [ {hosts} ]
    , images = [ {image} ]
    , machines
    }}
"#,
        hosts = hosts.join("\n      , "),
    )
    .expect("write to String");
    s
}

/// The one host of sections 1 and 2: this machine, software emulation.
fn local_host(storage: &Path) -> String {
    format!(
        "V.Host::{{ name = \"local\", uri = \"{URI}\", storage = V.Storage.Dir {{ path = \"{}\" }}, domainType = V.DomainType.Qemu, cpuMode = V.CpuMode.Default, network = V.Network.User }}",
        storage.display()
    )
}

fn image(name: &str, url: &str) -> String {
    let format = if url.ends_with(".qcow2") {
        "Qcow2"
    } else {
        "Raw"
    };
    format!("V.Image::{{ name = \"{name}\", url = \"{url}\", format = V.ImageFormat.{format} }}")
}

// ---------------------------------------------------------------------------
// Processes

/// The virtfleet binary built by `cargo build --release` next to this bench:
/// benches run from target/<profile>/deps, the binary is target/<profile>/virtfleet.
fn virtfleet_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("VIRTFLEET_BENCH_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("locate the bench binary")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("virtfleet"))
        .context("the bench binary has no grandparent directory")?;
    if !bin.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first (benches cannot ask cargo for the binary)",
            bin.display()
        );
    }
    let built = modified(&bin)?;
    if let Some(newer) = newest_source(&Path::new(MANIFEST_DIR).join("src"))?
        && newer.1 > built
    {
        eprintln!(
            "warning: {} is newer than {}; run `cargo build --release` to measure the current sources",
            newer.0.display(),
            bin.display()
        );
    }
    Ok(bin)
}

fn modified(p: &Path) -> Result<SystemTime> {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .with_context(|| format!("stat {}", p.display()))
}

/// The most recently modified file under `dir`.
fn newest_source(dir: &Path) -> Result<Option<(PathBuf, SystemTime)>> {
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        let candidate = if path.is_dir() {
            newest_source(&path)?
        } else {
            Some((path.clone(), modified(&path)?))
        };
        if let Some(c) = candidate
            && newest.as_ref().is_none_or(|n| c.1 > n.1)
        {
            newest = Some(c);
        }
    }
    Ok(newest)
}

fn repo(p: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(p)
}

fn ensure_libvirtd() -> Result<()> {
    run_ok(
        &mut Command::new(repo("scripts/libvirtd-start")),
        "start libvirtd",
    )?;
    Ok(())
}

fn sync() -> Result<()> {
    run_ok(&mut Command::new("sync"), "sync")?;
    Ok(())
}

/// The virtfleet binary with one fleet and a private cache; the user's
/// VIRTFLEET_* settings are ignored.
struct Vf {
    bin: PathBuf,
    fleet: PathBuf,
    cache: PathBuf,
}

impl Vf {
    fn new(bin: &Path, fleet: &Path, cache: &Path) -> Result<Vf> {
        mkdir(cache)?;
        Ok(Vf {
            bin: bin.into(),
            fleet: fleet.into(),
            cache: cache.into(),
        })
    }

    fn run(&self, args: &[&str], codes: &[i32]) -> Result<Output> {
        let mut cmd = Command::new(&self.bin);
        for var in [
            "VIRTFLEET_FLEET",
            "VIRTFLEET_LOCK",
            "VIRTFLEET_CACHE_DIR",
            "VIRTFLEET_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1")
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("-f")
            .arg(&self.fleet)
            .args(args);
        run_expect(&mut cmd, codes, &format!("virtfleet {}", args.join(" ")))
    }
}

// ---------------------------------------------------------------------------
// Cleanup

/// Removes every `vfbench-*` domain and everything under [`ROOT`] when made,
/// on request, and when dropped (also while unwinding from a panic).
struct Guard;

impl Guard {
    fn new() -> Result<Guard> {
        let g = Guard;
        g.clean()?;
        report::make_disk_root(Path::new(ROOT))?;
        Ok(g)
    }

    fn clean(&self) -> Result<()> {
        virt::error::clear_error_callback();
        let conn =
            virt::connect::Connect::open(Some(URI)).map_err(|e| anyhow!("{URI}: connect: {e}"))?;
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| anyhow!("{URI}: list domains: {e}"))?;
        for d in &domains {
            let Ok(name) = d.name() else { continue };
            if !name.starts_with(PREFIX) {
                continue;
            }
            if d.is_active().unwrap_or(false) {
                let _ = d.destroy();
            }
            let flags = virt::sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM;
            d.undefine_flags(flags)
                .or_else(|_| d.undefine())
                .map_err(|e| anyhow!("{URI}: undefine {name}: {e}"))?;
        }
        drop(domains);
        drop(conn);
        let left = bench_domains(PREFIX)?;
        ensure!(left.is_empty(), "domains left after cleanup: {left:?}");
        match std::fs::remove_dir_all(ROOT) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {ROOT}")),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        match self.clean() {
            Ok(()) => eprintln!("cleaned up: no {PREFIX}* domains, no {ROOT}"),
            Err(e) => eprintln!(
                "WARNING: cleanup failed, remove {PREFIX}* domains and {ROOT} by hand: {e:#}"
            ),
        }
    }
}

/// Names of the domains on [`URI`] starting with `prefix`, through virsh
/// (an independent witness).
fn bench_domains(prefix: &str) -> Result<Vec<String>> {
    report::domains_named(URI, prefix)
}

// ---------------------------------------------------------------------------
// Measuring and reporting

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / MIB as f64)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
