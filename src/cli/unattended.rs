//! The unattended policy, in one place: what `apply --unattended`, a
//! systemd timer and `watch` do when nobody is there to ask.
//!
//! An unattended pass never prompts. It observes (every host, or one),
//! plans with exactly the permissions the fleet's settings or the command's
//! flags grant, records what the observation found in the fleet's history
//! (changes withheld for lack of permission as `pending` findings), applies
//! the rest, observes again and says which of four things happened
//! ([`Verdict`]). `none` and `live` changes are always applied; `restart`
//! and `destructive` ones only when allowed, and the executor checks that
//! permission again before each step: a disruptive change is never made
//! because a timer fired.

use super::Context;
use crate::apply::{Events, OnFailure, Outcome, Permits, Settings};
use crate::fleet::Fleet;
use crate::lock::ImageLock;
use crate::plan::Plan;
use crate::resources::observed::Observation;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// How an unattended pass ended, worst first in [`Verdict::worst`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Every host observed, nothing left to do.
    Converged,
    /// Everything allowed was applied; changes wait for a permission.
    Pending,
    /// Some host could not be observed (the others were handled).
    Incomplete,
    /// A step failed, the plan was refused, the fleet did not load, or
    /// the hosts did not converge.
    Error,
}

impl Verdict {
    /// Every verdict, for metrics (each gets a 0/1 sample).
    pub const ALL: [Verdict; 4] = [
        Verdict::Converged,
        Verdict::Pending,
        Verdict::Incomplete,
        Verdict::Error,
    ];

    /// Lowercase name, as metrics and logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Converged => "converged",
            Verdict::Pending => "pending",
            Verdict::Incomplete => "incomplete",
            Verdict::Error => "error",
        }
    }

    /// The process exit status: 0, 4, 3, 1 (see `apply --help`).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Converged => super::EXIT_OK,
            Verdict::Pending => super::EXIT_PENDING,
            Verdict::Incomplete => super::EXIT_INCOMPLETE,
            Verdict::Error => super::EXIT_ERROR,
        }
    }

    /// The worse of two verdicts.
    pub fn worst(self, other: Verdict) -> Verdict {
        self.max(other)
    }
}

/// What one unattended pass did: the figures metrics and logs report.
#[derive(Debug, Clone)]
pub struct Pass {
    /// How it ended.
    pub verdict: Verdict,
    /// Unix seconds when it finished.
    pub finished_at: u64,
    /// Wall time of the pass (observe, apply, observe again).
    pub duration: Duration,
    /// Changes carried out, by disruption class.
    pub applied: BTreeMap<&'static str, u64>,
    /// Changes that failed.
    pub failed: u64,
    /// Changes left pending for lack of permission, by class.
    pub pending: BTreeMap<&'static str, u64>,
    /// Differences the first observation found (changes and pending).
    pub drift: u64,
    /// Hosts that could not be observed, with why.
    pub unreachable: BTreeMap<String, String>,
    /// Why the verdict is an error, for the log.
    pub error: Option<String>,
}

impl Pass {
    /// A pass that failed before any host was contacted (the fleet did
    /// not load, the run lock was held).
    pub fn failed_early(error: String) -> Pass {
        Pass {
            verdict: Verdict::Error,
            finished_at: super::now(),
            duration: Duration::ZERO,
            applied: BTreeMap::new(),
            failed: 0,
            pending: BTreeMap::new(),
            drift: 0,
            unreachable: BTreeMap::new(),
            error: Some(error),
        }
    }
}

/// What an unattended run may do beyond `none` and `live` changes.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `--allow-restart` (or the fleet's `allowRestart`).
    pub allow_restart: bool,
    /// `--allow-destroy` (or the fleet's `allowDestroy`).
    pub allow_destroy: bool,
    /// ACPI shutdown grace before a guest is powered off.
    pub shutdown_grace: Duration,
}

/// One unattended pass over `scope` (one host by name, or every host) of
/// `fleet`. The caller holds the fleet's run lock. `stop`, once set, lets
/// the steps in flight finish and starts no new one; `command` is how the
/// run is named in the history.
#[allow(clippy::too_many_arguments)]
pub fn reconcile(
    ctx: &Context,
    fleet: &Fleet,
    lock: &ImageLock,
    policy: Policy,
    scope: Option<&str>,
    events: &dyn Events,
    stop: Option<&'static AtomicBool>,
    command: &str,
) -> Pass {
    let started = Instant::now();
    let opts = crate::plan::Options {
        now: super::now(),
        allow_destroy: policy.allow_destroy || fleet.settings.allow_destroy,
        allow_restart: policy.allow_restart || fleet.settings.allow_restart,
        source: crate::plan::Source::Live,
        show_user_data: false,
    };
    let plan = plan_scope(fleet, lock, scope, opts);
    let drift = (plan.changes.len() + plan.pending.len()) as u64;
    let store = (!ctx.no_history)
        .then(|| crate::state::Store::open(&ctx.state_dir, fleet.name.as_str()).ok())
        .flatten();
    if plan.changes.is_empty()
        && let Some(store) = &store
    {
        // Nothing to run, so no run row: the findings (pending changes,
        // unreachable hosts) are still recorded.
        if let Err(e) = store.record_findings(&plan, plan.inputs.observed_at) {
            tracing::warn!(error = %e, "could not record findings");
        }
    }
    drop(store);
    let mut pass = Pass {
        verdict: Verdict::Converged,
        finished_at: 0,
        duration: Duration::ZERO,
        applied: BTreeMap::new(),
        failed: 0,
        pending: BTreeMap::new(),
        drift,
        unreachable: BTreeMap::new(),
        error: None,
    };
    if !plan.refused.is_empty() {
        let what: Vec<String> = plan
            .refused
            .iter()
            .map(|r| format!("{}: {}", r.address, r.message))
            .collect();
        pass.error = Some(format!("the plan has refusals: {}", what.join("; ")));
    }
    let mut after = plan.clone();
    if plan.refused.is_empty() && !plan.changes.is_empty() {
        let settings = Settings {
            now: plan.inputs.now,
            shutdown_grace: policy.shutdown_grace,
            on_failure: OnFailure::Continue,
            break_lock: ctx.break_lock,
            permits: Permits {
                destroy: opts.allow_destroy,
                restart: opts.allow_restart,
            },
            concurrency: ctx.concurrency,
            stop,
        };
        let report =
            super::execute::run_recorded(ctx, &plan, fleet, lock, settings, command, events);
        let class: BTreeMap<&str, &'static str> = plan
            .changes
            .iter()
            .map(|c| (c.address.as_str(), c.disruption.as_str()))
            .collect();
        let mut failures = Vec::new();
        let mut skipped = 0;
        for (_, s) in report.steps() {
            match &s.outcome {
                Outcome::Done => {
                    let c = class.get(s.address.as_str()).copied().unwrap_or("none");
                    *pass.applied.entry(c).or_default() += 1;
                }
                Outcome::Failed { message, .. } => {
                    pass.failed += 1;
                    failures.push(format!("{}: {message}", s.address));
                }
                Outcome::Skipped => skipped += 1,
            }
        }
        if !failures.is_empty() {
            pass.error = Some(failures.join("; "));
        } else if skipped > 0 {
            pass.error = Some(format!("stopped with {skipped} change(s) not done"));
        }
        // The convergence check, with the same permissions and the same
        // `now` (a period boundary passing must not look like a failure).
        after = plan_scope(fleet, lock, scope, opts);
        if pass.error.is_none() && !after.changes.is_empty() {
            pass.error = Some(format!(
                "did not converge: {} change(s) still to do",
                after.changes.len()
            ));
        }
    }
    for p in &after.pending {
        *pass
            .pending
            .entry(p.change.disruption.as_str())
            .or_default() += 1;
    }
    pass.unreachable = after.unreachable.clone();
    pass.verdict = if pass.error.is_some() {
        Verdict::Error
    } else if !pass.unreachable.is_empty() {
        Verdict::Incomplete
    } else if !pass.pending.is_empty() {
        Verdict::Pending
    } else {
        Verdict::Converged
    };
    pass.duration = started.elapsed();
    pass.finished_at = super::now();
    pass
}

/// Observes `scope` and plans it. A one-host pass plans from an
/// observation of that host only; the other hosts' "not in the
/// observation" is not a finding of this pass, so it is dropped.
fn plan_scope(
    fleet: &Fleet,
    lock: &ImageLock,
    scope: Option<&str>,
    opts: crate::plan::Options,
) -> Plan {
    let now = opts.now;
    let obs = match scope {
        None => crate::observe::observe(fleet, now),
        Some(name) => {
            let hosts = fleet
                .hosts
                .values()
                .filter(|h| h.name.as_str() == name)
                .map(|h| {
                    (
                        h.name.to_string(),
                        crate::observe::observe_host(fleet, h, crate::observe::Depth::Plan),
                    )
                })
                .collect();
            Observation {
                format_version: crate::resources::observed::FORMAT_VERSION,
                fleet: fleet.name.to_string(),
                taken_at: now,
                hosts,
            }
        }
    };
    let mut plan = crate::plan::plan(fleet, lock, &obs, opts);
    if let Some(name) = scope {
        plan.unreachable.retain(|h, _| h == name);
        plan.unmanaged.retain(|h, _| h == name);
    }
    plan
}

/// What a pass works from: the fleet, the lock, what evaluating cost and
/// which files it read.
#[derive(Debug)]
pub struct Inputs {
    /// The validated fleet.
    pub fleet: Fleet,
    /// The lockfile, checked against the fleet.
    pub lock: ImageLock,
    /// Wall time of the Dhall evaluation (zero from the cache).
    pub eval: Duration,
    /// Every Dhall file the fleet was evaluated from, the fleet file first.
    pub files: Vec<std::path::PathBuf>,
}

/// Loads the fleet and the lock as `apply` does (every image pinned).
pub fn load(ctx: &Context) -> anyhow::Result<Inputs> {
    let loaded = super::load_fleet_loaded(ctx)?;
    let lock = ImageLock::read(&ctx.lock)?;
    let problems = lock.check_against(&loaded.fleet, &ctx.lock);
    if !problems.is_empty() {
        return Err(crate::diag::Diagnostics(problems).into());
    }
    Ok(Inputs {
        fleet: loaded.fleet,
        lock,
        eval: loaded.eval_time,
        files: loaded.files,
    })
}

/// The summary line of a pass, in `log`'s form.
pub fn log_pass(log: &super::logline::Log, scope: &str, pass: &Pass) {
    let mut fields = vec![
        ("host", scope.to_owned()),
        ("outcome", pass.verdict.as_str().to_owned()),
        ("drift", pass.drift.to_string()),
        ("applied", pass.applied.values().sum::<u64>().to_string()),
        ("pending", pass.pending.values().sum::<u64>().to_string()),
        ("failed", pass.failed.to_string()),
        ("seconds", format!("{:.3}", pass.duration.as_secs_f64())),
    ];
    if !pass.unreachable.is_empty() {
        let why: Vec<String> = pass
            .unreachable
            .iter()
            .map(|(h, e)| format!("{h}: {e}"))
            .collect();
        fields.push(("unreachable", why.join("; ")));
    }
    if let Some(e) = &pass.error {
        fields.push(("error", e.clone()));
    }
    let level = match pass.verdict {
        Verdict::Converged | Verdict::Pending => "info",
        Verdict::Incomplete => "warn",
        Verdict::Error => "error",
    };
    log.line(level, "pass.done", &fields);
}
