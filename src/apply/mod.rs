//! The executor: runs a plan's changes against the hosts.
//!
//! Every command that changes a host comes through here: `apply` with the
//! fleet's plan, `destroy`, `restore`, `snapshot`, `rollback` and `reinit`
//! with one-machine plans ([`crate::plan::commands`]). Hosts run in
//! parallel, one thread each (every libvirt call blocks); within a host,
//! each machine's changes run in plan order while different machines'
//! changes overlap, up to a bound ([`schedule`]). Every step is idempotent, so re-running after
//! a crash or a partial failure converges: recovery is always "observe
//! again, plan again", never a replay of a journal. When a step fails its
//! host stops; other hosts finish or stop too, as the caller chooses.
//! Progress, byte progress of long steps included, is reported as
//! [`Event`]s; this module never prints.

mod bytes;
mod error;
mod leases;
mod moving;
pub mod runlock;
pub mod schedule;
mod step;

pub use bytes::StepBytes;
pub use error::StepError;

use crate::fleet::{Fleet, Host};
use crate::host::backend;
use crate::host::lease;
use crate::host::libvirt::Libvirt;
use crate::host::transport::Transport;
use crate::host::transport_for;
use crate::lock::ImageLock;
use crate::lock::cache::Cache;
use crate::plan::{Action, Change, Disruption, Plan};
use crate::resources::observed::Lease;
use schedule::Done;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use step::{StepEnv, step};

/// Unix seconds now (leases are stamped with real time, not the plan's).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What happens on other hosts when one host's step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFailure {
    /// Other hosts finish their own sequences.
    Continue,
    /// Other hosts stop after their current step.
    Stop,
}

/// Settings of one apply.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Unix seconds, stamped on trash entries.
    pub now: u64,
    /// How long a guest gets to shut down by ACPI before it is powered off
    /// (or, for a shutdown without force, before the step fails).
    pub shutdown_grace: Duration,
    /// See [`OnFailure`].
    pub on_failure: OnFailure,
    /// Break a host's lease held by another run (`--break-lock`).
    pub break_lock: bool,
    /// The disruption classes this run may carry out.
    pub permits: Permits,
    /// At most this many steps in flight per host (see [`schedule`]); 1
    /// runs a host's changes one by one, in plan order. A host's own
    /// `concurrency` lowers it there.
    pub concurrency: usize,
    /// Set from outside (a SIGTERM in `watch`): steps in flight finish,
    /// nothing new starts, the rest are reported as skipped.
    pub stop: Option<&'static AtomicBool>,
}

/// Which disruptive changes a run was permitted, checked again by the
/// executor before each change: whatever the plan holds, a destroy or a
/// restart without its permission is never carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permits {
    /// Destructive changes (`--allow-destroy`, or a command like `destroy`).
    pub destroy: bool,
    /// Restarts (`--allow-restart`, or a command like `rollback`).
    pub restart: bool,
}

impl Permits {
    /// A command whose whole point is the change (and which asked for it).
    pub const ALL: Permits = Permits {
        destroy: true,
        restart: true,
    };

    fn allow(&self, d: Disruption) -> bool {
        match d {
            Disruption::Destructive => self.destroy,
            Disruption::Restart => self.restart,
            Disruption::None | Disruption::Live => true,
        }
    }
}

/// How long a host lease lasts unless renewed: long enough for one slow
/// step (a large image copy), short enough that a dead run's lease lapses
/// within the hour.
pub const LEASE_TTL: u64 = 3_600;
/// A lease is renewed between steps once this much of it has passed.
const LEASE_RENEW_AFTER: u64 = 600;

/// Progress of an apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A host's sequence begins with `steps` changes.
    HostStarted {
        /// The host.
        host: String,
        /// How many changes it will run.
        steps: usize,
    },
    /// A change begins.
    StepStarted {
        /// The host.
        host: String,
        /// The change's address.
        address: String,
        /// What it does ([`crate::plan::Action::describe`]).
        what: String,
    },
    /// Bytes of a long task inside a step (verify, download, copy).
    StepProgress {
        /// The host.
        host: String,
        /// The step's address.
        address: String,
        /// The task, e.g. `verify a74e6253c6b9`.
        label: String,
        /// Bytes processed so far in this task.
        done: u64,
        /// Bytes in all, when known.
        total: Option<u64>,
    },
    /// A change ended; `error` is None on success.
    StepFinished {
        /// The host.
        host: String,
        /// The change's address.
        address: String,
        /// What it did.
        what: String,
        /// The failure, if it failed.
        error: Option<String>,
        /// How long it took.
        seconds: f64,
    },
    /// A host's sequence ended.
    HostFinished {
        /// The host.
        host: String,
        /// Changes done.
        done: usize,
        /// Changes failed (at most one: a failure stops the host).
        failed: usize,
        /// Changes not attempted.
        skipped: usize,
    },
}

/// Receives apply events, from several host threads at once.
pub trait Events: Sync {
    /// Handles one event; must not block for long (steps wait on it).
    fn event(&self, e: Event);
}

/// The outcome of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It was carried out.
    Done,
    /// It failed; the host's later changes were skipped.
    Failed {
        /// What went wrong.
        message: String,
        /// What to do about it, for known failures.
        hint: Option<String>,
    },
    /// It was not attempted (an earlier failure).
    Skipped,
}

/// One change as it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepReport {
    /// The change's address.
    pub address: String,
    /// What it does ([`crate::plan::Action::describe`]).
    pub what: String,
    /// How it went.
    pub outcome: Outcome,
}

/// How an apply went: per host, each change in plan order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Steps by host name.
    pub hosts: BTreeMap<String, Vec<StepReport>>,
}

impl Report {
    /// Every failed step, with its host.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &StepReport)> {
        self.steps()
            .filter(|(_, s)| matches!(s.outcome, Outcome::Failed { .. }))
    }

    /// Every step, with its host, hosts in name order.
    pub fn steps(&self) -> impl Iterator<Item = (&str, &StepReport)> {
        self.hosts
            .iter()
            .flat_map(|(h, steps)| steps.iter().map(move |s| (h.as_str(), s)))
    }
}

/// Applies `plan` to the hosts of `fleet`.
pub fn apply(
    plan: &Plan,
    fleet: &Fleet,
    lock: &ImageLock,
    cache: &Cache,
    settings: Settings,
    events: &dyn Events,
) -> Report {
    let mut by_host: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for c in &plan.changes {
        by_host.entry(c.host.as_str()).or_default().push(c);
    }
    let abort = AtomicBool::new(false);
    let leases = leases::Leases::default();
    // One span per run, one per host thread under it, one per step under
    // that: `VIRTFLEET_LOG=debug` shows every libvirt and host command in
    // its place.
    let span = tracing::info_span!("apply", fleet = %fleet.name, changes = plan.changes.len());
    let run = Run {
        fleet,
        lock,
        cache,
        settings,
        events,
        abort: &abort,
        leases: &leases,
    };
    let hosts = std::thread::scope(|s| {
        let handles: Vec<_> = by_host
            .into_iter()
            .map(|(h, changes)| {
                let run = &run;
                let mine = changes.clone();
                let span = tracing::info_span!(parent: &span, "host", host = h);
                let work = move || span.in_scope(|| run.host(h, &mine));
                (h.to_owned(), s.spawn(work), changes)
            })
            .collect();
        handles
            .into_iter()
            .map(|(h, j, changes)| {
                // A crashed host thread is a failure of each of its steps,
                // never "0 of 0 done".
                let results = j.join().unwrap_or_else(|_| {
                    let crashed = Outcome::Failed {
                        message: format!("the executor's thread for host {h} crashed"),
                        hint: None,
                    };
                    changes.iter().map(|c| report(c, crashed.clone())).collect()
                });
                (h, results)
            })
            .collect()
    });
    Report { hosts }
}

/// What every host's thread shares.
struct Run<'a> {
    fleet: &'a Fleet,
    lock: &'a ImageLock,
    cache: &'a Cache,
    settings: Settings,
    events: &'a dyn Events,
    abort: &'a AtomicBool,
    leases: &'a leases::Leases,
}

impl Run<'_> {
    /// Runs host `name`'s changes (see [`Self::steps`]); reports every one of them.
    fn host(&self, name: &str, changes: &[&Change]) -> Vec<StepReport> {
        self.events.event(Event::HostStarted {
            host: name.into(),
            steps: changes.len(),
        });
        let results = match self.connect(name) {
            Err(e) => {
                let failed = failed(&e);
                changes.iter().map(|c| report(c, failed.clone())).collect()
            }
            Ok((lv, t, host)) => {
                let storage = backend(host, t.as_ref());
                // Nothing is changed on a host without its lease: two runs
                // (two controllers) never change one host at once.
                let lease =
                    match self
                        .leases
                        .take(self.fleet, self.settings, name, storage.as_ref())
                    {
                        Ok(l) => l,
                        Err(e) => {
                            let failed = failed(&StepError::from(e));
                            let results =
                                changes.iter().map(|c| report(c, failed.clone())).collect();
                            return self.finish(name, results);
                        }
                    };
                let env = StepEnv {
                    fleet: self.fleet,
                    lock: self.lock,
                    cache: self.cache,
                    lv: &lv,
                    storage: storage.as_ref(),
                    settings: self.settings,
                    events: self.events,
                    leases: self.leases,
                };
                let results = self.steps(name, changes, &env, lease);
                self.leases.release(name, storage.as_ref());
                results
            }
        };
        self.finish(name, results)
    }

    /// Reports the end of host `name`'s sequence.
    fn finish(&self, name: &str, results: Vec<StepReport>) -> Vec<StepReport> {
        let count = |f: fn(&Outcome) -> bool| results.iter().filter(|s| f(&s.outcome)).count();
        self.events.event(Event::HostFinished {
            host: name.into(),
            done: count(|o| *o == Outcome::Done),
            failed: count(|o| matches!(o, Outcome::Failed { .. })),
            skipped: count(|o| *o == Outcome::Skipped),
        });
        results
    }

    fn connect(&self, name: &str) -> Result<(Libvirt, Box<dyn Transport>, &Host), StepError> {
        let host = self
            .fleet
            .host_named(name)
            .ok_or_else(|| StepError::HostNotInFleet { host: name.into() })?;
        let lv = Libvirt::open(&host.uri)?;
        let t = transport_for(host)?;
        Ok((lv, t, host))
    }

    /// The steps of one host, run by [`schedule`]: each machine's changes
    /// in plan order, different machines side by side (at most
    /// `settings.concurrency` at once). After a failure (here, or on
    /// another host with [`OnFailure::Stop`]) nothing new starts and the
    /// rest are skipped, since later steps may depend on the failed one.
    fn steps(
        &self,
        name: &str,
        changes: &[&Change],
        env: &StepEnv<'_>,
        mut lease: Lease,
    ) -> Vec<StepReport> {
        let machines: Vec<Option<&str>> = changes.iter().map(|c| c.machine.as_deref()).collect();
        let deps = schedule::dependencies(&machines);
        // The lease is renewed between steps, on the scheduling thread.
        let admit = |i: usize| {
            let now = unix_now();
            if now.saturating_sub(lease.expires - LEASE_TTL) >= LEASE_RENEW_AFTER {
                lease.expires = now + LEASE_TTL;
                if let Err(e) = lease::renew(env.storage, name, &lease) {
                    // Someone broke the lease: this run must stop here.
                    return Some((
                        Done::Failed,
                        report(changes[i], failed(&StepError::from(e))),
                    ));
                }
            }
            None
        };
        let stop = || {
            (self.settings.on_failure == OnFailure::Stop && self.abort.load(Ordering::SeqCst))
                || self.settings.stop.is_some_and(|s| s.load(Ordering::SeqCst))
        };
        // Steps may run on other threads: their spans name the host's.
        let host_span = tracing::Span::current();
        let work = |i: usize| {
            let c = changes[i];
            let what = c.action.describe();
            self.events.event(Event::StepStarted {
                host: name.into(),
                address: c.address.clone(),
                what: what.clone(),
            });
            let started = Instant::now();
            let span = tracing::info_span!(parent: &host_span, "step", address = %c.address, action = %what);
            let _in_step = span.enter();
            tracing::info!("started");
            let r = if self.settings.permits.allow(c.disruption) {
                run_step(c, env)
            } else {
                Err(StepError::NotPermitted {
                    address: c.address.clone(),
                    what: what.clone(),
                    class: c.disruption.as_str().into(),
                })
            };
            let seconds = started.elapsed().as_secs_f64();
            match &r {
                Ok(()) => tracing::info!(seconds, "done"),
                Err(e) => tracing::warn!(seconds, error = %e, "failed"),
            }
            self.events.event(Event::StepFinished {
                host: name.into(),
                address: c.address.clone(),
                what,
                error: r.as_ref().err().map(|e| e.to_string()),
                seconds,
            });
            match r {
                Ok(()) => {
                    crate::fault::point("step");
                    (Done::Ok, report(c, Outcome::Done))
                }
                Err(e) => {
                    self.abort.store(true, Ordering::SeqCst);
                    (Done::Failed, report(c, failed(&e)))
                }
            }
        };
        // A host's own `concurrency` caps the run's.
        let limit = self
            .fleet
            .host_named(name)
            .and_then(|h| h.concurrency)
            .map_or(self.settings.concurrency, |n| {
                n.min(self.settings.concurrency)
            });
        let results = schedule::run(&deps, limit, admit, stop, work);
        results
            .into_iter()
            .zip(changes)
            .map(|(r, c)| r.unwrap_or_else(|| report(c, Outcome::Skipped)))
            .collect()
    }
}

/// Carries out `c`: the steps that reach a second host (a move's) here,
/// every other one in `step`.
fn run_step(c: &Change, env: &StepEnv<'_>) -> Result<(), StepError> {
    match &c.action {
        Action::MoveIn {
            from,
            volumes,
            base,
            ..
        } => moving::move_in(c, env, step::machine(c)?, from, volumes, base.as_ref()),
        Action::FinishMove { from, volumes } => {
            moving::finish_move(env, step::machine(c)?, from, volumes)
        }
        _ => step(c, env),
    }
}

fn failed(e: &StepError) -> Outcome {
    Outcome::Failed {
        message: e.to_string(),
        hint: e.hint(),
    }
}

fn report(c: &Change, outcome: Outcome) -> StepReport {
    StepReport {
        address: c.address.clone(),
        what: c.action.describe(),
        outcome,
    }
}

/// Events dropped on the floor.
pub struct NoEvents;

impl Events for NoEvents {
    fn event(&self, _: Event) {}
}
