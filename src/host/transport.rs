//! Running commands and moving files on a host.
//!
//! Commands are argv vectors, never shell strings. [`Local`] runs them with
//! `std::process::Command` on this machine, which is what a `qemu:///...`
//! host is. Remote hosts get an SSH transport behind the same trait.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::progress::Progress;

/// The result of a command or transfer on a host.
pub type ExecResult<T> = Result<T, ExecError>;

/// A failed command or file transfer on a host.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started.
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    /// The program exited unsuccessfully.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: String,
        stderr: String,
    },
    /// Local file I/O.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ExecError::Spawn { .. } => Some(
                "is the program installed on the host (zfsutils-linux, qemu-utils), and is ssh on this machine's PATH?",
            ),
            ExecError::Failed { stderr, .. } if stderr.contains("Permission denied") => Some(
                "virtfleet runs storage commands as the SSH user (or the local user): it needs root or the rights of the storage path",
            ),
            ExecError::Failed { .. } | ExecError::Io { .. } => None,
        }
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status was zero.
    pub success: bool,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// Runs commands and writes files on one host.
pub trait Transport: Send + Sync {
    /// Runs `argv`; a non-zero exit is returned, not an error.
    fn run(&self, argv: &[&str]) -> Result<Output, ExecError>;

    /// Writes `bytes` to `path` on the host (replacing it atomically),
    /// readable by its owner only (0600): everything virtfleet keeps on a
    /// host (ownership markers, leases, records) is its own business.
    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), ExecError>;

    /// Copies the controller's file `local` to `remote` on the host.
    fn put_file(&self, local: &Path, remote: &str, progress: &dyn Progress) -> ExecResult<()>;

    /// True when the host is this machine: its files are this process's
    /// files (read them directly, link them instead of copying).
    fn is_local(&self) -> bool {
        false
    }

    /// Starts `argv` on the host with its stdout piped back, the source end
    /// of a stream between two hosts (see [`pipe`]).
    fn spawn_reader(&self, argv: &[&str]) -> Result<std::process::Child, ExecError> {
        Err(unsupported(argv))
    }

    /// Runs `argv` on the host with `input` streamed into its stdin; the
    /// bytes are counted on `progress` and returned.
    fn run_with_stdin(
        &self,
        argv: &[&str],
        input: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<u64, ExecError> {
        let _ = (input, progress);
        Err(unsupported(argv))
    }

    /// Runs `argv` and returns its stdout, or an error carrying its stderr.
    fn run_ok(&self, argv: &[&str]) -> Result<String, ExecError> {
        let out = self.run(argv)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(ExecError::Failed {
                argv: argv.join(" "),
                status: "non-zero exit".into(),
                stderr: out.stderr.trim().to_owned(),
            })
        }
    }
}

fn unsupported(argv: &[&str]) -> ExecError {
    ExecError::Spawn {
        argv: argv.join(" "),
        source: std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this transport cannot stream",
        ),
    }
}

/// Streams the stdout of `send` on host `from` into the stdin of `recv` on
/// host `to` through this process (no direct connection between the hosts
/// is needed), counting bytes on `progress`; returns the bytes streamed.
/// Fails when either side does.
pub fn pipe(
    from: &dyn Transport,
    send: &[&str],
    to: &dyn Transport,
    recv: &[&str],
    progress: &dyn Progress,
) -> Result<u64, ExecError> {
    let mut child = from.spawn_reader(send)?;
    let mut out = child.stdout.take().expect("piped stdout");
    let received = to.run_with_stdin(recv, &mut out, progress);
    // A receiver that failed early leaves the sender blocked on a full
    // pipe: closing our end lets it see EPIPE and exit.
    drop(out);
    let sent = child
        .wait_with_output()
        .map_err(|source| ExecError::Spawn {
            argv: send.join(" "),
            source,
        })?;
    if !sent.status.success() {
        return Err(ExecError::Failed {
            argv: send.join(" "),
            status: sent.status.to_string(),
            stderr: String::from_utf8_lossy(&sent.stderr).trim().to_owned(),
        });
    }
    received
}

/// This machine.
#[derive(Debug, Clone, Default)]
pub struct Local;

/// `argv` as a local command, in the C locale (its output is parsed).
fn local_command(argv: &[&str]) -> Command {
    let (prog, args) = argv.split_first().expect("argv is never empty");
    let mut cmd = Command::new(prog);
    cmd.args(args).env("LC_ALL", "C");
    cmd
}

/// The error for a local command that could not be started.
fn spawn_error<'a>(argv: &'a [&'a str]) -> impl FnOnce(std::io::Error) -> ExecError + 'a {
    move |source| ExecError::Spawn {
        argv: argv.join(" "),
        source,
    }
}

impl Transport for Local {
    fn is_local(&self) -> bool {
        true
    }

    fn run(&self, argv: &[&str]) -> Result<Output, ExecError> {
        tracing::debug!(argv = %argv.join(" "), "run locally");
        let out = local_command(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(spawn_error(argv))?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn spawn_reader(&self, argv: &[&str]) -> Result<std::process::Child, ExecError> {
        local_command(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error(argv))
    }

    fn run_with_stdin(
        &self,
        argv: &[&str],
        input: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<u64, ExecError> {
        let mut child = local_command(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error(argv))?;
        let stdin = child.stdin.take().expect("piped stdin");
        feed(&argv.join(" "), child, stdin, input, progress)
    }

    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), ExecError> {
        // The path and size only: never the content.
        tracing::debug!(path, bytes = bytes.len(), "write file locally");
        crate::lock::write_private(Path::new(path), bytes).map_err(|source| ExecError::Io {
            path: path.into(),
            source,
        })
    }

    fn put_file(&self, local: &Path, remote: &str, progress: &dyn Progress) -> ExecResult<()> {
        let io = |p: &str| {
            let p = p.to_owned();
            move |source| ExecError::Io { path: p, source }
        };
        let mut src = std::fs::File::open(local).map_err(io(&local.display().to_string()))?;
        // A new file, never a write through an existing name: `remote` may
        // be a hard link to a cached image left by a crash (see
        // `DirStorage::ensure_image`).
        match std::fs::remove_file(remote) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(remote)(e)),
            _ => {}
        }
        let mut dst = std::fs::File::create(remote).map_err(io(remote))?;
        let mut buf = vec![0u8; crate::lock::cache::CHUNK];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(io(&local.display().to_string()))?;
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n]).map_err(io(remote))?;
            progress.advance(n as u64);
            crate::fault::point("copy-chunk");
        }
        dst.sync_all().map_err(io(remote))
    }
}

/// Copies `input` into `stdin` of `child` (running the command `shown`),
/// then waits for it; returns the bytes copied. An error names the command
/// with its stderr and any copy failure.
pub(crate) fn feed(
    shown: &str,
    child: std::process::Child,
    mut stdin: std::process::ChildStdin,
    input: &mut dyn Read,
    progress: &dyn Progress,
) -> Result<u64, ExecError> {
    let mut buf = vec![0u8; crate::lock::cache::CHUNK];
    let mut total = 0u64;
    let copy = (|| -> std::io::Result<()> {
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            stdin.write_all(&buf[..n])?;
            total += n as u64;
            progress.advance(n as u64);
            crate::fault::point("copy-chunk");
        }
    })();
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|source| ExecError::Spawn {
            argv: shown.to_owned(),
            source,
        })?;
    if !out.status.success() || copy.is_err() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let why = copy.err().map(|e| format!("{e}; ")).unwrap_or_default();
        return Err(ExecError::Failed {
            argv: shown.to_owned(),
            status: out.status.to_string(),
            stderr: format!("{why}{stderr}"),
        });
    }
    Ok(total)
}
