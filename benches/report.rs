//! What every benchmark harness here shares: running commands, timing the
//! best of several runs, and one table of figures with their ratios against
//! a baseline measured in the same run. Included by each bench with
//! `#[path = "report.rs"] mod report;` (benches are separate crates).

#![allow(dead_code)] // each bench uses its own part of the kit

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Runs `cmd`; fails unless it exits with one of `codes`, quoting its output.
pub fn run_expect(cmd: &mut Command, codes: &[i32], what: &str) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {desc}"))?;
    if out.status.code().is_some_and(|c| codes.contains(&c)) {
        return Ok(out);
    }
    bail!(
        "{what}: {desc} exited with {} (expected {codes:?})\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.status,
        tail(&out.stderr),
        tail(&out.stdout)
    )
}

pub fn run_ok(cmd: &mut Command, what: &str) -> Result<Output> {
    run_expect(cmd, &[0], what)
}

/// The last 8 KiB of a command's output, as text.
pub fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let max = 8192;
    if text.len() <= max {
        return text.into_owned();
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[...]{}", &text[cut..])
}

/// Runs `f` `runs` times and returns the fastest run.
pub fn best_of(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// `0.298x`, or `1/5330` when the value is under a hundredth of the baseline.
pub fn ratio_text(x: f64) -> String {
    if x > 0.0 && x < 0.01 {
        format!("1/{:.0}", 1.0 / x)
    } else {
        format!("{x:.3}x")
    }
}

pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 1.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.4} ms")
    }
}

pub fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).with_context(|| format!("create {}", p.display()))
}

pub fn write(p: &Path, text: &str) -> Result<()> {
    std::fs::write(p, text).with_context(|| format!("write {}", p.display()))
}

pub struct Row {
    section: String,
    what: String,
    value: String,
    baseline: String,
    base_value: String,
    ratio: Option<f64>,
}

#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    pub fn row(
        &mut self,
        section: impl Into<String>,
        what: impl Into<String>,
        value: String,
        baseline: impl Into<String>,
        base_value: String,
        ratio: Option<f64>,
    ) {
        self.rows.push(Row {
            section: section.into(),
            what: what.into(),
            value,
            baseline: baseline.into(),
            base_value,
            ratio,
        });
    }

    /// Prints the table, then `footer` (what the ratios and times mean).
    pub fn print(&self, footer: &str) {
        if self.rows.is_empty() {
            return;
        }
        let w = |f: fn(&Row) -> usize, title: &str| {
            self.rows.iter().map(f).max().unwrap_or(0).max(title.len())
        };
        let ws = w(|r| r.section.len(), "section");
        let ww = w(|r| r.what.len(), "measurement");
        let wv = w(|r| r.value.len(), "value");
        let wb = w(|r| r.baseline.len(), "baseline");
        let wbv = w(|r| r.base_value.len(), "baseline value");
        println!();
        println!(
            "{:<ws$}  {:<ww$}  {:>wv$}  {:<wb$}  {:>wbv$}  {:>9}",
            "section", "measurement", "value", "baseline", "baseline value", "ratio"
        );
        println!("{}", "-".repeat(ws + ww + wv + wb + wbv + 9 + 10));
        for r in &self.rows {
            let ratio = r.ratio.map_or_else(|| "-".to_owned(), ratio_text);
            println!(
                "{:<ws$}  {:<ww$}  {:>wv$}  {:<wb$}  {:>wbv$}  {:>9}",
                r.section, r.what, r.value, r.baseline, r.base_value, ratio
            );
        }
        println!();
        println!("{footer}");
    }
}

/// The domains on `uri` whose names start with `prefix`, sorted, through
/// virsh (a witness independent of the binary measured).
pub fn domains_named(uri: &str, prefix: &str) -> Result<Vec<String>> {
    let out = run_ok(
        Command::new("virsh").args(["-c", uri, "list", "--all", "--name"]),
        "virsh list",
    )?;
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    names.sort();
    Ok(names)
}

/// Destroys and undefines every domain on `uri` named with `prefix`, then
/// checks through virsh that none is left.
pub fn remove_domains(uri: &str, prefix: &str) -> Result<()> {
    for name in domains_named(uri, prefix)? {
        // Not running is fine: the undefine below is what must succeed.
        let _ = Command::new("virsh")
            .args(["-c", uri, "destroy", &name])
            .output();
        run_ok(
            Command::new("virsh").args([
                "-c",
                uri,
                "undefine",
                &name,
                "--snapshots-metadata",
                "--managed-save",
            ]),
            "virsh undefine",
        )?;
    }
    let left = domains_named(uri, prefix)?;
    anyhow::ensure!(left.is_empty(), "domains left after cleanup: {left:?}");
    Ok(())
}

/// Removes `dir` and everything in it; not being there is fine.
pub fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", dir.display())),
    }
}

/// Makes `dir` (with its parents) and opens it to everyone for reading and
/// traversal: QEMU runs as libvirt-qemu and must reach the disks under it.
pub fn make_disk_root(dir: &Path) -> Result<()> {
    mkdir(dir)?;
    run_ok(Command::new("chmod").arg("0755").arg(dir), "chmod")?;
    Ok(())
}
