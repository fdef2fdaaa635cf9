//! The executor: runs a plan's changes against the hosts.
//!
//! Every command that changes a host comes through here: `apply` with the
//! fleet's plan, `destroy`, `restore`, `snapshot`, `rollback` and `reinit`
//! with one-machine plans ([`crate::plan::commands`]). Hosts run in
//! parallel, one thread each (every libvirt call blocks); within a host,
//! changes run in plan order. Every step is idempotent, so re-running after
//! a crash or a partial failure converges: recovery is always "observe
//! again, plan again", never a replay of a journal. When a step fails its
//! host stops; other hosts finish or stop too, as the caller chooses.
//! Progress, byte progress of long steps included, is reported as
//! [`Event`]s; this module never prints.

mod bytes;
mod error;
pub mod runlock;
mod step;

pub use bytes::StepBytes;
pub use error::StepError;

use crate::fleet::{Fleet, Host};
use crate::host::backend;
use crate::host::libvirt::Libvirt;
use crate::host::transport::Transport;
use crate::host::transport_for;
use crate::lock::ImageLock;
use crate::lock::cache::Cache;
use crate::plan::{Change, Plan};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use step::{StepEnv, step};

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
}

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
    let run = Run {
        fleet,
        lock,
        cache,
        settings,
        events,
        abort: &abort,
    };
    let hosts = std::thread::scope(|s| {
        let handles: Vec<_> = by_host
            .into_iter()
            .map(|(h, changes)| {
                let run = &run;
                (h.to_owned(), s.spawn(move || run.host(h, &changes)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(h, j)| (h, j.join().unwrap_or_default()))
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
}

impl Run<'_> {
    /// Runs host `name`'s changes in order; reports every one of them.
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
                let env = StepEnv {
                    fleet: self.fleet,
                    lock: self.lock,
                    cache: self.cache,
                    lv: &lv,
                    storage: storage.as_ref(),
                    settings: self.settings,
                    events: self.events,
                };
                self.steps(name, changes, &env)
            }
        };
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
            .hosts
            .values()
            .find(|x| x.name.as_str() == name)
            .ok_or_else(|| StepError::HostNotInFleet { host: name.into() })?;
        let lv = Libvirt::open(&host.uri)?;
        let t = transport_for(host)?;
        Ok((lv, t, host))
    }

    /// The steps of one host; after a failure (here, or on another host
    /// with [`OnFailure::Stop`]) the rest are skipped, since later steps
    /// may depend on the failed one.
    fn steps(&self, name: &str, changes: &[&Change], env: &StepEnv<'_>) -> Vec<StepReport> {
        let mut results = Vec::new();
        let mut failed_here = false;
        for c in changes {
            let stop_all =
                self.settings.on_failure == OnFailure::Stop && self.abort.load(Ordering::SeqCst);
            if failed_here || stop_all {
                results.push(report(c, Outcome::Skipped));
                continue;
            }
            let what = c.action.describe();
            self.events.event(Event::StepStarted {
                host: name.into(),
                address: c.address.clone(),
                what: what.clone(),
            });
            let started = Instant::now();
            let r = step(c, env);
            self.events.event(Event::StepFinished {
                host: name.into(),
                address: c.address.clone(),
                what,
                error: r.as_ref().err().map(|e| e.to_string()),
                seconds: started.elapsed().as_secs_f64(),
            });
            match r {
                Ok(()) => results.push(report(c, Outcome::Done)),
                Err(e) => {
                    failed_here = true;
                    self.abort.store(true, Ordering::SeqCst);
                    results.push(report(c, failed(&e)));
                }
            }
        }
        results
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
