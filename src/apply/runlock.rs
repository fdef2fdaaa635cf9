//! One run at a time per fleet on this controller.
//!
//! Every command that changes hosts (`apply`, `destroy`, `restore`,
//! `snapshot`, `rollback`, `reinit`) holds an exclusive `flock` on
//! `<state dir>/<fleet>.lock` for its whole run; a second one is refused at
//! once, naming the holder. The kernel drops the lock when the holder exits,
//! however it exits (even `kill -9`), so there is no stale lock to break on
//! the controller. `plan` and `status` never take it: they only read.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who holds a fleet's lock, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// User name (or uid) of the process.
    pub user: String,
    /// The command line, e.g. `virtfleet apply --auto-approve`.
    pub command: String,
    /// When it took the lock (unix seconds).
    pub since: u64,
}

impl Holder {
    /// This process, now.
    pub fn me(now: u64) -> Holder {
        let user = user_name(current_uid());
        // The program's own name, then its arguments as given (at most a
        // few: this is for recognising the run, not for replaying it).
        let command = std::env::args()
            .enumerate()
            .map(|(i, a)| match i {
                0 => a.rsplit('/').next().unwrap_or(&a).to_owned(),
                _ => a,
            })
            .take(12)
            .collect::<Vec<_>>()
            .join(" ");
        Holder {
            pid: std::process::id(),
            user,
            command,
            since: now,
        }
    }
}

/// The held lock of one fleet; released when dropped (or the process ends).
#[derive(Debug)]
pub struct FleetLock {
    _file: File,
    /// Where the lock lives.
    pub path: PathBuf,
}

/// Why a fleet could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum RunLockError {
    /// Another run of the same fleet is changing hosts right now.
    #[error(
        "fleet {fleet:?} is being changed by another run: pid {}, user {}, `{}`, since {}; nothing was done",
        holder.pid, holder.user, holder.command, crate::text::rfc3339(holder.since)
    )]
    Busy { fleet: String, holder: Holder },
    /// The state directory or lock file cannot be used.
    #[error("{}: {why}", path.display())]
    State { path: PathBuf, why: String },
}

impl RunLockError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            RunLockError::Busy { .. } => Some(
                "wait for it to finish (`virtfleet plan` works meanwhile); the lock is released when that process exits",
            ),
            RunLockError::State { .. } => {
                Some("set --state-dir (or VIRTFLEET_STATE_DIR) to a private directory of this user")
            }
        }
    }
}

/// Takes the lock of `fleet` in `state_dir` for `holder`, or says who has it.
pub fn lock_fleet(
    state_dir: &Path,
    fleet: &str,
    holder: &Holder,
) -> Result<FleetLock, RunLockError> {
    let state_err = |why: String| RunLockError::State {
        path: state_dir.to_owned(),
        why,
    };
    private_dir(state_dir).map_err(state_err)?;
    let path = state_dir.join(format!("{fleet}.lock"));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc_o_nofollow())
        .open(&path)
        .map_err(|e| RunLockError::State {
            path: path.clone(),
            why: e.to_string(),
        })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = serde_json::from_str(&text).unwrap_or(Holder {
                pid: 0,
                user: "unknown".into(),
                command: "unknown (it is just starting)".into(),
                since: 0,
            });
            return Err(RunLockError::Busy {
                fleet: fleet.into(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(RunLockError::State {
                path,
                why: e.to_string(),
            });
        }
    }
    // Holding the lock: say who holds it, for the next one to read.
    let json = serde_json::to_string(holder).expect("holder serialises");
    let written = file
        .set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{json}"))
        .and_then(|_| file.flush());
    written.map_err(|e| RunLockError::State {
        path: path.clone(),
        why: e.to_string(),
    })?;
    Ok(FleetLock { _file: file, path })
}

/// Creates `dir` 0700 if missing; refuses one that another user owns or
/// that others may write to (someone could swap the lock file).
pub(crate) fn private_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if meta.uid() != current_uid() {
        return Err(format!("owned by uid {}, not by this user", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o777
        ));
    }
    Ok(())
}

/// The login name of `uid` from /etc/passwd, else `uid N`.
pub(crate) fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let (name, _, id) = (f.next()?, f.next()?, f.next()?);
                (id.parse() == Ok(uid)).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The real uid of this process, from /proc (no libc binding needed).
pub(crate) fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

/// `O_NOFOLLOW` on Linux: a lock file that is a symlink is refused.
pub(crate) fn libc_o_nofollow() -> i32 {
    0o400_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let me = Holder {
            pid: 4242,
            user: "alice".into(),
            command: "virtfleet apply".into(),
            since: 1_700_000_000,
        };
        let held = lock_fleet(&state, "lab", &me).unwrap();
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        match lock_fleet(&state, "lab", &me) {
            Err(RunLockError::Busy { holder, .. }) => assert_eq!(holder, me),
            other => panic!("expected Busy, got {other:?}"),
        }
        // Another fleet is independent.
        let _other = lock_fleet(&state, "other", &me).unwrap();
        drop(held);
        lock_fleet(&state, "lab", &me).unwrap();
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("open");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let me = Holder::me(0);
        assert!(matches!(
            lock_fleet(&state, "lab", &me),
            Err(RunLockError::State { .. })
        ));
    }
}
