//! The Dhall evaluation cache: `<state dir>/eval-cache.sqlite`.
//!
//! Kept apart from the per-fleet state files because it is needed before
//! the fleet's name is known, and because it is disposable: a cache file
//! that cannot be read (corrupt, another program's, a newer schema) is
//! deleted and rebuilt with a warning, and one that cannot be written is
//! simply not used. Either way the fleet is evaluated from its files, so
//! the cache can make a command slower, never wrong. What is cached, and
//! when an entry is still valid, is decided in [`crate::fleet::inputs`].

use crate::fleet::inputs::{Entry, EvalCache};
use rusqlite::{Connection, OpenFlags, params};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `PRAGMA application_id` of the cache file ("VFEC").
const APPLICATION_ID: i32 = 0x5646_4543;
/// Its schema version (a different one is rebuilt, not migrated).
const VERSION: i64 = 1;
/// Fleet files (per working directory) remembered at most.
const SLOTS: i64 = 32;

/// The evaluation cache file.
pub struct CacheFile {
    conn: Connection,
}

/// Where the cache lives in `state_dir`.
pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("eval-cache.sqlite")
}

impl CacheFile {
    /// Opens the cache in `state_dir`, rebuilding a broken one; None when
    /// there can be no cache (the directory is unusable).
    pub fn open(state_dir: &Path) -> Option<CacheFile> {
        crate::apply::runlock::private_dir(state_dir)
            .map_err(|e| tracing::debug!("no evaluation cache: {}: {e}", state_dir.display()))
            .ok()?;
        let path = path_in(state_dir);
        match try_open(&path) {
            Ok(c) => Some(c),
            Err(e) => {
                anstream::eprintln!(
                    "warning: {}: {e}; it is only a cache of Dhall evaluations: starting a new one",
                    path.display()
                );
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
                try_open(&path)
                    .map_err(|e| tracing::debug!("no evaluation cache: {e}"))
                    .ok()
            }
        }
    }
}

fn try_open(path: &Path) -> Result<CacheFile, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(crate::apply::runlock::libc_o_nofollow())
        .open(path)
        .map_err(|e| e.to_string())?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let s = |e: rusqlite::Error| e.to_string();
    let app: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(s)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(s)?;
    if app == APPLICATION_ID && version == VERSION {
        return Ok(CacheFile { conn });
    }
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(s)?;
    if objects != 0 {
        return Err(format!(
            "not an evaluation cache of this virtfleet (application_id {app:#x}, schema {version})"
        ));
    }
    conn.pragma_update(None, "journal_mode", "WAL").map_err(s)?;
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS evals (slot TEXT PRIMARY KEY, entry TEXT NOT NULL, used INTEGER NOT NULL);
         PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {VERSION};
         COMMIT;"
    ))
    .map_err(s)?;
    Ok(CacheFile { conn })
}

impl EvalCache for CacheFile {
    fn get(&self, slot: &str) -> Option<Entry> {
        let text: String = self
            .conn
            .query_row("SELECT entry FROM evals WHERE slot = ?1", [slot], |r| {
                r.get(0)
            })
            .ok()?;
        serde_json::from_str(&text)
            .map_err(|e| tracing::debug!("unreadable evaluation cache entry: {e}"))
            .ok()
    }

    fn put(&self, slot: &str, entry: &Entry) {
        let Ok(text) = serde_json::to_string(entry) else {
            return;
        };
        let result = self
            .conn
            .execute(
                "INSERT OR REPLACE INTO evals (slot, entry, used) VALUES (?1, ?2, ?3)",
                params![slot, text, super::now_ms()],
            )
            .and_then(|_| {
                self.conn.execute(
                    "DELETE FROM evals WHERE slot NOT IN
                     (SELECT slot FROM evals ORDER BY used DESC LIMIT ?1)",
                    [SLOTS],
                )
            });
        if let Err(e) = result {
            tracing::debug!("evaluation not cached: {e}");
        }
    }
}
