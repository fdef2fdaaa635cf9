//! Reading the state file back: the last run's fate, the run list, one
//! run's steps, and what observations found. Every type here serialises
//! to the stable JSON of `virtfleet history --json`.

use super::{StateError, Store, process_alive};
use rusqlite::params;
use serde::Serialize;

/// A run that stopped before it finished (its process is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Interrupted {
    /// The run's number.
    pub run: i64,
    /// `apply`, `destroy`, ...
    pub command: String,
    /// Who ran it.
    pub user: String,
    /// The controller it ran on.
    pub machine: String,
    /// When it started (unix seconds).
    pub started_at: u64,
    /// The step it was in (the last one started and never finished).
    pub stopped_at: Option<StepRow>,
    /// Steps it finished before it stopped.
    pub done: i64,
    /// The last step it finished, when it stopped between steps.
    pub last_done: Option<StepRow>,
}

impl Interrupted {
    /// The one line shown by `plan`, `apply` and `status`; `then` says
    /// what happens next (e.g. "this plan finishes it").
    pub fn line(&self, then: &str) -> String {
        let at = match (&self.stopped_at, &self.last_done) {
            (Some(s), _) => format!("stopped at '{}' on {}", s.action, s.host),
            (None, Some(s)) => format!("stopped after '{}' on {}", s.action, s.host),
            (None, None) => "stopped before its first step".to_owned(),
        };
        format!(
            "{} #{} by {}@{} {at}, {}; {then}",
            self.command,
            self.run,
            self.user,
            self.machine,
            crate::text::rfc3339(self.started_at)
        )
    }
}

/// One run in the history list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// The run's number (increasing).
    pub run: i64,
    /// `apply`, `destroy`, `restore`, `snapshot`, `rollback`, `reinit`.
    pub command: String,
    /// The command line as given.
    pub argv: String,
    /// Who ran it, and where.
    pub user: String,
    /// The controller's host name.
    pub machine: String,
    /// Its process id.
    pub pid: u32,
    /// Start (unix milliseconds).
    pub started_ms: i64,
    /// End (unix milliseconds), absent while running or when interrupted.
    pub finished_ms: Option<i64>,
    /// `ok`, `failed`, `interrupted`, or `running`.
    pub outcome: String,
    /// The earlier interrupted run this one finished.
    pub resumes: Option<i64>,
    /// sha256 of the validated fleet.
    pub fleet_digest: String,
    /// sha256 of images.lock.
    pub lock_digest: String,
    /// sha256 of the plan's JSON.
    pub plan_digest: String,
    /// Steps by state.
    pub steps: StepCounts,
}

/// How many steps of a run ended each way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCounts {
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
    /// Started and never finished (the run was interrupted in it).
    pub interrupted: i64,
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRow {
    /// The host it ran on.
    pub host: String,
    /// The change's address (`host/machine[/disk]`, ...).
    pub address: String,
    /// The machine it concerned.
    pub machine: Option<String>,
    /// What it did.
    pub action: String,
    /// Disruption class: none, live, restart, destructive.
    pub class: String,
    /// `started` (running), `done`, `failed`, `skipped`, `interrupted`.
    pub state: String,
    /// Start and end (unix milliseconds).
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// The failure.
    pub error: Option<String>,
}

/// A run with all its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: RunSummary,
    /// Steps in the order they were recorded.
    pub step_list: Vec<StepRow>,
}

/// Something an observation found, from when it was first seen until it
/// was last seen (and when it went away).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub host: String,
    /// `drift`, `unreachable` or `unmanaged`.
    pub kind: String,
    /// The change address, host or object.
    pub subject: String,
    /// What `apply` would do, or why the host was unreachable.
    pub detail: String,
    /// Unix seconds.
    pub first_seen: i64,
    pub last_seen: i64,
    /// When an observation of its host no longer found it.
    pub cleared: Option<i64>,
}

const RUN_COLUMNS: &str = "r.id, r.command, r.argv, r.user, r.machine, r.pid, r.started_ms,
     r.finished_ms, r.outcome, r.resumes, r.fleet_digest, r.lock_digest, r.plan_digest,
     (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.state = 'done'),
     (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.state = 'failed'),
     (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.state = 'skipped'),
     (SELECT count(*) FROM steps s WHERE s.run = r.id AND s.state IN ('started', 'interrupted'))";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunSummary> {
    let machine: String = r.get(4)?;
    let pid: u32 = r.get(5)?;
    let outcome: Option<String> = r.get(8)?;
    let outcome = outcome.unwrap_or_else(|| {
        if process_alive(&machine, pid) {
            "running".into()
        } else {
            "interrupted".into()
        }
    });
    Ok(RunSummary {
        run: r.get(0)?,
        command: r.get(1)?,
        argv: r.get(2)?,
        user: r.get(3)?,
        machine,
        pid,
        started_ms: r.get(6)?,
        finished_ms: r.get(7)?,
        outcome,
        resumes: r.get(9)?,
        fleet_digest: r.get(10)?,
        lock_digest: r.get(11)?,
        plan_digest: r.get(12)?,
        steps: StepCounts {
            done: r.get(13)?,
            failed: r.get(14)?,
            skipped: r.get(15)?,
            interrupted: r.get(16)?,
        },
    })
}

fn step_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        host: r.get(0)?,
        address: r.get(1)?,
        machine: r.get(2)?,
        action: r.get(3)?,
        class: r.get(4)?,
        state: r.get(5)?,
        started_ms: r.get(6)?,
        finished_ms: r.get(7)?,
        error: r.get(8)?,
    })
}

const STEP_COLUMNS: &str =
    "host, address, machine, action, class, state, started_ms, finished_ms, error";

impl Store {
    /// The last run, when it stopped without finishing and its process is
    /// gone.
    pub fn interrupted(&self) -> Result<Option<Interrupted>, StateError> {
        let last: Option<(i64, Option<String>, String, u32)> = self
            .conn()
            .query_row(
                "SELECT id, outcome, machine, pid FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|e| self.err(e))?;
        let Some((id, None, machine, pid)) = last else {
            return Ok(None);
        };
        if process_alive(&machine, pid) {
            return Ok(None);
        }
        let Some(run) = self.run(id)? else {
            return Ok(None);
        };
        let stopped_at = run
            .step_list
            .iter()
            .rev()
            .find(|s| s.state == "started" || s.state == "interrupted")
            .cloned();
        let last_done = match stopped_at {
            Some(_) => None,
            None => run
                .step_list
                .iter()
                .rev()
                .find(|s| s.state == "done" || s.state == "failed")
                .cloned(),
        };
        Ok(Some(Interrupted {
            last_done,
            run: id,
            command: run.run.command,
            user: run.run.user,
            machine: run.run.machine,
            started_at: u64::try_from(run.run.started_ms.div_euclid(1000)).unwrap_or(0),
            stopped_at,
            done: run.run.steps.done,
        }))
    }

    /// Runs newest first, at most `limit`; with `subject`, only those with
    /// a step on that machine or host.
    pub fn runs(&self, subject: Option<&str>, limit: u64) -> Result<Vec<RunSummary>, StateError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r
             WHERE ?1 IS NULL OR EXISTS (SELECT 1 FROM steps s
                 WHERE s.run = r.id AND (s.machine = ?1 OR s.host = ?1))
             ORDER BY r.id DESC LIMIT ?2"
        );
        let mut stmt = self.conn().prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(
            params![subject, i64::try_from(limit).unwrap_or(i64::MAX)],
            run_row,
        )
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// One run with its steps.
    pub fn run(&self, id: i64) -> Result<Option<RunDetail>, StateError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.id = ?1");
        let run = match self.conn().query_row(&sql, [id], run_row) {
            Ok(r) => r,
            Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let sql = format!("SELECT {STEP_COLUMNS} FROM steps WHERE run = ?1 ORDER BY id");
        let mut stmt = self.conn().prepare(&sql).map_err(|e| self.err(e))?;
        let step_list = stmt
            .query_map([id], step_row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))?;
        Ok(Some(RunDetail { run, step_list }))
    }

    /// What observations found, newest first, at most `limit`; with
    /// `subject`, only those of that host or machine.
    /// (Matched by exact path components, not `LIKE`: a name holding `_`
    /// must not match others.)
    pub fn findings(&self, subject: Option<&str>, limit: u64) -> Result<Vec<Finding>, StateError> {
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT host, kind, subject, detail, first_seen, last_seen, cleared FROM findings
                 WHERE ?1 IS NULL OR host = ?1
                    OR substr(subject, -length(?1) - 1) = '/' || ?1
                    OR instr(subject, '/' || ?1 || '/') > 0
                 ORDER BY last_seen DESC, id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(
            params![subject, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(Finding {
                    host: r.get(0)?,
                    kind: r.get(1)?,
                    subject: r.get(2)?,
                    detail: r.get(3)?,
                    first_seen: r.get(4)?,
                    last_seen: r.get(5)?,
                    cleared: r.get(6)?,
                })
            },
        )
        .and_then(|rows| rows.collect())
        .map_err(|e| self.err(e))
    }

    /// How many steps the file holds (for the size benchmark and tests).
    pub fn step_count(&self) -> Result<i64, StateError> {
        Ok(self
            .one("SELECT count(*) FROM steps", [])?
            .unwrap_or_default())
    }
}
