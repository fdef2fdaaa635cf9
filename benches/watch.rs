//! `virtfleet watch` benchmark against the real libvirtd, every figure
//! shown as a ratio to a baseline measured in the same run.
//!
//! 1. Idle cost: `watch` (default settings: 5 min resync) over a host with
//!    20 machines, after its first pass, for a window of
//!    `VIRTFLEET_BENCH_IDLE_SECS` seconds (default 60: the 5
//!    minutes cut to one; the process does nothing between resyncs, so the
//!    rate is the same): CPU time per minute and resident memory, against
//!    one no-op `plan` of the same fleet (CPU time, peak RSS).
//! 2. One resync with nothing to do (`--resync 2s`, the host pass's own
//!    wall time from the log, median of 10, and the process's CPU time per
//!    resync), against a no-op `plan` process (wall median of 10, CPU).
//! 3. Latency from a saved edit (one machine added to an imported file,
//!    saved by rename, default 300 ms debounce) to the host converged
//!    (`event=pass.done outcome=converged`: steps done and the convergence
//!    check passed), median of 10, against the same edit made and applied
//!    by an `apply --unattended` process (from the save to its exit).
//!
//! The machines are stopped (`power = Stopped`): the figures are
//! virtfleet's, not QEMU's (a running TCG guest costs a core here).
//!
//! Run with `cargo build --release && cargo bench --bench watch` as root,
//! with libvirt and QEMU (`scripts/setup`; GNU time for the baselines).
//! `VIRTFLEET_BENCH_BIN=PATH` measures another binary. Everything lives in
//! domains named `vfbwatch-*` and under /var/lib/virtfleet-bench-watch/,
//! removed before, after, and on failure.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "report.rs"]
mod report;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use common::{Behaviour, TestServer};
use report::{Table, mkdir, ms, run_expect, run_ok, write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const URI: &str = "qemu:///system";
const PREFIX: &str = "vfbwatch-";
const ROOT: &str = "/var/lib/virtfleet-bench-watch";
const PACKAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dhall/package.dhall");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const MACHINES: usize = 20;
const SAMPLES: usize = 10;

fn main() {
    let mut table = Table::default();
    let result = run(&mut table);
    table.print(
        "ratio = value / baseline value. Medians of 10 unless said; machines stopped; \
         against qemu:///system (shared with other users, so single slow samples happen). \
         CPU times are counted in 10 ms clock ticks (by /proc for watch, by GNU time for \
         plan), so CPU figures under ~50 ms are coarse; a value with < is a bound, and so is \
         its ratio. The latency includes the 300 ms \
         debounce and the pass's convergence check (a second observation).",
    );
    if let Err(e) = result {
        eprintln!("\nbench watch FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn run(table: &mut Table) -> Result<()> {
    let bin = virtfleet_bin()?;
    eprintln!("virtfleet binary: {}", bin.display());
    run_ok(
        &mut Command::new(repo("scripts/libvirtd-start")),
        "start libvirtd",
    )?;
    let _guard = Guard::new()?;
    let dir = Path::new(ROOT).join("lab");
    let serve = dir.join("serve");
    mkdir(&serve)?;
    run_ok(
        Command::new(repo("scripts/example-image")).arg(&serve),
        "build the example image",
    )?;
    let server = TestServer::with([("/tiny.img", Behaviour::File(serve.join("tiny.img")))]);
    let lab = Lab {
        bin,
        dir: dir.clone(),
    };
    write(
        &lab.fleet(),
        &format!(
            "let V = {PACKAGE}\nin V.Fleet::{{ name = \"vfbwatch\", hosts = [ V.Host::{{ name = \"local\", uri = \"{URI}\", storage = V.Storage.Dir {{ path = \"{}\" }}, domainType = V.DomainType.Qemu, cpuMode = V.CpuMode.Default, network = V.Network.User }} ]\n, images = [ V.Image::{{ name = \"tiny\", url = \"{}\", format = V.ImageFormat.Raw }} ]\n, machines = ./machines.dhall\n}}\n",
            Path::new(ROOT).join("storage").display(),
            server.url("/tiny.img"),
        ),
    )?;
    let mut names: Vec<String> = (1..=MACHINES).map(|i| format!("{PREFIX}m{i}")).collect();
    lab.save_machines(&names)?;
    lab.vf(&["images", "lock"], &[0])?;
    let t = Instant::now();
    lab.vf(&["apply", "--unattended", "--shutdown-timeout", "1s"], &[0])?;
    eprintln!("setup: {MACHINES} machines created in {}", ms(t.elapsed()));

    // Baselines: a no-op plan of the same fleet, as a process.
    let mut plan_wall = Vec::new();
    let mut plan_cpu = Vec::new();
    let mut plan_rss = Vec::new();
    for _ in 0..SAMPLES {
        let (wall, cpu, rss) = lab.timed(&["plan", "--detailed-exitcode"], &[0])?;
        plan_wall.push(wall);
        plan_cpu.push(cpu);
        plan_rss.push(rss);
    }
    let plan_wall = median(&mut plan_wall);
    let plan_cpu = median(&mut plan_cpu);
    let plan_rss = median_u64(&mut plan_rss);

    // 1. Idle.
    let idle = std::env::var("VIRTFLEET_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60u64);
    eprintln!("\n== 1. idle watch, {MACHINES} machines, {idle} s ==");
    let w = Watch::start(&lab, &[], "idle.log")?;
    w.wait_converged(1, Duration::from_secs(120))?;
    let (cpu0, _) = proc_usage(w.pid())?;
    std::thread::sleep(Duration::from_secs(idle));
    let (cpu1, rss) = proc_usage(w.pid())?;
    drop(w);
    // /proc counts CPU time in clock ticks (10 ms): none in the window is
    // "less than one tick", not zero, and the figure (and its ratio) is
    // that bound.
    let (used, bound) = if cpu1 == cpu0 {
        (tick()?, "< ")
    } else {
        (cpu1 - cpu0, "")
    };
    let per_min = used.mul_f64(60.0 / idle as f64);
    let per_min_text = format!("{bound}{}", ms(per_min));
    table.row(
        "1 idle",
        format!("watch CPU per minute idle ({idle} s window)"),
        per_min_text,
        "one no-op plan: CPU",
        ms(plan_cpu),
        Some(per_min.as_secs_f64() / plan_cpu.as_secs_f64()),
    );
    table.row(
        "1 idle",
        "watch resident memory after the window",
        mib(rss),
        "one no-op plan: peak RSS",
        mib(plan_rss),
        Some(rss as f64 / plan_rss as f64),
    );

    // 2. Resync with nothing to do.
    eprintln!("\n== 2. resync with nothing to do ==");
    let w = Watch::start(&lab, &["--resync", "2s"], "resync.log")?;
    w.wait_converged(1, Duration::from_secs(120))?;
    let (cpu0, _) = proc_usage(w.pid())?;
    w.wait_converged(1 + SAMPLES, Duration::from_secs(120))?;
    let (cpu1, _) = proc_usage(w.pid())?;
    let mut secs: Vec<Duration> = w
        .log()
        .lines()
        .filter(|l| l.contains("event=pass.done") && l.contains("outcome=converged"))
        .skip(1)
        .take(SAMPLES)
        .map(|l| field(l, "seconds").map(Duration::from_secs_f64))
        .collect::<Result<_>>()?;
    ensure!(
        w.log().matches("reason=resync").count() >= SAMPLES,
        "expected {SAMPLES} resync passes:\n{}",
        w.log()
    );
    drop(w);
    let pass = median(&mut secs);
    table.row(
        "2 resync",
        "one idle resync: host pass wall",
        ms(pass),
        "no-op plan process: wall",
        ms(plan_wall),
        Some(pass.as_secs_f64() / plan_wall.as_secs_f64()),
    );
    let cpu_per = (cpu1 - cpu0) / SAMPLES as u32;
    table.row(
        "2 resync",
        "one idle resync: watch CPU (mean of 10)",
        ms(cpu_per),
        "no-op plan process: CPU",
        ms(plan_cpu),
        Some(cpu_per.as_secs_f64() / plan_cpu.as_secs_f64()),
    );

    // 3. Latency from a save to a converged host.
    eprintln!("\n== 3. latency: saved edit -> converged ==");
    let w = Watch::start(&lab, &["--resync", "1h"], "latency.log")?;
    w.wait_converged(1, Duration::from_secs(120))?;
    let mut lat = Vec::new();
    for i in 0..SAMPLES {
        names.push(format!("{PREFIX}w{i}"));
        let before = w.converged();
        let t = Instant::now();
        lab.save_machines(&names)?;
        w.wait_converged(before + 1, Duration::from_secs(120))?;
        lat.push(t.elapsed());
        ensure!(
            domains()?.contains(names.last().unwrap()),
            "{} not defined after its pass",
            names.last().unwrap()
        );
    }
    drop(w);
    let mut base = Vec::new();
    for i in 0..SAMPLES {
        names.push(format!("{PREFIX}a{i}"));
        let t = Instant::now();
        lab.save_machines(&names)?;
        lab.vf(&["apply", "--unattended", "--shutdown-timeout", "1s"], &[0])?;
        base.push(t.elapsed());
    }
    let lat_m = median(&mut lat);
    let base_m = median(&mut base);
    eprintln!(
        "  watch latencies: {:?}",
        lat.iter().map(|d| ms(*d)).collect::<Vec<_>>()
    );
    table.row(
        "3 latency",
        "save -> converged, watch (debounce 300 ms)",
        ms(lat_m),
        "save -> apply --unattended exits",
        ms(base_m),
        Some(lat_m.as_secs_f64() / base_m.as_secs_f64()),
    );
    Ok(())
}

struct Lab {
    bin: PathBuf,
    dir: PathBuf,
}

impl Lab {
    fn fleet(&self) -> PathBuf {
        self.dir.join("fleet.dhall")
    }

    /// machines.dhall, saved by rename as editors do.
    fn save_machines(&self, names: &[String]) -> Result<()> {
        let list: Vec<String> = names
            .iter()
            .map(|n| format!("V.Machine::{{ name = \"{n}\", image = \"tiny\", memoryMiB = 64, diskGiB = 1, power = V.Power.Stopped, autostart = False }}"))
            .collect();
        let tmp = self.dir.join("machines.dhall.swp");
        write(
            &tmp,
            &format!(
                "let V = {PACKAGE}\nin [ {} ] : List V.Machine.Type\n",
                list.join(", ")
            ),
        )?;
        std::fs::rename(&tmp, self.dir.join("machines.dhall")).context("rename machines.dhall")
    }

    fn command(&self, args: &[&str]) -> Command {
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
            .arg(self.dir.join("cache"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("-f")
            .arg(self.fleet())
            .args(args);
        cmd
    }

    fn vf(&self, args: &[&str], codes: &[i32]) -> Result<Output> {
        run_expect(
            &mut self.command(args),
            codes,
            &format!("virtfleet {}", args.join(" ")),
        )
    }

    /// Wall time, CPU time (user + system) and peak RSS of one run, through GNU time.
    fn timed(&self, args: &[&str], codes: &[i32]) -> Result<(Duration, Duration, u64)> {
        let inner = self.command(args);
        let mut cmd = Command::new("/usr/bin/time");
        cmd.args(["-f", "VFTIME %U %S %M"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))));
        for (k, v) in inner.get_envs() {
            if v.is_none() {
                cmd.env_remove(k);
            }
        }
        let t = Instant::now();
        let out = run_expect(&mut cmd, codes, &format!("virtfleet {}", args.join(" ")))?;
        let wall = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("VFTIME "))
            .ok_or_else(|| anyhow!("no GNU time output in:\n{err}"))?;
        let f: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse::<f64>().map_err(|e| anyhow!("{x}: {e}")))
            .collect::<Result<_>>()?;
        ensure!(f.len() == 3, "GNU time said {line}");
        Ok((
            wall,
            Duration::from_secs_f64(f[0] + f[1]),
            (f[2] * 1024.0) as u64,
        ))
    }
}

/// A running `watch`, its stderr in a file.
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Watch {
    fn start(lab: &Lab, args: &[&str], log: &str) -> Result<Watch> {
        let log = lab.dir.join(log);
        let mut all = vec!["watch", "--shutdown-timeout", "1s"];
        all.extend_from_slice(args);
        let child = lab
            .command(&all)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("start watch")?;
        Ok(Watch { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn converged(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("event=pass.done") && l.contains("outcome=converged"))
            .count()
    }

    /// Polls (every 5 ms) until `n` converged passes are logged.
    fn wait_converged(&self, n: usize, limit: Duration) -> Result<()> {
        let t = Instant::now();
        while self.converged() < n {
            if t.elapsed() > limit {
                bail!("no {n} converged passes after {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) and resident set size of a live process.
fn proc_usage(pid: u32) -> Result<(Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at 3.
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz = 1.0 / tick()?.as_secs_f64();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?
        .parse()?;
    Ok((Duration::from_secs_f64(ticks as f64 / hz), rss_kb * 1024))
}

/// One clock tick, the unit of /proc's CPU times.
fn tick() -> Result<Duration> {
    let hz = run_ok(Command::new("getconf").arg("CLK_TCK"), "getconf")?;
    let hz: f64 = String::from_utf8_lossy(&hz.stdout).trim().parse()?;
    Ok(Duration::from_secs_f64(1.0 / hz))
}

fn field(line: &str, key: &str) -> Result<f64> {
    line.split(' ')
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .ok_or_else(|| anyhow!("no {key}= in {line}"))?
        .parse()
        .with_context(|| format!("{key} in {line}"))
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort();
    v[v.len() / 2]
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn repo(p: &str) -> PathBuf {
    Path::new(MANIFEST_DIR).join(p)
}

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
    ensure!(
        bin.is_file(),
        "{} not found: run `cargo build --release` first",
        bin.display()
    );
    Ok(bin)
}

fn domains() -> Result<Vec<String>> {
    report::domains_named(URI, PREFIX)
}

/// Removes every `vfbwatch-*` domain and [`ROOT`] when made and when dropped.
struct Guard;

impl Guard {
    fn new() -> Result<Guard> {
        let g = Guard;
        g.clean()?;
        report::make_disk_root(Path::new(ROOT))?;
        Ok(g)
    }

    fn clean(&self) -> Result<()> {
        report::remove_domains(URI, PREFIX)?;
        report::remove_tree(Path::new(ROOT))
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
