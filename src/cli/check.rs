//! `virtfleet check`: evaluate and validate the fleet and the lockfile
//! without contacting any host; report every problem at once.

use super::{Context, EXIT_ERROR, EXIT_OK};
use crate::diag::Diagnostic;
use crate::fleet::LoadError;
use crate::lock::{ImageLock, LockError};
use crate::ui::{ERROR, OK, WARN};

/// Validate fleet.dhall and images.lock (no host is contacted).
///
/// Evaluates the Dhall (remote imports are refused; every imported file is
/// checked and named in errors with its import chain), checks names,
/// references, sizes, capacity, disk names, host URIs, sshTarget and storage
/// locations, then checks that every image the fleet uses is pinned in
/// images.lock with the same URL and format and fits its machines' root
/// disks. Every problem is listed, each with its file, line when known, and
/// the machine, host or image at fault. Exit status: 0 valid, 1 problems found.
///
/// Evaluation is bounded: VIRTFLEET_EVAL_TIMEOUT (seconds or e.g. 5m,
/// default 60) stops a pathological file with an error, and an evaluation
/// over 2 s prints a note (see "Large fleets" in the README).
///
/// Example:
///   virtfleet check -f examples/homelab.dhall
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(ctx: &Context, _args: Args) -> anyhow::Result<u8> {
    // Every problem at once: a fleet that cannot be evaluated and a lock
    // that cannot be read are both reported, each as it is.
    let mut problems: Vec<String> = Vec::new();
    let mut hints: Vec<&str> = Vec::new();
    let fleet = match super::load_fleet_timed(ctx) {
        Ok(f) => Some(f),
        Err(LoadError::Invalid(d)) => {
            problems.extend(d.0.iter().map(Diagnostic::to_string));
            None
        }
        Err(LoadError::Eval(e)) => {
            problems.push(e.to_string());
            hints.extend(crate::ui::fleet_hint(&e));
            None
        }
    };
    let lock = match ImageLock::read(&ctx.lock) {
        Ok(l) => Some(l),
        Err(LockError::Invalid(d)) => {
            problems.extend(d.0.iter().map(Diagnostic::to_string));
            None
        }
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let mut warnings = Vec::new();
    if let (Some(fleet), Some(lock)) = (&fleet, &lock) {
        let found = lock.check_against(fleet, &ctx.lock);
        problems.extend(found.iter().map(Diagnostic::to_string));
        warnings.extend(lock.unused(fleet).map(|n| {
            format!(
                "{}: image {:?} is pinned but no longer in the fleet (kept)",
                ctx.lock.display(),
                n.as_str()
            )
        }));
    }
    for w in &warnings {
        anstream::eprintln!("{WARN}warning{WARN:#}: {w}");
    }
    if !problems.is_empty() {
        let n = problems.len();
        anstream::eprintln!(
            "{ERROR}error{ERROR:#}: {n} problem{} found:",
            if n == 1 { "" } else { "s" }
        );
        for p in &problems {
            anstream::eprintln!("  {p}");
        }
        for h in hints {
            crate::ui::print_hint(h);
        }
        return Ok(EXIT_ERROR);
    }
    let fleet = fleet.expect("no problems means the fleet loaded");
    anstream::println!(
        "{OK}ok{OK:#}: {} (fleet {:?}): {} host{}, {} image{}, {} machine{}; {} consistent",
        ctx.fleet.display(),
        fleet.name.as_str(),
        fleet.hosts.len(),
        plural(fleet.hosts.len()),
        fleet.images.len(),
        plural(fleet.images.len()),
        fleet.machines.len(),
        plural(fleet.machines.len()),
        ctx.lock.display()
    );
    Ok(EXIT_OK)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
