//! Command-line interface: clap definitions and dispatch.
//!
//! Clap structs only describe and validate arguments; [`Context`] resolves
//! paths once; each subcommand module has its own `Args` and `run`, which
//! returns the process exit code (0 ok, 1 error, 2 changes present).

mod apply;
mod check;
mod destroy;
mod execute;
mod history;
mod images;
mod init;
mod logline;
mod metrics;
mod observe;
mod plan;
mod restore;
mod show;
mod snapshot;
mod ssh;
mod status;
mod unattended;
mod watch;

use crate::lock::cache::Cache;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code for success (and "no changes").
pub const EXIT_OK: u8 = 0;
/// Exit code for any error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code when some host could not be observed (the rest was handled).
pub const EXIT_INCOMPLETE: u8 = 3;
/// Exit code of `apply` when it applied everything it was allowed to but
/// changes stay pending for lack of permission (--allow-restart,
/// --allow-destroy or the fleet's policy).
pub const EXIT_PENDING: u8 = 4;

const ABOUT: &str = "Keep a fleet of libvirt virtual machines in the state a Dhall file describes.";

const LONG_ABOUT: &str = "\
Keep a fleet of libvirt virtual machines in the state a Dhall file describes.

fleet.dhall declares hosts, base images and machines; images.lock pins every
base image by sha256 so an upstream change can never slip in unnoticed.";

const AFTER_HELP: &str = "\
Getting started:
  virtfleet init mylab            scaffold mylab/fleet.dhall, the Dhall package and images.lock
  cd mylab && $EDITOR fleet.dhall
  virtfleet images lock           download and pin every base image
  virtfleet check                 validate fleet and lock (no host is contacted)
  virtfleet show                  the evaluated fleet as a table (--json for tools)
  virtfleet plan                  what apply would change, per host
  virtfleet apply                 make the hosts match fleet.dhall (asks first)
  virtfleet status                each machine's state, drift and address
  virtfleet ssh web               log into a machine (its cloud-init user, its address)

Exit status: 0 ok, 1 error, 2 changes present (plan --detailed-exitcode),
3 incomplete (some host could not be observed), 4 changes left pending for
lack of permission (apply).";

/// The virtfleet command line.
#[derive(Debug, Parser)]
#[command(name = "virtfleet", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// The fleet file.
    #[arg(
        short = 'f',
        long,
        global = true,
        env = "VIRTFLEET_FLEET",
        default_value = "fleet.dhall",
        value_name = "PATH"
    )]
    pub fleet: PathBuf,

    /// The image lockfile [default: images.lock beside the fleet file].
    #[arg(long, global = true, env = "VIRTFLEET_LOCK", value_name = "PATH")]
    pub lock: Option<PathBuf>,

    /// Where verified images are cached [default: $XDG_CACHE_HOME/virtfleet/images or ~/.cache/virtfleet/images].
    #[arg(long, global = true, env = "VIRTFLEET_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Where run locks, each fleet's state file (run history) and the Dhall evaluation cache live [default: $XDG_STATE_HOME/virtfleet or ~/.local/state/virtfleet].
    #[arg(long, global = true, env = "VIRTFLEET_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Break a host's lease held by another run (only when that run is known to be dead: a lease lapses by itself after an hour, or at once when its process is gone from this machine).
    #[arg(long, global = true)]
    pub break_lock: bool,

    /// Keep run history and findings this many days (older ones are pruned when a run is recorded).
    #[arg(
        long,
        global = true,
        env = "VIRTFLEET_HISTORY_DAYS",
        default_value_t = 90,
        value_name = "DAYS"
    )]
    pub history_days: u64,

    /// Keep at most this many runs in the history.
    #[arg(
        long,
        global = true,
        env = "VIRTFLEET_HISTORY_RUNS",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub history_runs: u64,
    /// How long to wait for one host while observing before calling it unreachable (it is then left out of the plan, which is incomplete, exit 3): a libvirtd that accepts connections but never answers would otherwise hold the whole run.
    #[arg(long, global = true, env = "VIRTFLEET_OBSERVE_TIMEOUT", value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub observe_timeout: std::time::Duration,
    /// At most N steps in flight per host when changing hosts (apply, destroy, rollback, ...): each machine's steps stay in plan order, different machines overlap (starts, shutdowns and their timeouts, destroys); 1 runs them one by one. A host's `concurrency` in fleet.dhall lowers it for that host.
    #[arg(long, global = true, env = "VIRTFLEET_CONCURRENCY", value_name = "N", default_value_t = crate::apply::schedule::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,

    /// Record nothing in the state file for this command (no run, no steps, no findings): for a state file that cannot be used, or to compare timings. The run lock is still taken and the history is still readable.
    #[arg(long, global = true)]
    pub no_history: bool,

    /// SSH private key for hosts reached over SSH whose URI names no keyfile= (it is added to their qemu+ssh/libssh URI, so libvirt and the storage commands both use it). For services: the NixOS module passes its sshKeyFile here.
    #[arg(long, global = true, env = "VIRTFLEET_SSH_KEY", value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Init(init::Args),
    Check(check::Args),
    Show(show::Args),
    Images(images::Args),
    Plan(plan::Args),
    Apply(apply::Args),
    Status(status::Args),
    Observe(observe::Args),
    Destroy(destroy::Args),
    Restore(restore::Args),
    Snapshot(snapshot::SnapshotArgs),
    Snapshots(snapshot::ListArgs),
    Rollback(snapshot::RollbackArgs),
    Reinit(snapshot::ReinitArgs),
    History(history::Args),
    Ssh(ssh::Args),
    Watch(watch::Args),
}

/// Paths every command works with, resolved once from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// The fleet file.
    pub fleet: PathBuf,
    /// The lockfile.
    pub lock: PathBuf,
    /// The image cache.
    pub cache: Cache,
    /// Private state of this controller (run locks).
    pub state_dir: PathBuf,
    /// `--break-lock`: break host leases held by other runs.
    pub break_lock: bool,
    /// How much run history to keep.
    pub retention: crate::state::Retention,
    /// `--concurrency`: steps in flight per host.
    pub concurrency: usize,
    /// `--no-history`: write nothing to the state file.
    pub no_history: bool,
    /// `--ssh-key`: the key for SSH hosts whose URI names none.
    pub ssh_key: Option<PathBuf>,
}

impl Context {
    fn new(cli: &Cli) -> Self {
        let lock = cli
            .lock
            .clone()
            .unwrap_or_else(|| beside(&cli.fleet, "images.lock"));
        let cache = Cache::new(cli.cache_dir.clone().unwrap_or_else(Cache::default_dir));
        Context {
            fleet: cli.fleet.clone(),
            lock,
            cache,
            state_dir: cli.state_dir.clone().unwrap_or_else(default_state_dir),
            break_lock: cli.break_lock,
            retention: crate::state::Retention {
                days: cli.history_days,
                runs: cli.history_runs,
            },
            concurrency: usize::from(cli.concurrency),
            no_history: cli.no_history,
            ssh_key: cli.ssh_key.clone(),
        }
    }
}

/// `$XDG_STATE_HOME/virtfleet`, else `~/.local/state/virtfleet`, else
/// `/var/lib/virtfleet` (a service without a home).
fn default_state_dir() -> PathBuf {
    let non_empty = |v: &str| std::env::var_os(v).filter(|s| !s.is_empty());
    if let Some(x) = non_empty("XDG_STATE_HOME") {
        PathBuf::from(x).join("virtfleet")
    } else if let Some(h) = non_empty("HOME") {
        PathBuf::from(h).join(".local/state/virtfleet")
    } else {
        PathBuf::from("/var/lib/virtfleet")
    }
}

/// `name` in the directory of `file`; in the working directory when `file`
/// is not a regular file (a fleet from a pipe, `-f <(...)`, lives in
/// `/dev/fd/`, where no lockfile can be).
fn beside(file: &Path, name: &str) -> PathBuf {
    let regular = std::fs::metadata(file).is_ok_and(|m| m.is_file());
    if !regular && file.exists() {
        return PathBuf::from(name);
    }
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// Parses the command line, runs it, and maps the result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIRTFLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    crate::observe::set_timeout(cli.observe_timeout);
    let ctx = Context::new(&cli);
    if let Some(key) = &ctx.ssh_key
        && let Err(message) = crate::host::ssh::check_keyfile(key)
    {
        crate::ui::print_error(&anyhow::anyhow!("--ssh-key {}: {message}", key.display()));
        return ExitCode::from(EXIT_ERROR);
    }
    let result = match cli.command {
        Command::Init(a) => init::run(a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Show(a) => show::run(&ctx, a),
        Command::Images(a) => images::run(&ctx, a),
        Command::Plan(a) => plan::run(&ctx, a),
        Command::Apply(a) => apply::run(&ctx, a),
        Command::Status(a) => status::run(&ctx, a),
        Command::Observe(a) => observe::run(&ctx, a),
        Command::Destroy(a) => destroy::run(&ctx, a),
        Command::Restore(a) => restore::run(&ctx, a),
        Command::Snapshot(a) => snapshot::snapshot(&ctx, a),
        Command::Snapshots(a) => snapshot::list(&ctx, a),
        Command::Rollback(a) => snapshot::rollback(&ctx, a),
        Command::Reinit(a) => snapshot::reinit(&ctx, a),
        Command::History(a) => history::run(&ctx, a),
        Command::Ssh(a) => ssh::run(&ctx, a),
        Command::Watch(a) => watch::run(&ctx, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::ui::print_error(&e);
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Loads and validates the fleet, with the file named in any error.
pub fn load_fleet(ctx: &Context) -> anyhow::Result<crate::fleet::Fleet> {
    Ok(load_fleet_timed(ctx)?)
}

/// Evaluations slower than this get a note saying how long they took.
const SLOW_EVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Loads the fleet within the evaluation budget ([`crate::fleet::BUDGET_ENV`])
/// and notes on stderr when evaluation was slow, so a fleet that grew into
/// the slow case says so instead of looking hung.
pub fn load_fleet_timed(ctx: &Context) -> Result<crate::fleet::Fleet, crate::fleet::LoadError> {
    Ok(load_fleet_loaded(ctx)?.fleet)
}

/// [`load_fleet_timed`], with what loading cost and which files it read
/// (`watch` watches them; metrics report the evaluation time).
pub fn load_fleet_loaded(ctx: &Context) -> Result<crate::fleet::Loaded, crate::fleet::LoadError> {
    let opts = match crate::fleet::EvalOptions::from_env() {
        Ok(o) => o,
        Err(e) => {
            anstream::eprintln!(
                "{}warning{:#}: {e}; using the default",
                crate::ui::WARN,
                crate::ui::WARN
            );
            crate::fleet::EvalOptions::default()
        }
    };
    // Through the evaluation cache when there can be one: a warm load
    // skips Dhall; any changed input misses (see `fleet::inputs`).
    let mut loaded = match crate::state::cache::CacheFile::open(&ctx.state_dir) {
        Some(cache) => crate::fleet::inputs::load_cached(&ctx.fleet, &opts, &cache)?,
        None => crate::fleet::load_with(&ctx.fleet, &opts)?,
    };
    if let Some(key) = &ctx.ssh_key {
        // After the evaluation cache: the key is the caller's, not the
        // fleet's, and must not be cached as part of it.
        for host in loaded.fleet.hosts.values_mut() {
            if let Some(uri) = crate::host::ssh::with_keyfile(&host.uri, key) {
                host.uri = uri;
            }
        }
    }
    if loaded.eval_time >= SLOW_EVAL {
        anstream::eprintln!(
            "{}note{:#}: evaluating {} took {:.1} s; large literal files are slow to parse: build machines with a function or split them into imported files (README: \"Large fleets\")",
            crate::ui::HINT,
            crate::ui::HINT,
            ctx.fleet.display(),
            loaded.eval_time.as_secs_f64()
        );
    }
    Ok(loaded)
}

/// Loads the fleet and the lock, and checks that every image the fleet uses
/// is pinned: planning needs both, consistent. Both are read before either
/// error is returned, so a broken lock does not hide the fleet's problems.
pub fn load_fleet_and_lock(
    ctx: &Context,
) -> anyhow::Result<(crate::fleet::Fleet, crate::lock::ImageLock)> {
    let fleet = load_fleet(ctx);
    let lock = crate::lock::ImageLock::read(&ctx.lock);
    let (fleet, lock) = match (fleet, lock) {
        (Ok(f), Ok(l)) => (f, l),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(_), Err(e)) => return Err(e.into()),
        (Err(f), Err(l)) => return Err(anyhow::anyhow!("{f:#}\nand {l}")),
    };
    let problems = lock.check_against(&fleet, &ctx.lock);
    if !problems.is_empty() {
        return Err(crate::diag::Diagnostics(problems).into());
    }
    Ok((fleet, lock))
}

/// The current time in unix seconds; read here, at the edge, never in the planner.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Asks `question` on the terminal unless `approved`; only `yes` proceeds.
/// Without a terminal it refuses, naming `flag` (the way to approve in scripts).
pub fn confirm(question: &str, approved: bool, action: &str, flag: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if approved {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "refusing to {action} without confirmation: no terminal to ask on. Review the above and re-run with {flag}. Nothing was changed."
        );
    }
    print!("{question} Only 'yes' is accepted: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        anyhow::bail!("cancelled; nothing was changed");
    }
    Ok(())
}
