//! `virtfleet watch`: continuous convergence, a long-running reconcile loop.
//!
//! One tokio current-thread runtime drives the loop; it never does I/O
//! that blocks. Evaluating Dhall and every libvirt or SSH call run on
//! tokio's blocking pool. The loop wakes on:
//!
//! - a change to the fleet file, any local Dhall file it imports, or the
//!   lockfile. notify watches the *directories* holding them (an editor
//!   that saves by writing a temporary file and renaming it over the
//!   original replaces the inode, which a watch on the file itself would
//!   lose). Events are debounced by hand: each relevant event pushes a
//!   deadline `--debounce` ahead, and the fleet is loaded once it passes.
//! - the resync interval (`--resync`): drift made behind virtfleet's back
//!   is corrected within one interval.
//! - a host's backoff expiring, a host's pass finishing, and signals:
//!   SIGTERM/SIGINT stop (steps in flight finish, nothing new starts, the
//!   run lock and host leases are released, then it exits 0), SIGHUP
//!   re-reads the fleet and the lock.
//!
//! Each host is reconciled on its own ([`super::unattended::reconcile`]
//! with that host as scope), at most one pass per host at a time; a
//! trigger arriving during a host's pass runs it again afterwards. A pass
//! that ends in error or cannot reach its host backs off exponentially
//! with jitter, per host, so an unreachable host never delays the others.
//! The fleet's run lock is held while any pass runs and released when
//! none does, so a person's `virtfleet apply` can get in between.

use super::Context;
use super::logline::Log;
use super::metrics::{Snapshot, render, write_atomic};
use super::unattended::{Inputs, Pass, Policy, Verdict, load, log_pass, reconcile};
use crate::apply::runlock::{FleetLock, Holder, lock_fleet};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Set on SIGTERM/SIGINT; the executor checks it before each step.
static STOP: AtomicBool = AtomicBool::new(false);

/// Keep the hosts converged continuously: re-plan and apply when fleet.dhall,
/// a file it imports or images.lock changes, and every --resync interval.
///
/// Runs until SIGTERM or SIGINT: steps in flight finish, nothing new
/// starts, locks are released, exit status 0. SIGHUP re-reads the fleet
/// and the lock. Each host is reconciled on its own, at most one pass per
/// host at a time; a host whose pass fails or that cannot be reached is
/// retried with exponential backoff and jitter (--backoff-min up to
/// --backoff-max) while the other hosts carry on.
///
/// The unattended policy applies (see `apply --help`, --unattended): none
/// and live changes are applied; restart and destructive ones only with
/// --allow-restart / --allow-destroy or the fleet's settings, else they are
/// recorded as pending in the history and counted in the metrics.
///
/// Logs one line per event on stderr (key=value, or JSON with --json-logs):
/// config.loaded, pass.done, step.start, step.done, step.failed,
/// host.backoff, shutdown...
///
/// Examples:
///   virtfleet watch --resync 5m --metrics-listen 127.0.0.1:9733
///   virtfleet watch --allow-restart --metrics-file /var/lib/node-exporter/virtfleet.prom
#[derive(Debug, Clone, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Re-observe every host this often even when no file changed.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// Wait this long after the last file event before re-reading (editors write in bursts).
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = humantime::parse_duration)]
    debounce: Duration,
    /// Allow changes that restart or stop guests.
    #[arg(long)]
    allow_restart: bool,
    /// Allow destroying machines removed from the fleet and purging expired trash.
    #[arg(long)]
    allow_destroy: bool,
    /// How long a guest may take to shut down by ACPI before it is powered off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    shutdown_timeout: Duration,
    /// First retry delay of a failing host (doubled per failure, with jitter).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    backoff_min: Duration,
    /// Longest retry delay of a failing host.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// Write Prometheus metrics to FILE after each pass (atomically, for node_exporter's textfile collector).
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback address only).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Log JSON objects, one per line, instead of key=value lines.
    #[arg(long)]
    json_logs: bool,
}

/// Runs the loop until a stop signal; returns the exit status.
pub fn run(ctx: &Context, args: Args) -> anyhow::Result<u8> {
    if let Some(addr) = args.metrics_listen
        && !addr.ip().is_loopback()
    {
        anyhow::bail!(
            "--metrics-listen {addr}: only a loopback address (127.0.0.1, [::1]) is served; metrics name hosts and machines. Put a proxy in front to expose them"
        );
    }
    if args.resync.is_zero() || args.backoff_min.is_zero() {
        anyhow::bail!("--resync and --backoff-min must be longer than zero");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(main_loop(ctx.clone(), args))
}

/// Per host: whether a pass runs, whether another is wanted after it,
/// and its backoff.
#[derive(Debug, Default)]
struct HostState {
    busy: bool,
    dirty: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// The loop's state.
struct Loop {
    ctx: Arc<Context>,
    args: Args,
    log: Log,
    inputs: Option<Arc<Inputs>>,
    hosts: BTreeMap<String, HostState>,
    run_lock: Weak<FleetLock>,
    tasks: JoinSet<(String, Pass)>,
    snapshot: Snapshot,
    metrics: Arc<Mutex<String>>,
    watched_files: BTreeSet<PathBuf>,
    watched_dirs: BTreeSet<PathBuf>,
    watcher: Option<notify::RecommendedWatcher>,
}

async fn main_loop(ctx: Context, args: Args) -> anyhow::Result<u8> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, mut files) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            // Reads (ours included) are not changes.
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })?;
    let log = Log {
        json: args.json_logs,
    };
    let metrics = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = args.metrics_listen {
        serve_metrics(addr, metrics.clone(), log)?;
        log.line("info", "metrics.listen", &[("address", addr.to_string())]);
    }
    let mut lp = Loop {
        ctx: Arc::new(ctx),
        log,
        inputs: None,
        hosts: BTreeMap::new(),
        run_lock: Weak::new(),
        tasks: JoinSet::new(),
        snapshot: Snapshot {
            runs_total: Some(BTreeMap::new()),
            ..Snapshot::default()
        },
        metrics,
        watched_files: BTreeSet::new(),
        watched_dirs: BTreeSet::new(),
        watcher: Some(watcher),
        args,
    };
    lp.log.line(
        "info",
        "watch.start",
        &[
            ("fleet_file", lp.ctx.fleet.display().to_string()),
            (
                "resync",
                humantime::format_duration(lp.args.resync).to_string(),
            ),
            ("pid", std::process::id().to_string()),
        ],
    );
    lp.reload("start").await;
    let mut resync = tokio::time::interval_at(Instant::now() + lp.args.resync, lp.args.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    lp.trigger_all("start");
    let mut debounce: Option<Instant> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);
    loop {
        let retry = lp.next_retry();
        tokio::select! {
            _ = term.recv() => { lp.log.line("info", "signal", &[("signal", "SIGTERM".into())]); break; }
            _ = int.recv() => { lp.log.line("info", "signal", &[("signal", "SIGINT".into())]); break; }
            _ = hup.recv() => {
                lp.log.line("info", "signal", &[("signal", "SIGHUP".into())]);
                lp.reload("sighup").await;
                lp.trigger_all("sighup");
            }
            Some(path) = files.recv() => {
                if lp.relevant(&path) {
                    debounce = Some(Instant::now() + lp.args.debounce);
                }
            }
            _ = tokio::time::sleep_until(debounce.unwrap_or_else(far)), if debounce.is_some() => {
                debounce = None;
                lp.reload("change").await;
                lp.trigger_all("change");
            }
            _ = resync.tick() => lp.trigger_all("resync"),
            _ = tokio::time::sleep_until(retry.unwrap_or_else(far)), if retry.is_some() => lp.retry_due(),
            Some(done) = lp.tasks.join_next(), if !lp.tasks.is_empty() => lp.finished(done),
        }
    }
    STOP.store(true, Ordering::SeqCst);
    let busy: Vec<&str> = lp
        .hosts
        .iter()
        .filter(|(_, s)| s.busy)
        .map(|(h, _)| h.as_str())
        .collect();
    lp.log
        .line("info", "shutdown.start", &[("finishing", busy.join(","))]);
    while let Some(done) = lp.tasks.join_next().await {
        lp.finished(done);
    }
    lp.watcher = None;
    lp.log.line(
        "info",
        "shutdown.done",
        &[("lock_held", (lp.run_lock.strong_count() > 0).to_string())],
    );
    Ok(super::EXIT_OK)
}

impl Loop {
    /// Loads the fleet and the lock again (on the blocking pool), updates
    /// the hosts and the files watched. A fleet that does not load stops
    /// all passes (the old fleet is no longer what the user wants) until
    /// it is fixed; the error is logged and counted in the metrics.
    async fn reload(&mut self, why: &str) {
        let ctx = self.ctx.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&ctx)).await;
        let loaded = match loaded {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("loading the fleet crashed: {e}")),
        };
        match loaded {
            Ok(inputs) => {
                let names: BTreeSet<String> = inputs
                    .fleet
                    .hosts
                    .values()
                    .map(|h| h.name.to_string())
                    .collect();
                self.hosts.retain(|h, s| names.contains(h) || s.busy);
                self.snapshot
                    .passes
                    .retain(|h, _| names.contains(h) || self.hosts.contains_key(h));
                for n in &names {
                    self.hosts.entry(n.clone()).or_default();
                }
                self.snapshot.fleet = inputs.fleet.name.to_string();
                self.snapshot.eval_seconds = inputs.eval.as_secs_f64();
                let mut files: BTreeSet<PathBuf> = inputs.files.iter().map(|p| abs(p)).collect();
                files.insert(abs(&self.ctx.fleet));
                files.insert(abs(&self.ctx.lock));
                self.watch(files);
                self.log.line(
                    "info",
                    "config.loaded",
                    &[
                        ("reason", why.into()),
                        ("fleet", inputs.fleet.name.to_string()),
                        ("hosts", names.len().to_string()),
                        ("machines", inputs.fleet.machines.len().to_string()),
                        ("files", self.watched_files.len().to_string()),
                        ("eval_seconds", format!("{:.3}", inputs.eval.as_secs_f64())),
                    ],
                );
                self.inputs = Some(Arc::new(inputs));
            }
            Err(e) => {
                let mut files = self.watched_files.clone();
                files.insert(abs(&self.ctx.fleet));
                files.insert(abs(&self.ctx.lock));
                self.watch(files);
                let msg = format!("{e:#}");
                self.log.line(
                    "error",
                    "config.error",
                    &[("reason", why.into()), ("error", msg.clone())],
                );
                self.inputs = None;
                self.snapshot.passes.clear();
                self.snapshot
                    .passes
                    .insert("(config)".into(), Pass::failed_early(msg));
                self.publish();
            }
        }
    }

    /// Watches the directories of `files` (see the module doc for why).
    fn watch(&mut self, files: BTreeSet<PathBuf>) {
        use notify::Watcher;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for f in &files {
            let Some(dir) = f.parent() else { continue };
            if self.watched_dirs.contains(dir) {
                continue;
            }
            match w.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched_dirs.insert(dir.to_owned());
                }
                Err(e) => self.log.line(
                    "warn",
                    "watch.failed",
                    &[("dir", dir.display().to_string()), ("error", e.to_string())],
                ),
            }
        }
        self.watched_files = files;
    }

    fn relevant(&self, path: &Path) -> bool {
        self.watched_files.contains(path)
    }

    /// Starts a pass on every host (those busy get one after theirs).
    fn trigger_all(&mut self, why: &str) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for h in names {
            self.start(&h, why);
        }
    }

    /// Starts a pass on `host` unless it is busy (then it runs again
    /// afterwards) or backing off (its retry runs it).
    fn start(&mut self, host: &str, why: &str) {
        let Some(inputs) = self.inputs.clone() else {
            return;
        };
        if STOP.load(Ordering::SeqCst) {
            return;
        }
        let Some(state) = self.hosts.get_mut(host) else {
            return;
        };
        if state.busy {
            state.dirty = true;
            return;
        }
        if state.retry_at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        let run_lock = match self.run_lock.upgrade() {
            Some(l) => l,
            None => match lock_fleet(
                &self.ctx.state_dir,
                inputs.fleet.name.as_str(),
                &Holder::me(super::now()),
            ) {
                Ok(l) => {
                    let l = Arc::new(l);
                    self.run_lock = Arc::downgrade(&l);
                    l
                }
                Err(e) => {
                    // Another run (a person's apply) has the fleet: try
                    // again shortly, without counting it as a failure.
                    self.log.line(
                        "warn",
                        "fleet.locked",
                        &[("host", host.into()), ("error", e.to_string())],
                    );
                    let at = Instant::now() + self.args.backoff_min;
                    if let Some(s) = self.hosts.get_mut(host) {
                        s.retry_at = Some(at);
                    }
                    return;
                }
            },
        };
        let state = self.hosts.get_mut(host).expect("checked above");
        state.busy = true;
        state.retry_at = None;
        self.log.line(
            "info",
            "pass.start",
            &[("host", host.into()), ("reason", why.into())],
        );
        let ctx = self.ctx.clone();
        let log = self.log;
        let policy = Policy {
            allow_restart: self.args.allow_restart,
            allow_destroy: self.args.allow_destroy,
            shutdown_grace: self.args.shutdown_timeout,
        };
        let name = host.to_owned();
        self.tasks.spawn_blocking(move || {
            // A panic in a pass is that host's error, never a host left
            // "busy" for ever.
            let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reconcile(
                    &ctx,
                    &inputs.fleet,
                    &inputs.lock,
                    policy,
                    Some(&name),
                    &log,
                    Some(&STOP),
                    "watch",
                )
            }))
            .unwrap_or_else(|_| {
                Pass::failed_early("the pass crashed (a bug: please report it)".into())
            });
            // The run lock goes when the last pass holding it ends.
            drop(run_lock);
            (name, pass)
        });
    }

    /// A host's pass ended: log it, update the metrics, back off on error,
    /// run again if a trigger came meanwhile.
    fn finished(&mut self, done: Result<(String, Pass), tokio::task::JoinError>) {
        let (host, pass) = match done {
            Ok(x) => x,
            Err(e) => {
                // Only if the runtime itself cancelled the task.
                self.log
                    .line("error", "pass.crashed", &[("error", e.to_string())]);
                return;
            }
        };
        log_pass(&self.log, &host, &pass);
        *self
            .snapshot
            .runs_total
            .get_or_insert_with(BTreeMap::new)
            .entry(pass.verdict.as_str())
            .or_default() += 1;
        let failing = matches!(pass.verdict, Verdict::Error | Verdict::Incomplete);
        self.snapshot.passes.remove("(config)");
        self.snapshot.passes.insert(host.clone(), pass);
        self.publish();
        let Some(state) = self.hosts.get_mut(&host) else {
            return;
        };
        state.busy = false;
        if failing && !STOP.load(Ordering::SeqCst) {
            state.failures += 1;
            let delay = backoff(
                self.args.backoff_min,
                self.args.backoff_max,
                state.failures,
                jitter(),
            );
            state.retry_at = Some(Instant::now() + delay);
            state.dirty = false;
            self.log.line(
                "warn",
                "host.backoff",
                &[
                    ("host", host.clone()),
                    ("attempt", state.failures.to_string()),
                    ("retry_in_seconds", format!("{:.1}", delay.as_secs_f64())),
                ],
            );
        } else {
            state.failures = 0;
            if std::mem::take(&mut state.dirty) {
                self.start(&host, "queued");
            }
        }
    }

    /// The earliest retry of a host waiting on its backoff.
    fn next_retry(&self) -> Option<Instant> {
        self.hosts
            .values()
            .filter(|s| !s.busy)
            .filter_map(|s| s.retry_at)
            .min()
    }

    /// Starts every host whose backoff has passed.
    fn retry_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, s)| !s.busy && s.retry_at.is_some_and(|t| t <= now))
            .map(|(h, _)| h.clone())
            .collect();
        for h in due {
            if let Some(s) = self.hosts.get_mut(&h) {
                s.retry_at = None;
            }
            self.start(&h, "retry");
        }
    }

    /// Renders the metrics for the server and writes the file, if asked.
    fn publish(&mut self) {
        let text = render(&self.snapshot);
        if let Some(path) = &self.args.metrics_file
            && let Err(e) = write_atomic(path, &text)
        {
            self.log.line(
                "error",
                "metrics.write_failed",
                &[
                    ("path", path.display().to_string()),
                    ("error", e.to_string()),
                ],
            );
        }
        *self.metrics.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }
}

/// `p` made absolute (inotify reports paths under the absolute directory).
fn abs(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// The delay before retry number `failures` (1-based): `min` doubled per
/// earlier failure, at most `max`, scaled by `jitter` in [0.5, 1) so hosts
/// that failed together do not retry in lockstep.
fn backoff(min: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    doubled.min(max).mul_f64(jitter.clamp(0.5, 1.0))
}

/// A random factor in [0.5, 1): std's per-process random hash keys are
/// random enough to spread retries, without a random-number crate.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    0.5 + (h.finish() >> 11) as f64 / (1u64 << 53) as f64 / 2.0
}

/// Serves `GET /metrics` on `addr` from a plain thread: one short request
/// at a time is all a scraper needs, and it keeps tokio's `net` out.
fn serve_metrics(addr: SocketAddr, text: Arc<Mutex<String>>, log: Log) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => continue,
            });
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // The headers are read and ignored.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let response = if request.starts_with("GET ") && path == "/metrics" {
                let body = text.lock().unwrap_or_else(|p| p.into_inner()).clone();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            if let Err(e) = conn.write_all(response.as_bytes()) {
                log.line("warn", "metrics.serve_failed", &[("error", e.to_string())]);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_only_shortens() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), s(300), 1, 1.0), s(5));
        assert_eq!(backoff(s(5), s(300), 2, 1.0), s(10));
        assert_eq!(backoff(s(5), s(300), 4, 1.0), s(40));
        assert_eq!(backoff(s(5), s(300), 30, 1.0), s(300));
        assert_eq!(backoff(s(5), s(300), 2, 0.5), s(5));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.5..1.0).contains(&j), "{j}");
        }
    }
}
