//! Memory between runs: one SQLite state file per fleet on this controller.
//!
//! `<state dir>/<fleet>.sqlite` keeps the audit trail (every run that
//! changed hosts and each of its steps, written as they happen), compact
//! rows for what observations found (drift, unreachable hosts, unmanaged
//! objects), and answers "did the last run finish?". The hosts stay the
//! source of truth: nothing here is ever read to decide what to change, so
//! losing the file loses history, never correctness.
//!
//! The file is private (`0600` in a `0700` directory), in WAL mode with a
//! busy timeout so concurrent runs (an `apply` and a `status`) never
//! surface "database is locked", and its schema is versioned in
//! `PRAGMA user_version` and migrated forward on open ([`MIGRATIONS`]). A
//! file that is not ours (another program's database, or not a database)
//! is refused with the path and what to do, never overwritten.
//!
//! The Dhall evaluation cache is a separate, disposable file: see [`cache`].

pub mod cache;
mod query;
mod record;

pub use query::{Finding, Interrupted, RunDetail, RunSummary, StepCounts, StepRow};
pub use record::Recorder;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `PRAGMA application_id` of a virtfleet state file ("VFST"): how a file
/// of ours is told from another program's SQLite database.
pub const APPLICATION_ID: i32 = 0x5646_5354;

/// Schema migrations, in order: migration `i` takes `user_version` from `i`
/// to `i + 1`. Never edit a shipped one; append.
pub const MIGRATIONS: &[&str] = &[
    // 1: runs and their steps.
    "CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        command TEXT NOT NULL,
        argv TEXT NOT NULL,
        user TEXT NOT NULL,
        machine TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        fleet_digest TEXT NOT NULL,
        lock_digest TEXT NOT NULL,
        plan_digest TEXT NOT NULL,
        outcome TEXT
    );
    CREATE TABLE steps (
        id INTEGER PRIMARY KEY,
        run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        host TEXT NOT NULL,
        address TEXT NOT NULL,
        machine TEXT,
        action TEXT NOT NULL,
        class TEXT NOT NULL,
        state TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        finished_ms INTEGER,
        error TEXT
    );
    CREATE INDEX steps_by_run ON steps(run);",
    // 2: what observations found, one row per episode; and which run
    // finished an interrupted one.
    "CREATE TABLE findings (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL,
        cleared INTEGER
    );
    CREATE INDEX findings_open ON findings(host, cleared);
    ALTER TABLE runs ADD COLUMN resumes INTEGER;
    CREATE INDEX steps_by_machine ON steps(machine);
    CREATE INDEX steps_by_host ON steps(host);",
];

/// How long to wait for another process's write before giving up: long
/// enough that a busy apply never makes a concurrent command fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How much history to keep; older runs and findings are pruned whenever a
/// run is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Runs (and findings cleared) older than this many days go.
    pub days: u64,
    /// At most this many runs are kept, newest first.
    pub runs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            days: 90,
            runs: 1000,
        }
    }
}

/// Why the state file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but is not a virtfleet state file.
    #[error(
        "{}: {why}; it is not a virtfleet state file, so it was left untouched. It holds only history: move it aside (`mv {} {}.bad`) and virtfleet starts a new one, or point --state-dir elsewhere",
        path.display(), path.display(), path.display()
    )]
    Foreign { path: PathBuf, why: String },
    /// A newer virtfleet wrote it.
    #[error(
        "{}: schema version {found} is newer than this virtfleet knows ({known}); upgrade virtfleet, or use another --state-dir",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    /// Opening, reading or writing failed.
    #[error("{}: {why}", path.display())]
    Io { path: PathBuf, why: String },
}

/// An open state file.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The state file of `fleet` in `state_dir`.
pub fn path_for(state_dir: &Path, fleet: &str) -> PathBuf {
    state_dir.join(format!("{fleet}.sqlite"))
}

impl Store {
    /// Opens (creating if missing) the state file of `fleet`, migrating it
    /// to the current schema.
    pub fn open(state_dir: &Path, fleet: &str) -> Result<Store, StateError> {
        crate::apply::runlock::private_dir(state_dir).map_err(|why| StateError::Io {
            path: state_dir.to_owned(),
            why,
        })?;
        Store::open_path(&path_for(state_dir, fleet))
    }

    /// Opens the state file at `path` (its directory must exist).
    pub fn open_path(path: &Path) -> Result<Store, StateError> {
        let io = |e: &dyn std::fmt::Display| StateError::Io {
            path: path.to_owned(),
            why: e.to_string(),
        };
        // Created 0600 by us (SQLite would use the umask), and never
        // through a symlink; SQLite gives its -wal and -shm files the
        // same mode.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(crate::apply::runlock::libc_o_nofollow())
            .open(path)
            .map_err(|e| io(&e))?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| io(&e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| io(&e))?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
        };
        store.prepare()?;
        Ok(store)
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            why: e.to_string(),
        }
    }

    /// Checks the file is ours, sets WAL and migrates.
    fn prepare(&mut self) -> Result<(), StateError> {
        let foreign = |why: String| StateError::Foreign {
            path: self.path.clone(),
            why,
        };
        // The first read is where SQLite notices a file that is not a
        // database at all.
        let app: i32 = match self
            .conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
        {
            Ok(v) => v,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
                ) =>
            {
                return Err(foreign("not an SQLite database (corrupt?)".into()));
            }
            Err(e) => return Err(self.err(e)),
        };
        let tables: i64 = self
            .conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| foreign(format!("unreadable ({e})")))?;
        if app != APPLICATION_ID && (app != 0 || tables != 0) {
            return Err(foreign(format!(
                "an SQLite database of another program (application_id {app:#x}, {tables} schema objects)"
            )));
        }
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.err(e))?;
        self.migrate(MIGRATIONS.len())
    }

    /// Applies the migrations up to schema version `to`, each in its own
    /// transaction (a crash leaves the file at the previous version).
    pub fn migrate(&mut self, to: usize) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e: rusqlite::Error| StateError::Io {
            path: path.clone(),
            why: format!("migrating the schema: {e}"),
        };
        loop {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(err)?;
            let version: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(err)?;
            if version > MIGRATIONS.len() as i64 {
                return Err(StateError::TooNew {
                    path: path.clone(),
                    found: version,
                    known: MIGRATIONS.len(),
                });
            }
            let version = version as usize;
            if version >= to {
                return Ok(());
            }
            tx.execute_batch(MIGRATIONS[version]).map_err(err)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(err)?;
            tx.pragma_update(None, "user_version", version as i64 + 1)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
    }

    /// The schema version of the file.
    pub fn schema_version(&self) -> Result<i64, StateError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Deletes what is older than `keep` allows, relative to `now_ms`.
    pub fn prune(&self, keep: Retention, now_ms: i64) -> Result<(), StateError> {
        // Saturating: an absurd `--history-days` keeps everything rather
        // than wrapping around to a cutoff in the future (which would
        // delete everything).
        let cutoff = i64::try_from(keep.days)
            .ok()
            .and_then(|d| d.checked_mul(86_400_000))
            .map_or(i64::MIN, |span| now_ms.saturating_sub(span));
        let runs = i64::try_from(keep.runs).unwrap_or(i64::MAX);
        self.conn
            .execute(
                "DELETE FROM runs WHERE started_ms < ?1
                 OR id NOT IN (SELECT id FROM runs ORDER BY id DESC LIMIT ?2)",
                params![cutoff, runs],
            )
            .map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "DELETE FROM findings WHERE cleared IS NOT NULL AND cleared < ?1",
                params![cutoff / 1000],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records what an observation found (via the plan made from it): each
    /// finding opens an episode, repeated sightings extend it, and one no
    /// longer seen on a host that was observed is closed.
    pub fn record_findings(&self, plan: &crate::plan::Plan, now: u64) -> Result<(), StateError> {
        let mut current: Vec<(String, &str, String, String)> = Vec::new();
        for c in &plan.changes {
            current.push((
                c.host.clone(),
                "drift",
                c.address.clone(),
                c.action.describe(),
            ));
        }
        // A change withheld for lack of permission is its own kind: what an
        // unattended run left for a person, with the permission it needs.
        for p in &plan.pending {
            let c = &p.change;
            current.push((
                c.host.clone(),
                "pending",
                c.address.clone(),
                format!(
                    "{} ({}; needs {})",
                    c.action.describe(),
                    c.disruption.as_str(),
                    p.needs
                ),
            ));
        }
        for (host, why) in &plan.unreachable {
            current.push((host.clone(), "unreachable", host.clone(), why.clone()));
        }
        for (host, objects) in &plan.unmanaged {
            for o in objects {
                current.push((
                    host.clone(),
                    "unmanaged",
                    format!("{host}/{o}"),
                    String::new(),
                ));
            }
        }
        let hosts: std::collections::BTreeSet<&str> = plan
            .inputs
            .hosts
            .keys()
            .chain(plan.unreachable.keys())
            .map(String::as_str)
            .collect();
        let now = now as i64;
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        {
            let mut open = tx
                .prepare(
                    "SELECT id, kind, subject, detail FROM findings WHERE host = ?1 AND cleared IS NULL",
                )
                .map_err(|e| self.err(e))?;
            let mut close = tx
                .prepare("UPDATE findings SET cleared = ?2 WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let mut seen = tx
                .prepare("UPDATE findings SET last_seen = ?2 WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let mut add = tx
                .prepare(
                    "INSERT INTO findings (host, kind, subject, detail, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )
                .map_err(|e| self.err(e))?;
            for host in hosts {
                let rows: Vec<(i64, String, String, String)> = open
                    .query_map([host], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(|e| self.err(e))?;
                let mine: Vec<_> = current.iter().filter(|f| f.0 == host).collect();
                for (id, kind, subject, detail) in &rows {
                    let still = mine
                        .iter()
                        .any(|f| f.1 == kind && &f.2 == subject && &f.3 == detail);
                    let stmt = if still { &mut seen } else { &mut close };
                    stmt.execute(params![id, now]).map_err(|e| self.err(e))?;
                }
                for f in mine {
                    let known = rows
                        .iter()
                        .any(|(_, k, s, d)| k == f.1 && s == &f.2 && d == &f.3);
                    if !known {
                        add.execute(params![f.0, f.1, f.2, f.3, now])
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Marks unfinished runs whose process is gone as interrupted and, when
    /// `by` is given, finished by that run.
    pub fn settle_interrupted(&self, by: Option<i64>) -> Result<Vec<i64>, StateError> {
        let dead: Vec<i64> = self
            .unfinished()?
            .into_iter()
            .filter(|(_, machine, pid)| !process_alive(machine, *pid))
            .map(|(id, _, _)| id)
            .collect();
        for id in &dead {
            self.conn
                .execute(
                    "UPDATE runs SET outcome = 'interrupted' WHERE id = ?1 AND outcome IS NULL",
                    [id],
                )
                .map_err(|e| self.err(e))?;
            self.conn
                .execute(
                    "UPDATE steps SET state = 'interrupted' WHERE run = ?1 AND state = 'started'",
                    [id],
                )
                .map_err(|e| self.err(e))?;
        }
        if let (Some(by), Some(last)) = (by, dead.iter().max()) {
            self.conn
                .execute("UPDATE runs SET resumes = ?2 WHERE id = ?1", [by, *last])
                .map_err(|e| self.err(e))?;
        }
        Ok(dead)
    }

    /// Runs without an outcome: (id, machine, pid).
    fn unfinished(&self) -> Result<Vec<(i64, String, u32)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, machine, pid FROM runs WHERE outcome IS NULL ORDER BY id")
            .map_err(|e| self.err(e))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    /// The connection, for the query and record submodules.
    fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A single value, or None when the query has no row.
    fn one<T: rusqlite::types::FromSql>(
        &self,
        sql: &str,
        p: impl rusqlite::Params,
    ) -> Result<Option<T>, StateError> {
        self.conn
            .query_row(sql, p, |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }
}

/// This controller's host name, as runs record it.
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Whether the run's process may still be running: certain only on this
/// machine; a run recorded elsewhere (a shared state dir) is presumed alive.
fn process_alive(machine: &str, pid: u32) -> bool {
    if machine != machine_name() {
        return true;
    }
    if pid == std::process::id() {
        return true;
    }
    // A reused pid would keep an interrupted run "running" until that
    // process ends: the /proc entry must also be a virtfleet.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .next()
                .is_some_and(|argv0| argv0.ends_with(b"virtfleet"))
        })
        .unwrap_or(false)
}

/// Milliseconds since the epoch, for row timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    /// A real state file in a temp dir with a run started at each of
    /// `started` (ms), ids in that order, each with one step.
    fn store_with_runs(dir: &Path, started: &[i64]) -> Store {
        let store = Store::open(dir, "retention").unwrap();
        for (i, t) in started.iter().enumerate() {
            store
                .conn()
                .execute(
                    "INSERT INTO runs (command, argv, user, machine, pid, started_ms, finished_ms,
                     fleet_digest, lock_digest, plan_digest, outcome)
                     VALUES ('apply', 'virtfleet apply', 'u', 'ctl', 1, ?1, ?1, 'f', 'l', 'p', 'ok')",
                    [t],
                )
                .unwrap();
            store
                .conn()
                .execute(
                    "INSERT INTO steps (run, host, address, action, class, state, started_ms)
                     VALUES (?1, 'h', ?2, 'define', 'none', 'done', ?3)",
                    params![i as i64 + 1, format!("machine.m{i}"), t],
                )
                .unwrap();
        }
        store
    }

    fn ids(store: &Store, table: &str) -> Vec<i64> {
        let mut stmt = store
            .conn()
            .prepare(&format!("SELECT id FROM {table} ORDER BY id"))
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn runs_older_than_the_days_kept_go_with_their_steps() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000_000;
        let store = store_with_runs(
            dir.path(),
            &[now - 40 * DAY, now - 31 * DAY, now - DAY, now],
        );
        let keep = Retention {
            days: 30,
            runs: 1000,
        };
        store.prune(keep, now).unwrap();
        assert_eq!(ids(&store, "runs"), [3, 4]);
        // The steps of a pruned run go with it (ON DELETE CASCADE).
        assert_eq!(ids(&store, "steps"), [3, 4]);
        assert_eq!(store.step_count().unwrap(), 2);
        // Pruning again changes nothing.
        store.prune(keep, now).unwrap();
        assert_eq!(ids(&store, "runs"), [3, 4]);
    }

    #[test]
    fn at_most_the_runs_kept_stay_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000_000;
        let store = store_with_runs(dir.path(), &[now - 5, now - 4, now - 3, now - 2, now - 1]);
        store.prune(Retention { days: 90, runs: 2 }, now).unwrap();
        assert_eq!(ids(&store, "runs"), [4, 5]);
        assert_eq!(ids(&store, "steps"), [4, 5]);
    }

    #[test]
    fn an_absurd_retention_keeps_everything_instead_of_wrapping() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000_000;
        let store = store_with_runs(dir.path(), &[now - 400 * DAY, now]);
        let keep = Retention {
            days: u64::MAX,
            runs: u64::MAX,
        };
        store.prune(keep, now).unwrap();
        assert_eq!(ids(&store, "runs"), [1, 2]);
    }

    #[test]
    fn cleared_findings_older_than_the_days_kept_go_open_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_800_000_000_000;
        let store = store_with_runs(dir.path(), &[]);
        let s = now / 1000;
        for (first, cleared) in [
            (s - 50 * 86_400, Some(s - 40 * 86_400)), // cleared long ago: goes
            (s - 50 * 86_400, None),                  // still open: stays
            (s - 50 * 86_400, Some(s - 86_400)),      // cleared recently: stays
        ] {
            store
                .conn()
                .execute(
                    "INSERT INTO findings (host, kind, subject, detail, first_seen, last_seen, cleared)
                     VALUES ('h', 'drift', 'x', '', ?1, ?1, ?2)",
                    params![first, cleared],
                )
                .unwrap();
        }
        store
            .prune(
                Retention {
                    days: 30,
                    runs: 1000,
                },
                now,
            )
            .unwrap();
        assert_eq!(ids(&store, "findings"), [2, 3]);
    }
}
