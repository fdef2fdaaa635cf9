//! Recording a run as it happens: an [`Events`] sink that writes each step
//! to the state file and passes every event on to the display.
//!
//! A step's row is written "started" when the executor announces it, which
//! is before the host is touched, and committed at once: a run killed in
//! the middle of a step leaves exactly that step open. Recording is never
//! allowed to stop or fail a run: after a write error it warns once and
//! records nothing more (the hosts are the truth; history is a courtesy).

use super::{Retention, Store, now_ms};
use crate::apply::{Event, Events, Outcome, Report};
use crate::plan::Plan;
use rusqlite::params;
use std::collections::HashMap;
use std::sync::Mutex;

/// Records one run into the state file while passing events on to `next`.
pub struct Recorder<'a> {
    inner: Mutex<Inner>,
    next: &'a dyn Events,
    /// Per change address: (machine, disruption class).
    changes: HashMap<String, (Option<String>, String)>,
}

struct Inner {
    store: Option<Store>,
    run: i64,
    /// Open step rows by (host, address).
    open: HashMap<(String, String), i64>,
}

impl<'a> Recorder<'a> {
    /// Starts recording a run of `plan` by `command` into `store` (None:
    /// record nothing, only pass events on). Marks earlier runs whose
    /// process is gone as interrupted (this run finishes them), records
    /// what the plan's observation found, and prunes old history.
    pub fn start(
        store: Option<Store>,
        plan: &Plan,
        command: &str,
        keep: Retention,
        next: &'a dyn Events,
    ) -> Recorder<'a> {
        let changes = plan
            .changes
            .iter()
            .map(|c| {
                (
                    c.address.clone(),
                    (c.machine.clone(), c.disruption.as_str().to_owned()),
                )
            })
            .collect();
        let mut inner = Inner {
            store: None,
            run: 0,
            open: HashMap::new(),
        };
        if let Some(store) = store {
            match begin(&store, plan, command, keep) {
                Ok(run) => {
                    inner.store = Some(store);
                    inner.run = run;
                }
                Err(e) => warn(&e),
            }
        }
        Recorder {
            inner: Mutex::new(inner),
            next,
            changes,
        }
    }

    /// The run's id in the state file (None when not recording).
    pub fn run_id(&self) -> Option<i64> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.store.as_ref().map(|_| inner.run)
    }

    /// Records the steps never attempted and the run's outcome.
    pub fn finish(self, report: &Report) {
        let mut inner = self.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let Some(store) = inner.store.take() else {
            return;
        };
        let result = (|| -> rusqlite::Result<()> {
            let now = now_ms();
            let tx = store.conn().unchecked_transaction()?;
            for (host, s) in report.steps() {
                if s.outcome == Outcome::Skipped {
                    let (machine, class) =
                        self.changes.get(&s.address).cloned().unwrap_or_default();
                    tx.execute(
                        "INSERT INTO steps (run, host, address, machine, action, class, state, started_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'skipped', ?7)",
                        params![inner.run, host, s.address, machine, s.what, class, now],
                    )?;
                }
            }
            // A run told to stop (SIGTERM in `watch`) skipped steps with
            // no failure: it says so rather than "ok".
            let outcome = if report.failures().next().is_some() {
                "failed"
            } else if report.steps().any(|(_, s)| s.outcome == Outcome::Skipped) {
                "stopped"
            } else {
                "ok"
            };
            tx.execute(
                "UPDATE runs SET finished_ms = ?2, outcome = ?3 WHERE id = ?1",
                params![inner.run, now, outcome],
            )?;
            tx.commit()
        })();
        if let Err(e) = result {
            warn(&store.err(e));
        }
    }

    fn write(&self, e: &Event) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Inner {
            store: slot,
            run,
            open,
        } = &mut *guard;
        let run = *run;
        let Some(store) = slot.as_ref() else {
            return;
        };
        let result = match e {
            Event::StepStarted {
                host,
                address,
                what,
                ..
            } => {
                let (machine, class) = self.changes.get(address).cloned().unwrap_or_default();
                store
                    .conn()
                    .prepare(
                        "INSERT INTO steps (run, host, address, machine, action, class, state, started_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'started', ?7)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![run, host, address, machine, what, class, now_ms()])
                    })
                    .map(|_| {
                        let id = store.conn().last_insert_rowid();
                        open.insert((host.clone(), address.clone()), id);
                    })
            }
            Event::StepFinished {
                host,
                address,
                error,
                ..
            } => match open.remove(&(host.clone(), address.clone())) {
                Some(id) => store
                    .conn()
                    .prepare(
                        "UPDATE steps SET state = ?2, error = ?3, finished_ms = ?4 WHERE id = ?1",
                    )
                    .and_then(|mut s| {
                        let state = if error.is_some() { "failed" } else { "done" };
                        s.execute(params![id, state, error, now_ms()])
                    })
                    .map(|_| ()),
                None => Ok(()),
            },
            _ => Ok(()),
        };
        if let Err(err) = result {
            let err = store.err(err);
            *slot = None;
            warn(&err);
        }
    }
}

impl Events for Recorder<'_> {
    fn event(&self, e: Event) {
        // Recorded before the display sees it: "started" is on disk before
        // the executor goes on to touch the host.
        self.write(&e);
        self.next.event(e);
    }
}

/// Writes the run's row; returns its id.
fn begin(
    store: &Store,
    plan: &Plan,
    command: &str,
    keep: Retention,
) -> Result<i64, super::StateError> {
    use sha2::Digest;
    let now = now_ms();
    store.prune(keep, now)?;
    store.record_findings(plan, plan.inputs.observed_at)?;
    let holder = crate::apply::runlock::Holder::me(0);
    let plan_json = serde_json::to_vec(plan).unwrap_or_default();
    let plan_digest = hex::encode(sha2::Sha256::digest(&plan_json));
    store
        .conn()
        .execute(
            "INSERT INTO runs (command, argv, user, machine, pid, started_ms,
                               fleet_digest, lock_digest, plan_digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                command,
                holder.command,
                holder.user,
                super::machine_name(),
                holder.pid,
                now,
                plan.inputs.fleet,
                plan.inputs.lock,
                plan_digest
            ],
        )
        .map_err(|e| store.err(e))?;
    let run = store.conn().last_insert_rowid();
    store.settle_interrupted(Some(run))?;
    Ok(run)
}

fn warn(e: &super::StateError) {
    tracing::warn!("not recording this run in the state file: {e}");
    anstream::eprintln!(
        "warning: not recording this run: {e} (the run goes on; only its history is lost)"
    );
}
